//! The object-store output engine shared by `s3` (and later `azure_blob`, `gcs`): records are
//! formatted as JSON Lines into a durable per-tag spool, sealed by size or age, compressed, keyed
//! with Fluent Bit's key format and uploaded in order by one background uploader.
//!
//! Invariant 1: [`ObjectStoreOutput::write`] returns (and the batch is acknowledged) only after
//! the lines are fsynced in the spool; a sealed chunk is deleted only after the store confirmed
//! the upload. Upload failures never drop data: the chunk is retried with backoff until it goes
//! through (`retries_failed` counts chunks past `retry_limit`, for the health rule).
//! Invariant 2: the spool is bounded by `store_dir_limit_size`; when full, `write` waits for
//! uploads, which pauses the inputs.

pub mod compress;
pub mod key;
pub mod spool;
pub mod store;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::format::DateKey;
use super::Backoff;
use crate::engine::metrics::{HealthWindow, OutputMetrics};
use crate::record::{Event, Value};
use compress::Compression;
use key::KeyFormat;
use spool::{SealedChunk, Spool, UploadState};
use store::ObjectStore;

/// How each record becomes a line of the object body.
#[derive(Debug, Clone)]
pub enum BodyFormat {
    /// JSON Lines with the date key (`json_date_key`, `json_date_format`).
    JsonLines(DateKey),
    /// Only the value of `log_key` (strings raw, other values as JSON).
    LogKey(Vec<u8>),
}

impl BodyFormat {
    fn write(&self, out: &mut Vec<u8>, e: &Event) {
        match self {
            BodyFormat::JsonLines(d) => d.write_record(out, e, true),
            BodyFormat::LogKey(k) => match e.record.get(k) {
                Some(Value::Str(s)) => out.extend_from_slice(s),
                Some(v) => crate::json::write_value(out, v, true),
                None => return,
            },
        }
        out.push(b'\n');
    }
}

/// Upload behaviour (Fluent Bit's s3 options).
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub key: KeyFormat,
    pub static_file_path: bool,
    /// Static keys: append to the object (logferry's default) instead of replacing it.
    pub append: bool,
    pub compression: Compression,
    pub total_file_size: u64,
    pub upload_chunk_size: u64,
    pub upload_timeout: Duration,
    pub use_put_object: bool,
    pub retry_limit: u32,
    pub backoff: Backoff,
}

struct Shared {
    spool: Mutex<Spool>,
    space: Condvar,
}

enum Command {
    Upload(SealedChunk),
    /// Seal everything and upload it (shutdown).
    Drain,
}

pub struct ObjectStoreOutput {
    name: String,
    shared: Arc<Shared>,
    body: BodyFormat,
    settings: Arc<UploadSettings>,
    store: Option<StoreSpec>,
    recovered: Vec<SealedChunk>,
    commands: mpsc::UnboundedSender<Command>,
    receiver: Option<mpsc::UnboundedReceiver<Command>>,
    uploader: Option<tokio::task::JoinHandle<()>>,
    buf: Vec<u8>,
}

impl ObjectStoreOutput {
    pub fn new(
        name: String,
        spool_dir: PathBuf,
        limit: u64,
        body: BodyFormat,
        settings: UploadSettings,
        store: StoreSpec,
    ) -> std::io::Result<Self> {
        let (spool, recovered) = Spool::open(&spool_dir, limit)?;
        if !recovered.is_empty() || spool.used() > 0 {
            tracing::info!(output = %name, chunks = recovered.len(), bytes = spool.used(), dir = %spool_dir.display(), "resuming spooled data from a previous run");
        }
        let (commands, receiver) = mpsc::unbounded_channel();
        Ok(ObjectStoreOutput {
            name,
            shared: Arc::new(Shared {
                spool: Mutex::new(spool),
                space: Condvar::new(),
            }),
            body,
            settings: Arc::new(settings),
            store: Some(store),
            recovered,
            commands,
            receiver: Some(receiver),
            uploader: None,
            buf: Vec::with_capacity(1 << 20),
        })
    }

    /// Starts the uploader task (recovered chunks first).
    pub async fn start(
        &mut self,
        metrics: Arc<OutputMetrics>,
        health: Arc<HealthWindow>,
        hard_stop: watch::Receiver<bool>,
    ) {
        let (Some(spec), Some(receiver)) = (self.store.take(), self.receiver.take()) else {
            return;
        };
        let store = spec.build().await;
        tracing::info!(output = %self.name, store = %store.describe(), "object store ready");
        let uploader = Uploader {
            name: self.name.clone(),
            shared: self.shared.clone(),
            settings: self.settings.clone(),
            store,
            queue: std::mem::take(&mut self.recovered).into(),
            metrics,
            health,
        };
        self.uploader = Some(tokio::spawn(uploader.run(receiver, hard_stop)));
    }

    /// Spools the batches durably; seals buffers that reached `total_file_size`.
    pub fn write(&mut self, batches: &[(&str, &[Event])]) -> std::io::Result<()> {
        let mut spool = self.shared.spool.lock().expect("spool lock");
        let mut warned = false;
        while spool.is_full() {
            if !warned {
                tracing::warn!(output = %self.name, used = spool.used(), "store_dir_limit_size reached: pausing until uploads free space");
                warned = true;
            }
            spool = self
                .shared
                .space
                .wait_timeout(spool, Duration::from_millis(500))
                .expect("spool lock")
                .0;
        }
        for (tag, events) in batches {
            let Some(first) = events.first() else {
                continue;
            };
            self.buf.clear();
            for e in *events {
                self.body.write(&mut self.buf, e);
            }
            spool.append(tag, first.time, &self.buf)?;
        }
        spool.sync()?;
        for tag in spool.due(self.settings.total_file_size, u64::MAX, false) {
            if let Some(chunk) = spool.seal(&tag)? {
                let _ = self.commands.send(Command::Upload(chunk));
            }
        }
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::with_capacity(1 << 20);
        }
        Ok(())
    }

    /// Shutdown: seal and upload everything, until done or `hard_stop`. What is not uploaded
    /// stays in the spool for the next start.
    pub async fn finish(&mut self) {
        let _ = self.commands.send(Command::Drain);
        if let Some(task) = self.uploader.take() {
            let _ = task.await;
        }
    }
}

fn count_lines(path: &std::path::Path) -> u64 {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    while let Ok(read) = f.read(&mut buf) {
        if read == 0 {
            break;
        }
        n += memchr::memchr_iter(b'\n', &buf[..read]).count() as u64;
    }
    n
}

/// What to build the store from once the runtime runs (the AWS SDK config is async).
pub enum StoreSpec {
    Local(PathBuf),
    S3 {
        identity: Box<crate::cloud::aws::AwsIdentity>,
        endpoint: Option<String>,
        bucket: String,
        options: store::PutOptions,
    },
}

impl StoreSpec {
    async fn build(self) -> ObjectStore {
        match self {
            StoreSpec::Local(root) => ObjectStore::Local(store::LocalDir { root }),
            StoreSpec::S3 {
                identity,
                endpoint,
                bucket,
                options,
            } => {
                let sdk = identity.sdk_config().await;
                // Checksums only where S3 requires them: S3-compatible stores differ in how they
                // handle flexible checksums on multipart uploads; `send_content_md5` adds MD5.
                let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(true)
                    .request_checksum_calculation(
                        aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                    );
                if let Some(e) = endpoint {
                    conf = conf.endpoint_url(e);
                }
                ObjectStore::S3(store::S3Store {
                    client: aws_sdk_s3::Client::from_conf(conf.build()),
                    bucket,
                    options,
                    identity: identity.describe(),
                })
            }
        }
    }
}

struct Uploader {
    name: String,
    shared: Arc<Shared>,
    settings: Arc<UploadSettings>,
    store: ObjectStore,
    queue: VecDeque<SealedChunk>,
    metrics: Arc<OutputMetrics>,
    health: Arc<HealthWindow>,
}

impl Uploader {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut hard_stop: watch::Receiver<bool>,
    ) {
        let mut draining = false;
        let mut attempts = 0u32;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Age-triggered seals (upload_timeout), or everything when draining.
            if let Err(e) = self.seal_due(draining) {
                tracing::error!(output = %self.name, "cannot seal spooled data: {e}");
            }
            if let Some(chunk) = self.queue.front().cloned() {
                match self.upload(&chunk).await {
                    Ok(key) => {
                        attempts = 0;
                        self.shared
                            .spool
                            .lock()
                            .expect("spool lock")
                            .remove_sealed(&chunk);
                        self.shared.space.notify_all();
                        self.queue.pop_front();
                        tracing::debug!(output = %self.name, key = %key, bytes = chunk.size, "uploaded");
                        continue;
                    }
                    Err(e) => {
                        attempts += 1;
                        self.metrics.errors.add(1);
                        self.metrics.retries.add(1);
                        self.health.error();
                        if attempts == self.settings.retry_limit + 1 {
                            self.metrics.retries_failed.add(1);
                            self.health.retry_failure();
                        }
                        let wait = self
                            .settings
                            .backoff
                            .delay(attempts.saturating_sub(1).min(10));
                        tracing::warn!(output = %self.name, store = %self.store.describe(), tag = %chunk.tag, attempt = attempts, "upload failed, data kept in the spool, retry in {}s: {e}", wait.as_secs());
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = hard_stop.wait_for(|s| *s) => return,
                        }
                        continue;
                    }
                }
            }
            if draining {
                return;
            }
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Upload(chunk)) => self.queue.push_back(chunk),
                    Some(Command::Drain) | None => draining = true,
                },
                _ = tick.tick() => {}
                _ = hard_stop.wait_for(|s| *s) => return,
            }
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Upload(chunk) => self.queue.push_back(chunk),
                    Command::Drain => draining = true,
                }
            }
        }
    }

    fn seal_due(&mut self, everything: bool) -> std::io::Result<()> {
        let mut spool = self.shared.spool.lock().expect("spool lock");
        for tag in spool.due(
            self.settings.total_file_size,
            self.settings.upload_timeout.as_secs(),
            everything,
        ) {
            if let Some(chunk) = spool.seal(&tag)? {
                self.queue.push_back(chunk);
            }
        }
        Ok(())
    }

    /// Compresses (once) and uploads a sealed chunk; returns its key.
    async fn upload(&self, chunk: &SealedChunk) -> Result<String, store::StoreError> {
        let s = &self.settings;
        let state_path = chunk.state_path();
        let mut state = UploadState::load(&state_path);
        let body = chunk.body_path();
        let chunk_path = chunk.data.clone();
        let compression = s.compression;
        let body_size = if body.exists() && state.key.is_some() {
            std::fs::metadata(&body).map(|m| m.len()).unwrap_or(0)
        } else {
            let body2 = body.clone();
            tokio::task::spawn_blocking(move || compression.compress_file(&chunk_path, &body2))
                .await
                .map_err(|e| store::StoreError(format!("compression task: {e}")))?
                .map_err(|e| {
                    store::StoreError(format!("compressing {}: {e}", chunk.data.display()))
                })?
        };
        let key = match &state.key {
            Some(k) => k.clone(),
            None => {
                let index = self
                    .shared
                    .spool
                    .lock()
                    .expect("spool lock")
                    .next_index()
                    .map_err(|e| store::StoreError(format!("$INDEX: {e}")))?;
                let mut key = s.key.render(&chunk.tag, index, chunk.first);
                let put_object = s.use_put_object || body_size < s.upload_chunk_size;
                if put_object && !s.key.has_uuid_or_index() && !s.static_file_path {
                    key = format!("{key}-object{}", key::random_alnum(8));
                }
                state.key = Some(key.clone());
                state
                    .save(&state_path)
                    .map_err(|e| store::StoreError(format!("saving upload state: {e}")))?;
                key
            }
        };
        let append = s.append && s.static_file_path && s.key.is_static();
        if append {
            self.store
                .append(&key, &body, s.upload_chunk_size, &mut state, &state_path)
                .await?;
        } else {
            self.store
                .put(
                    &key,
                    &body,
                    s.upload_chunk_size,
                    !s.use_put_object,
                    &mut state,
                    &state_path,
                )
                .await?;
        }
        self.metrics.uploaded_records.add(count_lines(&chunk.data));
        self.metrics.uploaded_bytes.add(body_size);
        Ok(key)
    }
}
