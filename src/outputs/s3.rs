//! `s3`: Fluent Bit's S3 output (option names and defaults from `plugins/out_s3/s3.c`) on the
//! shared object-store engine, for S3, S3-compatible stores (MinIO, OCI, s3s) via `endpoint`,
//! and a local directory via `endpoint file:///dir`.
//!
//! Difference from Fluent Bit, on purpose: with `static_file_path true` and a key without
//! `$UUID`/`$INDEX`/time fields (Union's `/persisted-logs/$TAG`), each upload **appends** to the
//! object instead of replacing it (`static_file_mode append`, the default); `static_file_mode
//! overwrite` restores Fluent Bit's behaviour. Keys without `$UUID`/`$INDEX` get Fluent Bit's
//! `-object<8 random>` suffix on every upload path (Fluent Bit adds it to PutObject only, so two
//! of its multipart uploads in the same second replace each other), and new objects are created
//! with `If-None-Match: *`, so nothing is replaced silently.
//!
//! Spool: `store_dir` (default `[SERVICE] storage.path/<instance>`, else `/var/lib/logferry` or
//! `~/.local/state/logferry`), bounded by `store_dir_limit_size`, **2G by default** (Fluent Bit:
//! unlimited; `0` lifts the bound).

use std::path::PathBuf;
use std::time::Duration;

use super::format::DateKey;
use super::objectstore::key::{KeyFormat, KeyTime, SuffixAlphabet};
use super::objectstore::store::s3::{PutOptions, S3Spec, MIN_PART};
use super::objectstore::store::StoreSpec;
use super::objectstore::{options, BodyFormat, KeySuffix, ObjectStoreOutput, UploadSettings};
use super::Backoff;
use crate::cloud::aws::{with_scheme, AwsIdentity};
use crate::config::{ConfigError, Props};
use crate::json::DateFormat;

pub fn build(
    p: &Props,
    instance: &str,
    storage_path: Option<&str>,
    backoff: Backoff,
) -> Result<ObjectStoreOutput, ConfigError> {
    let bucket = p.required("bucket")?.value.clone();
    let key_prop = p.prop("s3_key_format");
    let key_format = key_prop
        .map(|k| k.value.clone())
        .unwrap_or_else(|| "/fluent-bit-logs/$TAG/%Y/%m/%d/%H/%M/%S".into());
    if !key_format.starts_with('/') {
        return Err(ConfigError::key(
            key_prop.expect("only a set key can be wrong"),
            "s3_key_format must start with '/'",
        ));
    }
    let total_file_size = p.size("total_file_size", 100_000_000)?;
    if !(1_000_000..=50_000_000_000).contains(&total_file_size) {
        return Err(ConfigError::key(
            p.prop("total_file_size").expect("default is valid"),
            "total_file_size must be between 1M and 50G",
        ));
    }
    let upload_chunk_size = p.size("upload_chunk_size", MIN_PART)?;
    if let Some(prop) = p.prop("upload_chunk_size") {
        if upload_chunk_size < MIN_PART {
            return Err(ConfigError::key(prop, "upload_chunk_size must be at least 5,242,880 bytes (S3's minimum part); note 5M = 5,000,000"));
        }
        if upload_chunk_size > total_file_size {
            return Err(ConfigError::key(
                prop,
                "upload_chunk_size must not exceed total_file_size",
            ));
        }
    }
    let compression = options::compression(p)?;
    if let Some(f) = p.prop("format") {
        if !f.value.eq_ignore_ascii_case("json_lines") {
            return Err(ConfigError::key(f, "only format json_lines is supported"));
        }
    }
    let body = match p.str("log_key") {
        Some(k) => BodyFormat::LogKey(k.as_bytes().to_vec()),
        None => BodyFormat::JsonLines(DateKey::from_props(p, DateFormat::Iso8601)?),
    };
    let append = options::appends(p)?;
    // Unlimited: uploads are retried until they succeed either way; the limit only decides
    // when a chunk counts as a retry failure.
    let retry_limit = super::parse_retry_limit(p, Some(5))?.unwrap_or(u32::MAX - 1);
    let settings = UploadSettings {
        key: KeyFormat {
            format: key_format,
            delimiters: p.string_or("s3_key_format_tag_delimiters", "."),
            time: KeyTime::FirstRecord,
        },
        key_suffix: KeySuffix::Object(SuffixAlphabet::Alphanumeric),
        static_file_path: p.bool("static_file_path", false)?,
        append,
        compression,
        total_file_size,
        upload_timeout: p.duration("upload_timeout", Duration::from_secs(600))?,
        retry_limit,
        backoff,
    };
    let options = PutOptions {
        content_type: p.str("content_type").map(str::to_string),
        content_encoding: compression.content_encoding(),
        canned_acl: p.str("canned_acl").map(str::to_string),
        storage_class: p.str("storage_class").map(str::to_string),
        send_content_md5: p.bool("send_content_md5", false)?,
    };
    let identity = AwsIdentity::from_props(p, "us-east-1")?;
    let store = match p.str("endpoint") {
        Some(e) if e.starts_with("file://") => {
            StoreSpec::Local(PathBuf::from(e.trim_start_matches("file://")))
        }
        endpoint => StoreSpec::S3(S3Spec {
            identity: Box::new(identity),
            endpoint: endpoint.map(with_scheme),
            bucket: bucket.clone(),
            options,
            part_size: upload_chunk_size,
            multipart: !p.bool("use_put_object", false)? && total_file_size >= 2 * MIN_PART,
        }),
    };
    // Resolved and created at start, so `--dry-run` writes nothing.
    let (spool_dir, limit) = options::spool(p, instance, storage_path, &bucket)?;
    p.accept(&[
        "preserve_data_ordering",
        "auto_retry_requests",
        "retry_exhausted_action",
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
