//! Google Cloud identity for the `gcs` output, through Google's official `google-cloud-auth`
//! crate: a credentials file named by `google_service_credentials` / `GOOGLE_SERVICE_CREDENTIALS`
//! (Fluent Bit's option; a service-account key or an `external_account` Workload Identity
//! Federation file), else Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
//! gcloud's well-known file, else the metadata server: GKE Workload Identity, whose address the
//! crate takes from `GCE_METADATA_HOST` as Google's other libraries do). The crate caches tokens
//! and refreshes them before they expire.
//!
//! Invariant: tokens and keys never reach logs or errors; [`GcpIdentity::describe`] names the
//! source (file, service-account e-mail, federation audience, metadata server) only.

use std::path::{Path, PathBuf};

use google_cloud_auth::credentials::{self, external_account, service_account, Credentials};

use crate::config::{ConfigError, Props};

/// Read and write objects: what Fluent Bit's `gcs` output asks for.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// Where the credentials come from, resolved at config time.
#[derive(Debug, Clone)]
pub struct GcpIdentity {
    source: Source,
}

#[derive(Clone)]
enum Source {
    /// A credentials file (its parsed JSON), and what named it.
    File {
        path: PathBuf,
        named_by: &'static str,
        json: serde_json::Value,
    },
    /// Application Default Credentials with no file named: gcloud's well-known file, else the
    /// metadata server.
    Default,
    /// `auth_type none`: no `Authorization` header (local emulators only).
    Anonymous,
}

/// By hand: a service-account file holds a private key, which must never be printed.
impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File { path, named_by, .. } => f
                .debug_struct("File")
                .field("path", path)
                .field("named_by", named_by)
                .finish_non_exhaustive(),
            Source::Default => f.write_str("Default"),
            Source::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl GcpIdentity {
    /// `auth_type none`: no token is ever sent.
    pub fn is_anonymous(&self) -> bool {
        matches!(self.source, Source::Anonymous)
    }

    /// `google_service_credentials`, else `GOOGLE_SERVICE_CREDENTIALS`, else ADC (which reads
    /// `GOOGLE_APPLICATION_CREDENTIALS` itself). A file named here must be readable JSON of a
    /// type this output uses, or the configuration is refused.
    pub fn from_props(p: &Props) -> Result<GcpIdentity, ConfigError> {
        if let Some(prop) = p.prop("auth_type") {
            match prop.value.to_ascii_lowercase().as_str() {
                "adc" => {}
                "none" if p.prop("endpoint").is_some() => {
                    return Ok(GcpIdentity {
                        source: Source::Anonymous,
                    })
                }
                "none" => {
                    return Err(ConfigError::key(
                        prop,
                        "auth_type none is for emulators: set endpoint too",
                    ))
                }
                _ => return Err(ConfigError::key(prop, "expected adc or none")),
            }
        }
        if let Some(prop) = p.prop("google_service_credentials") {
            let json =
                read_credentials(Path::new(&prop.value)).map_err(|e| ConfigError::key(prop, e))?;
            let path = PathBuf::from(&prop.value);
            return Ok(GcpIdentity {
                source: Source::File {
                    path,
                    named_by: "google_service_credentials",
                    json,
                },
            });
        }
        let Some(path) = std::env::var("GOOGLE_SERVICE_CREDENTIALS")
            .ok()
            .filter(|v| !v.is_empty())
        else {
            return Ok(GcpIdentity {
                source: Source::Default,
            });
        };
        let json = read_credentials(Path::new(&path))
            .map_err(|e| ConfigError::plain(format!("GOOGLE_SERVICE_CREDENTIALS={path}: {e}")))?;
        Ok(GcpIdentity {
            source: Source::File {
                path: PathBuf::from(path),
                named_by: "GOOGLE_SERVICE_CREDENTIALS",
                json,
            },
        })
    }

    /// The identity in words, for logs and errors: never a key or token.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::File {
                path,
                named_by,
                json,
            } => {
                let field = |k: &str| json.get(k).and_then(|v| v.as_str()).unwrap_or("?");
                match field("type") {
                    "service_account" => format!(
                        "service account {} (key file {}, from {named_by})",
                        field("client_email"),
                        path.display()
                    ),
                    "external_account" => format!(
                        "workload identity federation {} (token exchange at {}, file {}, from {named_by})",
                        field("audience"),
                        field("token_url"),
                        path.display()
                    ),
                    other => format!("{other} credentials ({}, from {named_by})", path.display()),
                }
            }
            Source::Anonymous => "no credentials (auth_type none)".into(),
            Source::Default => match std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
                Ok(file) if !file.is_empty() => {
                    format!("application default credentials from GOOGLE_APPLICATION_CREDENTIALS={file}")
                }
                _ => {
                    let host = std::env::var("GCE_METADATA_HOST")
                        .unwrap_or_else(|_| "metadata.google.internal".into());
                    format!("application default credentials (gcloud's file if present, else the metadata server at {host})")
                }
            },
        }
    }

    /// The crate's credentials (token cache included), scoped for Cloud Storage.
    pub fn credentials(&self) -> Result<Credentials, String> {
        let built = match &self.source {
            Source::File { json, .. } => match json.get("type").and_then(|t| t.as_str()) {
                Some("service_account") => service_account::Builder::new(json.clone())
                    .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                        STORAGE_SCOPE,
                    ]))
                    .build(),
                Some("external_account") => external_account::Builder::new(json.clone())
                    .with_scopes([STORAGE_SCOPE])
                    .build(),
                _ => unreachable!("checked by read_credentials"),
            },
            Source::Anonymous => Ok(credentials::anonymous::Builder::new().build()),
            Source::Default => credentials::Builder::default()
                .with_scopes([STORAGE_SCOPE])
                .build(),
        };
        built.map_err(|e| format!("{}: {e}", self.describe()))
    }
}

/// The file's JSON, if it is a credentials type this output uses. Errors name the problem,
/// never the file's contents.
fn read_credentials(path: &Path) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read credentials file {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| format!("credentials file {} is not JSON", path.display()))?;
    match json.get("type").and_then(|t| t.as_str()) {
        Some("service_account" | "external_account") => Ok(json),
        Some(other) => Err(format!(
            "credentials file {}: type '{other}' is not supported (service_account, external_account)",
            path.display()
        )),
        None => Err(format!(
            "credentials file {} has no \"type\" (service_account, external_account)",
            path.display()
        )),
    }
}
