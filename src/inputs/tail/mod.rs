//! `tail`: follows files matched by `Path` (globs, comma lists) and turns their lines into records.
//!
//! Invariants kept here:
//! 1. No silent loss: a file's offset in the DB moves only when every output acknowledged the
//!    records before it (see `file::TailedFile::acknowledge`).
//! 2. Bounded memory: reading stops while the input's byte budget is full; a file's unread data
//!    stays in the file.
//! 3. Never drop unread data on rotation: a file renamed away or deleted stays open until read
//!    to its end and acknowledged (`Rotate_Wait` only delays closing a drained file). On start,
//!    a file rotated while the agent was down is found again by inode in its directory and read
//!    to its end; a file that appeared while the agent was down is read from its head.
//!    Open rotated files are bounded by `Rotated_Files_Max`: beyond it, rotated files that are
//!    still on disk are closed at an acknowledged offset ("parked") and reopened, by identity,
//!    when others are done; only a parked file deleted before its turn loses its unread bytes,
//!    which are counted (`logferry_input_rotated_lost_bytes_total`) and logged.
//!
//! Discovery uses inotify (`notify`) on the directories of the `Path` patterns plus a rescan every
//! `Refresh_Interval`; files are tracked by (device, inode), so a rename is not a new file.

pub mod db;
pub mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::InputContext;
use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::engine::ServiceConfig;
use crate::parsers::multiline::{Joiner, LineAssembler, LineMode};
use crate::parsers::ParserRegistry;
use crate::pattern::Pattern;
use db::OffsetsDb;
use file::{identity, FileId, LineLimits, LineStats, Presence, TailedFile};

/// Bytes read from one file per turn; files take turns so a busy file cannot starve others.
const READ_SIZE: usize = 256 * 1024;
/// A name no longer matched is still checked for rotated siblings this long (files rotated
/// just before a container stopped).
const FORGET_ROTATION_NAMES: Duration = Duration::from_secs(600);
/// How often gone files, lag and multiline timeouts are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

pub struct Tail {
    pub metrics: Arc<InputMetrics>,
    paths: Vec<String>,
    excludes: Vec<glob::Pattern>,
    tag: String,
    tag_regex: Option<Pattern>,
    mode: LineMode,
    limits: LineLimits,
    refresh_interval: Duration,
    rotate_wait: Duration,
    read_from_head: bool,
    ignore_older: Option<Duration>,
    exit_on_eof: bool,
    /// logferry: rotated files kept open at most (others are parked).
    rotated_files_max: usize,
    db: Option<DbOptions>,
}

struct DbOptions {
    path: PathBuf,
    sync: String,
    locking: bool,
    journal_mode: String,
}

impl Tail {
    pub fn from_props(
        p: &Props,
        tag: Option<String>,
        metrics: Arc<InputMetrics>,
        parsers: &ParserRegistry,
        _service: &ServiceConfig,
    ) -> Result<Self, ConfigError> {
        let path_prop = p.required("path")?;
        let paths: Vec<String> = path_prop
            .value
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for pattern in &paths {
            glob::Pattern::new(pattern).map_err(|e| {
                ConfigError::key(path_prop, format!("bad pattern '{pattern}': {e}"))
            })?;
        }
        let mut excludes = Vec::new();
        if let Some(ex) = p.prop("exclude_path") {
            for pattern in ex.value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                excludes.push(
                    glob::Pattern::new(pattern).map_err(|e| {
                        ConfigError::key(ex, format!("bad pattern '{pattern}': {e}"))
                    })?,
                );
            }
        }
        let tag_regex = match p.prop("tag_regex") {
            Some(r) => Some(Pattern::new(&r.value).map_err(|e| ConfigError::key(r, e))?),
            None => None,
        };
        let key = Bytes::from(p.string_or("key", "log"));
        let mode = if let Some(ml) = p.prop("multiline.parser") {
            let mut joiners = Vec::new();
            for name in ml.value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                joiners.push(Joiner::by_name(name, parsers).ok_or_else(|| {
                    ConfigError::key(ml, format!("unknown multiline parser '{name}'"))
                })?);
            }
            LineMode::Multiline(joiners)
        } else if let Some(pp) = p.prop("parser") {
            let parser = parsers.get(pp.value.trim()).ok_or_else(|| {
                ConfigError::key(
                    pp,
                    format!(
                        "unknown parser '{}' (is its Parsers_File loaded?)",
                        pp.value.trim()
                    ),
                )
            })?;
            LineMode::Parser { parser, key }
        } else {
            LineMode::Raw { key }
        };
        if let Some(dm) = p.prop("docker_mode") {
            if crate::config::units::parse_bool(&dm.value) == Some(true) {
                return Err(ConfigError::key(
                    dm,
                    "legacy Docker_Mode is not supported: use 'multiline.parser docker'",
                ));
            }
        }
        if let Some(m) = p.prop("multiline") {
            if crate::config::units::parse_bool(&m.value) == Some(true) {
                return Err(ConfigError::key(m, "legacy Multiline is not supported: use 'multiline.parser' with a [MULTILINE_PARSER]"));
            }
        }
        let chunk = p.size("buffer_chunk_size", 32_768)?;
        let max_line = p.size("buffer_max_size", 32_768)?.max(chunk) as usize;
        let limits = LineLimits {
            max_line,
            skip_long_lines: p.bool("skip_long_lines", false)?,
            skip_empty_lines: p.bool("skip_empty_lines", false)?,
            path_key: p
                .str("path_key")
                .map(|s| Bytes::copy_from_slice(s.as_bytes())),
            offset_key: p
                .str("offset_key")
                .map(|s| Bytes::copy_from_slice(s.as_bytes())),
        };
        let db = match p.str("db") {
            Some(path) => Some(DbOptions {
                path: PathBuf::from(path),
                sync: p.string_or("db.sync", "normal"),
                locking: p.bool("db.locking", false)?,
                journal_mode: p.string_or("db.journal_mode", "WAL"),
            }),
            None => None,
        };
        let ignore_older = match p.duration("ignore_older", Duration::ZERO)? {
            d if d.is_zero() => None,
            d => Some(d),
        };
        let tail = Tail {
            tag: tag.unwrap_or_else(|| metrics.name.clone()),
            metrics,
            paths,
            excludes,
            tag_regex,
            mode,
            limits,
            refresh_interval: p.duration("refresh_interval", Duration::from_secs(60))?,
            rotate_wait: p.duration("rotate_wait", Duration::from_secs(5))?,
            read_from_head: p.bool("read_from_head", false)?,
            ignore_older,
            exit_on_eof: p.bool("exit_on_eof", false)?,
            rotated_files_max: match p.int("rotated_files_max", 256)? {
                n if n >= 1 => n as usize,
                _ => {
                    return Err(ConfigError::key(
                        p.prop("rotated_files_max").expect("set"),
                        "must be at least 1",
                    ))
                }
            },
            db,
        };
        p.accept(&[
            "inotify_watcher",
            "watcher_interval",
            "progress_check_interval",
            "progress_check_interval_nsec",
            "file_cache_advise",
            "static_batch_size",
            "event_batch_size",
            "db.compare_filename",
            "read_newly_discovered_files_from_head",
            "docker_mode_flush",
            "multiline_flush",
        ]);
        Ok(tail)
    }

    /// The tag of a file: `Tag_Regex` captures into `<name>`, or the first `*` replaced by the
    /// path with `/` turned into `.` (Fluent Bit's `tag_compose`).
    pub fn compose_tag(&self, path: &Path) -> String {
        let path_str = path.to_string_lossy();
        if let Some(re) = &self.tag_regex {
            let caps = re.named_captures(&path_str).unwrap_or_default();
            let mut out = String::with_capacity(self.tag.len());
            let mut rest = self.tag.as_str();
            while let Some(open) = rest.find('<') {
                let Some(close) = rest[open..].find('>') else {
                    break;
                };
                out.push_str(&rest[..open]);
                let name = &rest[open + 1..open + close];
                match caps.iter().find(|(n, _)| n == name) {
                    Some((_, range)) => out.push_str(&path_str[range.clone()]),
                    None => out.push('_'),
                }
                rest = &rest[open + close + 1..];
            }
            out.push_str(rest);
            return out;
        }
        match self.tag.find('*') {
            Some(star) => {
                let mut expanded: String = path_str
                    .chars()
                    .map(|c| {
                        if c == '/' || c == '\\' || c == ':' {
                            '.'
                        } else {
                            c
                        }
                    })
                    .collect();
                while expanded.contains("..") {
                    expanded = expanded.replace("..", ".");
                }
                let expanded = expanded.trim_start_matches('.');
                let rest = self.tag[star + 1..].replace('*', "");
                format!("{}{}{}", &self.tag[..star], expanded, rest)
            }
            None => self.tag.clone(),
        }
    }

    fn excluded(&self, path: &Path) -> bool {
        let s = path.to_string_lossy();
        self.excludes.iter().any(|p| p.matches(&s))
    }

    /// Every regular file the patterns match now.
    fn scan(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut found = Vec::new();
        for pattern in &self.paths {
            let Ok(entries) = glob::glob(pattern) else {
                continue;
            };
            for path in entries.flatten() {
                if self.excluded(&path) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                if let Some(max_age) = self.ignore_older {
                    let old = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age > max_age);
                    if old {
                        continue;
                    }
                }
                found.push((path, meta));
            }
        }
        found
    }

    /// Directories to watch: the literal prefix of each pattern.
    fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for pattern in &self.paths {
            let literal: PathBuf = Path::new(pattern)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            let dir = if literal.as_os_str() == pattern.as_str() {
                literal.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                literal
            };
            if dir.is_dir() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    pub fn run(self, ctx: InputContext) -> anyhow::Result<()> {
        let mut state = TailState::start(self, ctx)?;
        state.main_loop()?;
        state.shutdown()
    }
}

/// A rotated sibling that a compressor wrote (`0.log.<time>.gz`): its bytes are not log lines.
/// Known by its name or, when renamed, by its magic bytes (gzip, zstd, xz, bzip2).
fn is_compressed(path: &Path, file: &std::fs::File) -> bool {
    let by_name = path.extension().is_some_and(|e| {
        ["gz", "zst", "xz", "bz2", "zip", "lz4"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    });
    let mut head = [0u8; 4];
    let by_magic = std::os::unix::fs::FileExt::read_exact_at(file, &mut head, 0).is_ok()
        && (head.starts_with(&[0x1f, 0x8b])
            || head == [0x28, 0xb5, 0x2f, 0xfd]
            || head == [0xfd, b'7', b'z', b'X']
            || head.starts_with(b"BZh"));
    by_name || by_magic
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

/// A matched name whose rotated siblings are looked for.
struct RotationName {
    /// Directory of the resolved path (the target of a `/var/log/containers` symlink).
    dir: PathBuf,
    /// `<basename>.` of the resolved path: rotated siblings start with it.
    prefix: String,
    /// The file found under it by the previous scan.
    last_id: Option<FileId>,
    last_matched: Instant,
}

/// A rotated file closed at the `Rotated_Files_Max` bound, to be reopened by identity.
struct Parked {
    /// The path it was followed under (tag, DB name before rotation).
    path: PathBuf,
    real_path: PathBuf,
    id: FileId,
    db_row: Option<i64>,
    /// Acknowledged offset: reading resumes here.
    offset: u64,
    size: u64,
}

enum Signal {
    Ack { file: FileId, seq: u64 },
    FsChanged,
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
    _watcher: Option<notify::RecommendedWatcher>,
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
}

impl TailState {
    fn start(cfg: Tail, ctx: InputContext) -> anyhow::Result<Self> {
        let db = match &cfg.db {
            Some(o) => Some(OffsetsDb::open(
                &o.path,
                &o.sync,
                o.locking,
                &o.journal_mode,
            )?),
            None => None,
        };
        let (sender, signals) = mpsc::channel();
        let watcher = {
            use notify::Watcher;
            let tx = sender.clone();
            match notify::recommended_watcher(move |_event| {
                let _ = tx.send(Signal::FsChanged);
            }) {
                Ok(mut w) => {
                    for dir in cfg.watch_dirs() {
                        if let Err(e) = w.watch(&dir, notify::RecursiveMode::NonRecursive) {
                            tracing::warn!(input = %cfg.metrics.name, dir = %dir.display(), "cannot watch directory (falling back to Refresh_Interval scans): {e}");
                        }
                    }
                    Some(w)
                }
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
            _watcher: watcher,
            stats: LineStats::default(),
            started: false,
            closed: Default::default(),
            parked: Default::default(),
            parking: Vec::new(),
            rotation_names: HashMap::new(),
            last_scan: std::time::SystemTime::now(),
        };
        state.discover()?;
        state.recover_rotated_while_down()?;
        state.started = true;
        tracing::info!(input = %state.cfg.metrics.name, files = state.files.len(), "tail input started");
        Ok(state)
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Rows of files that were rotated while the agent was down: find them by inode in their
    /// directory and read them to their end. Other stale rows are deleted, as Fluent Bit does.
    fn recover_rotated_while_down(&mut self) -> anyhow::Result<()> {
        let Some(rows) = self.db.as_ref().map(|db| db.all()).transpose()? else {
            return Ok(());
        };
        let tracked_rows: Vec<i64> = self.files.values().filter_map(|f| f.db_row).collect();
        let delete = |state: &Self, id: i64| state.db.as_ref().map_or(Ok(()), |db| db.delete(id));
        for row in rows {
            if tracked_rows.contains(&row.id) {
                continue;
            }
            let dir = Path::new(&row.name)
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let Some((path, meta)) = find_by_inode(&dir, row.inode) else {
                delete(self, row.id)?;
                continue;
            };
            if self.files.contains_key(&identity(&meta)) {
                continue;
            }
            let Some((file, meta)) = open_same(&path, identity(&meta)) else {
                continue;
            };
            if !db::marker_matches(&file, &row, meta.len()) || row.offset >= meta.len() {
                delete(self, row.id)?;
                continue;
            }
            tracing::info!(input = %self.cfg.metrics.name, file = %path.display(), offset = row.offset, "reading a file rotated while logferry was down to its end");
            let name = row.name.clone();
            self.open_file(
                PathBuf::from(&name),
                path,
                file,
                &meta,
                Some((Some(row.id), row.offset)),
                true,
            )?;
            if let Some(f) = self.files.get_mut(&identity(&meta)) {
                f.presence = Presence::Gone {
                    since: Instant::now(),
                };
            }
        }
        Ok(())
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
        let mut seen: Vec<FileId> = Vec::with_capacity(found.len());
        for (path, meta) in found {
            let id = identity(&meta);
            seen.push(id);
            let real = (!self.rotation_names.contains_key(&path))
                .then(|| std::fs::canonicalize(&path).ok())
                .flatten();
            if let Some(real) = real {
                if let (Some(dir), Some(base)) = (real.parent(), real.file_name()) {
                    let name = RotationName {
                        dir: dir.to_path_buf(),
                        prefix: format!("{}.", base.to_string_lossy()),
                        last_id: Some(id),
                        last_matched: Instant::now(),
                    };
                    self.rotation_names.insert(path.clone(), name);
                }
            }
            if let Some(f) = self.files.get_mut(&id) {
                if f.path != path && matches!(f.presence, Presence::Active) {
                    // Renamed to another matched name: same file, keep reading it.
                    f.path = path.clone();
                    if let (Some(db), Some(row)) = (&self.db, f.db_row) {
                        db.set_name(row, &path.to_string_lossy())?;
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
                seen.push(opened);
                if self.files.contains_key(&opened) {
                    continue;
                }
            }
            let id = opened;
            let stored = match &self.db {
                Some(db) => db.find_inode(id.1)?.map(|row| {
                    if db::marker_matches(&file, &row, meta.len()) {
                        (Some(row.id), row.offset)
                    } else {
                        tracing::info!(input = %self.cfg.metrics.name, file = %path.display(), "stored offset does not fit this file (inode reused or truncated): reading from the start");
                        (Some(row.id), 0)
                    }
                }),
                None => None,
            };
            let from_head = self.started
                || self.cfg.read_from_head
                || self.db.as_ref().is_some_and(|d| d.existed_before);
            self.open_file(path.clone(), path, file, &meta, stored, from_head)?;
        }
        for f in self.files.values_mut() {
            if matches!(f.presence, Presence::Active) && !seen.contains(&f.id) {
                f.presence = Presence::Gone {
                    since: Instant::now(),
                };
                self.cfg.metrics.files_rotated.add(1);
                let real = std::fs::read_link(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&f.file)
                ))
                .ok();
                let deleted = real
                    .as_ref()
                    .is_none_or(|p| p.to_string_lossy().ends_with(" (deleted)"));
                tracing::info!(input = %self.cfg.metrics.name, file = %f.path.display(), unread = f.size.saturating_sub(f.pos), "file {}: reading it to its end before closing", if deleted { "deleted" } else { "rotated" });
                if let (Some(real), false) = (real, deleted) {
                    if let (Some(db), Some(row)) = (&self.db, f.db_row) {
                        db.rename(row, &real.to_string_lossy())?;
                    }
                    f.real_path = real;
                }
            }
        }
        // Siblings are looked for when the file under a name changed since the previous scan or
        // the name is empty (a file created and rotated away between two scans after the one
        // followed before it was gone) — not when it holds the same file (a copytruncate copy
        // is not new data).
        self.rotation_names
            .retain(|_, n| n.last_matched.elapsed() < FORGET_ROTATION_NAMES);
        let mut changed: Vec<(PathBuf, String, PathBuf)> = Vec::new();
        for (logical, name) in self.rotation_names.iter_mut() {
            let now = current.get(logical).copied();
            if now.is_none() || now != name.last_id {
                changed.push((name.dir.clone(), name.prefix.clone(), logical.clone()));
            }
            name.last_id = now;
            if now.is_some() {
                name.last_matched = Instant::now();
            }
        }
        for (dir, prefix, logical) in changed {
            self.adopt_unseen_rotations(&dir, &prefix, &logical)?;
        }
        self.last_scan = scan_started;
        Ok(())
    }

    /// A file can be created and rotated away between two scans (fast rotation): it was never
    /// opened. Siblings named `<basename>.*` that changed since the previous scan and are
    /// neither followed, parked nor recently closed are read from their head.
    fn adopt_unseen_rotations(
        &mut self,
        dir: &Path,
        prefix: &str,
        logical: &Path,
    ) -> anyhow::Result<()> {
        let since = self.last_scan - Duration::from_secs(1);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut candidates: Vec<(PathBuf, std::fs::Metadata)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| (e.path(), m)))
            .filter(|(_, m)| m.is_file())
            .filter(|(_, m)| {
                let changed = std::time::UNIX_EPOCH
                    + Duration::new(
                        std::os::unix::fs::MetadataExt::ctime(m).max(0) as u64,
                        std::os::unix::fs::MetadataExt::ctime_nsec(m).max(0) as u32,
                    );
                changed >= since
            })
            .filter(|(_, m)| {
                let id = identity(m);
                !self.files.contains_key(&id)
                    && !self.closed.contains(&id)
                    && !self.parked.iter().any(|p| p.id == id)
            })
            .collect();
        candidates.sort_by_key(|(_, m)| {
            std::os::unix::fs::MetadataExt::ctime_nsec(m)
                + std::os::unix::fs::MetadataExt::ctime(m) * 1_000_000_000
        });
        for (path, scanned) in candidates {
            let Some((file, meta)) = open_same(&path, identity(&scanned)) else {
                continue;
            };
            if is_compressed(&path, &file) {
                // The kubelet gzips the previous rotated log as it rotates the current one.
                continue;
            }
            tracing::info!(input = %self.cfg.metrics.name, file = %path.display(), "found a file rotated before it was opened: reading it from its start");
            self.open_file(logical.to_path_buf(), path, file, &meta, None, true)?;
            if let Some(f) = self.files.get_mut(&identity(&meta)) {
                f.presence = Presence::Gone {
                    since: Instant::now(),
                };
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
        stored: Option<(Option<i64>, u64)>,
        from_head: bool,
    ) -> anyhow::Result<()> {
        use std::io::Seek;
        let id = identity(meta);
        let (db_row, offset) = match stored {
            Some((row, offset)) => (row, offset),
            None => {
                let offset = if from_head { 0 } else { meta.len() };
                let row = match &self.db {
                    Some(db) => Some(db.insert(
                        &path.to_string_lossy(),
                        offset,
                        id.1,
                        db::offset_marker(&file, offset),
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
        self.files.insert(
            id,
            TailedFile {
                id,
                db_row,
                real_path: std::fs::canonicalize(&real).unwrap_or(real),
                path,
                tag,
                file,
                pos: offset,
                partial: BytesMut::new(),
                skipping_from: None,
                assembler: LineAssembler::new(self.cfg.mode.clone()),
                committed: offset,
                committed_dirty: false,
                inflight: Default::default(),
                next_seq: 0,
                presence: Presence::Active,
                at_eof: false,
                size: meta.len(),
            },
        );
        self.order.push(id);
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

    fn handle_signals(&mut self, wait: Option<Duration>) -> bool {
        let mut fs_changed = false;
        let first = match wait {
            Some(d) => self.signals.recv_timeout(d).ok(),
            None => self.signals.try_recv().ok(),
        };
        let mut next = first;
        while let Some(signal) = next {
            match signal {
                Signal::Ack { file, seq } => {
                    if let Some(f) = self.files.get_mut(&file) {
                        f.acknowledge(seq);
                    }
                }
                Signal::FsChanged => fs_changed = true,
            }
            next = self.signals.try_recv().ok();
        }
        fs_changed
    }

    fn persist_offsets(&mut self) -> anyhow::Result<()> {
        let Some(db) = &mut self.db else {
            return Ok(());
        };
        let updates: Vec<(i64, u64, (u64, u64))> = self
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

    /// Closes gone files that are read to their end and acknowledged (after `Rotate_Wait`).
    fn close_drained(&mut self) -> anyhow::Result<()> {
        let rotate_wait = self.cfg.rotate_wait;
        let closable: Vec<FileId> = self
            .files
            .values()
            .filter(|f| {
                matches!(f.presence, Presence::Gone { since } if since.elapsed() >= rotate_wait)
                    && f.drained()
            })
            .map(|f| f.id)
            .collect();
        for id in closable {
            let f = self.files.remove(&id).expect("listed");
            self.order.retain(|o| *o != id);
            self.closed.push_back(id);
            if self.closed.len() > 4096 {
                self.closed.pop_front();
            }
            if let (Some(db), Some(row)) = (&self.db, f.db_row) {
                db.delete(row)?;
            }
            self.cfg.metrics.files_closed.add(1);
            tracing::debug!(input = %self.cfg.metrics.name, file = %f.path.display(), "closed drained file");
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

    /// Keeps at most `Rotated_Files_Max` rotated files open: the newest beyond it are parked
    /// once nothing of theirs is in flight, if they are still on disk; parked
    /// files are reopened, oldest first, as slots free up.
    fn bound_rotated(&mut self) -> anyhow::Result<()> {
        let max = self.cfg.rotated_files_max;
        let rotated: Vec<FileId> = self
            .order
            .iter()
            .copied()
            .filter(|id| matches!(self.files[id].presence, Presence::Gone { .. }))
            .collect();
        self.parking.clear();
        if rotated.len() > max {
            self.persist_offsets()?;
            for id in &rotated[max..] {
                let f = &self.files[id];
                let on_disk = std::fs::metadata(&f.real_path).is_ok_and(|m| identity(&m) == *id);
                if !on_disk {
                    continue;
                }
                if !f.reopenable_at_committed() {
                    // Stop reading it so that what is in flight is acknowledged.
                    self.parking.push(*id);
                    continue;
                }
                let f = self.files.remove(id).expect("listed");
                self.order.retain(|o| o != id);
                tracing::info!(input = %self.cfg.metrics.name, file = %f.real_path.display(), offset = f.committed, unread = f.size.saturating_sub(f.committed), "{} rotated files open (Rotated_Files_Max {max}): closing this one until its turn", rotated.len());
                self.parked.push_back(Parked {
                    path: f.path,
                    real_path: f.real_path,
                    id: f.id,
                    db_row: f.db_row,
                    offset: f.committed,
                    size: f.size,
                });
            }
        } else {
            for _ in rotated.len()..max {
                let Some(p) = self.parked.pop_front() else {
                    break;
                };
                self.unpark(p)?;
            }
        }
        self.cfg
            .metrics
            .rotated_parked
            .set(self.parked.len() as i64);
        Ok(())
    }

    /// Reopens a parked file where it was left, found by identity at its path or in its
    /// directory (it may have been renamed again).
    fn unpark(&mut self, p: Parked) -> anyhow::Result<()> {
        let found = open_same(&p.real_path, p.id)
            .map(|(file, meta)| (p.real_path.clone(), file, meta))
            .or_else(|| {
                let (path, _) = find_by_inode(p.real_path.parent()?, p.id.1)?;
                open_same(&path, p.id).map(|(file, meta)| (path, file, meta))
            });
        let Some((real, file, meta)) = found else {
            let lost = p.size.saturating_sub(p.offset);
            self.cfg.metrics.rotated_lost_bytes.add(lost);
            tracing::warn!(input = %self.cfg.metrics.name, file = %p.real_path.display(), lost_bytes = lost, "a rotated file closed at Rotated_Files_Max was deleted before its turn: its unread bytes are lost");
            if let (Some(db), Some(row)) = (&self.db, p.db_row) {
                db.delete(row)?;
            }
            return Ok(());
        };
        self.open_file(p.path, real, file, &meta, Some((p.db_row, p.offset)), true)?;
        if let Some(f) = self.files.get_mut(&p.id) {
            f.presence = Presence::Gone {
                since: Instant::now(),
            };
        }
        Ok(())
    }

    fn main_loop(&mut self) -> anyhow::Result<()> {
        let mut last_scan = Instant::now();
        let mut last_housekeeping = Instant::now();
        let mut rescan_requested = false;
        let mut turn = 0usize;
        loop {
            rescan_requested |= self.handle_signals(None);
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
            if !full && !self.order.is_empty() {
                // One chunk from each file in turn, starting where the last round stopped.
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
                    match f.read_chunk(READ_SIZE, &self.cfg.limits, &mut self.stats) {
                        Ok(Some(out)) => {
                            read_any = true;
                            if !out.events.is_empty() || out.commit_offset > f.committed {
                                self.dispatch(id, out);
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
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
            if !read_any {
                let wait = if full {
                    Duration::from_millis(5)
                } else {
                    Duration::from_millis(250)
                };
                rescan_requested |= self.handle_signals(Some(wait));
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
            self.handle_signals(Some(Duration::from_millis(50)));
            self.persist_offsets()?;
        }
        self.handle_signals(None);
        self.persist_offsets()?;
        let unacked: usize = self.files.values().map(|f| f.inflight.len()).sum();
        if unacked > 0 {
            tracing::warn!(input = %self.cfg.metrics.name, batches = unacked, "stopping with unacknowledged batches: their lines will be read again on restart");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_with(tag: &str, regex: Option<&str>) -> Tail {
        Tail {
            metrics: Arc::new(InputMetrics::default()),
            paths: vec![],
            excludes: vec![],
            tag: tag.into(),
            tag_regex: regex.map(|r| Pattern::new(r).unwrap()),
            mode: LineMode::Raw {
                key: Bytes::from_static(b"log"),
            },
            limits: LineLimits {
                max_line: 10,
                skip_long_lines: false,
                skip_empty_lines: false,
                path_key: None,
                offset_key: None,
            },
            refresh_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(1),
            read_from_head: false,
            ignore_older: None,
            exit_on_eof: false,
            rotated_files_max: 1,
            db: None,
        }
    }

    #[test]
    fn star_tag_expansion() {
        let t = tail_with("kube.*", None);
        assert_eq!(
            t.compose_tag(Path::new("/var/log/containers/a_b_c-123.log")),
            "kube.var.log.containers.a_b_c-123.log"
        );
    }

    #[test]
    fn union_tag_regex() {
        let re = r"(?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-";
        let t = tail_with(
            "namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>",
            Some(re),
        );
        let path = Path::new("/var/log/containers/web-7d9f_prod_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log");
        assert_eq!(
            t.compose_tag(path),
            "namespace-prod.pod-web-7d9f.cont-nginx"
        );
        let t = tail_with("x.<missing>", Some("(?<a>z)?"));
        assert_eq!(t.compose_tag(path), "x._");
    }
}
