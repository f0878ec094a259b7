//! Forward-protocol throughput harness: pre-encodes ~1 KB log records (the shape Docker's fluentd
//! driver sends: `container_id`, `container_name`, `source`, `log`) as Forward messages, sends
//! them over TCP to the real agent as fast as the agent reads them, and reports MB on the wire
//! per CPU-second and the agent's peak RSS (from `wait4`). No acks are requested.
//!
//! Cases:
//! - `forward→null PackedForward`: messages of ~1 MB holding many records in one `bin` blob.
//! - `forward→null Message`: one record per message, as Docker's driver sends.
//! - `forward→cloudwatch_logs`: PackedForward in, PutLogEvents out to a minimal CloudWatch Logs
//!   endpoint run by this harness. It only validates each request against the service limits
//!   (≤ 10,000 events, ≤ 1,048,576 bytes counting 26 per event, sorted, ≤ 24 h span) and counts
//!   the events, so the peer's CPU is not the agent's. It serves plain HTTP to logferry and HTTPS
//!   (self-signed, `tls.verify Off`) to Fluent Bit, whose `cloudwatch_logs` only speaks TLS.
//! - `forward→cloudwatch_logs paced`: the same at a fixed `FORWARD_RATE_MBS` (default 30) MB/s of
//!   log lines for `FORWARD_PACED_SECS` (default 20) seconds: every event must arrive (0 lost).
//!
//! `cargo bench --bench forward` (env: `FORWARD_BYTES` wire bytes per case, default 500000000;
//! `FORWARD_ONLY` runs the cases whose name contains it; `FLUENT_BIT=/path/to/fluent-bit` runs
//! Fluent Bit on the same inputs and configs and prints the ratios). MB = 10^6 bytes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;
use support::{wait_rusage, Run};

const TAG: &str = "app-firelens-0123456789abcdef";
/// Records per PackedForward message (~1 MB).
const PACKED_RECORDS: usize = 1000;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One record's `[EventTime, {…}]` entry; `n` varies the text deterministically.
fn entry(out: &mut Vec<u8>, n: u64, sec: u32) {
    const WORDS: [&str; 12] = [
        "GET",
        "POST",
        "/api/v1/items",
        "200",
        "404",
        "latency_ms",
        "request_id",
        "upstream",
        "cache",
        "hit",
        "miss",
        "user",
    ];
    rmp::encode::write_array_len(out, 2).unwrap();
    rmp::encode::write_ext_meta(out, 8, 0).unwrap();
    out.extend_from_slice(&sec.to_be_bytes());
    out.extend_from_slice(&((n % 1_000_000_000) as u32).to_be_bytes());
    rmp::encode::write_map_len(out, 4).unwrap();
    rmp::encode::write_str(out, "container_id").unwrap();
    rmp::encode::write_str(
        out,
        "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
    )
    .unwrap();
    rmp::encode::write_str(out, "container_name").unwrap();
    rmp::encode::write_str(out, "/ecs-app-1-app-8ce8f7d0a1b2c3d4e5f6").unwrap();
    rmp::encode::write_str(out, "source").unwrap();
    rmp::encode::write_str(
        out,
        if n.is_multiple_of(10) {
            "stderr"
        } else {
            "stdout"
        },
    )
    .unwrap();
    rmp::encode::write_str(out, "log").unwrap();
    let mut line = format!("{n:012} ");
    let mut i = n;
    while line.len() < 880 {
        line.push_str(WORDS[(i % WORDS.len() as u64) as usize]);
        line.push(' ');
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            >> 7;
    }
    rmp::encode::write_str(out, &line).unwrap();
}

/// Forward messages totalling about `bytes`, and the number of records in them.
fn encode(packed: bool, bytes: u64, first_sec: u32) -> (Vec<u8>, u64) {
    let mut wire = Vec::with_capacity(bytes as usize + (1 << 20));
    let mut records = 0u64;
    let mut blob = Vec::with_capacity(1 << 20);
    while (wire.len() as u64) < bytes {
        if packed {
            blob.clear();
            for _ in 0..PACKED_RECORDS {
                entry(&mut blob, records, first_sec + (records / 10_000) as u32);
                records += 1;
            }
            rmp::encode::write_array_len(&mut wire, 2).unwrap();
            rmp::encode::write_str(&mut wire, TAG).unwrap();
            rmp::encode::write_bin(&mut wire, &blob).unwrap();
        } else {
            // Message mode: [tag, time, record] — the entry's array header is the message's.
            let mut one = Vec::with_capacity(1100);
            entry(&mut one, records, first_sec + (records / 10_000) as u32);
            records += 1;
            rmp::encode::write_array_len(&mut wire, 3).unwrap();
            rmp::encode::write_str(&mut wire, TAG).unwrap();
            wire.extend_from_slice(&one[1..]);
        }
    }
    (wire, records)
}

/// The agent's input record count from the monitoring API (`/api/v1/metrics`).
fn input_records(api_port: u16) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", api_port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /api/v1/metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["input"]
        .as_object()?
        .values()
        .map(|i| i["records"].as_u64())
        .sum()
}

/// `VmHWM` of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Sends `wire` over two connections (split at a message boundary is not needed: each
/// connection gets its own whole copy of half the messages, encoded separately).
fn send(port: u16, parts: &[Vec<u8>], rate_bytes_per_sec: Option<u64>) {
    std::thread::scope(|s| {
        for part in parts {
            s.spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let started = Instant::now();
                let step = 256 * 1024;
                for (i, chunk) in part.chunks(step).enumerate() {
                    c.write_all(chunk).expect("send");
                    if let Some(rate) = rate_bytes_per_sec {
                        let due = ((i + 1) * step) as f64 / (rate as f64 / parts.len() as f64);
                        let ahead = due - started.elapsed().as_secs_f64();
                        if ahead > 0.0 {
                            std::thread::sleep(Duration::from_secs_f64(ahead));
                        }
                    }
                }
                c.flush().unwrap();
                // Keep the connection open until the agent has read everything.
                let _ = c.shutdown(std::net::Shutdown::Write);
                let mut sink = [0u8; 64];
                let _ = c.read(&mut sink);
            });
        }
    });
}

/// The minimal CloudWatch Logs endpoint: counts valid events, refuses invalid batches.
mod endpoint {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};

    #[derive(Default)]
    pub struct Counts {
        pub events: AtomicU64,
        pub requests: AtomicU64,
        pub invalid: AtomicU64,
    }

    /// Checks one PutLogEvents body against the service limits; the number of events if valid.
    fn validate(body: &[u8]) -> Result<u64, String> {
        let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let events = v["logEvents"].as_array().ok_or("no logEvents")?;
        if events.is_empty() || events.len() > 10_000 {
            return Err(format!("{} events", events.len()));
        }
        let mut size = 0usize;
        let mut last = i64::MIN;
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for e in events {
            let ts = e["timestamp"].as_i64().ok_or("no timestamp")?;
            let msg = e["message"].as_str().ok_or("no message")?;
            if ts < last {
                return Err("events not in chronological order".into());
            }
            last = ts;
            min = min.min(ts);
            max = max.max(ts);
            size += msg.len() + 26;
        }
        if size > 1_048_576 {
            return Err(format!("batch of {size} bytes"));
        }
        if max - min > 24 * 3600 * 1000 {
            return Err("batch spans more than 24 h".into());
        }
        Ok(events.len() as u64)
    }

    async fn answer(
        req: Request<Incoming>,
        counts: Arc<Counts>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let target = req
            .headers()
            .get("x-amz-target")
            .and_then(|t| t.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req.into_body().collect().await?.to_bytes();
        let (status, reply) = if target.ends_with("PutLogEvents") {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            match validate(&body) {
                Ok(n) => {
                    counts.events.fetch_add(n, Ordering::Relaxed);
                    (200, "{}".to_string())
                }
                Err(why) => {
                    counts.invalid.fetch_add(1, Ordering::Relaxed);
                    eprintln!("endpoint: invalid PutLogEvents: {why}");
                    (
                        400,
                        format!(r#"{{"__type":"InvalidParameterException","message":"{why}"}}"#),
                    )
                }
            }
        } else if target.ends_with("DescribeLogStreams") {
            (200, r#"{"logStreams":[]}"#.to_string())
        } else {
            (200, "{}".to_string())
        };
        Ok(Response::builder()
            .status(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-requestid", "bench")
            .body(Full::new(Bytes::from(reply)))
            .unwrap())
    }

    /// Serves on `port` (TLS with a self-signed certificate when `tls`) until the process ends.
    pub fn start(port: u16, tls: bool) -> Arc<Counts> {
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let acceptor = tls.then(|| {
                    let cert =
                        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
                    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
                        cert.signing_key.serialize_der().into(),
                    );
                    let config = rustls::ServerConfig::builder()
                        .with_no_client_auth()
                        .with_single_cert(vec![cert.cert.der().clone()], key)
                        .unwrap();
                    tokio_rustls::TlsAcceptor::from(Arc::new(config))
                });
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let counts = shared.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |r| answer(r, counts.clone()));
                        let http = hyper::server::conn::http1::Builder::new();
                        match acceptor {
                            Some(a) => {
                                if let Ok(s) = a.accept(stream).await {
                                    let _ = http
                                        .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                                        .await;
                                }
                            }
                            None => {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            });
        });
        ready_rx.recv().unwrap();
        counts
    }
}

struct Case {
    name: &'static str,
    packed: bool,
    cloudwatch: bool,
    paced: bool,
}

fn config(dir: &Path, name: &str, fwd_port: u16, api_port: u16, output: &str) -> PathBuf {
    let p = dir.join(format!("{name}.conf"));
    std::fs::write(
        &p,
        format!("[SERVICE]\n    Flush 1\n    Grace 30\n    Log_Level error\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api_port}\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {fwd_port}\n[OUTPUT]\n{output}\n"),
    )
    .unwrap();
    p
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bytes = env_num("FORWARD_BYTES", 500_000_000);
    let rate_mbs = env_num("FORWARD_RATE_MBS", 30);
    let paced_secs = env_num("FORWARD_PACED_SECS", 20);
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/forward-bench"));
    std::fs::create_dir_all(&dir).unwrap();
    let fluent_bit = std::env::var("FLUENT_BIT").ok();
    let only = std::env::var("FORWARD_ONLY").ok();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let cases = [
        Case {
            name: "forward→null PackedForward",
            packed: true,
            cloudwatch: false,
            paced: false,
        },
        Case {
            name: "forward→null Message",
            packed: false,
            cloudwatch: false,
            paced: false,
        },
        Case {
            name: "forward→cloudwatch_logs",
            packed: true,
            cloudwatch: true,
            paced: false,
        },
        Case {
            name: "forward→cloudwatch_logs paced",
            packed: true,
            cloudwatch: true,
            paced: true,
        },
    ];
    println!(
        "{:<32} {:>10} {:>9} {:>12} {:>10} {:>10} {:>8}",
        "pipeline", "agent", "MB/s", "MB/CPU-s", "peak RSS", "delivered", "status"
    );
    for case in &cases {
        if only
            .as_ref()
            .is_some_and(|o| !case.name.contains(o.as_str()))
        {
            continue;
        }
        // The paced case sends `rate` MB of log lines per second for `paced_secs`.
        let case_bytes = if case.paced {
            rate_mbs * 1_000_000 * paced_secs
        } else {
            bytes
        };
        let (half_a, records_a) = encode(case.packed, case_bytes / 2, now);
        let (half_b, records_b) = encode(case.packed, case_bytes / 2, now);
        let records = records_a + records_b;
        let wire = (half_a.len() + half_b.len()) as f64 / 1e6;
        let parts = [half_a, half_b];
        let mut results: Vec<Run> = Vec::new();
        for (agent, bin) in [
            ("logferry", Some(env!("CARGO_BIN_EXE_logferry").to_string())),
            ("fluent-bit", fluent_bit.clone()),
        ] {
            let Some(bin) = bin else { continue };
            let (fwd_port, api_port) = (free_port(), free_port());
            let mut counts = None;
            let output = if case.cloudwatch {
                let cw_port = free_port();
                let fb = agent == "fluent-bit";
                counts = Some(endpoint::start(cw_port, fb));
                let endpoint = if fb {
                    // Fluent Bit's cloudwatch_logs always speaks TLS (it refuses `tls On`).
                    format!("    endpoint 127.0.0.1\n    Port {cw_port}\n    tls.verify Off")
                } else {
                    format!("    endpoint http://127.0.0.1:{cw_port}")
                };
                format!("    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    log_group_name bench\n    log_stream_prefix bench-\n{endpoint}")
            } else {
                "    Name null\n    Match *".to_string()
            };
            let cfg = config(&dir, &format!("{agent}-case"), fwd_port, api_port, &output);
            let child: Child = Command::new(&bin)
                .arg("-c")
                .arg(&cfg)
                .env("AWS_ACCESS_KEY_ID", "bench")
                .env("AWS_SECRET_ACCESS_KEY", "bench")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            if !wait_for(Duration::from_secs(30), || {
                input_records(api_port).is_some()
            }) {
                eprintln!("{agent}: API on {api_port} never came up");
            }
            let rate = case.paced.then_some(rate_mbs * 1_000_000);
            let sending = Instant::now();
            send(fwd_port, &parts, rate);
            let delivered = |c: &Option<Arc<endpoint::Counts>>| match c {
                Some(c) => c.events.load(Ordering::Relaxed),
                None => input_records(api_port).unwrap_or(0),
            };
            wait_for(Duration::from_secs(600), || delivered(&counts) >= records);
            let got = delivered(&counts);
            // Peak RSS of the agent's own image: `wait4`'s ru_maxrss would include the pages
            // the child shared with this (large) harness process before exec.
            let peak_kib = peak_rss_kib(child.id());
            let busy = sending.elapsed().as_secs_f64();
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let mut r = wait_rusage(child);
            r.max_rss_kib = peak_kib;
            r.ok &= got == records;
            let invalid = counts
                .as_ref()
                .map(|c| c.invalid.load(Ordering::Relaxed))
                .unwrap_or(0);
            println!(
                "{:<32} {agent:>10} {:>9.1} {:>12.1} {:>7.1} MiB {:>10} {:>8}",
                case.name,
                wire / busy,
                wire / r.cpu,
                r.max_rss_kib as f64 / 1024.0,
                format!("{got}/{records}"),
                if r.ok && invalid == 0 { "ok" } else { "FAILED" }
            );
            results.push(r);
        }
        if let [ours, theirs] = results.as_slice() {
            println!(
                "{:<32} {:>10} {:>9} {:>11.2}x {:>9.2}x",
                "",
                "FB/ours",
                "",
                theirs.cpu / ours.cpu,
                theirs.max_rss_kib as f64 / ours.max_rss_kib as f64
            );
        }
    }
}
