//! The `s3` output on the local-directory store (`endpoint file://...`), through the real binary:
//! append vs overwrite on static keys, compressed bodies, the spool across kill -9, key formats.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(60);

fn s3_config(dir: &Path, log_glob: &str, extra_output: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 10\n[INPUT]\n    Name tail\n    Path {log_glob}\n    Tag namespace-ns.pod-p.cont-c\n    Read_from_Head On\n    Refresh_Interval 1\n    DB {db}\n[OUTPUT]\n    Name s3\n    Match *\n    bucket local\n    endpoint file://{store}\n    store_dir {spool}\n{extra_output}",
            db = dir.join("offsets.db").display(),
            store = dir.join("store").display(),
            spool = dir.join("spool").display(),
        ),
    )
}

fn union_keys(extra: &str) -> String {
    format!("    s3_key_format /persisted-logs/$TAG\n    static_file_path true\n    json_date_key false\n    upload_timeout 2s\n{extra}")
}

#[test]
fn static_key_appends_every_upload_window_and_overwrite_keeps_fluent_bits_behaviour() {
    for (mode, expect_first_window) in [("append", true), ("overwrite", false)] {
        for compression in ["none", "gzip", "zstd"] {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("c.log");
            append_numbered(&log, "w", 0, 500);
            let cfg = s3_config(
                dir.path(),
                &log.display().to_string(),
                &union_keys(&format!(
                    "    static_file_mode {mode}\n    compression {compression}\n"
                )),
            );
            let _agent = Agent::start(dir.path(), &cfg);
            let object = dir
                .path()
                .join("store/persisted-logs/namespace-ns.pod-p.cont-c");
            let read = || {
                std::fs::read(&object)
                    .map(|b| object_logs(&b))
                    .unwrap_or_default()
            };
            wait_until(T, "first window uploaded", || read().len() >= 500);
            append_numbered(&log, "w", 500, 300);
            wait_until(T, "second window uploaded", || {
                read().iter().any(|l| l.starts_with("w-00000799"))
            });
            let logs = read();
            if expect_first_window {
                assert_eq!(
                    assert_all_present(&logs, "w", 800),
                    0,
                    "{mode}/{compression}: one object holds both windows, once"
                );
                assert_eq!(logs.len(), 800);
            } else {
                assert_eq!(
                    logs.len(),
                    300,
                    "overwrite keeps only the last window, as Fluent Bit does"
                );
            }
        }
    }
}

#[test]
fn spooled_records_survive_kill_9_and_are_uploaded_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "k", 0, 20_000);
    let cfg = s3_config(
        dir.path(),
        &log.display().to_string(),
        "    s3_key_format /logs/$TAG/$INDEX.jsonl\n    upload_timeout 10m\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let spool = dir.path().join("spool/local/open");
    let spooled = || spooled_lines(&spool);
    wait_until(T, "records spooled", || spooled() >= 20_000);
    agent.kill9();
    assert!(
        !dir.path().join("store").exists(),
        "nothing uploaded before the kill (upload_timeout 10m)"
    );
    // Restart and stop gracefully: shutdown uploads what the spool holds.
    let mut agent = Agent::start_tailing(dir.path(), &cfg);
    agent.sigterm();
    assert!(agent.wait_exit(Duration::from_secs(30)).success());
    let objects: Vec<_> =
        std::fs::read_dir(dir.path().join("store/logs/namespace-ns.pod-p.cont-c"))
            .unwrap()
            .flatten()
            .collect();
    let mut logs = Vec::new();
    for o in &objects {
        logs.extend(object_logs(&std::fs::read(o.path()).unwrap()));
    }
    assert_eq!(
        assert_all_present(&logs, "k", 20_000),
        0,
        "acknowledged by the spool, so never read twice"
    );
    let names: Vec<String> = objects
        .iter()
        .map(|o| o.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["0.jsonl"], "$INDEX starts at 0");
}

#[test]
fn key_format_date_key_and_object_suffix_follow_fluent_bit() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    std::fs::write(&log, "2026-01-02T03:04:05.123456789Z stdout F hello\n").unwrap();
    let cfg = write_config(
        dir.path(),
        "agent.conf",
        &format!(
            "[INPUT]\n    Name tail\n    Path {}\n    Tag app-logs.prod\n    multiline.parser cri\n    Read_from_Head On\n    Exit_On_Eof On\n[OUTPUT]\n    Name s3\n    Match *\n    bucket b\n    endpoint file://{}\n    store_dir {}\n    s3_key_format /$TAG[1]/$TAG[0]/%Y/%m/%d/%H%M%S\n    s3_key_format_tag_delimiters .-\n",
            log.display(),
            dir.path().join("store").display(),
            dir.path().join("spool").display()
        ),
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    assert!(agent.wait_exit(T).success(), "{}", agent.log_text());
    let key_dir = dir.path().join("store/logs/app/2026/01/02");
    let objects: Vec<_> = std::fs::read_dir(&key_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(objects.len(), 1);
    // No $UUID/$INDEX and static_file_path off: Fluent Bit's "-object<8 random>" suffix.
    assert!(
        objects[0].starts_with("030405-object") && objects[0].len() == "030405-object".len() + 8,
        "{objects:?}"
    );
    let body = std::fs::read_to_string(key_dir.join(&objects[0])).unwrap();
    assert_eq!(body, "{\"date\":\"2026-01-02T03:04:05.123456Z\",\"time\":\"2026-01-02T03:04:05.123456789Z\",\"stream\":\"stdout\",\"_p\":\"F\",\"log\":\"hello\"}\n");
}

#[test]
fn s3_option_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (line, expected) in [
        (
            "    upload_chunk_size 5M\n",
            "key 'upload_chunk_size': upload_chunk_size must be at least 5,242,880",
        ),
        (
            "    compression snappy\n",
            "key 'compression': compression 'snappy' is not supported",
        ),
        (
            "    s3_key_format no/slash\n",
            "key 's3_key_format': s3_key_format must start with '/'",
        ),
        (
            "    external_id abc\n",
            "key 'external_id': external_id needs role_arn",
        ),
        ("    static_file_mode sometimes\n", "key 'static_file_mode'"),
    ] {
        let cfg = write_config(dir.path(), "bad.conf", &format!("[INPUT]\n    Name dummy\n[OUTPUT]\n    Name s3\n    Match *\n    bucket b\n    store_dir {}\n{line}", dir.path().join("spool").display()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logferry"))
            .args(["--dry-run", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            text.contains("bad.conf:") && text.contains(expected),
            "expected {expected} in {text}"
        );
    }
}

/// Invariant 3's bound: with `Rotated_Files_Max 1` and every upload failing (the spool fills and
/// pauses the input), rotated files beyond the first are closed ("parked") instead of holding
/// descriptors; once uploads work, they are reopened and every line arrives exactly once.
#[test]
fn rotated_files_beyond_the_bound_are_parked_and_read_later() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "p", 0, 1000);
    // The store path is a regular file: the local store cannot create its directories.
    let store = dir.path().join("store");
    std::fs::write(&store, "blocks the store").unwrap();
    let port = free_port();
    let cfg = write_config(
        dir.path(),
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 10\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n    scheduler.base 1\n    scheduler.cap 1\n[INPUT]\n    Name tail\n    Path {log}\n    Tag namespace-ns.pod-p.cont-c\n    Read_from_Head On\n    Refresh_Interval 1\n    Rotate_Wait 1\n    Rotated_Files_Max 1\n    DB {db}\n[OUTPUT]\n    Name s3\n    Match *\n    bucket local\n    endpoint file://{store}\n    store_dir {spool}\n    store_dir_limit_size 300K\n    total_file_size 1M\n    upload_timeout 1s\n    s3_key_format /logs/$TAG/$INDEX\n",
            log = log.display(),
            db = dir.path().join("offsets.db").display(),
            store = store.display(),
            spool = dir.path().join("spool").display(),
        ),
    );
    let agent = Agent::start_tailing(dir.path(), &cfg);
    let mut n = 1000;
    for round in 0..4 {
        append_numbered(&log, "p", n, 20_000);
        n += 20_000;
        std::fs::rename(&log, dir.path().join(format!("app.log.{round}"))).unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    append_numbered(&log, "p", n, 100);
    n += 100;
    let parked = || {
        http_get(port, "/api/v1/metrics/prometheus")
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with("logferry_input_rotated_parked{name=\"tail.0\"}"))
                    .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
            })
            .unwrap_or(0)
    };
    wait_until(T, "rotated files parked", || parked() >= 1);
    let open_rotated = std::fs::read_dir(format!("/proc/{}/fd", agent.child.id()))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().contains("app.log."))
        .count();
    assert!(
        open_rotated + parked() <= 4,
        "{open_rotated} rotated files open beside {} parked",
        parked()
    );
    std::fs::remove_file(&store).unwrap();
    let objects = store.join("logs/namespace-ns.pod-p.cont-c");
    let read_all = || {
        std::fs::read_dir(&objects)
            .map(|d| {
                d.flatten()
                    .flat_map(|o| object_logs(&std::fs::read(o.path()).unwrap_or_default()))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    wait_until(T, "every line uploaded", || read_all().len() >= n);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(assert_all_present(&read_all(), "p", n), 0, "no duplicates");
    assert_eq!(parked(), 0, "parked files were read to their end");
    assert!(!agent.log_text().contains("lost"), "{}", agent.log_text());
}
