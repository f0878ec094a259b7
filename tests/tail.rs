//! The tail input end to end, with the real binary: rotation, truncation, deletion, crashes,
//! Fluent Bit DB takeover, container line formats and long lines.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn tail_to_file(dir: &Path, path_glob: &str, extra_input: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 5\n    Log_Level info\n[INPUT]\n    Name tail\n    Path {path_glob}\n    Tag app\n    DB {db}\n    Refresh_Interval 1\n    Rotate_Wait 1\n{extra_input}[OUTPUT]\n    Name file\n    Match *\n    Path {out}\n    File out.jsonl\n    Format plain\n",
            db = dir.join("offsets.db").display(),
            out = dir.display(),
        ),
    )
}

/// Follows `log` from its head into `out.jsonl`, once the agent made its first scan.
fn follow_from_head(dir: &Path, log: &Path) -> (Agent, std::path::PathBuf) {
    let cfg = tail_to_file(dir, &log.display().to_string(), "    Read_from_Head On\n");
    (Agent::start_tailing(dir, &cfg), dir.join("out.jsonl"))
}

#[test]
fn rotation_by_rename_while_writing_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "r", 0, 1000);
    let (_agent, out) = follow_from_head(dir.path(), &log);
    // Rotate five times while writing; the renamed files are no longer matched by Path. (Files
    // renamed away before logferry first saw them are not read, as with Fluent Bit: hence
    // start_tailing, which waits until the agent follows app.log.)
    let mut n = 1000;
    for round in 0..5 {
        append_numbered(&log, "r", n, 20_000);
        n += 20_000;
        std::fs::rename(&log, dir.path().join(format!("app.log.{round}"))).unwrap();
        append_numbered(&log, "r", n, 500);
        n += 500;
    }
    wait_until(T, "all rotated lines shipped", || count_lines(&out) >= n);
    std::thread::sleep(Duration::from_millis(500));
    let dups = assert_all_present(&log_values(&out), "r", n);
    assert_eq!(dups, 0, "no duplicates without a crash");
}

/// The kubelet's rotation: gzip the previous rotated file, rename `0.log` to `0.log.<time>`,
/// reopen `0.log`. The rotated file is read to its end; the fresh `.gz` sibling is not log text,
/// and the file it is a copy of was there before the agent started (not read, as with Fluent
/// Bit), so it is not read either.
#[test]
fn kubelet_rotation_skips_compressed_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let mut old = String::new();
    for n in 0..2000 {
        old.push_str(&format!("old rotated line {n} {}\n", n * 7919 % 10007));
    }
    let previous = dir.path().join("0.log.20261122-075900");
    std::fs::write(&previous, &old).unwrap();
    append_numbered(&log, "k", 0, 100);
    let (_agent, out) = follow_from_head(dir.path(), &log);
    wait_until(T, "first lines shipped", || count_lines(&out) >= 100);
    append_numbered(&log, "k", 100, 100);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(old.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(
        gz.contains(&b'\n'),
        "compressed bytes that would split into lines"
    );
    std::fs::write(dir.path().join("0.log.20261122-075900.gz"), gz).unwrap();
    std::fs::remove_file(&previous).unwrap();
    std::fs::rename(&log, dir.path().join("0.log.20261122-080000")).unwrap();
    append_numbered(&log, "k", 200, 100);
    wait_until(T, "every line shipped", || count_lines(&out) >= 300);
    std::thread::sleep(Duration::from_millis(1500));
    let values = log_values(&out);
    assert!(
        values.iter().all(|v| v.starts_with("k-")),
        "only log lines, no compressed bytes: {:?}",
        values.iter().find(|v| !v.starts_with("k-"))
    );
    assert_eq!(assert_all_present(&values, "k", 300), 0);
}

#[test]
fn copytruncate_and_plain_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let cfg = tail_to_file(dir.path(), &log.display().to_string(), "");
    let _agent = Agent::start_tailing(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    append_numbered(&log, "c", 0, 3000);
    wait_until(T, "first part shipped", || count_lines(&out) >= 3000);
    // copytruncate: copy away, truncate in place, keep writing to the same inode.
    std::fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_numbered(&log, "c", 3000, 100);
    wait_until(T, "lines after truncation shipped", || {
        count_lines(&out) >= 3100
    });
    std::thread::sleep(Duration::from_millis(300));
    let dups = assert_all_present(&log_values(&out), "c", 3100);
    assert_eq!(dups, 0);
}

#[test]
fn deleted_file_is_read_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("big.log");
    append_numbered(&log, "d", 0, 300_000);
    // A small budget keeps most of the file unread when it is deleted.
    let cfg = tail_to_file(
        dir.path(),
        &log.display().to_string(),
        "    Read_from_Head On\n    Mem_Buf_Limit 300k\n",
    );
    let _agent = Agent::start(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    wait_until(T, "shipping started", || count_lines(&out) > 0);
    std::fs::remove_file(&log).unwrap();
    assert!(
        count_lines(&out) < 300_000,
        "the file should still be partly unread when deleted"
    );
    wait_until(T, "all lines of the deleted file shipped", || {
        count_lines(&out) >= 300_000
    });
    assert_eq!(assert_all_present(&log_values(&out), "d", 300_000), 0);
}

#[test]
fn kill_9_crash_loop_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("c{i}.log")))
        .collect();
    for (i, l) in logs.iter().enumerate() {
        append_numbered(l, &format!("k{i}"), 0, 100_000);
    }
    let cfg = tail_to_file(
        dir.path(),
        &format!("{}/c*.log", dir.path().display()),
        "    Read_from_Head On\n    Mem_Buf_Limit 1M\n",
    );
    let out = dir.path().join("out.jsonl");
    let mut written = 100_000;
    for round in 0..3 {
        let mut agent = Agent::start(dir.path(), &cfg);
        let before = count_lines(&out);
        wait_until(T, "progress before the kill", || {
            count_lines(&out) > before + 1000
        });
        agent.kill9();
        for (i, l) in logs.iter().enumerate() {
            append_numbered(l, &format!("k{i}"), written, 10_000);
        }
        written += 10_000;
        let _ = round;
    }
    // A rotation while the agent is down: the renamed file must still be read to its end.
    append_numbered(&logs[0], "k0", written, 5_000);
    std::fs::rename(&logs[0], dir.path().join("c0.log.rotated")).unwrap();
    append_numbered(&logs[0], "k0", written + 5_000, 1_000);
    let total0 = written + 6_000;
    let _agent = Agent::start(dir.path(), &cfg);
    let expected = total0 + 2 * written;
    wait_until(T, "everything shipped after the crash loop", || {
        count_lines(&out) >= expected
    });
    std::thread::sleep(Duration::from_millis(500));
    let values = log_values(&out);
    let mut dups = assert_all_present(&values, "k0", total0);
    dups += assert_all_present(&values, "k1", written);
    dups += assert_all_present(&values, "k2", written);
    eprintln!("crash loop: {dups} duplicate lines after 3 kill -9");
    // Only batches in flight at each kill may repeat: bounded by Mem_Buf_Limit plus one read
    // per file (~90-byte lines), three kills.
    let bound = 3 * (1_000_000 + 3 * 256 * 1024) / 90;
    assert!(
        dups <= bound,
        "{dups} duplicate lines exceed the in-flight bound {bound}"
    );
}

#[test]
fn sigterm_commits_offsets_so_restart_ships_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "s", 0, 50_000);
    let cfg = tail_to_file(
        dir.path(),
        &log.display().to_string(),
        "    Read_from_Head On\n",
    );
    let out = dir.path().join("out.jsonl");
    let mut agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "first lines", || count_lines(&out) > 100);
    agent.sigterm();
    let status = agent.wait_exit(Duration::from_secs(10));
    assert!(
        status.success(),
        "exit 0 after SIGTERM, got {status:?}; log:\n{}",
        agent.log_text()
    );
    append_numbered(&log, "s", 50_000, 1_000);
    let _again = Agent::start(dir.path(), &cfg);
    wait_until(T, "all lines", || count_lines(&out) >= 51_000);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        assert_all_present(&log_values(&out), "s", 51_000),
        0,
        "graceful stop must not cause duplicates"
    );
}

#[test]
fn takes_over_a_fluent_bit_offsets_db() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "f", 0, 1000);
    let content = std::fs::read(&log).unwrap();
    let offset = content
        .split(|b| *b == b'\n')
        .take(600)
        .map(|l| l.len() + 1)
        .sum::<usize>() as u64;
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap());
    // Fluent Bit 3.x schema (no marker columns), as on Union's nodes.
    let db_path = dir.path().join("offsets.db");
    sqlite_exec(&db_path, &format!(
        "CREATE TABLE in_tail_files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, offset INTEGER, inode INTEGER, created INTEGER, rotated INTEGER DEFAULT 0);
         INSERT INTO in_tail_files (name, offset, inode, created) VALUES ('{}', {offset}, {inode}, 1700000000);", log.display()));
    let cfg = tail_to_file(dir.path(), &log.display().to_string(), "");
    let _agent = Agent::start(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    wait_until(T, "lines after FB's offset", || count_lines(&out) >= 400);
    std::thread::sleep(Duration::from_millis(500));
    let values = log_values(&out);
    assert_eq!(values.len(), 400, "neither re-ship nor skip");
    assert!(
        values[0].starts_with("f-00000600"),
        "first shipped line: {}",
        values[0]
    );
}

#[test]
fn fluent_bit_v5_offset_marker_detects_inode_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "m", 0, 100);
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log).unwrap());
    // A row for this inode whose marker belongs to other content: the file must be read whole.
    let db_path = dir.path().join("offsets.db");
    sqlite_exec(&db_path, &format!(
        "CREATE TABLE in_tail_files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, offset INTEGER, inode INTEGER, created INTEGER, rotated INTEGER DEFAULT 0, offset_marker INTEGER DEFAULT 0, offset_marker_size INTEGER DEFAULT 0);
         INSERT INTO in_tail_files (name, offset, inode, created, offset_marker, offset_marker_size) VALUES ('{}', 500, {inode}, 1700000000, 12345, 32);", log.display()));
    let cfg = tail_to_file(dir.path(), &log.display().to_string(), "");
    let _agent = Agent::start(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    wait_until(T, "whole file", || count_lines(&out) >= 100);
    assert_eq!(assert_all_present(&log_values(&out), "m", 100), 0);
    // And a matching marker (XXH3 of the 32 bytes before the offset) is honoured.
    let dir2 = tempfile::tempdir().unwrap();
    let log2 = dir2.path().join("app.log");
    append_numbered(&log2, "m", 0, 100);
    let content = std::fs::read(&log2).unwrap();
    let offset = content
        .split(|b| *b == b'\n')
        .take(40)
        .map(|l| l.len() + 1)
        .sum::<usize>();
    let marker = xxhash_rust::xxh3::xxh3_64(&content[offset - 32..offset]) as i64;
    let inode2 = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&log2).unwrap());
    sqlite_exec(&dir2.path().join("offsets.db"), &format!(
        "CREATE TABLE in_tail_files (id INTEGER PRIMARY KEY, name TEXT NOT NULL, offset INTEGER, inode INTEGER, created INTEGER, rotated INTEGER DEFAULT 0, offset_marker INTEGER DEFAULT 0, offset_marker_size INTEGER DEFAULT 0);
         INSERT INTO in_tail_files (name, offset, inode, created, offset_marker, offset_marker_size) VALUES ('{}', {offset}, {inode2}, 1700000000, {marker}, 32);", log2.display()));
    let cfg2 = tail_to_file(dir2.path(), &log2.display().to_string(), "");
    let _agent2 = Agent::start(dir2.path(), &cfg2);
    let out2 = dir2.path().join("out.jsonl");
    wait_until(T, "rest of file", || count_lines(&out2) >= 60);
    std::thread::sleep(Duration::from_millis(300));
    let values = log_values(&out2);
    assert_eq!(values.len(), 60);
    assert!(values[0].starts_with("m-00000040"));
}

fn sqlite_exec(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(sql).unwrap();
}

fn container_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "agent.conf",
        &format!(
            "[INPUT]\n    Name tail\n    Path {}/*.log\n    Tag kube.*\n    multiline.parser docker, cri\n    Read_from_Head On\n    Refresh_Interval 1\n{extra}[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File out.jsonl\n    Format plain\n",
            dir.display(),
            dir.display()
        ),
    )
}

#[test]
fn cri_partial_lines_split_across_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pod_ns_c-0000.log");
    std::fs::write(&log, "").unwrap();
    let cfg = container_config(dir.path(), "");
    let _agent = Agent::start_tailing(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"2026-01-01T00:00:00.000000001Z stdout P first ")
        .unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    f.write_all(b"half\n2026-01-01T00:00:00.1Z stderr F interleaved\n2026-01-01T00:00:00.2Z stdout P second ").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    f.write_all(b"part, \n2026-01-01T00:00:00.3Z stdout F end\n")
        .unwrap();
    wait_until(T, "two records", || count_lines(&out) >= 2);
    std::thread::sleep(Duration::from_millis(300));
    let l = lines(&out);
    assert_eq!(
        l,
        vec![
            r#"{"time":"2026-01-01T00:00:00.1Z","stream":"stderr","_p":"F","log":"interleaved"}"#,
            r#"{"time":"2026-01-01T00:00:00.000000001Z","stream":"stdout","_p":"P","log":"first halfsecond part, end"}"#,
        ]
    );
}

#[test]
fn docker_16k_splits_are_joined() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pod_ns_c-1111.log");
    let part = "x".repeat(16 * 1024);
    let mut text = String::new();
    text.push_str(&format!(
        "{{\"log\":\"{part}\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.1Z\"}}\n"
    ));
    text.push_str(&format!(
        "{{\"log\":\"{part}\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.2Z\"}}\n"
    ));
    text.push_str(
        "{\"log\":\"tail\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.3Z\"}\n",
    );
    text.push_str(
        "{\"log\":\"next\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-01T00:00:00.4Z\"}\n",
    );
    std::fs::write(&log, text).unwrap();
    let cfg = container_config(dir.path(), "");
    let _agent = Agent::start(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    wait_until(T, "two records", || count_lines(&out) >= 2);
    let values = log_values(&out);
    assert_eq!(values.len(), 2);
    assert_eq!(values[0], format!("{part}{part}tail\n"));
    assert_eq!(values[1], "next\n");
    let first: serde_json::Value = serde_json::from_str(&lines(&out)[0]).unwrap();
    let keys: Vec<_> = first.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys.len(), 3);
    assert_eq!(first["time"], "2026-01-01T00:00:00.1Z");
}

#[test]
fn invalid_utf8_and_nul_bytes_survive_as_escaped_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("raw.log");
    std::fs::write(
        &log,
        b"ok line\nbad \xff\xfe bytes\nnul \x00 inside\n\xc3\xa9t\xc3\xa9\n",
    )
    .unwrap();
    let cfg = tail_to_file(
        dir.path(),
        &log.display().to_string(),
        "    Read_from_Head On\n",
    );
    let _agent = Agent::start(dir.path(), &cfg);
    let out = dir.path().join("out.jsonl");
    wait_until(T, "four records", || count_lines(&out) >= 4);
    let l = lines(&out);
    assert_eq!(l[0], r#"{"log":"ok line"}"#);
    // Fluent Bit's mapping of invalid bytes: U+E000 + byte.
    assert_eq!(l[1], "{\"log\":\"bad \u{E0FF}\u{E0FE} bytes\"}");
    assert_eq!(l[2], r#"{"log":"nul \u0000 inside"}"#);
    assert_eq!(l[3], r#"{"log":"\u00e9t\u00e9"}"#);
}

#[test]
fn ten_mib_line_is_skipped_or_truncated_never_stalls() {
    for (skip, expect_len) in [("On", None), ("Off", Some(32_768usize))] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("long.log");
        let mut content = b"before\n".to_vec();
        content.extend(std::iter::repeat_n(b'a', 10 * 1024 * 1024));
        content.extend_from_slice(b"\nafter\n");
        std::fs::write(&log, content).unwrap();
        let port = free_port();
        let cfg = write_config(
            dir.path(),
            "agent.conf",
            &format!(
                "[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n[INPUT]\n    Name tail\n    Path {}\n    Tag app\n    Read_from_Head On\n    Skip_Long_Lines {skip}\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File out.jsonl\n    Format plain\n",
                log.display(),
                dir.path().display()
            ),
        );
        let agent = Agent::start(dir.path(), &cfg);
        let out = dir.path().join("out.jsonl");
        let want = if expect_len.is_some() { 3 } else { 2 };
        wait_until(T, "lines around the long one", || count_lines(&out) >= want);
        let values = log_values(&out);
        assert_eq!(values.first().map(String::as_str), Some("before"));
        assert_eq!(values.last().map(String::as_str), Some("after"));
        match expect_len {
            None => {
                assert_eq!(values.len(), 2);
                wait_until(T, "skip metric", || {
                    http_get(port, "/api/v1/metrics/prometheus").is_some_and(|(_, b)| {
                        b.contains("fluentbit_input_long_line_skipped_total{name=\"tail.0\"} 1")
                    })
                });
                assert!(
                    agent.log_text().contains("long.log"),
                    "the log line names the file"
                );
            }
            Some(n) => {
                assert_eq!(values.len(), 3);
                assert_eq!(values[1].len(), n);
            }
        }
    }
}

#[test]
fn files_appearing_while_down_are_read_from_head_and_existing_ones_from_tail() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.log");
    append_numbered(&old, "o", 0, 10);
    let cfg = tail_to_file(dir.path(), &format!("{}/*.log", dir.path().display()), "");
    let out = dir.path().join("out.jsonl");
    let mut agent = Agent::start_tailing(dir.path(), &cfg);
    append_numbered(&old, "o", 10, 5);
    wait_until(T, "new lines of the existing file", || {
        count_lines(&out) >= 5
    });
    agent.sigterm();
    agent.wait_exit(Duration::from_secs(10));
    let fresh = dir.path().join("fresh.log");
    append_numbered(&fresh, "n", 0, 7);
    let _agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "file created while down", || count_lines(&out) >= 12);
    std::thread::sleep(Duration::from_millis(300));
    let values = log_values(&out);
    assert_eq!(
        values.iter().filter(|v| v.starts_with("o-")).count(),
        5,
        "existing lines at start are not re-read"
    );
    assert_all_present(&values, "n", 7);
}
