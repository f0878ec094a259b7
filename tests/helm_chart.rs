//! The Helm chart (`deploy/helm/logferry`), the plain manifests rendered from it and the
//! Dockerfile, checked without a cluster: real Helm v4 (helm-python-sdk) renders and lints the
//! chart, every rendered manifest is validated against Kubernetes' schemas
//! (kubernetes-validate), and the rendered ConfigMap runs through `logferry --dry-run` laid out
//! as the image lays it out.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::peers::Peers;
use serde_norway::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/helm/logferry");
/// The Kubernetes version the manifests are validated against.
const KUBERNETES: &str = "1.34.0";

fn python() -> String {
    Peers::get().var("PEERS_PYTHON").to_string()
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/chart.py")
}

fn example(name: &str) -> String {
    format!("{CHART}/examples/{name}")
}

/// Renders the chart; Err holds Helm's error text.
fn try_render(values: &[&str], dir: &Path) -> Result<Vec<(String, Value)>, String> {
    let mut files = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let path = if v.ends_with(".yaml") && Path::new(v).exists() {
            PathBuf::from(v)
        } else {
            let p = dir.join(format!("values-{i}.yaml"));
            std::fs::write(&p, v).unwrap();
            p
        };
        files.push(path);
    }
    let out = Command::new(python())
        .arg(script())
        .args(["render", CHART, "logferry", "union"])
        .args(&files)
        .output()
        .expect("run chart.py");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let rendered: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).expect("render output is JSON");
    let mut docs = Vec::new();
    for (path, text) in rendered {
        if !path.ends_with(".yaml") {
            continue;
        }
        for doc in text.split("\n---") {
            let value: Value = serde_norway::from_str(doc).expect("rendered YAML parses");
            if !value.is_null() {
                docs.push((path.clone(), value));
            }
        }
    }
    Ok(docs)
}

fn render(values: &[&str], dir: &Path) -> Vec<(String, Value)> {
    try_render(values, dir).unwrap_or_else(|e| panic!("helm render failed: {e}"))
}

fn kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Option<&'a Value> {
    docs.iter().map(|(_, d)| d).find(|d| d["kind"] == kind)
}

fn daemonset(docs: &[(String, Value)]) -> &Value {
    kind(docs, "DaemonSet").expect("a DaemonSet is rendered")
}

fn container(docs: &[(String, Value)]) -> &Value {
    &daemonset(docs)["spec"]["template"]["spec"]["containers"][0]
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[*p],
        };
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string in {v:?}"))
}

/// The mount at `path`: (volume name, read-only).
fn mount(docs: &[(String, Value)], path: &str) -> (String, bool) {
    let mounts = container(docs)["volumeMounts"].as_sequence().unwrap();
    let m = mounts
        .iter()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("no mount at {path}: {mounts:?}"));
    (
        m["name"].as_str().unwrap().to_string(),
        m["readOnly"].as_bool().unwrap_or(false),
    )
}

fn volume<'a>(docs: &'a [(String, Value)], name: &str) -> &'a Value {
    daemonset(docs)["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn checksum(docs: &[(String, Value)]) -> Option<String> {
    daemonset(docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        .as_str()
        .map(str::to_string)
}

/// Every manifest passes kubernetes-validate (strict: no unknown fields). Custom resources
/// (the ServiceMonitor) have no schema there and are skipped.
fn validate(docs: &[(String, Value)], dir: &Path) {
    let bin = Path::new(&python()).with_file_name("kubernetes-validate");
    for (i, (path, doc)) in docs.iter().enumerate() {
        if doc["kind"] == "ServiceMonitor" {
            continue;
        }
        let file = dir.join(format!("manifest-{i}.yaml"));
        std::fs::write(&file, serde_norway::to_string(doc).unwrap()).unwrap();
        let out = Command::new(&bin)
            .args(["--strict", "-k", KUBERNETES])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("passed"),
            "{path} ({}) fails validation: {text}",
            doc["kind"].as_str().unwrap_or("?")
        );
    }
}

/// Lays the rendered ConfigMap out as the image does (`/fluent-bit/etc/parsers.conf`, the
/// ConfigMap at `/fluent-bit/etc/conf/`, under `root`) and runs `logferry --dry-run` on it.
fn dry_run(docs: &[(String, Value)], root: &Path, env: &[(&str, &str)]) {
    let cm = kind(docs, "ConfigMap").expect("a ConfigMap is rendered");
    let etc = root.join("fluent-bit/etc");
    std::fs::create_dir_all(etc.join("conf")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/parsers.conf"),
        etc.join("parsers.conf"),
    )
    .unwrap();
    let prefix = format!("{}/", etc.display());
    for (name, text) in cm["data"].as_mapping().unwrap() {
        let text = text.as_str().unwrap().replace("/fluent-bit/etc/", &prefix);
        std::fs::write(etc.join("conf").join(name.as_str().unwrap()), text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .arg("--dry-run")
        .arg(format!("--workdir={}", etc.display()))
        .arg(format!(
            "--config={}",
            etc.join("conf/fluent-bit.conf").display()
        ))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the rendered ConfigMap fails --dry-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_chart_lints_clean_in_strict_mode() {
    for values in [
        vec![],
        vec![example("union-values.yaml")],
        vec![example("community-values.yaml")],
    ] {
        let out = Command::new(python())
            .arg(script())
            .args(["lint", CHART])
            .args(&values)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["errors"], serde_json::json!([]), "{report}");
        let serious: Vec<_> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            serious.is_empty(),
            "lint findings with {values:?}: {serious:?}"
        );
    }
}

#[test]
fn the_default_install_mounts_probes_and_runs_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let docs = render(&[], dir.path());
    validate(&docs, dir.path());
    let c = container(&docs);
    assert_eq!(str_at(c, &["command", "0"]), "/fluent-bit/bin/fluent-bit");
    assert_eq!(str_at(c, &["livenessProbe", "httpGet", "path"]), "/");
    assert_eq!(
        str_at(c, &["readinessProbe", "httpGet", "path"]),
        "/api/v2/health"
    );
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(2020));
    assert_eq!(mount(&docs, "/var/log"), ("varlog".into(), false));
    assert_eq!(
        mount(&docs, "/var/lib/docker/containers"),
        ("varlibdockercontainers".into(), true)
    );
    assert_eq!(
        mount(&docs, "/etc/machine-id"),
        ("etcmachineid".into(), true)
    );
    assert_eq!(mount(&docs, "/fluent-bit/etc/conf").0, "config");
    // The spool and storage.path live on the host, not in the container's writable layer.
    assert_eq!(mount(&docs, "/var/lib/logferry").0, "state");
    let state = volume(&docs, "state");
    assert_eq!(str_at(state, &["hostPath", "path"]), "/var/lib/logferry");
    assert_eq!(str_at(state, &["hostPath", "type"]), "DirectoryOrCreate");
    let cm = kind(&docs, "ConfigMap").unwrap();
    assert!(str_at(cm, &["data", "fluent-bit.conf"]).contains("storage.path /var/lib/logferry"));
    // Grace 5 (Fluent Bit's default) plus the margin.
    let spec = &daemonset(&docs)["spec"]["template"]["spec"];
    assert_eq!(spec["terminationGracePeriodSeconds"].as_u64(), Some(30));
    assert!(c["resources"]["requests"]["memory"].as_str().is_some());
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    assert!(spec.get("priorityClassName").is_none());
    assert!(kind(&docs, "ClusterRole").is_some());
    assert!(str_at(cm, &["data", "fluent-bit.conf"]).contains("Name kubernetes"));
    assert_eq!(str_at(c, &["env", "0", "name"]), "NODE_NAME");
    assert_eq!(
        str_at(c, &["env", "0", "valueFrom", "fieldRef", "fieldPath"]),
        "spec.nodeName"
    );
    assert_eq!(
        str_at(
            kind(&docs, "Service").unwrap(),
            &["spec", "ports", "0", "targetPort"]
        ),
        "http"
    );
    let test_pod = docs
        .iter()
        .find(|(p, _)| p.contains("tests/"))
        .map(|(_, d)| d)
        .expect("a helm test pod");
    assert_eq!(
        str_at(test_pod, &["metadata", "annotations", "helm.sh/hook"]),
        "test"
    );
    dry_run(&docs, dir.path(), &[]);
}

#[test]
fn the_config_checksum_follows_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = checksum(&render(&[], dir.path())).expect("checksum/config on the pod");
    let changed = checksum(&render(
        &["config:\n  outputs: |\n    [OUTPUT]\n        Name null\n        Match *\n"],
        dir.path(),
    ))
    .unwrap();
    let parsers = checksum(&render(
        &["config:\n  customParsers: |\n    [PARSER]\n        Name x\n        Format json\n"],
        dir.path(),
    ))
    .unwrap();
    assert_ne!(base, changed);
    assert_ne!(base, parsers);
    // sha256("") is what Fluent Bit's chart renders for an existing ConfigMap: a checksum
    // that never changes. Offline, an existing ConfigMap cannot be read: no annotation at all.
    let existing = render(&["existingConfigMap: fluentbit-system\n"], dir.path());
    assert_eq!(checksum(&existing), None);
    assert!(kind(&existing, "ConfigMap").is_none());
    assert_eq!(
        str_at(volume(&existing, "config"), &["configMap", "name"]),
        "fluentbit-system"
    );
}

#[test]
fn union_values_on_aws_keep_unions_service_account_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let docs = render(&[&example("union-values.yaml")], dir.path());
    validate(&docs, dir.path());
    let sa = kind(&docs, "ServiceAccount").unwrap();
    assert_eq!(str_at(sa, &["metadata", "name"]), "fluentbit-system");
    assert!(str_at(
        sa,
        &["metadata", "annotations", "eks.amazonaws.com/role-arn"]
    )
    .starts_with("arn:aws:iam::"));
    let spec = &daemonset(&docs)["spec"]["template"]["spec"];
    assert_eq!(str_at(spec, &["serviceAccountName"]), "fluentbit-system");
    assert_eq!(str_at(spec, &["tolerations", "0", "operator"]), "Exists");
    let conf = str_at(
        kind(&docs, "ConfigMap").unwrap(),
        &["data", "fluent-bit.conf"],
    );
    assert!(conf.contains("s3_key_format /persisted-logs/$TAG"));
    dry_run(&docs, dir.path(), &[]);
}

#[test]
fn union_values_on_azure_and_gcp_carry_workload_identity() {
    let dir = tempfile::tempdir().unwrap();
    let azure = render(&[&example("union-values-azure.yaml")], dir.path());
    validate(&azure, dir.path());
    let sa = kind(&azure, "ServiceAccount").unwrap();
    assert_eq!(str_at(sa, &["metadata", "name"]), "union-system");
    assert!(!str_at(
        sa,
        &[
            "metadata",
            "annotations",
            "azure.workload.identity/client-id"
        ]
    )
    .is_empty());
    // The webhook injects the token only into pods labelled so, on the pod template.
    assert_eq!(
        str_at(
            daemonset(&azure),
            &[
                "spec",
                "template",
                "metadata",
                "labels",
                "azure.workload.identity/use"
            ]
        ),
        "true"
    );
    assert!(str_at(
        kind(&azure, "ConfigMap").unwrap(),
        &["data", "fluent-bit.conf"]
    )
    .contains("auth_type workload_identity"));
    // What the workload-identity webhook injects into the labelled pod.
    dry_run(
        &azure,
        &dir.path().join("azure"),
        &[
            ("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000000"),
            ("AZURE_TENANT_ID", "11111111-1111-1111-1111-111111111111"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
        ],
    );

    let gcp = render(&[&example("union-values-gcp.yaml")], dir.path());
    validate(&gcp, dir.path());
    let sa = kind(&gcp, "ServiceAccount").unwrap();
    assert!(str_at(
        sa,
        &["metadata", "annotations", "iam.gke.io/gcp-service-account"]
    )
    .ends_with(".iam.gserviceaccount.com"));
    assert!(str_at(
        kind(&gcp, "ConfigMap").unwrap(),
        &["data", "fluent-bit.conf"]
    )
    .contains("Name gcs"));
    dry_run(&gcp, &dir.path().join("gcp"), &[]);
}

#[test]
fn a_fluent_bit_chart_values_file_works_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let docs = render(&[&example("community-values.yaml")], dir.path());
    validate(&docs, dir.path());
    let c = container(&docs);
    let spec = &daemonset(&docs)["spec"]["template"]["spec"];
    assert_eq!(str_at(spec, &["priorityClassName"]), "system-node-critical");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(2021));
    // Grace 20 in the config: the pod gets 20 s plus the margin.
    assert_eq!(spec["terminationGracePeriodSeconds"].as_u64(), Some(45));
    assert_eq!(str_at(c, &["image"]), "ghcr.io/logferry/logferry:0.1.0");
    assert_eq!(str_at(c, &["imagePullPolicy"]), "Always");
    assert_eq!(str_at(c, &["env", "1", "name"]), "CLUSTER_NAME");
    assert_eq!(
        str_at(c, &["envFrom", "0", "secretRef", "name"]),
        "logging-secrets"
    );
    assert_eq!(
        mount(&docs, "/etc/extra-certs"),
        ("extra-certs".into(), true)
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        str_at(
            daemonset(&docs),
            &[
                "spec",
                "template",
                "metadata",
                "annotations",
                "prometheus.io/scrape"
            ]
        ),
        "true"
    );
    assert_eq!(
        str_at(
            daemonset(&docs),
            &["spec", "template", "metadata", "labels", "team"]
        ),
        "platform"
    );
    assert_eq!(str_at(spec, &["nodeSelector", "kubernetes.io/os"]), "linux");
    assert_eq!(
        str_at(daemonset(&docs), &["spec", "updateStrategy", "type"]),
        "RollingUpdate"
    );
    let role = kind(&docs, "ClusterRole").unwrap();
    assert!(serde_norway::to_string(role)
        .unwrap()
        .contains("nodes/proxy"));
    let monitor = kind(&docs, "ServiceMonitor").expect("serviceMonitor.enabled renders one");
    assert_eq!(
        str_at(monitor, &["spec", "endpoints", "0", "path"]),
        "/api/v2/metrics/prometheus"
    );
    assert_eq!(
        str_at(monitor, &["metadata", "labels", "release"]),
        "prometheus"
    );
    dry_run(&docs, dir.path(), &[("CLUSTER_NAME", "prod-1")]);
}

#[test]
fn a_deployment_kind_stops_the_install_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let err = try_render(&["kind: Deployment\n"], dir.path()).unwrap_err();
    assert!(err.contains("runs as a DaemonSet"), "{err}");
}

/// `deploy/kubernetes/logferry.yaml` is the chart rendered with its defaults (release
/// `logferry`, namespace `logging`), without the helm test pod. Regenerate it with
/// `LOGFERRY_WRITE_MANIFESTS=1 cargo test --test helm_chart plain_manifests`.
#[test]
fn plain_manifests_match_the_chart() {
    let out = Command::new(python())
        .arg(script())
        .args(["render", CHART, "logferry", "logging"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&out.stdout).unwrap();
    let mut text = String::from(
        "# logferry as a DaemonSet in namespace `logging`, rendered from deploy/helm/logferry with\n\
         # its default values (tail /var/log/containers/*.log -> stdout). Edit the ConfigMap's\n\
         # [OUTPUT] for your destination, then: kubectl create namespace logging && kubectl apply -f logferry.yaml\n",
    );
    for (path, manifest) in &rendered {
        if !path.ends_with(".yaml") || path.contains("/tests/") {
            continue;
        }
        let manifest = manifest.trim();
        if manifest.is_empty() {
            continue;
        }
        text.push_str(&format!("---\n# Source: {path}\n{manifest}\n"));
    }
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/logferry.yaml"
    );
    if std::env::var_os("LOGFERRY_WRITE_MANIFESTS").is_some() {
        std::fs::create_dir_all(Path::new(file).parent().unwrap()).unwrap();
        std::fs::write(file, &text).unwrap();
    }
    let committed = std::fs::read_to_string(file).unwrap_or_default();
    assert!(
        committed == text,
        "{file} is out of date with the chart: regenerate with LOGFERRY_WRITE_MANIFESTS=1"
    );
    let dir = tempfile::tempdir().unwrap();
    let docs: Vec<(String, Value)> = committed
        .split("\n---")
        .map(|d| serde_norway::from_str::<Value>(d).unwrap())
        .filter(|d| !d.is_null())
        .map(|d| (file.to_string(), d))
        .collect();
    assert!(kind(&docs, "DaemonSet").is_some());
    validate(&docs, dir.path());
}

#[test]
fn the_dockerfile_lints_clean() {
    let bin = Path::new(&python()).with_file_name("hadolint");
    let out = Command::new(bin)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile"))
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hot_reload_replaces_the_rollout_on_config_change() {
    let dir = tempfile::tempdir().unwrap();
    let docs = render(&["hotReload:\n  enabled: true\n"], dir.path());
    validate(&docs, dir.path());
    let args: Vec<&str> = container(&docs)["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.contains(&"--enable-hot-reload"), "{args:?}");
    assert!(args.contains(&"--config=/fluent-bit/etc/conf/fluent-bit.conf"));
    // The agent reloads the mounted ConfigMap itself: no checksum, so no rollout, and no
    // reloader sidecar.
    assert_eq!(checksum(&docs), None);
    assert_eq!(
        daemonset(&docs)["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
            .len(),
        1
    );
    dry_run(&docs, dir.path(), &[]);
}

#[test]
fn the_cluster_role_comes_with_the_kubernetes_filter_even_without_rbac_create() {
    let dir = tempfile::tempdir().unwrap();
    let with_filter = render(&["rbac:\n  create: false\n"], dir.path());
    assert!(kind(&with_filter, "ClusterRole").is_some());
    assert!(kind(&with_filter, "ClusterRoleBinding").is_some());
    let without = render(
        &["rbac:\n  create: false\nconfig:\n  filters: \"\"\n"],
        dir.path(),
    );
    assert!(kind(&without, "ClusterRole").is_none());
}
