//! The `forward` input driven by real Forward clients (fluent-logger and msgpack-built frames
//! from `tests/peers/forward_client.py`), and the `forward` output between two logferry
//! processes. Every test runs the real binary and counts what reached the destination.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::peers::Peers;
use common::*;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/forward_client.py");

/// Runs the Python client; returns (sent, acked).
fn client(
    addr: &str,
    mode: &str,
    tag: &str,
    prefix: &str,
    start: usize,
    count: usize,
    per_frame: usize,
) -> (usize, usize) {
    let out = Command::new(Peers::get().var("PEERS_PYTHON"))
        .args([CLIENT, addr, mode, tag, prefix])
        .args([start.to_string(), count.to_string(), per_frame.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    (words[1].parse().unwrap(), words[3].parse().unwrap())
}

/// `seq → (count, date)` of a JSON Lines file written by the `file` output.
fn records(path: &Path) -> HashMap<u64, (usize, String)> {
    let mut seen: HashMap<u64, (usize, String)> = HashMap::new();
    for l in lines(path) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {l}"));
        let e = seen
            .entry(seq)
            .or_insert((0, v["date"].as_str().unwrap_or("").to_string()));
        e.0 += 1;
    }
    seen
}

/// The time the client gives record `n`: 1700000000 + n seconds and n microseconds.
fn expected_date(n: u64) -> String {
    let t = chrono::DateTime::from_timestamp(1_700_000_000 + n as i64, n as u32 * 1000).unwrap();
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Asserts records `start..start+count` are each in `path` exactly once with their time.
fn assert_exactly_once(path: &Path, start: u64, count: u64) {
    let seen = records(path);
    for n in start..start + count {
        let (c, date) = seen
            .get(&n)
            .unwrap_or_else(|| panic!("{}: record {n} missing", path.display()));
        assert_eq!(*c, 1, "{}: record {n} written {c} times", path.display());
        assert_eq!(
            date,
            &expected_date(n),
            "{}: time of record {n}",
            path.display()
        );
    }
    assert_eq!(
        seen.len() as u64,
        count,
        "{}: unexpected records",
        path.display()
    );
}

fn file_output(dir: &Path) -> String {
    format!(
        "[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    Format json_lines\n    json_date_key date\n    json_date_format iso8601\n    Retry_Limit no_limits\n",
        dir.display()
    )
}

fn wait_lines(path: &Path, n: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("{n} lines in {}", path.display()),
        || count_lines(path) >= n,
    );
}

fn start_forward(dir: &Path, config: &str) -> Agent {
    let cfg = write_config(dir, "forward.conf", config);
    let agent = Agent::start(dir, &cfg);
    wait_until(Duration::from_secs(30), "forward input listening", || {
        agent.log_text().contains("forward input listening")
    });
    agent
}

#[test]
fn every_mode_arrives_once_with_its_tag_and_time_and_chunks_are_acked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let _agent = start_forward(
        dir.path(),
        &format!(
            "[SERVICE]\n    Flush 1\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n    Tag_Prefix fw.\n{}",
            file_output(&out)
        ),
    );
    let addr = format!("127.0.0.1:{port}");
    // Message mode through fluent-logger (EventTime, no chunk: nothing to ack).
    assert_eq!(client(&addr, "message", "m", "m", 0, 200, 1), (200, 0));
    for mode in ["forward", "packed", "gzip", "zstd"] {
        let (sent, acked) = client(&addr, mode, mode, mode, 0, 500, 37);
        assert_eq!((sent, acked), (500, 500), "{mode}");
    }
    for (tag, n) in [
        ("m", 200),
        ("forward", 500),
        ("packed", 500),
        ("gzip", 500),
        ("zstd", 500),
    ] {
        let path = out.join(format!("fw.{tag}"));
        wait_lines(&path, n);
        assert_exactly_once(&path, 0, n as u64);
    }
}

#[test]
fn firelens_unix_socket_and_tcp_inputs_run_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let sock = dir.path().join("fluent.sock");
    // A socket file left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let port = free_port();
    let _agent = start_forward(
        dir.path(),
        &format!(
            "[INPUT]\n    Name forward\n    Mem_Buf_Limit 25MB\n    unix_path {}\n    unix_perm 0666\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n{}",
            sock.display(),
            file_output(&out)
        ),
    );
    wait_until(Duration::from_secs(30), "both inputs listening", || {
        _agent.log_text().matches("forward input listening").count() == 2
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    let unix = format!("unix:{}", sock.display());
    assert_eq!(
        client(&unix, "message", "app-firelens-1", "u", 0, 300, 1),
        (300, 0)
    );
    assert_eq!(
        client(&unix, "gzip", "app-firelens-1", "u", 300, 300, 50),
        (300, 300)
    );
    assert_eq!(
        client(
            &format!("127.0.0.1:{port}"),
            "packed",
            "tcp",
            "t",
            0,
            300,
            50
        ),
        (300, 300)
    );
    wait_lines(&out.join("app-firelens-1"), 600);
    assert_exactly_once(&out.join("app-firelens-1"), 0, 600);
    wait_lines(&out.join("tcp"), 300);
    assert_exactly_once(&out.join("tcp"), 0, 300);
}

#[test]
fn a_unix_path_that_is_not_a_socket_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "precious").unwrap();
    let cfg = write_config(
        dir.path(),
        "f.conf",
        &format!(
            "[INPUT]\n    Name forward\n    unix_path {}\n[OUTPUT]\n    Name null\n    Match *\n",
            path.display()
        ),
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = agent.log_text();
    assert!(
        log.contains("not a socket") && log.contains("not-a-socket"),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

/// A client pipelining acked messages while the output cannot write: reading pauses at the
/// tiny Mem_Buf_Limit, the connection stays open, no ack arrives before the records are in the
/// file, and once the output recovers every record arrives once and every chunk is acked.
#[test]
fn a_stalled_output_pauses_reading_without_disconnect_loss_or_early_acks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out-later");
    let port = free_port();
    let api = free_port();
    let _agent = start_forward(
        dir.path(),
        &format!(
            "[SERVICE]\n    Flush 1\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n    scheduler.base 1\n    scheduler.cap 1\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n    Mem_Buf_Limit 100K\n    Buffer_Chunk_Size 16K\n{}",
            file_output(&out)
        ),
    );
    let progress = dir.path().join("acked");
    let mut child = Command::new(Peers::get().var("PEERS_PYTHON"))
        .args([
            CLIENT,
            &format!("127.0.0.1:{port}"),
            "forward",
            "slow",
            "s",
            "0",
            "20000",
            "100",
        ])
        .arg(&progress)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the input paused on its budget",
        || {
            http_get(api, "/api/v1/metrics/prometheus").is_some_and(|(_, b)| {
                b.lines().any(|l| {
                    l.starts_with("fluentbit_input_ingestion_paused{") && l.ends_with(" 1")
                })
            })
        },
    );
    // Records cannot be written yet, so none may be acked, and the client is still connected
    // (it exits with an error when the connection closes).
    assert!(
        !progress.exists(),
        "an ack arrived before the records were written"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the client stopped while the output was stalled"
    );
    std::fs::create_dir(&out).unwrap();
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "client: {stdout} {stderr}");
    assert_eq!(stdout.trim(), "sent 20000 acked 20000");
    // Every ack came after its records were durably written, so all are in the file now.
    assert_exactly_once(&out.join("slow"), 0, 20000);
}

fn frame(tag: &str, first: u64, count: u64, chunk: Option<&str>) -> Vec<u8> {
    use logferry::forward::protocol::{encode_packed, write_entries, PackedOptions};
    use logferry::record::{Event, EventTime, Map, Value};
    let events: Vec<Event> = (first..first + count)
        .map(|n| {
            let mut m = Map::default();
            m.push("log".into(), Value::string(format!("{tag}-{n:08}")));
            m.push("seq".into(), Value::UInt(n));
            Event {
                time: EventTime {
                    sec: 1_700_000_000 + n as i64,
                    nsec: n as u32 * 1000,
                },
                record: m,
            }
        })
        .collect();
    let mut payload = Vec::new();
    write_entries(&mut payload, &events);
    encode_packed(
        tag,
        &payload,
        events.len(),
        &PackedOptions {
            chunk,
            gzip: false,
            always: false,
        },
    )
}

/// Reads until the peer closes; panics if it does not within 30 s.
fn assert_closed_by_peer(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed by logferry: {e}"),
        }
    }
}

#[test]
fn garbage_or_an_oversized_frame_closes_only_that_connection_and_keeps_earlier_messages() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let api = free_port();
    let agent = start_forward(
        dir.path(),
        &format!(
            "[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n    Buffer_Chunk_Size 4K\n    Buffer_Max_Size 64K\n{}",
            file_output(&out)
        ),
    );
    let mut steady = TcpStream::connect(("127.0.0.1", port)).unwrap();
    steady.write_all(&frame("steady", 0, 100, None)).unwrap();

    // Good messages, then text that is no Forward message.
    let mut bad = TcpStream::connect(("127.0.0.1", port)).unwrap();
    bad.write_all(&frame("bad", 0, 50, None)).unwrap();
    bad.write_all(&frame("bad", 50, 50, None)).unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed_by_peer(&mut bad);

    // A frame announcing more than Buffer_Max_Size (a bin32 of 10 MB).
    let mut big = TcpStream::connect(("127.0.0.1", port)).unwrap();
    big.write_all(&frame("big", 0, 10, None)).unwrap();
    let mut header = vec![0x93, 0xa3, b'b', b'i', b'g', 0xc6];
    header.extend_from_slice(&10_000_000u32.to_be_bytes());
    big.write_all(&header).unwrap();
    // Keep writing until the server closes (it reads at most Buffer_Max_Size of it).
    let junk = vec![0u8; 8192];
    for _ in 0..2000 {
        if big.write_all(&junk).is_err() {
            break;
        }
    }
    assert_closed_by_peer(&mut big);

    // The steady connection still flows, with an ack.
    steady
        .write_all(&frame("steady", 100, 100, Some("after-garbage")))
        .unwrap();
    let mut ack = vec![0u8; 64];
    steady
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = steady.read(&mut ack).unwrap();
    assert!(
        ack[..n].windows(13).any(|w| w == b"after-garbage"),
        "ack: {:?}",
        &ack[..n]
    );

    wait_lines(&out.join("steady"), 200);
    assert_exactly_once(&out.join("steady"), 0, 200);
    wait_lines(&out.join("big"), 10);
    assert_exactly_once(&out.join("big"), 0, 10);
    wait_lines(&out.join("bad"), 100);
    assert_exactly_once(&out.join("bad"), 0, 100);

    let log = agent.log_text();
    assert!(
        log.contains("bad message: a message must be an array"),
        "{log}"
    );
    assert!(log.contains("larger than Buffer_Max_Size"), "{log}");
    assert!(log.contains("peer=127.0.0.1:"), "{log}");
    let (_, prom) = http_get(api, "/api/v1/metrics/prometheus").unwrap();
    assert!(
        prom.lines()
            .any(|l| l.starts_with("logferry_input_forward_rejected_total{name=\"forward.0\"} 2")),
        "{prom}"
    );
}

#[test]
fn docker_partial_lines_are_rejoined_and_driver_fields_kept() {
    use logferry::forward::protocol::{write_map, write_str};
    use logferry::record::{Map, Value};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let port = free_port();
    let _agent = start_forward(
        dir.path(),
        &format!(
            "[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n    Join_Partial_Messages On\n    Join_Partial_Max_Size 100K\n    Join_Partial_Flush 1\n{}",
            file_output(&out)
        ),
    );
    // What Docker's fluentd driver sends for a 40 000-byte line (split at 16 KiB), then a
    // whole line: Message mode, one record per message.
    let big: String = (0..40_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let pieces = [&big[..16384], &big[16384..32768], &big[32768..]];
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let message = |log: &str, partial: Option<(usize, bool)>| {
        let mut m = Map::default();
        m.push("container_id".into(), Value::str("0123456789abcdef"));
        m.push("container_name".into(), Value::str("/app"));
        m.push("source".into(), Value::str("stdout"));
        m.push("log".into(), Value::string(log.to_string()));
        if let Some((ordinal, last)) = partial {
            m.push("partial_message".into(), Value::str("true"));
            m.push("partial_id".into(), Value::str("p1"));
            m.push("partial_ordinal".into(), Value::string(ordinal.to_string()));
            m.push(
                "partial_last".into(),
                Value::str(if last { "true" } else { "false" }),
            );
        }
        let mut b = vec![0x93];
        write_str(&mut b, b"docker.app");
        b.extend_from_slice(&[0xce]);
        b.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        write_map(&mut b, &m);
        b
    };
    for (i, p) in pieces.iter().enumerate() {
        s.write_all(&message(p, Some((i + 1, i == 2)))).unwrap();
    }
    s.write_all(&message("short line", None)).unwrap();
    let path = out.join("docker.app");
    wait_lines(&path, 2);
    let got: Vec<serde_json::Value> = lines(&path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["log"].as_str().unwrap(), big);
    assert_eq!(got[1]["log"], "short line");
    for r in &got {
        assert_eq!(r["container_id"], "0123456789abcdef");
        assert_eq!(r["container_name"], "/app");
        assert_eq!(r["source"], "stdout");
        assert!(r.get("partial_message").is_none() && r.get("partial_id").is_none());
    }
    // A first piece whose next piece never comes (the container died) is flushed as it
    // stands after Join_Partial_Flush, on the still open connection.
    s.write_all(&message("orphan piece", Some((1, false))))
        .unwrap();
    wait_lines(&path, 3);
    let last: serde_json::Value = serde_json::from_str(&lines(&path)[2]).unwrap();
    assert_eq!(last["log"], "orphan piece");
}

// ---- the `forward` output: logferry → logferry ----

/// An aggregator: a `forward` input (TLS and Shared_Key when given) into the local-directory
/// `s3` output under `dir/store`, spooling in `dir/spool`.
fn aggregator_config(dir: &Path, port: u16, secure: &str) -> PathBuf {
    write_config(
        dir,
        "aggregator.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 2\n    scheduler.base 1\n    scheduler.cap 1\n[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n{secure}[OUTPUT]\n    Name s3\n    Match *\n    bucket local\n    endpoint file://{}\n    store_dir {}\n    s3_key_format /logs/$TAG/$INDEX\n    upload_timeout 1s\n    json_date_key false\n    Retry_Limit no_limits\n",
            dir.join("store").display(),
            dir.join("spool").display()
        ),
    )
}

/// A node agent tailing `dir/app.log` into a `forward` output with `output` lines.
fn node_config(dir: &Path, output: &str, service: &str) -> PathBuf {
    write_config(
        dir,
        "node.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 2\n    scheduler.base 1\n    scheduler.cap 1\n{service}[INPUT]\n    Name tail\n    Path {}\n    Tag app\n    Read_from_Head On\n    Refresh_Interval 1\n    DB {}\n[OUTPUT]\n    Name forward\n    Match *\n    Retry_Limit no_limits\n{output}",
            dir.join("app.log").display(),
            dir.join("offsets.db").display()
        ),
    )
}

fn start_aggregator(dir: &Path, cfg: &Path) -> Agent {
    let agent = Agent::start(dir, cfg);
    wait_until(Duration::from_secs(30), "aggregator listening", || {
        agent.log_text().contains("forward input listening")
    });
    agent
}

/// Lines the aggregator holds: uploaded to its store, or still in its spool.
fn aggregator_lines(dir: &Path) -> usize {
    let spool = dir.join("spool");
    let mut n = logs_under(&dir.join("store")).len();
    if let Ok(outputs) = std::fs::read_dir(&spool) {
        for o in outputs.flatten() {
            n += spooled_lines(&o.path().join("open")) + spooled_lines(&o.path().join("sealed"));
        }
    }
    n
}

#[test]
fn logferry_to_logferry_over_tls_with_shared_key_loses_nothing_when_the_aggregator_is_killed() {
    let node_dir = tempfile::tempdir().unwrap();
    let agg_dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = test_pki(agg_dir.path());
    let port = free_port();
    let agg_cfg = aggregator_config(
        agg_dir.path(),
        port,
        &format!(
            "    tls on\n    tls.crt_file {}\n    tls.key_file {}\n    Shared_Key s3cr3t-fleet-key\n    Self_Hostname aggregator\n",
            crt.display(),
            key.display()
        ),
    );
    let mut aggregator = start_aggregator(agg_dir.path(), &agg_cfg);
    let node_cfg = node_config(
        node_dir.path(),
        &format!(
            "    Host 127.0.0.1\n    Port {port}\n    tls on\n    tls.ca_file {}\n    Shared_Key s3cr3t-fleet-key\n    Self_Hostname node-1\n",
            ca.display()
        ),
        "",
    );
    let log = node_dir.path().join("app.log");
    append_numbered(&log, "k", 0, 1);
    let node = Agent::start_tailing(node_dir.path(), &node_cfg);

    // The application writes 20 000 lines in rounds while the aggregator is killed (-9) and
    // later restarted on the same spool.
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for round in 0..40 {
                append_numbered(&log, "k", 1 + round * 500, 500);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    wait_until(
        Duration::from_secs(60),
        "the aggregator received records",
        || aggregator_lines(agg_dir.path()) > 0,
    );
    aggregator.kill9();
    wait_until(
        Duration::from_secs(60),
        "the node saw the aggregator gone",
        || node.log_text().contains("forward to 127.0.0.1"),
    );
    let aggregator = start_aggregator(agg_dir.path(), &agg_cfg);
    writer.join().unwrap();
    let total = 1 + 40 * 500;
    wait_until(Duration::from_secs(120), "every line stored", || {
        let logs = logs_under(&agg_dir.path().join("store"));
        let mut seen = std::collections::HashSet::new();
        logs.iter().for_each(|l| {
            seen.insert(l.clone());
        });
        seen.len() >= total
    });
    let stored = logs_under(&agg_dir.path().join("store"));
    let duplicates = assert_all_present(&stored, "k", total);
    // Duplicates can only come from messages the aggregator had written to its spool (and so
    // kept across the kill) whose ack was lost with the connection: the node resends them.
    // They are bounded by what was in flight at the kill, never by the whole stream.
    println!(
        "{} lines, {duplicates} duplicates after the kill -9",
        stored.len()
    );
    assert!(duplicates < total / 2, "{duplicates} duplicates");
    let node_log = node.log_text();
    assert!(
        !node_log.contains("s3cr3t-fleet-key"),
        "the key leaked into the log"
    );
    assert!(!aggregator.log_text().contains("s3cr3t-fleet-key"));
    assert!(!node_log.contains("cannot be retried"), "{node_log}");
}

#[test]
fn a_wrong_shared_key_is_refused_with_a_clear_error_and_nothing_is_delivered_or_dropped() {
    let node_dir = tempfile::tempdir().unwrap();
    let agg_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let api = free_port();
    let agg_cfg = aggregator_config(agg_dir.path(), port, "    Shared_Key the-right-key\n");
    let aggregator = start_aggregator(agg_dir.path(), &agg_cfg);
    let node_cfg = node_config(
        node_dir.path(),
        &format!("    Host 127.0.0.1\n    Port {port}\n    Shared_Key a-wrong-key\n"),
        &format!("    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n"),
    );
    append_numbered(&node_dir.path().join("app.log"), "w", 0, 100);
    let node = Agent::start(node_dir.path(), &node_cfg);
    wait_until(
        Duration::from_secs(60),
        "the refusal in the node's log",
        || {
            node.log_text()
                .contains("the server refused the handshake: shared_key mismatch")
        },
    );
    assert!(aggregator
        .log_text()
        .contains("Shared_Key handshake refused: shared_key mismatch"));
    let metric = |name: &str| -> i64 {
        let (_, body) = http_get(api, "/api/v1/metrics/prometheus").unwrap();
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert!(metric("fluentbit_output_errors_total{") > 0);
    assert_eq!(metric("fluentbit_output_dropped_records_total{"), 0);
    assert_eq!(metric("fluentbit_output_proc_records_total{"), 0);
    assert_eq!(aggregator_lines(agg_dir.path()), 0);
    for log in [node.log_text(), aggregator.log_text()] {
        assert!(
            !log.contains("a-wrong-key") && !log.contains("the-right-key"),
            "{log}"
        );
    }
}

/// An upstream of three nodes, one of them down: writes go round robin, the dead node is
/// skipped, every record reaches exactly one live aggregator once, gzip-compressed and under
/// the output's `Tag`.
#[test]
fn upstream_round_robin_fails_over_and_sends_compressed_messages_under_the_output_tag() {
    let node_dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_port, dead_port, b_port) = (free_port(), free_port(), free_port());
    let mut aggregators = Vec::new();
    for (dir, port) in [(&a_dir, a_port), (&b_dir, b_port)] {
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let cfg = write_config(
            dir.path(),
            "agg.conf",
            &format!(
                "[INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {port}\n{}",
                file_output(&out)
            ),
        );
        aggregators.push(start_aggregator(dir.path(), &cfg));
    }
    let upstream = write_config(
        node_dir.path(),
        "upstream.conf",
        &format!(
            "[UPSTREAM]\n    name aggregators\n\n[NODE]\n    name a\n    host ${{LOGFERRY_TEST_AGGREGATOR:-127.0.0.1}}\n    port {a_port}\n\n[NODE]\n    name dead\n    host 127.0.0.1\n    port {dead_port}\n\n[NODE]\n    name b\n    host 127.0.0.1\n    port {b_port}\n"
        ),
    );
    let node_cfg = node_config(
        node_dir.path(),
        &format!(
            "    Upstream {}\n    Compress gzip\n    Tag forwarded\n",
            upstream.display()
        ),
        "",
    );
    let log = node_dir.path().join("app.log");
    append_numbered(&log, "u", 0, 1);
    let node = Agent::start_tailing(node_dir.path(), &node_cfg);
    let got = |dir: &Path| log_values(&dir.join("out/forwarded"));
    for round in 0..6 {
        append_numbered(&log, "u", 1 + round * 100, 100);
        let want = 1 + (round + 1) * 100;
        wait_until(
            Duration::from_secs(60),
            "records at the aggregators",
            || got(a_dir.path()).len() + got(b_dir.path()).len() >= want,
        );
    }
    let (a, b) = (got(a_dir.path()), got(b_dir.path()));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "round robin: a {} b {}",
        a.len(),
        b.len()
    );
    let all: Vec<String> = a.into_iter().chain(b).collect();
    assert_eq!(assert_all_present(&all, "u", 601), 0);
    assert_eq!(all.len(), 601);
    assert!(node.log_text().contains("node=dead"), "{}", node.log_text());
}

fn dry_run(dir: &Path, text: &str) -> (bool, String) {
    let cfg = write_config(dir, "dry.conf", text);
    let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .arg("--dry-run")
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn forward_output_applies_tls_verify_and_ca_file_and_checks_its_upstream_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _, _) = test_pki(dir.path());
    let input = "[INPUT]\n    Name dummy\n";
    let (ok, err) = dry_run(
        dir.path(),
        &format!(
            "{input}[OUTPUT]\n    Name forward\n    Match *\n    tls on\n    tls.verify Off\n"
        ),
    );
    assert!(ok, "{err}");
    let (ok, err) = dry_run(
        dir.path(),
        &format!(
            "{input}[OUTPUT]\n    Name forward\n    Match *\n    tls on\n    tls.ca_file {}\n",
            ca.display()
        ),
    );
    assert!(ok, "{err}");
    // A CA file that holds no certificate is named.
    let (ok, err) = dry_run(
        dir.path(),
        &format!(
            "{input}[OUTPUT]\n    Name forward\n    Match *\n    tls on\n    tls.ca_file {}\n",
            dir.path().join("dry.conf").display()
        ),
    );
    assert!(
        !ok && err.contains("dry.conf:7") && err.contains("no PEM certificate"),
        "{err}"
    );
    // Other outputs still refuse what they do not apply.
    let (ok, err) = dry_run(
        dir.path(),
        &format!("{input}[OUTPUT]\n    Name file\n    Match *\n    tls.verify Off\n"),
    );
    assert!(!ok && err.contains("tls.verify"), "{err}");
    // An upstream file's mistakes are reported at their own line.
    let upstream = write_config(
        dir.path(),
        "upstream.conf",
        "[UPSTREAM]\n    name u\n[NODE]\n    name a\n    host 127.0.0.1\n    port nope\n",
    );
    let (ok, err) = dry_run(
        dir.path(),
        &format!(
            "{input}[OUTPUT]\n    Name forward\n    Match *\n    Upstream {}\n",
            upstream.display()
        ),
    );
    assert!(
        !ok && err.contains("upstream.conf:6") && err.contains("not a port number"),
        "{err}"
    );
}
