//! Azure identities for Blob Storage: Shared Key, SAS, and Entra ID bearer tokens (workload
//! identity, managed identity, and a default chain of the two), plus the HTTPS client that
//! trusts the system roots and `tls.ca_file`.
//!
//! Invariant: keys, SAS tokens, federated assertions and access tokens never reach logs or
//! errors; errors name the identity (kind, client id, tenant) and what the service said (HTTP
//! status, AADSTS code).
//!
//! Written by hand, and why:
//! - Shared Key signing: the maintained SDK (`azure_storage_blob` 1.x) dropped Shared Key.
//! - The workload-identity token exchange: `azure_identity`'s `WorkloadIdentityCredential`
//!   refuses an `http://` `AZURE_AUTHORITY_HOST` (local identity proxies, tests) and caches the
//!   federated token file for minutes; here the file is read on every token request, so a
//!   rotated projected token is used at the next refresh. It is one form POST.
//!
//! Managed identity (IMDS) goes through `azure_identity`'s `ManagedIdentityCredential`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use base64::Engine;

/// The scope for Blob Storage tokens.
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com/";

/// An HTTPS client config trusting the system roots plus `ca_file` (verification always on).
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        // A broken system certificate is skipped, as every TLS client does.
        let _ = roots.add(c);
    }
    if let Some(path) = ca_file {
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read certificates from '{}': {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("'{}' holds no PEM certificate", path.display()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("CA in '{}': {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no CA certificates in the system store: set tls.ca_file".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The HTTP client for the storage and token endpoints.
pub fn http_client(tls: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("a client from a built TLS config")
}

/// What the config asked for; no I/O until [`AuthSpec::build`].
#[derive(Clone)]
pub enum AuthSpec {
    SharedKey {
        account: String,
        key: Vec<u8>,
    },
    Sas(String),
    Workload(WorkloadSpec),
    Managed {
        client_id: Option<String>,
    },
    /// Workload identity when its environment is there (`AZURE_FEDERATED_TOKEN_FILE`), else
    /// managed identity: the production half of the SDK's default chain.
    Default {
        client_id: Option<String>,
    },
}

#[derive(Clone)]
pub struct WorkloadSpec {
    pub client_id: String,
    pub tenant_id: String,
    pub token_file: PathBuf,
    pub authority: String,
}

impl WorkloadSpec {
    /// From the options, else the webhook's environment. `None` names what is missing.
    pub fn resolve(
        client_id: Option<&str>,
        tenant_id: Option<&str>,
        token_file: Option<&str>,
    ) -> Result<WorkloadSpec, String> {
        let pick = |opt: Option<&str>, env: &str, option: &str| {
            opt.map(str::to_string)
                .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
                .ok_or_else(|| format!("workload identity needs {option} or ${env}"))
        };
        let authority = std::env::var("AZURE_AUTHORITY_HOST")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| PUBLIC_AUTHORITY.to_string());
        check_authority(&authority)?;
        Ok(WorkloadSpec {
            client_id: pick(client_id, "AZURE_CLIENT_ID", "client_id")?,
            tenant_id: pick(tenant_id, "AZURE_TENANT_ID", "tenant_id")?,
            token_file: pick(
                token_file,
                "AZURE_FEDERATED_TOKEN_FILE",
                "workload_identity_token_file",
            )?
            .into(),
            authority,
        })
    }
}

/// HTTPS, or plain HTTP to a loopback address (a local identity proxy).
fn check_authority(url: &str) -> Result<(), String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("AZURE_AUTHORITY_HOST '{url}': {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "AZURE_AUTHORITY_HOST '{url}' must be https (plain http only to a loopback address)"
        )),
    }
}

impl AuthSpec {
    pub fn build(self, http: &reqwest::Client) -> Result<Auth, String> {
        let source = |kind| {
            Auth::Bearer(Arc::new(TokenSource {
                kind,
                cached: tokio::sync::Mutex::new(None),
            }))
        };
        let managed = |client_id: Option<String>| -> Result<TokenKind, String> {
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: client_id
                    .clone()
                    .map(azure_identity::UserAssignedId::ClientId),
                ..Default::default()
            };
            let credential = azure_identity::ManagedIdentityCredential::new(Some(options))
                .map_err(|e| format!("managed identity: {e}"))?;
            Ok(TokenKind::Managed {
                client_id,
                credential,
            })
        };
        let workload = |spec: WorkloadSpec| TokenKind::Workload {
            spec,
            http: http.clone(),
        };
        Ok(match self {
            AuthSpec::SharedKey { account, key } => Auth::SharedKey { account, key },
            AuthSpec::Sas(token) => Auth::Sas(token),
            AuthSpec::Workload(spec) => source(workload(spec)),
            AuthSpec::Managed { client_id } => source(managed(client_id)?),
            AuthSpec::Default { client_id } => {
                match WorkloadSpec::resolve(client_id.as_deref(), None, None) {
                    Ok(spec) => source(workload(spec)),
                    Err(_) => source(managed(client_id)?),
                }
            }
        })
    }
}

pub enum Auth {
    SharedKey { account: String, key: Vec<u8> },
    Sas(String),
    Bearer(Arc<TokenSource>),
}

impl Auth {
    /// The identity, for logs and errors (never the secret).
    pub fn describe(&self) -> String {
        match self {
            Auth::SharedKey { account, .. } => format!("shared key of account {account}"),
            Auth::Sas(_) => "SAS token".into(),
            Auth::Bearer(s) => s.describe(),
        }
    }
}

/// Why a token could not be had: `permanent` when retrying soon changes nothing (a refused
/// assertion, an unknown client); the message names the identity and the service's code.
#[derive(Debug)]
pub struct TokenError {
    pub permanent: bool,
    pub message: String,
}

enum TokenKind {
    Workload {
        spec: WorkloadSpec,
        http: reqwest::Client,
    },
    Managed {
        client_id: Option<String>,
        credential: Arc<azure_identity::ManagedIdentityCredential>,
    },
}

/// An Entra ID token source with a cache, refreshed when less than a fifth of the token's
/// life (at most 5 minutes) is left, or after [`TokenSource::invalidate`].
pub struct TokenSource {
    kind: TokenKind,
    cached: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn describe(&self) -> String {
        match &self.kind {
            TokenKind::Workload { spec, .. } => format!(
                "workload identity (client id {}, tenant {}, token file {})",
                spec.client_id,
                spec.tenant_id,
                spec.token_file.display()
            ),
            TokenKind::Managed { client_id, .. } => match client_id {
                Some(id) => format!("managed identity (client id {id})"),
                None => "managed identity (system-assigned)".into(),
            },
        }
    }

    /// A valid access token for Blob Storage.
    pub async fn token(&self) -> Result<String, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, refresh_at)) = cached.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self.fetch().await?;
        let margin = (lifetime / 5).min(Duration::from_secs(300));
        *cached = Some((token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// Forgets the cached token (the service refused it): the next request gets a new one.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn fetch(&self) -> Result<(String, Duration), TokenError> {
        match &self.kind {
            TokenKind::Workload { spec, http } => exchange(spec, http).await,
            TokenKind::Managed { credential, .. } => {
                let token = credential
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| TokenError {
                        permanent: false,
                        message: format!("{}: no token: {e}", self.describe()),
                    })?;
                let left = token.expires_on - azure_core::time::OffsetDateTime::now_utc();
                let left = Duration::try_from(left).unwrap_or(Duration::from_secs(60));
                Ok((token.token.secret().to_string(), left))
            }
        }
    }
}

/// The client-credentials grant with the federated token as the client assertion
/// (`{authority}{tenant}/oauth2/v2.0/token`). The token file is read on every call.
async fn exchange(
    spec: &WorkloadSpec,
    http: &reqwest::Client,
) -> Result<(String, Duration), TokenError> {
    let who = || {
        format!(
            "workload identity (client id {}, tenant {})",
            spec.client_id, spec.tenant_id
        )
    };
    let assertion = tokio::fs::read_to_string(&spec.token_file)
        .await
        .map_err(|e| TokenError {
            permanent: false,
            message: format!(
                "{}: cannot read the federated token file {}: {e}",
                who(),
                spec.token_file.display()
            ),
        })?;
    let url = format!(
        "{}/{}/oauth2/v2.0/token",
        spec.authority.trim_end_matches('/'),
        spec.tenant_id
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", spec.client_id.as_str()),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.trim()),
        ("scope", STORAGE_SCOPE),
    ];
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let response = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| TokenError {
            permanent: false,
            message: format!(
                "{}: token endpoint {url} unreachable: {}",
                who(),
                crate::outputs::objectstore::store::display_chain(&e.without_url())
            ),
        })?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !status.is_success() {
        // Entra ID names the cause in `error_codes` (AADSTS…) and `error`; the description
        // is not echoed in full (it can be long) but its code is.
        let codes: Vec<String> = json["error_codes"]
            .as_array()
            .map(|a| a.iter().map(|c| format!("AADSTS{c}")).collect())
            .unwrap_or_default();
        let error = json["error"].as_str().unwrap_or("no error code");
        let code = if codes.is_empty() {
            error.to_string()
        } else {
            format!("{} ({error})", codes.join(", "))
        };
        return Err(TokenError {
            permanent: status.is_client_error() && status.as_u16() != 429,
            message: format!(
                "{}: token exchange at {url} refused: HTTP {}, {code}",
                who(),
                status.as_u16()
            ),
        });
    }
    let token = json["access_token"].as_str().ok_or_else(|| TokenError {
        permanent: false,
        message: format!(
            "{}: the token endpoint {url} returned no access_token",
            who()
        ),
    })?;
    let expires_in = json["expires_in"]
        .as_u64()
        .or_else(|| json["expires_in"].as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(300);
    Ok((token.to_string(), Duration::from_secs(expires_in.max(1))))
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The Shared Key `Authorization` header value for a request (Blob service, version
/// 2015-02-21 and later). `headers` are the request's headers with lowercase names;
/// `path` is the URL path as sent (percent-encoded), `query` the decoded query pairs.
pub fn shared_key_authorization(
    account: &str,
    key: &[u8],
    method: &str,
    path: &str,
    query: &[(String, String)],
    headers: &[(String, String)],
    content_length: u64,
) -> String {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let length = if content_length == 0 {
        String::new()
    } else {
        content_length.to_string()
    };
    let mut text = format!(
        "{method}\n{}\n{}\n{length}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n",
        get("content-encoding"),
        get("content-language"),
        get("content-md5"),
        get("content-type"),
        get("if-modified-since"),
        get("if-match"),
        get("if-none-match"),
        get("if-unmodified-since"),
        get("range"),
    );
    let mut ms: Vec<&(String, String)> = headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-ms-"))
        .collect();
    ms.sort();
    for (n, v) in ms {
        text.push_str(&format!("{n}:{}\n", v.trim()));
    }
    text.push('/');
    text.push_str(account);
    text.push_str(&percent_decode(path));
    let mut params: Vec<(String, &str)> = query
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    params.sort();
    for (k, v) in params {
        text.push_str(&format!("\n{k}:{v}"));
    }
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let signature = aws_lc_rs::hmac::sign(&hmac_key, text.as_bytes());
    format!(
        "SharedKey {account}:{}",
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_must_be_https_unless_loopback() {
        assert!(check_authority("https://login.microsoftonline.com/").is_ok());
        assert!(check_authority("http://127.0.0.1:8080/").is_ok());
        assert!(check_authority("http://localhost:8080/").is_ok());
        assert!(check_authority("http://login.example.com/").is_err());
    }

    #[test]
    fn form_values_are_encoded() {
        assert_eq!(
            form_encode("https://storage.azure.com/.default"),
            "https%3A%2F%2Fstorage.azure.com%2F.default"
        );
        assert_eq!(form_encode("a b+c"), "a+b%2Bc");
    }

    #[test]
    fn percent_decoding_of_paths() {
        assert_eq!(percent_decode("/c/a%20b%2Fx"), "/c/a b/x");
        assert_eq!(percent_decode("/c/100%"), "/c/100%");
    }
}
