//! A restart is not a first start (invariant 3): what happened to the files while the agent was
//! down is worked out from the offsets DB before the first read.
//!
//! - A row whose file is no longer under its matched name was rotated while the agent was down:
//!   it is found by inode in its real directory (the target of a `/var/log/containers` symlink,
//!   not the symlink's directory) and read on from its offset, tagged by the name it was matched
//!   under.
//! - If that file is gone too, the kubelet compressed it (`0.log.<time>.gz`, done at the next
//!   rotation): the compressed siblings are decompressed next to the DB and the one whose first
//!   bytes are the row's head hash and whose bytes before the row's offset are the row's marker
//!   (the marker alone for a row without a head hash) is read on from that offset. No other shipper
//!   does this; each such read is logged and its bytes counted.
//! - Siblings not in the DB that changed after the previous run's last scan were never seen
//!   (born while the agent was down, or just before it died): read from their head
//!   (compressed ones too). Siblings recorded as closed (same size,
//!   same last bytes) were read before and are skipped, so logrotate's renumbering or the
//!   kubelet's compression of an already shipped file repeats nothing.
//!
//! A row found nowhere is logged (its file was deleted while the agent was down) and removed.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::db::{self, ClosedFile, FileRow};
use super::file::identity;
use super::rotation::{is_compressed, siblings, Compressed};
use super::{find_by_inode, open_same, Start, TailState};

/// Clock slack when comparing a file's modification time with the last scan.
const SCAN_SLACK: Duration = Duration::from_secs(2);

/// A directory whose `<prefix>*` siblings belong to the matched name `logical`.
pub(super) struct Place {
    pub(super) dir: PathBuf,
    pub(super) prefix: String,
    pub(super) logical: PathBuf,
}

/// A sibling decompressed into the recovery directory.
struct Decompressed {
    source: PathBuf,
    path: PathBuf,
    file: std::fs::File,
    meta: std::fs::Metadata,
}

impl TailState {
    pub(super) fn recover_at_start(&mut self) -> anyhow::Result<()> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        if !db.existed_before {
            return Ok(());
        }
        let rows = db.all()?;
        let closed = db.closed_files()?;
        let since = db.last_scan.map(|t| t - SCAN_SLACK);
        let tracked: HashSet<i64> = self.files.values().filter_map(|f| f.db_row).collect();
        let mut places: Vec<Place> = self
            .rotation_names
            .iter()
            .map(|(logical, n)| Place {
                dir: n.dir.clone(),
                prefix: n.prefix.clone(),
                logical: logical.clone(),
            })
            .collect();
        let mut pending: Vec<FileRow> = Vec::new();
        for row in rows.into_iter().filter(|r| !tracked.contains(&r.id)) {
            let real = row_real_path(&row);
            let dir = real.parent().map(Path::to_path_buf).unwrap_or_default();
            if let Some(place) = place_of_row(&row, &real) {
                let is_copy = self.recovered_dir.as_deref() == Some(place.dir.as_path());
                if !is_copy
                    && !places
                        .iter()
                        .any(|p| p.dir == place.dir && p.prefix == place.prefix)
                {
                    places.push(place);
                }
            }
            if self.resume_row_by_inode(&row, &dir)? {
                continue;
            }
            pending.push(row);
        }
        self.clear_stale_decompressed()?;
        // Rows closed just above are already read: reload the records.
        let closed = match &self.db {
            Some(db) => db.closed_files()?,
            None => closed,
        };
        for place in &places {
            self.adopt_siblings(place, since, &mut pending, &closed)?;
        }
        for row in pending {
            tracing::warn!(input = %self.cfg.metrics.name, file = %row_real_path(&row).display(), offset = row.offset, "a followed file was deleted while logferry was down (no copy of it found, compressed or not): what was not read of it is lost");
            if let Some(db) = &self.db {
                db.delete(row.id)?;
            }
        }
        Ok(())
    }

    /// Reads the siblings of a matched name that were never seen: changed since `since` (the
    /// previous scan; all of them when unknown), neither followed, closed (by identity or, from
    /// the DB, by size and first and last bytes) nor parked. Compressed ones are decompressed:
    /// the unread end of a `pending` row (at start), or a whole file born, rotated and
    /// compressed while the agent was down, or while it ran but got no CPU for two rotations
    /// (then neither a scan nor a watch event saw it). A compressed copy of a file followed,
    /// parked, closed or seen next to the name (not read: it predates the name's first scan)
    /// has that file's first bytes and is skipped. Plain siblings go first, so a copy whose
    /// original is still there is known by it. Used at start and whenever the
    /// file under a matched name changed between two scans.
    pub(super) fn adopt_siblings(
        &mut self,
        place: &Place,
        since: Option<SystemTime>,
        pending: &mut Vec<FileRow>,
        closed: &[ClosedFile],
    ) -> anyhow::Result<()> {
        let mut compressed = Vec::new();
        for (path, meta) in siblings(&place.dir, &place.prefix) {
            let id = identity(&meta);
            if self.files.contains_key(&id) || self.closed.contains(&id) || self.is_parked(id) {
                continue;
            }
            let changed_since_scan = since.is_none_or(|s| meta.modified().map_or(true, |m| m >= s));
            let Some((file, meta)) = open_same(&path, id) else {
                continue;
            };
            if is_compressed(&path, &file) {
                compressed.push((path, changed_since_scan));
                continue;
            }
            if let Some(name) = self.rotation_names.get_mut(&place.logical) {
                name.saw(db::head_hash(&file));
            }
            let size = meta.len();
            if !changed_since_scan
                || closed
                    .iter()
                    .any(|c| c.inode == id.1 && db::is_closed_file(&file, size, c))
            {
                continue;
            }
            tracing::info!(input = %self.cfg.metrics.name, file = %path.display(), bytes = size, "found a rotated file never opened (born and rotated between two scans, or while logferry was down): reading it from its start");
            self.open_gone(
                place.logical.clone(),
                path,
                file,
                &meta,
                Start::New { offset: 0 },
            )?;
        }
        for (path, changed_since_scan) in compressed {
            let wanted = if self.started {
                // A copy shorter than the head window cannot be told from a short file read
                // before: left alone (a file born, rotated and compressed unseen is far longer).
                changed_since_scan && {
                    let head = compressed_head(&path);
                    // The name's own memory first: it answers for the usual copy (of a file
                    // closed here) without reading the head of every followed file.
                    head.is_some()
                        && !self
                            .rotation_names
                            .get(&place.logical)
                            .is_some_and(|n| n.has_seen(head))
                        && !self.known_head(head, closed)
                }
            } else {
                changed_since_scan
                    || pending
                        .iter()
                        .any(|r| row_real_path(r).parent() == Some(place.dir.as_path()))
            };
            if wanted {
                self.recover_compressed(&path, place, pending, closed, changed_since_scan)?;
            }
        }
        Ok(())
    }

    /// A row whose file is gone (a parked file the kubelet compressed before its turn) is read
    /// on from its compressed copy, found by its first bytes and its marker. False if none is.
    pub(super) fn resume_from_compressed(&mut self, row: FileRow) -> anyhow::Result<bool> {
        let real = row_real_path(&row);
        let Some(place) = place_of_row(&row, &real) else {
            return Ok(false);
        };
        let head = row.head;
        let mut pending = vec![row];
        for (path, _) in siblings(&place.dir, &place.prefix) {
            let copy = std::fs::File::open(&path).is_ok_and(|f| is_compressed(&path, &f));
            if copy && head.is_none_or(|h| compressed_head(&path) == Some(h)) {
                self.recover_compressed(&path, &place, &mut pending, &[], false)?;
                if pending.is_empty() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Whether a file with these first bytes is followed, parked or closed.
    fn known_head(&self, head: Option<u64>, closed: &[ClosedFile]) -> bool {
        head.is_some_and(|h| {
            self.files
                .values()
                .any(|f| db::head_hash(&f.file) == Some(h))
                || self.parked.iter().any(|p| p.head == Some(h))
                || closed.iter().any(|c| c.head == Some(h))
        })
    }

    /// Reopens a row's file found by inode in `dir`; false if it is not there.
    fn resume_row_by_inode(&mut self, row: &FileRow, dir: &Path) -> anyhow::Result<bool> {
        let Some((path, meta)) = find_by_inode(dir, row.inode) else {
            return Ok(false);
        };
        let id = identity(&meta);
        if let Some(f) = self.files.get(&id) {
            // Followed under this row, or under another one (an inode reused by a new file):
            // then this row's own file is elsewhere or gone.
            return Ok(f.db_row == Some(row.id));
        }
        let Some((file, meta)) = open_same(&path, id) else {
            return Ok(false);
        };
        if !db::row_fits(&file, row, meta.len()) {
            // Another file under a reused inode: the row's file is elsewhere or gone.
            return Ok(false);
        }
        if row.offset >= meta.len() {
            if let Some(db) = &mut self.db {
                db.close(
                    Some(row.id),
                    &ClosedFile {
                        inode: row.inode,
                        size: meta.len(),
                        end: db::offset_marker(&file, meta.len()),
                        head: db::head_hash(&file),
                    },
                )?;
            }
            return Ok(true);
        }
        tracing::info!(input = %self.cfg.metrics.name, file = %path.display(), offset = row.offset, "reading a file rotated while logferry was down to its end");
        self.open_gone(
            PathBuf::from(&row.name),
            path,
            file,
            &meta,
            Start::Row {
                row: row.id,
                offset: row.offset,
            },
        )?;
        Ok(true)
    }

    /// A compressed sibling: the unread end of a pending row (found by its marker), a file
    /// already read or older than the last scan (skipped), or a file born while the agent was
    /// down (read from its head).
    fn recover_compressed(
        &mut self,
        source: &Path,
        place: &Place,
        pending: &mut Vec<FileRow>,
        closed: &[ClosedFile],
        changed_since_scan: bool,
    ) -> anyhow::Result<()> {
        let Some(d) = self.decompress(source)? else {
            return Ok(());
        };
        let size = d.meta.len();
        let head = db::head_hash(&d.file);
        // The row's first bytes decide when it has them; a row without them (its file was
        // shorter, or written by Fluent Bit) is matched by its marker at a committed offset.
        let owner = pending.iter().position(|row| {
            if row_real_path(row).parent() != Some(place.dir.as_path()) {
                return false;
            }
            let same_start = match row.head {
                Some(h) => head == Some(h),
                None => row.offset > 0 && row.marker.size > 0,
            };
            same_start && db::marker_matches(&d.file, row.offset, row.marker, size)
        });
        let being_read = self.known_head(head, &[]);
        let (logical, start) = match owner {
            Some(i) => {
                let row = pending.remove(i);
                (
                    PathBuf::from(&row.name),
                    Start::Row {
                        row: row.id,
                        offset: row.offset,
                    },
                )
            }
            None if !changed_since_scan
                || being_read
                || closed.iter().any(|c| db::is_closed_file(&d.file, size, c)) =>
            {
                let _ = std::fs::remove_file(&d.path);
                return Ok(());
            }
            None => (place.logical.clone(), Start::New { offset: 0 }),
        };
        let offset = match start {
            Start::Row { offset, .. } | Start::New { offset } => offset,
        };
        if offset >= size {
            let _ = std::fs::remove_file(&d.path);
            if let (Some(db), Start::Row { row, .. }) = (&mut self.db, &start) {
                db.close(
                    Some(*row),
                    &ClosedFile {
                        inode: d.meta.ino(),
                        size,
                        end: db::offset_marker(&d.file, size),
                        head,
                    },
                )?;
            }
            return Ok(());
        }
        if let (Some(db), Start::Row { row, .. }) = (&self.db, &start) {
            // The row now follows the copy: one update, never a moment without a row.
            db.repoint(*row, &d.path.to_string_lossy(), d.meta.ino())?;
        }
        self.cfg
            .metrics
            .compressed_recovered_bytes
            .add(size - offset);
        tracing::info!(input = %self.cfg.metrics.name, file = %d.source.display(), offset, bytes = size - offset, "rotated and compressed before logferry read it: reading it from its compressed copy");
        self.open_gone(logical, d.path, d.file, &d.meta, start)
    }

    /// Decompresses `source` (gzip or zstd) into the recovery directory, fsynced. A damaged
    /// stream keeps what could be decompressed (logged). None for formats not read.
    fn decompress(&self, source: &Path) -> anyhow::Result<Option<Decompressed>> {
        let Some(dir) = &self.recovered_dir else {
            tracing::warn!(input = %self.cfg.metrics.name, file = %source.display(), "a rotated file was compressed before logferry read it to its end; reading compressed copies needs an offsets DB (DB): what was not read of it is lost");
            return Ok(None);
        };
        let Some(mut reader) = decoder(source)? else {
            tracing::warn!(input = %self.cfg.metrics.name, file = %source.display(), "compressed rotated file in a format logferry does not read (gzip and zstd are): skipped");
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(
            "{}-{}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            name
        ));
        let mut out = std::fs::File::create(&path)?;
        if let Err(e) = std::io::copy(&mut reader, &mut out) {
            tracing::warn!(input = %self.cfg.metrics.name, file = %source.display(), "compressed rotated file is damaged ({e}): reading what could be decompressed");
        }
        out.flush()?;
        out.sync_all()?;
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        Ok(Some(Decompressed {
            source: source.to_path_buf(),
            path,
            file,
            meta,
        }))
    }

    /// Decompressed copies not being read (rows resumed above hold theirs open) are removed.
    fn clear_stale_decompressed(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.recovered_dir else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let in_use =
                std::fs::metadata(e.path()).is_ok_and(|m| self.files.contains_key(&identity(&m)));
            if !in_use {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

/// A reader of the decompressed bytes of `source`; None for formats not read (xz, bzip2).
fn decoder(source: &Path) -> std::io::Result<Option<Box<dyn std::io::Read>>> {
    let compressed = std::fs::File::open(source)?;
    let kind = Compressed::sniff(&compressed);
    let input = std::io::BufReader::new(compressed);
    Ok(match kind {
        Some(Compressed::Gzip) => Some(Box::new(flate2::read::MultiGzDecoder::new(input))),
        Some(Compressed::Zstd) => Some(Box::new(zstd::stream::read::Decoder::with_buffer(input)?)),
        _ => None,
    })
}

/// [`db::head_hash`] of a compressed file's decompressed bytes (only its start is decompressed).
fn compressed_head(source: &Path) -> Option<u64> {
    let mut head = [0u8; db::HEAD_WINDOW];
    decoder(source).ok()??.read_exact(&mut head).ok()?;
    Some(db::hash_head_bytes(&head))
}

/// Where a row's file was last known to be: logferry's `real_name`, else the matched name with
/// its symlink resolved, else the name itself (a Fluent Bit row).
fn row_real_path(row: &FileRow) -> PathBuf {
    row.real_name
        .as_ref()
        .map(PathBuf::from)
        .or_else(|| std::fs::canonicalize(&row.name).ok())
        .unwrap_or_else(|| PathBuf::from(&row.name))
}

/// The siblings a row's file may have been rotated among: the directory it was in, and the
/// name it had under its matched path (`0.log` in `0.log.<time>`).
fn place_of_row(row: &FileRow, real: &Path) -> Option<Place> {
    let dir = real.parent()?.to_path_buf();
    let base = std::fs::canonicalize(&row.name)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| {
            // The matched name is gone (pod deleted): the rotated name starts with it.
            let name = real.file_name()?.to_string_lossy().into_owned();
            let matched = Path::new(&row.name)
                .file_name()?
                .to_string_lossy()
                .into_owned();
            Some(if name.starts_with(&matched) {
                matched
            } else {
                name.split_once(".log")
                    .map_or(name.clone(), |(b, _)| format!("{b}.log"))
            })
        })?;
    Some(Place {
        dir,
        prefix: format!("{base}."),
        logical: PathBuf::from(&row.name),
    })
}
