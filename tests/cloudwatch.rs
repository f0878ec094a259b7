//! The `cloudwatch_logs` and `cloudwatch` outputs against moto's CloudWatch Logs (tests/peers):
//! every line arriving once, group/stream creation and retention, `log_key`, both plugins'
//! templates (with `$(ecs_*)` from a task metadata fixture), cross-account delivery through an
//! assumed role on the IAM-enforcing moto, and an outage of the endpoint.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use common::cloudwatch::*;
use common::peers::{block_on, isolated_aws_env, run_python, CredentialEndpoint, Peers, Reply};
use common::*;

const T: Duration = Duration::from_secs(120);

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Waits until the agent counted `count` records delivered, then reads the stream (reading
/// while requests still land could page over a list that is still growing).
fn delivered_messages(
    port: u16,
    client: &Client,
    group: &str,
    stream: &str,
    count: usize,
) -> Vec<String> {
    wait_until(
        T,
        &format!("{count} records delivered to {group}/{stream}"),
        || metric(port, "fluentbit_output_proc_records_total") >= count as u64,
    );
    messages(client, group, stream)
}

fn service(dir: &Path, port: u16) -> String {
    format!(
        "[SERVICE]\n    Flush 0.2\n    Grace 10\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n    scheduler.base 1\n    scheduler.cap 2\n    storage.path {}/storage\n",
        dir.display()
    )
}

fn tail_input(dir: &Path, tag: &str) -> String {
    format!(
        "[INPUT]\n    Name tail\n    Tag {tag}\n    Path {}/app.log\n    DB {}/tail.db\n    Read_from_Head On\n    Refresh_Interval 1\n",
        dir.display(),
        dir.display()
    )
}

fn start_agent(dir: &Path, config: &Path, key: Option<(&str, &str)>) -> Agent {
    Agent::start_custom(dir, config, |c| isolated_aws_env(c, key))
}

#[test]
fn cloudwatch_logs_delivers_every_line_once_and_creates_group_stream_and_retention() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = format!("/logferry/basic-{}", unique());
    // More than one request's worth of events (10,000) and of bytes (1 MiB).
    let count = 12_345;
    append_numbered(&d.join("app.log"), "line", 0, count);
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}{}[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint {}\n    log_group_name {group}\n    log_stream_prefix from-\n    log_key log\n    auto_create_group On\n    log_retention_days 7\n    log_group_class STANDARD\n",
            service(d, port),
            tail_input(d, "app.web"),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let agent = start_agent(d, &config, Some(("test", "test")));
    let client = moto(&p);
    let values = delivered_messages(port, &client, &group, "from-app.web", count);
    assert_eq!(assert_all_present(&values, "line", count), 0, "duplicates");
    assert_eq!(values.len(), count);
    // The messages are the raw `log` values.
    assert!(values.contains(
        &"line-00000000 some padding text to make the line a realistic length".to_string()
    ));
    assert_eq!(stream_names(&client, &group), ["from-app.web"]);
    assert_eq!(retention_days(&client, &group), Some(7));
    assert_eq!(
        metric(port, "fluentbit_output_proc_records_total"),
        count as u64
    );
    assert_eq!(metric(port, "fluentbit_output_dropped_records_total"), 0);
    assert!(agent.log_text().contains("created log group"));
}

#[test]
fn missing_group_without_auto_create_is_named_and_nothing_is_delivered() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = format!("/logferry/absent-{}", unique());
    append_numbered(&d.join("app.log"), "line", 0, 10);
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}{}[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint {}\n    log_group_name {group}\n    log_stream_name s\n    Retry_Limit 1\n",
            service(d, port),
            tail_input(d, "app"),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let agent = start_agent(d, &config, Some(("test", "test")));
    let expected = format!("log group '{group}' does not exist and auto_create_group is off");
    wait_until(T, "the missing group named in the log", || {
        agent.log_text().contains(&expected)
    });
    // Health fails while the destination refuses.
    assert_eq!(http_get(port, "/api/v1/health").map(|r| r.0), Some(500));
    wait_until(T, "records dropped at Retry_Limit", || {
        metric(port, "fluentbit_output_dropped_records_total") == 10
    });
    assert_eq!(metric(port, "fluentbit_output_proc_records_total"), 0);
    assert_eq!(metric(port, "fluentbit_output_retries_failed_total"), 1);
    assert!(stream_names(&moto(&p), &group).is_empty());
}

#[test]
fn record_accessor_templates_pick_group_and_stream_and_fall_back() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let u = unique();
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}[INPUT]\n    Name dummy\n    Tag kube.prod.web\n    Rate 20\n    Samples 5\n    Dummy {{\"kubernetes\":{{\"namespace_name\":\"prod\",\"pod_name\":\"web-1\"}},\"log\":\"hello\"}}\n[INPUT]\n    Name dummy\n    Tag kube.other.x\n    Rate 20\n    Samples 3\n    Dummy {{\"log\":\"no metadata\"}}\n[OUTPUT]\n    Name cloudwatch_logs\n    Match kube.*\n    region us-east-1\n    endpoint {}\n    log_group_name /tmpl-{u}/fallback\n    log_group_template /tmpl-{u}/$kubernetes['namespace_name']\n    log_stream_prefix p-\n    log_stream_template $TAG[1].$kubernetes['pod_name']\n    auto_create_group true\n",
            service(d, port),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let _agent = start_agent(d, &config, Some(("test", "test")));
    let client = moto(&p);
    wait_until(T, "8 records delivered", || {
        metric(port, "fluentbit_output_proc_records_total") == 8
    });
    let templated = messages(&client, &format!("/tmpl-{u}/prod"), "prod.web-1");
    assert_eq!(templated.len(), 5);
    let record: serde_json::Value = serde_json::from_str(&templated[0]).unwrap();
    assert_eq!(record["kubernetes"]["pod_name"], "web-1");
    assert_eq!(record["log"], "hello");
    let fallback = messages(&client, &format!("/tmpl-{u}/fallback"), "p-kube.other.x");
    assert_eq!(fallback, vec![r#"{"log":"no metadata"}"#; 3]);
}

#[test]
fn go_plugin_templates_use_ecs_metadata_tags_and_defaults() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = format!("c{}", unique());
    let doc = task_metadata(&cluster);
    let fixture = CredentialEndpoint::start(move |r| {
        if r.path == "/v4/container-1/task" {
            Reply::new(200, doc.clone())
        } else {
            Reply::new(404, "")
        }
    });
    let port = free_port();
    // The FireLens cross-account example's output, plus a second one whose template does not
    // resolve (the record has no `app`), so the Go plugin's default group is used.
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}[INPUT]\n    Name dummy\n    Tag app-firelens-158d\n    Rate 20\n    Samples 4\n    Dummy {{\"log\":\"  padded line  \",\"source\":\"stdout\"}}\n[OUTPUT]\n    Name cloudwatch\n    Match app-firelens*\n    region us-west-2\n    endpoint {moto}\n    log_group_name /aws/ecs/containerinsights/$(ecs_cluster)/application\n    log_stream_name $(ecs_task_id)\n    log_key log\n    auto_create_group true\n    new_log_group_tags team=logs,env=test\n    retry_limit 2\n[OUTPUT]\n    Name cloudwatch\n    Match app-firelens*\n    region us-west-2\n    endpoint {moto}\n    log_group_name /go-{cluster}/$(app)\n    default_log_group_name /go-{cluster}/default\n    log_stream_name $(tag)-$(source)\n    auto_create_group true\n",
            service(d, port),
            moto = p.var("MOTO_ENDPOINT")
        ),
    );
    let agent = Agent::start_custom(d, &config, |c| {
        isolated_aws_env(c, Some(("test", "test")));
        c.env(
            "ECS_CONTAINER_METADATA_URI_V4",
            format!("{}/v4/container-1", fixture.url),
        );
    });
    // The outputs write to us-west-2.
    let client = logs_client_in(p.var("MOTO_ENDPOINT"), "test", "test", "us-west-2");
    let group = format!("/aws/ecs/containerinsights/{cluster}/application");
    // `log_key` values, trimmed as the Go plugin trims them.
    wait_until(T, "4 records delivered by each output", || {
        metric(port, "fluentbit_output_proc_records_total") == 8
    });
    let got = messages(&client, &group, "158d1c8083dd49d6b527399fd6414f5c");
    assert_eq!(got, vec!["padded line"; 4]);
    let tags = block_on(async {
        let described = client
            .describe_log_groups()
            .log_group_name_prefix(&group)
            .send()
            .await
            .unwrap();
        let arn = described.log_groups()[0]
            .log_group_arn()
            .unwrap()
            .to_string();
        client
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .unwrap()
            .tags()
            .cloned()
            .unwrap_or_default()
    });
    assert_eq!(tags.get("team").map(String::as_str), Some("logs"));
    assert_eq!(tags.get("env").map(String::as_str), Some("test"));
    let fallback = messages(
        &client,
        &format!("/go-{cluster}/default"),
        "app-firelens-158d-stdout",
    );
    assert_eq!(fallback.len(), 4);
    assert!(fallback[0].contains("\"source\":\"stdout\""));
    // Read once at start, not per write.
    assert_eq!(fixture.requests(), ["GET /v4/container-1/task"]);
    assert!(agent.log_text().contains("did not resolve"));
}

#[test]
fn ecs_template_without_a_reachable_metadata_endpoint_is_a_clear_error() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}/v4/x", free_port());
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}[INPUT]\n    Name dummy\n    Tag t\n    Samples 2\n[OUTPUT]\n    Name cloudwatch\n    Match *\n    region us-east-1\n    endpoint {}\n    log_group_name /ecs/$(ecs_cluster)\n    log_stream_name $(ecs_task_id)\n    auto_create_group true\n    Retry_Limit 1\n",
            service(d, port),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let agent = Agent::start_custom(d, &config, |c| {
        isolated_aws_env(c, Some(("test", "test")));
        c.env("ECS_CONTAINER_METADATA_URI_V4", &dead);
    });
    wait_until(T, "the metadata error", || {
        let log = agent.log_text();
        log.contains("need the ECS task metadata endpoint")
            && log.contains(&format!("GET {dead}/task"))
    });
    wait_until(T, "records dropped", || {
        metric(port, "fluentbit_output_dropped_records_total") == 2
    });
    assert_eq!(metric(port, "fluentbit_output_proc_records_total"), 0);
}

/// moto-auth: a "task role" that may only assume roles, and a "log role" in the log account with
/// the actions of the shipped `deploy/aws/cloudwatch-logs-write-policy.json` (on every resource:
/// moto checks CloudWatch Logs calls against `*` only, so a resource-scoped statement never
/// matches there). Returns the task role's temporary credentials and the log role's ARN.
fn cross_account_roles(p: &Peers) -> (String, String, String, String) {
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/aws/cloudwatch-logs-write-policy.json"
    ))
    .unwrap()
    .replace(
        "arn:aws:logs:REGION:ACCOUNT_ID:log-group:LOG_GROUP_PREFIX*",
        "*",
    );
    assert!(
        !policy.contains("REGION"),
        "the policy's resources changed: {policy}"
    );
    let out = run_python(
        p,
        r#"
import sys, json, random, boto3
ep, ak, sk, policy = sys.argv[1:5]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk)
n = str(random.randint(0, 10**9))
iam = boto3.client("iam", **kw)
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
task = iam.create_role(RoleName="ecs-task-role-" + n, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
iam.put_role_policy(RoleName="ecs-task-role-" + n, PolicyName="assume", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}))
log = iam.create_role(RoleName="cross-account-log-role-" + n, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
iam.put_role_policy(RoleName="cross-account-log-role-" + n, PolicyName="cloudwatch-write", PolicyDocument=policy)
c = boto3.client("sts", **kw).assume_role(RoleArn=task, RoleSessionName="task", DurationSeconds=3600)["Credentials"]
print(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], log)
"#,
        &[
            p.var("MOTO_AUTH_ENDPOINT"),
            p.var("MOTO_AUTH_ACCESS_KEY"),
            p.var("MOTO_AUTH_SECRET_KEY"),
            &policy,
        ],
    );
    let [key, secret, token, role] = &out[..] else {
        panic!("setup printed {out:?}");
    };
    (key.clone(), secret.clone(), token.clone(), role.clone())
}

/// Serves the task role's credentials as the ECS agent does.
fn task_role_endpoint(key: String, secret: String, token: String) -> CredentialEndpoint {
    CredentialEndpoint::start(move |_| {
        Reply::new(
            200,
            serde_json::json!({
                "RoleArn": "arn:aws:iam::123456789012:role/ecs-task-role",
                "AccessKeyId": key,
                "SecretAccessKey": secret,
                "Token": token,
                "Expiration": "2099-01-01T00:00:00Z",
            })
            .to_string(),
        )
    })
}

#[test]
fn cross_account_role_from_task_role_credentials_writes_and_without_it_access_is_denied() {
    let p = Peers::get();
    let (key, secret, token, log_role) = cross_account_roles(&p);
    let creds = task_role_endpoint(key, secret, token);
    let auth = p.var("MOTO_AUTH_ENDPOINT");
    let admin = logs_client(
        auth,
        p.var("MOTO_AUTH_ACCESS_KEY"),
        p.var("MOTO_AUTH_SECRET_KEY"),
    );
    let u = unique();

    // 1. cloudwatch_logs with role_arn and sts_endpoint; base credentials from the container
    //    credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI, as ECS/EKS set it).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    append_numbered(&d.join("app.log"), "line", 0, 500);
    let group = format!("cross-account-example-{u}");
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}{}[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint {auth}\n    sts_endpoint {auth}\n    log_group_name {group}\n    log_stream_prefix example-\n    log_key log\n    auto_create_group On\n    role_arn {log_role}\n",
            service(d, port),
            tail_input(d, "app"),
        ),
    );
    let url = format!("{}/v2/credentials/task", creds.url);
    let _agent = Agent::start_custom(d, &config, |c| {
        isolated_aws_env(c, None);
        c.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url);
    });
    let got = delivered_messages(port, &admin, &group, "example-app", 500);
    assert_eq!(got.len(), 500);
    assert_eq!(assert_all_present(&got, "line", 500), 0);
    assert!(creds
        .requests()
        .iter()
        .any(|r| r == "GET /v2/credentials/task"));

    // 2. The Go plugin's names: credentials_endpoint instead of the environment.
    let dir2 = tempfile::tempdir().unwrap();
    let d2 = dir2.path();
    append_numbered(&d2.join("app.log"), "go", 0, 50);
    let group2 = format!("cross-account-go-{u}");
    let port2 = free_port();
    let config = write_config(
        d2,
        "fluent-bit.conf",
        &format!(
            "{}{}[OUTPUT]\n    Name cloudwatch\n    Match *\n    region us-east-1\n    endpoint {auth}\n    sts_endpoint {auth}\n    credentials_endpoint {url}\n    log_group_name {group2}\n    log_stream_name $(tag)\n    log_key log\n    auto_create_group true\n    role_arn {log_role}\n",
            service(d2, port2),
            tail_input(d2, "app"),
        ),
    );
    let _agent2 = start_agent(d2, &config, None);
    let got = delivered_messages(port2, &admin, &group2, "app", 50);
    assert_eq!(got.len(), 50);
    assert_eq!(assert_all_present(&got, "go", 50), 0);

    // 3. Without role_arn the task role itself may not write: AccessDenied naming the group and
    //    the identity, health failing, and nothing counted as delivered.
    let dir3 = tempfile::tempdir().unwrap();
    let d3 = dir3.path();
    append_numbered(&d3.join("app.log"), "denied", 0, 20);
    let group3 = format!("cross-account-denied-{u}");
    let port3 = free_port();
    let config = write_config(
        d3,
        "fluent-bit.conf",
        &format!(
            "{}{}[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint {auth}\n    log_group_name {group3}\n    log_stream_prefix example-\n    auto_create_group On\n    Retry_Limit 2\n",
            service(d3, port3),
            tail_input(d3, "app"),
        ),
    );
    let agent3 = Agent::start_custom(d3, &config, |c| {
        isolated_aws_env(c, None);
        c.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url);
    });
    let expected = format!("PutLogEvents to log group '{group3}' refused: AccessDenied");
    wait_until(T, "AccessDenied naming the group", || {
        agent3.log_text().contains(&expected)
    });
    let log = agent3.log_text();
    assert!(
        log.contains("identity: the default credential chain"),
        "{log}"
    );
    println!("{log}");
    assert_eq!(http_get(port3, "/api/v1/health").map(|r| r.0), Some(500));
    wait_until(T, "records dropped at Retry_Limit", || {
        metric(port3, "fluentbit_output_dropped_records_total") == 20
    });
    assert_eq!(metric(port3, "fluentbit_output_proc_records_total"), 0);
    assert!(messages(&admin, &group3, "example-app").is_empty());
}

/// A TCP forwarder to `target` that can be taken down (connections refused, open ones cut)
/// and brought back on the same port: the endpoint's outage without losing moto's state.
struct Switch {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Switch {
    fn start(target: String) -> Switch {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if !up2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                open2.lock().unwrap().push(client.try_clone().unwrap());
                open2.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 65536];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Switch { port, up, open }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

#[test]
fn endpoint_outage_loses_nothing_and_sends_nothing_twice() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let moto_addr = p
        .var("MOTO_ENDPOINT")
        .trim_start_matches("http://")
        .to_string();
    let switch = Switch::start(moto_addr);
    let group = format!("/logferry/outage-{}", unique());
    let log = d.join("app.log");
    append_numbered(&log, "line", 0, 2000);
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}{}[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint http://127.0.0.1:{}\n    log_group_name {group}\n    log_stream_name s\n    log_key log\n    auto_create_group On\n    workers 2\n",
            service(d, port),
            tail_input(d, "app"),
            switch.port
        ),
    );
    let agent = start_agent(d, &config, Some(("test", "test")));
    let client = moto(&p);
    delivered_messages(port, &client, &group, "s", 2000);
    switch.set_up(false);
    append_numbered(&log, "line", 2000, 3000);
    wait_until(T, "failed requests during the outage", || {
        metric(port, "fluentbit_output_retries_total") >= 2
    });
    let during = messages(&client, &group, "s").len();
    assert!(during < 5000, "the outage held nothing back ({during})");
    switch.set_up(true);
    let got = delivered_messages(port, &client, &group, "s", 5000);
    assert_eq!(assert_all_present(&got, "line", 5000), 0, "duplicates");
    assert_eq!(got.len(), 5000);
    assert_eq!(metric(port, "fluentbit_output_dropped_records_total"), 0);
    let log = agent.log_text();
    assert!(log.contains("PutLogEvents failed"), "{log}");
}

fn dry_run(dir: &Path, output: &str) -> (bool, String) {
    let config = write_config(
        dir,
        "cw.conf",
        &format!("[INPUT]\n    Name dummy\n[OUTPUT]\n    Match *\n{output}"),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_logferry"))
        .arg("--dry-run")
        .arg("-c")
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn options_of_both_plugins_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let every_c_option = "    Name cloudwatch_logs\n    region us-east-1\n    log_group_name g\n    log_group_template /$kubernetes['namespace_name']\n    log_stream_prefix p-\n    log_stream_template $TAG[0]\n    log_key log\n    log_format json/emf\n    role_arn arn:aws:iam::222222222222:role/cross-account-log-role\n    external_id x\n    sts_endpoint https://sts.us-east-1.amazonaws.com\n    endpoint http://127.0.0.1:1\n    auto_create_group On\n    log_retention_days 14\n    log_group_class INFREQUENT_ACCESS\n    metric_namespace ns\n    metric_dimensions a,b;c\n    auto_retry_requests false\n    profile default\n    extra_user_agent ecs-init\n    workers 2\n    Retry_Limit 5\n";
    let (ok, out) = dry_run(d, every_c_option);
    assert!(ok, "{out}");
    let every_go_option = "    Name cloudwatch\n    region us-west-2\n    log_group_name /aws/ecs/containerinsights/$(ecs_cluster)/application\n    log_stream_name $(ecs_task_id)-$(tag[1])-$(uuid)-$(a['b'])\n    default_log_group_name dg\n    default_log_stream_name ds\n    auto_create_group true\n    auto_create_stream false\n    new_log_group_tags team=logs\n    log_retention_days 30\n    log_key log\n    log_format json\n    role_arn arn:aws:iam::222222222222:role/cross-account-log-role\n    external_id x\n    sts_endpoint sts.us-west-2.amazonaws.com\n    endpoint logs.us-west-2.amazonaws.com\n    credentials_endpoint http://169.254.170.2/v2/credentials/abc\n";
    let (ok, out) = dry_run(d, every_go_option);
    assert!(ok, "{out}");
    let cases = [
        ("    Name cloudwatch_logs\n    log_group_name g\n    log_stream_name s\n", "'region' is a required field"),
        ("    Name cloudwatch_logs\n    region r\n    log_stream_name s\n", "'log_group_name' is a required field"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n", "Either 'log_stream_name' or 'log_stream_prefix' is required"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n    log_stream_name s\n    log_stream_prefix p\n", "cw.conf:9: key 'log_stream_prefix'"),
        ("    Name cloudwatch\n    region r\n    log_group_name g\n    log_stream_name s\n    log_stream_prefix p\n", "They cannot be provided together"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n    log_stream_name s\n    log_group_class COLD\n", "The valid values for log_group_class are {STANDARD, INFREQUENT_ACCESS}. Invalid input was COLD"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n    log_stream_name s\n    log_retention_days 8\n", "cw.conf:9: key 'log_retention_days': 8 is not a retention CloudWatch accepts"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n    log_stream_name s\n    log_group_template $a['b'\n", "cw.conf:9: key 'log_group_template': could not parse the template"),
        ("    Name cloudwatch\n    region r\n    log_group_name $(tag[12])\n    log_stream_name s\n", "the tag index must be 0 to 9"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n    log_stream_name s\n    default_log_group_name d\n", "cw.conf:9: key 'default_log_group_name': unknown key"),
        ("    Name cloudwatch\n    region r\n    log_group_name g\n    log_stream_name s\n    credentials_endpoint https://x\n", "credentials_endpoint must be an http:// URL"),
        ("    Name cloudwatch_logs\n    region r\n    log_group_name g\n    log_stream_name s\n    workers 0\n", "workers must be at least 1"),
    ];
    for (output, expected) in cases {
        let (ok, out) = dry_run(d, output);
        assert!(
            !ok && out.contains(expected),
            "{output}\nexpected '{expected}' in:\n{out}"
        );
    }
}

#[test]
fn an_event_over_256_kib_is_truncated_and_counted() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = format!("/logferry/big-{}", unique());
    let port = free_port();
    let big = "x".repeat(300_000);
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}[INPUT]\n    Name dummy\n    Tag big\n    Samples 1\n    Dummy {{\"log\":\"{big}\"}}\n[INPUT]\n    Name dummy\n    Tag big\n    Samples 1\n    Dummy {{\"log\":\"small\"}}\n[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint {}\n    log_group_name {group}\n    log_stream_name s\n    log_key log\n    auto_create_group On\n",
            service(d, port),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let _agent = start_agent(d, &config, Some(("test", "test")));
    let mut got = delivered_messages(port, &moto(&p), &group, "s", 2);
    got.sort_by_key(String::len);
    assert_eq!(got[0], "small");
    // 262,144 bytes per event, CloudWatch's 26 included.
    assert_eq!(got[1].len(), 262_144 - 26);
    assert!(got[1].starts_with("xxxx") && got[1].ends_with("[Truncated...]"));
    assert_eq!(
        metric(port, "logferry_output_cloudwatch_truncated_events_total"),
        1
    );
}

#[test]
fn events_cloudwatch_rejects_are_counted_and_logged_not_lost_silently() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let group = format!("/logferry/rejected-{}", unique());
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S");
    std::fs::write(
        d.join("app.log"),
        format!(
            "{{\"time\":\"2020-01-01T00:00:00\",\"log\":\"too old\"}}\n{{\"time\":\"{now}\",\"log\":\"current\"}}\n{{\"time\":\"2099-01-01T00:00:00\",\"log\":\"too new\"}}\n"
        ),
    )
    .unwrap();
    write_config(
        d,
        "parsers.conf",
        "[PARSER]\n    Name iso\n    Format json\n    Time_Key time\n    Time_Format %Y-%m-%dT%H:%M:%S\n",
    );
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}    Parsers_File parsers.conf\n{}    Parser iso\n[OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n    endpoint {}\n    log_group_name {group}\n    log_stream_name s\n    log_key log\n    auto_create_group On\n",
            service(d, port),
            tail_input(d, "app"),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let agent = start_agent(d, &config, Some(("test", "test")));
    // The output counts rejections as CloudWatch answers; the engine counts the records dropped
    // when the flush returns, a moment later.
    wait_until(T, "the rejection counted", || {
        metric(port, "logferry_output_cloudwatch_rejected_events_total") == 2
            && metric(port, "fluentbit_output_dropped_records_total") == 2
    });
    assert_eq!(metric(port, "fluentbit_output_proc_records_total"), 1);
    assert_eq!(messages(&moto(&p), &group, "s"), ["current"]);
    let log = agent.log_text();
    // More than 24 h apart, the three events went in three requests.
    assert!(
        log.contains("CloudWatch rejected 1 events: 1 too old, 0 expired, 0 too new")
            && log.contains("CloudWatch rejected 1 events: 0 too old, 0 expired, 1 too new")
            && log.contains(&format!("group={group}")),
        "{log}"
    );
}

#[test]
fn a_refusing_credentials_endpoint_is_reported_without_its_path() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refusing = CredentialEndpoint::start(|_| Reply::new(404, "{}"));
    let url = format!("{}/v2/credentials/secret-task-guid", refusing.url);
    let port = free_port();
    let config = write_config(
        d,
        "fluent-bit.conf",
        &format!(
            "{}[INPUT]\n    Name dummy\n    Tag t\n    Samples 3\n[OUTPUT]\n    Name cloudwatch\n    Match *\n    region us-east-1\n    endpoint {}\n    credentials_endpoint {url}\n    log_group_name g\n    log_stream_name s\n    Retry_Limit 1\n",
            service(d, port),
            p.var("MOTO_ENDPOINT")
        ),
    );
    let agent = start_agent(d, &config, None);
    let host = refusing.url.trim_start_matches("http://");
    wait_until(T, "records dropped", || {
        metric(port, "fluentbit_output_dropped_records_total") == 3
    });
    let log = agent.log_text();
    assert!(
        log.contains("no usable credentials")
            && log.contains(&format!("credentials_endpoint {host} answered HTTP 404"))
            && !log.contains("secret-task-guid"),
        "{log}"
    );
    assert_eq!(metric(port, "fluentbit_output_proc_records_total"), 0);
    assert!(refusing
        .requests()
        .contains(&"GET /v2/credentials/secret-task-guid".to_string()));
}
