//! The node-level proof: the Helm chart's rendered ConfigMap (Union's tail and `s3` output plus
//! the `kubernetes` filter) runs on a simulated node — the kubelet's layout and rotation, pods
//! created and deleted in a Kubernetes API stand-in (kmock) — shipping to s3s-fs, across a
//! kill -9 and restart of the agent and a ConfigMap update applied by hot reload. Every line of
//! every container must arrive under `persisted-logs/namespace-<ns>.pod-<pod>.cont-<c>` with its
//! pod's metadata.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::kube::{kmock, request as api};
use common::node::{node_writer, Container};
use common::peers::{self, Peers};
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(120);
/// Lines a kill can leave in flight (`Mem_Buf_Limit 5MB`, ~95-byte lines + record overhead).
const IN_FLIGHT_LINES: usize = 5_000_000 / (95 + 320);

fn create_pod(port: u16, pod: &str, containers: &[&str]) {
    let body = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod, "namespace": "team-a", "uid": format!("uid-{pod}"),
                     "labels": {"app": pod}},
        "spec": {"nodeName": "node-1",
                 "containers": containers.iter().map(|c| json!({"name": c, "image": format!("registry.local/{c}:1")})).collect::<Vec<_>>()},
        "status": {"containerStatuses": containers.iter().map(|c| json!({"name": c,
                   "image": format!("registry.local/{c}:1"), "containerID": format!("containerd://{pod}-{c}")})).collect::<Vec<_>>()},
    });
    let status = api(
        port,
        "POST",
        "/api/v1/namespaces/team-a/pods",
        &body.to_string(),
    );
    assert!(status < 300, "create pod {pod}: HTTP {status}");
}

/// Renders the chart with `values` and writes its ConfigMap as the kubelet mounts one:
/// `conf/..<version>/<file>`, `conf/..data -> ..<version>`, `conf/<file> -> ..data/<file>`.
fn mount_configmap(root: &Path, values: &str, version: &str) -> PathBuf {
    let p = Peers::get();
    let values_file = root.join(format!("values-{version}.yaml"));
    std::fs::write(&values_file, values).unwrap();
    let out = Command::new(p.var("PEERS_PYTHON"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/chart.py"))
        .args([
            "render",
            concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/logferry"),
            "logferry",
            "logging",
        ])
        .arg(&values_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap();
    let cm: serde_norway::Value =
        serde_norway::from_str(&rendered["logferry/templates/configmap.yaml"]).unwrap();
    let conf = root.join("conf");
    let versioned = conf.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    let etc = format!("{}/", root.join("etc").display());
    let mut names = Vec::new();
    for (name, text) in cm["data"].as_mapping().unwrap() {
        let name = name.as_str().unwrap().to_string();
        // The image's /fluent-bit/etc/ is `root/etc/` here; the ConfigMap is `root/conf/`.
        let text = text
            .as_str()
            .unwrap()
            .replace("/fluent-bit/etc/conf/", &format!("{}/", conf.display()))
            .replace("/fluent-bit/etc/", &etc);
        std::fs::write(versioned.join(&name), text).unwrap();
        names.push(name);
    }
    let tmp = conf.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, conf.join("..data")).unwrap();
    for name in names {
        let link = conf.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    conf.join("fluent-bit.conf")
}

/// Union's DaemonSet values with the `kubernetes` filter (its pod fields taken from Union's tag
/// by a `Regex_Parser`), for a node rooted at `root`.
fn values(root: &Path, http: u16, kube: u16, s3: (&str, &str), extra_filter: &str) -> String {
    format!(
        r#"hotReload:
  enabled: true
config:
  service: |
    [SERVICE]
        Flush 1
        Grace 5
        Parsers_File /fluent-bit/etc/parsers.conf
        Parsers_File /fluent-bit/etc/conf/custom_parsers.conf
        HTTP_Server On
        HTTP_Listen 127.0.0.1
        HTTP_Port {http}
        Health_Check On
        storage.path {root}/state
  inputs: |
    [INPUT]
        Name                tail
        Tag                 namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>
        Tag_Regex           (?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-
        Path                {root}/containers/*.log
        DB                  {root}/flb_kube.db
        multiline.parser    docker, cri
        Mem_Buf_Limit       5MB
        Skip_Long_Lines     On
        Refresh_Interval    1
        Rotate_Wait         1
  filters: |
    [FILTER]
        Name kubernetes
        Match namespace-*
        Kube_URL http://127.0.0.1:{kube}
        Regex_Parser union_tag
        Labels On
        Annotations Off
{extra_filter}  outputs: |
    [OUTPUT]
        Name s3
        Match *
        upload_timeout 1s
        s3_key_format /persisted-logs/$TAG
        static_file_path true
        json_date_key false
        region us-east-1
        bucket {bucket}
        endpoint {endpoint}
        Retry_Limit no_limits
  customParsers: |
    [PARSER]
        Name   union_tag
        Format regex
        Regex  ^namespace-(?<namespace_name>[^.]+)\.pod-(?<pod_name>[^.]+)\.cont-(?<container_name>.+)$
"#,
        root = root.display(),
        endpoint = s3.0,
        bucket = s3.1,
    )
}

#[test]
fn the_charts_config_ships_every_line_with_metadata_across_a_crash_and_a_reload() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/parsers.conf"),
        root.join("etc/parsers.conf"),
    )
    .unwrap();
    let (_kmock, kube) = kmock();
    create_pod(kube, "web-1", &["app", "proxy"]);
    create_pod(kube, "web-2", &["app"]);
    create_pod(kube, "batch-7", &["worker"]);
    let s3 = p.s3s();
    // The S3 peer outlives the test: a bucket of its own, so earlier runs' objects are not read.
    let bucket = format!("node-proof-{}", std::process::id());
    peers::create_bucket(&s3, &bucket);
    let endpoint = (p.var("S3S_ENDPOINT"), bucket.as_str());
    let http = free_port();
    let cfg = mount_configmap(root, &values(root, http, kube, endpoint, ""), "v1");
    let env = |cmd: &mut Command| {
        peers::isolated_aws_env(
            cmd,
            Some((p.var("S3S_ACCESS_KEY"), p.var("S3S_SECRET_KEY"))),
        );
        cmd.env("NODE_NAME", "node-1").arg("--enable-hot-reload");
    };
    let mut agent = Agent::start_custom(root, &cfg, env);
    wait_until(T, "tail input started", || {
        agent.log_text().contains("tail input started")
    });
    let containers = vec![
        Container::new(root, "team-a", "web-1", "app"),
        Container::new(root, "team-a", "web-1", "proxy"),
        Container::new(root, "team-a", "web-2", "app"),
        Container::new(root, "team-a", "batch-7", "worker"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = node_writer(containers, 10, 128 * 1024, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    // The agent is killed mid-flight and comes back.
    agent.kill9();
    std::thread::sleep(Duration::from_secs(1));
    agent = Agent::start_custom(root, &cfg, env);
    std::thread::sleep(Duration::from_secs(2));
    // A pod comes and one goes (its last lines, and those after the reload below, are read
    // after it was deleted).
    create_pod(kube, "web-3", &["app"]);
    let mut late = Container::new(root, "team-a", "web-3", "app");
    late.write(200);
    assert_eq!(
        api(kube, "DELETE", "/api/v1/namespaces/team-a/pods/web-2", ""),
        200
    );
    std::thread::sleep(Duration::from_secs(2));
    // A ConfigMap update: the kubelet swaps the mounted files; the agent reloads in place.
    mount_configmap(
        root,
        &values(
            root,
            http,
            kube,
            endpoint,
            "    [FILTER]\n        Name record_modifier\n        Match *\n        Record config v2\n",
        ),
        "v2",
    );
    wait_until(T, "the ConfigMap update applied", || {
        http_get(http, "/api/v2/reload").is_some_and(|r| r.1 == r#"{"hot_reload_count":1}"#)
    });
    late.write(200);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let mut containers = writer.join().unwrap();
    containers.push(late);
    let rotations: usize = containers.iter().map(|c| c.rotations).sum();
    assert!(rotations >= 4, "the node rotated ({rotations} rotations)");

    // Every line of every container, under its Union key, with its pod's metadata.
    let total: usize = containers.iter().map(|c| c.written).sum();
    let shipped = || -> HashMap<String, Vec<Value>> {
        peers::list_keys(&s3, &bucket, "persisted-logs/")
            .into_iter()
            .map(|key| {
                let body = peers::get_object(&s3, &bucket, &key).unwrap_or_default();
                let records = String::from_utf8_lossy(&body)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                (key, records)
            })
            .collect()
    };
    // Waits for every line; on a timeout the checks below name what is missing, and the agents'
    // logs are printed.
    let start = std::time::Instant::now();
    let arrived = loop {
        let distinct: std::collections::HashSet<String> = shipped()
            .values()
            .flatten()
            .filter_map(|r| r["log"].as_str().map(str::to_string))
            .collect();
        if distinct.len() >= total {
            break true;
        }
        if start.elapsed() > T {
            break false;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    if arrived {
        std::thread::sleep(Duration::from_secs(3));
    } else {
        for entry in std::fs::read_dir(root).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "stderr") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                eprintln!("--- {}: warnings and errors", path.display());
                for line in text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .take(100)
                {
                    eprintln!("{line}");
                }
            }
        }
    }
    let objects = shipped();
    let mut all_logs = Vec::new();
    for c in &containers {
        let i = c.prefix.rfind('-').unwrap();
        let (pod, container) = (&c.prefix[..i], &c.prefix[i + 1..]);
        let key = format!("persisted-logs/namespace-team-a.pod-{pod}.cont-{container}");
        let records = objects
            .get(&key)
            .unwrap_or_else(|| panic!("no object {key}; have {:?}", objects.keys()));
        for r in records {
            let log = r["log"].as_str().unwrap();
            assert!(
                log.starts_with(&c.prefix),
                "{key} holds another container's line: {log}"
            );
            let k = &r["kubernetes"];
            assert_eq!(k["pod_name"], pod, "{r}");
            assert_eq!(k["namespace_name"], "team-a");
            assert_eq!(k["container_name"], container);
            assert_eq!(k["labels"]["app"], pod, "metadata of {pod}: {r}");
            assert_eq!(k["pod_id"], format!("uid-{pod}"));
            assert_eq!(k["host"], "node-1");
            assert_eq!(
                k["container_image"],
                format!("registry.local/{container}:1")
            );
            // Union's tag has no container id: it comes from the pod's status.
            assert_eq!(k["docker_id"], format!("{pod}-{container}"), "{r}");
            all_logs.push(log.to_string());
        }
    }
    assert_eq!(objects.len(), containers.len(), "{:?}", objects.keys());
    let dups: usize = containers
        .iter()
        .map(|c| assert_all_present(&all_logs, &c.prefix, c.written))
        .sum();
    eprintln!("{total} lines, {rotations} rotations, 1 kill, 1 reload: {dups} duplicates");
    assert!(dups <= IN_FLIGHT_LINES, "{dups} duplicates for one kill");
    // After the reload the new filter ran: the last lines carry it.
    let web3 = &objects["persisted-logs/namespace-team-a.pod-web-3.cont-app"];
    assert_eq!(web3.last().unwrap()["config"], "v2");
    assert_eq!(
        metric(http, "logferry_filter_kubernetes_meta_missing_total"),
        0
    );
    drop(agent);
}
