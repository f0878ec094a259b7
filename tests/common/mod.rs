//! Helpers for integration tests: run the real `logferry` binary on a config in a temp dir,
//! wait for conditions, read what outputs wrote, talk HTTP to the monitoring API.
#![allow(dead_code)]

pub mod azure;
pub mod cloudwatch;
pub mod gcs;
pub mod kube;
pub mod node;
pub mod peers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
}

impl Agent {
    pub fn start(dir: &Path, config: &Path) -> Agent {
        Self::start_with(dir, config, &[])
    }

    pub fn start_with(dir: &Path, config: &Path, extra: &[&str]) -> Agent {
        Self::start_custom(dir, config, |c| {
            c.args(extra);
        })
    }

    /// Starts with a hook to adjust the command (environment, extra flags).
    pub fn start_custom(dir: &Path, config: &Path, adjust: impl FnOnce(&mut Command)) -> Agent {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("agent-{n}.stderr"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_logferry"));
        cmd.arg("-c")
            .arg(config)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(log_file);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("spawn logferry");
        Agent { child, log }
    }

    /// Starts and waits until the tail input made its first scan: from then on, files written
    /// are new data to it (read from where they stand, or from the head when created later).
    pub fn start_tailing(dir: &Path, config: &Path) -> Agent {
        let agent = Self::start(dir, config);
        wait_until(Duration::from_secs(60), "tail input started", || {
            agent.log_text().contains("tail input started")
        });
        agent
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Freezes the agent (SIGSTOP), as a node starved of CPU would; [`Agent::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; panics (after killing) if it takes longer than `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > limit {
                self.kill9();
                panic!(
                    "logferry did not exit within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

pub fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// The `log` values of a JSON Lines file, in order.
pub fn log_values(path: &Path) -> Vec<String> {
    lines(path)
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"));
            v["log"]
                .as_str()
                .unwrap_or_else(|| panic!("no log key in {l}"))
                .to_string()
        })
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Appends `count` numbered lines `prefix-<n>` (n from `start`) to `path`.
pub fn append_numbered(path: &Path, prefix: &str, start: usize, count: usize) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buf = String::new();
    for n in start..start + count {
        buf.push_str(&format!(
            "{prefix}-{n:08} some padding text to make the line a realistic length\n"
        ));
    }
    f.write_all(buf.as_bytes()).unwrap();
}

/// Asserts the `log` values hold every `prefix-<n>` for n in 0..count; returns duplicate count.
pub fn assert_all_present(values: &[String], prefix: &str, count: usize) -> usize {
    let mut seen = vec![0u32; count];
    for v in values {
        if let Some(rest) = v.strip_prefix(&format!("{prefix}-")) {
            let n: usize = rest[..8].parse().unwrap();
            if n < count {
                seen[n] += 1;
            }
        }
    }
    let missing: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 0)
        .map(|(i, _)| i)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {count} lines missing, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    seen.iter().map(|c| c.saturating_sub(1) as usize).sum()
}

/// Lines waiting in an object-store spool's `open/` buffers.
pub fn spooled_lines(open_dir: &Path) -> usize {
    std::fs::read_dir(open_dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "data"))
                .map(|e| count_lines(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// The `log` values of an object body: JSON Lines, plain or as gzip members / zstd frames
/// (sniffed by magic bytes). A local-directory object read while an append is being written
/// ends in a partial line: only whole lines count.
pub fn object_logs(body: &[u8]) -> Vec<String> {
    use std::io::Read;
    let text = if body.starts_with(&[0x1f, 0x8b]) {
        let mut t = String::new();
        flate2::read::MultiGzDecoder::new(body)
            .read_to_string(&mut t)
            .unwrap();
        t
    } else if body.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        String::from_utf8(zstd::stream::decode_all(body).unwrap()).unwrap()
    } else {
        let whole = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8(body[..whole].to_vec()).unwrap()
    };
    text.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["log"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// The `log` values of every object under a local object store directory (`endpoint
/// file://...`), temp files skipped.
pub fn logs_under(root: &Path) -> Vec<String> {
    fn walk(path: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.extend(object_logs(&std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// The sum of a Prometheus series over outputs (0 while the agent's HTTP server is not up).
pub fn metric(port: u16, name: &str) -> u64 {
    let body = http_get(port, "/api/v2/metrics/prometheus").map_or(String::new(), |r| r.1);
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A test CA and a server certificate for 127.0.0.1 and localhost, as PEM files in `dir`:
/// (ca.pem, server.pem, server.key).
pub fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "logferry test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}
