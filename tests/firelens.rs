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

use std::path::{Path, PathBuf};
use std::process::Command;

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
