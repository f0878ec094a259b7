//! `azure_blob`: Fluent Bit's Azure Blob output (option names and defaults from
//! `plugins/out_azure_blob/azure_blob_conf.c`, 5.1.1) on the shared object-store engine.
//!
//! Blob names and bodies as Fluent Bit writes them: JSON Lines with a `date_key` (default
//! `@timestamp`, ISO 8601); `appendblob` (default) appends to `<path>/<tag>`, `blockblob` writes
//! `<path>/<tag>.<blob_uri_length random>.<epoch ms>[.gz|.zst]`. `path` takes `$TAG`,
//! `$TAG[n]`, `$UUID` and strftime fields (from the chunk's first record).
//!
//! Differences from Fluent Bit, on purpose: records are spooled durably and uploaded every
//! `upload_timeout` (default 1m) or `upload_file_size`, not once per flush, so an append blob
//! takes a block per minute, not per second; an append blob that reaches its block limit
//! continues in `<name>.1`, `<name>.2`, … instead of failing with `BlockCountExceedsLimit`;
//! `auth_type` also takes `workload_identity`, `managed_identity` and `default`; `https://` is
//! used without `tls on`, and an endpoint's scheme decides.

use std::time::Duration;

use base64::Engine;

use super::format::DateKey;
use super::objectstore::compress::Compression;
use super::objectstore::key::{KeyFormat, KeyTime};
use super::objectstore::store::azure::{AzureSpec, BlobType, APPEND_BLOCK_LIMIT, BLOCK_SIZE};
use super::objectstore::store::StoreSpec;
use super::objectstore::{options, BodyFormat, KeySuffix, ObjectStoreOutput, UploadSettings};
use super::Backoff;
use crate::cloud::azure::{tls_config, AuthSpec, WorkloadSpec};
use crate::config::{ConfigError, Props};
use crate::json::DateFormat;

pub fn build(
    p: &Props,
    instance: &str,
    storage_path: Option<&str>,
    backoff: Backoff,
) -> Result<ObjectStoreOutput, ConfigError> {
    let account = p.required("account_name")?.value.clone();
    let container = p.required("container_name")?.value.clone();
    let blob_type = match p.prop("blob_type") {
        None => BlobType::Append,
        Some(b) => match b.value.to_ascii_lowercase().as_str() {
            "appendblob" => BlobType::Append,
            "blockblob" => BlobType::Block,
            _ => return Err(ConfigError::key(b, "expected appendblob or blockblob")),
        },
    };
    let compress = match p.prop("compress") {
        None => None,
        Some(c) => Some(Compression::parse(&c.value).ok_or_else(|| {
            ConfigError::key(
                c,
                format!("compress '{}' is not supported (gzip, zstd)", c.value),
            )
        })?),
    };
    let compress_blob = p.bool("compress_blob", false)?;
    if compress_blob && blob_type == BlobType::Append {
        return Err(ConfigError::key(
            p.prop("compress_blob").expect("set when true"),
            "compress_blob needs blob_type blockblob",
        ));
    }
    // `compress` alone: the bytes are compressed and the blob says so (Content-Encoding);
    // `compress_blob`: a compressed file (`.gz`/`.zst`), gzip unless `compress zstd`.
    let compression = match (compress, compress_blob) {
        (Some(c), _) => c,
        (None, true) => Compression::Gzip,
        (None, false) => Compression::None,
    };
    let (content_type, content_encoding, extension) = match (compress_blob, compression) {
        (true, Compression::Zstd) => ("application/zstd", None, ".zst"),
        (true, _) => ("application/gzip", None, ".gz"),
        (false, c) => ("application/json", c.content_encoding(), ""),
    };
    let date_key = match p.str("date_key") {
        None => Some(b"@timestamp".to_vec()),
        Some(v) if crate::config::units::parse_bool(v) == Some(false) => None,
        Some(v) => Some(v.as_bytes().to_vec()),
    };
    let body = BodyFormat::JsonLines(DateKey {
        key: date_key,
        format: DateFormat::Iso8601,
    });
    let path = p.str("path").unwrap_or("").trim_end_matches('/');
    let key_format = if path.is_empty() {
        "/$TAG".to_string()
    } else {
        format!("/{}/$TAG", path.trim_start_matches('/'))
    };
    let random_len = p.int("blob_uri_length", 64)?;
    if !(1..=1024).contains(&random_len) {
        return Err(ConfigError::key(
            p.prop("blob_uri_length").expect("default is valid"),
            "blob_uri_length must be between 1 and 1024",
        ));
    }
    let total_file_size = p.size("upload_file_size", 200_000_000)?;
    if total_file_size < 1_000_000 {
        return Err(ConfigError::key(
            p.prop("upload_file_size").expect("default is valid"),
            "upload_file_size must be at least 1M",
        ));
    }
    let append_block_limit = p.int("append_block_limit", APPEND_BLOCK_LIMIT as i64)?;
    if !(1..=APPEND_BLOCK_LIMIT as i64).contains(&append_block_limit) {
        return Err(ConfigError::key(
            p.prop("append_block_limit").expect("default is valid"),
            "append_block_limit must be between 1 and 50000 (the service's limit)",
        ));
    }
    let block_size = p.size("block_size", BLOCK_SIZE)?;
    if !(512..=BLOCK_SIZE).contains(&block_size) {
        return Err(ConfigError::key(
            p.prop("block_size").expect("default is valid"),
            "block_size must be between 512 bytes and 4,194,304 bytes (4 MiB)",
        ));
    }

    let endpoint = match p.str("endpoint") {
        Some(e) if e.contains("://") => e.trim_end_matches('/').to_string(),
        Some(e) => format!("https://{}", e.trim_end_matches('/')),
        None => format!("https://{account}.blob.core.windows.net"),
    };
    let base_url = if p.bool("emulator_mode", false)? {
        format!("{endpoint}/{account}")
    } else {
        endpoint
    };
    let https = base_url.starts_with("https://");
    if !https && !base_url.starts_with("http://") {
        return Err(ConfigError::key(
            p.prop("endpoint")
                .expect("only a set endpoint can be wrong"),
            "endpoint must be an http:// or https:// URL",
        ));
    }

    let auth = auth_spec(p, &account, https)?;
    if let Some(v) = p.prop("tls.verify") {
        if crate::config::units::parse_bool(&v.value) == Some(false) {
            return Err(ConfigError::key(v, "turning certificate verification off is not supported: trust the server's CA with tls.ca_file"));
        }
    }
    let ca_file = p.prop("tls.ca_file");
    let tls =
        tls_config(ca_file.map(|c| std::path::Path::new(&c.value))).map_err(|e| match ca_file {
            Some(c) => ConfigError::key(c, e),
            None => ConfigError::key(p.required("account_name").expect("checked above"), e),
        })?;

    let appends = blob_type == BlobType::Append;
    let retry_limit = super::parse_retry_limit(p, Some(5))?.unwrap_or(u32::MAX - 1);
    let settings = UploadSettings {
        key: KeyFormat {
            format: key_format,
            delimiters: ".".into(),
            // Fluent Bit fills `path`'s time fields at the upload (its flush), not from a record.
            time: KeyTime::Upload,
        },
        key_suffix: KeySuffix::AzureBlock {
            random_len: random_len as usize,
            extension,
        },
        static_file_path: appends,
        append: appends,
        compression,
        total_file_size,
        upload_timeout: p.duration("upload_timeout", Duration::from_secs(60))?,
        retry_limit,
        backoff,
    };
    let store = StoreSpec::Azure(Box::new(AzureSpec {
        account: account.clone(),
        container: container.clone(),
        base_url,
        auth,
        tls,
        blob_type,
        auto_create_container: p.bool("auto_create_container", true)?,
        content_type: content_type.to_string(),
        content_encoding,
        block_size,
        append_block_limit: append_block_limit as u64,
    }));
    let sub = format!("{account}/{container}");
    let (spool_dir, limit) =
        options::spool_with_alias(p, instance, storage_path, &sub, Some("buffer_dir"))?;
    // Fluent Bit options whose job the spool does (buffering, its database, its scheduler),
    // or that change nothing here.
    p.accept(&[
        "tls",
        "buffering_enabled",
        "unify_tag",
        "azure_blob_buffer_key",
        "buffer_file_delete_early",
        "scheduler_max_retries",
        "delete_on_max_upload_error",
        "io_timeout",
        "database_file",
        "part_size",
        "workers",
    ]);
    Ok(ObjectStoreOutput::new(
        instance.to_string(),
        spool_dir,
        limit,
        body,
        settings,
        store,
    ))
}

fn auth_spec(p: &Props, account: &str, https: bool) -> Result<AuthSpec, ConfigError> {
    let kind = p.prop("auth_type");
    let name = kind.map_or("key".to_string(), |k| k.value.to_ascii_lowercase());
    let spec = match name.as_str() {
        "key" => {
            let prop = p.required("shared_key")?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(prop.value.trim())
                .map_err(|_| ConfigError::key(prop, "shared_key is not valid base64"))?;
            return Ok(AuthSpec::SharedKey {
                account: account.to_string(),
                key,
            });
        }
        "sas" => {
            let token = p.required("sas_token")?.value.trim_start_matches('?');
            return Ok(AuthSpec::Sas(token.to_string()));
        }
        "workload_identity" => AuthSpec::Workload(
            WorkloadSpec::resolve(
                p.str("client_id"),
                p.str("tenant_id"),
                p.str("workload_identity_token_file"),
            )
            .map_err(|e| ConfigError::key(kind.expect("named"), e))?,
        ),
        "managed_identity" => AuthSpec::Managed {
            client_id: p.str("client_id").map(str::to_string),
        },
        "default" => AuthSpec::Default {
            client_id: p.str("client_id").map(str::to_string),
        },
        _ => {
            return Err(ConfigError::key(
                kind.expect("named"),
                "expected key, sas, workload_identity, managed_identity or default",
            ))
        }
    };
    if !https {
        return Err(ConfigError::key(
            kind.expect("named"),
            format!("auth_type {name} sends bearer tokens, which go over https only: use an https:// endpoint"),
        ));
    }
    Ok(spec)
}
