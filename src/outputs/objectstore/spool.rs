//! The object-store spool: durable per-tag buffers under `store_dir`, sealed chunks waiting for
//! upload, and their upload state.
//!
//! Invariant 1: a batch is acknowledged once its lines are appended to the tag's buffer file and
//! fsynced ([`Spool::sync`]); from then on the spool owns them until the upload is confirmed, and
//! a restart picks up every open buffer and sealed chunk. Invariant 2: `store_dir_limit_size`
//! bounds the spool; when it is full the writer waits for uploads (inputs pause) instead of
//! discarding data.
//!
//! Layout under `<store_dir>/<bucket>/`:
//! `open/<id>.data` + `.meta` (a tag's growing buffer), `sealed/<seq>.data` + `.meta` (ready to
//! upload), `sealed/<seq>.state` (key and multipart progress), `sequence/index_metadata`
//! (`$INDEX`, Fluent Bit's path).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::record::EventTime;

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
    fn sealed(self, seq: u64, data: PathBuf, size: u64) -> SealedChunk {
        SealedChunk {
            seq,
            tag: self.tag,
            first: EventTime {
                sec: self.first_sec,
                nsec: self.first_nsec,
            },
            data,
            size,
        }
    }
}

struct OpenBuffer {
    id: String,
    data: File,
    size: u64,
    meta: BufferMeta,
    dirty: bool,
}

/// A chunk ready for upload.
#[derive(Debug, Clone)]
pub struct SealedChunk {
    pub seq: u64,
    pub tag: String,
    pub first: EventTime,
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
}

/// Where an upload got to; persisted after every step so a restart resumes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadState {
    pub key: Option<String>,
    pub upload_id: Option<String>,
    /// (part number, ETag) of parts already uploaded.
    pub parts: Vec<(i32, String)>,
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
}

pub struct Spool {
    root: PathBuf,
    open: HashMap<String, OpenBuffer>,
    used: u64,
    limit: u64,
    next_seq: u64,
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

impl Spool {
    /// Opens (creating) the spool and recovers what a previous run left: open buffers and sealed
    /// chunks (returned in upload order).
    pub fn open(root: &Path, limit: u64) -> std::io::Result<(Spool, Vec<SealedChunk>)> {
        for sub in ["open", "sealed", "sequence"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let mut spool = Spool {
            root: root.to_path_buf(),
            open: HashMap::new(),
            used: 0,
            limit,
            next_seq: 0,
        };
        let mut sealed = Vec::new();
        // Sealed chunks first: a seal interrupted after its meta was written is completed here.
        for entry in std::fs::read_dir(root.join("sealed"))?.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("meta") {
                continue;
            }
            let Some(seq) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let meta: BufferMeta = match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                Some(m) => m,
                None => continue,
            };
            let data = path.with_extension("data");
            if !data.exists() {
                if let Some(id) = &meta.open_id {
                    let open_data = root.join("open").join(format!("{id}.data"));
                    if open_data.exists() {
                        std::fs::rename(&open_data, &data)?;
                    }
                }
            }
            if let Some(id) = &meta.open_id {
                let _ = std::fs::remove_file(root.join("open").join(format!("{id}.meta")));
            }
            let Ok(size) = std::fs::metadata(&data).map(|m| m.len()) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            spool.used += size;
            spool.next_seq = spool.next_seq.max(seq + 1);
            sealed.push(meta.sealed(seq, data, size));
        }
        sealed.sort_by_key(|c| c.seq);
        for entry in std::fs::read_dir(root.join("open"))?.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("meta") {
                continue;
            }
            let id = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_string();
            let meta: Option<BufferMeta> = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let data_path = path.with_extension("data");
            let (Some(meta), true) = (meta, data_path.exists()) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            let data = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&data_path)?;
            crate::outputs::file::cut_torn_tail(&data, &data_path)?;
            let size = data.metadata()?.len();
            spool.used += size;
            spool.open.insert(
                meta.tag.clone(),
                OpenBuffer {
                    id,
                    data,
                    size,
                    meta,
                    dirty: false,
                },
            );
        }
        Ok((spool, sealed))
    }

    pub fn is_full(&self) -> bool {
        self.limit > 0 && self.used >= self.limit
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// Appends formatted lines to the tag's buffer (durable after [`Spool::sync`]).
    pub fn append(&mut self, tag: &str, first: EventTime, body: &[u8]) -> std::io::Result<()> {
        if !self.open.contains_key(tag) {
            let id = format!(
                "{:016x}-{}",
                xxhash_rust::xxh3::xxh3_64(tag.as_bytes()),
                unix_now()
            );
            let meta = BufferMeta {
                tag: tag.to_string(),
                first_sec: first.sec,
                first_nsec: first.nsec,
                created_unix: unix_now(),
                open_id: None,
            };
            let data_path = self.root.join("open").join(format!("{id}.data"));
            let data = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(&data_path)?;
            write_atomic(
                &self.root.join("open").join(format!("{id}.meta")),
                &serde_json::to_vec(&meta).expect("serialisable"),
            )?;
            self.open.insert(
                tag.to_string(),
                OpenBuffer {
                    id,
                    data,
                    size: 0,
                    meta,
                    dirty: false,
                },
            );
        }
        let buf = self.open.get_mut(tag).expect("inserted above");
        buf.data.write_all(body)?;
        buf.size += body.len() as u64;
        buf.dirty = true;
        self.used += body.len() as u64;
        Ok(())
    }

    /// Fsyncs every buffer written since the last sync.
    pub fn sync(&mut self) -> std::io::Result<()> {
        for buf in self.open.values_mut().filter(|b| b.dirty) {
            buf.data.sync_data()?;
            buf.dirty = false;
        }
        Ok(())
    }

    /// Tags whose buffer reached `max_size` or is older than `max_age_secs` (all when `everything`).
    pub fn due(&self, max_size: u64, max_age_secs: u64, everything: bool) -> Vec<String> {
        let now = unix_now();
        self.open
            .values()
            .filter(|b| {
                b.size > 0
                    && (everything
                        || b.size >= max_size
                        || now.saturating_sub(b.meta.created_unix) >= max_age_secs)
            })
            .map(|b| b.meta.tag.clone())
            .collect()
    }

    /// Moves a tag's buffer to the upload queue.
    pub fn seal(&mut self, tag: &str) -> std::io::Result<Option<SealedChunk>> {
        let Some(buf) = self.open.remove(tag) else {
            return Ok(None);
        };
        buf.data.sync_data()?;
        let seq = self.next_seq;
        self.next_seq += 1;
        let sealed_dir = self.root.join("sealed");
        let mut meta = buf.meta.clone();
        meta.open_id = Some(buf.id.clone());
        write_atomic(
            &sealed_dir.join(format!("{seq:020}.meta")),
            &serde_json::to_vec(&meta).expect("serialisable"),
        )?;
        let data = sealed_dir.join(format!("{seq:020}.data"));
        std::fs::rename(
            self.root.join("open").join(format!("{}.data", buf.id)),
            &data,
        )?;
        std::fs::remove_file(self.root.join("open").join(format!("{}.meta", buf.id)))?;
        File::open(&sealed_dir)?.sync_all()?;
        Ok(Some(meta.sealed(seq, data, buf.size)))
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
        self.used = self.used.saturating_sub(chunk.size);
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

    #[test]
    fn recovers_open_and_sealed_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, sealed) = Spool::open(dir.path(), 0).unwrap();
        assert!(sealed.is_empty());
        spool
            .append("a", EventTime { sec: 5, nsec: 0 }, b"{\"x\":1}\n")
            .unwrap();
        spool
            .append("b", EventTime::default(), b"{\"y\":2}\n{\"y\":3}\n")
            .unwrap();
        spool.sync().unwrap();
        let chunk = spool.seal("a").unwrap().unwrap();
        assert_eq!(chunk.first.sec, 5);
        drop(spool);
        let (spool, sealed) = Spool::open(dir.path(), 0).unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(std::fs::read(&sealed[0].data).unwrap(), b"{\"x\":1}\n");
        assert_eq!(spool.due(u64::MAX, u64::MAX, true), vec!["b".to_string()]);
        assert_eq!(spool.used(), 8 + 16);
        assert_eq!(spool.next_index().unwrap(), 0);
        assert_eq!(spool.next_index().unwrap(), 1);
    }
}
