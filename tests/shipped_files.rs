//! What the repository ships to users works as the README says: the quickstart, the image's
//! default config and the examples, and every IAM policy.
//!
//! Policies: every `.json` file with a `Statement` (`deploy/`, `examples/`, anywhere) is accepted
//! by a real IAM policy grammar, moto's IAM (tests/peers), which refuses what IAM refuses (unknown
//! statement keys such as `Comment`, a bad `Version`, trust actions other than `sts:AssumeRole*`,
//! a `Resource` in a trust policy...).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::peers::Peers;
use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn copy_into(dir: &Path, files: &[&str]) {
    for f in files {
        let to = dir.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(REPO).join(f), to).unwrap();
    }
}

#[test]
fn the_readme_quickstart_ships_the_sample_logs_into_a_local_directory() {
    // The README's command, `logferry -c examples/quickstart.conf` from the repository root, in
    // a copy of what it reads; only the HTTP port is changed (2020 may be taken on a test host).
    let dir = tempfile::tempdir().unwrap();
    let api = "examples/logs/api-5f6d7c8b9-qwert_billing_app-2222222222222222222222222222222222222222222222222222222222222222.log";
    let web = "examples/logs/web-7d9f8b6c5d-x2x9k_shop_nginx-1111111111111111111111111111111111111111111111111111111111111111.log";
    copy_into(
        dir.path(),
        &["examples/quickstart.conf", "conf/parsers.conf", api, web],
    );
    let conf = dir.path().join("examples/quickstart.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("HTTP_Port    2020"), "{text}");
    let port = free_port().to_string();
    std::fs::write(
        &conf,
        text.replace("HTTP_Port    2020", &format!("HTTP_Port    {port}")),
    )
    .unwrap();

    let mut agent = Agent::start(dir.path(), Path::new("examples/quickstart.conf"));
    let status = agent.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}: {}", agent.log_text());

    let objects = dir.path().join("quickstart-out/persisted-logs");
    let read = |key: &str| object_logs(&std::fs::read(objects.join(key)).unwrap());
    assert_eq!(
        read("namespace-billing.pod-api-5f6d7c8b9-qwert.cont-app"),
        [
            "starting billing api v2.3.1\n",
            "listening on :8080\n",
            "a 16 KiB docker split, part one; part two\n",
            "invoice INV-77 issued\n",
        ]
    );
    assert_eq!(
        read("namespace-shop.pod-web-7d9f8b6c5d-x2x9k.cont-nginx").len(),
        5,
        "the CRI file's six lines, one partial pair joined"
    );
    assert_eq!(std::fs::read_dir(&objects).unwrap().count(), 2);
}

#[test]
fn the_image_default_config_and_the_minio_example_pass_dry_run() {
    let state = tempfile::tempdir().unwrap();
    for (config, env) in [
        ("conf/fluent-bit.conf", vec![]),
        (
            "examples/minio.conf",
            vec![
                ("LOG_DIR", Path::new(REPO).join("examples/logs")),
                ("STATE_DIR", state.path().to_path_buf()),
            ],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
            .arg("--dry-run")
            .arg("-c")
            .arg(Path::new(REPO).join(config))
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{config}: {text}");
        assert!(
            text.contains("configuration test is successful"),
            "{config}: {text}"
        );
    }
}

/// Validates each file with moto's IAM: a policy with a `Principal` is a role's trust policy
/// (`UpdateAssumeRolePolicy` validates it; moto's `CreateRole` does not), any other is an
/// identity policy (`CreatePolicy`). Prints `<path>\tok` or `<path>\t<IAM's message>` per file.
const VALIDATE: &str = r#"
import sys, json, uuid, boto3, botocore.exceptions
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="policy-test", aws_secret_access_key="policy-test")
minimal_trust = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
for path in sys.argv[2:]:
    text = open(path).read()
    statements = json.loads(text)["Statement"]
    if isinstance(statements, dict):
        statements = [statements]
    name = "policy-test-" + uuid.uuid4().hex
    try:
        if any("Principal" in s or "NotPrincipal" in s for s in statements):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument=minimal_trust)
            iam.update_assume_role_policy(RoleName=name, PolicyDocument=text)
        else:
            iam.create_policy(PolicyName=name, PolicyDocument=text)
        print(path + "\tok")
    except botocore.exceptions.ClientError as e:
        print(path + "\t" + e.response["Error"]["Code"] + ": " + e.response["Error"]["Message"])
"#;

/// `(path, verdict)` for each file: `ok` or IAM's error.
fn validate(p: &Peers, files: &[PathBuf]) -> Vec<(String, String)> {
    let out = Command::new(p.var("PEERS_PYTHON"))
        .arg("-c")
        .arg(VALIDATE)
        .arg(p.var("MOTO_ENDPOINT"))
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (path, verdict) = l.split_once('\t').expect("path<TAB>verdict");
            (path.to_string(), verdict.to_string())
        })
        .collect();
    assert_eq!(verdicts.len(), files.len(), "one verdict per file");
    verdicts
}

/// Every `.json` file under `dir` whose top level has a `Statement`, skipping build output and
/// VCS/peer directories. A `.json` file that does not parse is a failure in itself.
fn policy_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if path.is_dir() {
            if !matches!(name.as_ref(), "target" | ".git" | "node_modules") {
                policy_files(&path, found);
            }
        } else if name.ends_with(".json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let doc: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", path.display()));
            if doc.get("Statement").is_some() {
                found.push(path);
            }
        }
    }
}

#[test]
fn every_iam_policy_in_the_repository_passes_iam_validation() {
    let p = Peers::get();
    let mut files = Vec::new();
    policy_files(Path::new(REPO), &mut files);
    files.sort();
    assert!(
        files.len() >= 3,
        "expected at least deploy/aws's three policies, found {files:?}"
    );

    let rejected: Vec<String> = validate(&p, &files)
        .into_iter()
        .filter(|(_, verdict)| verdict != "ok")
        .map(|(path, verdict)| format!("{path}: {verdict}"))
        .collect();
    assert!(
        rejected.is_empty(),
        "IAM refuses these policies:\n{}",
        rejected.join("\n")
    );

    // The validator is strict where it matters: the same files with a `Comment` in a statement
    // (as they once had) are refused, trust and identity policies alike.
    let dir = tempfile::tempdir().unwrap();
    let commented: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut doc: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let statement = match &mut doc["Statement"] {
                serde_json::Value::Array(list) => &mut list[0],
                single => single,
            };
            statement["Comment"] = "explanations belong in the README".into();
            let copy = dir.path().join(format!("{i}.json"));
            std::fs::write(&copy, doc.to_string()).unwrap();
            copy
        })
        .collect();
    for (path, verdict) in validate(&p, &commented) {
        assert!(
            verdict.contains("MalformedPolicyDocument"),
            "{path} (a policy with a Comment) was not refused: {verdict}"
        );
    }
}
