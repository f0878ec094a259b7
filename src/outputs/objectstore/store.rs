//! Object-store backends behind one interface: a local directory (the embedded default, no
//! cloud) and S3 (and S3-compatible stores). Both write whole objects atomically, can append to
//! an existing object (the static-key mode), and S3 uploads large objects in resumable parts.

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};

use super::spool::UploadState;

/// S3's smallest multipart part (all but the last).
pub const MIN_PART: u64 = 5 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

fn io_err(context: &str, e: std::io::Error) -> StoreError {
    StoreError(format!("{context}: {e}"))
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

pub enum ObjectStore {
    Local(LocalDir),
    S3(S3Store),
}

impl ObjectStore {
    pub fn describe(&self) -> String {
        match self {
            ObjectStore::Local(l) => format!("directory {}", l.root.display()),
            ObjectStore::S3(s) => format!("bucket {} ({})", s.bucket, s.identity),
        }
    }

    /// Writes `body` as the whole object at `key` (resumable multipart above `part_size`).
    pub async fn put(
        &self,
        key: &str,
        body: &Path,
        part_size: u64,
        multipart: bool,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(l) => l.write(key, body, false),
            ObjectStore::S3(s) => {
                let size = std::fs::metadata(body)
                    .map_err(|e| io_err("spool", e))?
                    .len();
                if multipart && size > part_size {
                    s.multipart(key, body, part_size, None, state, state_path)
                        .await
                } else {
                    s.put_object(key, body, None).await
                }
            }
        }
    }

    /// Appends `body` to the object at `key` (creating it), guarding against concurrent writers.
    pub async fn append(
        &self,
        key: &str,
        body: &Path,
        part_size: u64,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(l) => l.write(key, body, true),
            ObjectStore::S3(s) => s.append(key, body, part_size, state, state_path).await,
        }
    }
}

/// `endpoint file:///dir`: objects are files under `dir` with the same keys and bodies, written
/// atomically (temp file, fsync, rename).
pub struct LocalDir {
    pub root: PathBuf,
}

impl LocalDir {
    fn write(&self, key: &str, body: &Path, append: bool) -> Result<(), StoreError> {
        let target = self.root.join(key);
        let parent = target.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent)
            .map_err(|e| io_err(&format!("cannot create {}", parent.display()), e))?;
        let tmp = parent.join(format!(
            ".{}.logferry-tmp",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object")
        ));
        let result = (|| -> std::io::Result<()> {
            let mut out = std::fs::File::create(&tmp)?;
            if append {
                match std::fs::File::open(&target) {
                    Ok(mut existing) => {
                        std::io::copy(&mut existing, &mut out)?;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            std::io::copy(&mut std::fs::File::open(body)?, &mut out)?;
            out.sync_all()?;
            std::fs::rename(&tmp, &target)?;
            std::fs::File::open(parent)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io_err(&format!("cannot write {}", target.display()), e)
        })
    }
}

pub struct S3Store {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    pub options: PutOptions,
    pub identity: String,
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
            let code = err.code().unwrap_or("(no error code)");
            let message = err.message().map(|m| format!(": {m}")).unwrap_or_default();
            StoreError(format!("{what}: HTTP {status} {code}{message}"))
        }
        _ => StoreError(format!("{what}: {}", display_chain(&e))),
    }
}

/// The error and its sources, Display only: the SDK's Debug forms carry raw responses, and a
/// credential endpoint's raw response holds secrets.
fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
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

fn md5_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

fn md5_file_base64(path: &Path) -> std::io::Result<String> {
    use base64::Engine;
    use md5::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(hasher.finalize()))
}

fn read_range(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).map_err(|e| io_err("spool", e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset)
        .map_err(|e| io_err("spool", e))?;
    Ok(buf)
}

/// ETag condition for a write: create only if absent, or replace only this version.
#[derive(Debug, Clone)]
enum Expect {
    Absent,
    Version(String),
}

impl S3Store {
    async fn put_object(
        &self,
        key: &str,
        body: &Path,
        expect: Option<(Expect, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let o = &self.options;
        let mut req = self.client.put_object().bucket(&self.bucket).key(key);
        // A body with a prefix (append rewrite of a small object) is built in memory; otherwise
        // the spool file is streamed, so memory does not grow with `total_file_size`.
        let mut joined = None;
        if let Some((cond, prefix)) = expect {
            req = match cond {
                Expect::Absent => req.if_none_match("*"),
                Expect::Version(etag) => req.if_match(etag),
            };
            if !prefix.is_empty() {
                let mut bytes = prefix;
                bytes.extend_from_slice(&std::fs::read(body).map_err(|e| io_err("spool", e))?);
                joined = Some(bytes);
            }
        }
        if o.send_content_md5 {
            let digest = match &joined {
                Some(bytes) => md5_base64(bytes),
                None => md5_file_base64(body).map_err(|e| io_err("spool", e))?,
            };
            req = req.content_md5(digest);
        }
        let stream = match joined {
            Some(bytes) => ByteStream::from(bytes),
            None => ByteStream::from_path(body)
                .await
                .map_err(|e| StoreError(format!("spool {}: {e}", body.display())))?,
        };
        req = with_object_headers!(req, o);
        req.body(stream)
            .send()
            .await
            .map_err(|e| sdk_err(&format!("PutObject s3://{}/{key}", self.bucket), e))?;
        Ok(())
    }

    /// Multipart upload of `body` in `part_size` parts, resuming from `state`. With `copy_first`,
    /// part 1 is a server-side copy of the existing object (append mode).
    async fn multipart(
        &self,
        key: &str,
        body: &Path,
        part_size: u64,
        copy_first: Option<(String, String)>,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let o = &self.options;
        let size = std::fs::metadata(body)
            .map_err(|e| io_err("spool", e))?
            .len();
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
                let out = req.send().await.map_err(|e| {
                    sdk_err(
                        &format!("CreateMultipartUpload s3://{}/{key}", self.bucket),
                        e,
                    )
                })?;
                let id = out
                    .upload_id()
                    .ok_or_else(|| {
                        StoreError("CreateMultipartUpload returned no upload id".into())
                    })?
                    .to_string();
                state.upload_id = Some(id.clone());
                state.parts.clear();
                state
                    .save(state_path)
                    .map_err(|e| io_err("saving upload state", e))?;
                id
            }
        };
        let first_body_part = if copy_first.is_some() { 2 } else { 1 };
        if let Some((source, etag)) = &copy_first {
            if !state.parts.iter().any(|(n, _)| *n == 1) {
                let out = self
                    .client
                    .upload_part_copy()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(1)
                    .copy_source(source)
                    .copy_source_if_match(etag)
                    .send()
                    .await
                    .map_err(|e| {
                        sdk_err(&format!("UploadPartCopy s3://{}/{key}", self.bucket), e)
                    })?;
                let etag = out
                    .copy_part_result()
                    .and_then(|r| r.e_tag())
                    .unwrap_or_default()
                    .to_string();
                state.parts.push((1, etag));
                state
                    .save(state_path)
                    .map_err(|e| io_err("saving upload state", e))?;
            }
        }
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
                req = req.content_md5(md5_base64(&read_range(body, offset, len)?));
            }
            // Streamed from the spool file: a part is never held in memory.
            let part = ByteStream::read_from()
                .path(body)
                .offset(offset)
                .length(aws_sdk_s3::primitives::Length::Exact(len))
                .build()
                .await
                .map_err(|e| StoreError(format!("spool {}: {e}", body.display())))?;
            let out = match req.body(part).send().await {
                Ok(out) => out,
                Err(e) => {
                    let err = sdk_err(
                        &format!("UploadPart {number} s3://{}/{key}", self.bucket),
                        e,
                    );
                    if err.0.contains("NoSuchUpload") {
                        // The upload expired or was aborted: start over next time.
                        *state = UploadState {
                            key: state.key.clone(),
                            ..Default::default()
                        };
                        let _ = state.save(state_path);
                    }
                    return Err(err);
                }
            };
            state
                .parts
                .push((number, out.e_tag().unwrap_or_default().to_string()));
            state
                .save(state_path)
                .map_err(|e| io_err("saving upload state", e))?;
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
        if let Some((_, etag)) = &copy_first {
            req = req.if_match(etag);
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = sdk_err(
                    &format!("CompleteMultipartUpload s3://{}/{key}", self.bucket),
                    e,
                );
                if err.0.contains("NoSuchUpload") || err.0.contains("PreconditionFailed") {
                    *state = UploadState {
                        key: state.key.clone(),
                        ..Default::default()
                    };
                    let _ = state.save(state_path);
                }
                Err(err)
            }
        }
    }

    /// Append mode: the object becomes existing bytes + `body`. Small objects are rewritten with
    /// `If-Match`; objects of 5 MiB and more are extended by a multipart upload whose first part
    /// copies the existing object server-side. A concurrent writer makes the condition fail and
    /// the append is retried from the new version.
    async fn append(
        &self,
        key: &str,
        body: &Path,
        part_size: u64,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
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
                    || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
                if !not_found {
                    // A HEAD error has no body, so no code: a 1-byte GET says why (auth, bucket...).
                    let head = sdk_err(&format!("HeadObject s3://{}/{key}", self.bucket), e);
                    let probe = self
                        .client
                        .get_object()
                        .bucket(&self.bucket)
                        .key(key)
                        .range("bytes=0-0")
                        .send()
                        .await;
                    return Err(match probe {
                        Err(get) => sdk_err(&format!("GetObject s3://{}/{key}", self.bucket), get),
                        Ok(_) => head,
                    });
                }
                None
            }
        };
        match existing {
            None => {
                self.put_object(key, body, Some((Expect::Absent, Vec::new())))
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
                    .map_err(|e| sdk_err(&format!("GetObject s3://{}/{key}", self.bucket), e))?;
                let bytes = current
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError(format!("reading s3://{}/{key}: {e}", self.bucket)))?
                    .into_bytes();
                self.put_object(key, body, Some((Expect::Version(etag), bytes.to_vec())))
                    .await
            }
            Some((_, etag)) => {
                let source = format!("{}/{}", self.bucket, key);
                self.multipart(
                    key,
                    body,
                    part_size,
                    Some((source, etag)),
                    state,
                    state_path,
                )
                .await
            }
        }
    }
}
