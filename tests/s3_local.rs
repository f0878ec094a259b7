//! The `s3` output on the local-directory store (`endpoint file://...`), through the real binary:
//! append vs overwrite on static keys, compressed bodies, the spool across kill -9, key formats.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
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

/// A config with one tail input per `(tag, path)` and the `s3` output on the local store;
/// `service` and `output` are extra lines for those sections.
fn local_config(dir: &Path, inputs: &[(&str, &Path)], service: &str, output: &str) -> PathBuf {
    let mut text = format!(
        "[SERVICE]\n    Flush 1\n    Grace 2\n    scheduler.base 1\n    scheduler.cap 1\n{service}"
    );
    for (i, (tag, path)) in inputs.iter().enumerate() {
        text.push_str(&format!(
            "[INPUT]\n    Name tail\n    Path {}\n    Tag {tag}\n    Read_from_Head On\n    Refresh_Interval 1\n    DB {}\n",
            path.display(),
            dir.join(format!("offsets-{i}.db")).display()
        ));
    }
    text.push_str(&format!(
        "[OUTPUT]\n    Name s3\n    Match *\n    bucket local\n    endpoint file://{}\n    store_dir {}\n    json_date_key false\n    Retry_Limit no_limits\n{output}",
        dir.join("store").display(),
        dir.join("spool").display()
    ));
    write_config(dir, "agent.conf", &text)
}

/// Makes every upload to the local store fail: its root is a regular file.
fn block_store(dir: &Path) {
    std::fs::write(dir.join("store"), "blocks the store").unwrap();
}

fn unblock_store(dir: &Path) {
    std::fs::remove_file(dir.join("store")).unwrap();
}

/// The `log` values of every object under the local store (temp files skipped).
fn stored_logs(dir: &Path) -> Vec<String> {
    logs_under(&dir.join("store"))
}

/// Lines held by the spool, open buffers and sealed chunks.
fn spool_lines(dir: &Path) -> usize {
    let spool = dir.join("spool/local");
    spooled_lines(&spool.join("open")) + spooled_lines(&spool.join("sealed"))
}

fn prometheus_value(port: u16, series: &str) -> Option<i64> {
    http_get(port, "/api/v1/metrics/prometheus").and_then(|(_, body)| {
        body.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    })
}

/// Issue 1.5: a tag sealed by size and reopened within the same second must not reuse the
/// buffer's id, or the restart deletes the new buffer's metadata and orphans acknowledged data.
#[test]
fn buffers_reopened_within_a_second_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "s", 0, 30_000);
    block_store(dir.path());
    let cfg = local_config(
        dir.path(),
        &[("t", &log)],
        "",
        "    total_file_size 1M\n    upload_timeout 10m\n    s3_key_format /logs/$TAG/$INDEX\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "every line spooled", || {
        spool_lines(dir.path()) >= 30_000
    });
    agent.kill9();
    unblock_store(dir.path());
    let mut agent = Agent::start_tailing(dir.path(), &cfg);
    agent.sigterm();
    assert!(agent.wait_exit(T).success(), "{}", agent.log_text());
    assert_eq!(assert_all_present(&stored_logs(dir.path()), "s", 30_000), 0);
}

/// Issue 1.6: a sealed chunk torn by a crash (a partial last record) is cut at its last complete
/// line; the log names the chunk and the bytes dropped, a metric counts them, the rest ships.
#[test]
fn a_torn_spool_chunk_is_cut_at_its_last_line_and_the_rest_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "t", 0, 1000);
    block_store(dir.path());
    let cfg = local_config(
        dir.path(),
        &[("t", &log)],
        "",
        "    upload_timeout 1s\n    s3_key_format /logs/$TAG/$INDEX\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let sealed = dir.path().join("spool/local/sealed");
    wait_until(T, "chunk sealed", || spooled_lines(&sealed) >= 1000);
    agent.kill9();
    let chunk = std::fs::read_dir(&sealed)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "data"))
        .unwrap();
    // As if the crash came before the upload was first tried: no compressed body yet.
    for e in std::fs::read_dir(&sealed).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "body") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let torn = b"{\"log\":\"t-99999999 torn";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&chunk)
        .unwrap()
        .write_all(torn)
        .unwrap();
    unblock_store(dir.path());
    let port = free_port();
    let cfg = local_config(
        dir.path(),
        &[("t", &log)],
        &format!("    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n"),
        "    upload_timeout 1s\n    s3_key_format /logs/$TAG/$INDEX\n",
    );
    let agent = Agent::start_tailing(dir.path(), &cfg);
    wait_until(T, "chunk uploaded", || {
        std::fs::read_dir(&sealed).is_ok_and(|d| d.count() == 0)
    });
    assert_eq!(assert_all_present(&stored_logs(dir.path()), "t", 1000), 0);
    let name = chunk.file_name().unwrap().to_string_lossy().into_owned();
    let text = agent.log_text();
    assert!(
        text.contains(&name) && text.contains(&format!("bytes_dropped={}", torn.len())),
        "{text}"
    );
    assert_eq!(
        prometheus_value(
            port,
            "logferry_output_spool_damaged_bytes_total{name=\"s3.0\"}"
        ),
        Some(torn.len() as i64)
    );
}

/// Issue 1.11: a spool write that fails half-way (here the file size limit, as a full disk
/// would) is cut back to the last good length, so the retry does not glue a torn record to the
/// next one or repeat records.
#[test]
fn a_partial_spool_write_is_cut_back_before_the_retry() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "w", 0, 20_000);
    let cfg = local_config(
        dir.path(),
        &[("t", &log)],
        "",
        "    total_file_size 1M\n    upload_timeout 1s\n    s3_key_format /logs/$TAG/$INDEX\n",
    );
    // Small batches, so that every retried write fits in a fresh buffer under the limit.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace(
            "    Refresh_Interval 1\n",
            "    Refresh_Interval 1\n    Mem_Buf_Limit 128K\n",
        ),
    )
    .unwrap();
    let agent = Agent::start_custom(dir.path(), &cfg, |c| {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: 600_000,
                    rlim_max: 600_000,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    wait_until(T, "every line uploaded", || {
        stored_logs(dir.path()).len() >= 20_000
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        assert_all_present(&stored_logs(dir.path()), "w", 20_000),
        0,
        "no record written twice: {}",
        agent.log_text()
    );
}

/// Issue 2.2: `store_dir_limit_size` below `total_file_size` fills the spool with an open
/// buffer that never reaches its size; the largest open buffer is sealed so uploads free space.
#[test]
fn a_full_spool_with_nothing_sealed_seals_the_largest_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "f", 0, 10_000);
    let cfg = local_config(
        dir.path(),
        &[("t", &log)],
        "",
        "    store_dir_limit_size 200K\n    total_file_size 1M\n    upload_timeout 10m\n    s3_key_format /logs/$TAG/$INDEX\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    // Far more than the limit holds: uploads went on while the spool was full.
    wait_until(T, "uploads while the spool is full", || {
        stored_logs(dir.path()).len() >= 5_000
    });
    agent.sigterm();
    assert!(agent.wait_exit(T).success(), "{}", agent.log_text());
    assert_eq!(assert_all_present(&stored_logs(dir.path()), "f", 10_000), 0);
}

/// Issue 2.3: one key whose uploads fail does not hold back the others (per-key order, not one
/// queue for the output); it goes through once its cause is gone.
#[test]
fn a_failing_key_does_not_block_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    append_numbered(&a, "a", 0, 20_000); // over total_file_size: sealed and queued first
    append_numbered(&b, "b", 0, 100);
    // The object key `logs/a` is a directory: every upload of tag `a` fails.
    let blocker = dir.path().join("store/logs/a");
    std::fs::create_dir_all(&blocker).unwrap();
    let cfg = local_config(
        dir.path(),
        &[("a", &a), ("b", &b)],
        "",
        "    total_file_size 1M\n    upload_timeout 2s\n    s3_key_format /logs/$TAG\n    static_file_path true\n",
    );
    let agent = Agent::start(dir.path(), &cfg);
    let object = |tag: &str| {
        std::fs::read(dir.path().join("store/logs").join(tag))
            .map(|b| object_logs(&b))
            .unwrap_or_default()
    };
    wait_until(T, "tag b uploaded while tag a fails", || {
        object("b").len() >= 100
    });
    assert!(object("a").is_empty());
    std::fs::remove_dir(&blocker).unwrap();
    wait_until(T, "tag a uploaded once it can be", || {
        object("a").len() >= 20_000
    });
    assert_eq!(assert_all_present(&object("a"), "a", 20_000), 0);
    assert_eq!(assert_all_present(&object("b"), "b", 100), 0);
    drop(agent);
}

/// Issue 2.1: SIGTERM while `write` waits for space in a full spool (uploads failing) ends
/// within Grace: the wait observes the engine's hard stop; the spooled data stays.
#[test]
fn sigterm_with_a_full_spool_exits_within_grace() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "g", 0, 10_000);
    block_store(dir.path());
    let cfg = local_config(
        dir.path(),
        &[("t", &log)],
        "",
        "    store_dir_limit_size 200K\n    total_file_size 1M\n    upload_timeout 1s\n    s3_key_format /logs/$TAG/$INDEX\n",
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "spool full", || {
        agent.log_text().contains("store_dir_limit_size reached")
    });
    agent.sigterm();
    // Grace is 2 s; a hang (the bug) is caught by this bound.
    agent.wait_exit(Duration::from_secs(30));
    assert!(spool_lines(dir.path()) > 0, "spooled data is kept");
}

/// Section 4: `--dry-run` validates and writes nothing; the spool folder is created at start.
#[test]
fn dry_run_creates_no_spool_folder() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("c.log");
    let cfg = local_config(dir.path(), &[("t", &log)], "", "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_logferry"))
        .args(["--dry-run", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("spool").exists());
}
