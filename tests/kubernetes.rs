//! The `kubernetes` filter against a Kubernetes API stand-in (kmock, `tests/peers/k8s_fake.py`)
//! and an HTTPS fixture (`tests/peers/kube_https.py`) for the CA, token and TLS checks: the
//! real binary tails kubelet-named files and the records must carry their pod's metadata.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::kube::{kmock, request, Server};
use common::peers::Peers;
use common::*;
use serde_json::{json, Value};

fn python() -> String {
    Peers::get().var("PEERS_PYTHON").to_string()
}

fn script(name: &str) -> String {
    format!("{}/tests/peers/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn pod(namespace: &str, name: &str, node: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "labels": {"app": name}, "annotations": annotations},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "registry.local/app:1"}]},
        "status": {"podIP": "10.1.2.3", "containerStatuses": [{"name": "app",
                   "image": "registry.local/app:1", "imageID": "registry.local/app@sha256:feed"}]}
    })
}

fn create_pod(port: u16, pod: &Value) {
    let ns = pod["metadata"]["namespace"].as_str().unwrap();
    let status = request(
        port,
        "POST",
        &format!("/api/v1/namespaces/{ns}/pods"),
        &pod.to_string(),
    );
    assert!(status < 300, "create pod: HTTP {status}");
}

/// The kubelet's file name for a container of a pod.
fn log_file(dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    dir.join(format!(
        "{pod}_{namespace}_app-{}.log",
        "0123456789abcdef".repeat(4)
    ))
}

/// The tag prefix tail gives files in `dir` with `Tag kube.*` (path separators become dots).
fn tag_prefix(dir: &Path) -> String {
    let mut dotted = dir.display().to_string().replace('/', ".");
    while dotted.contains("..") {
        dotted = dotted.replace("..", ".");
    }
    format!("kube.{}.", dotted.trim_start_matches('.'))
}

fn config(dir: &Path, logs: &Path, api_port: u16, filter: &str) -> PathBuf {
    write_config(
        dir,
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 2\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api_port}\n\
             [INPUT]\n    Name tail\n    Path {}/*.log\n    Tag kube.*\n    Read_from_Head On\n    Refresh_Interval 1\n    DB {}\n\
             [FILTER]\n    Name kubernetes\n    Match kube.*\n    Kube_Tag_Prefix {}\n{filter}\
             [OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File out.json\n    Format plain\n",
            logs.display(),
            dir.join("tail.db").display(),
            tag_prefix(logs),
            dir.display()
        ),
    )
}

fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out.json"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn of_pod<'a>(records: &'a [Value], pod: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["kubernetes"]["pod_name"] == pod)
        .collect()
}

#[test]
fn a_node_scoped_watch_enriches_every_pod_including_new_and_deleted_ones() {
    let (_kmock, k8s) = kmock();
    for i in 0..20 {
        create_pod(k8s, &pod("shop", &format!("web-{i}"), "node-1", json!({})));
    }
    for i in 0..5 {
        create_pod(
            k8s,
            &pod("shop", &format!("other-{i}"), "node-2", json!({})),
        );
    }
    create_pod(
        k8s,
        &pod(
            "shop",
            "noisy",
            "node-1",
            json!({"fluentbit.io/exclude": "true"}),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("containers");
    std::fs::create_dir_all(&logs).unwrap();
    for i in 0..20 {
        append_numbered(
            &log_file(&logs, "shop", &format!("web-{i}")),
            &format!("web{i}"),
            0,
            50,
        );
    }
    append_numbered(&log_file(&logs, "shop", "noisy"), "noisy", 0, 50);
    std::fs::write(
        log_file(&logs, "shop", "web-0"),
        "{\"level\":\"warn\",\"msg\":\"json line\"}\n",
    )
    .unwrap();
    let api = free_port();
    let cfg = config(
        dir.path(),
        &logs,
        api,
        &format!("    Kube_URL http://127.0.0.1:{k8s}\n    Merge_Log On\n    Keep_Log Off\n    K8S-Logging.Exclude On\n"),
    );
    let _agent = Agent::start_custom(dir.path(), &cfg, |c| {
        c.env("NODE_NAME", "node-1");
    });
    // web-0's file was rewritten with one JSON line: 19 x 50 + 1.
    wait_until(Duration::from_secs(60), "all web lines", || {
        records(dir.path()).len() > 19 * 50
    });
    // A pod created after the start, and a pod deleted before its last lines were read.
    create_pod(k8s, &pod("shop", "late", "node-1", json!({})));
    std::thread::sleep(Duration::from_millis(500));
    append_numbered(&log_file(&logs, "shop", "late"), "late", 0, 30);
    assert_eq!(
        request(k8s, "DELETE", "/api/v1/namespaces/shop/pods/web-3", ""),
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    append_numbered(&log_file(&logs, "shop", "web-3"), "web3", 50, 30);
    wait_until(
        Duration::from_secs(60),
        "late and deleted pods' lines",
        || {
            let r = records(dir.path());
            of_pod(&r, "late").len() == 30 && of_pod(&r, "web-3").len() == 80
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let all = records(dir.path());
    assert_eq!(
        all.len(),
        19 * 50 + 1 + 30 + 30,
        "no more, no fewer records"
    );
    for r in &all {
        let k = &r["kubernetes"];
        let pod = k["pod_name"].as_str().unwrap();
        assert_eq!(k["namespace_name"], "shop", "{r}");
        assert_eq!(k["labels"]["app"], pod, "labels of {pod}: {r}");
        assert_eq!(k["pod_id"], format!("uid-{pod}"), "{r}");
        assert_eq!(k["host"], "node-1");
        assert_eq!(k["container_name"], "app");
        assert_eq!(k["docker_id"], "0123456789abcdef".repeat(4));
        assert_eq!(k["container_image"], "registry.local/app:1");
        assert_eq!(k["container_hash"], "registry.local/app@sha256:feed");
    }
    // The excluded pod's lines are gone; the merged JSON line lost `log` and gained its keys.
    assert!(of_pod(&all, "noisy").is_empty());
    let merged = of_pod(&all, "web-0");
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0]["level"], "warn");
    assert!(
        merged[0].get("log").is_none(),
        "Keep_Log Off: {}",
        merged[0]
    );
    // One LIST and one WATCH served 21 pods, a new pod and a deletion.
    let requests = metric(api, "logferry_filter_kubernetes_api_requests_total");
    assert!(
        (2..=4).contains(&requests),
        "API requests for 23 pod events: {requests}"
    );
    assert_eq!(
        metric(api, "logferry_filter_kubernetes_meta_missing_total"),
        0
    );
}

/// An API server that accepts connections and never answers (a black-holed address).
fn black_hole() -> (u16, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    (port, handle)
}

#[test]
fn an_unreachable_api_server_delays_nothing_and_is_counted() {
    let pods: Vec<String> = (0..30).map(|i| format!("p{i}")).collect();
    for (what, url) in [
        ("refused", format!("http://127.0.0.1:{}", free_port())),
        ("silent", format!("http://127.0.0.1:{}", black_hole().0)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("containers");
        std::fs::create_dir_all(&logs).unwrap();
        for name in &pods {
            append_numbered(&log_file(&logs, "ops", name), name, 0, 20);
        }
        let api = free_port();
        let cfg = config(dir.path(), &logs, api, &format!("    Kube_URL {url}\n"));
        let agent = Agent::start_custom(dir.path(), &cfg, |c| {
            c.env("NODE_NAME", "node-1");
        });
        // One bounded wait until the server is known to be down (at most the request timeout),
        // not one per pod: 30 pods would take a minute at 2 s each.
        wait_until(
            Duration::from_secs(45),
            &format!("every line without metadata ({what})"),
            || records(dir.path()).len() == 600,
        );
        let all = records(dir.path());
        for name in &pods {
            let r = of_pod(&all, name);
            assert_eq!(r.len(), 20);
            // What the tag gives is still there; nothing from the API.
            assert_eq!(r[0]["kubernetes"]["namespace_name"], "ops");
            assert_eq!(r[0]["kubernetes"]["container_name"], "app");
            assert!(r[0]["kubernetes"].get("labels").is_none());
        }
        assert_eq!(
            metric(api, "logferry_filter_kubernetes_meta_missing_total"),
            600
        );
        wait_until(Duration::from_secs(30), "the failure logged", || {
            agent.log_text().contains("kubernetes filter")
        });
    }
}

/// The HTTPS fixture on a free port, serving `data` with the test PKI.
fn https_fixture(data: &Path, crt: &Path, key: &Path) -> (Server, u16) {
    let port = free_port();
    let child = Command::new(python())
        .arg(script("kube_https.py"))
        .arg(port.to_string())
        .args([crt, key, data])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "HTTPS fixture up", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (Server(child), port)
}

#[test]
fn https_with_the_cluster_ca_and_a_rotated_token() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = test_pki(dir.path());
    let data = dir.path().join("api");
    std::fs::create_dir_all(data.join("pods")).unwrap();
    std::fs::create_dir_all(data.join("namespaces")).unwrap();
    std::fs::write(data.join("token"), "token-one").unwrap();
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, "token-one\n").unwrap();
    std::fs::write(
        data.join("pods/prod_first.json"),
        pod("prod", "first", "node-1", json!({})).to_string(),
    )
    .unwrap();
    std::fs::write(
        data.join("namespaces/prod.json"),
        json!({"metadata": {"name": "prod", "labels": {"tier": "gold"}}}).to_string(),
    )
    .unwrap();
    let (_fixture, port) = https_fixture(&data, &crt, &key);
    let logs = dir.path().join("containers");
    std::fs::create_dir_all(&logs).unwrap();
    let api = free_port();
    let cfg = config(
        dir.path(),
        &logs,
        api,
        &format!(
            "    Kube_URL https://127.0.0.1:{port}\n    Kube_CA_File {}\n    Kube_Token_File {}\n    namespace_labels On\n",
            ca.display(),
            token_file.display()
        ),
    );
    // No NODE_NAME: one GET per pod, as Fluent Bit does.
    let _agent = Agent::start_custom(dir.path(), &cfg, |c| {
        c.env_remove("NODE_NAME");
    });
    append_numbered(&log_file(&logs, "prod", "first"), "first", 0, 20);
    wait_until(Duration::from_secs(60), "first pod's lines", || {
        of_pod(&records(dir.path()), "first").len() == 20
    });
    // The projected token rotates: the server now takes only the new one.
    std::fs::write(data.join("token"), "token-two").unwrap();
    std::fs::write(&token_file, "token-two\n").unwrap();
    std::fs::write(
        data.join("pods/prod_second.json"),
        pod("prod", "second", "node-1", json!({})).to_string(),
    )
    .unwrap();
    append_numbered(&log_file(&logs, "prod", "second"), "second", 0, 20);
    wait_until(Duration::from_secs(60), "second pod's lines", || {
        of_pod(&records(dir.path()), "second").len() == 20
    });
    let all = records(dir.path());
    for r in &all {
        let pod = r["kubernetes"]["pod_name"].as_str().unwrap();
        assert_eq!(r["kubernetes"]["labels"]["app"], pod, "{r}");
        assert_eq!(r["kubernetes_namespace"]["labels"]["tier"], "gold", "{r}");
    }
    let served = std::fs::read_to_string(data.join("requests.log")).unwrap();
    assert!(
        !served.contains("401"),
        "every request carried the current token: {served}"
    );
    assert_eq!(
        metric(api, "logferry_filter_kubernetes_meta_missing_total"),
        0
    );

    // An agent that does not trust the server's CA gets nothing from it, and says so.
    let other = tempfile::tempdir().unwrap();
    let (wrong_ca, _, _) = test_pki(other.path());
    let other_logs = other.path().join("containers");
    std::fs::create_dir_all(&other_logs).unwrap();
    append_numbered(&log_file(&other_logs, "prod", "first"), "first", 0, 10);
    let other_api = free_port();
    let cfg = config(
        other.path(),
        &other_logs,
        other_api,
        &format!(
            "    Kube_URL https://127.0.0.1:{port}\n    Kube_CA_File {}\n    Kube_Token_File {}\n",
            wrong_ca.display(),
            token_file.display()
        ),
    );
    let untrusting = Agent::start_custom(other.path(), &cfg, |c| {
        c.env_remove("NODE_NAME");
    });
    wait_until(Duration::from_secs(60), "lines without metadata", || {
        records(other.path()).len() == 10
    });
    assert!(records(other.path())
        .iter()
        .all(|r| r["kubernetes"].get("labels").is_none()));
    assert_eq!(
        metric(other_api, "logferry_filter_kubernetes_meta_missing_total"),
        10
    );
    let log = untrusting.log_text();
    assert!(
        log.contains("kubernetes filter") && log.contains("GET https://127.0.0.1"),
        "{log}"
    );
    assert!(
        !log.contains("token-two"),
        "the token must never be logged: {log}"
    );
}

#[test]
fn use_kubelet_reads_the_nodes_pod_list_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, crt, key) = test_pki(dir.path());
    let data = dir.path().join("api");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("token"), "kubelet-token").unwrap();
    let token_file = dir.path().join("sa-token");
    std::fs::write(&token_file, "kubelet-token").unwrap();
    let list = json!({"kind": "PodList", "items": [
        pod("batch", "job-1", "node-1", json!({})),
        pod("batch", "job-2", "node-1", json!({})),
    ]});
    std::fs::write(data.join("kubelet-pods.json"), list.to_string()).unwrap();
    let (_kubelet, port) = https_fixture(&data, &crt, &key);
    let logs = dir.path().join("containers");
    std::fs::create_dir_all(&logs).unwrap();
    for name in ["job-1", "job-2"] {
        append_numbered(&log_file(&logs, "batch", name), name, 0, 40);
    }
    let api = free_port();
    let cfg = config(
        dir.path(),
        &logs,
        api,
        &format!(
            "    Use_Kubelet On\n    Kubelet_Host 127.0.0.1\n    Kubelet_Port {port}\n    Kube_CA_File {}\n    Kube_Token_File {}\n",
            ca.display(),
            token_file.display()
        ),
    );
    let _agent = Agent::start_custom(dir.path(), &cfg, |c| {
        c.env("NODE_NAME", "node-1");
    });
    wait_until(Duration::from_secs(60), "both pods' lines", || {
        records(dir.path()).len() == 80
    });
    for r in records(dir.path()) {
        let pod = r["kubernetes"]["pod_name"].as_str().unwrap().to_string();
        assert_eq!(r["kubernetes"]["labels"]["app"], pod, "{r}");
        assert_eq!(r["kubernetes"]["namespace_name"], "batch");
    }
    let served = std::fs::read_to_string(data.join("requests.log")).unwrap();
    assert!(
        served.lines().all(|l| l == "200 /pods"),
        "only the kubelet was asked: {served}"
    );
    assert_eq!(
        metric(api, "logferry_filter_kubernetes_meta_missing_total"),
        0
    );
}
