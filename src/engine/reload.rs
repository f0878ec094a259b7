//! Hot reload (`--enable-hot-reload`, `[SERVICE] Hot_Reload On`): a reload is asked for by
//! `SIGHUP`, `POST`/`PUT /api/v2/reload`, or a change to the config files on disk (the kubelet
//! swapping a ConfigMap's `..data` symlink), so no reloader sidecar is needed.
//!
//! Invariant (nothing lost, nothing twice beyond in-flight batches): the new config is loaded
//! and fully validated **before** anything stops; a bad config is logged and the running
//! pipeline keeps running untouched. A good one replaces the old pipeline the way a graceful
//! stop does: inputs stop reading, every batch already read is delivered and acknowledged
//! within `Grace` (tail offsets committed to the `DB`, spools fsynced), then the new pipeline
//! starts from those offsets and spools. The HTTP server stays up across reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Pipeline;

/// How often the config files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// What asked for a reload (for the log).
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    Http,
    ConfigChanged,
}

/// Builds the next pipeline from the config on disk: `Err` names what is wrong.
pub type Loader = Box<dyn Fn() -> Result<(Pipeline, Vec<PathBuf>), String> + Send>;

/// The reload state shared with the HTTP API.
#[derive(Clone)]
pub struct ReloadHandle {
    pub enabled: bool,
    /// Successful reloads (`hot_reload_count`, `fluentbit_hot_reloaded_times`).
    pub count: Arc<AtomicU64>,
    pub in_progress: Arc<AtomicBool>,
    requests: mpsc::UnboundedSender<Trigger>,
}

impl ReloadHandle {
    /// Asks for a reload; false when hot reload is off.
    pub fn request(&self, trigger: Trigger) -> bool {
        self.enabled && self.requests.send(trigger).is_ok()
    }
}

/// Owned by the run loop: receives reload requests and loads the next pipeline.
pub struct Reloader {
    pub handle: ReloadHandle,
    requests: mpsc::UnboundedReceiver<Trigger>,
    loader: Loader,
    /// The config files and the fingerprint of their contents the running pipeline came from.
    watched: Arc<std::sync::Mutex<(Vec<PathBuf>, u64)>>,
}

impl Reloader {
    /// `files`: the config files the running pipeline came from (watched for changes).
    pub fn new(enabled: bool, loader: Loader, files: Vec<PathBuf>) -> Reloader {
        let (tx, requests) = mpsc::unbounded_channel();
        Reloader {
            handle: ReloadHandle {
                enabled,
                count: Arc::new(AtomicU64::new(0)),
                in_progress: Arc::new(AtomicBool::new(false)),
                requests: tx,
            },
            requests,
            loader,
            watched: Arc::new(std::sync::Mutex::new({
                let seen = fingerprint(&files);
                (files, seen)
            })),
        }
    }

    /// Starts the SIGHUP listener and the config-file watcher (only when hot reload is on).
    pub fn start(&self) -> anyhow::Result<()> {
        if !self.handle.enabled {
            return Ok(());
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let handle = self.handle.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                handle.request(Trigger::Signal);
            }
        });
        let handle = self.handle.clone();
        let watched = self.watched.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let (files, seen) = watched.lock().expect("watched files").clone();
                let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&files)).await else {
                    continue;
                };
                let mut current = watched.lock().expect("watched files");
                // A reload in between already took these contents.
                if now != seen && current.1 == seen {
                    current.1 = now;
                    handle.request(Trigger::ConfigChanged);
                }
            }
        });
        tracing::info!(
            "hot reload on: SIGHUP, POST /api/v2/reload or a change to the config files reloads"
        );
        Ok(())
    }

    /// Waits for the next request whose config loads: the pipeline to switch to. A config
    /// that fails is logged and the wait goes on (the running pipeline is untouched).
    pub async fn next(&mut self) -> Pipeline {
        loop {
            let Some(trigger) = self.requests.recv().await else {
                return std::future::pending().await;
            };
            // Requests that queued up while this one is handled are the same reload.
            while self.requests.try_recv().is_ok() {}
            self.handle.in_progress.store(true, Ordering::SeqCst);
            tracing::info!(?trigger, "reloading the configuration");
            // Reading and validating files blocks: off the async workers' backs.
            match tokio::task::block_in_place(|| (self.loader)()) {
                Ok((pipeline, files)) => {
                    let seen = fingerprint(&files);
                    *self.watched.lock().expect("watched files") = (files, seen);
                    return pipeline;
                }
                Err(e) => {
                    self.handle.in_progress.store(false, Ordering::SeqCst);
                    tracing::error!("reload rejected, the running configuration stays: {e}");
                }
            }
        }
    }

    /// The new pipeline runs.
    pub fn done(&self) {
        self.handle.count.fetch_add(1, Ordering::SeqCst);
        self.handle.in_progress.store(false, Ordering::SeqCst);
        tracing::info!(
            reloads = self.handle.count.load(Ordering::SeqCst),
            "configuration reloaded"
        );
    }
}

/// A hash of the files' contents (missing files count as empty): any edit, or a ConfigMap's
/// symlink swap, changes it.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for f in files {
        hasher.update(f.as_os_str().as_encoded_bytes());
        hasher.update(&std::fs::read(Path::new(f)).unwrap_or_default());
    }
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_swap_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "one").unwrap();
        std::fs::write(&b, "two").unwrap();
        let link = dir.path().join("fluent-bit.conf");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let before = fingerprint(std::slice::from_ref(&link));
        assert_eq!(before, fingerprint(std::slice::from_ref(&link)));
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(before, fingerprint(std::slice::from_ref(&link)));
    }
}
