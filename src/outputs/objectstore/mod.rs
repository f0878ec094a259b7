//! The object-store output engine shared by `s3`, `azure_blob` and `gcs`: records are
//! formatted as JSON Lines into a durable per-tag spool, sealed by size or age, compressed, keyed
//! with Fluent Bit's key format and uploaded by a background uploader.
//!
//! Invariant 1: [`ObjectStoreOutput::write`] returns (and the batch is acknowledged) only after
//! the lines are fsynced in the spool; a sealed chunk is deleted only after the store confirmed
//! the upload. Upload failures never drop data: the chunk is retried with backoff until it goes
//! through (`retries_failed` counts chunks past `retry_limit`, for the health rule). An upload id
//! the server no longer accepts, or an object that changed under an append, restarts that upload
//! from the spool; a key found taken is rendered again. Nothing is replaced unless
//! `static_file_mode overwrite` asks for it.
//! Invariant 2: the spool is bounded by `store_dir_limit_size` (default [`DEFAULT_SPOOL_LIMIT`],
//! 2 GB; `0` lifts the bound); when it is full, `write` waits for uploads, which pauses the
//! inputs. If nothing is sealed then (the limit is below `total_file_size`), the largest open
//! buffer is sealed so an upload can free space. The wait ends when the engine's hard stop
//! fires, so shutdown stays within `Grace`.
//!
//! Liveness: chunks are ordered per key (per tag for keys that vary), not per output: one key
//! whose uploads fail waits on its own backoff while the others go on, up to
//! [`CONCURRENT_UPLOADS`] at a time. A permanent refusal (credentials, permissions, a missing
//! bucket) is logged at once, sets `store_failing` (health fails) and keeps the data.
//!
//! Start (never at build, so `--dry-run` writes nothing): the spool folder is created and
//! recovered (summary logged), free disk space is checked against the limit, and the store is
//! probed (bucket and identity); a failed probe is logged at once and the agent keeps running.

pub mod compress;
pub mod key;
pub mod options;
pub mod spool;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::format::DateKey;
use super::Backoff;
use crate::engine::metrics::{HealthWindow, OutputMetrics};
use crate::record::{Event, Value};
use compress::Compression;
use key::{KeyFormat, SuffixAlphabet};
use spool::{SealedChunk, Spool, UploadState};
use store::{ErrorKind, Existing, ObjectStore, StoreError, StoreSpec};

/// `store_dir_limit_size` when the config does not set it.
pub const DEFAULT_SPOOL_LIMIT: u64 = 2_000_000_000;
/// Chunks uploading at once (each from a different key).
pub const CONCURRENT_UPLOADS: usize = 4;

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

/// What makes the key of an object that is not at a static key unique, as each Fluent Bit
/// output spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySuffix {
    /// `s3` and `gcs`: `-object<8 random>` (`s3`: letters and digits, `gcs`: hex), unless the
    /// key format has `$UUID` or `$INDEX`.
    Object(SuffixAlphabet),
    /// `azure_blob` block blobs: `.<random_len random>.<epoch ms><extension>` on every blob.
    AzureBlock {
        random_len: usize,
        extension: &'static str,
    },
}

impl KeySuffix {
    fn apply(self, key: &mut String, format: &KeyFormat) {
        match self {
            KeySuffix::Object(alphabet) if !format.has_uuid_or_index() => {
                key.push_str("-object");
                key.push_str(&alphabet.random(8));
            }
            KeySuffix::Object(_) => {}
            KeySuffix::AzureBlock {
                random_len,
                extension,
            } => {
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                key.push('.');
                key.push_str(&key::random_alnum(random_len));
                key.push_str(&format!(".{ms}{extension}"));
            }
        }
    }
}

/// Upload behaviour (Fluent Bit's s3 options).
#[derive(Debug, Clone)]
pub struct UploadSettings {
    pub key: KeyFormat,
    /// Added to keys that are not static (`static_file_path` off).
    pub key_suffix: KeySuffix,
    pub static_file_path: bool,
    /// Static keys: append to the object (logferry's default) instead of replacing it.
    pub append: bool,
    pub compression: Compression,
    pub total_file_size: u64,
    pub upload_timeout: Duration,
    pub retry_limit: u32,
    pub backoff: Backoff,
}

impl UploadSettings {
    /// `static_file_path` keys take every upload of a tag: appended, or replaced on request.
    fn appends(&self) -> bool {
        self.static_file_path && self.append
    }
}

/// Where the spool lives: `base` (or the default state directory, chosen at start) + `sub`.
#[derive(Debug, Clone)]
pub struct SpoolDir {
    pub base: Option<PathBuf>,
    pub sub: PathBuf,
}

impl SpoolDir {
    /// `/var/lib/logferry` when it can be created, else `~/.local/state/logferry` (not `/tmp`:
    /// a spool must survive restarts).
    fn resolve(&self) -> PathBuf {
        let base = self.base.clone().unwrap_or_else(|| {
            let system = PathBuf::from("/var/lib/logferry");
            if std::fs::create_dir_all(&system).is_ok() {
                return system;
            }
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".local/state/logferry"))
                .unwrap_or_else(|| PathBuf::from(".logferry-state"))
        });
        base.join(&self.sub)
    }
}

/// Free bytes on the filesystem holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a valid C string and `stat` a plain struct statvfs fills in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
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

/// What exists once the output started.
struct Running {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    uploader: Option<tokio::task::JoinHandle<()>>,
    hard_stop: watch::Receiver<bool>,
}

pub struct ObjectStoreOutput {
    name: String,
    spool_dir: SpoolDir,
    limit: u64,
    body: BodyFormat,
    settings: Arc<UploadSettings>,
    store: Option<StoreSpec>,
    running: Option<Running>,
    buf: Vec<u8>,
}

impl ObjectStoreOutput {
    /// Validated settings only: nothing is created until [`ObjectStoreOutput::start`].
    pub fn new(
        name: String,
        spool_dir: SpoolDir,
        limit: u64,
        body: BodyFormat,
        settings: UploadSettings,
        store: StoreSpec,
    ) -> Self {
        ObjectStoreOutput {
            name,
            spool_dir,
            limit,
            body,
            settings: Arc::new(settings),
            store: Some(store),
            running: None,
            buf: Vec::new(),
        }
    }

    /// Opens and recovers the spool, then starts the uploader (recovered chunks first, after
    /// probing the store). A spool that cannot be opened is logged; writes then fail.
    pub async fn start(
        &mut self,
        metrics: Arc<OutputMetrics>,
        health: Arc<HealthWindow>,
        hard_stop: watch::Receiver<bool>,
    ) {
        let Some(spec) = self.store.take() else {
            return;
        };
        metrics
            .object_store
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let dir = self.spool_dir.resolve();
        let (spool, recovery) = match Spool::open(&dir, self.limit) {
            Ok(opened) => opened,
            Err(e) => {
                tracing::error!(output = %self.name, dir = %dir.display(), "cannot open the spool (store_dir): {e}; records for this output cannot be accepted");
                return;
            }
        };
        metrics.spool_damaged_bytes.add(recovery.damaged_bytes);
        if !recovery.chunks.is_empty() || spool.used() > 0 {
            tracing::info!(output = %self.name, dir = %dir.display(), chunks = recovery.chunks.len(), open_buffers = recovery.open_buffers, bytes = spool.used(), orphans = recovery.orphans, damaged_bytes = recovery.damaged_bytes, "resuming spooled data from a previous run");
        }
        if let Some(free) = free_space(&dir) {
            if self.limit == 0 {
                tracing::warn!(output = %self.name, dir = %dir.display(), free_bytes = free, "store_dir_limit_size 0: the spool is unbounded and may fill this disk during an outage");
            } else if free < self.limit.saturating_sub(spool.used()) {
                tracing::warn!(output = %self.name, dir = %dir.display(), free_bytes = free, store_dir_limit_size = self.limit, "less free disk space than store_dir_limit_size: the disk may fill before the spool does");
            }
        }
        let store = spec.build().await;
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            space: Condvar::new(),
        });
        let (commands, receiver) = mpsc::unbounded_channel();
        let uploader = Uploader {
            ctx: Arc::new(UploadCtx {
                name: self.name.clone(),
                shared: shared.clone(),
                settings: self.settings.clone(),
                store,
                metrics,
            }),
            health,
            lanes: HashMap::new(),
            first_upload_logged: false,
        };
        let task = tokio::spawn(uploader.run(recovery.chunks, receiver, hard_stop.clone()));
        self.running = Some(Running {
            shared,
            commands,
            uploader: Some(task),
            hard_stop,
        });
        self.buf = Vec::with_capacity(1 << 20);
    }

    /// Spools the batches durably; seals buffers that reached `total_file_size`. A failed write
    /// is cut back, so the retry neither repeats nor tears records.
    pub fn write(&mut self, batches: &[(&str, &[Event])]) -> std::io::Result<()> {
        let Some(run) = &self.running else {
            return Err(std::io::Error::other(
                "the spool is not open (see the error at start)",
            ));
        };
        let mut spool = run.shared.spool.lock().expect("spool lock");
        let mut warned = false;
        seal_if_stalled(&mut spool, &run.commands)?;
        while spool.is_full() {
            if *run.hard_stop.borrow() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "shutting down while the spool is full",
                ));
            }
            if !warned {
                tracing::warn!(output = %self.name, used = spool.used(), "store_dir_limit_size reached: pausing until uploads free space");
                warned = true;
            }
            spool = run
                .shared
                .space
                .wait_timeout(spool, Duration::from_millis(200))
                .expect("spool lock")
                .0;
        }
        let mut written = || -> std::io::Result<()> {
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
            spool.commit()
        };
        if let Err(e) = written() {
            if let Err(cut) = spool.rollback() {
                tracing::error!(output = %self.name, "cannot cut a failed spool write back: {cut}");
            }
            return Err(e);
        }
        for tag in spool.due(self.settings.total_file_size, u64::MAX, false) {
            if let Some(chunk) = spool.seal(&tag)? {
                let _ = run.commands.send(Command::Upload(chunk));
            }
        }
        seal_if_stalled(&mut spool, &run.commands)?;
        if self.buf.capacity() > 4 << 20 {
            self.buf = Vec::with_capacity(1 << 20);
        }
        Ok(())
    }

    /// Shutdown: seal and upload everything, until done or `hard_stop`. What is not uploaded
    /// stays in the spool for the next start.
    pub async fn finish(&mut self) {
        let Some(run) = &mut self.running else {
            return;
        };
        let _ = run.commands.send(Command::Drain);
        if let Some(task) = run.uploader.take() {
            let _ = task.await;
        }
    }
}

/// A full spool with nothing sealed would wait forever (no upload can free space, e.g.
/// `store_dir_limit_size` below `total_file_size`): seal the largest open buffer.
fn seal_if_stalled(
    spool: &mut Spool,
    commands: &mpsc::UnboundedSender<Command>,
) -> std::io::Result<()> {
    if spool.is_full() && spool.sealed_bytes() == 0 {
        if let Some(tag) = spool.largest_open() {
            if let Some(chunk) = spool.seal(&tag)? {
                let _ = commands.send(Command::Upload(chunk));
            }
        }
    }
    Ok(())
}

/// What every upload task shares.
struct UploadCtx {
    name: String,
    shared: Arc<Shared>,
    settings: Arc<UploadSettings>,
    store: ObjectStore,
    metrics: Arc<OutputMetrics>,
}

impl UploadCtx {
    /// Compresses (once) and uploads a sealed chunk; returns its key.
    async fn upload(&self, chunk: &SealedChunk) -> Result<String, StoreError> {
        let s = &self.settings;
        let state_path = chunk.state_path();
        let mut state = UploadState::load(&state_path);
        let body = chunk.body_path();
        let save = |state: &UploadState| store::save_state(state, &state_path);
        let info = match state.body {
            Some(info) if body.exists() => info,
            _ => {
                let (src, dst, compression) = (chunk.data.clone(), body.clone(), s.compression);
                let info =
                    tokio::task::spawn_blocking(move || compression.compress_file(&src, &dst))
                        .await
                        .map_err(|e| {
                            StoreError::new(ErrorKind::Retryable, format!("compression task: {e}"))
                        })?
                        .map_err(|e| {
                            store::io_err(&format!("compressing {}", chunk.data.display()), e)
                        })?;
                state.body = Some(info);
                save(&state)?;
                info
            }
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
                    .map_err(|e| store::io_err("$INDEX", e))?;
                let mut key = s.key.render(&chunk.tag, index, chunk.first);
                // Fluent Bit's suffix for keys that would otherwise repeat, on every upload path
                // (Fluent Bit's s3 adds it to PutObject only, so its multipart uploads can collide).
                if !s.static_file_path {
                    s.key_suffix.apply(&mut key, &s.key);
                }
                state.key = Some(key.clone());
                save(&state)?;
                key
            }
        };
        if s.appends() {
            self.store
                .append(&key, &body, &mut state, &state_path)
                .await?;
        } else {
            let existing = if s.static_file_path {
                Existing::Replace
            } else {
                Existing::Keep
            };
            self.store
                .put(&key, &body, existing, &mut state, &state_path)
                .await?;
        }
        self.metrics.uploaded_records.add(info.records);
        self.metrics.uploaded_bytes.add(info.size);
        Ok(key)
    }

    /// After an upload id was refused or a condition failed: the next attempt starts over
    /// (under a new key when a new object's key was found taken).
    fn restart(&self, chunk: &SealedChunk, kind: ErrorKind) -> std::io::Result<()> {
        let path = chunk.state_path();
        let mut state = UploadState::load(&path);
        state.restart(kind == ErrorKind::Conflict && !self.settings.appends());
        state.save(&path)
    }
}

/// The chunks of one key (or tag), uploaded in order.
struct Lane {
    chunks: VecDeque<SealedChunk>,
    busy: bool,
    attempts: u32,
    retry_at: Instant,
}

struct Uploader {
    ctx: Arc<UploadCtx>,
    health: Arc<HealthWindow>,
    lanes: HashMap<String, Lane>,
    first_upload_logged: bool,
}

type Finished = (String, SealedChunk, Result<String, StoreError>);

impl Uploader {
    /// Static keys take every chunk of their key in order; other keys are ordered per tag.
    fn push(&mut self, chunk: SealedChunk) {
        let s = &self.ctx.settings;
        let lane = if s.key.is_static() {
            s.key.render(&chunk.tag, 0, chunk.first)
        } else {
            chunk.tag.clone()
        };
        self.lanes
            .entry(lane)
            .or_insert_with(|| Lane {
                chunks: VecDeque::new(),
                busy: false,
                attempts: 0,
                retry_at: Instant::now(),
            })
            .chunks
            .push_back(chunk);
    }

    async fn run(
        mut self,
        recovered: Vec<SealedChunk>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut hard_stop: watch::Receiver<bool>,
    ) {
        recovered.into_iter().for_each(|c| self.push(c));
        let store = self.ctx.store.describe();
        tokio::select! {
            probe = self.ctx.store.probe() => match probe {
                Ok(()) => tracing::info!(output = %self.ctx.name, store = %store, "object store ready"),
                Err(e) => {
                    if e.kind == ErrorKind::Permanent {
                        self.ctx.metrics.store_failing.set(1);
                    }
                    tracing::error!(output = %self.ctx.name, store = %store, "object store check failed: {e}; records stay in the spool and uploads are retried");
                }
            },
            _ = hard_stop.wait_for(|s| *s) => return,
        }
        let mut draining = false;
        let mut closed = false;
        let mut in_flight: tokio::task::JoinSet<Finished> = tokio::task::JoinSet::new();
        loop {
            if let Err(e) = self.seal_due(draining) {
                tracing::error!(output = %self.ctx.name, "cannot seal spooled data: {e}");
            }
            self.update_gauges();
            let now = Instant::now();
            for (name, lane) in self.lanes.iter_mut() {
                if in_flight.len() >= CONCURRENT_UPLOADS {
                    break;
                }
                if lane.busy || lane.retry_at > now {
                    continue;
                }
                let Some(chunk) = lane.chunks.front().cloned() else {
                    continue;
                };
                lane.busy = true;
                let (ctx, name) = (self.ctx.clone(), name.clone());
                in_flight.spawn(async move {
                    let result = ctx.upload(&chunk).await;
                    (name, chunk, result)
                });
            }
            self.lanes.retain(|_, l| l.busy || !l.chunks.is_empty());
            if draining && self.lanes.is_empty() {
                return;
            }
            let wake = self
                .lanes
                .values()
                .filter(|l| !l.busy && l.retry_at > now)
                .map(|l| l.retry_at)
                .fold(now + Duration::from_secs(1), Instant::min);
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => match done {
                    Ok(finished) => self.settle(finished),
                    // Uploads return errors, they do not panic; a panic is a bug worth a crash.
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                },
                cmd = commands.recv(), if !closed => match cmd {
                    Some(Command::Upload(chunk)) => self.push(chunk),
                    Some(Command::Drain) => draining = true,
                    None => { closed = true; draining = true; }
                },
                _ = tokio::time::sleep_until(wake) => {}
                _ = hard_stop.wait_for(|s| *s) => {
                    in_flight.abort_all();
                    return;
                }
            }
        }
    }

    fn settle(&mut self, (name, chunk, result): Finished) {
        let ctx = self.ctx.clone();
        let Some(lane) = self.lanes.get_mut(&name) else {
            return;
        };
        lane.busy = false;
        let store = ctx.store.describe();
        match result {
            Ok(key) => {
                lane.chunks.pop_front();
                lane.attempts = 0;
                ctx.shared
                    .spool
                    .lock()
                    .expect("spool lock")
                    .remove_sealed(&chunk);
                ctx.shared.space.notify_all();
                ctx.metrics.store_failing.set(0);
                if !self.first_upload_logged {
                    self.first_upload_logged = true;
                    tracing::info!(output = %ctx.name, store = %store, key = %key, bytes = chunk.size, "first upload confirmed");
                } else {
                    tracing::debug!(output = %ctx.name, key = %key, bytes = chunk.size, "uploaded");
                }
            }
            Err(e) => {
                lane.attempts += 1;
                ctx.metrics.errors.add(1);
                ctx.metrics.retries.add(1);
                self.health.error();
                if lane.attempts == ctx.settings.retry_limit.saturating_add(1) {
                    ctx.metrics.retries_failed.add(1);
                    self.health.retry_failure();
                }
                let backoff = ctx
                    .settings
                    .backoff
                    .delay(lane.attempts.saturating_sub(1).min(10));
                let restart = matches!(e.kind, ErrorKind::UploadLost | ErrorKind::Conflict);
                if restart {
                    if let Err(io) = ctx.restart(&chunk, e.kind) {
                        tracing::error!(output = %ctx.name, chunk = %chunk.name(), "cannot reset the upload state: {io}");
                    }
                }
                // A restart goes at once the first time; repeated failures back off.
                let wait = if restart && lane.attempts == 1 {
                    Duration::ZERO
                } else {
                    backoff
                };
                lane.retry_at = Instant::now() + wait;
                let secs = wait.as_secs();
                let (output, tag, attempt) = (&ctx.name, &chunk.tag, lane.attempts);
                match e.kind {
                    ErrorKind::Permanent => {
                        ctx.metrics.store_failing.set(1);
                        tracing::error!(output = %output, store = %store, tag = %tag, attempt, "upload refused: {e}; data kept in the spool, retry in {secs}s (check the bucket, credentials and permissions)");
                    }
                    ErrorKind::UploadLost => {
                        tracing::warn!(output = %output, store = %store, tag = %tag, attempt, "the server no longer accepts the upload: {e}; restarting it from the spool in {secs}s");
                    }
                    ErrorKind::Conflict => {
                        tracing::warn!(output = %output, store = %store, tag = %tag, attempt, "the object changed or the key is taken: {e}; uploading again in {secs}s, nothing is replaced");
                    }
                    ErrorKind::Retryable => {
                        tracing::warn!(output = %output, store = %store, tag = %tag, attempt, "upload failed, data kept in the spool, retry in {secs}s: {e}");
                    }
                }
            }
        }
    }

    fn update_gauges(&self) {
        let spool = self.ctx.shared.spool.lock().expect("spool lock");
        self.ctx.metrics.spool_bytes.set(spool.used() as i64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let age = spool.oldest_unix().map_or(0, |t| now.saturating_sub(t));
        self.ctx.metrics.spool_oldest_age.set(age as i64);
    }

    fn seal_due(&mut self, everything: bool) -> std::io::Result<()> {
        let sealed = {
            let mut spool = self.ctx.shared.spool.lock().expect("spool lock");
            let mut sealed = Vec::new();
            for tag in spool.due(
                self.ctx.settings.total_file_size,
                self.ctx.settings.upload_timeout.as_secs(),
                everything,
            ) {
                sealed.extend(spool.seal(&tag)?);
            }
            sealed
        };
        sealed.into_iter().for_each(|c| self.push(c));
        Ok(())
    }
}
