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
