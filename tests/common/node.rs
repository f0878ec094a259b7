//! A simulated node's container logs: the kubelet's layout (`pods/<ns>_<pod>_<uid>/<c>/0.log`
//! with `containers/<pod>_<ns>_<c>-<id>.log` symlinks) and its rotation (rename, gzip the
//! previous rotated file, keep 5), written by a background writer.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Container {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub prefix: String,
    pub written: usize,
    pub rotations: usize,
}

impl Container {
    /// Creates `pods/<ns>_<pod>_<uid>/<name>/0.log` and its symlink in `containers/`.
    pub fn new(root: &Path, ns: &str, pod: &str, name: &str) -> Container {
        let dir = root.join(format!("pods/{ns}_{pod}_0000-1111/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(root.join("containers")).unwrap();
        let log = dir.join("0.log");
        std::fs::write(&log, "").unwrap();
        let id = format!("{:064x}", pod.len() * 7919 + name.len());
        std::os::unix::fs::symlink(
            &log,
            root.join(format!("containers/{pod}_{ns}_{name}-{id}.log")),
        )
        .unwrap();
        Container {
            dir,
            log,
            prefix: format!("{pod}-{name}"),
            written: 0,
            rotations: 0,
        }
    }

    /// Appends `count` CRI lines `<prefix>-<n>`.
    pub fn write(&mut self, count: usize) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut buf = String::new();
        for n in self.written..self.written + count {
            buf.push_str(&format!(
                "2026-11-30T10:00:00.000000000Z stdout F {}-{n:08} padding to a realistic line length\n",
                self.prefix
            ));
        }
        f.write_all(buf.as_bytes()).unwrap();
        self.written += count;
    }

    /// The kubelet's rotation: drop the oldest beyond 5, gzip the previous rotated file, rename
    /// `0.log` to `0.log.<time>`, create a fresh `0.log`.
    pub fn rotate(&mut self) {
        let mut rotated: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().unwrap() != "0.log")
            .collect();
        rotated.sort();
        while rotated.len() >= 5 {
            std::fs::remove_file(rotated.remove(0)).unwrap();
        }
        for plain in rotated
            .iter()
            .filter(|p| p.extension().is_none_or(|e| e != "gz"))
        {
            let data = std::fs::read(plain).unwrap();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&data).unwrap();
            let gz_path = PathBuf::from(format!("{}.gz", plain.display()));
            std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
            std::fs::remove_file(plain).unwrap();
        }
        self.rotations += 1;
        let stamp = format!("20261130-1000{:02}", self.rotations);
        std::fs::rename(&self.log, self.dir.join(format!("0.log.{stamp}"))).unwrap();
        std::fs::write(&self.log, "").unwrap();
    }
}

/// Writes to every container at `lines_per_tick` per 10 ms, rotating each `0.log` past
/// `rotate_at` bytes as the kubelet does, until `stop` is set; returns the containers.
pub fn node_writer(
    mut cs: Vec<Container>,
    lines_per_tick: usize,
    rotate_at: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Container>> {
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            for c in cs.iter_mut() {
                c.write(lines_per_tick);
                if std::fs::metadata(&c.log).unwrap().len() > rotate_at {
                    c.rotate();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cs
    })
}
