//! The local-directory backend (`endpoint file:///dir`): objects are files under a root with
//! the same keys and bodies as in a bucket, for running with no cloud at all.
//!
//! Invariant 1: a new object is linked into place only once fsynced and never over an existing
//! file (unless replacing was asked for); an append that failed or crashed part-way is cut back
//! to the length it started from before it is made again, so its body lands once.

use std::path::{Path, PathBuf};

use super::{io_err, save_state, ErrorKind, Existing, StoreError};
use crate::outputs::objectstore::spool::UploadState;

/// `endpoint file:///dir`: objects are files under `dir` with the same keys and bodies. New
/// objects are written atomically (temp file, fsync, then a hard link that fails if the key is
/// taken, or a rename when replacing); appends extend the file in place.
pub struct LocalDir {
    pub root: PathBuf,
}

impl LocalDir {
    /// The root, or the nearest folder above it that exists, must be a writable directory
    /// (created at the first upload, not here).
    pub(super) fn probe(&self) -> Result<(), StoreError> {
        let existing = self.root.ancestors().find(|p| p.exists());
        match existing.map(std::fs::metadata) {
            Some(Ok(m)) if m.is_dir() && !m.permissions().readonly() => Ok(()),
            Some(Ok(m)) if m.is_dir() => Err(StoreError::new(
                ErrorKind::Permanent,
                format!("{} is read-only", self.root.display()),
            )),
            Some(Ok(_)) => Err(StoreError::new(
                ErrorKind::Retryable,
                format!("{}: a file is in the way", self.root.display()),
            )),
            Some(Err(e)) => Err(io_err(&self.root.display().to_string(), e)),
            None => Ok(()),
        }
    }

    fn target(&self, key: &str) -> Result<(PathBuf, PathBuf), StoreError> {
        let target = self.root.join(key);
        let parent = target.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&parent)
            .map_err(|e| io_err(&format!("cannot create {}", parent.display()), e))?;
        Ok((target, parent))
    }

    pub(super) fn put(&self, key: &str, body: &Path, existing: Existing) -> Result<(), StoreError> {
        let (target, parent) = self.target(key)?;
        let tmp = parent.join(format!(
            ".{}.logferry-tmp",
            target
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("object")
        ));
        let result = (|| -> std::io::Result<()> {
            let mut out = std::fs::File::create(&tmp)?;
            std::io::copy(&mut std::fs::File::open(body)?, &mut out)?;
            out.sync_all()?;
            match existing {
                Existing::Replace => std::fs::rename(&tmp, &target)?,
                Existing::Keep => {
                    std::fs::hard_link(&tmp, &target)?;
                    std::fs::remove_file(&tmp)?;
                }
            }
            std::fs::File::open(&parent)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::new(
                    ErrorKind::Conflict,
                    format!("{} already exists", target.display()),
                )
            } else {
                io_err(&format!("cannot write {}", target.display()), e)
            }
        })
    }

    /// Appends in place. The length before the first attempt is kept in the upload state, so
    /// a retry (after a partial write or a crash) cuts back to it first: the body lands once.
    pub(super) fn append(
        &self,
        key: &str,
        body: &Path,
        state: &mut UploadState,
        state_path: &Path,
    ) -> Result<(), StoreError> {
        let (target, parent) = self.target(key)?;
        let context = format!("cannot append to {}", target.display());
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&target)
            .map_err(|e| io_err(&context, e))?;
        let len = out.metadata().map_err(|e| io_err(&context, e))?.len();
        match state.append_base {
            Some(base) if len > base => out.set_len(base).map_err(|e| io_err(&context, e))?,
            Some(_) => {}
            None => {
                state.append_base = Some(len);
                save_state(state, state_path)?;
            }
        }
        let mut input = std::fs::File::open(body).map_err(|e| io_err("spool", e))?;
        std::io::copy(&mut input, &mut out).map_err(|e| io_err(&context, e))?;
        out.sync_all().map_err(|e| io_err(&context, e))?;
        if len == 0 {
            std::fs::File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(&context, e))?;
        }
        Ok(())
    }
}
