//! `tail`: follows files matched by `Path` (globs, comma lists) and turns their lines into records.
//!
//! Invariants kept here:
//! 1. No silent loss: a file's offset in the DB moves only when every output acknowledged the
//!    records before it (see `file::TailedFile::acknowledge`).
//! 2. Bounded memory: reading stops while the input's byte budget is full; a file's unread data
//!    stays in the file. An idle file holds no read buffer.
//! 3. Never drop unread data on rotation: a file renamed away or deleted stays open until read
//!    to its end (its size, not a stale end-of-file flag) and acknowledged (`Rotate_Wait` only
//!    delays closing a drained file); a last line without a newline is shipped then. A restart
//!    is not a first start ([`recovery`]): files rotated while the agent was down are found by
//!    inode in their real directory, or by content in a compressed copy, and read on; files born
//!    while the agent was down are read from their head. Open rotated files are bounded by
//!    `Rotated_Files_Max` ([`rotation`]).
//!
//! Layout: [`config`] (options, tag, scan), [`file`] (one file's reading and acknowledgements),
//! [`db`] (checkpoints), [`rotation`] (rotated files while running), [`recovery`] (at start),
//! and here the state and its loop. Discovery uses inotify (`notify`) on the directories of the
//! `Path` patterns plus a rescan every `Refresh_Interval`; files are tracked by (device, inode),
//! so a rename is not a new file.

mod config;
pub mod db;
pub mod file;
mod recovery;
mod rotation;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::InputContext;
use crate::parsers::multiline::LineAssembler;
pub use config::Tail;
use db::OffsetsDb;
use file::{identity, FileId, LineStats, Presence, TailedFile};
use rotation::{Parked, RotationName};

/// Bytes read from one file per turn; files take turns so a busy file cannot starve others.
const READ_SIZE: usize = 256 * 1024;
/// A name no longer matched is still checked for rotated siblings this long (files rotated
/// just before a container stopped).
const FORGET_ROTATION_NAMES: Duration = Duration::from_secs(600);
/// An idle file is looked at again after this long (and the loop sleeps as long as nothing
/// is due).
const IDLE_POLL: Duration = Duration::from_millis(250);
/// A turn that read less than this waits [`COALESCE_WAIT`] before the next one.
const COALESCE_BYTES: u64 = 64 * 1024;
const COALESCE_WAIT: Duration = Duration::from_millis(50);
/// How often the time of the last scan is written to the DB, at most.
const SCAN_RECORD_INTERVAL: Duration = Duration::from_secs(5);
/// How often gone files, lag and multiline timeouts are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

impl Tail {
    pub fn run(self, ctx: InputContext) -> anyhow::Result<()> {
        let mut state = TailState::start(self, ctx)?;
        state.main_loop()?;
        state.shutdown()
    }
}

/// The regular file in `dir` with inode `ino`, if any.
fn find_by_inode(dir: &Path, ino: u64) -> Option<(PathBuf, std::fs::Metadata)> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
        let meta = std::fs::metadata(e.path()).ok()?;
        (meta.is_file() && std::os::unix::fs::MetadataExt::ino(&meta) == ino)
            .then(|| (e.path(), meta))
    })
}

/// Identity and metadata of an open file (fstat): unlike a stat by path, it cannot race a
/// rename.
fn opened_identity(file: &std::fs::File) -> Option<(std::fs::Metadata, FileId)> {
    let meta = file.metadata().ok()?;
    let id = identity(&meta);
    Some((meta, id))
}

/// Opens `path` if it still is the file `id` (it may have been rotated since it was seen).
fn open_same(path: &Path, id: FileId) -> Option<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::File::open(path).ok()?;
    let (meta, opened) = opened_identity(&file)?;
    (opened == id).then_some((file, meta))
}

/// Where a newly followed file starts.
enum Start {
    /// At a DB row's committed offset.
    Row { row: i64, offset: u64 },
    /// At this offset, with a new DB row.
    New { offset: u64 },
}

enum Signal {
    Ack {
        file: FileId,
        seq: u64,
    },
    /// Names changed in a watched directory: rescan.
    FsChanged,
    /// Data changed: read now instead of at the next poll.
    Wake,
}

struct TailState {
    cfg: Tail,
    ctx: Option<InputContext>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    grace: Duration,
    db: Option<OffsetsDb>,
    files: HashMap<FileId, TailedFile>,
    order: Vec<FileId>,
    signals: mpsc::Receiver<Signal>,
    sender: mpsc::Sender<Signal>,
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories watched: those of the `Path` patterns and the real directories of matched
    /// files (a `/var/log/containers` symlink's target), where rotations happen.
    watched: HashSet<PathBuf>,
    /// When the last scan was recorded in the DB (at most every few seconds).
    scan_recorded: Instant,
    stats: LineStats,
    started: bool,
    /// Recently closed files: a drained rotated file must not be picked up again.
    closed: std::collections::VecDeque<FileId>,
    parked: std::collections::VecDeque<Parked>,
    /// Rotated files over the bound, not read until they are settled and parked.
    parking: Vec<FileId>,
    /// Paths files were matched under, for finding files rotated between two scans.
    rotation_names: HashMap<PathBuf, RotationName>,
    last_scan: std::time::SystemTime,
    /// Where compressed rotated files are decompressed to be read (next to the DB).
    recovered_dir: Option<PathBuf>,
}

impl TailState {
    fn start(cfg: Tail, ctx: InputContext) -> anyhow::Result<Self> {
        let db = match &cfg.db {
            Some(o) => Some(OffsetsDb::open(
                &o.path,
                &o.sync,
                o.locking,
                &o.journal_mode,
                o.on_corrupt,
            )?),
            None => None,
        };
        if db.as_ref().is_some_and(|d| d.moved_aside.is_some()) {
            cfg.metrics.db_resets.add(1);
        }
        let recovered_dir = cfg.db.as_ref().map(|o| {
            // Canonical, as the real paths of the files read from it are.
            let db = std::fs::canonicalize(&o.path).unwrap_or_else(|_| o.path.clone());
            PathBuf::from(format!("{}.recovered", db.display()))
        });
        let (sender, signals) = mpsc::channel();
        let watcher = {
            use notify::event::{EventKind, ModifyKind};
            let tx = sender.clone();
            match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let signal = match event.map(|e| e.kind) {
                    Ok(EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)))
                    | Ok(EventKind::Access(_)) => Signal::Wake,
                    _ => Signal::FsChanged,
                };
                let _ = tx.send(signal);
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(input = %cfg.metrics.name, "inotify unavailable (falling back to Refresh_Interval scans): {e}");
                    None
                }
            }
        };
        let stopping = ctx.stop.clone();
        let grace = ctx.grace;
        let mut state = TailState {
            cfg,
            ctx: Some(ctx),
            stopping,
            grace,
            db,
            files: HashMap::new(),
            order: Vec::new(),
            signals,
            sender,
            watcher,
            watched: HashSet::new(),
            scan_recorded: Instant::now(),
            stats: LineStats::default(),
            started: false,
            closed: Default::default(),
            parked: Default::default(),
            parking: Vec::new(),
            rotation_names: HashMap::new(),
            last_scan: std::time::SystemTime::now(),
            recovered_dir,
        };
        for dir in state.cfg.watch_dirs() {
            state.watch(&dir);
        }
        state.discover()?;
        if state.files.is_empty() {
            let cwd = std::env::current_dir().unwrap_or_default();
            tracing::warn!(input = %state.cfg.metrics.name, path = %state.cfg.paths.join(","), cwd = %cwd.display(), "Path matches no file yet (new files are picked up as they appear)");
        }
        state.recover_at_start()?;
        // Rows opened at their committed offset get their head hash now, not a turn later.
        state.persist_offsets()?;
        if let Some(db) = &state.db {
            db.record_scan(state.last_scan)?;
        }
        state.started = true;
        tracing::info!(input = %state.cfg.metrics.name, files = state.files.len(), "tail input started");
        Ok(state)
    }

    /// Watches `dir` for new, renamed and written files (once; a failure only means waiting
    /// for `Refresh_Interval` scans there).
    fn watch(&mut self, dir: &Path) {
        use notify::Watcher;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        if self.watched.insert(dir.to_path_buf()) {
            if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(input = %self.cfg.metrics.name, dir = %dir.display(), "cannot watch directory (falling back to Refresh_Interval scans): {e}");
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Scans the patterns: opens new files, follows renames among matched names, marks files
    /// that are no longer matched as gone.
    fn discover(&mut self) -> anyhow::Result<()> {
        let scan_started = std::time::SystemTime::now();
        let found = self.cfg.scan();
        let current: HashMap<PathBuf, FileId> = found
            .iter()
            .map(|(path, meta)| (path.clone(), identity(meta)))
            .collect();
        let mut seen: HashSet<FileId> = HashSet::with_capacity(found.len());
        for (path, meta) in found {
            let id = identity(&meta);
            seen.insert(id);
            if !self.rotation_names.contains_key(&path) {
                if let Some(name) = RotationName::resolve(&path, id, !self.started) {
                    let dir = name.dir.clone();
                    self.rotation_names.insert(path.clone(), name);
                    self.watch(&dir);
                }
            }
            if let Some(f) = self.files.get_mut(&id) {
                if f.path != path && matches!(f.presence, Presence::Active) {
                    // Renamed to another matched name: same file, keep reading it.
                    f.path = path.clone();
                    f.tag = Arc::from(self.cfg.compose_tag(&path));
                    if let Ok(real) = std::fs::canonicalize(&path) {
                        f.real_path = real;
                    }
                    if let (Some(db), Some(row)) = (&self.db, f.db_row) {
                        db.set_name(row, &path.to_string_lossy(), &f.real_path.to_string_lossy())?;
                    }
                }
                continue;
            }
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(input = %self.cfg.metrics.name, file = %path.display(), "cannot open: {e}");
                    continue;
                }
            };
            // The path may have been rotated between the scan's stat and this open: what counts
            // is the file actually opened, or a file could be followed under another's identity.
            let Some((meta, opened)) = opened_identity(&file) else {
                continue;
            };
            if opened != id {
                seen.insert(opened);
                if self.files.contains_key(&opened) {
                    continue;
                }
            }
            // A row for this inode is this file's only if the file still has the row's first
            // bytes and marker: otherwise the inode was reused, and the row (whose file may
            // survive compressed) is left for recovery.
            let stored = match &self.db {
                Some(db) => match db.find_inode(opened.1)? {
                    Some(row) if db::row_fits(&file, &row, meta.len()) => Some(Start::Row {
                        row: row.id,
                        offset: row.offset,
                    }),
                    Some(_) => {
                        tracing::info!(input = %self.cfg.metrics.name, file = %path.display(), "the stored offset for this inode belongs to another file (inode reused or file truncated): reading from the start");
                        Some(Start::New { offset: 0 })
                    }
                    None => None,
                },
                None => None,
            };
            // A restart is not a first start: a file without a row appeared while the agent was
            // down and is new data.
            let from_head = self.started
                || self.cfg.read_from_head
                || self.db.as_ref().is_some_and(|d| d.existed_before);
            let start = stored.unwrap_or(Start::New {
                offset: if from_head { 0 } else { meta.len() },
            });
            self.open_file(path.clone(), path, file, &meta, start)?;
        }
        let mut rotated_away = Vec::new();
        for f in self.files.values_mut() {
            if matches!(f.presence, Presence::Active) && !seen.contains(&f.id) {
                f.presence = Presence::Gone {
                    since: Instant::now(),
                };
                rotated_away.push(f.id);
            }
        }
        for id in rotated_away {
            self.note_gone(id)?;
        }
        self.look_for_unseen_rotations(&current)?;
        self.last_scan = scan_started;
        // Recorded every few seconds, not at every scan: an older time only means a few more
        // siblings are checked (and skipped by their closed records) after a restart.
        if self.started && self.scan_recorded.elapsed() >= SCAN_RECORD_INTERVAL {
            if let Some(db) = &self.db {
                db.record_scan(scan_started)?;
                self.scan_recorded = Instant::now();
            }
        }
        Ok(())
    }

    fn open_file(
        &mut self,
        path: PathBuf,
        real: PathBuf,
        mut file: std::fs::File,
        meta: &std::fs::Metadata,
        start: Start,
    ) -> anyhow::Result<()> {
        use std::io::Seek;
        let id = identity(meta);
        let real_path = std::fs::canonicalize(&real).unwrap_or(real);
        // The file's first bytes identify it at a restart even if it is deleted (compressed)
        // and its inode reused: recorded with the row, or as soon as the file has them.
        let head = db::head_hash(&file);
        let inserted = matches!(start, Start::New { .. });
        let (db_row, offset) = match start {
            Start::Row { row, offset } => (Some(row), offset),
            Start::New { offset } => {
                let row = match &self.db {
                    Some(db) => Some(db.insert(
                        &path.to_string_lossy(),
                        &real_path.to_string_lossy(),
                        offset,
                        id.1,
                        db::offset_marker(&file, offset),
                        head,
                    )?),
                    None => None,
                };
                (row, offset)
            }
        };
        file.seek(std::io::SeekFrom::Start(offset))?;
        let tag: Arc<str> = Arc::from(self.cfg.compose_tag(&path));
        tracing::debug!(input = %self.cfg.metrics.name, file = %path.display(), offset, tag = %tag, "following file");
        self.cfg.metrics.files_opened.add(1);
        let assembler = LineAssembler::new(self.cfg.mode.clone());
        let mut followed = TailedFile::new(
            id,
            db_row,
            path,
            real_path,
            tag,
            file,
            offset,
            meta.len(),
            assembler,
        );
        followed.head_recorded = inserted && head.is_some();
        self.files.insert(id, followed);
        self.order.push(id);
        Ok(())
    }

    /// Follows a file that is no longer under a matched name (rotated, or found at start).
    fn open_gone(
        &mut self,
        path: PathBuf,
        real: PathBuf,
        file: std::fs::File,
        meta: &std::fs::Metadata,
        start: Start,
    ) -> anyhow::Result<()> {
        self.open_file(path, real, file, meta, start)?;
        if let Some(f) = self.files.get_mut(&identity(meta)) {
            f.presence = Presence::Gone {
                since: Instant::now(),
            };
        }
        Ok(())
    }

    fn dispatch(&mut self, id: FileId, outcome: file::ReadOutcome) {
        let Some(ctx) = self.ctx.as_mut() else { return };
        let f = self.files.get_mut(&id).expect("tracked");
        let seq = f.track(outcome.commit_offset);
        let sender = self.sender.clone();
        let tag = f.tag.clone();
        ctx.dispatcher.dispatch(
            &tag,
            outcome.events,
            outcome.bytes,
            Box::new(move || {
                let _ = sender.send(Signal::Ack { file: id, seq });
            }),
        );
    }

    /// Handles acknowledgements and watcher events; true if names changed (rescan). Waits up
    /// to `wait` for the first signal, or, when `whole_wait`, for all of `wait` (a coalescing
    /// pause that writes to a busy file must not cut short).
    fn handle_signals(&mut self, wait: Option<Duration>, whole_wait: bool) -> bool {
        let mut fs_changed = false;
        let deadline = wait.map(|d| Instant::now() + d);
        loop {
            let first = match deadline {
                Some(d) => self
                    .signals
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .ok(),
                None => self.signals.try_recv().ok(),
            };
            let got_any = first.is_some();
            let mut next = first;
            while let Some(signal) = next {
                match signal {
                    Signal::Ack { file, seq } => {
                        if let Some(f) = self.files.get_mut(&file) {
                            f.acknowledge(seq);
                        }
                    }
                    Signal::FsChanged => fs_changed = true,
                    Signal::Wake => {}
                }
                next = self.signals.try_recv().ok();
            }
            let more_time = deadline.is_some_and(|d| Instant::now() < d);
            if !(whole_wait && got_any && more_time && !fs_changed && !self.stopping()) {
                return fs_changed;
            }
        }
    }

    fn persist_offsets(&mut self) -> anyhow::Result<()> {
        self.record_heads()?;
        let Some(db) = &mut self.db else {
            return Ok(());
        };
        let updates: Vec<(i64, u64, db::Marker)> = self
            .files
            .values_mut()
            .filter(|f| f.committed_dirty && f.db_row.is_some())
            .map(|f| {
                f.committed_dirty = false;
                (
                    f.db_row.expect("filtered"),
                    f.committed,
                    db::offset_marker(&f.file, f.committed),
                )
            })
            .collect();
        if !updates.is_empty() {
            db.update_offsets(&updates)?;
        }
        Ok(())
    }

    fn housekeeping(&mut self) -> anyhow::Result<()> {
        let ids: Vec<FileId> = self.order.clone();
        let mut lag = 0u64;
        for id in ids {
            let out = self.files.get_mut(&id).and_then(|f| {
                f.size = f.file.metadata().map(|m| m.len()).unwrap_or(f.size);
                lag += f.size.saturating_sub(f.pos);
                f.flush_pending(false, &self.cfg.limits)
            });
            if let Some(out) = out {
                self.dispatch(id, out);
            }
        }
        self.cfg.metrics.lag_bytes.set(lag as i64);
        self.cfg.metrics.files_tracked.set(self.files.len() as i64);
        self.cfg
            .metrics
            .long_line_skipped
            .add(std::mem::take(&mut self.stats.skipped));
        self.cfg
            .metrics
            .long_line_truncated
            .add(std::mem::take(&mut self.stats.truncated));
        let truncated_joins: u64 = self
            .files
            .values_mut()
            .map(|f| f.assembler.take_truncated_joins())
            .sum();
        self.cfg.metrics.multiline_truncated.add(truncated_joins);
        self.close_drained()?;
        self.bound_rotated()
    }

    /// Stores, once per file, the hash of its first bytes: at a restart it finds the file's
    /// compressed copy even if no offset was committed yet.
    fn record_heads(&mut self) -> anyhow::Result<()> {
        let Some(db) = &mut self.db else {
            return Ok(());
        };
        let mut heads = Vec::new();
        let window = db::HEAD_WINDOW as u64;
        for f in self
            .files
            .values_mut()
            .filter(|f| !f.head_recorded && f.size >= window)
        {
            if let (Some(row), Some(head)) = (f.db_row, db::head_hash(&f.file)) {
                heads.push((row, head));
                f.head_recorded = true;
            }
        }
        if !heads.is_empty() {
            db.set_heads(&heads)?;
        }
        Ok(())
    }

    fn main_loop(&mut self) -> anyhow::Result<()> {
        let mut last_scan = Instant::now();
        let mut last_housekeeping = Instant::now();
        let mut rescan_requested = false;
        let mut turn = 0usize;
        loop {
            rescan_requested |= self.handle_signals(None, false);
            if self.stopping() {
                return Ok(());
            }
            if last_scan.elapsed() >= self.cfg.refresh_interval
                || (rescan_requested && last_scan.elapsed() >= Duration::from_millis(100))
            {
                self.discover()?;
                last_scan = Instant::now();
                rescan_requested = false;
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING {
                self.housekeeping()?;
                last_housekeeping = Instant::now();
            }
            // Acknowledged offsets go to the DB at once (one transaction per turn), so a crash
            // repeats at most the batches still in flight.
            self.persist_offsets()?;
            let full = self.ctx.as_ref().is_some_and(|c| c.dispatcher.is_full());
            self.cfg.metrics.paused.set(full as i64);
            let mut read_any = false;
            let mut read_bytes = 0u64;
            let now = Instant::now();
            if !full && !self.order.is_empty() {
                // One chunk from each due file in turn, starting where the last round stopped.
                // A file that had nothing is looked at again after IDLE_POLL, so 500 idle files
                // cost a few fstat calls a second, not one each per turn.
                let n = self.order.len();
                for k in 0..n {
                    if self.ctx.as_ref().is_some_and(|c| c.dispatcher.is_full()) {
                        break;
                    }
                    let id = self.order[(turn + k) % n];
                    if self.parking.contains(&id) {
                        continue;
                    }
                    let f = self.files.get_mut(&id).expect("ordered files are tracked");
                    if f.next_poll > now {
                        continue;
                    }
                    match f.read_chunk(READ_SIZE, &self.cfg.limits, &mut self.stats) {
                        Ok(Some(out)) => {
                            read_any = true;
                            read_bytes += out.bytes;
                            f.next_poll = now;
                            if !out.events.is_empty() || out.commit_offset > f.committed {
                                self.dispatch(id, out);
                            }
                        }
                        Ok(None) => f.next_poll = now + IDLE_POLL,
                        Err(e) => {
                            f.next_poll = now + IDLE_POLL;
                            tracing::warn!(input = %self.cfg.metrics.name, file = %f.path.display(), "read failed: {e}")
                        }
                    }
                }
                turn = turn.wrapping_add(1);
            }
            if self.cfg.exit_on_eof
                && !read_any
                && self.parked.is_empty()
                && self.files.values().all(|f| f.at_eof)
            {
                tracing::info!(input = %self.cfg.metrics.name, "all files read to their end (Exit_On_Eof)");
                return Ok(());
            }
            // A turn that found little waits a moment so a slowly written file is read in
            // batches rather than a line per turn (a full read buffer goes on at once).
            if read_bytes < COALESCE_BYTES {
                let wait = if full {
                    Duration::from_millis(5)
                } else if read_any {
                    COALESCE_WAIT
                } else {
                    let due = self.files.values().map(|f| f.next_poll).min();
                    due.map_or(IDLE_POLL, |d| d.saturating_duration_since(Instant::now()))
                        .clamp(Duration::from_millis(5), IDLE_POLL)
                };
                let coalescing = read_any && !full;
                rescan_requested |= self.handle_signals(Some(wait), coalescing);
            }
        }
    }

    /// Emits held multiline groups, releases the dispatcher so outputs can drain, then waits
    /// (within Grace) for acknowledgements and commits them.
    fn shutdown(mut self) -> anyhow::Result<()> {
        let ids = self.order.clone();
        for id in ids {
            let out = self
                .files
                .get_mut(&id)
                .and_then(|f| f.flush_pending(true, &self.cfg.limits));
            if let Some(out) = out {
                self.dispatch(id, out);
            }
        }
        drop(self.ctx.take());
        let deadline = Instant::now() + self.grace;
        while self.files.values().any(|f| !f.inflight.is_empty()) && Instant::now() < deadline {
            self.handle_signals(Some(Duration::from_millis(50)), false);
            self.persist_offsets()?;
        }
        self.handle_signals(None, false);
        self.persist_offsets()?;
        let unacked: usize = self.files.values().map(|f| f.inflight.len()).sum();
        if unacked > 0 {
            tracing::warn!(input = %self.cfg.metrics.name, batches = unacked, "stopping with unacknowledged batches: their lines will be read again on restart");
        }
        Ok(())
    }
}
