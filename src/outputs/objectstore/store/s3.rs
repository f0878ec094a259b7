//! The S3 backend (AWS S3 and S3-compatible stores: MinIO, OCI, s3s): PutObject for small
//! bodies, resumable multipart uploads for large ones, and appends at a static key by rewriting
//! small objects or server-side copying large ones into a multipart upload.
//!
//! Invariant 1: new objects are created with `If-None-Match: *`; an append completes only
//! against the version it extends (`If-Match` on the ETag the copied parts came from, kept in
//! [`UploadState`]); a resumed multipart upload skips the parts the state records as done.

use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::{
    body_size, display_chain, io_err, md5_base64, md5_file_base64, save_state, ErrorKind, Existing,
    StoreError,
};
use crate::outputs::objectstore::spool::UploadState;

/// S3's smallest multipart part (all but the last).
pub const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's largest part, and the most one UploadPartCopy may copy.
pub const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;

/// S3 error codes that retrying soon cannot fix.
const PERMANENT_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "NoSuchBucket",
    "SignatureDoesNotMatch",
    "InvalidSecurity",
    "NotSignedUp",
];

fn classify(status: u16, code: &str) -> ErrorKind {
    match (status, code) {
        (_, "NoSuchUpload") => ErrorKind::UploadLost,
        (412 | 409, _) | (_, "PreconditionFailed" | "ConditionalRequestConflict") => {
            ErrorKind::Conflict
        }
        (_, c) if PERMANENT_CODES.contains(&c) => ErrorKind::Permanent,
        // A HEAD has no body, so no code.
        (403, "") => ErrorKind::Permanent,
        _ => ErrorKind::Retryable,
    }
}

/// Applies [`PutOptions`] to a PutObject or CreateMultipartUpload request (two SDK builder types
/// with the same setters, hence a macro).
macro_rules! with_object_headers {
    ($req:expr, $o:expr) => {{
        let mut req = $req
            .set_content_type($o.content_type.clone())
            .set_content_encoding($o.content_encoding.map(str::to_string));
        if let Some(acl) = &$o.canned_acl {
            req = req.acl(acl.as_str().into());
        }
        if let Some(class) = &$o.storage_class {
            req = req.storage_class(class.as_str().into());
        }
        req
    }};
}

/// Headers every upload carries (Fluent Bit's `content_type`, `canned_acl`, `storage_class`,
/// `send_content_md5`, and `Content-Encoding` from `compression`).
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
    pub content_encoding: Option<&'static str>,
    pub canned_acl: Option<String>,
    pub storage_class: Option<String>,
    pub send_content_md5: bool,
}

/// What the `s3` output configured; the SDK client is built from it at start.
pub struct S3Spec {
    pub identity: Box<crate::cloud::aws::AwsIdentity>,
    pub endpoint: Option<String>,
    pub bucket: String,
    pub options: PutOptions,
    /// `upload_chunk_size`: the multipart part size.
    pub part_size: u64,
    /// Multipart uploads above `part_size` (off with `use_put_object`).
    pub multipart: bool,
}

impl S3Spec {
    pub async fn build(self) -> S3Store {
        let sdk = self.identity.sdk_config().await;
        // Checksums only where S3 requires them: S3-compatible stores differ in how they
        // handle flexible checksums on multipart uploads; `send_content_md5` adds MD5.
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            );
        let shown = match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("AWS S3 ({})", self.identity.region),
        };
        if let Some(e) = self.endpoint {
            conf = conf.endpoint_url(e);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(conf.build()),
            bucket: self.bucket,
            endpoint: shown,
            options: self.options,
            identity: self.identity.describe(),
            part_size: self.part_size,
            multipart: self.multipart,
        }
    }
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// The configured endpoint, or AWS's regional one (for logs).
    endpoint: String,
    options: PutOptions,
    identity: String,
    part_size: u64,
    multipart: bool,
}

/// `<operation>: HTTP <status> <code>: <message>` — what the service said, never credentials.
fn sdk_err<E, R>(what: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> StoreError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + HttpStatus + 'static,
{
    use aws_sdk_s3::error::SdkError;
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status_code();
            let err = se.err();
            let code = err.code().unwrap_or_default();
            let message = err.message().map(|m| format!(": {m}")).unwrap_or_default();
            let shown = if code.is_empty() {
                "(no error code)"
            } else {
                code
            };
            StoreError::new(
                classify(status, code),
                format!("{what}: HTTP {status} {shown}{message}"),
            )
        }
        _ => StoreError::new(
            ErrorKind::Retryable,
            format!("{what}: {}", display_chain(&e)),
        ),
    }
}

/// On UploadPart, UploadPartCopy and CompleteMultipartUpload, any client error but a failed
/// condition means the server refuses the upload id (S3: 404 NoSuchUpload; others answer 403
/// or 400): the upload is started over from the spool instead of being retried forever.
fn upload_id_err(mut err: StoreError, status: Option<u16>) -> StoreError {
    if err.kind != ErrorKind::Conflict
        && status.is_some_and(|s| (400..500).contains(&s) && s != 429)
    {
        err.kind = ErrorKind::UploadLost;
    }
    err
}

fn status_of<E, R: HttpStatus>(e: &aws_sdk_s3::error::SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(|r| r.status_code())
}

/// The HTTP status of a raw response (the SDK's response type, via its accessor).
pub trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// ETag condition for a write: create only if absent, or replace only this version.
#[derive(Debug, Clone)]
pub enum Expect {
    Absent,
    Version(String),
}

/// The existing object an append copies server-side: its ETag and size.
struct CopySource {
    etag: String,
    size: u64,
}

/// Inclusive byte ranges that copy `size` bytes in parts of at most `max` (UploadPartCopy's
/// limit), as equal as possible so that none falls under S3's minimum part.
fn copy_ranges(size: u64, max: u64) -> Vec<(u64, u64)> {
    let n = size.div_ceil(max).max(1);
    let each = size.div_ceil(n);
    (0..n)
        .map(|i| (i * each, ((i + 1) * each).min(size) - 1))
        .collect()
}

impl S3Store {
    pub(super) fn describe(&self) -> String {
        format!(
            "bucket {} at {} as {}",
            self.bucket, self.endpoint, self.identity
        )
    }

    /// Writes `body` as the whole object at `key` (resumable multipart above the part size).
    pub(super) async fn put(
        &self,
        key: &str,
        body: &Path,
        existing: Existing,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let size = body_size(body)?;
        let expect = (existing == Existing::Keep).then_some(Expect::Absent);
        if self.multipart && size > self.part_size {
            self.multipart(key, body, expect, state, state_path).await
        } else {
            self.put_object(key, body, expect, Vec::new()).await
        }
    }

    fn at(&self, what: &str, key: &str) -> String {
        format!("{what} s3://{}/{key}", self.bucket)
    }

    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                // A HEAD answer has no body: name the usual causes by status.
                let code = match status_of(&e) {
                    Some(404) => "NoSuchBucket",
                    Some(403) => "AccessDenied",
                    Some(400) => "InvalidBucketName",
                    _ => "",
                };
                let mut err = sdk_err(&format!("HeadBucket {}", self.bucket), e);
                if !code.is_empty() {
                    err.kind = ErrorKind::Permanent;
                    err.message.push_str(&format!(" ({code})"));
                }
                Err(err)
            }
        }
    }

    /// PutObject of `prefix` + `body` under the condition `expect`. A body with a prefix (the
    /// append rewrite of a small object) is built in memory; otherwise the spool file is
    /// streamed, so memory does not grow with `total_file_size`.
    async fn put_object(
        &self,
        key: &str,
        body: &Path,
        expect: Option<Expect>,
        prefix: Vec<u8>,
    ) -> Result<(), StoreError> {
        let o = &self.options;
        let mut req = self.client.put_object().bucket(&self.bucket).key(key);
        req = match expect {
            Some(Expect::Absent) => req.if_none_match("*"),
            Some(Expect::Version(etag)) => req.if_match(etag),
            None => req,
        };
        let joined = if prefix.is_empty() {
            None
        } else {
            let mut bytes = prefix;
            bytes.extend_from_slice(&std::fs::read(body).map_err(|e| io_err("spool", e))?);
            Some(bytes)
        };
        if o.send_content_md5 {
            let digest = match &joined {
                Some(bytes) => md5_base64(bytes),
                None => {
                    md5_file_base64(body, 0, body_size(body)?).map_err(|e| io_err("spool", e))?
                }
            };
            req = req.content_md5(digest);
        }
        let stream = match joined {
            Some(bytes) => ByteStream::from(bytes),
            None => ByteStream::from_path(body).await.map_err(|e| {
                StoreError::new(
                    ErrorKind::Retryable,
                    format!("spool {}: {e}", body.display()),
                )
            })?,
        };
        req = with_object_headers!(req, o);
        req.body(stream)
            .send()
            .await
            .map_err(|e| sdk_err(&self.at("PutObject", key), e))?;
        Ok(())
    }

    /// Multipart upload of `body` in `part_size` parts, resuming from `state`. In append mode
    /// (`state.copied` set) the first parts copy the existing object server-side, in ranges of
    /// at most 5 GiB, and the upload completes only if the object is still the version copied.
    /// Otherwise `expect` conditions the completion (`Absent`: never replace an object).
    async fn multipart(
        &self,
        key: &str,
        body: &Path,
        expect: Option<Expect>,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let (o, part_size) = (&self.options, self.part_size);
        let size = body_size(body)?;
        let upload_id = match &state.upload_id {
            Some(id) => {
                tracing::info!(
                    key,
                    parts_done = state.parts.len(),
                    "resuming multipart upload"
                );
                id.clone()
            }
            None => {
                let mut req = self
                    .client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key);
                req = with_object_headers!(req, o);
                let out = req
                    .send()
                    .await
                    .map_err(|e| sdk_err(&self.at("CreateMultipartUpload", key), e))?;
                let id = out
                    .upload_id()
                    .ok_or_else(|| {
                        StoreError::new(
                            ErrorKind::Retryable,
                            "CreateMultipartUpload returned no upload id",
                        )
                    })?
                    .to_string();
                state.upload_id = Some(id.clone());
                state.parts.clear();
                save_state(state, state_path)?;
                id
            }
        };
        let copy = state
            .copied
            .clone()
            .map(|(etag, size)| CopySource { etag, size });
        let ranges = copy
            .as_ref()
            .map(|c| copy_ranges(c.size, MAX_PART))
            .unwrap_or_default();
        if let Some(c) = &copy {
            let source = format!("{}/{}", self.bucket, key);
            for (i, (first, last)) in ranges.iter().enumerate() {
                let number = i as i32 + 1;
                if state.parts.iter().any(|(n, _)| *n == number) {
                    continue;
                }
                let result = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .copy_source(&source)
                    .copy_source_range(format!("bytes={first}-{last}"))
                    .copy_source_if_match(&c.etag)
                    .send()
                    .await;
                let out = result.map_err(|e| {
                    let status = status_of(&e);
                    upload_id_err(
                        sdk_err(&self.at(&format!("UploadPartCopy {number}"), key), e),
                        status,
                    )
                })?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_string();
                state.parts.push((number, etag));
                save_state(state, state_path)?;
            }
        }
        let first_body_part = ranges.len() as i32 + 1;
        let parts = size.div_ceil(part_size).max(1);
        for i in 0..parts {
            let number = first_body_part + i as i32;
            if state.parts.iter().any(|(n, _)| *n == number) {
                continue;
            }
            let offset = i * part_size;
            let len = part_size.min(size - offset);
            let mut req = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number);
            if o.send_content_md5 {
                req = req.content_md5(
                    md5_file_base64(body, offset, len).map_err(|e| io_err("spool", e))?,
                );
            }
            // Streamed from the spool file: a part is never held in memory.
            let part = ByteStream::read_from()
                .path(body)
                .offset(offset)
                .length(aws_sdk_s3::primitives::Length::Exact(len))
                .build()
                .await
                .map_err(|e| {
                    StoreError::new(
                        ErrorKind::Retryable,
                        format!("spool {}: {e}", body.display()),
                    )
                })?;
            let out = req.body(part).send().await.map_err(|e| {
                let status = status_of(&e);
                upload_id_err(
                    sdk_err(&self.at(&format!("UploadPart {number}"), key), e),
                    status,
                )
            })?;
            state
                .parts
                .push((number, out.e_tag().unwrap_or_default().to_string()));
            save_state(state, state_path)?;
        }
        let mut completed: Vec<CompletedPart> = state
            .parts
            .iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        completed.sort_by_key(|p| p.part_number());
        let mut req = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        req = match (&copy, expect) {
            // The version the parts were copied from, not whatever the object is now.
            (Some(c), _) => req.if_match(&c.etag),
            (None, Some(Expect::Absent)) => req.if_none_match("*"),
            (None, Some(Expect::Version(etag))) => req.if_match(etag),
            (None, None) => req,
        };
        req.send().await.map_err(|e| {
            let status = status_of(&e);
            upload_id_err(sdk_err(&self.at("CompleteMultipartUpload", key), e), status)
        })?;
        Ok(())
    }

    /// Append mode: the object becomes existing bytes + `body`. Small objects are rewritten with
    /// `If-Match`; objects of 5 MiB and more are extended by a multipart upload whose first
    /// parts copy the existing object server-side (the version copied is kept in `state`, so a
    /// resumed upload completes against it). A concurrent writer makes a condition fail
    /// ([`ErrorKind::Conflict`]) and the append is made again from the new version.
    pub(super) async fn append(
        &self,
        key: &str,
        body: &Path,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        if state.copied.is_some() {
            return self.multipart(key, body, None, state, state_path).await;
        }
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let existing = match head {
            Ok(h) => Some((
                h.content_length().unwrap_or(0).max(0) as u64,
                h.e_tag().unwrap_or_default().to_string(),
            )),
            Err(e) => {
                let not_found = e.as_service_error().is_some_and(|s| s.is_not_found())
                    || status_of(&e) == Some(404);
                if !not_found {
                    // A HEAD error has no body, so no code: a 1-byte GET says why (auth, bucket...).
                    let head = sdk_err(&self.at("HeadObject", key), e);
                    let probe = self
                        .client
                        .get_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .range("bytes=0-0")
                        .send()
                        .await;
                    return Err(match probe {
                        Err(get) => sdk_err(&self.at("GetObject", key), get),
                        Ok(_) => head,
                    });
                }
                None
            }
        };
        match existing {
            None => {
                self.put_object(key, body, Some(Expect::Absent), Vec::new())
                    .await
            }
            Some((size, etag)) if size < MIN_PART => {
                let current = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .if_match(&etag)
                    .send()
                    .await
                    .map_err(|e| sdk_err(&self.at("GetObject", key), e))?;
                let bytes = current
                    .body
                    .collect()
                    .await
                    .map_err(|e| {
                        StoreError::new(
                            ErrorKind::Retryable,
                            format!("reading s3://{}/{key}: {e}", self.bucket),
                        )
                    })?
                    .into_bytes();
                self.put_object(key, body, Some(Expect::Version(etag)), bytes.to_vec())
                    .await
            }
            Some((size, etag)) => {
                state.copied = Some((etag, size));
                save_state(state, state_path)?;
                self.multipart(key, body, None, state, state_path).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_over_5_gib_go_in_ranged_parts() {
        assert_eq!(copy_ranges(10, 100), vec![(0, 9)]);
        assert_eq!(copy_ranges(MAX_PART, MAX_PART), vec![(0, MAX_PART - 1)]);
        let r = copy_ranges(MAX_PART + MIN_PART, MAX_PART);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 0);
        assert_eq!(r[1].1, MAX_PART + MIN_PART - 1);
        assert_eq!(r[0].1 + 1, r[1].0);
        assert!(r
            .iter()
            .all(|(a, b)| b - a < MAX_PART && b - a + 1 >= MIN_PART));
        let r = copy_ranges(3 * MAX_PART + 1, MAX_PART);
        assert_eq!(r.len(), 4);
        assert_eq!(r.last().unwrap().1, 3 * MAX_PART);
    }

    #[test]
    fn errors_are_classified_by_code_and_status() {
        assert_eq!(classify(404, "NoSuchBucket"), ErrorKind::Permanent);
        assert_eq!(classify(403, "AccessDenied"), ErrorKind::Permanent);
        assert_eq!(classify(403, "InvalidAccessKeyId"), ErrorKind::Permanent);
        assert_eq!(classify(404, "NoSuchUpload"), ErrorKind::UploadLost);
        assert_eq!(classify(412, "PreconditionFailed"), ErrorKind::Conflict);
        assert_eq!(classify(503, "SlowDown"), ErrorKind::Retryable);
        assert_eq!(classify(403, "RequestTimeTooSkewed"), ErrorKind::Retryable);
        let refused = upload_id_err(
            StoreError::new(classify(403, "AccessDenied"), "UploadPart"),
            Some(403),
        );
        assert_eq!(refused.kind, ErrorKind::UploadLost);
        let throttled = upload_id_err(StoreError::new(ErrorKind::Retryable, "x"), Some(503));
        assert_eq!(throttled.kind, ErrorKind::Retryable);
    }
}
