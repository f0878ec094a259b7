//! The `s3` output against real servers (tests/peers): s3s-fs checks SigV4 like MinIO; moto
//! runs STS (AssumeRole with an IAM trust check, web identity) and S3.

mod common;

use std::path::Path;
use std::time::Duration;

use common::peers::{
    create_bucket, get_object, isolated_aws_env, list_keys, moto_auth_role_credentials,
    object_size, run_python, start_s3s, CredentialEndpoint, EndpointRequest, Peers, Reply,
};
use common::*;

const T: Duration = Duration::from_secs(90);

fn bucket_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::process::id() as u64 * 1000 + rand_suffix()
    )
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        % 1000
}

/// Union's DaemonSet output with `endpoint` pointing at the peer.
fn union_config(dir: &Path, endpoint: &str, bucket: &str, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "fluent-bit.conf",
        &format!(
            "[SERVICE]\n    Grace 20\n[INPUT]\n    Name tail\n    Tag namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>\n    Tag_Regex (?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-\n    Path {dir}/containers/*.log\n    DB {dir}/flb_kube.db\n    multiline.parser docker, cri\n    Mem_Buf_Limit 5MB\n    Skip_Long_Lines On\n    Refresh_Interval 1\n    Read_from_Head On\n[OUTPUT]\n    Name s3\n    Match *\n    upload_timeout 2s\n    s3_key_format /persisted-logs/$TAG\n    static_file_path true\n    json_date_key false\n    region us-east-1\n    bucket {bucket}\n    endpoint {endpoint}\n    store_dir {dir}/spool\n{extra}",
            dir = dir.display()
        ),
    )
}

fn cri_lines(path: &Path, prefix: &str, start: usize, count: usize) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut s = String::new();
    for n in start..start + count {
        s.push_str(&format!("2026-11-22T08:00:00.{n:09}Z stdout F {prefix}-{n:08} some padding text to make the line a realistic length\n"));
    }
    f.write_all(s.as_bytes()).unwrap();
}

const POD_LOG: &str =
    "web-7d9f_prod_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log";
const KEY: &str = "persisted-logs/namespace-prod.pod-web-7d9f.cont-nginx";

fn s3s_agent(p: &Peers, dir: &Path, cfg: &Path, secret: &str) -> Agent {
    let key = p.var("S3S_ACCESS_KEY").to_string();
    let secret = secret.to_string();
    Agent::start_custom(dir, cfg, move |c| {
        isolated_aws_env(c, Some((&key, &secret)))
    })
}

#[test]
fn union_configmap_on_s3s_keeps_every_window_in_one_object() {
    let p = Peers::get();
    let client = p.s3s();
    for compression in ["none", "gzip", "zstd"] {
        let bucket = bucket_name(&format!("union-{compression}"));
        create_bucket(&client, &bucket);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("containers")).unwrap();
        let log = dir.path().join("containers").join(POD_LOG);
        cri_lines(&log, "u", 0, 1000);
        let cfg = union_config(
            dir.path(),
            p.var("S3S_ENDPOINT"),
            &bucket,
            &format!("    compression {compression}\n"),
        );
        let _agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
        let read = || {
            get_object(&client, &bucket, KEY)
                .map(|b| object_logs(&b))
                .unwrap_or_default()
        };
        wait_until(T, "first window", || read().len() >= 1000);
        cri_lines(&log, "u", 1000, 500);
        wait_until(T, "second window appended", || read().len() >= 1500);
        std::thread::sleep(Duration::from_millis(500));
        let logs = read();
        assert_eq!(logs.len(), 1500, "{compression}");
        assert_eq!(assert_all_present(&logs, "u", 1500), 0);
    }
}

#[test]
fn multipart_above_5_mib_and_append_by_server_side_copy() {
    let p = Peers::get();
    let client = p.s3s();
    let bucket = bucket_name("multipart");
    create_bucket(&client, &bucket);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "m", 0, 120_000); // ~14 MB of records
    let cfg = union_config(
        dir.path(),
        p.var("S3S_ENDPOINT"),
        &bucket,
        "    total_file_size 50M\n    upload_chunk_size 5242880\n",
    );
    let _agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    let read = || {
        get_object(&client, &bucket, KEY)
            .map(|b| object_logs(&b))
            .unwrap_or_default()
    };
    let size = || object_size(&client, &bucket, KEY);
    // Under load the first upload may hold part of the lines, the next window the rest.
    wait_until(T, "multipart object", || {
        size() > 13_000_000 && read().len() >= 120_000
    });
    assert_eq!(assert_all_present(&read(), "m", 120_000), 0);
    let first = size();
    // The object is now over 5 MiB: the next window is appended with UploadPartCopy.
    cri_lines(&log, "m", 120_000, 1000);
    wait_until(T, "appended window", || size() > first);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(assert_all_present(&read(), "m", 121_000), 0);
}

#[test]
fn kill_9_during_a_multipart_upload_resumes_it() {
    let p = Peers::get();
    let client = p.s3s();
    let bucket = bucket_name("resume");
    create_bucket(&client, &bucket);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "r", 0, 500_000); // ~60 MB: a dozen parts
    let cfg = union_config(
        dir.path(),
        p.var("S3S_ENDPOINT"),
        &bucket,
        "    total_file_size 100M\n    upload_timeout 1m\n    static_file_mode overwrite\n",
    );
    let sealed = dir.path().join(format!("spool/{bucket}/sealed"));
    let part_uploaded = || {
        std::fs::read_dir(&sealed)
            .map(|d| {
                d.flatten().any(|e| {
                    e.path().extension().is_some_and(|x| x == "state")
                        && std::fs::read_to_string(e.path())
                            .is_ok_and(|s| s.contains("\"parts\":[["))
                })
            })
            .unwrap_or(false)
    };
    let mut agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    wait_until(T, "spooled", || {
        dir.path().join("flb_kube.db").exists() || agent.child.try_wait().unwrap().is_some()
    });
    assert!(
        agent.child.try_wait().unwrap().is_none(),
        "agent exited: {}",
        agent.log_text()
    );
    let open = dir.path().join(format!("spool/{bucket}/open"));
    let spooled = || spooled_lines(&open);
    wait_until(T, "whole file spooled", || spooled() >= 500_000);
    // Graceful stop seals the spool and starts uploading; kill -9 once a part is confirmed.
    agent.sigterm();
    wait_until(T, "a part uploaded", part_uploaded);
    agent.kill9();
    assert_eq!(
        object_size(&client, &bucket, KEY),
        0,
        "not complete before the kill: {}",
        agent.log_text()
    );
    let mut agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    wait_until(T, "resumed object", || {
        object_size(&client, &bucket, KEY) > 0
    });
    agent.sigterm();
    agent.wait_exit(T);
    assert!(
        agent.log_text().contains("resuming multipart upload"),
        "{}",
        agent.log_text()
    );
    let logs = object_logs(&get_object(&client, &bucket, KEY).unwrap());
    assert_eq!(logs.len(), 500_000);
    assert_eq!(assert_all_present(&logs, "r", 500_000), 0);
}

#[test]
fn wrong_credentials_keep_data_in_the_spool_until_fixed() {
    let p = Peers::get();
    let client = p.s3s();
    let bucket = bucket_name("creds");
    create_bucket(&client, &bucket);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "c", 0, 300);
    let port = free_port();
    let cfg = union_config(dir.path(), p.var("S3S_ENDPOINT"), &bucket, "")
        .with_file_name("fluent-bit.conf");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[SERVICE]\n", &format!("[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {port}\n    Health_Check On\n    HC_Errors_Count 1\n    scheduler.base 1\n    scheduler.cap 2\n"));
    std::fs::write(&cfg, text).unwrap();
    let mut agent = s3s_agent(&p, dir.path(), &cfg, "not-the-secret");
    wait_until(T, "signature rejected and reported", || {
        agent.log_text().contains("SignatureDoesNotMatch")
    });
    wait_until(T, "health error", || {
        http_get(port, "/api/v1/health").is_some_and(|r| r.0 == 500)
    });
    let log_text = agent.log_text();
    assert!(
        log_text.contains("data kept in the spool") && log_text.contains(&bucket),
        "{log_text}"
    );
    assert!(
        !log_text.contains("not-the-secret"),
        "secrets never appear in logs"
    );
    agent.kill9();
    assert!(get_object(&client, &bucket, KEY).is_none());
    let _fixed = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    wait_until(T, "uploaded once credentials are right", || {
        get_object(&client, &bucket, KEY).is_some_and(|b| object_logs(&b).len() >= 300)
    });
    assert_eq!(
        assert_all_present(
            &object_logs(&get_object(&client, &bucket, KEY).unwrap()),
            "c",
            300
        ),
        0
    );
}

#[test]
fn server_down_then_back_loses_nothing() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "d", 0, 2000);
    let api = free_port();
    let cfg = union_config(dir.path(), &endpoint, "down", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[SERVICE]\n", &format!("[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n    scheduler.base 1\n    scheduler.cap 2\n"));
    std::fs::write(&cfg, text).unwrap();
    let _agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    let retries = || {
        http_get(api, "/api/v1/metrics")
            .map(|(_, b)| {
                serde_json::from_str::<serde_json::Value>(&b).unwrap()["output"]["s3.0"]["retries"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    wait_until(T, "retries while the server is down", || retries() >= 2);
    // The server comes up on that port.
    let data = dir.path().join("s3data");
    std::fs::create_dir(&data).unwrap();
    let mut server = start_s3s(&p, port, &data);
    let client = p.s3(&endpoint, p.var("S3S_ACCESS_KEY"), p.var("S3S_SECRET_KEY"));
    wait_until(T, "server up", || {
        common::peers::block_on(async { client.list_buckets().send().await.is_ok() })
    });
    create_bucket(&client, "down");
    wait_until(T, "uploaded after the outage", || {
        get_object(&client, "down", KEY).is_some_and(|b| object_logs(&b).len() >= 2000)
    });
    assert_eq!(
        assert_all_present(
            &object_logs(&get_object(&client, "down", KEY).unwrap()),
            "d",
            2000
        ),
        0
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// moto with SigV4 + IAM checks: the agent's own user may only assume the role; only the role
/// may write to S3, so an object proves AssumeRole (with external_id, through sts_endpoint) ran.
#[test]
fn role_arn_with_external_id_through_sts_endpoint() {
    let p = Peers::get();
    let endpoint = p.var("MOTO_AUTH_ENDPOINT");
    let f = run_python(
        &p,
        r#"
import sys, json, boto3
ep, ak, sk = sys.argv[1], sys.argv[2], sys.argv[3]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk)
iam = boto3.client("iam", **kw)
import random; n = str(random.randint(0, 10**9))
iam.create_user(UserName="shipper" + n)
key = iam.create_access_key(UserName="shipper" + n)["AccessKey"]
iam.put_user_policy(UserName="shipper" + n, PolicyName="assume", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}))
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:user/shipper" + n}, "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"sts:ExternalId": "ext-" + n}}}]}
role = iam.create_role(RoleName="uploader" + n, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
iam.put_role_policy(RoleName="uploader" + n, PolicyName="s3", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
boto3.client("s3", **kw).create_bucket(Bucket="cross-account-" + n)
print(key["AccessKeyId"], key["SecretAccessKey"], role, "ext-" + n, "cross-account-" + n)
"#,
        &[
            endpoint,
            p.var("MOTO_AUTH_ACCESS_KEY"),
            p.var("MOTO_AUTH_SECRET_KEY"),
        ],
    );
    let [user_key, user_secret, role_arn, external_id, bucket] = &f[..] else {
        panic!("setup printed {f:?}");
    };
    // Union's config shipping `lines` lines as the user, with `extra` output options.
    let as_user = |prefix: &str, lines: usize, extra: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("containers")).unwrap();
        cri_lines(
            &dir.path().join("containers").join(POD_LOG),
            prefix,
            0,
            lines,
        );
        let cfg = union_config(dir.path(), endpoint, bucket, extra);
        let (k, s) = (user_key.to_string(), user_secret.to_string());
        let agent = Agent::start_custom(dir.path(), &cfg, move |c| {
            isolated_aws_env(c, Some((&k, &s)))
        });
        (dir, agent)
    };
    let with_role = |external_id: &str, key_prefix: &str| {
        format!("    role_arn {role_arn}\n    external_id {external_id}\n    sts_endpoint {endpoint}\n    s3_key_format /{key_prefix}/$TAG\n")
    };
    let _shipping = as_user("x", 100, &with_role(external_id, "persisted-logs"));
    let admin = p.s3(
        endpoint,
        p.var("MOTO_AUTH_ACCESS_KEY"),
        p.var("MOTO_AUTH_SECRET_KEY"),
    );
    wait_until(T, "object written with the role's credentials", || {
        get_object(&admin, bucket, KEY).is_some_and(|b| object_logs(&b).len() >= 100)
    });
    // Without the role, the same user cannot write: the upload fails and the data stays spooled.
    let (_dir2, agent2) = as_user("y", 10, "    s3_key_format /denied/$TAG\n");
    // A permanent refusal: logged at once as such.
    wait_until(T, "access denied without the role", || {
        let log = agent2.log_text();
        log.contains("upload refused") && log.contains("AccessDenied")
    });
    assert!(list_keys(&admin, bucket, "denied/").is_empty());
    // A wrong external_id: the role's trust refuses it; the error names the role and that
    // credentials could not be loaded (moto's STS error body is not one the SDK parses for a
    // code, so the code itself is not asserted).
    let wrong = format!("not-{external_id}");
    let (_dir3, agent3) = as_user("z", 10, &with_role(&wrong, "wrong-external-id"));
    wait_until(T, "AssumeRole refused", || {
        agent3.log_text().contains("upload failed")
    });
    let log = agent3.log_text();
    assert!(
        log.contains("loading credentials") && log.contains(role_arn),
        "{log}"
    );
    assert!(!log.contains(user_secret), "secret logged");
    assert!(list_keys(&admin, bucket, "wrong-external-id/").is_empty());
}

/// IRSA: no static credentials at all, only AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE with a
/// JWT from the OIDC issuer; STS is moto (via AWS_ENDPOINT_URL_STS).
#[test]
fn irsa_web_identity_token_file() {
    let p = Peers::get();
    let issuer = p.var("OIDC_ISSUER");
    let token = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-d",
            "grant_type=client_credentials&client_id=fluent-bit&scope=openid",
            &format!("{issuer}/token"),
        ])
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&token.stdout).unwrap();
    let jwt = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(jwt.split('.').count(), 3, "a signed JWT");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &jwt).unwrap();
    let moto = p.var("MOTO_ENDPOINT").to_string();
    let bucket = bucket_name("irsa");
    create_bucket(&p.s3(&moto, "test", "test"), &bucket);
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    cri_lines(&dir.path().join("containers").join(POD_LOG), "i", 0, 50);
    let cfg = union_config(dir.path(), &moto, &bucket, "");
    let (tf, sts) = (token_file.clone(), moto.clone());
    let agent = Agent::start_custom(dir.path(), &cfg, move |c| {
        isolated_aws_env(c, None);
        c.env(
            "AWS_ROLE_ARN",
            "arn:aws:iam::123456789012:role/fluentbit-system",
        )
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &tf)
        .env("AWS_ROLE_SESSION_NAME", "logferry-test")
        .env("AWS_ENDPOINT_URL_STS", &sts);
    });
    let client = p.s3(&moto, "test", "test");
    wait_until(T, "object written with web-identity credentials", || {
        get_object(&client, &bucket, KEY).is_some_and(|b| object_logs(&b).len() >= 50)
    });
    assert!(
        !agent.log_text().contains("upload failed"),
        "{}",
        agent.log_text()
    );
}

/// A full spool (`store_dir_limit_size`) pauses the input instead of discarding: while the
/// server is down the tail input stops reading (paused, bytes left unread); when the server is
/// back every line is uploaded once.
#[test]
fn full_spool_pauses_the_input_and_loses_nothing() {
    let p = Peers::get();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "f", 0, 40_000);
    let api = free_port();
    let cfg = union_config(
        dir.path(),
        &endpoint,
        "full",
        "    store_dir_limit_size 200k\n    upload_timeout 1s\n",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[SERVICE]\n", &format!("[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n    scheduler.base 1\n    scheduler.cap 1\n"))
        .replace("Mem_Buf_Limit 5MB", "Mem_Buf_Limit 1MB");
    std::fs::write(&cfg, text).unwrap();
    let agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    let prom = || {
        http_get(api, "/api/v1/metrics/prometheus")
            .map(|r| r.1)
            .unwrap_or_default()
    };
    wait_until(T, "input paused by the full spool", || {
        prom().contains("fluentbit_input_ingestion_paused{name=\"tail.0\"} 1")
    });
    std::thread::sleep(Duration::from_secs(2));
    let metrics = prom();
    let lag: i64 = metrics
        .lines()
        .find(|l| l.starts_with("logferry_input_lag_bytes{name=\"tail.0\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        lag > 1_000_000,
        "most of the file stays unread while the spool is full (lag {lag})"
    );
    assert!(
        agent.log_text().contains("store_dir_limit_size reached"),
        "{}",
        agent.log_text()
    );
    let data = dir.path().join("s3data");
    std::fs::create_dir(&data).unwrap();
    let mut server = start_s3s(&p, port, &data);
    let client = p.s3(&endpoint, p.var("S3S_ACCESS_KEY"), p.var("S3S_SECRET_KEY"));
    wait_until(T, "server up", || {
        common::peers::block_on(async { client.list_buckets().send().await.is_ok() })
    });
    create_bucket(&client, "full");
    wait_until(T, "everything uploaded", || {
        object_size(&client, "full", KEY) > 5_000_000
            && get_object(&client, "full", KEY).is_some_and(|b| object_logs(&b).len() >= 40_000)
    });
    assert_eq!(
        assert_all_present(
            &object_logs(&get_object(&client, "full", KEY).unwrap()),
            "f",
            40_000
        ),
        0
    );
    let _ = server.kill();
    let _ = server.wait();
}

/// The JSON both the container endpoint (ECS, Pod Identity) and IMDS serve for a role.
fn credentials_json(key: &str, secret: &str, token: &str) -> String {
    let expires = (chrono::Utc::now() + chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%SZ");
    serde_json::json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": expires.to_string(),
    })
    .to_string()
}

/// Runs Union's config against moto-auth with only `env` as the credential source and waits
/// for the object; returns the agent so a test can read its log.
fn ship_with_credential_env(
    bucket: &str,
    env: impl Fn(&mut std::process::Command) + Send + 'static,
) -> (tempfile::TempDir, Agent) {
    let p = Peers::get();
    let endpoint = p.var("MOTO_AUTH_ENDPOINT").to_string();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    cri_lines(&dir.path().join("containers").join(POD_LOG), "c", 0, 40);
    let cfg = union_config(dir.path(), &endpoint, bucket, "");
    let agent = Agent::start_custom(dir.path(), &cfg, move |c| {
        isolated_aws_env(c, None);
        env(c);
    });
    (dir, agent)
}

fn wait_for_object_on_moto_auth(bucket: &str, lines: usize) {
    let p = Peers::get();
    let admin = p.s3(
        p.var("MOTO_AUTH_ENDPOINT"),
        p.var("MOTO_AUTH_ACCESS_KEY"),
        p.var("MOTO_AUTH_SECRET_KEY"),
    );
    wait_until(T, "object written with the endpoint's credentials", || {
        get_object(&admin, bucket, KEY).is_some_and(|b| object_logs(&b).len() >= lines)
    });
}

/// ECS task role and EKS Pod Identity: `AWS_CONTAINER_CREDENTIALS_FULL_URI`, with the Pod
/// Identity agent's `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` sent as `Authorization`.
#[test]
fn pod_identity_container_credentials() {
    let p = Peers::get();
    let (key, secret, token, bucket) = moto_auth_role_credentials(&p, "podid");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, "pod-identity-jwt").unwrap();
    let body = credentials_json(&key, &secret, &token);
    let server = CredentialEndpoint::start(move |r: &EndpointRequest| {
        match r.headers.get("authorization").map(String::as_str) {
            Some("pod-identity-jwt") => Reply::new(200, body.clone()),
            _ => Reply::new(401, r#"{"message":"missing or wrong token"}"#),
        }
    });
    let url = format!("{}/v1/credentials", server.url);
    let (_dir, agent) = ship_with_credential_env(&bucket, move |c| {
        c.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url)
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    });
    wait_for_object_on_moto_auth(&bucket, 40);
    assert!(server.requests().iter().all(|r| r == "GET /v1/credentials"));
    assert!(!agent.log_text().contains(&secret), "secret logged");
}

/// A container endpoint that refuses the token: the error names the credential source, the
/// data stays spooled, and nothing secret is logged.
#[test]
fn refused_container_credentials_are_reported_and_data_kept() {
    let server = CredentialEndpoint::start(|_: &EndpointRequest| {
        Reply::new(401, r#"{"message":"token expired"}"#)
    });
    let url = format!("{}/v1/credentials", server.url);
    let (_dir, agent) = ship_with_credential_env("never-written", move |c| {
        c.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url);
    });
    wait_until(T, "credential error reported", || {
        agent.log_text().contains("upload failed")
    });
    let log = agent.log_text();
    assert!(
        log.to_ascii_lowercase().contains("credential") && log.contains("data kept in the spool"),
        "error names the credential problem and keeps the data: {log}"
    );
}

/// EC2 instance profile through IMDSv2: a session token is fetched with PUT and sent on every
/// metadata GET.
#[test]
fn imdsv2_instance_profile() {
    let p = Peers::get();
    let (key, secret, token, bucket) = moto_auth_role_credentials(&p, "imds");
    let body = credentials_json(&key, &secret, &token);
    let server = CredentialEndpoint::start(move |r: &EndpointRequest| {
        let session_ok = r
            .headers
            .get("x-aws-ec2-metadata-token")
            .map(String::as_str)
            == Some("imds-session");
        match (r.method.as_str(), r.path.as_str()) {
            ("PUT", "/latest/api/token")
                if r.headers
                    .contains_key("x-aws-ec2-metadata-token-ttl-seconds") =>
            {
                Reply::new(200, "imds-session")
                    .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
            }
            (_, _) if !session_ok => Reply::new(401, ""),
            ("GET", "/latest/meta-data/iam/security-credentials/") => Reply::new(200, "node-role"),
            ("GET", "/latest/meta-data/iam/security-credentials/node-role") => {
                Reply::new(200, body.clone())
            }
            _ => Reply::new(404, ""),
        }
    });
    let url = server.url.clone();
    let (_dir, _agent) = ship_with_credential_env(&bucket, move |c| {
        c.env_remove("AWS_EC2_METADATA_DISABLED")
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url);
    });
    wait_for_object_on_moto_auth(&bucket, 40);
    let requests = server.requests();
    assert_eq!(
        requests.first().map(String::as_str),
        Some("PUT /latest/api/token")
    );
}

/// Issue 2.3: a multipart upload whose id the server no longer accepts (s3s-fs answers 403
/// AccessDenied for an aborted id, as S3 answers 404 NoSuchUpload) is restarted from the spool
/// instead of being retried forever.
#[test]
fn a_refused_upload_id_restarts_the_upload_from_the_spool() {
    let p = Peers::get();
    let client = p.s3s();
    let bucket = bucket_name("refused");
    create_bucket(&client, &bucket);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "x", 0, 300_000); // ~36 MB: several parts
    let cfg = union_config(
        dir.path(),
        p.var("S3S_ENDPOINT"),
        &bucket,
        "    total_file_size 100M\n    upload_timeout 1m\n    static_file_mode overwrite\n",
    );
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[SERVICE]\n",
        "[SERVICE]\n    scheduler.base 1\n    scheduler.cap 1\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let sealed = dir.path().join(format!("spool/{bucket}/sealed"));
    let state = || {
        std::fs::read_dir(&sealed).ok()?.flatten().find_map(|e| {
            let path = e.path();
            if path.extension()? != "state" {
                return None;
            }
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            (!v["parts"].as_array()?.is_empty()).then_some(v)
        })
    };
    let mut agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    let open = dir.path().join(format!("spool/{bucket}/open"));
    wait_until(T, "whole file spooled", || spooled_lines(&open) >= 300_000);
    agent.sigterm();
    wait_until(T, "a part uploaded", || state().is_some());
    agent.kill9();
    assert_eq!(
        object_size(&client, &bucket, KEY),
        0,
        "not complete before the kill"
    );
    let s = state().unwrap();
    common::peers::block_on(async {
        client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(s["key"].as_str().unwrap())
            .upload_id(s["upload_id"].as_str().unwrap())
            .send()
            .await
            .unwrap()
    });
    let mut agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    wait_until(T, "object uploaded again", || {
        object_size(&client, &bucket, KEY) > 0
    });
    agent.sigterm();
    agent.wait_exit(T);
    let logs = object_logs(&get_object(&client, &bucket, KEY).unwrap());
    assert_eq!(assert_all_present(&logs, "x", 300_000), 0);
    assert!(
        agent.log_text().contains("no longer accepts the upload"),
        "{}",
        agent.log_text()
    );
}

/// Issue 2.5 and section 4: a permanent error (the bucket does not exist) is reported at start,
/// naming bucket, endpoint and identity, fails health, and keeps the data until it is fixed.
#[test]
fn a_missing_bucket_is_reported_at_once_fails_health_and_keeps_the_data() {
    let p = Peers::get();
    let client = p.s3s();
    let bucket = bucket_name("missing");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("containers")).unwrap();
    let log = dir.path().join("containers").join(POD_LOG);
    cri_lines(&log, "n", 0, 300);
    let api = free_port();
    let cfg = union_config(dir.path(), p.var("S3S_ENDPOINT"), &bucket, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("[SERVICE]\n", &format!("[SERVICE]\n    HTTP_Server On\n    HTTP_Listen 127.0.0.1\n    HTTP_Port {api}\n    scheduler.base 1\n    scheduler.cap 1\n"));
    std::fs::write(&cfg, text).unwrap();
    let agent = s3s_agent(&p, dir.path(), &cfg, p.var("S3S_SECRET_KEY"));
    wait_until(T, "bucket reported", || {
        let t = agent.log_text();
        t.contains("NoSuchBucket") && t.contains(&bucket) && t.contains(p.var("S3S_ENDPOINT"))
    });
    wait_until(T, "health fails", || {
        http_get(api, "/api/v1/health").is_some_and(|r| r.0 == 500)
    });
    assert!(!agent.log_text().contains(p.var("S3S_SECRET_KEY")));
    create_bucket(&client, &bucket);
    wait_until(T, "uploaded once the bucket exists", || {
        get_object(&client, &bucket, KEY).is_some_and(|b| object_logs(&b).len() >= 300)
    });
    wait_until(T, "health recovers", || {
        http_get(api, "/api/v1/health").is_some_and(|r| r.0 == 200)
    });
    assert_eq!(
        assert_all_present(
            &object_logs(&get_object(&client, &bucket, KEY).unwrap()),
            "n",
            300
        ),
        0
    );
}
