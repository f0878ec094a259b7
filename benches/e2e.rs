//! End-to-end throughput harness: generates a CRI log (deterministic seed, 1 GiB by default),
//! runs the real `logferry` binary on it (tail → null, tail → file) with `Read_from_Head On` +
//! `Exit_On_Eof On`, and reports MB/s, MB per CPU-second and peak RSS (from `wait4`).
//! With `FLUENT_BIT=/path/to/fluent-bit` it runs Fluent Bit on the same input and configs and
//! prints the ratios. The `s3` cases write gzip objects to a local directory (logferry only) and,
//! when `S3S_ENDPOINT`/`S3S_DATA`/`S3S_ACCESS_KEY`/`S3S_SECRET_KEY` are set (source
//! `target/peers/env` after `tests/peers/peers.sh start`), to s3s-fs for both agents; the
//! compressed size of what was stored is printed. With `AZURITE_ENDPOINT` set, tail → azure_blob
//! (shared key, both agents) goes to Azurite; with `GCS_ENDPOINT` set, tail → gcs (logferry only:
//! Fluent Bit 5.1's `gcs` needs a service-account key and Google's token endpoint) goes to the
//! GCS emulator, its token from a metadata-server stand-in the harness runs (`GCE_METADATA_HOST`).
//! The emulators are slow Node/Python servers: the figures that matter are the agent's own CPU
//! seconds and peak RSS, not MB/s.
//!
//! `cargo bench --bench e2e` (env: `E2E_BYTES` input size, default 1073741824; `E2E_DIR` work
//! directory, default `target/e2e`; `E2E_ONLY` runs the cases whose name contains it). MB = 10^6 bytes of the raw CRI file.
//!
//! The `bench` profile inherits `release`, whose binary is stripped. To look inside a run with
//! `perf record` or a flamegraph, use the `profiling` profile (release code, symbols and line
//! tables): `cargo bench --profile profiling --bench e2e`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod support;
use support::{wait_rusage, Run};

fn generate(path: &Path, bytes: u64) -> std::io::Result<()> {
    if std::fs::metadata(path)
        .map(|m| m.len() >= bytes)
        .unwrap_or(false)
    {
        return Ok(());
    }
    eprintln!("generating {} ({bytes} bytes)...", path.display());
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15; // fixed seed: the same file every time
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = [
        "GET",
        "POST",
        "/api/v1/items",
        "/healthz",
        "200",
        "404",
        "500",
        "user",
        "svc",
        "latency_ms",
        "request_id",
        "upstream",
        "timeout",
        "ok",
        "cache",
        "hit",
        "miss",
    ];
    let mut written = 0u64;
    let mut line = String::with_capacity(1024);
    let mut i = 0u64;
    while written < bytes {
        line.clear();
        let r = next();
        let stream = if r % 10 == 0 { "stderr" } else { "stdout" };
        let partial = r % 50 == 0;
        line.push_str(&format!(
            "2026-11-22T08:{:02}:{:02}.{:09}Z {stream} {} ",
            (i / 60_000) % 60,
            (i / 1000) % 60,
            (r >> 8) % 1_000_000_000,
            if partial { "P" } else { "F" }
        ));
        let n_words = 20 + (r >> 20) % 50;
        for w in 0..n_words {
            let x = next();
            line.push_str(words[(x % words.len() as u64) as usize]);
            line.push(if w % 7 == 6 { '=' } else { ' ' });
            if x % 5 == 0 {
                line.push_str(&format!("{}", x % 100_000));
                line.push(' ');
            }
        }
        line.push('\n');
        f.write_all(line.as_bytes())?;
        written += line.len() as u64;
        i += 1;
    }
    // End on a complete line so every record is emitted before EOF.
    f.write_all(b"2026-11-22T09:00:00.000000000Z stdout F end\n")?;
    f.flush()
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// A GKE metadata-server stand-in on 127.0.0.1: every request gets the same access token.
/// Returns its `host:port` for `GCE_METADATA_HOST`.
fn metadata_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let body = r#"{"access_token":"bench-token","expires_in":3599,"token_type":"Bearer"}"#;
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Creates a bucket in the GCS emulator (JSON API, no auth).
fn create_gcs_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let body = format!(r#"{{"name":"{bucket}"}}"#);
    let mut stream = std::net::TcpStream::connect(host).expect("GCS emulator");
    write!(
        stream,
        "POST /storage/v1/b?project=bench HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 200")
            || answer.starts_with("HTTP/1.1 200")
            || answer.contains(" 409 "),
        "creating bucket {bucket}: {}",
        answer.lines().next().unwrap_or_default()
    );
}

/// Runs the agent to its exit: its resource usage and wall-clock seconds.
fn run(binary: &str, config: &Path, env: &[(&str, String)]) -> (Run, f64) {
    let start = Instant::now();
    let mut cmd = Command::new(binary);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    if let (Ok(k), Ok(s)) = (
        std::env::var("S3S_ACCESS_KEY"),
        std::env::var("S3S_SECRET_KEY"),
    ) {
        cmd.env("AWS_ACCESS_KEY_ID", k)
            .env("AWS_SECRET_ACCESS_KEY", s)
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    let child = cmd
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let run = wait_rusage(child);
    (run, start.elapsed().as_secs_f64())
}

fn config(
    dir: &Path,
    name: &str,
    input: &Path,
    output: &str,
    mem_buf_limit: Option<&str>,
) -> PathBuf {
    let p = dir.join(format!("{name}.conf"));
    let limit = mem_buf_limit
        .map(|l| format!("    Mem_Buf_Limit {l}\n"))
        .unwrap_or_default();
    std::fs::write(
        &p,
        format!("[SERVICE]\n    Flush 1\n    Grace 600\n    Log_Level error\n[INPUT]\n    Name tail\n    Path {}\n    multiline.parser cri\n    Read_from_Head On\n    Exit_On_Eof On\n    Buffer_Chunk_Size 512k\n    Buffer_Max_Size 512k\n{limit}[OUTPUT]\n    Name {output}\n    Match *\n", input.display()),
    )
    .unwrap();
    p
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let bytes: u64 = std::env::var("E2E_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let dir = PathBuf::from(
        std::env::var("E2E_DIR")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/e2e").to_string()),
    );
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("cri-{bytes}.log"));
    generate(&input, bytes).unwrap();
    let size = std::fs::metadata(&input).unwrap().len() as f64 / 1e6;
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file_out = format!(
        "file\n    Path {}\n    File out\n    Format plain",
        out_dir.display()
    );
    let store = dir.join("store");
    let s3_common = "    compression gzip\n    s3_key_format /bench/$TAG/$UUID.gz\n    total_file_size 100M\n    upload_timeout 10m";
    // (name, output section, who runs it, where the stored bytes are)
    let mut cases: Vec<(&str, String, bool, Option<PathBuf>)> = vec![
        ("tail→null", "null".into(), true, None),
        ("tail→null Mem_Buf_Limit 5MB", "null".into(), true, None),
        (
            "tail→file (plain JSON)",
            file_out,
            true,
            Some(out_dir.clone()),
        ),
        (
            "tail→s3 gzip (local dir)",
            format!(
                "s3\n    bucket bench\n    endpoint file://{}\n    store_dir {}\n{s3_common}",
                store.display(),
                dir.join("spool").display()
            ),
            false,
            Some(store.clone()),
        ),
    ];
    if let (Ok(endpoint), Ok(data)) = (std::env::var("S3S_ENDPOINT"), std::env::var("S3S_DATA")) {
        let bucket = PathBuf::from(&data).join("e2e-bench");
        cases.push((
            "tail→s3 gzip (s3s-fs)",
            format!(
                "s3\n    bucket e2e-bench\n    endpoint {endpoint}\n    store_dir {}\n{s3_common}",
                dir.join("spool").display()
            ),
            true,
            Some(bucket),
        ));
    }
    if let Ok(endpoint) = std::env::var("AZURITE_ENDPOINT") {
        // Fluent Bit's emulator form: the endpoint without the account path.
        let host = endpoint.trim_end_matches("/devstoreaccount1");
        cases.push((
            "tail→azure_blob gzip (Azurite)",
            format!("azure_blob\n    account_name devstoreaccount1\n    shared_key Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==\n    container_name e2e-bench\n    blob_type blockblob\n    auto_create_container on\n    emulator_mode on\n    endpoint {host}\n    tls off\n    compress_blob on\n    buffer_dir {}\n    upload_file_size 100M\n    upload_timeout 10m", dir.join("spool").display()),
            true,
            None,
        ));
    }
    let mut metadata_host = None;
    if let Ok(endpoint) = std::env::var("GCS_ENDPOINT") {
        metadata_host = Some(metadata_server());
        create_gcs_bucket(&endpoint, "e2e-bench");
        cases.push((
            "tail→gcs gzip (emulator)",
            format!("gcs\n    bucket e2e-bench\n    endpoint {endpoint}\n    gcs_key_format bench/$TAG/$UUID.gz\n    compression gzip\n    store_dir {}\n    total_file_size 100M\n    upload_timeout 10m", dir.join("spool").display()),
            false,
            None,
        ));
    }
    let agent_env: Vec<(&str, String)> = metadata_host
        .map(|h| vec![("GCE_METADATA_HOST", h)])
        .unwrap_or_default();
    let fluent_bit = std::env::var("FLUENT_BIT").ok();
    println!("input: {} ({size:.0} MB)", input.display());
    println!(
        "{:<30} {:>10} {:>9} {:>12} {:>10} {:>10} {:>8}",
        "pipeline", "agent", "MB/s", "MB/CPU-s", "peak RSS", "stored MB", "status"
    );
    let only = std::env::var("E2E_ONLY").ok();
    for (i, (name, output, both, stored)) in cases.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let limit = name.contains("Mem_Buf_Limit").then_some("5MB");
        let cfg = config(&dir, &format!("case{i}"), &input, output, limit);
        let mut results = Vec::new();
        for (agent, bin) in [
            ("logferry", Some(env!("CARGO_BIN_EXE_logferry").to_string())),
            ("fluent-bit", fluent_bit.clone().filter(|_| *both)),
        ] {
            let Some(bin) = bin else { continue };
            for d in [&out_dir, &store, &dir.join("spool")] {
                let _ = std::fs::remove_dir_all(d);
            }
            std::fs::create_dir_all(&out_dir).unwrap();
            if let Some(s) = stored {
                let _ = std::fs::remove_dir_all(s);
                std::fs::create_dir_all(s).unwrap();
            }
            let (r, wall) = run(&bin, &cfg, &agent_env);
            let stored_mb = stored
                .as_ref()
                .map(|s| format!("{:.1}", dir_size(s) as f64 / 1e6))
                .unwrap_or_else(|| "-".into());
            println!(
                "{name:<30} {agent:>10} {:>9.1} {:>12.1} {:>7.1} MiB {stored_mb:>10} {:>8}",
                size / wall,
                size / r.cpu,
                r.max_rss_kib as f64 / 1024.0,
                if r.ok { "ok" } else { "FAILED" }
            );
            results.push((r, wall));
        }
        if let [ours, theirs] = results.as_slice() {
            println!(
                "{:<30} {:>10} {:>8.2}x {:>11.2}x {:>9.2}x",
                "",
                "FB/ours",
                theirs.1 / ours.1,
                theirs.0.cpu / ours.0.cpu,
                theirs.0.max_rss_kib as f64 / ours.0.max_rss_kib as f64
            );
        }
    }
}
