//! AWS identity shared by every AWS output: the standard chain from `aws-config` (env, shared
//! profile via `profile`, IRSA web identity, ECS task role, EKS Pod Identity, IMDSv2), with
//! `role_arn` (+ `external_id`) assumed on top and refreshed by the SDK before expiry.
//! `sts_endpoint` sends the AssumeRole calls to that endpoint (a VPC endpoint); otherwise STS is
//! regional, and `AWS_STS_REGIONAL_ENDPOINTS` / `AWS_ENDPOINT_URL_STS` are honoured by the SDK.
//! `credentials_endpoint` (the Go CloudWatch plugin's option) replaces the chain with one
//! container-credentials endpoint, read as the ECS agent serves it.

use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;

use super::local_http::PrivateUrl;
use crate::config::{ConfigError, Props};

/// Fluent Bit's AWS options (`region`, `profile`, `role_arn`, `external_id`, `sts_endpoint`).
#[derive(Debug, Clone)]
pub struct AwsIdentity {
    pub region: String,
    pub profile: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub sts_endpoint: Option<String>,
    /// An `http://` endpoint serving container credentials (ECS task role JSON) used as the
    /// base credentials instead of the default chain.
    pub credentials_endpoint: Option<PrivateUrl>,
}

impl AwsIdentity {
    pub fn from_props(p: &Props, default_region: &str) -> Result<Self, ConfigError> {
        let external_id = p.str("external_id").map(str::to_string);
        let role_arn = p.str("role_arn").map(str::to_string);
        if external_id.is_some() && role_arn.is_none() {
            return Err(ConfigError::key(
                p.prop("external_id").expect("set"),
                "external_id needs role_arn",
            ));
        }
        if let Some(arn) = p.prop("role_arn") {
            if !arn.value.starts_with("arn:") {
                return Err(ConfigError::key(
                    arn,
                    format!(
                        "'{}' is not a role ARN (arn:aws:iam::<account>:role/<name>)",
                        arn.value
                    ),
                ));
            }
        }
        Ok(AwsIdentity {
            region: p.string_or("region", default_region),
            profile: p.str("profile").map(str::to_string),
            role_arn,
            external_id,
            sts_endpoint: p.str("sts_endpoint").map(with_scheme),
            credentials_endpoint: None,
        })
    }

    /// Builds the SDK configuration with the credential chain (and role) resolved lazily: a
    /// credential failure shows up on the first request, with the chain's explanation.
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()));
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &self.credentials_endpoint {
            loader = loader.credentials_provider(EndpointCredentials { url: url.clone() });
        }
        let base = loader.load().await;
        let Some(role_arn) = &self.role_arn else {
            return base;
        };
        let sts_conf = match &self.sts_endpoint {
            Some(endpoint) => base.to_builder().endpoint_url(endpoint).build(),
            None => base.clone(),
        };
        let mut builder = AssumeRoleProvider::builder(role_arn)
            .session_name(format!(
                "logferry-{}",
                crate::outputs::objectstore::key::random_alnum(12)
            ))
            .region(Region::new(self.region.clone()))
            .configure(&sts_conf);
        if let Some(id) = &self.external_id {
            builder = builder.external_id(id);
        }
        let provider = builder.build().await;
        base.to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build()
    }

    /// Names the identity in errors: the role when one is assumed, else the default chain.
    pub fn describe(&self) -> String {
        // The path of a credentials URL (ECS: `/v2/credentials/<id>`) fetches credentials:
        // only its host is named.
        let base = match &self.credentials_endpoint {
            Some(url) => format!("credentials_endpoint {url}"),
            None => "the default credential chain".to_string(),
        };
        match &self.role_arn {
            Some(arn) => format!(
                "role {arn} assumed with {base}{}",
                self.sts_endpoint
                    .as_ref()
                    .map(|e| format!(" via STS {e}"))
                    .unwrap_or_default()
            ),
            None if self.credentials_endpoint.is_some() => base,
            None => match &self.profile {
                Some(p) => format!("profile '{p}'"),
                None => {
                    "the default credential chain (env, profile, web identity, container, IMDS)"
                        .to_string()
                }
            },
        }
    }
}

/// `host[:port]` → `https://host[:port]`; explicit `http://`/`https://` kept.
pub fn with_scheme(endpoint: &str) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.trim_end_matches('/').to_string()
    } else {
        format!("https://{}", endpoint.trim_end_matches('/'))
    }
}

/// Credentials from a container-credentials endpoint (the JSON the ECS agent serves:
/// `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration`), with the agent's authorization
/// token (`AWS_CONTAINER_AUTHORIZATION_TOKEN`) when set. The SDK caches them until expiry.
#[derive(Debug)]
struct EndpointCredentials {
    url: PrivateUrl,
}

impl EndpointCredentials {
    async fn fetch(&self) -> aws_credential_types::provider::Result {
        use aws_credential_types::provider::error::CredentialsError;
        let token = std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN").ok();
        let headers: Vec<(&str, &str)> = token
            .as_deref()
            .map(|t| ("Authorization", t))
            .into_iter()
            .collect();
        let (status, body) =
            super::local_http::get(&self.url.0, &headers, std::time::Duration::from_secs(5))
                .await
                .map_err(|e| {
                    CredentialsError::provider_error(format!(
                        "credentials_endpoint {}: {}",
                        self.url,
                        e.kind()
                    ))
                })?;
        if status != 200 {
            return Err(CredentialsError::provider_error(format!(
                "credentials_endpoint {} answered HTTP {status}",
                self.url
            )));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Served {
            access_key_id: String,
            secret_access_key: String,
            token: Option<String>,
            expiration: Option<String>,
        }
        let served: Served = serde_json::from_slice(&body).map_err(|e| {
            CredentialsError::provider_error(format!(
                "credentials_endpoint {}: unexpected answer ({e})",
                self.url
            ))
        })?;
        let expiry = served
            .expiration
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(std::time::SystemTime::from);
        Ok(aws_credential_types::Credentials::new(
            served.access_key_id,
            served.secret_access_key,
            served.token,
            expiry,
            "credentials_endpoint",
        ))
    }
}

impl aws_credential_types::provider::ProvideCredentials for EndpointCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::new(self.fetch())
    }
}
