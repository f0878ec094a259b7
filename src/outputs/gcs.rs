//! `gcs`: Fluent Bit 5.1's Google Cloud Storage output (option names and defaults from
//! `plugins/out_gcs/gcs.c`) on the shared object-store engine, authenticated by Application
//! Default Credentials (GKE Workload Identity through the metadata server, Workload Identity
//! Federation files, service-account keys; [`crate::cloud::gcp`]).
//!
//! Differences from Fluent Bit, on purpose: `endpoint` (emulators), `auth_type none` (emulators
//! only) and `tls.ca_file`; identities other than a service-account key; `total_file_size` (default 100M) seals a chunk by size
//! besides `upload_timeout`; bodies above `upload_chunk_size` (8M) go by resumable upload; with
//! `static_file_path true` and a key without `$UUID`/`$INDEX`/time fields each upload
//! **appends** by compose (`static_file_mode append`, the default; `overwrite` replaces as
//! Fluent Bit does); new objects are never replaced (`ifGenerationMatch=0`); `compression zstd`;
//! a leading `/` in `gcs_key_format` is dropped (so an `s3_key_format` carries over). Keys are
//! Fluent Bit's gcs keys (strftime of the upload time, `-object` + 8 hex digits); bodies are its
//! JSON Lines with no date key (`json_date_key` adds one).

use std::time::Duration;

use super::format::DateKey;
use super::objectstore::key::{KeyFormat, KeyTime, SuffixAlphabet};
use super::objectstore::store::gcs::{GcsSpec, ObjectOptions, CHUNK_GRANULE, DEFAULT_CHUNK};
use super::objectstore::store::StoreSpec;
use super::objectstore::{options, BodyFormat, KeySuffix, ObjectStoreOutput, UploadSettings};
use super::Backoff;

/// The largest `upload_chunk_size`: a request that fails is sent again whole, so a chunk bounds
/// what a retry resends (bodies are streamed from the spool file, not held in memory).
const MAX_CHUNK: u64 = 64 * 1024 * 1024;
use crate::cloud::gcp::GcpIdentity;
use crate::config::{ConfigError, Props};
use crate::json::DateFormat;

/// Fluent Bit's `canned_acl` spellings → the JSON API's `predefinedAcl`.
fn predefined_acl(value: &str) -> Option<&'static str> {
    Some(match value.to_ascii_lowercase().as_str() {
        "authenticated-read" | "authenticatedread" => "authenticatedRead",
        "bucket-owner-full-control" | "bucketownerfullcontrol" => "bucketOwnerFullControl",
        "bucket-owner-read" | "bucketownerread" => "bucketOwnerRead",
        "private" => "private",
        "project-private" | "projectprivate" => "projectPrivate",
        "public-read" | "publicread" => "publicRead",
        _ => return None,
    })
}

pub fn build(
    p: &Props,
    instance: &str,
    storage_path: Option<&str>,
    backoff: Backoff,
) -> Result<ObjectStoreOutput, ConfigError> {
    let bucket = p.required("bucket")?.value.clone();
    let total_file_size = p.size("total_file_size", 100_000_000)?;
    if let Some(prop) = p.prop("total_file_size") {
        if total_file_size == 0 {
            return Err(ConfigError::key(prop, "total_file_size must be above 0"));
        }
    }
    let chunk_size = p.size("upload_chunk_size", DEFAULT_CHUNK)?;
    if let Some(prop) = p.prop("upload_chunk_size") {
        if chunk_size == 0 || chunk_size % CHUNK_GRANULE != 0 || chunk_size > MAX_CHUNK {
            return Err(ConfigError::key(
                prop,
                "upload_chunk_size must be a non-zero multiple of 262,144 bytes (256 KiB; note 256K = 256,000), at most 64M (a failed request is sent again whole)",
            ));
        }
    }
    let compression = options::compression(p)?;
    let canned_acl = match p.prop("canned_acl") {
        None => None,
        Some(prop) => Some(predefined_acl(&prop.value).ok_or_else(|| {
            ConfigError::key(
                prop,
                format!("unsupported canned ACL '{}' (authenticated-read, bucket-owner-full-control, bucket-owner-read, private, project-private, public-read)", prop.value),
            )
        })?),
    };
    if p.int("store_chunk_limit", 0)? < 0 {
        let prop = p
            .prop("store_chunk_limit")
            .expect("only a set value is negative");
        return Err(ConfigError::key(
            prop,
            "store_chunk_limit cannot be negative",
        ));
    }
    let date_key = match p.prop("json_date_key") {
        None => DateKey {
            key: None,
            format: DateFormat::Double,
        },
        Some(_) => DateKey::from_props(p, DateFormat::Double)?,
    };
    let retry_limit = super::parse_retry_limit(p, Some(5))?.unwrap_or(u32::MAX - 1);
    let settings = UploadSettings {
        key: KeyFormat {
            format: p.string_or("gcs_key_format", "fluent-bit-logs/$TAG/%Y/%m/%d/%H/%M/%S"),
            delimiters: p.string_or("gcs_key_format_tag_delimiters", "."),
            time: KeyTime::Upload,
        },
        key_suffix: KeySuffix::Object(SuffixAlphabet::Hex),
        static_file_path: p.bool("static_file_path", false)?,
        append: options::appends(p)?,
        compression,
        total_file_size,
        upload_timeout: p.duration("upload_timeout", Duration::from_secs(600))?,
        retry_limit,
        backoff,
    };
    let endpoint = match p.prop("endpoint") {
        None => None,
        Some(e) if e.value.starts_with("http://") || e.value.starts_with("https://") => {
            Some(e.value.clone())
        }
        Some(e) => {
            return Err(ConfigError::key(
                e,
                "endpoint must be an http:// or https:// URL (e.g. http://127.0.0.1:9023 for an emulator)",
            ))
        }
    };
    let ca_file = p.str("tls.ca_file").map(std::path::PathBuf::from);
    if let (Some(path), Some(prop)) = (&ca_file, p.prop("tls.ca_file")) {
        let pem = std::fs::read(path).map_err(|e| ConfigError::key(prop, format!("{e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ConfigError::key(prop, format!("not a PEM certificate bundle: {e}")))?;
        if certs.is_empty() {
            return Err(ConfigError::key(prop, "no PEM certificate in this file"));
        }
    }
    let identity = GcpIdentity::from_props(p)?;
    // A bearer token over plain http could be read on the way: only to this machine.
    if let (Some(url), Some(prop)) = (&endpoint, p.prop("endpoint")) {
        let host = url
            .strip_prefix("http://")
            .map(|rest| rest.split('/').next().unwrap_or_default());
        let loopback = |h: &str| {
            let name = h.rsplit_once(':').map_or(h, |(n, _)| n);
            name == "localhost" || name.starts_with("127.") || name == "[::1]"
        };
        if host.is_some_and(|h| !loopback(h)) && !identity.is_anonymous() {
            return Err(ConfigError::key(
                prop,
                "an http:// endpoint would send the access token unencrypted: use https://, a loopback emulator, or auth_type none",
            ));
        }
    }
    let store = StoreSpec::Gcs(GcsSpec {
        identity,
        endpoint,
        bucket: bucket.clone(),
        options: ObjectOptions {
            content_type: p.string_or("content_type", "application/json"),
            content_encoding: compression.content_encoding(),
            predefined_acl: canned_acl,
            send_content_md5: p.bool("send_content_md5", false)?,
        },
        ca_file,
        chunk_size,
    });
    // Resolved and created at start, so `--dry-run` writes nothing.
    let (spool_dir, limit) = options::spool(p, instance, storage_path, &bucket)?;
    // Uploads are ordered per key, and the spool bound is in bytes (`store_dir_limit_size`).
    p.accept(&[
        "preserve_data_ordering",
        "store_chunk_limit",
        "retry_exhausted_action",
        "workers",
    ]);
    Ok(ObjectStoreOutput::new(
        instance.to_string(),
        spool_dir,
        limit,
        BodyFormat::JsonLines(date_key),
        settings,
        store,
    ))
}
