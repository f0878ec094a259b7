//! A simulated Kubernetes node, end to end with the real binary: `containers/*.log` symlinks into
//! `pods/<ns>_<pod>_<uid>/<container>/0.log`, the kubelet's rotation (rename `0.log` to
//! `0.log.<time>`, gzip the previous rotated file, keep 5), agents killed with -9 and restarted
//! after the node moved on. Every line must arrive; only batches in flight at a kill may repeat.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::node::{node_writer, Container};
use common::*;

const T: Duration = Duration::from_secs(90);

/// Union's tag, as its DaemonSet config builds it from the symlink name.
const UNION_TAG: &str = "namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>";
const UNION_TAG_REGEX: &str = r"(?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-";

/// Lines that can be in flight at a kill (and so repeat after it): `Mem_Buf_Limit 5MB` charges
/// each ~95-byte line plus 320 bytes of record overhead.
const IN_FLIGHT_LINES: usize = 5_000_000 / (95 + 320);

/// Where the agent ships: per-tag files under `out/`, or Union's `s3` output (static keys
/// `persisted-logs/<tag>`, appended) on an S3 server.
enum Sink {
    Files,
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

impl Sink {
    fn output(&self, root: &Path) -> String {
        match self {
            Sink::Files => format!(
                "[OUTPUT]\n    Name file\n    Match *\n    Path {}/out\n    Format plain\n",
                root.display()
            ),
            Sink::S3 { bucket, .. } => format!(
                "[OUTPUT]\n    Name s3\n    Match *\n    upload_timeout 1s\n    s3_key_format /persisted-logs/$TAG\n    static_file_path true\n    json_date_key false\n    region us-east-1\n    bucket {bucket}\n    endpoint {endpoint}\n    store_dir {root}/spool\n    store_dir_limit_size 2M\n    Retry_Limit no_limits\n",
                endpoint = std::env::var("NODE_S3_ENDPOINT").unwrap(),
                root = root.display()
            ),
        }
    }

    /// Every `log` value shipped, and the file or object names (the tags).
    fn shipped(&self, root: &Path) -> (Vec<String>, Vec<String>) {
        let mut values = Vec::new();
        let mut tags = Vec::new();
        match self {
            Sink::Files => {
                for e in std::fs::read_dir(root.join("out")).unwrap().flatten() {
                    tags.push(e.file_name().to_string_lossy().to_string());
                    values.extend(log_values(&e.path()));
                }
            }
            Sink::S3 { client, bucket } => {
                for key in common::peers::list_keys(client, bucket, "persisted-logs/") {
                    if let Some(body) = common::peers::get_object(client, bucket, &key) {
                        values.extend(object_logs(&body));
                    }
                    tags.push(key.trim_start_matches("persisted-logs/").to_string());
                }
            }
        }
        tags.sort();
        (values, tags)
    }

    fn count(&self, root: &Path) -> usize {
        match self {
            Sink::Files => std::fs::read_dir(root.join("out"))
                .map(|d| d.flatten().map(|e| count_lines(&e.path())).sum())
                .unwrap_or(0),
            Sink::S3 { .. } => self.shipped(root).0.len(),
        }
    }
}

/// Union's tail settings, shipping to `sink`.
fn node_config_to(root: &Path, extra: &str, sink: &Sink) -> PathBuf {
    std::fs::create_dir_all(root.join("out")).unwrap();
    write_config(
        root,
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 5\n[INPUT]\n    Name tail\n    Tag {UNION_TAG}\n    Tag_Regex {UNION_TAG_REGEX}\n    Path {root}/containers/*.log\n    DB {root}/flb_kube.db\n    multiline.parser docker, cri\n    Mem_Buf_Limit 5MB\n    Skip_Long_Lines On\n    Refresh_Interval 1\n    Rotate_Wait 1\n{extra}{output}",
            root = root.display(),
            output = sink.output(root),
        ),
    )
}

/// Union's tail settings into per-tag files under `out/`.
fn node_config(root: &Path, extra: &str) -> PathBuf {
    node_config_to(root, extra, &Sink::Files)
}

fn shipped_count(root: &Path) -> usize {
    Sink::Files.count(root)
}

/// Waits until every written line arrived, then checks each container's lines and the tags.
fn assert_complete(root: &Path, containers: &[Container]) -> usize {
    assert_complete_in(root, containers, &Sink::Files)
}

fn assert_complete_in(root: &Path, containers: &[Container], sink: &Sink) -> usize {
    let total: usize = containers.iter().map(|c| c.written).sum();
    let mut polls = 0;
    wait_until(T, "every line shipped", || {
        polls += 1;
        // Counting is cheap for files; distinct lines (duplicates after a kill are not
        // progress) are checked every second.
        polls % 50 == 1 && sink.count(root) >= total && {
            let (values, _) = sink.shipped(root);
            values
                .into_iter()
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= total
        }
    });
    std::thread::sleep(Duration::from_millis(2500));
    let (values, tags) = sink.shipped(root);
    let dups: usize = containers
        .iter()
        .map(|c| assert_all_present(&values, &c.prefix, c.written))
        .sum();
    for t in &tags {
        assert!(
            t.starts_with("namespace-team-a.pod-") && !t.contains('/') && !t.contains("0.log"),
            "tag built from the symlink name, not the pod path: {t}"
        );
    }
    dups
}

/// Kills the agent once what was written so far is shipped and its offsets committed.
fn kill_when_shipped(agent: &mut Agent, root: &Path, containers: &[Container]) {
    let total: usize = containers.iter().map(|c| c.written).sum();
    wait_until(T, "lines shipped before the kill", || {
        shipped_count(root) >= total
    });
    std::thread::sleep(Duration::from_millis(700));
    agent.kill9();
}

#[test]
fn symlinked_container_rotated_while_down_is_read_to_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![
        Container::new(root, "team-a", "web-1", "app"),
        Container::new(root, "team-a", "web-2", "sidecar"),
    ];
    let cfg = node_config(root, "");
    let mut agent = Agent::start_tailing(root, &cfg);
    for c in cs.iter_mut() {
        c.write(2_000);
    }
    kill_when_shipped(&mut agent, root, &cs);
    // While down: more lines, then a rotation; the old file's end is only in 0.log.<time>.
    for c in cs.iter_mut() {
        c.write(3_000);
        c.rotate();
        c.write(500);
    }
    let _agent = Agent::start(root, &cfg);
    let dups = assert_complete(root, &cs);
    assert_eq!(dups, 0, "offsets were committed before the kill");
}

#[test]
fn kubelet_gzip_while_down_is_read_from_the_compressed_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    let cfg = node_config(root, "");
    let mut agent = Agent::start_tailing(root, &cfg);
    cs[0].write(2_000);
    kill_when_shipped(&mut agent, root, &cs);
    // Three rotations while down: the unread end of the file followed at the kill, and a
    // whole file born while down, now exist only gzipped.
    let c = &mut cs[0];
    c.write(3_000);
    c.rotate();
    c.write(4_000);
    c.rotate();
    c.write(1_000);
    c.rotate();
    c.write(700);
    let agent = Agent::start(root, &cfg);
    let dups = assert_complete(root, &cs);
    assert_eq!(dups, 0);
    assert!(
        agent.log_text().contains("compressed"),
        "reading from a compressed rotation is logged:\n{}",
        agent.log_text()
    );
}

#[test]
fn files_born_and_rotated_while_down_in_a_plain_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let log = root.join("app.log");
    // A numbered sibling that was read long ago must not be read again.
    append_numbered(&log, "p", 0, 1_000);
    let cfg = write_config(
        root,
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n[INPUT]\n    Name tail\n    Path {log}\n    Tag app\n    DB {db}\n    Read_from_Head On\n    Refresh_Interval 1\n    Rotate_Wait 1\n[OUTPUT]\n    Name file\n    Match *\n    Path {out}\n    File out.jsonl\n    Format plain\n",
            log = log.display(),
            db = root.join("offsets.db").display(),
            out = root.display(),
        ),
    );
    let out = root.join("out.jsonl");
    let mut agent = Agent::start_tailing(root, &cfg);
    wait_until(T, "first lines", || count_lines(&out) >= 1_000);
    std::fs::rename(&log, root.join("app.log.1")).unwrap();
    append_numbered(&log, "p", 1_000, 1_000);
    wait_until(T, "after a rotation", || count_lines(&out) >= 2_000);
    std::thread::sleep(Duration::from_millis(2_500));
    agent.kill9();
    // While down: logrotate shifts the numbered files, and a file is born and rotated.
    std::fs::rename(root.join("app.log.1"), root.join("app.log.2")).unwrap();
    append_numbered(&log, "p", 2_000, 1_000);
    std::fs::rename(&log, root.join("app.log.1")).unwrap();
    append_numbered(&log, "p", 3_000, 2_000);
    std::fs::rename(&log, root.join("app.log.0")).unwrap();
    append_numbered(&log, "p", 5_000, 500);
    let _agent = Agent::start(root, &cfg);
    wait_until(T, "every line", || count_lines(&out) >= 5_500);
    std::thread::sleep(Duration::from_millis(1_500));
    let dups = assert_all_present(&log_values(&out), "p", 5_500);
    assert_eq!(dups, 0, "siblings already read are not read again");
}

#[test]
fn last_line_without_newline_in_a_rotated_file_is_shipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    let cfg = node_config(root, "");
    let agent = Agent::start_tailing(root, &cfg);
    cs[0].write(100);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&cs[0].log)
        .unwrap();
    // The runtime died mid-line: the last line has no newline.
    write!(
        f,
        "2026-11-30T10:00:00.000000000Z stdout F web-1-app-{:08} cut",
        100
    )
    .unwrap();
    drop(f);
    cs[0].written += 1;
    cs[0].rotate();
    cs[0].write(0);
    assert_eq!(assert_complete(root, &cs), 0);
    wait_until(T, "the rotated file closed", || {
        agent.log_text().contains("read to its end and closed")
    });
}

#[test]
fn an_empty_offsets_db_means_a_restart_not_a_first_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = node_config(root, "");
    let mut agent = Agent::start_tailing(root, &cfg);
    std::thread::sleep(Duration::from_millis(500));
    agent.kill9();
    assert!(root.join("flb_kube.db").exists());
    // A container started while the agent was down: its lines are new data.
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    cs[0].write(1_000);
    let _agent = Agent::start(root, &cfg);
    assert_eq!(assert_complete(root, &cs), 0);
}

#[test]
fn a_damaged_offsets_db_is_moved_aside_and_files_are_read_from_their_head() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    // Rotated files whose state was in the damaged DB: read again (plain and compressed).
    cs[0].write(700);
    cs[0].rotate();
    cs[0].write(800);
    cs[0].rotate();
    cs[0].write(1_000);
    let db = root.join("flb_kube.db");
    std::fs::write(
        &db,
        b"this is not a SQLite database, it was overwritten\n".repeat(100),
    )
    .unwrap();
    let cfg = node_config(root, "");
    let agent = Agent::start(root, &cfg);
    let dups = assert_complete(root, &cs);
    assert_eq!(dups, 0);
    let log = agent.log_text();
    assert!(
        log.contains(&db.display().to_string()) && log.contains("corrupt"),
        "the damaged DB is named:\n{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("flb_kube.db.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged DB is kept for inspection");

    // With DB.On_Corrupt exit, the agent refuses to start, names the DB and exits non-zero.
    let mut agent = agent;
    agent.sigterm();
    assert!(agent.wait_exit(Duration::from_secs(20)).success());
    std::fs::write(&db, b"garbage again".repeat(100)).unwrap();
    let strict = node_config(root, "    DB.On_Corrupt exit\n");
    let mut agent = Agent::start(root, &strict);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "a refused DB exits non-zero");
    assert!(agent.log_text().contains(&db.display().to_string()));
}

#[test]
fn an_input_that_dies_makes_the_agent_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = write_config(
        root,
        "agent.conf",
        &format!(
            "[INPUT]\n    Name tcp\n    Listen 127.0.0.1\n    Port {port}\n[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n"
        ),
    );
    let mut agent = Agent::start(root, &cfg);
    let status = agent.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "exit status {status:?}");
    assert!(
        agent.log_text().contains(&port.to_string()),
        "the reason names the port:\n{}",
        agent.log_text()
    );
}

#[test]
fn kill_9_crash_loop_on_a_node_with_kubelet_rotation_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cs = vec![
        Container::new(root, "team-a", "web-1", "app"),
        Container::new(root, "team-a", "web-1", "proxy"),
        Container::new(root, "team-a", "web-2", "app"),
        Container::new(root, "team-a", "batch-7", "worker"),
    ];
    let cfg = node_config(root, "");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut agent = Agent::start_tailing(root, &cfg);
    let writer = node_writer(cs, 20, 256 * 1024, stop.clone());
    // Kill -9 at irregular moments, sometimes staying down across a rotation or two.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    let kills = 8;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(300 + next(900)));
        agent.kill9();
        std::thread::sleep(Duration::from_millis(next(1_500)));
        agent = Agent::start(root, &cfg);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let cs = writer.join().unwrap();
    let rotations: usize = cs.iter().map(|c| c.rotations).sum();
    assert!(rotations >= 8, "the node rotated ({rotations} rotations)");
    let dups = assert_complete(root, &cs);
    let total: usize = cs.iter().map(|c| c.written).sum();
    eprintln!("{kills} kills, {rotations} rotations, {total} lines: {dups} duplicates");
    assert!(dups <= kills * IN_FLIGHT_LINES, "{dups} duplicates");
    drop(agent);
}

#[test]
fn kill_9_crash_loop_and_an_outage_with_a_bounded_spool_into_s3() {
    let p = common::peers::Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A private S3 server that can be taken down and brought back with its data.
    let port = free_port();
    let data = root.join("s3-data");
    std::fs::create_dir_all(&data).unwrap();
    let mut server = common::peers::start_s3s(&p, port, &data);
    std::env::set_var("NODE_S3_ENDPOINT", format!("http://127.0.0.1:{port}"));
    let client = p.s3(
        &format!("http://127.0.0.1:{port}"),
        p.var("S3S_ACCESS_KEY"),
        p.var("S3S_SECRET_KEY"),
    );
    common::peers::create_bucket(&client, "node-logs");
    let sink = Sink::S3 {
        client,
        bucket: "node-logs".into(),
    };
    let cs = vec![
        Container::new(root, "team-a", "web-1", "app"),
        Container::new(root, "team-a", "web-2", "app"),
        Container::new(root, "team-a", "batch-7", "worker"),
    ];
    let cfg = node_config_to(root, "", &sink);
    let run = |cmd: &mut std::process::Command| {
        common::peers::isolated_aws_env(
            cmd,
            Some((p.var("S3S_ACCESS_KEY"), p.var("S3S_SECRET_KEY"))),
        );
    };
    let mut agent = Agent::start_custom(root, &cfg, run);
    // Files present at the very first start are followed from their end (Fluent Bit's rule).
    wait_until(T, "tail input started", || {
        agent.log_text().contains("tail input started")
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = node_writer(cs, 10, 256 * 1024, stop.clone());
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(500 + next(1_500)));
        if round == 2 {
            // The store goes away while the node keeps writing and rotating: the 2 MB spool
            // fills, the input pauses, nothing is dropped.
            let _ = server.kill();
            let _ = server.wait();
            std::thread::sleep(Duration::from_secs(6));
            server = common::peers::start_s3s(&p, port, &data);
        }
        agent.kill9();
        std::thread::sleep(Duration::from_millis(next(1_500)));
        agent = Agent::start_custom(root, &cfg, run);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let cs = writer.join().unwrap();
    let dups = assert_complete_in(root, &cs, &sink);
    let total: usize = cs.iter().map(|c| c.written).sum();
    eprintln!("s3: 6 kills and an outage, {total} lines: {dups} duplicates");
    assert!(dups <= 6 * IN_FLIGHT_LINES, "{dups} duplicates");
    drop(agent);
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_file_read_to_its_end_and_rotated_while_down_is_not_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    let cfg = node_config(root, "");
    let mut agent = Agent::start_tailing(root, &cfg);
    cs[0].write(3_000);
    kill_when_shipped(&mut agent, root, &cs);
    // Rotated twice while down, nothing new in the first file: it is not shipped again,
    // neither as the rotated file nor from its compressed copy.
    cs[0].rotate();
    cs[0].write(500);
    cs[0].rotate();
    cs[0].write(200);
    let _agent = Agent::start(root, &cfg);
    assert_eq!(assert_complete(root, &cs), 0);
}

#[test]
fn fast_rotations_between_scans_are_caught_by_watching_the_pod_directories() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    // Fluent Bit's default Refresh_Interval: rotations must be noticed without a rescan tick.
    let cfg = node_config(root, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("Refresh_Interval 1\n", "Refresh_Interval 60\n");
    std::fs::write(&cfg, text).unwrap();
    let _agent = Agent::start_tailing(root, &cfg);
    for _ in 0..4 {
        cs[0].write(2_000);
        cs[0].rotate();
        std::thread::sleep(Duration::from_millis(300));
    }
    cs[0].write(100);
    assert_eq!(assert_complete(root, &cs), 0);
}

/// A node with one container whose first lines were shipped, and its agent frozen (SIGSTOP):
/// it gets no CPU, so it sees no scan tick and no inotify event until it is thawed.
fn frozen_node(extra: &str) -> (tempfile::TempDir, Vec<Container>, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut cs = vec![Container::new(root, "team-a", "web-1", "app")];
    let cfg = node_config(root, extra);
    let agent = Agent::start_tailing(root, &cfg);
    cs[0].write(100);
    wait_until(T, "the first lines shipped", || shipped_count(root) >= 100);
    agent.freeze();
    (dir, cs, agent)
}

#[test]
fn files_born_rotated_and_compressed_while_the_agent_is_starved_are_read() {
    // Meanwhile the kubelet rotates three times, so a file is born, rotated and compressed
    // unseen: only its `.gz` copy is left when the agent runs again.
    let (dir, mut cs, agent) = frozen_node("");
    for _ in 0..3 {
        cs[0].write(700);
        cs[0].rotate();
    }
    cs[0].write(300);
    agent.thaw();
    assert_eq!(assert_complete(dir.path(), &cs), 0);
}

#[test]
fn a_parked_rotated_file_compressed_before_its_turn_is_read_from_the_copy() {
    // One rotated file open at a time: the others wait their turn, parked. While the agent is
    // frozen, two rotated files pile up unread; once it runs, one is read and the other
    // parked, and the kubelet compresses that one before its turn.
    let (dir, mut cs, agent) = frozen_node("    Rotated_Files_Max 1\n");
    cs[0].write(60_000);
    cs[0].rotate();
    cs[0].write(60_000);
    cs[0].rotate();
    cs[0].write(60_000);
    agent.thaw();
    // Usually parked at once; when the agent read the first one to its end before it listed
    // the second, nothing is parked and the case is a plain rotation (still checked below).
    let start = std::time::Instant::now();
    while !agent.log_text().contains("closing this one until its turn")
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    cs[0].rotate();
    cs[0].write(100);
    assert_eq!(assert_complete(dir.path(), &cs), 0);
    assert!(
        !agent.log_text().contains("unread bytes are lost"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn a_pod_born_and_rotated_twice_while_the_agent_is_starved_is_read_whole() {
    let (dir, mut cs, agent) = frozen_node("");
    let root = dir.path();
    let mut born = Container::new(root, "team-a", "web-9", "app");
    for _ in 0..2 {
        born.write(500);
        born.rotate();
    }
    born.write(50);
    cs.push(born);
    agent.thaw();
    assert_eq!(assert_complete(root, &cs), 0);
}
