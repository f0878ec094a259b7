//! The offsets DB: SQLite with Fluent Bit's `in_tail_files` schema, so logferry takes over a
//! node where Fluent Bit ran (and the other way round) without re-shipping or skipping.
//!
//! Invariant 1: this module only stores what the caller commits, and the tail input commits an
//! offset only after every output acknowledged the records before it. Rows are keyed by inode
//! (newest id wins, as in Fluent Bit); `offset_marker` is XXH3-64 of up to 32 bytes before the
//! offset (Fluent Bit's `cfl_hash_64bits`), so inode reuse or a copytruncate while stopped is
//! detected and the file is read from its start instead of from the middle of other content.

use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

pub const MARKER_WINDOW: u64 = 32;

#[derive(Debug, Clone)]
pub struct FileRow {
    pub id: i64,
    pub name: String,
    pub offset: u64,
    pub inode: u64,
    pub marker: u64,
    pub marker_size: u64,
}

const SELECT_ROW: &str =
    "SELECT id, name, offset, inode, offset_marker, offset_marker_size FROM in_tail_files";

fn file_row(r: &rusqlite::Row) -> rusqlite::Result<FileRow> {
    let int = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.unwrap_or(0));
    Ok(FileRow {
        id: r.get(0)?,
        name: r.get(1)?,
        offset: int(2)?.max(0) as u64,
        inode: int(3)? as u64,
        marker: int(4)? as u64,
        marker_size: int(5)?.max(0) as u64,
    })
}

pub struct OffsetsDb {
    conn: Connection,
    /// The DB existed (with rows) before this start: files without a row appeared while the
    /// agent was down and are read from their head.
    pub existed_before: bool,
}

impl OffsetsDb {
    pub fn open(
        path: &Path,
        sync: &str,
        locking: bool,
        journal_mode: &str,
    ) -> anyhow::Result<Self> {
        let existed = path.exists();
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let conn = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("cannot open offsets DB '{}': {e}", path.display()))?;
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
               offset_marker_size INTEGER DEFAULT 0);",
        )?;
        // Databases written by Fluent Bit before v5 lack the marker columns.
        let columns: Vec<String> = conn
            .prepare("PRAGMA table_info(in_tail_files)")?
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<Result<_, _>>()?;
        for col in ["offset_marker", "offset_marker_size"] {
            if !columns.iter().any(|c| c == col) {
                conn.execute_batch(&format!(
                    "ALTER TABLE in_tail_files ADD COLUMN {col} INTEGER DEFAULT 0;"
                ))?;
            }
        }
        let rows: i64 = conn.query_row("SELECT COUNT(*) FROM in_tail_files", [], |r| r.get(0))?;
        Ok(OffsetsDb {
            conn,
            existed_before: existed && rows > 0,
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
        offset: u64,
        inode: u64,
        marker: (u64, u64),
    ) -> anyhow::Result<i64> {
        let created = crate::record::EventTime::now().sec;
        self.conn.execute(
            "INSERT INTO in_tail_files (name, offset, inode, created, offset_marker, offset_marker_size) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, offset as i64, inode as i64, created, marker.0 as i64, marker.1 as i64],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Writes several offsets in one transaction.
    pub fn update_offsets(&mut self, updates: &[(i64, u64, (u64, u64))]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("UPDATE in_tail_files SET offset=?1, offset_marker=?2, offset_marker_size=?3 WHERE id=?4")?;
            for (id, offset, (marker, size)) in updates {
                stmt.execute(params![*offset as i64, *marker as i64, *size as i64, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn rename(&self, id: i64, name: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE in_tail_files SET name=?1, rotated=1 WHERE id=?2",
            params![name, id],
        )?;
        Ok(())
    }

    pub fn set_name(&self, id: i64, name: &str) -> anyhow::Result<()> {
        self.conn.execute(
            "UPDATE in_tail_files SET name=?1 WHERE id=?2",
            params![name, id],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: i64) -> anyhow::Result<()> {
        self.conn
            .execute("DELETE FROM in_tail_files WHERE id=?1", params![id])?;
        Ok(())
    }
}

/// XXH3-64 of up to [`MARKER_WINDOW`] bytes before `offset` (0, 0 at the start of a file).
pub fn offset_marker(file: &std::fs::File, offset: u64) -> (u64, u64) {
    if offset == 0 {
        return (0, 0);
    }
    let window = offset.min(MARKER_WINDOW);
    let mut buf = vec![0u8; window as usize];
    match file.read_exact_at(&mut buf, offset - window) {
        Ok(()) => (xxhash_rust::xxh3::xxh3_64(&buf), window),
        Err(_) => (0, 0),
    }
}

/// Whether a stored offset is still valid for this file's content.
pub fn marker_matches(file: &std::fs::File, row: &FileRow, size: u64) -> bool {
    if row.offset > size {
        return false;
    }
    if row.marker_size == 0 || row.offset == 0 {
        return true;
    }
    if row.marker_size > row.offset {
        return false;
    }
    let mut buf = vec![0u8; row.marker_size as usize];
    match file.read_exact_at(&mut buf, row.offset - row.marker_size) {
        Ok(()) => xxhash_rust::xxh3::xxh3_64(&buf) == row.marker,
        Err(_) => false,
    }
}
