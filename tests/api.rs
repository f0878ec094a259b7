//! The monitoring API and network input through the real binary: Fluent Bit's metric names,
//! health flipping on output errors, and a tcp input that survives garbage and over-long records.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn health_flips_to_error_after_repeated_output_errors() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The file output points into a directory that does not exist (Mkdir off): every flush fails.
    let cfg = write_config(
        dir.path(),
        "a.conf",
        &format!(
            "[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n    Health_Check On\n    HC_Errors_Count 3\n    HC_Retry_Failure_Count 100\n    HC_Period 60\n    scheduler.base 1\n    scheduler.cap 1\n[INPUT]\n    Name dummy\n    Rate 20\n[OUTPUT]\n    Name file\n    Match *\n    Path {}/no/such/dir\n    Retry_Limit no_limits\n",
            dir.path().display()
        ),
    );
    let agent = Agent::start(dir.path(), &cfg);
    wait_until(Duration::from_secs(10), "API up", || {
        http_get(port, "/api/v1/health").is_some()
    });
    assert_eq!(
        http_get(port, "/api/v1/health").unwrap().0,
        200,
        "healthy before errors accumulate"
    );
    wait_until(Duration::from_secs(30), "health error", || {
        http_get(port, "/api/v1/health") == Some((500, "error\n".to_string()))
    });
    // `logferry healthcheck` (the container health check without curl) sees the same answers.
    let healthcheck = |path: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_logferry"))
            .args(["healthcheck", &format!("http://127.0.0.1:{port}{path}")])
            .output()
            .unwrap()
    };
    let uptime = healthcheck("/api/v1/uptime");
    assert!(uptime.status.success(), "{uptime:?}");
    let health = healthcheck("/api/v1/health");
    assert_eq!(health.status.code(), Some(1), "{health:?}");
    assert!(
        String::from_utf8_lossy(&health.stderr).contains("500"),
        "{health:?}"
    );
    let (status, body) = http_get(port, "/api/v2/health").unwrap();
    assert_eq!(status, 500);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "error");
    assert!(v["errors"].as_u64().unwrap() > 3);
    assert_eq!(v["error_limit"], 3);
    let (_, metrics) = http_get(port, "/api/v1/metrics").unwrap();
    let m: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert!(m["output"]["file.0"]["errors"].as_u64().unwrap() > 3);
    assert!(m["output"]["file.0"]["retries"].as_u64().unwrap() > 0);
    assert_eq!(
        m["output"]["file.0"]["proc_records"], 0,
        "nothing was delivered, so nothing counts as processed"
    );
    assert!(
        agent.log_text().contains("failed to flush"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn metrics_use_fluent_bit_names_and_count_delivered_records() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("x.log");
    append_numbered(&log, "m", 0, 250);
    let cfg = write_config(
        dir.path(),
        "a.conf",
        &format!(
            "[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n[INPUT]\n    Name tail\n    Path {}\n    Read_from_Head On\n[INPUT]\n    Name dummy\n    Tag hc\n    Samples 3\n[FILTER]\n    Name grep\n    Match *\n    Exclude log ^m-0000000[0-4]\n[OUTPUT]\n    Name null\n    Match hc\n[OUTPUT]\n    Name null\n    Alias sink\n    Match tail.*\n",
            log.display()
        ),
    );
    let _agent = Agent::start(dir.path(), &cfg);
    wait_until(Duration::from_secs(20), "records delivered", || {
        http_get(port, "/api/v1/metrics").is_some_and(|(_, b)| {
            let m: serde_json::Value = serde_json::from_str(&b).unwrap();
            m["output"]["sink"]["proc_records"] == 245 && m["output"]["null.0"]["proc_records"] == 3
        })
    });
    let (_, prom) = http_get(port, "/api/v2/metrics/prometheus").unwrap();
    for needle in [
        "fluentbit_input_records_total{name=\"tail.0\"} 250",
        "fluentbit_input_records_total{name=\"dummy.1\"} 3",
        "fluentbit_output_proc_records_total{name=\"sink\"} 245",
        "fluentbit_filter_drop_records_total{name=\"grep.0\"} 5",
        "fluentbit_output_errors_total{name=\"null.0\"} 0",
        "logferry_input_files_tracked{name=\"tail.0\"} 1",
        "logferry_input_lag_bytes{name=\"tail.0\"} 0",
        "fluentbit_uptime ",
    ] {
        assert!(prom.contains(needle), "missing {needle} in:\n{prom}");
    }
    let (_, up) = http_get(port, "/api/v1/uptime").unwrap();
    assert!(up.contains("uptime_sec"));
}

#[test]
fn tcp_input_skips_garbage_and_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        "a.conf",
        &format!("[INPUT]\n    Name tcp\n    Listen 127.0.0.1\n    Port {port}\n    Tag firelens-healthcheck\n    Format json\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File o\n    Format plain\n", dir.path().display()),
    );
    let agent = Agent::start(dir.path(), &cfg);
    let mut stream = None;
    wait_until(Duration::from_secs(10), "tcp listening", || {
        stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        stream.is_some()
    });
    let mut s = stream.unwrap();
    s.write_all(b"{\"a\":1}\n\x00\xff garbage {{{\n[1,2]\n{\"b\":\"two\"}\n")
        .unwrap();
    s.flush().unwrap();
    wait_until(Duration::from_secs(10), "two records", || {
        count_lines(&dir.path().join("o")) >= 2
    });
    assert_eq!(
        lines(&dir.path().join("o")),
        vec![r#"{"a":1}"#, r#"{"b":"two"}"#]
    );
    s.write_all(b"{\"c\":3}\n").unwrap();
    wait_until(
        Duration::from_secs(10),
        "same connection still works",
        || count_lines(&dir.path().join("o")) >= 3,
    );
    assert!(agent.log_text().contains("invalid JSON"));
}

#[test]
fn tcp_input_drops_a_record_over_buffer_size_and_keeps_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let cfg = write_config(
        dir.path(),
        "a.conf",
        &format!("[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n[INPUT]\n    Name tcp\n    Listen 127.0.0.1\n    Port {port}\n    Format none\n    Buffer_Size 1\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File o\n    Format plain\n", dir.path().display()),
    );
    let agent = Agent::start(dir.path(), &cfg);
    let mut a = None;
    wait_until(Duration::from_secs(10), "tcp listening", || {
        a = std::net::TcpStream::connect(("127.0.0.1", port)).ok();
        a.is_some()
    });
    let (mut a, mut b) = (
        a.unwrap(),
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap(),
    );
    // Buffer_Size 1 is 1 KiB: the 100 KB record is dropped, its neighbours are not.
    a.write_all(b"first\n").unwrap();
    a.write_all(&vec![b'x'; 100_000]).unwrap();
    b.write_all(b"other\n").unwrap();
    a.write_all(b"\nafter\n").unwrap();
    let out = dir.path().join("o");
    wait_until(Duration::from_secs(10), "three records", || {
        count_lines(&out) >= 3
    });
    let mut got = lines(&out);
    got.sort();
    assert_eq!(
        got,
        vec![
            r#"{"log":"after"}"#,
            r#"{"log":"first"}"#,
            r#"{"log":"other"}"#
        ]
    );
    assert!(
        agent
            .log_text()
            .contains("dropped a 100000-byte record longer than Buffer_Size"),
        "{}",
        agent.log_text()
    );
    let (_, prom) = http_get(api, "/api/v1/metrics/prometheus").unwrap();
    assert!(
        prom.contains("fluentbit_input_long_line_skipped_total{name=\"tcp.0\"} 1"),
        "{prom}"
    );
}
