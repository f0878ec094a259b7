//! End-to-end throughput harness: generates a CRI log (deterministic seed, 1 GiB by default),
//! runs the real `logferry` binary on it (tail → null, tail → file) with `Read_from_Head On` +
//! `Exit_On_Eof On`, and reports MB/s, MB per CPU-second and peak RSS (from `wait4`).
//! With `FLUENT_BIT=/path/to/fluent-bit` it runs Fluent Bit on the same input and configs and
//! prints the ratios.
//!
//! `cargo bench --bench e2e` (env: `E2E_BYTES` input size, default 1073741824; `E2E_DIR` work
//! directory, default `target/e2e`). MB = 10^6 bytes of the raw CRI file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

struct Run {
    wall: f64,
    cpu: f64,
    max_rss_kib: i64,
    ok: bool,
}

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

fn run(binary: &str, config: &Path) -> Run {
    let start = Instant::now();
    let child = Command::new(binary)
        .arg("-c")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child; `usage` is a valid out-pointer.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    std::mem::forget(child);
    Run {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
        ok: r == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
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
        format!("[SERVICE]\n    Flush 1\n    Log_Level error\n[INPUT]\n    Name tail\n    Path {}\n    multiline.parser cri\n    Read_from_Head On\n    Exit_On_Eof On\n    Buffer_Chunk_Size 512k\n    Buffer_Max_Size 512k\n{limit}[OUTPUT]\n    Name {output}\n    Match *\n", input.display()),
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
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("tail→null", "null".into(), None),
        ("tail→null Mem_Buf_Limit 5MB", "null".into(), Some("5MB")),
        ("tail→file (plain JSON)", file_out, None),
    ];
    let fluent_bit = std::env::var("FLUENT_BIT").ok();
    println!("input: {} ({size:.0} MB)", input.display());
    println!(
        "{:<30} {:>10} {:>9} {:>12} {:>10} {:>8}",
        "pipeline", "agent", "MB/s", "MB/CPU-s", "peak RSS", "status"
    );
    for (i, (name, output, limit)) in cases.iter().enumerate() {
        let cfg = config(&dir, &format!("case{i}"), &input, output, *limit);
        let mut results = Vec::new();
        for (agent, bin) in [
            ("logferry", Some(env!("CARGO_BIN_EXE_logferry").to_string())),
            ("fluent-bit", fluent_bit.clone()),
        ] {
            let Some(bin) = bin else { continue };
            let _ = std::fs::remove_file(out_dir.join("out"));
            let r = run(&bin, &cfg);
            println!(
                "{name:<30} {agent:>10} {:>9.1} {:>12.1} {:>7.1} MiB {:>8}",
                size / r.wall,
                size / r.cpu,
                r.max_rss_kib as f64 / 1024.0,
                if r.ok { "ok" } else { "FAILED" }
            );
            results.push(r);
        }
        if let [ours, theirs] = results.as_slice() {
            println!(
                "{:<30} {:>10} {:>9.2}x {:>11.2}x {:>10.2}x",
                "",
                "ratio",
                theirs.wall / ours.wall,
                theirs.cpu / ours.cpu,
                ours.max_rss_kib as f64 / theirs.max_rss_kib as f64
            );
        }
    }
}
