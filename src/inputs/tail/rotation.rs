//! Rotated files while the agent runs: noticing a file left its matched name, finding files
//! created and rotated away between two scans, finishing and closing drained rotated files, and
//! the `Rotated_Files_Max` bound (parking and unparking).
//!
//! Invariant 3: a rotated or deleted file is closed only when read to its current size and
//! acknowledged; its last line without a newline is shipped first. A parked file is reopened by
//! identity and its offset marker, so a reused inode is never read from another file's offset;
//! only a parked file deleted before its turn loses its unread bytes, counted and logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::db::{self, ClosedFile, Marker};
use super::file::{identity, FileId, Presence};
use super::recovery::Place;
use super::{find_by_inode, open_same, Start, TailState, FORGET_ROTATION_NAMES};

/// A matched name whose rotated siblings are looked for.
pub(super) struct RotationName {
    /// Directory of the resolved path (the target of a `/var/log/containers` symlink).
    pub(super) dir: PathBuf,
    /// `<basename>.` of the resolved path: rotated siblings start with it.
    pub(super) prefix: String,
    /// The file found under it by the previous scan.
    last_id: Option<FileId>,
    last_matched: Instant,
    /// First-bytes hashes of the plain siblings seen next to it (the newest
    /// [`SEEN_HEADS`]): a compressed copy of one of them is not a file born unseen.
    seen_heads: std::collections::VecDeque<u64>,
}

/// Plain siblings remembered per matched name: more than a rotation scheme keeps (the kubelet
/// keeps 5).
const SEEN_HEADS: usize = 32;

impl RotationName {
    /// The real directory and sibling prefix of a matched path (symlinks resolved). At the
    /// first scan its plain siblings are remembered as seen (not read: they predate the agent).
    /// A name first matched later counts as changed, so the next look for unseen rotations reads
    /// siblings born since the previous scan (a new pod that rotated before it was scanned).
    pub(super) fn resolve(path: &Path, id: FileId, first_scan: bool) -> Option<RotationName> {
        let real = std::fs::canonicalize(path).ok()?;
        let mut name = RotationName {
            dir: real.parent()?.to_path_buf(),
            prefix: format!("{}.", real.file_name()?.to_string_lossy()),
            last_id: first_scan.then_some(id),
            last_matched: Instant::now(),
            seen_heads: Default::default(),
        };
        if first_scan {
            for (path, _) in siblings(&name.dir, &name.prefix) {
                if let Ok(file) = std::fs::File::open(&path) {
                    if !is_compressed(&path, &file) {
                        name.saw(db::head_hash(&file));
                    }
                }
            }
        }
        Some(name)
    }

    /// Remembers a plain sibling by its first bytes.
    pub(super) fn saw(&mut self, head: Option<u64>) {
        let Some(h) = head else { return };
        if !self.seen_heads.contains(&h) {
            if self.seen_heads.len() == SEEN_HEADS {
                self.seen_heads.pop_front();
            }
            self.seen_heads.push_back(h);
        }
    }

    pub(super) fn has_seen(&self, head: Option<u64>) -> bool {
        head.is_some_and(|h| self.seen_heads.contains(&h))
    }
}

/// A rotated file closed at the `Rotated_Files_Max` bound, to be reopened by identity.
pub(super) struct Parked {
    /// The path it was followed under (tag, DB name).
    path: PathBuf,
    real_path: PathBuf,
    id: FileId,
    db_row: Option<i64>,
    /// Acknowledged offset: reading resumes here, if the bytes before it are still `marker`.
    offset: u64,
    marker: Marker,
    pub(super) head: Option<u64>,
    size: u64,
}

/// A compressor's output format, known by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compressed {
    Gzip,
    Zstd,
    /// xz or bzip2: recognised, not read.
    Other,
}

impl Compressed {
    pub(super) fn sniff(file: &std::fs::File) -> Option<Compressed> {
        let mut head = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut head, 0).ok()?;
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compressed::Gzip)
        } else if head == [0x28, 0xb5, 0x2f, 0xfd] {
            Some(Compressed::Zstd)
        } else if head == [0xfd, b'7', b'z', b'X'] || head.starts_with(b"BZh") {
            Some(Compressed::Other)
        } else {
            None
        }
    }
}

/// A rotated sibling that a compressor wrote (`0.log.<time>.gz`): its bytes are not log lines.
/// Known by its name or, when renamed, by its magic bytes.
pub(super) fn is_compressed(path: &Path, file: &std::fs::File) -> bool {
    let by_name = path.extension().is_some_and(|e| {
        ["gz", "zst", "xz", "bz2", "zip", "lz4"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    });
    by_name || Compressed::sniff(file).is_some()
}

fn changed_at(m: &std::fs::Metadata) -> SystemTime {
    use std::os::unix::fs::MetadataExt;
    SystemTime::UNIX_EPOCH + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32)
}

/// Regular files in `dir` named `<prefix>*`, oldest change first. A compressor's file being
/// written (`*.tmp`, as the kubelet names it until it renames it to `.gz`) is not one.
pub(super) fn siblings(dir: &Path, prefix: &str) -> Vec<(PathBuf, std::fs::Metadata)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, std::fs::Metadata)> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(prefix) && !name.ends_with(".tmp")
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| (e.path(), m)))
        .filter(|(_, m)| m.is_file())
        .collect();
    found.sort_by_key(|(_, m)| changed_at(m));
    found
}

impl TailState {
    /// A followed file left its matched name: it is read to its end under its new name.
    pub(super) fn note_gone(&mut self, id: FileId) -> anyhow::Result<()> {
        let Some(f) = self.files.get_mut(&id) else {
            return Ok(());
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
        Ok(())
    }

    /// Siblings are looked for when the file under a name changed since the previous scan or
    /// the name is empty (a file created and rotated away between two scans after the one
    /// followed before it was gone) — not when it holds the same file (a copytruncate copy is
    /// not new data).
    pub(super) fn look_for_unseen_rotations(
        &mut self,
        current: &std::collections::HashMap<PathBuf, FileId>,
    ) -> anyhow::Result<()> {
        self.rotation_names
            .retain(|_, n| n.last_matched.elapsed() < FORGET_ROTATION_NAMES);
        let mut changed: Vec<Place> = Vec::new();
        for (logical, name) in self.rotation_names.iter_mut() {
            let now = current.get(logical).copied();
            if now.is_none() || now != name.last_id {
                changed.push(Place {
                    dir: name.dir.clone(),
                    prefix: name.prefix.clone(),
                    logical: logical.clone(),
                });
            }
            name.last_id = now;
            if now.is_some() {
                name.last_matched = Instant::now();
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        let closed = match &self.db {
            Some(db) => db.closed_files()?,
            None => Vec::new(),
        };
        let since = Some(self.last_scan - Duration::from_secs(1));
        for place in &changed {
            self.adopt_siblings(place, since, &mut Vec::new(), &closed)?;
        }
        Ok(())
    }

    pub(super) fn is_parked(&self, id: FileId) -> bool {
        self.parked.iter().any(|p| p.id == id)
    }

    /// Ships the last line (without newline) of rotated files read to their end, then closes
    /// gone files that are drained and acknowledged (after `Rotate_Wait`). A closed file is
    /// remembered in the DB, so neither it nor a compressed copy is read again after a restart.
    pub(super) fn close_drained(&mut self) -> anyhow::Result<()> {
        let rotate_wait = self.cfg.rotate_wait;
        let waited: Vec<FileId> = self
            .files
            .values()
            .filter(|f| matches!(f.presence, Presence::Gone { since } if since.elapsed() >= rotate_wait))
            .map(|f| f.id)
            .collect();
        for id in &waited {
            let f = self.files.get_mut(id).expect("listed");
            if f.inflight.is_empty() {
                if let Some(out) = f.finish_last_line(&self.cfg.limits) {
                    self.dispatch(*id, out);
                }
            }
        }
        let closable: Vec<FileId> = waited
            .into_iter()
            .filter(|id| self.files[id].drained())
            .collect();
        if !closable.is_empty() {
            // Offsets first: a crash between the two must not look like a file read to its end.
            self.persist_offsets()?;
        }
        for id in closable {
            let f = self.files.remove(&id).expect("listed");
            self.order.retain(|o| *o != id);
            let head = db::head_hash(&f.file);
            // Its compressed copy, made later, is then known as read (with or without the DB's
            // record of closed files, which is kept 7 days).
            if let Some(name) = self.rotation_names.get_mut(&f.path) {
                name.saw(head);
            }
            self.closed.push_back(id);
            if self.closed.len() > 4096 {
                self.closed.pop_front();
            }
            if let Some(db) = &mut self.db {
                db.close(
                    f.db_row,
                    &ClosedFile {
                        inode: id.1,
                        size: f.pos,
                        end: db::offset_marker(&f.file, f.pos),
                        head,
                    },
                )?;
            }
            if self
                .recovered_dir
                .as_deref()
                .is_some_and(|d| f.real_path.parent() == Some(d))
            {
                // A decompressed copy made at start: read, so no longer needed.
                let _ = std::fs::remove_file(&f.real_path);
            }
            self.cfg.metrics.files_closed.add(1);
            tracing::info!(input = %self.cfg.metrics.name, file = %f.real_path.display(), bytes = f.pos, "rotated file read to its end and closed");
        }
        Ok(())
    }

    /// Keeps at most `Rotated_Files_Max` rotated files open: the newest beyond it are parked
    /// once nothing of theirs is in flight, if they are still on disk; parked
    /// files are reopened, oldest first, as slots free up.
    pub(super) fn bound_rotated(&mut self) -> anyhow::Result<()> {
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
                    marker: db::offset_marker(&f.file, f.committed),
                    head: db::head_hash(&f.file),
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
    /// directory (it may have been renamed again), if its first bytes and the bytes before its
    /// offset are still the ones it had (an inode reused by another file is not that file).
    fn unpark(&mut self, p: Parked) -> anyhow::Result<()> {
        let found = open_same(&p.real_path, p.id)
            .map(|(file, meta)| (p.real_path.clone(), file, meta))
            .or_else(|| {
                let (path, _) = find_by_inode(p.real_path.parent()?, p.id.1)?;
                open_same(&path, p.id).map(|(file, meta)| (path, file, meta))
            })
            .filter(|(_, file, meta)| {
                db::head_hash(file) == p.head
                    && db::marker_matches(file, p.offset, p.marker, meta.len())
            });
        let Some((real, file, meta)) = found else {
            if let Some(row) = p.db_row {
                let row = db::FileRow {
                    id: row,
                    name: p.path.to_string_lossy().into_owned(),
                    real_name: Some(p.real_path.to_string_lossy().into_owned()),
                    offset: p.offset,
                    inode: p.id.1,
                    marker: p.marker,
                    head: p.head,
                };
                if self.resume_from_compressed(row)? {
                    return Ok(());
                }
            }
            let lost = p.size.saturating_sub(p.offset);
            self.cfg.metrics.rotated_lost_bytes.add(lost);
            tracing::warn!(input = %self.cfg.metrics.name, file = %p.real_path.display(), lost_bytes = lost, "a rotated file closed at Rotated_Files_Max was deleted before its turn (no compressed copy of it found): its unread bytes are lost");
            if let (Some(db), Some(row)) = (&self.db, p.db_row) {
                db.delete(row)?;
            }
            return Ok(());
        };
        let start = match p.db_row {
            Some(row) => Start::Row {
                row,
                offset: p.offset,
            },
            None => Start::New { offset: p.offset },
        };
        self.open_gone(p.path, real, file, &meta, start)
    }
}
