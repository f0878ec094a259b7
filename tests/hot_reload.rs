//! Hot reload with the real binary: a ConfigMap-style symlink swap, `POST /api/v2/reload` and
//! `SIGHUP` apply a new config in place while lines keep coming; a bad config is refused and
//! the running pipeline keeps going; nothing is lost across a reload.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

fn http_post(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn config_text(dir: &Path, port: u16, version: &str, hot_reload: bool) -> String {
    format!(
        "[SERVICE]\n    Flush 1\n    Grace 5\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n    Hot_Reload {}\n\
         [INPUT]\n    Name tail\n    Path {}\n    Tag app\n    Read_from_Head On\n    Refresh_Interval 1\n    DB {}\n\
         [FILTER]\n    Name record_modifier\n    Match *\n    Record version {version}\n\
         [OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File out.json\n    Format plain\n",
        if hot_reload { "On" } else { "Off" },
        dir.join("app.log").display(),
        dir.join("tail.db").display(),
        dir.display()
    )
}

/// The kubelet's ConfigMap layout: `fluent-bit.conf -> ..data/fluent-bit.conf`, `..data ->
/// ..<version>/`; a new version is written beside it and `..data` swapped atomically.
fn configmap(dir: &Path, version: &str, text: &str) -> PathBuf {
    let conf = dir.join("conf");
    let versioned = conf.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("fluent-bit.conf"), text).unwrap();
    let tmp = conf.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, conf.join("..data")).unwrap();
    let link = conf.join("fluent-bit.conf");
    if !link.exists() {
        std::os::unix::fs::symlink("..data/fluent-bit.conf", &link).unwrap();
    }
    link
}

fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out.json"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Appends numbered lines to `app.log` until stopped; returns how many it wrote.
fn writer(dir: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, path) = (stop.clone(), dir.join("app.log"));
    let handle = std::thread::spawn(move || {
        let mut n = 0;
        while !flag.load(Ordering::SeqCst) {
            append_numbered(&path, "line", n, 50);
            n += 50;
            std::thread::sleep(Duration::from_millis(20));
        }
        n
    });
    (stop, handle)
}

#[test]
fn a_configmap_swap_reloads_in_place_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let link = configmap(
        dir.path(),
        "v1",
        &config_text(dir.path(), port, "one", true),
    );
    let agent = Agent::start(dir.path(), &link);
    let (stop, handle) = writer(dir.path());
    wait_until(Duration::from_secs(30), "first records", || {
        records(dir.path()).len() > 500
    });
    configmap(
        dir.path(),
        "v2",
        &config_text(dir.path(), port, "two", true),
    );
    wait_until(
        Duration::from_secs(60),
        "records from the new config",
        || records(dir.path()).iter().any(|r| r["version"] == "two"),
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let written = handle.join().unwrap();
    wait_until(Duration::from_secs(60), "every line", || {
        records(dir.path()).len() >= written
    });
    std::thread::sleep(Duration::from_secs(2));
    let all = records(dir.path());
    let logs: Vec<String> = all
        .iter()
        .map(|r| r["log"].as_str().unwrap().to_string())
        .collect();
    let duplicates = assert_all_present(&logs, "line", written);
    // A reload delivers what was read before it stops: nothing is read twice.
    assert_eq!(duplicates, 0, "duplicates across the reload");
    // One pipeline switch, in the same process, announced on the API and in metrics.
    assert_eq!(
        http_get(port, "/api/v2/reload").unwrap().1,
        r#"{"hot_reload_count":1}"#
    );
    assert_eq!(metric(port, "fluentbit_hot_reloaded_times"), 1);
    assert!(agent.log_text().contains("configuration reloaded"));
    // Versions never interleave: once "two" starts, "one" is over.
    let first_two = all.iter().position(|r| r["version"] == "two").unwrap();
    assert!(all[first_two..].iter().all(|r| r["version"] == "two"));
}

#[test]
fn a_bad_config_is_refused_and_the_running_pipeline_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(&conf, config_text(dir.path(), port, "one", false)).unwrap();
    // Hot reload from the command line (the chart's `--enable-hot-reload`); the watcher is
    // not needed here: the reload is asked for over HTTP and by SIGHUP.
    let agent = Agent::start_with(dir.path(), &conf, &["--enable-hot-reload"]);
    append_numbered(&dir.path().join("app.log"), "line", 0, 100);
    wait_until(Duration::from_secs(30), "first records", || {
        records(dir.path()).len() == 100
    });
    std::fs::write(
        &conf,
        config_text(dir.path(), port, "two", false).replace("Name file", "Name no_such_output"),
    )
    .unwrap();
    let (status, body) = http_post(port, "/api/v2/reload");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"reload":"done","status":0}"#)
    );
    wait_until(Duration::from_secs(30), "the rejection logged", || {
        agent.log_text().contains("reload rejected")
    });
    assert!(
        agent.log_text().contains("no_such_output"),
        "{}",
        agent.log_text()
    );
    append_numbered(&dir.path().join("app.log"), "line", 100, 100);
    wait_until(
        Duration::from_secs(30),
        "the old pipeline still ships",
        || records(dir.path()).len() == 200,
    );
    assert!(records(dir.path()).iter().all(|r| r["version"] == "one"));
    assert_eq!(
        http_get(port, "/api/v2/reload").unwrap().1,
        r#"{"hot_reload_count":0}"#
    );
    // Fixed, then SIGHUP.
    std::fs::write(&conf, config_text(dir.path(), port, "two", false)).unwrap();
    let pid = agent.child.id() as libc::pid_t;
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_until(Duration::from_secs(60), "reloaded by SIGHUP", || {
        http_get(port, "/api/v2/reload").is_some_and(|r| r.1 == r#"{"hot_reload_count":1}"#)
    });
    append_numbered(&dir.path().join("app.log"), "line", 200, 100);
    wait_until(Duration::from_secs(30), "lines after the reload", || {
        records(dir.path()).len() == 300
    });
    let all = records(dir.path());
    assert!(all[200..].iter().all(|r| r["version"] == "two"));
    let logs: Vec<String> = all
        .iter()
        .map(|r| r["log"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(assert_all_present(&logs, "line", 300), 0);
}

#[test]
fn reload_is_refused_when_hot_reload_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("fluent-bit.conf");
    std::fs::write(&conf, config_text(dir.path(), port, "one", false)).unwrap();
    let _agent = Agent::start(dir.path(), &conf);
    wait_until(Duration::from_secs(30), "HTTP server", || {
        http_get(port, "/api/v2/reload").is_some()
    });
    let (status, body) = http_post(port, "/api/v2/reload");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"reload":"not enabled","status":-1}"#)
    );
}
