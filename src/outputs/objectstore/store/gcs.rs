//! The Google Cloud Storage backend, on the JSON API: media uploads for bodies up to
//! `upload_chunk_size`, resumable uploads above it (the session URI kept in the chunk's
//! [`UploadState`], so an upload interrupted by a crash resumes from what the server confirmed),
//! and appends at a static key by `compose`.
//!
//! Written on `reqwest` rather than the official `google-cloud-storage` crate: that crate keeps
//! its resumable session URI internal (an upload cannot be resumed by another process after a
//! kill -9) and offers compose only on the gRPC control API; the JSON API is what Fluent Bit and
//! the emulators speak. Tokens come from `google-cloud-auth` ([`crate::cloud::gcp`]).
//!
//! Invariant 1: new objects are created with `ifGenerationMatch=0` (never replacing anything
//! unless `static_file_mode overwrite` asked for it); when that precondition fails because an
//! earlier attempt of the same upload landed (its answer lost), the object's MD5 matches the
//! body and the upload counts as done, so a retried write lands once. An append uploads the
//! chunk as a temporary component object, then composes [object, component] into the object
//! with `ifGenerationMatch=<generation read>` and a marker naming the component in the object's
//! metadata, then deletes the component. The marker, not a saved generation, tells a restarted
//! append whether its compose already happened (a generation alone cannot tell our compose from
//! another writer's), so a crash between the steps neither loses nor repeats the chunk. Each
//! compose has two sources, far below GCS's 32-component limit.

use std::path::Path;

use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;

use super::{
    body_size, display_chain, io_err, md5_file_base64, save_state, ErrorKind, Existing, Payload,
    StoreError,
};
use crate::cloud::gcp::GcpIdentity;
use crate::outputs::objectstore::spool::UploadState;

/// Resumable chunks must be multiples of this (all but the last).
pub const CHUNK_GRANULE: u64 = 256 * 1024;
/// The default `upload_chunk_size`: bodies above it go by resumable upload in chunks of it.
pub const DEFAULT_CHUNK: u64 = 8 * 1024 * 1024;
/// The custom metadata key naming the component an append composed last.
const APPEND_MARKER: &str = "logferry-append";
/// Compose attempts against a moving generation before the append is retried later.
const COMPOSE_ATTEMPTS: usize = 5;

/// Object headers every upload carries (Fluent Bit's `content_type`, `canned_acl`,
/// `send_content_md5`, and the content encoding from `compression`).
#[derive(Debug, Clone)]
pub struct ObjectOptions {
    pub content_type: String,
    pub content_encoding: Option<&'static str>,
    /// The JSON API's `predefinedAcl` value.
    pub predefined_acl: Option<&'static str>,
    pub send_content_md5: bool,
}

/// What the `gcs` output configured; the HTTP client and credentials are made at start.
pub struct GcsSpec {
    pub identity: GcpIdentity,
    /// `endpoint` (emulators; `http://` allowed), else `https://storage.googleapis.com`.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub options: ObjectOptions,
    /// `tls.ca_file`: PEM roots trusted besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
    /// Resumable above this, in chunks of this (a multiple of [`CHUNK_GRANULE`]).
    pub chunk_size: u64,
}

impl GcsSpec {
    pub async fn build(self) -> GcsStore {
        let identity = self.identity.describe();
        let client = (|| -> Result<reqwest::Client, String> {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(std::time::Duration::from_secs(120));
            if let Some(path) = &self.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("tls.ca_file {}: {e}", path.display()))?;
                builder = builder.tls_certs_merge(certs);
            }
            builder.build().map_err(|e| format!("HTTP client: {e}"))
        })();
        let ready = client.and_then(|c| Ok((c, self.identity.credentials()?)));
        GcsStore {
            ready,
            base: self
                .endpoint
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| "https://storage.googleapis.com".into()),
            bucket: self.bucket,
            options: self.options,
            identity,
            chunk_size: self.chunk_size,
        }
    }
}

pub struct GcsStore {
    /// The client and credentials, or why they could not be made (every call reports it).
    ready: Result<(reqwest::Client, google_cloud_auth::credentials::Credentials), String>,
    base: String,
    bucket: String,
    options: ObjectOptions,
    identity: String,
    chunk_size: u64,
}

/// Percent-encodes an object name for a URL path segment or query value (unreserved kept).
fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What to do about an error answer, from its status and the JSON error's `reason`.
fn classify(status: u16, reason: &str) -> ErrorKind {
    match (status, reason) {
        (412, _) | (_, "conditionNotMet") => ErrorKind::Conflict,
        (_, "rateLimitExceeded" | "userRateLimitExceeded" | "backendError" | "internalError") => {
            ErrorKind::Retryable
        }
        (408 | 429, _) => ErrorKind::Retryable,
        (400..=499, _) => ErrorKind::Permanent,
        _ => ErrorKind::Retryable,
    }
}

/// `(reason, message)` from a JSON API error body (`{"error":{"message","errors":[{"reason"}]}}`).
fn error_fields(body: &[u8]) -> (String, String) {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let err = &json["error"];
    let reason = err["errors"][0]["reason"]
        .as_str()
        .or_else(|| err["status"].as_str())
        .unwrap_or_default()
        .to_string();
    let message = err["message"].as_str().unwrap_or_default().to_string();
    (reason, message)
}

/// Where a resumable session stands.
enum Session {
    /// The server holds bytes `0..n`.
    Confirmed(u64),
    /// The object is complete.
    Done,
}

/// The first byte not yet held, from a 308's `Range: bytes=0-N` (none: nothing held).
fn confirmed(headers: &HeaderMap) -> u64 {
    headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit('-').next())
        .and_then(|n| n.trim().parse::<u64>().ok())
        .map_or(0, |last| last + 1)
}

/// An existing object: its generation, MD5 and append marker.
struct ObjectInfo {
    generation: String,
    md5: Option<String>,
    marker: Option<String>,
}

impl GcsStore {
    pub(super) fn describe(&self) -> String {
        format!(
            "bucket {} at {} as {}",
            self.bucket, self.base, self.identity
        )
    }

    fn at(&self, what: &str, key: &str) -> String {
        format!("{what} gs://{}/{key}", self.bucket)
    }

    fn object_url(&self, key: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            encode(&self.bucket),
            encode(key)
        )
    }

    /// The client and fresh auth headers (the crate caches the token and refreshes it early).
    async fn client(&self, what: &str) -> Result<(&reqwest::Client, HeaderMap), StoreError> {
        use google_cloud_auth::credentials::CacheableResource;
        let (client, creds) = self
            .ready
            .as_ref()
            .map_err(|e| StoreError::new(ErrorKind::Permanent, format!("{what}: {e}")))?;
        match creds.headers(http::Extensions::new()).await {
            Ok(CacheableResource::New { data, .. }) => Ok((client, data)),
            Ok(CacheableResource::NotModified) => Err(StoreError::new(
                ErrorKind::Retryable,
                format!("{what}: no credentials headers"),
            )),
            Err(e) => Err(StoreError::new(
                if e.is_transient() {
                    ErrorKind::Retryable
                } else {
                    ErrorKind::Permanent
                },
                format!(
                    "{what}: cannot get a token as {}: {}",
                    self.identity,
                    display_chain(&e)
                ),
            )),
        }
    }

    /// Sends; a network failure is retryable. Any HTTP status is returned.
    async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, StoreError> {
        // Without the URL: a resumable session URI is a write capability.
        req.send().await.map_err(|e| {
            StoreError::new(
                ErrorKind::Retryable,
                format!("{what}: {}", display_chain(&e.without_url())),
            )
        })
    }

    /// The error for a non-success answer: `<what>: HTTP <status> <reason>: <message>`.
    async fn answer_err(&self, what: &str, resp: reqwest::Response) -> StoreError {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let (reason, message) = error_fields(&body);
        let shown = if reason.is_empty() {
            "(no reason)"
        } else {
            &reason
        };
        let mut text = format!("{what}: HTTP {status} {shown}");
        if !message.is_empty() {
            text.push_str(": ");
            text.push_str(&message);
        }
        if matches!(status, 401 | 403) {
            text.push_str(&format!(" (identity: {})", self.identity));
        }
        StoreError::new(classify(status, &reason), text)
    }

    /// Lists at most one object: needs only `storage.objects.list`, which the object roles
    /// grant (a bucket GET needs `storage.buckets.get`, which `roles/storage.objectAdmin` lacks).
    pub(super) async fn probe(&self) -> Result<(), StoreError> {
        let what = format!("list bucket {}", self.bucket);
        let (client, auth) = self.client(&what).await?;
        let url = format!("{}/storage/v1/b/{}/o", self.base, encode(&self.bucket));
        let req = client
            .get(url)
            .query(&[("maxResults", "1"), ("fields", "kind")])
            .headers(auth);
        let resp = self.send(&what, req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        // A missing bucket (404) is permanent like a refusal; the rest by status and reason.
        Err(self.answer_err(&what, resp).await)
    }

    /// Writes `body` as the whole object at `key` (resumable above the chunk size).
    pub(super) async fn put(
        &self,
        key: &str,
        body: &Path,
        existing: Existing,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        self.write_object(key, body, existing, None, state, state_path)
            .await
    }

    /// Uploads `body` to `key`; with [`Existing::Keep`] only if nothing is there, and an
    /// object found there with the body's MD5 is this upload landed earlier (done). `marker`
    /// goes into the object's custom metadata.
    async fn write_object(
        &self,
        key: &str,
        body: &Path,
        existing: Existing,
        marker: Option<&str>,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let size = body_size(body)?;
        let path = body.to_path_buf();
        let md5 = tokio::task::spawn_blocking(move || md5_file_base64(&path, 0, size))
            .await
            .map_err(|e| StoreError::new(ErrorKind::Retryable, format!("hashing: {e}")))?
            .map_err(|e| io_err("spool", e))?;
        let result = if size > self.chunk_size || state.upload_id.is_some() {
            self.resumable(key, body, size, &md5, existing, marker, state, state_path)
                .await
        } else {
            self.media(key, Payload::file(body, 0, size), &md5, existing)
                .await
        };
        match result {
            Err(e) if e.kind == ErrorKind::Conflict && existing == Existing::Keep => {
                match self.object_info(key).await? {
                    Some(info) if info.md5.as_deref() == Some(md5.as_str()) => {
                        tracing::info!(
                            key,
                            "the object is already there with this body: an earlier attempt landed"
                        );
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
            other => other,
        }
    }

    /// The query parameters every new object gets.
    fn create_params(&self, key: &str, existing: Existing) -> Vec<(&'static str, String)> {
        let mut params = vec![("name", key.to_string())];
        if existing == Existing::Keep {
            params.push(("ifGenerationMatch", "0".into()));
        }
        if let Some(enc) = self.options.content_encoding {
            params.push(("contentEncoding", enc.into()));
        }
        if let Some(acl) = self.options.predefined_acl {
            params.push(("predefinedAcl", acl.into()));
        }
        params
    }

    /// A simple media upload (Fluent Bit's only upload form).
    async fn media(
        &self,
        key: &str,
        body: Payload,
        md5: &str,
        existing: Existing,
    ) -> Result<(), StoreError> {
        let what = self.at("upload", key);
        let (client, auth) = self.client(&what).await?;
        let mut params = self.create_params(key, existing);
        params.insert(0, ("uploadType", "media".into()));
        let mut req = client
            .post(format!(
                "{}/upload/storage/v1/b/{}/o",
                self.base,
                encode(&self.bucket)
            ))
            .query(&params)
            .headers(auth)
            .header(CONTENT_TYPE, &self.options.content_type)
            .header(CONTENT_LENGTH, body.len())
            .body(body.into_body().await?);
        if self.options.send_content_md5 {
            req = req.header("x-goog-hash", format!("md5={md5}"));
        }
        let resp = self.send(&what, req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.answer_err(&what, resp).await)
    }

    /// A resumable upload in `chunk_size` pieces. The session URI is saved in `state` before
    /// the first byte is sent; a resumed upload first asks the session what it holds.
    #[allow(clippy::too_many_arguments)]
    async fn resumable(
        &self,
        key: &str,
        body: &Path,
        size: u64,
        md5: &str,
        existing: Existing,
        marker: Option<&str>,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let what = self.at("resumable upload", key);
        let (session, mut offset) = match state.upload_id.clone() {
            Some(session) => match self.session_status(&what, &session, size).await? {
                Session::Done => return Ok(()),
                Session::Confirmed(n) => {
                    tracing::info!(key, confirmed = n, size, "resuming a resumable upload");
                    (session, n)
                }
            },
            None => {
                let session = self
                    .start_session(&what, key, size, existing, marker)
                    .await?;
                state.upload_id = Some(session.clone());
                save_state(state, state_path)?;
                (session, 0)
            }
        };
        while offset < size {
            let len = self.chunk_size.min(size - offset);
            let (client, auth) = self.client(&what).await?;
            let mut req = client
                .put(&session)
                .headers(auth)
                .header(
                    "content-range",
                    format!("bytes {offset}-{}/{size}", offset + len - 1),
                )
                .header(CONTENT_LENGTH, len)
                .body(Payload::file(body, offset, len).into_body().await?);
            if self.options.send_content_md5 && offset + len == size {
                req = req.header("x-goog-hash", format!("md5={md5}"));
            }
            let resp = self.send(&what, req).await?;
            match resp.status().as_u16() {
                200 | 201 => return Ok(()),
                308 => offset = confirmed(resp.headers()),
                404 | 410 => {
                    let mut err = self.answer_err(&what, resp).await;
                    err.kind = ErrorKind::UploadLost;
                    return Err(err);
                }
                _ => return Err(self.answer_err(&what, resp).await),
            }
        }
        // Every byte was confirmed but no final answer came: ask.
        match self.session_status(&what, &session, size).await? {
            Session::Done => Ok(()),
            Session::Confirmed(n) => Err(StoreError::new(
                ErrorKind::Retryable,
                format!("{what}: the session holds {n} of {size} bytes"),
            )),
        }
    }

    /// Opens a resumable session; returns its URI (a capability: never logged).
    async fn start_session(
        &self,
        what: &str,
        key: &str,
        size: u64,
        existing: Existing,
        marker: Option<&str>,
    ) -> Result<String, StoreError> {
        let (client, auth) = self.client(what).await?;
        let mut params = self.create_params(key, existing);
        params.insert(0, ("uploadType", "resumable".into()));
        let mut metadata = serde_json::json!({
            "name": key,
            "contentType": self.options.content_type,
        });
        if let Some(enc) = self.options.content_encoding {
            metadata["contentEncoding"] = enc.into();
        }
        if let Some(m) = marker {
            metadata["metadata"] = serde_json::json!({ APPEND_MARKER: m });
        }
        let req = client
            .post(format!(
                "{}/upload/storage/v1/b/{}/o",
                self.base,
                encode(&self.bucket)
            ))
            .query(&params)
            .headers(auth)
            .header("x-upload-content-type", &self.options.content_type)
            .header("x-upload-content-length", size.to_string())
            .json(&metadata);
        let resp = self.send(what, req).await?;
        if !resp.status().is_success() {
            return Err(self.answer_err(what, resp).await);
        }
        resp.headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                StoreError::new(
                    ErrorKind::Retryable,
                    format!("{what}: the session answer has no Location"),
                )
            })
    }

    /// Asks a session how much it holds (`Content-Range: bytes */<size>`).
    async fn session_status(
        &self,
        what: &str,
        session: &str,
        size: u64,
    ) -> Result<Session, StoreError> {
        let (client, auth) = self.client(what).await?;
        let req = client
            .put(session)
            .headers(auth)
            .header("content-range", format!("bytes */{size}"))
            .body(Vec::new());
        let resp = self.send(what, req).await?;
        match resp.status().as_u16() {
            200 | 201 => Ok(Session::Done),
            308 => Ok(Session::Confirmed(confirmed(resp.headers()))),
            404 | 410 => {
                let mut err = self.answer_err(what, resp).await;
                err.kind = ErrorKind::UploadLost;
                Err(err)
            }
            _ => Err(self.answer_err(what, resp).await),
        }
    }

    /// The object's generation, MD5 and append marker; `None` if there is none.
    async fn object_info(&self, key: &str) -> Result<Option<ObjectInfo>, StoreError> {
        let what = self.at("get", key);
        let (client, auth) = self.client(&what).await?;
        let resp = self
            .send(&what, client.get(self.object_url(key)).headers(auth))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(self.answer_err(&what, resp).await);
        }
        let json: serde_json::Value = resp.json().await.map_err(|e| {
            StoreError::new(
                ErrorKind::Retryable,
                format!("{what}: {}", display_chain(&e)),
            )
        })?;
        let text = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v.as_i64().map(|n| n.to_string()))
        };
        Ok(Some(ObjectInfo {
            generation: text(&json["generation"]).unwrap_or_default(),
            md5: text(&json["md5Hash"]),
            marker: text(&json["metadata"][APPEND_MARKER]),
        }))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let what = self.at("delete", key);
        let (client, auth) = self.client(&what).await?;
        let resp = self
            .send(&what, client.delete(self.object_url(key)).headers(auth))
            .await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(self.answer_err(&what, resp).await)
    }

    /// Composes [`key` at `base`'s generation (if any), `component`] into `key`, only if `key`
    /// is still that generation; the result carries the marker naming `component`.
    async fn compose(
        &self,
        key: &str,
        component: &str,
        base: Option<&ObjectInfo>,
    ) -> Result<(), StoreError> {
        let what = self.at("compose", key);
        let (client, auth) = self.client(&what).await?;
        let mut sources = Vec::new();
        if let Some(b) = base {
            sources.push(serde_json::json!({"name": key, "generation": b.generation}));
        }
        sources.push(serde_json::json!({"name": component}));
        let mut destination = serde_json::json!({
            "contentType": self.options.content_type,
            "metadata": { APPEND_MARKER: component },
        });
        if let Some(enc) = self.options.content_encoding {
            destination["contentEncoding"] = enc.into();
        }
        let generation = base.map_or("0", |b| b.generation.as_str());
        let mut params = vec![("ifGenerationMatch", generation)];
        // `canned_acl` on the object at the key, not only on the part composed into it.
        if let Some(acl) = self.options.predefined_acl {
            params.push(("destinationPredefinedAcl", acl));
        }
        let req = client
            .post(format!("{}/compose", self.object_url(key)))
            .query(&params)
            .headers(auth)
            .json(&serde_json::json!({
                "kind": "storage#composeRequest",
                "sourceObjects": sources,
                // GCS does not need it; the emulator's compose fails without it.
                "destination": destination,
            }));
        let resp = self.send(&what, req).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(self.answer_err(&what, resp).await)
    }

    /// Appends `body` to the object at `key` (creating it) by compose; see the module docs for
    /// the states a crash can leave and how each is finished.
    pub(super) async fn append(
        &self,
        key: &str,
        body: &Path,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let component = match &state.component {
            Some(c) => c.clone(),
            None => {
                let c = format!(
                    "{key}.logferry-part-{}",
                    crate::outputs::objectstore::key::random_alnum(12)
                );
                state.component = Some(c.clone());
                save_state(state, state_path)?;
                c
            }
        };
        let mut uploaded = false;
        for _ in 0..COMPOSE_ATTEMPTS {
            let base = self.object_info(key).await?;
            if base.as_ref().and_then(|b| b.marker.as_deref()) == Some(component.as_str()) {
                // Composed before a crash or a lost answer: only the clean-up is left.
                return self.delete(&component).await;
            }
            if !uploaded {
                self.write_object(&component, body, Existing::Keep, None, state, state_path)
                    .await?;
                uploaded = true;
            }
            match self.compose(key, &component, base.as_ref()).await {
                Ok(()) => return self.delete(&component).await,
                // Another writer moved the object on: compose onto its new generation.
                Err(e) if e.kind == ErrorKind::Conflict => {
                    tracing::warn!(
                        key,
                        "the object changed during an append: {e}; composing again"
                    )
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::new(
            ErrorKind::Retryable,
            format!(
                "{}: the object kept changing; the append is retried",
                self.at("compose", key)
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_status_and_reason() {
        assert_eq!(classify(412, "conditionNotMet"), ErrorKind::Conflict);
        assert_eq!(classify(403, "forbidden"), ErrorKind::Permanent);
        assert_eq!(classify(401, "required"), ErrorKind::Permanent);
        assert_eq!(classify(404, "notFound"), ErrorKind::Permanent);
        assert_eq!(classify(403, "rateLimitExceeded"), ErrorKind::Retryable);
        assert_eq!(classify(429, "rateLimitExceeded"), ErrorKind::Retryable);
        assert_eq!(classify(503, "backendError"), ErrorKind::Retryable);
        assert_eq!(classify(500, ""), ErrorKind::Retryable);
        let (reason, message) = error_fields(
            br#"{"error":{"code":412,"message":"At least one of the pre-conditions you specified did not hold.","errors":[{"reason":"conditionNotMet"}]}}"#,
        );
        assert_eq!(reason, "conditionNotMet");
        assert!(message.starts_with("At least one"));
    }

    #[test]
    fn names_are_percent_encoded_and_ranges_parsed() {
        assert_eq!(encode("persisted-logs/a b+c"), "persisted-logs%2Fa%20b%2Bc");
        let mut h = HeaderMap::new();
        assert_eq!(confirmed(&h), 0);
        h.insert("range", "bytes=0-262143".parse().unwrap());
        assert_eq!(confirmed(&h), 262_144);
    }
}
