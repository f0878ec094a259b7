//! Object-store backends behind one interface. The engine (`super`) owns spooling, keys,
//! ordering and retries; a backend only writes: [`ObjectStore::put`] (a whole object, resumable
//! where the service allows), [`ObjectStore::append`] (extend the object at a key, the static-key
//! mode), [`ObjectStore::probe`] (destination and identity reachable) and
//! [`ObjectStore::describe`] (destination and identity for logs, never secrets). Backends: a local
//! directory (`local`, no cloud), S3 and S3-compatible stores (`s3`), Azure Blob Storage
//! (`azure`) and Google Cloud Storage (`gcs`).
//!
//! Invariant 1 (no silent loss), kept by every backend: a write never replaces an object it did
//! not mean to replace, and a retried or resumed write lands its body once. Progress that must
//! survive a crash (upload ids, parts, the version an append extends) goes into the chunk's
//! [`UploadState`], saved before the step it guards. Errors are typed ([`ErrorKind`]): the
//! uploader retries, restarts an upload, renders a new key or reports a permanent failure from
//! the kind, never from the message text.

pub mod azure;
pub mod gcs;
pub mod local;
pub mod s3;

use std::path::{Path, PathBuf};

use super::spool::UploadState;

/// What the uploader does about a failed store call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network, throttling, server errors: retry with backoff.
    Retryable,
    /// A condition failed (the object exists, or changed under an append): start the upload
    /// again from the object's current version, or under a new key.
    Conflict,
    /// Credentials, permissions, a missing bucket: nothing changes by retrying soon. The data
    /// stays in the spool, the error is logged at once and health fails until an upload works.
    Permanent,
    /// The server no longer accepts the multipart upload id: start the upload over.
    UploadLost,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl StoreError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }
}

/// A local I/O error: permission problems are permanent, the rest (a full disk, a path in the
/// way) may clear.
pub fn io_err(context: &str, e: std::io::Error) -> StoreError {
    let kind = match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::Permanent
        }
        _ => ErrorKind::Retryable,
    };
    StoreError::new(kind, format!("{context}: {e}"))
}

/// How a whole-object write treats an object already at the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Fail with [`ErrorKind::Conflict`] (the uploader then renders a new key).
    Keep,
    /// Replace it (`static_file_mode overwrite`, Fluent Bit's behaviour, chosen explicitly).
    Replace,
}

pub enum ObjectStore {
    Local(local::LocalDir),
    S3(s3::S3Store),
    Azure(azure::AzureStore),
    Gcs(gcs::GcsStore),
}

impl ObjectStore {
    /// Names the destination in logs and errors: bucket, endpoint and identity, no secrets.
    pub fn describe(&self) -> String {
        match self {
            ObjectStore::Local(l) => format!("directory {}", l.root.display()),
            ObjectStore::S3(s) => s.describe(),
            ObjectStore::Azure(a) => a.describe(),
            ObjectStore::Gcs(g) => g.describe(),
        }
    }

    /// Checks at start that the destination exists and the identity may reach it.
    pub async fn probe(&self) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(l) => l.probe(),
            ObjectStore::S3(s) => s.probe().await,
            ObjectStore::Azure(a) => a.probe().await,
            ObjectStore::Gcs(g) => g.probe().await,
        }
    }

    /// Writes `body` as the whole object at `key`.
    pub async fn put(
        &self,
        key: &str,
        body: &Path,
        existing: Existing,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(l) => l.put(key, body, existing),
            ObjectStore::S3(s) => s.put(key, body, existing, state, state_path).await,
            ObjectStore::Azure(a) => a.put(key, body, existing, state, state_path).await,
            ObjectStore::Gcs(g) => g.put(key, body, existing, state, state_path).await,
        }
    }

    /// Appends `body` to the object at `key` (creating it), guarding against concurrent writers.
    pub async fn append(
        &self,
        key: &str,
        body: &Path,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        match self {
            ObjectStore::Local(l) => l.append(key, body, state, state_path),
            ObjectStore::S3(s) => s.append(key, body, state, state_path).await,
            ObjectStore::Azure(a) => a.append(key, body, state, state_path).await,
            ObjectStore::Gcs(g) => g.append(key, body, state, state_path).await,
        }
    }
}

/// What to build the store from once the runtime runs (cloud SDK configs are async).
pub enum StoreSpec {
    Local(PathBuf),
    S3(s3::S3Spec),
    Azure(Box<azure::AzureSpec>),
    Gcs(gcs::GcsSpec),
}

impl StoreSpec {
    pub async fn build(self) -> ObjectStore {
        match self {
            StoreSpec::Local(root) => ObjectStore::Local(local::LocalDir { root }),
            StoreSpec::S3(spec) => ObjectStore::S3(spec.build().await),
            StoreSpec::Azure(spec) => ObjectStore::Azure(spec.build()),
            StoreSpec::Gcs(spec) => ObjectStore::Gcs(spec.build().await),
        }
    }
}

/// The error and its sources, Display only: the SDK's Debug forms carry raw responses, and a
/// credential endpoint's raw response holds secrets.
pub(crate) fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

/// Saves a chunk's upload progress (before the step it guards).
pub(crate) fn save_state(state: &UploadState, path: &Path) -> Result<(), StoreError> {
    state
        .save(path)
        .map_err(|e| io_err("saving upload state", e))
}

/// The size of a spooled body.
pub(crate) fn body_size(body: &Path) -> Result<u64, StoreError> {
    std::fs::metadata(body)
        .map(|m| m.len())
        .map_err(|e| io_err("spool", e))
}

/// Base64 MD5 of a body (`Content-MD5`, GCS `md5Hash`).
pub(crate) fn md5_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    use md5::Digest;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(bytes))
}

/// Base64 MD5 of `len` bytes of a spool file from `offset`, read in 256 KiB pieces.
pub(crate) fn md5_file_base64(path: &Path, offset: u64, len: u64) -> std::io::Result<String> {
    use base64::Engine;
    use md5::Digest;
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut piece = f.take(len);
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = piece.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(hasher.finalize()))
}

/// What a request sends: bytes in memory (small: block lists, parts of a few KiB), or a range of
/// a spool file streamed from disk, so a block or chunk of several MiB is never held whole in
/// memory (bounded memory: RSS does not grow with `block_size` or `upload_chunk_size`).
#[derive(Clone)]
pub(crate) enum Payload {
    Bytes(bytes::Bytes),
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Payload {
    pub(crate) fn empty() -> Self {
        Payload::Bytes(bytes::Bytes::new())
    }

    /// `len` bytes of the spool file at `path` from `offset`.
    pub(crate) fn file(path: &Path, offset: u64, len: u64) -> Self {
        Payload::File {
            path: path.to_path_buf(),
            offset,
            len,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => b.len() as u64,
            Payload::File { len, .. } => *len,
        }
    }

    /// The request body. The caller sets `Content-Length` from [`Payload::len`]: a streamed body
    /// would otherwise go chunked, which the object stores refuse on uploads.
    pub(crate) async fn into_body(self) -> Result<reqwest::Body, StoreError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            Payload::Bytes(b) => Ok(b.into()),
            Payload::File { path, offset, len } => {
                let mut f = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| io_err("spool", e))?;
                f.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(|e| io_err("spool", e))?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 64 * 1024);
                Ok(reqwest::Body::wrap_stream(stream))
            }
        }
    }
}
