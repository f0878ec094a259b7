//! The object-store spool: durable per-tag buffers under `store_dir`, sealed chunks waiting for
//! upload, and their upload state.
//!
//! Invariant 1: a batch is acknowledged once its lines are appended to the tag's buffer file and
//! fsynced ([`Spool::commit`]); from then on the spool owns them until the upload is confirmed,
//! and a restart picks up every open buffer and sealed chunk. A write that fails half-way (a
//! full disk) is cut back to the last committed length ([`Spool::rollback`]), so the retry never
//! glues a torn record to the next one. Buffer ids are unique (tag hash, creation time in
//! nanoseconds, a counter; files are created with `create_new`), metadata is deleted only once
//! its data is gone, and a data file found without metadata (an orphan) is adopted and shipped.
//! Invariant 2: `store_dir_limit_size` bounds the spool; when it is full the writer waits for
//! uploads (inputs pause) instead of discarding data.
//!
//! Layout under `<store_dir>/<bucket>/`:
//! `open/<id>.data` + `.meta` (a tag's growing buffer), `sealed/<seq>.data` + `.meta` (ready to
//! upload), `sealed/<seq>.state` (key and upload progress), `sealed/<seq>.body` (the compressed
//! body), `sequence/index_metadata` (`$INDEX`, Fluent Bit's path).
//!
//! Recovery: every chunk and buffer is cut at its last complete line; the bytes cut are logged
//! with the file's name and counted ([`Recovery::damaged_bytes`], the
//! `logferry_output_spool_damaged_bytes_total` metric). A data file without readable metadata is
//! sealed under the tag of a sibling with the same tag hash, or `logferry.orphaned`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::EventTime;

/// The tag given to an orphaned data file whose tag cannot be recovered.
pub const ORPHAN_TAG: &str = "logferry.orphaned";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BufferMeta {
    tag: String,
    first_sec: i64,
    first_nsec: u32,
    created_unix: u64,
    /// For a sealed chunk: the open buffer it came from (to finish an interrupted seal).
    #[serde(default)]
    open_id: Option<String>,
}

impl BufferMeta {
    fn new(tag: &str, first: EventTime, created_unix: u64) -> BufferMeta {
        BufferMeta {
            tag: tag.to_string(),
            first_sec: first.sec,
            first_nsec: first.nsec,
            created_unix,
            open_id: None,
        }
    }

    fn sealed(self, seq: u64, data: PathBuf, size: u64) -> SealedChunk {
        SealedChunk {
            seq,
            tag: self.tag,
            first: EventTime {
                sec: self.first_sec,
                nsec: self.first_nsec,
            },
            created_unix: self.created_unix,
            data,
            size,
        }
    }
}

struct OpenBuffer {
    id: String,
    data: File,
    size: u64,
    /// Length at the last [`Spool::commit`]: what [`Spool::rollback`] cuts back to.
    committed: u64,
    meta: BufferMeta,
}

/// A chunk ready for upload.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    pub seq: u64,
    pub tag: String,
    pub first: EventTime,
    pub created_unix: u64,
    pub data: PathBuf,
    pub size: u64,
}

impl SealedChunk {
    pub fn state_path(&self) -> PathBuf {
        self.data.with_extension("state")
    }
    pub fn body_path(&self) -> PathBuf {
        self.data.with_extension("body")
    }
    /// The chunk's file name, for logs.
    pub fn name(&self) -> String {
        self.data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The compressed body of a chunk: its size and the records in it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct BodyInfo {
    pub size: u64,
    pub records: u64,
}

/// Where an upload got to; persisted after every step so a restart resumes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadState {
    pub key: Option<String>,
    /// The compressed body (`<seq>.body`) once written.
    #[serde(default)]
    pub body: Option<BodyInfo>,
    pub upload_id: Option<String>,
    /// (part number, ETag) of parts already uploaded.
    pub parts: Vec<(i32, String)>,
    /// Append by server-side copy: the (ETag, size) of the version the copied parts came from;
    /// the upload completes only if the object is still that version.
    #[serde(default)]
    pub copied: Option<(String, u64)>,
    /// Local-directory append: the object's length before this chunk was appended.
    #[serde(default)]
    pub append_base: Option<u64>,
    /// Append-blob append: the blob this chunk is being appended to (a rolled-over name after
    /// the block limit), its length before the chunk's first block there, and the body offset
    /// that block starts at.
    #[serde(default)]
    pub append_target: Option<AppendTarget>,
    /// Compose append (GCS): the temporary object holding this chunk until it is composed into
    /// the object at the key.
    #[serde(default)]
    pub component: Option<String>,
}

/// Where a chunk's blocks go in an append blob (see [`UploadState::append_target`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendTarget {
    pub blob: String,
    pub base: u64,
    pub body_offset: u64,
}

impl UploadState {
    pub fn load(path: &Path) -> UploadState {
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, &serde_json::to_vec(self).expect("serialisable"))
    }
    /// Forgets the upload's progress (an upload id the server refused, an object that changed
    /// under an append) so the next attempt starts over from the spooled body. `new_key` also
    /// forgets the key (a key found taken is rendered again).
    pub fn restart(&mut self, new_key: bool) {
        *self = UploadState {
            key: if new_key { None } else { self.key.take() },
            body: self.body,
            ..Default::default()
        };
    }
}

/// What [`Spool::open`] found from a previous run.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Sealed chunks (and adopted orphans), in upload order.
    pub chunks: Vec<SealedChunk>,
    /// Bytes cut from damaged chunks and buffers (a torn last record).
    pub damaged_bytes: u64,
    /// Data files found without metadata, sealed for upload.
    pub orphans: usize,
    pub open_buffers: usize,
}

pub struct Spool {
    root: PathBuf,
    open: HashMap<String, OpenBuffer>,
    /// Sealed chunks not yet uploaded: seq → (created, size).
    sealed: BTreeMap<u64, (u64, u64)>,
    used: u64,
    limit: u64,
    next_seq: u64,
    next_id: u64,
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn tag_hash(tag: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(tag.as_bytes()))
}

fn read_meta(path: &Path) -> Option<BufferMeta> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Cuts `path` after its last complete line; returns the bytes cut (logged with the file name).
fn cut_to_last_line(path: &Path) -> std::io::Result<u64> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let keep = crate::outputs::file::complete_lines_len(&f)?;
    if keep < len {
        f.set_len(keep)?;
        f.sync_all()?;
        tracing::warn!(chunk = %path.display(), bytes_dropped = len - keep, "damaged spool chunk: cut at its last complete line, the rest is shipped");
    }
    Ok(len - keep)
}

fn seq_of(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

fn has_ext(path: &Path, ext: &str) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(ext)
}

impl Spool {
    /// Opens (creating) the spool and recovers what a previous run left: sealed chunks, open
    /// buffers, and orphaned data files (see the module doc).
    pub fn open(root: &Path, limit: u64) -> std::io::Result<(Spool, Recovery)> {
        for sub in ["open", "sealed", "sequence"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let open_dir = root.join("open");
        let sealed_dir = root.join("sealed");
        let mut spool = Spool {
            root: root.to_path_buf(),
            open: HashMap::new(),
            sealed: BTreeMap::new(),
            used: 0,
            limit,
            next_seq: 0,
            next_id: 0,
        };
        let mut rec = Recovery::default();
        let sealed_files: Vec<PathBuf> = std::fs::read_dir(&sealed_dir)?
            .flatten()
            .map(|e| e.path())
            .collect();
        spool.next_seq = sealed_files
            .iter()
            .filter_map(|p| seq_of(p))
            .max()
            .map_or(0, |s| s + 1);
        // Tag hash → tag, to name orphaned data files.
        let mut tags: HashMap<String, String> = HashMap::new();
        let mut claimed: Vec<PathBuf> = Vec::new();
        for path in sealed_files.iter().filter(|p| has_ext(p, "meta")) {
            let (Some(seq), Some(meta)) = (seq_of(path), read_meta(path)) else {
                continue;
            };
            tags.insert(tag_hash(&meta.tag), meta.tag.clone());
            let data = path.with_extension("data");
            if let Some(id) = &meta.open_id {
                let open_data = open_dir.join(format!("{id}.data"));
                if !data.exists() && open_data.exists() {
                    // A seal interrupted before its rename: finish it.
                    std::fs::rename(&open_data, &data)?;
                }
                // The buffer's metadata goes only once its data is gone: a newer buffer that
                // reused the id (older versions) keeps its metadata.
                if !open_data.exists() {
                    let _ = std::fs::remove_file(open_dir.join(format!("{id}.meta")));
                }
            }
            if !data.exists() {
                let _ = std::fs::remove_file(path);
                continue;
            }
            let damaged = cut_to_last_line(&data)?;
            if damaged > 0 {
                rec.damaged_bytes += damaged;
                // The body and any upload progress were made from the damaged bytes.
                let _ = std::fs::remove_file(data.with_extension("body"));
                let state_path = data.with_extension("state");
                let mut state = UploadState::load(&state_path);
                state.restart(false);
                state.body = None;
                state.save(&state_path)?;
            }
            let size = std::fs::metadata(&data)?.len();
            spool.track_sealed(seq, meta.created_unix, size);
            claimed.push(data.clone());
            rec.chunks.push(meta.sealed(seq, data, size));
        }
        for entry in std::fs::read_dir(&open_dir)?.flatten() {
            let path = entry.path();
            if !has_ext(&path, "meta") {
                continue;
            }
            let data_path = path.with_extension("data");
            if !data_path.exists() {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(meta) = read_meta(&path) else {
                continue; // its data is adopted as an orphan below
            };
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            tags.insert(tag_hash(&meta.tag), meta.tag.clone());
            rec.damaged_bytes += cut_to_last_line(&data_path)?;
            claimed.push(data_path.clone());
            let data = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&data_path)?;
            let size = data.metadata()?.len();
            spool.used += size;
            let buf = OpenBuffer {
                id,
                data,
                size,
                committed: size,
                meta,
            };
            if spool.open.contains_key(&buf.meta.tag) {
                // Two buffers for one tag: the second goes straight to the upload queue.
                rec.chunks.push(spool.seal_buffer(buf)?);
            } else {
                rec.open_buffers += 1;
                spool.open.insert(buf.meta.tag.clone(), buf);
            }
        }
        let orphans: Vec<PathBuf> = std::fs::read_dir(&open_dir)?
            .flatten()
            .map(|e| e.path())
            .chain(sealed_files.iter().cloned())
            .filter(|p| has_ext(p, "data") && p.exists() && !claimed.contains(p))
            .collect();
        for data in orphans {
            let damaged = cut_to_last_line(&data)?;
            rec.damaged_bytes += damaged;
            let modified = std::fs::metadata(&data)?
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let name = data.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let tag = tags
                .get(name.split('-').next().unwrap_or(""))
                .cloned()
                .unwrap_or_else(|| ORPHAN_TAG.to_string());
            let meta = BufferMeta::new(
                &tag,
                EventTime {
                    sec: modified as i64,
                    nsec: 0,
                },
                modified,
            );
            let size = std::fs::metadata(&data)?.len();
            tracing::warn!(file = %data.display(), tag = %tag, bytes = size, "spool data without metadata (orphaned by an earlier run): shipping it");
            rec.orphans += 1;
            let chunk = spool.seal_file(&data, meta, size)?;
            rec.chunks.push(chunk);
        }
        rec.chunks.sort_by_key(|c| c.seq);
        Ok((spool, rec))
    }

    fn track_sealed(&mut self, seq: u64, created: u64, size: u64) {
        self.sealed.insert(seq, (created, size));
        self.used += size;
    }

    /// Writes a sealed chunk's metadata and moves `data` under `sealed/`.
    fn seal_file(
        &mut self,
        data: &Path,
        meta: BufferMeta,
        size: u64,
    ) -> std::io::Result<SealedChunk> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let sealed_dir = self.root.join("sealed");
        write_atomic(
            &sealed_dir.join(format!("{seq:020}.meta")),
            &serde_json::to_vec(&meta).expect("serialisable"),
        )?;
        let target = sealed_dir.join(format!("{seq:020}.data"));
        std::fs::rename(data, &target)?;
        File::open(&sealed_dir)?.sync_all()?;
        self.track_sealed(seq, meta.created_unix, size);
        Ok(meta.sealed(seq, target, size))
    }

    /// Seals an open buffer (already removed from `open`); `used` moves from open to sealed.
    fn seal_buffer(&mut self, buf: OpenBuffer) -> std::io::Result<SealedChunk> {
        buf.data.sync_data()?;
        let open_dir = self.root.join("open");
        let mut meta = buf.meta.clone();
        meta.open_id = Some(buf.id.clone());
        self.used -= buf.size;
        let chunk = self.seal_file(&open_dir.join(format!("{}.data", buf.id)), meta, buf.size)?;
        std::fs::remove_file(open_dir.join(format!("{}.meta", buf.id)))?;
        Ok(chunk)
    }

    pub fn is_full(&self) -> bool {
        self.limit > 0 && self.used >= self.limit
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes in sealed chunks (waiting for or in upload).
    pub fn sealed_bytes(&self) -> u64 {
        self.sealed.values().map(|(_, size)| size).sum()
    }

    /// When the oldest spooled data (open or sealed) was created, in Unix seconds.
    pub fn oldest_unix(&self) -> Option<u64> {
        self.open
            .values()
            .filter(|b| b.size > 0)
            .map(|b| b.meta.created_unix)
            .chain(self.sealed.values().map(|(created, _)| *created))
            .min()
    }

    /// The tag of the largest non-empty open buffer.
    pub fn largest_open(&self) -> Option<String> {
        self.open
            .values()
            .filter(|b| b.size > 0)
            .max_by_key(|b| b.size)
            .map(|b| b.meta.tag.clone())
    }

    /// Appends formatted lines to the tag's buffer; durable after [`Spool::commit`].
    pub fn append(&mut self, tag: &str, first: EventTime, body: &[u8]) -> std::io::Result<()> {
        if !self.open.contains_key(tag) {
            let buf = self.create_buffer(tag, first)?;
            self.open.insert(tag.to_string(), buf);
        }
        let buf = self.open.get_mut(tag).expect("inserted above");
        // Counted before the write: a partial write is cut back by `rollback`.
        buf.size += body.len() as u64;
        self.used += body.len() as u64;
        buf.data.write_all(body)
    }

    /// A new buffer file with a unique id (never reused, even within one second).
    fn create_buffer(&mut self, tag: &str, first: EventTime) -> std::io::Result<OpenBuffer> {
        let open_dir = self.root.join("open");
        loop {
            self.next_id += 1;
            let id = format!("{}-{:x}-{}", tag_hash(tag), unix_nanos(), self.next_id);
            let data_path = open_dir.join(format!("{id}.data"));
            let data = match OpenOptions::new()
                .create_new(true)
                .read(true)
                .append(true)
                .open(&data_path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let meta = BufferMeta::new(tag, first, unix_now());
            write_atomic(
                &open_dir.join(format!("{id}.meta")),
                &serde_json::to_vec(&meta).expect("serialisable"),
            )?;
            return Ok(OpenBuffer {
                id,
                data,
                size: 0,
                committed: 0,
                meta,
            });
        }
    }

    /// Fsyncs every buffer written since the last commit: from here its lines are acknowledged.
    pub fn commit(&mut self) -> std::io::Result<()> {
        for buf in self.open.values_mut().filter(|b| b.size != b.committed) {
            buf.data.sync_data()?;
            buf.committed = buf.size;
        }
        Ok(())
    }

    /// Cuts every buffer back to its last committed length (after a failed or partial write).
    pub fn rollback(&mut self) -> std::io::Result<()> {
        for buf in self.open.values_mut().filter(|b| b.size != b.committed) {
            buf.data.set_len(buf.committed)?;
            self.used -= buf.size - buf.committed;
            buf.size = buf.committed;
        }
        Ok(())
    }

    /// Tags whose buffer reached `max_size` or is older than `max_age_secs` (all when `everything`).
    pub fn due(&self, max_size: u64, max_age_secs: u64, everything: bool) -> Vec<String> {
        let now = unix_now();
        self.open
            .values()
            .filter(|b| {
                b.committed > 0
                    && (everything
                        || b.committed >= max_size
                        || now.saturating_sub(b.meta.created_unix) >= max_age_secs)
            })
            .map(|b| b.meta.tag.clone())
            .collect()
    }

    /// Moves a tag's buffer to the upload queue.
    pub fn seal(&mut self, tag: &str) -> std::io::Result<Option<SealedChunk>> {
        match self.open.remove(tag) {
            Some(buf) => self.seal_buffer(buf).map(Some),
            None => Ok(None),
        }
    }

    /// Forgets an uploaded chunk and deletes its files.
    pub fn remove_sealed(&mut self, chunk: &SealedChunk) {
        for path in [
            chunk.data.clone(),
            chunk.data.with_extension("meta"),
            chunk.state_path(),
            chunk.body_path(),
        ] {
            let _ = std::fs::remove_file(path);
        }
        if let Some((_, size)) = self.sealed.remove(&chunk.seq) {
            self.used = self.used.saturating_sub(size);
        }
    }

    /// Fluent Bit's `$INDEX`: incremented and persisted before each upload.
    pub fn next_index(&self) -> std::io::Result<u64> {
        let path = self.root.join("sequence").join("index_metadata");
        let current: u64 = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        write_atomic(&path, (current + 1).to_string().as_bytes())?;
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sec: i64) -> EventTime {
        EventTime { sec, nsec: 0 }
    }

    #[test]
    fn recovers_open_and_sealed_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, rec) = Spool::open(dir.path(), 0).unwrap();
        assert!(rec.chunks.is_empty());
        spool.append("a", t(5), b"{\"x\":1}\n").unwrap();
        spool
            .append("b", EventTime::default(), b"{\"y\":2}\n{\"y\":3}\n")
            .unwrap();
        spool.commit().unwrap();
        let chunk = spool.seal("a").unwrap().unwrap();
        assert_eq!(chunk.first.sec, 5);
        drop(spool);
        let (spool, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.chunks.len(), 1);
        assert_eq!(std::fs::read(&rec.chunks[0].data).unwrap(), b"{\"x\":1}\n");
        assert_eq!(spool.due(u64::MAX, u64::MAX, true), vec!["b".to_string()]);
        assert_eq!(spool.used(), 8 + 16);
        assert_eq!(spool.sealed_bytes(), 8);
        assert_eq!(spool.next_index().unwrap(), 0);
        assert_eq!(spool.next_index().unwrap(), 1);
    }

    /// Issue 1.5: sealed and reopened at once, the new buffer gets a new id and survives.
    #[test]
    fn a_buffer_reopened_at_once_survives_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 0).unwrap();
        spool.append("a", t(1), b"one\n").unwrap();
        spool.commit().unwrap();
        spool.seal("a").unwrap().unwrap();
        spool.append("a", t(2), b"two\n").unwrap();
        spool.commit().unwrap();
        drop(spool);
        let (spool, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.chunks.len(), 1);
        assert_eq!(rec.open_buffers, 1);
        assert_eq!(spool.due(0, 0, true), vec!["a".to_string()]);
        assert_eq!(spool.used(), 8);
    }

    /// Data left without metadata (by an older version's id reuse) is adopted under the tag of
    /// the sealed chunk it shares a tag hash with.
    #[test]
    fn orphaned_data_is_adopted_and_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 0).unwrap();
        spool.append("a", t(1), b"one\n").unwrap();
        spool.commit().unwrap();
        spool.seal("a").unwrap().unwrap();
        drop(spool);
        let orphan = dir.path().join(format!("open/{}-1.data", tag_hash("a")));
        std::fs::write(&orphan, b"two\nthr").unwrap();
        std::fs::write(dir.path().join("open/x-2.data"), b"who\n").unwrap();
        let (spool, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.orphans, 2);
        assert_eq!(rec.damaged_bytes, 3);
        let tags: Vec<&str> = rec.chunks.iter().map(|c| c.tag.as_str()).collect();
        assert_eq!(tags, vec!["a", "a", ORPHAN_TAG]);
        assert_eq!(std::fs::read(&rec.chunks[1].data).unwrap(), b"two\n");
        assert_eq!(spool.used(), 4 + 4 + 4);
    }

    /// Issue 1.6: a torn sealed chunk is cut at its last line and its upload state reset.
    #[test]
    fn a_torn_chunk_is_cut_at_its_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 0).unwrap();
        spool.append("a", t(1), b"one\ntwo\n").unwrap();
        spool.commit().unwrap();
        let chunk = spool.seal("a").unwrap().unwrap();
        drop(spool);
        let mut f = OpenOptions::new().append(true).open(&chunk.data).unwrap();
        f.write_all(b"{\"torn").unwrap();
        let (spool, rec) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(rec.damaged_bytes, 6);
        assert_eq!(std::fs::read(&rec.chunks[0].data).unwrap(), b"one\ntwo\n");
        assert_eq!(spool.used(), 8);
    }

    /// Issue 1.11: a failed write is cut back to the last committed length.
    #[test]
    fn rollback_cuts_uncommitted_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 0).unwrap();
        spool.append("a", t(1), b"one\n").unwrap();
        spool.commit().unwrap();
        spool.append("a", t(1), b"two\nthr").unwrap();
        spool.rollback().unwrap();
        spool.append("a", t(1), b"two\n").unwrap();
        spool.commit().unwrap();
        let chunk = spool.seal("a").unwrap().unwrap();
        assert_eq!(std::fs::read(&chunk.data).unwrap(), b"one\ntwo\n");
        assert_eq!(spool.used(), 8);
    }
}
