//! The Azure Blob Storage backend: append blobs (the static-key mode, Fluent Bit's default
//! `appendblob`) and block blobs (`blockblob`), through the Blob REST API.
//!
//! Invariant 1: every block lands once. An Append Block carries the position it must land at
//! (`x-ms-blob-condition-appendpos`), computed from the blob's length saved in the upload state
//! before the chunk's first block; a retry or a resume after kill -9 reads the blob's length
//! and goes on after the blocks that already landed. A chunk that would take an append blob
//! past its block limit (50,000) goes to the next blob, `<name>.1`, `<name>.2`, …, so nothing
//! is refused for `BlockCountExceedsLimit` and each blob holds whole chunks (whole lines). Block blobs stage blocks with ids saved in the upload
//! state and commit them with `If-None-Match: *`; a commit that found the blob already there
//! checks the upload token in the blob's metadata, so a commit whose answer was lost is not
//! made twice under another name.
//!
//! The REST calls go through reqwest (the client `azure_core` uses) rather than
//! `azure_storage_blob`'s clients: those take Entra credentials only (the 1.x SDK dropped
//! Shared Key, which Fluent Bit's `auth_type key` needs), and every call here needs its exact
//! conditional headers and the service's `x-ms-error-code`; one request path serves all three
//! kinds of identity.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use base64::Engine;

use super::{body_size, save_state, ErrorKind, Existing, Payload, StoreError};
use crate::cloud::azure::{self, Auth, AuthSpec};
use crate::outputs::objectstore::spool::{AppendTarget, UploadState};

/// The Blob REST version sent: append-position conditions, 4000 MiB blocks, bearer tokens.
const API_VERSION: &str = "2021-12-02";
/// Block size for Append Block and Put Block (every service version accepts 4 MiB appends).
pub const BLOCK_SIZE: u64 = 4 << 20;
/// Committed blocks an append blob takes (the service's limit).
pub const APPEND_BLOCK_LIMIT: u64 = 50_000;
/// Blob metadata naming the block-blob upload that committed the blob.
const UPLOAD_META: &str = "x-ms-meta-logferryupload";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobType {
    Append,
    Block,
}

/// Built at config time (no I/O); [`AzureSpec::build`] makes the client at start.
pub struct AzureSpec {
    pub account: String,
    pub container: String,
    /// Scheme, host and, in emulator mode, `/<account>`: blobs are `<base>/<container>/<name>`.
    pub base_url: String,
    pub auth: AuthSpec,
    pub tls: rustls::ClientConfig,
    pub blob_type: BlobType,
    pub auto_create_container: bool,
    pub content_type: String,
    pub content_encoding: Option<&'static str>,
    pub block_size: u64,
    pub append_block_limit: u64,
}

impl AzureSpec {
    pub fn build(self) -> AzureStore {
        let http = azure::http_client(self.tls);
        let auth = self.auth.build(&http);
        AzureStore {
            account: self.account,
            container: self.container,
            base_url: self.base_url.trim_end_matches('/').to_string(),
            auth,
            http,
            blob_type: self.blob_type,
            auto_create_container: self.auto_create_container,
            content_type: self.content_type,
            content_encoding: self.content_encoding,
            block_size: self.block_size,
            append_block_limit: self.append_block_limit,
            container_ready: AtomicBool::new(false),
            generations: Mutex::new(HashMap::new()),
        }
    }
}

pub struct AzureStore {
    account: String,
    container: String,
    base_url: String,
    /// An identity that could not be set up (e.g. managed identity options) fails every call.
    auth: Result<Auth, String>,
    http: reqwest::Client,
    blob_type: BlobType,
    auto_create_container: bool,
    content_type: String,
    content_encoding: Option<&'static str>,
    block_size: u64,
    append_block_limit: u64,
    container_ready: AtomicBool,
    /// The append-blob generation (`.N` suffix) last found with room, per key.
    generations: Mutex<HashMap<String, u32>>,
}

/// What a HEAD of a blob says.
struct BlobProps {
    len: u64,
    committed_blocks: u64,
    append_blob: bool,
    upload_token: Option<String>,
}

/// A request: method, blob (None: the container), query, extra headers, body.
struct Call<'a> {
    method: reqwest::Method,
    blob: Option<&'a str>,
    query: Vec<(&'static str, String)>,
    headers: Vec<(String, String)>,
    body: Payload,
}

impl<'a> Call<'a> {
    fn new(method: reqwest::Method, blob: Option<&'a str>) -> Self {
        Call {
            method,
            blob,
            query: Vec::new(),
            headers: Vec::new(),
            body: Payload::empty(),
        }
    }
    fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn body(mut self, b: Payload) -> Self {
        self.body = b;
        self
    }
}

/// A refused call: the status and the service's `x-ms-error-code`.
struct Refusal {
    status: u16,
    code: String,
}

impl AzureStore {
    pub fn describe(&self) -> String {
        let kind = match self.blob_type {
            BlobType::Append => "append blobs",
            BlobType::Block => "block blobs",
        };
        format!(
            "{kind} in account {}, container {} at {} ({})",
            self.account,
            self.container,
            self.base_url,
            self.identity()
        )
    }

    fn identity(&self) -> String {
        match &self.auth {
            Ok(a) => a.describe(),
            Err(e) => format!("identity not set up: {e}"),
        }
    }

    fn auth(&self) -> Result<&Auth, StoreError> {
        self.auth
            .as_ref()
            .map_err(|e| StoreError::new(ErrorKind::Permanent, e.clone()))
    }

    /// The container exists (created when `auto_create_container` is on) and the identity can
    /// reach it.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.ensure_container().await
    }

    async fn ensure_container(&self) -> Result<(), StoreError> {
        if self.container_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let get = Call::new(reqwest::Method::HEAD, None).query("restype", "container");
        match self.send(get).await? {
            Ok(_) => {}
            Err(r) if r.code == "ContainerNotFound" || r.status == 404 => {
                if !self.auto_create_container {
                    return Err(self.refused(None, "checking the container", &r));
                }
                let create = Call::new(reqwest::Method::PUT, None).query("restype", "container");
                match self.send(create).await? {
                    Ok(_) => {
                        tracing::info!(account = %self.account, container = %self.container, "created the container (auto_create_container)")
                    }
                    Err(r) if r.code == "ContainerAlreadyExists" => {}
                    Err(r) => return Err(self.refused(None, "creating the container", &r)),
                }
            }
            Err(r) => return Err(self.refused(None, "checking the container", &r)),
        }
        self.container_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a call; `Ok(Err(_))` is the service's refusal, `Err` a transport or identity
    /// failure already typed.
    async fn send(&self, call: Call<'_>) -> Result<Result<reqwest::Response, Refusal>, StoreError> {
        let auth = self.auth()?;
        let mut path = format!("/{}", encode_path(&self.container));
        if let Some(b) = call.blob {
            path.push('/');
            path.push_str(&encode_path(b));
        }
        let base_path = self
            .base_url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or("");
        let full_path = format!("{base_path}{path}");
        let mut url = format!("{}{path}", self.base_url);
        let mut sep = '?';
        for (k, v) in &call.query {
            url.push(sep);
            url.push_str(&format!("{k}={}", encode_query(v)));
            sep = '&';
        }
        let mut headers = call.headers;
        headers.push(("x-ms-version".into(), API_VERSION.into()));
        headers.push((
            "x-ms-date".into(),
            chrono::Utc::now()
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        ));
        match auth {
            Auth::Sas(token) => {
                url.push(sep);
                url.push_str(token);
            }
            Auth::SharedKey { account, key } => {
                let query: Vec<(String, String)> = call
                    .query
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect();
                let signature = azure::shared_key_authorization(
                    account,
                    key,
                    call.method.as_str(),
                    &full_path,
                    &query,
                    &headers,
                    call.body.len(),
                );
                headers.push(("authorization".into(), signature));
            }
            Auth::Bearer(source) => {
                let token = source.token().await.map_err(|e| {
                    let kind = if e.permanent {
                        ErrorKind::Permanent
                    } else {
                        ErrorKind::Retryable
                    };
                    StoreError::new(kind, e.message)
                })?;
                headers.push(("authorization".into(), format!("Bearer {token}")));
            }
        }
        let mut request = self.http.request(call.method.clone(), &url);
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        if call.method == reqwest::Method::PUT {
            // The service wants Content-Length on every PUT, also an empty one.
            request = request
                .header("content-length", call.body.len().to_string())
                .body(call.body.into_body().await?);
        }
        // `without_url`: the URL carries the SAS token.
        let response = request.send().await.map_err(|e| {
            let e = e.without_url();
            StoreError::new(
                ErrorKind::Retryable,
                format!(
                    "{}: {}: {}",
                    self.location(call.blob),
                    call.method,
                    crate::outputs::objectstore::store::display_chain(&e)
                ),
            )
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ok(response));
        }
        let header_code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // The code is in `x-ms-error-code`, and in the body's `<Code>` when a front end
        // answered without the header.
        let code = match header_code {
            Some(c) => c,
            None => {
                let body = response.text().await.unwrap_or_default();
                body.split_once("<Code>")
                    .and_then(|(_, rest)| rest.split_once("</Code>"))
                    .map_or(String::new(), |(c, _)| c.to_string())
            }
        };
        if matches!(status.as_u16(), 401 | 403) {
            if let Auth::Bearer(source) = auth {
                source.invalidate().await;
            }
        }
        Ok(Err(Refusal {
            status: status.as_u16(),
            code,
        }))
    }

    fn location(&self, blob: Option<&str>) -> String {
        match blob {
            Some(b) => format!(
                "account {}, container {}, blob {b}",
                self.account, self.container
            ),
            None => format!("account {}, container {}", self.account, self.container),
        }
    }

    /// A refusal as a typed error naming account, container, blob, status, code and identity.
    fn refused(&self, blob: Option<&str>, doing: &str, r: &Refusal) -> StoreError {
        let kind = match (r.status, r.code.as_str()) {
            (_, "AppendPositionConditionNotMet" | "ConditionNotMet" | "BlobAlreadyExists") => {
                ErrorKind::Conflict
            }
            (_, "InvalidBlockList" | "InvalidBlockId") => ErrorKind::UploadLost,
            (408 | 429, _) | (500..=599, _) => ErrorKind::Retryable,
            (_, "OperationTimedOut" | "ServerBusy" | "InternalError") => ErrorKind::Retryable,
            _ => ErrorKind::Permanent,
        };
        let code = if r.code.is_empty() {
            "no error code"
        } else {
            r.code.as_str()
        };
        StoreError::new(
            kind,
            format!(
                "{}: {doing} refused: HTTP {}, {code} (identity: {})",
                self.location(blob),
                r.status,
                self.identity()
            ),
        )
    }

    /// Runs a call on a blob; a missing container is created once (when allowed) and the
    /// call made again.
    async fn blob_call<'c>(
        &self,
        make: impl Fn() -> Call<'c>,
        blob: &str,
    ) -> Result<Result<reqwest::Response, Refusal>, StoreError> {
        let result = self.send(make()).await?;
        if let Err(r) = &result {
            if r.code == "ContainerNotFound" && self.auto_create_container {
                self.container_ready.store(false, Ordering::Relaxed);
                self.ensure_container().await?;
                tracing::debug!(blob, "container created, repeating the call");
                return self.send(make()).await;
            }
        }
        Ok(result)
    }

    async fn head(&self, blob: &str) -> Result<Option<BlobProps>, StoreError> {
        match self
            .blob_call(|| Call::new(reqwest::Method::HEAD, Some(blob)), blob)
            .await?
        {
            Ok(resp) => {
                let h = resp.headers();
                let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
                Ok(Some(BlobProps {
                    len: get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    committed_blocks: get("x-ms-blob-committed-block-count")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    append_blob: get("x-ms-blob-type") == Some("AppendBlob"),
                    upload_token: get(UPLOAD_META).map(str::to_string),
                }))
            }
            Err(r) if r.status == 404 => Ok(None),
            Err(r) => Err(self.refused(Some(blob), "reading the blob's properties", &r)),
        }
    }

    fn content_headers<'c>(&self, call: Call<'c>) -> Call<'c> {
        let call = call.header("x-ms-blob-content-type", self.content_type.clone());
        match self.content_encoding {
            Some(e) => call.header("x-ms-blob-content-encoding", e),
            None => call,
        }
    }

    /// Creates an empty append blob unless one exists (`If-None-Match: *`).
    async fn create_append_blob(&self, blob: &str) -> Result<(), StoreError> {
        let make = || {
            self.content_headers(
                Call::new(reqwest::Method::PUT, Some(blob))
                    .header("x-ms-blob-type", "AppendBlob")
                    .header("if-none-match", "*"),
            )
        };
        match self.blob_call(make, blob).await? {
            Ok(_) => Ok(()),
            Err(r) if r.code == "BlobAlreadyExists" || r.status == 409 => Ok(()),
            Err(r) => Err(self.refused(Some(blob), "creating the append blob", &r)),
        }
    }

    fn generation_name(key: &str, generation: u32) -> String {
        if generation == 0 {
            key.to_string()
        } else {
            format!("{key}.{generation}")
        }
    }

    /// The append blob of `key` with room for `needed` more blocks: the latest of `<key>`,
    /// `<key>.1`, …, else the next (created; an empty one takes any chunk). Returns its name
    /// and properties.
    async fn current_append_blob(
        &self,
        key: &str,
        needed: u64,
    ) -> Result<(String, BlobProps), StoreError> {
        let known = self
            .generations
            .lock()
            .expect("generations lock")
            .get(key)
            .copied();
        // Only ever forward: after a restart the latest generation is found on the server, so
        // newer lines never go back into an older blob that still has room.
        let mut generation = match known {
            Some(g) => g,
            None => {
                let mut g = 0;
                while self
                    .head(&Self::generation_name(key, g + 1))
                    .await?
                    .is_some()
                {
                    g += 1;
                }
                g
            }
        };
        loop {
            let name = Self::generation_name(key, generation);
            let props = match self.head(&name).await? {
                Some(p) => p,
                None => {
                    self.create_append_blob(&name).await?;
                    self.head(&name).await?.ok_or_else(|| {
                        StoreError::new(
                            ErrorKind::Retryable,
                            format!("{}: created but not found", self.location(Some(&name))),
                        )
                    })?
                }
            };
            if !props.append_blob {
                return Err(StoreError::new(
                    ErrorKind::Permanent,
                    format!(
                        "{}: exists and is not an append blob (blob_type appendblob needs it to be one, or a path where nothing else writes)",
                        self.location(Some(&name))
                    ),
                ));
            }
            if props.committed_blocks == 0
                || props.committed_blocks + needed <= self.append_block_limit
            {
                // Kept only for keys past their first blob: the map stays as small as the
                // number of rolled-over keys.
                let mut generations = self.generations.lock().expect("generations lock");
                if generation > 0 {
                    generations.insert(key.to_string(), generation);
                } else {
                    generations.remove(key);
                }
                return Ok((name, props));
            }
            generation += 1;
            tracing::info!(account = %self.account, container = %self.container, blob = %name, committed_blocks = props.committed_blocks, limit = self.append_block_limit, next = %Self::generation_name(key, generation), "append blob has no room for the next chunk's blocks: continuing in the next blob");
        }
    }

    /// Appends the body at the end of the key's append blob (rolling over to the next
    /// generation at the block limit), each block exactly once.
    pub async fn append(
        &self,
        key: &str,
        body: &Path,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let size = body_size(body)?;
        let save = |state: &UploadState| save_state(state, state_path);
        // A chunk goes whole into one blob when it fits (readers see whole lines per blob);
        // only a chunk larger than a whole blob's block limit is split across blobs.
        let (mut target, props) = match state.append_target.clone() {
            None => {
                let needed = size.div_ceil(self.block_size);
                let (blob, props) = self.current_append_blob(key, needed).await?;
                let target = AppendTarget {
                    blob,
                    base: props.len,
                    body_offset: 0,
                };
                state.append_target = Some(target.clone());
                save(state)?;
                (target, props)
            }
            Some(target) => {
                let props = match self.head(&target.blob).await? {
                    Some(p) => p,
                    None if target.base == 0 => {
                        self.create_append_blob(&target.blob).await?;
                        BlobProps {
                            len: 0,
                            committed_blocks: 0,
                            append_blob: true,
                            upload_token: None,
                        }
                    }
                    None => {
                        return Err(StoreError::new(
                            ErrorKind::Conflict,
                            format!(
                                "{}: the blob disappeared during the append",
                                self.location(Some(&target.blob))
                            ),
                        ))
                    }
                };
                (target, props)
            }
        };
        // Where the body goes on: after the blocks of this chunk that already landed.
        let landed = props.len.checked_sub(target.base);
        let mut offset = match landed.map(|l| target.body_offset + l) {
            Some(o) if o == size || (o < size && o % self.block_size == 0) => o,
            _ => {
                return Err(StoreError::new(
                    ErrorKind::Conflict,
                    format!(
                        "{}: length {} does not continue this chunk's blocks (started at {}); another writer appended",
                        self.location(Some(&target.blob)),
                        props.len,
                        target.base
                    ),
                ))
            }
        };
        let mut blocks = props.committed_blocks;
        while offset < size {
            if blocks >= self.append_block_limit {
                let needed = (size - offset).div_ceil(self.block_size);
                let (blob, next) = self.current_append_blob(key, needed).await?;
                target = AppendTarget {
                    blob,
                    base: next.len,
                    body_offset: offset,
                };
                state.append_target = Some(target.clone());
                save(state)?;
                blocks = next.committed_blocks;
                continue;
            }
            let len = self.block_size.min(size - offset);
            let block = Payload::file(body, offset, len);
            let position = target.base + (offset - target.body_offset);
            let blob = target.blob.as_str();
            let make = || {
                Call::new(reqwest::Method::PUT, Some(blob))
                    .query("comp", "appendblock")
                    .header("x-ms-blob-condition-appendpos", position.to_string())
                    .body(block.clone())
            };
            match self.blob_call(make, blob).await? {
                Ok(_) => {}
                Err(r) if r.code == "BlockCountExceedsLimit" => {
                    blocks = self.append_block_limit;
                    self.generations
                        .lock()
                        .expect("generations lock")
                        .remove(key);
                    continue;
                }
                Err(r) if r.code == "AppendPositionConditionNotMet" => {
                    // The block may have landed on an earlier try whose answer was lost.
                    match self.head(blob).await? {
                        Some(p) if p.len == position + len => {}
                        _ => {
                            return Err(self.refused(Some(blob), "appending a block", &r));
                        }
                    }
                }
                Err(r) => return Err(self.refused(Some(blob), "appending a block", &r)),
            }
            offset += len;
            blocks += 1;
        }
        Ok(())
    }

    fn block_id(index: u64) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("logferry-block-{index:08}"))
    }

    /// Stages the body as blocks (ids saved in the upload state, so a resumed upload stages
    /// only what is missing) and commits them as the blob at `key`.
    pub async fn put(
        &self,
        key: &str,
        body: &Path,
        existing: Existing,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let size = body_size(body)?;
        let save = |state: &UploadState| save_state(state, state_path);
        let token = match &state.upload_id {
            Some(t) => t.clone(),
            None => {
                let t = crate::outputs::objectstore::key::random_alnum(24);
                state.upload_id = Some(t.clone());
                save(state)?;
                t
            }
        };
        let count = size.div_ceil(self.block_size);
        for index in 0..count {
            if state.parts.iter().any(|(n, _)| *n as u64 == index) {
                continue;
            }
            let offset = index * self.block_size;
            let block = Payload::file(body, offset, self.block_size.min(size - offset));
            let id = Self::block_id(index);
            let make = || {
                Call::new(reqwest::Method::PUT, Some(key))
                    .query("comp", "block")
                    .query("blockid", id.clone())
                    .body(block.clone())
            };
            if let Err(r) = self.blob_call(make, key).await? {
                return Err(self.refused(Some(key), "staging a block", &r));
            }
            state.parts.push((index as i32, id));
            save(state)?;
        }
        let mut list = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for index in 0..count {
            list.push_str(&format!("<Latest>{}</Latest>", Self::block_id(index)));
        }
        list.push_str("</BlockList>");
        let list = Payload::Bytes(list.into());
        let make = || {
            let call = self.content_headers(
                Call::new(reqwest::Method::PUT, Some(key))
                    .query("comp", "blocklist")
                    .header("content-type", "application/xml")
                    .header(UPLOAD_META, token.clone())
                    .body(list.clone()),
            );
            match existing {
                Existing::Keep => call.header("if-none-match", "*"),
                Existing::Replace => call,
            }
        };
        match self.blob_call(make, key).await? {
            Ok(_) => Ok(()),
            Err(r) if r.code == "BlobAlreadyExists" || r.status == 409 => {
                // Committed by an earlier try of this upload whose answer was lost?
                match self.head(key).await? {
                    Some(p) if p.upload_token.as_deref() == Some(token.as_str()) => Ok(()),
                    _ => Err(self.refused(Some(key), "committing the block list", &r)),
                }
            }
            Err(r) => Err(self.refused(Some(key), "committing the block list", &r)),
        }
    }
}

/// Percent-encodes a blob path, keeping `/` and the unreserved characters.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn encode_query(s: &str) -> String {
    encode_path(s).replace('/', "%2F")
}
