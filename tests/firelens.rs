//! logferry as an ECS FireLens log router: the config the ECS agent generates from a task
//! definition runs unmodified.
//!
//! [`generate`] writes that config the way the agent does (amazon-ecs-agent
//! `firelensconfig_unix.go`, summarised in shared notes union-firelens §3.1): forward on the unix
//! socket and on TCP 24224, the tcp health-check input on 127.0.0.1:8877 routed to `null`, grep
//! filters from `include-pattern`/`exclude-pattern`, `record_modifier` with the ECS metadata,
//! `@INCLUDE` of `config-file-value`, and one output per app container matching
//! `<container>-firelens*` with every other option verbatim and secret options as `${VAR}`.
//! Socket path and ports are the only things moved (into the test's directory, to free ports).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cloudwatch::{messages, moto, retention_days, stream_names, task_metadata};
use common::peers::{isolated_aws_env, run_python, CredentialEndpoint, Peers, Reply};
use common::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Where the generated config puts what the agent would bind on a real host.
struct Host {
    socket: PathBuf,
    forward_port: u16,
    health_port: u16,
    cluster: &'static str,
    task_arn: &'static str,
}

impl Host {
    fn new(dir: &Path) -> Host {
        Host {
            socket: dir.join("fluent.sock"),
            forward_port: free_port(),
            health_port: free_port(),
            cluster: "prod-cluster",
            task_arn: "arn:aws:ecs:us-west-2:111111111111:task/prod-cluster/0123456789abcdef0123456789abcdef",
        }
    }

    fn task_id(&self) -> &str {
        self.task_arn.rsplit('/').next().unwrap()
    }
}

/// The config the ECS agent writes for `task` (a task definition), and the environment the
/// secret options arrive in (`<option>_<container index>` → value, here from `secrets`).
fn generate(
    task: &serde_json::Value,
    host: &Host,
    secrets: &[(&str, &str)],
) -> (String, Vec<(String, String)>) {
    let router = task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c.get("firelensConfiguration").is_some())
        .expect("a FireLens log router container");
    let router_options = &router["firelensConfiguration"]["options"];
    let family = task["family"].as_str().unwrap();
    let mut conf = format!(
        "[INPUT]\n    Name forward\n    Mem_Buf_Limit 25MB\n    unix_path {}\n\n\
         [INPUT]\n    Name forward\n    Listen 127.0.0.1\n    Port {}\n\n\
         [INPUT]\n    Name tcp\n    Tag firelens-healthcheck\n    Listen 127.0.0.1\n    Port {}\n\n",
        host.socket.display(),
        host.forward_port,
        host.health_port
    );
    let mut filters = String::new();
    let mut outputs = "[OUTPUT]\n    Name null\n    Match firelens-healthcheck\n\n".to_string();
    let mut env = Vec::new();
    for (index, c) in task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let log = &c["logConfiguration"];
        if log["logDriver"] != "awsfirelens" {
            continue;
        }
        let name = c["name"].as_str().unwrap();
        let options = log["options"].as_object().unwrap();
        for (key, value) in options {
            let pattern = value.as_str().unwrap();
            match key.as_str() {
                "include-pattern" => filters.push_str(&format!(
                    "[FILTER]\n    Name   grep\n    Match {name}-firelens*\n    Regex  log {pattern}\n\n"
                )),
                "exclude-pattern" => filters.push_str(&format!(
                    "[FILTER]\n    Name   grep\n    Match {name}-firelens*\n    Exclude log {pattern}\n\n"
                )),
                _ => {}
            }
        }
        outputs.push_str(&format!(
            "[OUTPUT]\n    Name {}\n    Match {name}-firelens*\n",
            options["Name"].as_str().expect("Name")
        ));
        for (key, value) in options {
            if !["Name", "include-pattern", "exclude-pattern"].contains(&key.as_str()) {
                outputs.push_str(&format!("    {key} {}\n", value.as_str().unwrap()));
            }
        }
        for secret in log["secretOptions"].as_array().into_iter().flatten() {
            let option = secret["name"].as_str().unwrap();
            let var = format!("{option}_{index}");
            outputs.push_str(&format!("    {option} ${{{var}}}\n"));
            let value = secrets
                .iter()
                .find(|(k, _)| *k == option)
                .map(|(_, v)| v.to_string())
                .expect("a value for every secret option");
            env.push((var, value));
        }
        outputs.push('\n');
    }
    conf.push_str(&filters);
    if router_options["enable-ecs-log-metadata"] != "false" {
        conf.push_str(&format!(
            "[FILTER]\n    Name record_modifier\n    Match *\n    Record ecs_cluster {}\n    Record ecs_task_arn {}\n    Record ecs_task_definition {family}:3\n\n",
            host.cluster, host.task_arn
        ));
    }
    if let Some(file) = router_options["config-file-value"].as_str() {
        // The image's own files live in the repository's `conf/` (see the Dockerfile).
        let file = file
            .replace("/fluent-bit/configs/", &format!("{REPO}/conf/"))
            .replace("/fluent-bit/etc/", &format!("{REPO}/conf/"));
        conf.push_str(&format!("@INCLUDE {file}\n\n"));
    }
    conf.push_str(&outputs);
    (conf, env)
}

#[test]
fn the_shipped_task_definitions_generate_configs_that_logferry_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    let mut checked = 0;
    for entry in std::fs::read_dir(Path::new(REPO).join("deploy/ecs")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("task-definition") {
            continue;
        }
        let task: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // The router's health check is the image's own `healthcheck` against the API port the
        // included config opens (no curl in the image).
        let router = task["containerDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c.get("firelensConfiguration").is_some())
            .unwrap();
        assert_eq!(router["essential"], true, "{name}");
        let check: Vec<&str> = router["healthCheck"]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            check[..3],
            ["CMD", "/fluent-bit/bin/fluent-bit", "healthcheck"],
            "{name}"
        );
        let included = router["firelensConfiguration"]["options"]["config-file-value"]
            .as_str()
            .unwrap()
            .replace("/fluent-bit/configs/", &format!("{REPO}/conf/"));
        let service = std::fs::read_to_string(included).unwrap();
        let port = service
            .lines()
            .find_map(|l| l.trim().strip_prefix("HTTP_Port"))
            .unwrap()
            .trim();
        assert!(
            check[3].starts_with(&format!("http://127.0.0.1:{port}/")),
            "{name}: {check:?}"
        );
        for c in task["containerDefinitions"].as_array().unwrap() {
            if c["logConfiguration"]["logDriver"] == "awsfirelens" {
                let o = &c["logConfiguration"]["options"];
                assert_eq!(
                    o["role_arn"], "arn:aws:iam::222222222222:role/cross-account-log-role",
                    "{name}: the cross-account role"
                );
            }
        }
        let (conf, env) = generate(&task, &host, &[]);
        let file = write_config(dir.path(), &format!("{name}.conf"), &conf);
        let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
            .args(["--dry-run", "-c"])
            .arg(&file)
            .envs(env)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}:\n{conf}\n{text}");
        checked += 1;
    }
    assert_eq!(checked, 2, "both FireLens task definitions in deploy/ecs");
}

/// Docker's `fluentd` log driver as FireLens configures it (`fluentd-sub-second-precision`):
/// Message mode with EventTime, through fluent-logger, on the socket; the records it sends.
const DOCKER_DRIVER: &str = r#"
import sys
from fluent import sender
address, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
if address.startswith("unix:"):
    logger = sender.FluentSender(tag, host="unix://" + address[5:], nanosecond_precision=True)
else:
    host, port = address.rsplit(":", 1)
    logger = sender.FluentSender(tag, host=host, port=int(port), nanosecond_precision=True)
for n in range(count):
    if n % 10 == 0:
        line = "GET /healthz req-%05d" % n
    elif n % 10 == 5:
        line = "startup noise %05d" % n
    else:
        line = "req-%05d GET /items 200" % n
    record = {
        "container_id": "4f1c2b3a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a",
        "container_name": "/ecs-web-3-app-8ce8f7d0a1b2c3d4e5f6",
        "source": "stderr" if n % 3 == 0 else "stdout",
        "log": line,
    }
    if not logger.emit(None, record):
        raise SystemExit("fluent-logger failed: %r" % logger.last_error)
logger.close()
print("sent", count)
"#;

#[test]
fn the_generated_config_ships_docker_driver_records_to_cloudwatch_logs_once() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(dir.path());
    let api = free_port();
    let group = format!(
        "firelens-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    // The router's custom config (config-file-type file): the monitoring API for the health check.
    let service = write_config(
        dir.path(),
        "service.conf",
        &format!("[SERVICE]\n    Flush 1\n    Grace 10\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n    Health_Check On\n"),
    );
    // A task definition as users write it: include/exclude patterns (the include one a
    // lookahead), the group name from a secret (SSM), everything else verbatim.
    let task = serde_json::json!({
        "family": "web",
        "containerDefinitions": [
            {"name": "log_router", "firelensConfiguration": {"type": "fluentbit", "options": {
                "config-file-type": "file", "config-file-value": service.to_str().unwrap()}}},
            {"name": "app", "logConfiguration": {"logDriver": "awsfirelens",
                "options": {
                    "Name": "cloudwatch_logs",
                    "region": "us-east-1",
                    "endpoint": p.var("MOTO_ENDPOINT"),
                    "log_stream_prefix": "web-",
                    "auto_create_group": "true",
                    "log_retention_days": "14",
                    "include-pattern": "^(?=.*req-).*$",
                    "exclude-pattern": "healthz"
                },
                "secretOptions": [{"name": "log_group_name",
                    "valueFrom": "arn:aws:ssm:us-east-1:111111111111:parameter/log-group"}]}}
        ]
    });
    let (conf, env) = generate(&task, &host, &[("log_group_name", &group)]);
    let file = write_config(dir.path(), "fluent-bit.conf", &conf);
    let agent = Agent::start_custom(dir.path(), &file, |c| {
        isolated_aws_env(c, Some(("test", "test")));
        c.envs(env);
    });
    wait_until(Duration::from_secs(60), "the FireLens socket", || {
        host.socket.exists() && http_get(api, "/api/v1/uptime").is_some()
    });

    let tag = format!("app-firelens-{}", host.task_id());
    let count = 2000;
    let socket = format!("unix:{}", host.socket.display());
    run_python(&p, DOCKER_DRIVER, &[&socket, &tag, &count.to_string()]);
    // A container of another task definition on TCP 24224: no output matches it.
    let tcp = format!("127.0.0.1:{}", host.forward_port);
    run_python(&p, DOCKER_DRIVER, &[&tcp, "sidecar-firelens-x", "50"]);
    // The ECS TCP health check: into the null output, never to CloudWatch.
    let mut check = std::net::TcpStream::connect(("127.0.0.1", host.health_port)).unwrap();
    check.write_all(b"{\"health\": \"check\"}\n").unwrap();
    drop(check);

    let kept = (0..count).filter(|n| n % 10 != 0 && n % 10 != 5).count();
    let client = moto(&p);
    let stream = format!("web-{tag}");
    wait_until(
        Duration::from_secs(120),
        &format!("{kept} events in {group}/{stream}"),
        || metric(api, "fluentbit_output_proc_records_total") >= kept as u64,
    );
    let events = messages(&client, &group, &stream);
    let mut seen = std::collections::HashSet::new();
    for message in &events {
        let record: serde_json::Value = serde_json::from_str(message).unwrap();
        let log = record["log"].as_str().unwrap().to_string();
        assert!(log.starts_with("req-") && !log.contains("healthz"), "{log}");
        assert_eq!(record["ecs_cluster"], host.cluster, "{message}");
        assert_eq!(record["ecs_task_arn"], host.task_arn, "{message}");
        assert_eq!(record["ecs_task_definition"], "web:3", "{message}");
        assert_eq!(
            record["container_name"],
            "/ecs-web-3-app-8ce8f7d0a1b2c3d4e5f6"
        );
        assert!(["stdout", "stderr"].contains(&record["source"].as_str().unwrap()));
        assert!(seen.insert(log.clone()), "{log} arrived twice");
    }
    assert_eq!(seen.len(), kept, "every kept line once");
    assert_eq!(stream_names(&client, &group), [stream]);
    assert_eq!(retention_days(&client, &group), Some(14));

    // The container health check the task definitions use.
    let health = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .args([
            "healthcheck",
            &format!("http://127.0.0.1:{api}/api/v1/health"),
        ])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}\n{}", agent.log_text());
    let (_, metrics) = http_get(api, "/api/v1/metrics").unwrap();
    let m: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert_eq!(m["output"]["null.0"]["proc_records"], 1, "the health check");
    assert_eq!(m["input"]["forward.1"]["records"], 50, "{metrics}");
}

#[test]
fn ecs_variables_come_from_the_task_metadata_endpoint_as_the_init_image_exports_them() {
    let dir = tempfile::tempdir().unwrap();
    let doc = task_metadata("meta-cluster");
    let fixture = CredentialEndpoint::start(move |r| {
        if r.path == "/v4/container-1/task" {
            Reply::new(200, doc.clone())
        } else {
            Reply::new(404, "")
        }
    });
    // aws-for-fluent-bit's ecs-metadata include, as users copy it into their configs.
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let conf = write_config(
        dir.path(),
        "fluent-bit.conf",
        &format!(
            "[INPUT]\n    Name dummy\n    Tag app\n    Samples 1\n    Dummy {{\"log\":\"hello\"}}\n[FILTER]\n    Name record_modifier\n    Match *\n    Record ecs_cluster ${{ECS_CLUSTER}}\n    Record ecs_task_arn ${{ECS_TASK_ARN}}\n    Record ecs_task_definition ${{ECS_TASK_DEFINITION}}\n    Record launch ${{ECS_LAUNCH_TYPE}}\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File out.log\n    Format json_lines\n",
            out.display()
        ),
    );
    let mut agent = Agent::start_custom(dir.path(), &conf, |c| {
        c.env(
            "ECS_CONTAINER_METADATA_URI_V4",
            format!("{}/v4/container-1", fixture.url),
        )
        .env_remove("ECS_CLUSTER")
        .env_remove("ECS_TASK_ARN")
        .env_remove("ECS_TASK_DEFINITION")
        // Set by the user: kept.
        .env("ECS_LAUNCH_TYPE", "MINE");
    });
    let written = out.join("out.log");
    wait_until(Duration::from_secs(30), "the record written", || {
        count_lines(&written) == 1
    });
    agent.sigterm();
    let status = agent.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{}", agent.log_text());
    let record: serde_json::Value = serde_json::from_str(&lines(&written)[0]).unwrap();
    assert_eq!(record["ecs_cluster"], "meta-cluster", "{record}");
    assert_eq!(
        record["ecs_task_arn"],
        "arn:aws:ecs:us-west-2:111111111111:task/meta-cluster/158d1c8083dd49d6b527399fd6414f5c"
    );
    assert_eq!(
        record["ecs_task_definition"],
        "firelens-example-cloudwatch:1"
    );
    assert_eq!(record["launch"], "MINE");
    assert!(agent.log_text().contains("ECS task metadata: exported"));
}
