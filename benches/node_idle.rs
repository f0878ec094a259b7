//! A node's worth of files: `NODE_IDLE_FILES` idle container logs (default 500) plus one written
//! at `NODE_BUSY_RATE` lines/s (default 5,000), tail → null with a DB, as a DaemonSet runs.
//! Reports, for logferry and (with `FLUENT_BIT=/path/to/fluent-bit`) Fluent Bit on the same files:
//! CPU % of one core while every file is idle, CPU % while one is busy, RSS in each phase and
//! peak RSS (VmHWM), read from /proc.
//!
//! `cargo bench --bench node_idle` (env: `NODE_PHASE_SECS` length of each phase, default 20;
//! `NODE_DIR` work directory, default `target/node-idle`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    ticks / 100.0
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn cri_line(out: &mut Vec<u8>, n: u64) {
    writeln!(
        out,
        "2026-11-30T10:00:00.{:09}Z stdout F request {n} served path=/api/v1/items status=200 latency_ms={} upstream=svc-{}",
        n % 1_000_000_000,
        n % 97,
        n % 13
    )
    .unwrap();
}

fn prepare(dir: &Path, idle: u64) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    for i in 0..idle {
        let mut buf = Vec::new();
        for n in 0..100 {
            cri_line(&mut buf, n);
        }
        std::fs::write(dir.join(format!("logs/idle-{i:04}_ns_c-{i:064}.log")), buf).unwrap();
    }
    let busy = dir.join("logs/busy-0000_ns_c-busy.log");
    std::fs::write(&busy, "").unwrap();
    busy
}

fn config(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(
        &path,
        format!(
            "[SERVICE]\n    Flush 1\n    Log_Level warn\n[INPUT]\n    Name tail\n    Path {logs}/*.log\n    Tag kube.*\n    DB {dir}/{name}.db\n    multiline.parser cri\n    Mem_Buf_Limit 5MB\n    Skip_Long_Lines On\n    Refresh_Interval 10\n[OUTPUT]\n    Name null\n    Match *\n",
            logs = dir.join("logs").display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    path
}

struct Phase {
    cpu_percent: f64,
    rss_mib: f64,
}

fn measure(child: &Child, secs: u64, busy: Option<(&Path, u64)>) -> Phase {
    let pid = child.id();
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some((path, rate)) = busy {
            // Write in 10 ms steps to hold the rate.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            buf.clear();
            while n < due {
                cri_line(&mut buf, n);
                n += 1;
            }
            std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .unwrap()
                .write_all(&buf)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = start.elapsed().as_secs_f64();
    Phase {
        cpu_percent: (cpu_seconds(pid) - cpu0) / wall * 100.0,
        rss_mib: rss_mib(pid).0,
    }
}

fn run(label: &str, cmd: &mut Command, busy: &Path, secs: u64, rate: u64) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Let it start and read the idle files once.
    std::thread::sleep(Duration::from_secs(5));
    let idle = measure(&child, secs, None);
    let busy_phase = measure(&child, secs, Some((busy, rate)));
    let (_, peak) = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{label:<12} idle: {:5.1} % CPU, {:6.1} MiB RSS | busy ({rate} lines/s): {:5.1} % CPU, {:6.1} MiB RSS | peak RSS {:6.1} MiB",
        idle.cpu_percent, idle.rss_mib, busy_phase.cpu_percent, busy_phase.rss_mib, peak
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let idle = env_num("NODE_IDLE_FILES", 500);
    let rate = env_num("NODE_BUSY_RATE", 5_000);
    let secs = env_num("NODE_PHASE_SECS", 20);
    let dir =
        PathBuf::from(std::env::var("NODE_DIR").unwrap_or_else(|_| "target/node-idle".to_string()));
    let logferry = env!("CARGO_BIN_EXE_logferry");
    println!("{idle} idle files + 1 busy file, tail -> null, {secs} s per phase");
    let busy = prepare(&dir, idle);
    let cfg = config(&dir, "logferry");
    run(
        "logferry",
        Command::new(logferry).arg("-c").arg(&cfg),
        &busy,
        secs,
        rate,
    );
    if let Ok(fb) = std::env::var("FLUENT_BIT") {
        let busy = prepare(&dir, idle);
        let cfg = config(&dir, "fluent-bit");
        run(
            "fluent-bit",
            Command::new(fb).arg("-c").arg(&cfg),
            &busy,
            secs,
            rate,
        );
    }
}
