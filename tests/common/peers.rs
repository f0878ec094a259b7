//! Access to the real peers started by `tests/peers/peers.sh start` (s3s-fs, moto,
//! oauth2-mock-server): their endpoints, and an S3 client for setting up and checking.
#![allow(dead_code)]

use std::collections::HashMap;

pub struct Peers(HashMap<String, String>);

impl Peers {
    /// Reads `target/peers/env`; the test command starts the peers before the tests.
    pub fn get() -> Peers {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/peers/env");
        let text = std::fs::read_to_string(path).unwrap_or_else(|_| panic!("{path} missing: run `bash tests/peers/peers.sh install && bash tests/peers/peers.sh start` (scripts/test.sh does)"));
        Peers(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
        )
    }

    pub fn var(&self, key: &str) -> &str {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("peer env lacks {key}"))
    }

    /// An S3 client for test setup (buckets, reading objects back).
    pub fn s3(&self, endpoint: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
        let creds = aws_credential_types::Credentials::new(key, secret, None, None, "test");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    pub fn s3s(&self) -> aws_sdk_s3::Client {
        self.s3(
            self.var("S3S_ENDPOINT"),
            self.var("S3S_ACCESS_KEY"),
            self.var("S3S_SECRET_KEY"),
        )
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

pub fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) {
    let result = block_on(async { client.create_bucket().bucket(bucket).send().await });
    if let Err(e) = result {
        // A create retried by the SDK after a lost response finds its own bucket.
        let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e).unwrap_or_default();
        if !matches!(code, "BucketAlreadyOwnedByYou" | "BucketAlreadyExists") {
            panic!(
                "create bucket {bucket}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            );
        }
    }
}

/// The object's bytes, or None while it does not exist.
pub fn get_object(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    block_on(async {
        let out = match client.get_object().bucket(bucket).key(key).send().await {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return None,
            Err(e) => panic!(
                "GetObject {bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        };
        Some(
            out.body
                .collect()
                .await
                .expect("object body")
                .into_bytes()
                .to_vec(),
        )
    })
}

/// The object's size, or 0 while it does not exist (cheap to poll).
pub fn object_size(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> u64 {
    block_on(async {
        client
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .ok()
            .and_then(|h| h.content_length())
            .unwrap_or(0) as u64
    })
}

pub fn list_keys(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    block_on(async {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect()
    })
}

/// Environment for the agent: only these credentials, never the developer's profile or IMDS.
pub fn isolated_aws_env(cmd: &mut std::process::Command, key: Option<(&str, &str)>) {
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials");
    if let Some((k, s)) = key {
        cmd.env("AWS_ACCESS_KEY_ID", k)
            .env("AWS_SECRET_ACCESS_KEY", s);
    }
}

/// A second s3s-fs on `port` (for outage tests), with the peers' credentials.
pub fn start_s3s(p: &Peers, port: u16, data: &std::path::Path) -> std::process::Child {
    let mut child = std::process::Command::new(p.var("S3S_BIN"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            p.var("S3S_ACCESS_KEY"),
            "--secret-key",
            p.var("S3S_SECRET_KEY"),
        ])
        .arg(data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "s3s-fs could not start on port {port} (taken by another test?)"
    );
    child
}

/// A loopback stand-in for the endpoints that hand out AWS credentials on ECS (task role), EKS
/// (Pod Identity agent) and EC2 (IMDSv2), none of which exists off those platforms. It only
/// serves keys: the keys are moto-auth's temporary credentials, and moto checks every request
/// signed with them, so an uploaded object proves the chain read this endpoint.
pub struct CredentialEndpoint {
    pub url: String,
    /// `METHOD path` of every request, in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// One parsed request: method, path and lower-cased headers.
pub struct EndpointRequest {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// What the endpoint answers: status, extra headers, body.
pub struct Reply(pub u16, pub Vec<(&'static str, &'static str)>, pub String);

impl Reply {
    pub fn new(status: u16, body: impl Into<String>) -> Reply {
        Reply(status, Vec::new(), body.into())
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Reply {
        self.1.push((name, value));
        self
    }
}

impl CredentialEndpoint {
    /// Serves `respond(request)` on 127.0.0.1 until the test ends.
    pub fn start(
        respond: impl Fn(&EndpointRequest) -> Reply + Send + Sync + 'static,
    ) -> CredentialEndpoint {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = std::io::BufReader::new(&stream);
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut parts = first.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let mut headers = HashMap::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    if let Some((k, v)) = line.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                    line.clear();
                }
                let request = EndpointRequest {
                    method,
                    path,
                    headers,
                };
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", request.method, request.path));
                let Reply(status, extra, body) = respond(&request);
                let extra: String = extra.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
                let _ = write!(
                    &stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        CredentialEndpoint { url, requests }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Temporary credentials from moto-auth's STS for a fresh role that may use S3 (and a bucket
/// for it): `(access_key, secret, session_token, bucket)`.
pub fn moto_auth_role_credentials(p: &Peers, name: &str) -> (String, String, String, String) {
    let f = run_python(
        p,
        r#"
import sys, json, random, boto3
ep, ak, sk, name = sys.argv[1:5]
kw = dict(endpoint_url=ep, region_name="us-east-1", aws_access_key_id=ak, aws_secret_access_key=sk)
n = name + str(random.randint(0, 10**9))
iam = boto3.client("iam", **kw)
trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
role = iam.create_role(RoleName=n, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
iam.put_role_policy(RoleName=n, PolicyName="s3", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
boto3.client("s3", **kw).create_bucket(Bucket=n)
c = boto3.client("sts", **kw).assume_role(RoleArn=role, RoleSessionName=n)["Credentials"]
print(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], n)
"#,
        &[
            p.var("MOTO_AUTH_ENDPOINT"),
            p.var("MOTO_AUTH_ACCESS_KEY"),
            p.var("MOTO_AUTH_SECRET_KEY"),
            name,
        ],
    );
    let [key, secret, token, bucket] = &f[..] else {
        panic!("setup printed {f:?}");
    };
    (key.clone(), secret.clone(), token.clone(), bucket.clone())
}

/// Runs a Python script with the peers' venv (boto3) and returns the words it printed.
pub fn run_python(p: &Peers, script: &str, args: &[&str]) -> Vec<String> {
    let out = std::process::Command::new(p.var("PEERS_PYTHON"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
