//! One tailed file: its open descriptor, read position, partial line, line assembler and the
//! batches in flight. Reading splits lines without copying them (slices of the read buffer).
//!
//! Invariant 1: `committed` only moves to the offset of a batch after that batch and every
//! earlier one of this file were acknowledged; a batch's offset never passes a line still held
//! by the multiline assembler or a long line being skipped.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::parsers::multiline::LineAssembler;
use crate::record::{Event, Value};

/// (device, inode): a file's identity across renames.
pub type FileId = (u64, u64);

pub fn identity(meta: &std::fs::Metadata) -> FileId {
    (meta.dev(), meta.ino())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Found under a path the input matches.
    Active,
    /// Renamed away or deleted: read to its end, then closed once acknowledged.
    Gone { since: Instant },
}

pub struct InFlight {
    pub seq: u64,
    pub offset: u64,
    pub acked: bool,
}

pub struct TailedFile {
    pub id: FileId,
    pub db_row: Option<i64>,
    pub path: PathBuf,
    /// The resolved path when opened (the target of a `/var/log/containers` symlink).
    pub real_path: PathBuf,
    pub tag: Arc<str>,
    pub file: File,
    /// Offset of the next byte to read.
    pub pos: u64,
    /// Bytes after the last newline, starting at `pos - partial.len()`.
    pub partial: BytesMut,
    /// Start offset of a too-long line being discarded up to its newline.
    pub skipping_from: Option<u64>,
    pub assembler: LineAssembler,
    pub committed: u64,
    pub committed_dirty: bool,
    pub inflight: VecDeque<InFlight>,
    pub next_seq: u64,
    pub presence: Presence,
    pub at_eof: bool,
    pub size: u64,
    /// The DB row has the hash of the file's first bytes.
    pub head_recorded: bool,
    /// When the file is looked at next: at once after it had data, later when it was idle.
    pub next_poll: Instant,
}

/// What one read produced.
pub struct ReadOutcome {
    pub events: Vec<Event>,
    pub bytes: u64,
    /// Offset that may be committed once these events are acknowledged.
    pub commit_offset: u64,
}

pub struct LineLimits {
    pub max_line: usize,
    pub skip_long_lines: bool,
    pub skip_empty_lines: bool,
    pub path_key: Option<Bytes>,
    pub offset_key: Option<Bytes>,
}

#[derive(Default)]
pub struct LineStats {
    pub skipped: u64,
    pub truncated: u64,
}

impl TailedFile {
    /// Follows `file` from `offset` (already sought to), nothing in flight.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: FileId,
        db_row: Option<i64>,
        path: PathBuf,
        real_path: PathBuf,
        tag: Arc<str>,
        file: File,
        offset: u64,
        size: u64,
        assembler: LineAssembler,
    ) -> Self {
        TailedFile {
            id,
            db_row,
            path,
            real_path,
            tag,
            file,
            pos: offset,
            partial: BytesMut::new(),
            skipping_from: None,
            assembler,
            committed: offset,
            committed_dirty: false,
            inflight: VecDeque::new(),
            next_seq: 0,
            presence: Presence::Active,
            at_eof: false,
            size,
            head_recorded: false,
            next_poll: Instant::now(),
        }
    }

    /// Reads up to `read_size` bytes and turns complete lines into events.
    pub fn read_chunk(
        &mut self,
        read_size: usize,
        limits: &LineLimits,
        stats: &mut LineStats,
    ) -> std::io::Result<Option<ReadOutcome>> {
        let meta = self.file.metadata()?;
        self.size = meta.len();
        if self.size < self.pos {
            tracing::info!(file = %self.path.display(), "file truncated: reading it again from the start");
            self.reset_to_start();
        }
        // An idle file costs one fstat: no buffer is allocated until there is something to read.
        let available = self.size - self.pos;
        if available == 0 {
            self.at_eof = true;
            return Ok(None);
        }
        let read_size = read_size.min(available as usize);
        let mut buf = BytesMut::with_capacity(self.partial.len() + read_size);
        buf.extend_from_slice(&self.partial);
        let base = self.pos - self.partial.len() as u64;
        self.partial = BytesMut::new();
        let already = buf.len();
        buf.resize(already + read_size, 0);
        let n = read_fully(&mut self.file, &mut buf[already..])?;
        buf.truncate(already + n);
        self.pos += n as u64;
        self.at_eof = self.pos >= self.size;
        if n == 0 {
            self.partial = BytesMut::from(&buf[..]);
            return Ok(None);
        }
        let mut events = Vec::new();
        let mut line_start = base;
        let mut buf = buf;
        // Copytruncate leaves NUL bytes at the head of the new content: skip them.
        if base == 0 {
            let nuls = buf.iter().take_while(|b| **b == 0).count();
            let _ = buf.split_to(nuls);
            line_start += nuls as u64;
        }
        while let Some(nl) = memchr::memchr(b'\n', &buf) {
            let mut line = buf.split_to(nl + 1).freeze();
            let line_len = line.len() as u64;
            line.truncate(line.len() - 1);
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if self.skipping_from.take().is_some() {
                // End of a long line that was being skipped.
                line_start += line_len;
                continue;
            }
            if line.len() > limits.max_line {
                if limits.skip_long_lines {
                    stats.skipped += 1;
                    tracing::warn!(file = %self.path.display(), offset = line_start, "skipping a {}-byte line longer than Buffer_Max_Size ({})", line.len(), limits.max_line);
                    line_start += line_len;
                    continue;
                }
                stats.truncated += 1;
                tracing::warn!(file = %self.path.display(), offset = line_start, "truncating a {}-byte line to Buffer_Max_Size ({})", line.len(), limits.max_line);
                line.truncate(limits.max_line);
            }
            if !(limits.skip_empty_lines && line.is_empty()) {
                let first = events.len();
                self.assembler.push(line, line_start, &mut events);
                decorate(
                    &mut events[first..],
                    limits,
                    &self.path,
                    line_start + line_len,
                );
            }
            line_start += line_len;
        }
        // No newline in what is left: keep it, unless it is already too long.
        if buf.len() > limits.max_line && self.skipping_from.is_none() {
            if limits.skip_long_lines {
                stats.skipped += 1;
                tracing::warn!(file = %self.path.display(), offset = line_start, "skipping a line longer than Buffer_Max_Size ({})", limits.max_line);
            } else {
                stats.truncated += 1;
                tracing::warn!(file = %self.path.display(), offset = line_start, "truncating a line longer than Buffer_Max_Size ({})", limits.max_line);
                let line = buf.split_to(limits.max_line).freeze();
                let first = events.len();
                self.assembler.push(line, line_start, &mut events);
                decorate(
                    &mut events[first..],
                    limits,
                    &self.path,
                    line_start + limits.max_line as u64,
                );
            }
            self.skipping_from = Some(line_start);
            buf.clear();
        }
        if self.skipping_from.is_some() {
            buf.clear();
        }
        // Keep only the partial line, not the read buffer it is a slice of (an idle file must
        // not pin a whole read's worth of memory).
        self.partial = BytesMut::from(&buf[..]);
        Ok(Some(ReadOutcome {
            events,
            bytes: n as u64,
            commit_offset: self.safe_commit_offset(),
        }))
    }

    /// The furthest offset that may be committed now: the end of complete lines, but never past
    /// a line held by the multiline assembler or a long line being skipped.
    fn safe_commit_offset(&self) -> u64 {
        let consumed = self.pos - self.partial.len() as u64;
        [
            Some(consumed),
            self.assembler.pending_since(),
            self.skipping_from,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(consumed)
    }

    /// Emits multiline groups that timed out (or all of them, when `all`).
    pub fn flush_pending(&mut self, all: bool, limits: &LineLimits) -> Option<ReadOutcome> {
        let mut events = Vec::new();
        if all {
            self.assembler.flush_all(&mut events);
        } else {
            self.assembler.flush_expired(Instant::now(), &mut events);
        }
        if events.is_empty() {
            return None;
        }
        decorate(&mut events, limits, &self.path, self.pos);
        Some(ReadOutcome {
            events,
            bytes: 0,
            commit_offset: self.safe_commit_offset(),
        })
    }

    pub fn reset_to_start(&mut self) {
        use std::io::Seek;
        let _ = self.file.seek(std::io::SeekFrom::Start(0));
        self.pos = 0;
        self.partial.clear();
        self.skipping_from = None;
        self.inflight.clear();
        self.committed = 0;
        self.committed_dirty = true;
        // New content: the first bytes are recorded again.
        self.head_recorded = false;
    }

    /// Registers a dispatched batch; returns its sequence number.
    pub fn track(&mut self, offset: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.inflight.push_back(InFlight {
            seq,
            offset,
            acked: false,
        });
        seq
    }

    /// Marks a batch acknowledged and advances `committed` over the acknowledged prefix.
    pub fn acknowledge(&mut self, seq: u64) {
        if let Some(entry) = self.inflight.iter_mut().find(|e| e.seq == seq) {
            entry.acked = true;
        }
        while self.inflight.front().is_some_and(|e| e.acked) {
            let e = self.inflight.pop_front().expect("checked");
            if e.offset > self.committed {
                self.committed = e.offset;
                self.committed_dirty = true;
            }
        }
    }

    /// Read to the file's current size (not a stale end-of-file flag: a paused input may not
    /// have looked since the file grew), everything acknowledged, nothing held back.
    pub fn drained(&self) -> bool {
        self.read_to_end()
            && self.inflight.is_empty()
            && self.partial.is_empty()
            && self.assembler.pending_since().is_none()
    }

    /// The read position is at the file's current size.
    pub fn read_to_end(&self) -> bool {
        self.file.metadata().is_ok_and(|m| self.pos >= m.len())
    }

    /// A rotated or deleted file read to its end whose last line has no newline: that line is
    /// complete now (nothing will be appended), so it is emitted with every held group.
    pub fn finish_last_line(&mut self, limits: &LineLimits) -> Option<ReadOutcome> {
        if self.partial.is_empty() || !self.read_to_end() {
            return None;
        }
        let line = std::mem::take(&mut self.partial).freeze();
        let line_start = self.pos - line.len() as u64;
        let mut events = Vec::new();
        if self.skipping_from.take().is_none() && !(limits.skip_empty_lines && line.is_empty()) {
            let line = line.slice(..line.len().min(limits.max_line));
            self.assembler.push(line, line_start, &mut events);
        }
        self.assembler.flush_all(&mut events);
        decorate(&mut events, limits, &self.path, self.pos);
        Some(ReadOutcome {
            events,
            bytes: 0,
            commit_offset: self.safe_commit_offset(),
        })
    }

    /// Nothing in flight, held by the multiline assembler or being skipped: the file can be
    /// closed and reopened at `committed` without losing or repeating a line (a partial last
    /// line starts at `committed` and is read again).
    pub fn reopenable_at_committed(&self) -> bool {
        self.inflight.is_empty()
            && self.assembler.pending_since().is_none()
            && self.skipping_from.is_none()
    }
}

fn decorate(events: &mut [Event], limits: &LineLimits, path: &std::path::Path, offset: u64) {
    if limits.path_key.is_none() && limits.offset_key.is_none() {
        return;
    }
    let path_value = limits
        .path_key
        .as_ref()
        .map(|_| Value::string(path.display().to_string()));
    for e in events {
        if let (Some(k), Some(v)) = (&limits.path_key, &path_value) {
            e.record.push(k.clone(), v.clone());
        }
        if let Some(k) = &limits.offset_key {
            e.record.push(k.clone(), Value::UInt(offset));
        }
    }
}

fn read_fully(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut total = 0;
    while total < buf.len() {
        match file.read(&mut buf[total..]) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parsers::multiline::LineMode;
    use std::io::Write;

    fn follow(path: &std::path::Path) -> TailedFile {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        TailedFile::new(
            identity(&meta),
            None,
            path.to_path_buf(),
            path.to_path_buf(),
            Arc::from("t"),
            file,
            0,
            meta.len(),
            LineAssembler::new(LineMode::Raw {
                key: Bytes::from_static(b"log"),
            }),
        )
    }

    fn limits() -> LineLimits {
        LineLimits {
            max_line: 1 << 20,
            skip_long_lines: false,
            skip_empty_lines: false,
            path_key: None,
            offset_key: None,
        }
    }

    #[test]
    fn a_file_that_grew_since_the_last_read_is_not_drained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let mut f = follow(&path);
        let out = f
            .read_chunk(1024, &limits(), &mut LineStats::default())
            .unwrap();
        assert_eq!(out.unwrap().events.len(), 2);
        assert!(f.drained());
        // Written after the last read (the input was paused, so nobody looked since).
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"three\n")
            .unwrap();
        assert!(f.at_eof, "the flag is stale");
        assert!(!f.drained(), "unread bytes mean not drained");
    }

    #[test]
    fn the_last_line_without_newline_is_finished_once_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ncut").unwrap();
        let mut f = follow(&path);
        let out = f
            .read_chunk(1024, &limits(), &mut LineStats::default())
            .unwrap();
        assert_eq!(out.unwrap().events.len(), 1);
        assert!(!f.drained());
        let last = f.finish_last_line(&limits()).expect("the cut line");
        assert_eq!(last.events.len(), 1);
        assert_eq!(last.commit_offset, 7);
        assert!(f.partial.is_empty());
    }

    #[test]
    fn an_idle_file_holds_no_read_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\nthree-without-newline").unwrap();
        let mut f = follow(&path);
        f.read_chunk(256 * 1024, &limits(), &mut LineStats::default())
            .unwrap();
        assert!(
            f.partial.capacity() < 1024,
            "the partial line is kept in its own small buffer, not the read buffer ({} bytes)",
            f.partial.capacity()
        );
        assert!(f
            .read_chunk(256 * 1024, &limits(), &mut LineStats::default())
            .unwrap()
            .is_none());
    }
}
