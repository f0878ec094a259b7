//! Options every object-store output reads the same way (`compression`, `static_file_mode`,
//! `store_dir`, `store_dir_limit_size`), so `s3`, `gcs` and the others agree on names, defaults
//! and errors.

use std::path::PathBuf;

use super::compress::Compression;
use super::{SpoolDir, DEFAULT_SPOOL_LIMIT};
use crate::config::{ConfigError, Props};

/// `compression`: none (unset or `none`), `gzip` or `zstd`.
pub fn compression(p: &Props) -> Result<Compression, ConfigError> {
    match p.prop("compression") {
        None => Ok(Compression::None),
        Some(c) if c.value.eq_ignore_ascii_case("none") => Ok(Compression::None),
        Some(c) => Compression::parse(&c.value).ok_or_else(|| {
            ConfigError::key(
                c,
                format!("compression '{}' is not supported (gzip, zstd)", c.value),
            )
        }),
    }
}

/// `static_file_mode`: `append` (logferry's default) or `overwrite` (Fluent Bit's behaviour).
pub fn appends(p: &Props) -> Result<bool, ConfigError> {
    match p.prop("static_file_mode") {
        None => Ok(true),
        Some(m) => match m.value.to_ascii_lowercase().as_str() {
            "append" => Ok(true),
            "overwrite" => Ok(false),
            _ => Err(ConfigError::key(m, "expected append or overwrite")),
        },
    }
}

/// The spool folder and its bound: `store_dir` (default `[SERVICE] storage.path/<instance>`,
/// resolved at start) under the bucket's name, bounded by `store_dir_limit_size`, else the
/// generic `storage.total_limit_size`, else [`DEFAULT_SPOOL_LIMIT`].
pub fn spool(
    p: &Props,
    instance: &str,
    storage_path: Option<&str>,
    bucket: &str,
) -> Result<(SpoolDir, u64), ConfigError> {
    spool_with_alias(p, instance, storage_path, bucket, None)
}

/// [`spool`], with `alias` read as `store_dir` when that is unset (`azure_blob`'s
/// `buffer_dir`).
pub fn spool_with_alias(
    p: &Props,
    instance: &str,
    storage_path: Option<&str>,
    bucket: &str,
    alias: Option<&str>,
) -> Result<(SpoolDir, u64), ConfigError> {
    let dir = match p.str("store_dir").or_else(|| alias.and_then(|a| p.str(a))) {
        Some(d) => SpoolDir {
            base: Some(PathBuf::from(d)),
            sub: PathBuf::from(bucket),
        },
        None => SpoolDir {
            base: storage_path.map(PathBuf::from),
            sub: PathBuf::from(instance).join(bucket),
        },
    };
    // Fluent Bit's generic `storage.total_limit_size` bounds an output's on-disk buffer: here
    // that is the spool, unless `store_dir_limit_size` says otherwise.
    let limit = match p.prop("store_dir_limit_size") {
        Some(_) => p.size("store_dir_limit_size", DEFAULT_SPOOL_LIMIT)?,
        None => p.size("storage.total_limit_size", DEFAULT_SPOOL_LIMIT)?,
    };
    Ok((dir, limit))
}
