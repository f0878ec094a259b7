//! The offsets DB: SQLite with Fluent Bit's `in_tail_files` schema, so logferry takes over a
//! node where Fluent Bit ran (and the other way round) without re-shipping or skipping.
//!
//! Invariant 1: this module only stores what the caller commits, and the tail input commits an
//! offset only after every output acknowledged the records before it. Rows are keyed by inode
//! (newest id wins, as in Fluent Bit); `offset_marker` is XXH3-64 of up to 32 bytes before the
//! offset (Fluent Bit's `cfl_hash_64bits`), so inode reuse or a copytruncate while stopped is
//! detected and the file is read from its start instead of from the middle of other content.
//!
//! Invariant 3 (a restart is not a first start) needs more than Fluent Bit stores; logferry adds,
//! in ways Fluent Bit ignores (a trailing column and tables of its own):
//! - `in_tail_files.real_name`: the resolved path (a `/var/log/containers` symlink's target,
//!   then the rotated name), while `name` stays the matched path the tag is built from (Fluent
//!   Bit rewrites `name` to the rotated path instead). A file rotated while the agent was down
//!   is looked for in that directory.
//! - `in_tail_files.head_hash`: the hash of the file's first 64 bytes. Inodes are reused as
//!   soon as a file is deleted (the kubelet deletes what it compressed) and many lines end
//!   alike, so a row belongs to a file only if its first bytes and its marker both fit.
//! - `logferry_closed`: files read to their end (inode, size, hash of the last bytes), so a
//!   rotated sibling or its gzipped copy that was already shipped is not read again.
//! - `logferry_meta.last_scan`: when the agent last finished looking at its files; a sibling
//!   changed after it was never seen (born while the agent was down, or just before it died).
//!
//! A damaged DB file is moved aside (`<db>.corrupt-<unix time>`) and a fresh one started (every
//! file is then read from its head: duplicates, never loss), or, with `DB.On_Corrupt exit`, the
//! input refuses to start and names the file.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension};

pub const MARKER_WINDOW: u64 = 32;
/// Bytes at the start of a file that identify it by content.
pub const HEAD_WINDOW: usize = 64;
/// Closed-file records older than this are forgotten.
const CLOSED_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: i64,
    /// The path the file was matched under (its tag).
    pub name: String,
    /// Where the file is (or was last seen): logferry's column, absent in Fluent Bit's rows.
    pub real_name: Option<String>,
    pub offset: u64,
    pub inode: u64,
    pub marker: Marker,
    /// Hash of the file's first [`HEAD_WINDOW`] bytes, once it had that many (logferry's
    /// column): finds the file's compressed copy even before any offset was committed.
    pub head: Option<u64>,
}

/// The hash of up to [`MARKER_WINDOW`] bytes before an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marker {
    pub hash: u64,
    pub size: u64,
}

/// A file read to its end and closed.
#[derive(Debug, Clone)]
pub struct ClosedFile {
    pub inode: u64,
    pub size: u64,
    pub end: Marker,
    /// [`head_hash`] of the file.
    pub head: Option<u64>,
}

const SELECT_ROW: &str = "SELECT id, name, offset, inode, offset_marker, offset_marker_size, real_name, head_hash FROM in_tail_files";

fn file_row(r: &rusqlite::Row) -> rusqlite::Result<FileRow> {
    let int = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0));
    Ok(FileRow {
        id: r.get(0)?,
        name: r.get(1)?,
        offset: int(2)?.max(0) as u64,
        inode: int(3)? as u64,
        marker: Marker {
            hash: int(4)? as u64,
            size: int(5)?.max(0) as u64,
        },
        real_name: r.get(6)?,
        head: r.get::<_, Option<i64>>(7)?.map(|h| h as u64),
    })
}

/// What to do with a DB file SQLite cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorrupt {
    /// Move it aside, start a fresh one, read every file from its head.
    Reset,
    /// Refuse to start.
    Exit,
}

pub struct OffsetsDb {
    conn: Connection,
    /// The DB existed before this start: files without a row appeared while the agent was down
    /// and are read from their head.
    pub existed_before: bool,
    /// When the previous run last finished a scan (files changed after it were never seen).
    pub last_scan: Option<SystemTime>,
    /// A damaged DB was moved here at this start.
    pub moved_aside: Option<PathBuf>,
}

fn is_damage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<rusqlite::Error>().is_some_and(|e| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            )
        }) || c.to_string().contains("integrity check failed")
    })
}

impl OffsetsDb {
    pub fn open(
        path: &Path,
        sync: &str,
        locking: bool,
        journal_mode: &str,
        on_corrupt: OnCorrupt,
    ) -> anyhow::Result<Self> {
        let existed = path.exists();
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create the offsets DB's directory '{}': {e}",
                        parent.display()
                    )
                })?;
            }
        }
        match Self::open_checked(path, sync, locking, journal_mode) {
            Ok(mut db) => {
                db.existed_before = existed;
                Ok(db)
            }
            Err(e) if is_damage(&e) => {
                if on_corrupt == OnCorrupt::Exit {
                    anyhow::bail!("offsets DB '{}' is corrupt ({e:#}); DB.On_Corrupt is exit: refusing to start", path.display());
                }
                let stamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
                std::fs::rename(path, &aside).map_err(|re| {
                    anyhow::anyhow!(
                        "offsets DB '{}' is corrupt ({e:#}) and cannot be moved aside: {re}",
                        path.display()
                    )
                })?;
                for side in ["-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{side}", path.display()));
                    if from.exists() {
                        let _ = std::fs::rename(&from, format!("{}{side}", aside.display()));
                    }
                }
                tracing::error!(db = %path.display(), moved_to = %aside.display(), "offsets DB is corrupt ({e:#}): moved aside, starting a fresh one; every file is read from its head (lines may repeat, none is lost)");
                let mut db = Self::open_checked(path, sync, locking, journal_mode)?;
                db.existed_before = true;
                // Nothing is known: every sibling, compressed or not, is read again.
                db.last_scan = None;
                db.moved_aside = Some(aside);
                Ok(db)
            }
            Err(e) => Err(e.context(format!("offsets DB '{}'", path.display()))),
        }
    }

    fn open_checked(
        path: &Path,
        sync: &str,
        locking: bool,
        journal_mode: &str,
    ) -> anyhow::Result<Self> {
        // For a DB another program wrote (Fluent Bit): when it last wrote, read before this
        // connection writes to it.
        let written = ["", "-wal"]
            .iter()
            .filter_map(|side| {
                std::fs::metadata(format!("{}{side}", path.display()))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .max();
        let conn = Connection::open(path)?;
        let sync_level = match sync.to_ascii_lowercase().as_str() {
            "extra" => "EXTRA",
            "full" => "FULL",
            "off" => "OFF",
            _ => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync_level};"))?;
        let mode: String =
            conn.query_row(&format!("PRAGMA journal_mode={journal_mode};"), [], |r| {
                r.get(0)
            })?;
        tracing::debug!(db = %path.display(), journal_mode = %mode, "offsets DB opened");
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            anyhow::bail!("integrity check failed: {check}");
        }
        if locking {
            conn.execute_batch("PRAGMA locking_mode=EXCLUSIVE;")?;
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS in_tail_files (
               id      INTEGER PRIMARY KEY,
               name    TEXT NOT NULL,
               offset  INTEGER,
               inode   INTEGER,
               created INTEGER,
               rotated INTEGER DEFAULT 0,
               offset_marker INTEGER DEFAULT 0,
               offset_marker_size INTEGER DEFAULT 0);
             CREATE TABLE IF NOT EXISTS logferry_closed (
               inode INTEGER, size INTEGER, end_marker INTEGER, end_marker_size INTEGER,
               head_hash INTEGER, closed INTEGER);
             CREATE INDEX IF NOT EXISTS logferry_closed_at ON logferry_closed (closed);
             CREATE TABLE IF NOT EXISTS logferry_meta (key TEXT PRIMARY KEY, value INTEGER);",
        )?;
        // Databases written by Fluent Bit before v5 lack the marker columns, and no Fluent Bit
        // writes logferry's real_name.
        let columns: Vec<String> = conn
            .prepare("PRAGMA table_info(in_tail_files)")?
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<Result<_, _>>()?;
        for (col, ty) in [
            ("offset_marker", "INTEGER DEFAULT 0"),
            ("offset_marker_size", "INTEGER DEFAULT 0"),
            ("real_name", "TEXT"),
            ("head_hash", "INTEGER"),
        ] {
            if !columns.iter().any(|c| c == col) {
                conn.execute_batch(&format!("ALTER TABLE in_tail_files ADD COLUMN {col} {ty};"))?;
            }
        }
        let last_scan: Option<i64> = conn
            .query_row(
                "SELECT value FROM logferry_meta WHERE key='last_scan'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        // A DB Fluent Bit wrote: it was last written when its file was.
        let last_scan = last_scan
            .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
            .or(written);
        Ok(OffsetsDb {
            conn,
            existed_before: false,
            last_scan,
            moved_aside: None,
        })
    }

    pub fn all(&self) -> anyhow::Result<Vec<FileRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{SELECT_ROW} ORDER BY id DESC"))?;
        let rows = stmt
            .query_map([], file_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The newest row for an inode (Fluent Bit's lookup).
    pub fn find_inode(&self, inode: u64) -> anyhow::Result<Option<FileRow>> {
        Ok(self
            .conn
            .query_row(
                &format!("{SELECT_ROW} WHERE inode=?1 ORDER BY id DESC"),
                params![inode as i64],
                file_row,
            )
            .optional()?)
    }

    pub fn insert(
        &self,
        name: &str,
        real_name: &str,
        offset: u64,
        inode: u64,
        marker: Marker,
        head: Option<u64>,
    ) -> anyhow::Result<i64> {
        let created = crate::record::EventTime::now().sec;
        self.conn.execute(
            "INSERT INTO in_tail_files (name, offset, inode, created, offset_marker, offset_marker_size, real_name, head_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![name, offset as i64, inode as i64, created, marker.hash as i64, marker.size as i64, real_name, head.map(|h| h as i64)],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records when a scan of the files started that has now finished.
    pub fn record_scan(&self, started: SystemTime) -> anyhow::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO logferry_meta (key, value) VALUES ('last_scan', ?1)",
            )?
            .execute(params![unix_ms(started)])?;
        Ok(())
    }

    /// Writes several offsets in one transaction.
    pub fn update_offsets(&mut self, updates: &[(i64, u64, Marker)]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE in_tail_files SET offset=?1, offset_marker=?2, offset_marker_size=?3 WHERE id=?4")?;
            for (id, offset, marker) in updates {
                stmt.execute(params![
                    *offset as i64,
                    marker.hash as i64,
                    marker.size as i64,
                    id
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the hash of the file's first bytes (see [`head_hash`]).
    pub fn set_heads(&mut self, heads: &[(i64, u64)]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE in_tail_files SET head_hash=?1 WHERE id=?2")?;
            for (id, head) in heads {
                stmt.execute(params![*head as i64, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The row's file is now read from another file holding the same bytes (a decompressed
    /// copy): one update, so a crash leaves the row pointing at one or the other.
    pub fn repoint(&self, id: i64, real_name: &str, inode: u64) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE in_tail_files SET real_name=?1, inode=?2, rotated=1 WHERE id=?3",
            params![real_name, inode as i64, id],
        )?;
        Ok(())
    }

    /// The file was rotated: `real_name` is where it is now; `name` (the tag) is kept.
    pub fn rename(&self, id: i64, real_name: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE in_tail_files SET real_name=?1, rotated=1 WHERE id=?2",
            params![real_name, id],
        )?;
        Ok(())
    }

    /// The file is now matched under another name.
    pub fn set_name(&self, id: i64, name: &str, real_name: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE in_tail_files SET name=?1, real_name=?2 WHERE id=?3",
            params![name, real_name, id],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: i64) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM in_tail_files WHERE id=?1", params![id])?;
        Ok(())
    }

    /// A file read to its end: its row goes, a closed-file record stays (old ones are pruned).
    pub fn close(&mut self, id: Option<i64>, closed: &ClosedFile) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let tx = self.conn.transaction()?;
        if let Some(id) = id {
            tx.execute("DELETE FROM in_tail_files WHERE id=?1", params![id])?;
        }
        tx.execute(
            "INSERT INTO logferry_closed (inode, size, end_marker, end_marker_size, head_hash, closed) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![closed.inode as i64, closed.size as i64, closed.end.hash as i64, closed.end.size as i64, closed.head.map(|h| h as i64), unix_ms(now)],
        )?;
        tx.execute(
            "DELETE FROM logferry_closed WHERE closed < ?1",
            params![unix_ms(now - CLOSED_KEPT)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Files read to their end and closed (the newest first).
    pub fn closed_files(&self) -> anyhow::Result<Vec<ClosedFile>> {
        let mut stmt = self.conn.prepare(
            "SELECT inode, size, end_marker, end_marker_size, head_hash FROM logferry_closed ORDER BY closed DESC",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ClosedFile {
                    inode: r.get::<_, i64>(0)? as u64,
                    size: r.get::<_, i64>(1)?.max(0) as u64,
                    end: Marker {
                        hash: r.get::<_, i64>(2)? as u64,
                        size: r.get::<_, i64>(3)?.max(0) as u64,
                    },
                    head: r.get::<_, Option<i64>>(4)?.map(|h| h as u64),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// XXH3-64 of up to [`MARKER_WINDOW`] bytes before `offset` (empty at the start of a file).
pub fn offset_marker(file: &std::fs::File, offset: u64) -> Marker {
    if offset == 0 {
        return Marker::default();
    }
    let window = offset.min(MARKER_WINDOW);
    match hash_before(file, offset, window) {
        Some(hash) => Marker { hash, size: window },
        None => Marker::default(),
    }
}

/// XXH3-64 of the first [`HEAD_WINDOW`] bytes, once the file has that many.
pub fn head_hash(file: &std::fs::File) -> Option<u64> {
    let mut buf = [0u8; HEAD_WINDOW];
    file.read_exact_at(&mut buf, 0).ok()?;
    Some(hash_head_bytes(&buf))
}

/// The [`head_hash`] of a file whose first bytes are `head`.
pub fn hash_head_bytes(head: &[u8; HEAD_WINDOW]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(head)
}

/// Whether `file` (of `size` bytes) is the file `row` was written for: the same first bytes
/// (when the row has them) and the row's marker before its offset. Inodes are reused as soon
/// as a file is deleted (the kubelet deletes what it compressed), and many log lines end alike,
/// so the marker alone is weak.
pub fn row_fits(file: &std::fs::File, row: &FileRow, size: u64) -> bool {
    row.head.is_none_or(|h| head_hash(file) == Some(h))
        && marker_matches(file, row.offset, row.marker, size)
}

/// Whether `file` (of `size` bytes) holds, before `offset`, the bytes `marker` was made of.
pub fn marker_matches(file: &std::fs::File, offset: u64, marker: Marker, size: u64) -> bool {
    if offset > size {
        return false;
    }
    if marker.size == 0 || offset == 0 {
        return true;
    }
    marker.size <= offset && hash_before(file, offset, marker.size) == Some(marker.hash)
}

/// XXH3-64 of the `window` (at most [`MARKER_WINDOW`]) bytes before `offset`.
fn hash_before(file: &std::fs::File, offset: u64, window: u64) -> Option<u64> {
    let mut buf = [0u8; MARKER_WINDOW as usize];
    let buf = buf.get_mut(..window as usize)?;
    file.read_exact_at(buf, offset - window).ok()?;
    Some(xxhash_rust::xxh3::xxh3_64(buf))
}

/// Whether `file` is the closed file `closed` (same size, first and last bytes; the inode is
/// not compared, so a compressed copy's decompressed bytes match too).
pub fn is_closed_file(file: &std::fs::File, size: u64, closed: &ClosedFile) -> bool {
    size == closed.size
        && closed.end.size > 0
        && head_hash(file) == closed.head
        && marker_matches(file, size, closed.end, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(path: &Path, on_corrupt: OnCorrupt) -> anyhow::Result<OffsetsDb> {
        OffsetsDb::open(path, "normal", false, "WAL", on_corrupt)
    }

    #[test]
    fn an_existing_empty_db_is_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let db = open(&path, OnCorrupt::Reset).unwrap();
        assert!(!db.existed_before);
        drop(db);
        let db = open(&path, OnCorrupt::Reset).unwrap();
        assert!(db.existed_before, "a DB without rows still means a restart");
    }

    #[test]
    fn a_damaged_db_is_moved_aside_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        let err = open(&path, OnCorrupt::Exit).err().expect("refused");
        assert!(format!("{err:#}").contains(&path.display().to_string()));
        let db = open(&path, OnCorrupt::Reset).unwrap();
        assert!(db.existed_before);
        let aside = db.moved_aside.clone().expect("moved aside");
        assert_eq!(std::fs::read(aside).unwrap(), vec![b'x'; 8192]);
        assert!(db.all().unwrap().is_empty());
    }

    #[test]
    fn a_truncated_db_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        {
            let mut db = open(&path, OnCorrupt::Reset).unwrap();
            for i in 0..2000 {
                db.insert(
                    &format!("/var/log/containers/{i}.log"),
                    "/x",
                    0,
                    i,
                    Marker::default(),
                    None,
                )
                .unwrap();
            }
            db.update_offsets(&[(1, 5, Marker::default())]).unwrap();
            db.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let db = open(&path, OnCorrupt::Reset).unwrap();
        assert!(db.moved_aside.is_some(), "a truncated DB is damage");
    }

    #[test]
    fn closed_files_are_remembered_by_size_and_last_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = open(&dir.path().join("o.db"), OnCorrupt::Reset).unwrap();
        let log = dir.path().join("a.log");
        std::fs::write(&log, "line one\nline two\n").unwrap();
        let file = std::fs::File::open(&log).unwrap();
        let size = file.metadata().unwrap().len();
        db.close(
            None,
            &ClosedFile {
                inode: 7,
                size,
                end: offset_marker(&file, size),
                head: head_hash(&file),
            },
        )
        .unwrap();
        let closed = db.closed_files().unwrap();
        assert!(is_closed_file(&file, size, &closed[0]));
        std::fs::write(&log, "line one\nline 2wo\n").unwrap();
        let other = std::fs::File::open(&log).unwrap();
        assert!(!is_closed_file(&other, size, &closed[0]));
    }
}
