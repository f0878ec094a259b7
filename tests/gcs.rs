//! The `gcs` output against gcp-storage-emulator (JSON API), through a checking proxy that
//! records each request's `Authorization` (the emulator checks none), with the identities a
//! pod uses: the GKE metadata server (a local fixture via `GCE_METADATA_HOST`), an
//! `external_account` Workload Identity Federation file (token file → STS exchange at a local
//! fixture), a service-account key file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::gcs::{create_bucket, download, list, metadata_server, object_meta, Proxy};
use common::peers::{CredentialEndpoint, Peers, Reply};
use common::*;

const T: Duration = Duration::from_secs(60);
const GKE_TOKEN: &str = "ya29.gke-workload-identity-test-token";

/// tail `<dir>/app.log` (tag `app.log`) → gcs at `endpoint`.
fn config(dir: &Path, endpoint: &str, bucket: &str, extra: &str) -> PathBuf {
    write_config(
        dir,
        "gcs.conf",
        &format!(
            "[SERVICE]\n    Grace 10\n[INPUT]\n    Name tail\n    Path {d}/app.log\n    Tag app.log\n    Read_From_Head On\n    Refresh_Interval 1\n    DB {d}/tail.db\n[OUTPUT]\n    Name gcs\n    Match *\n    bucket {bucket}\n    endpoint {endpoint}\n    store_dir {d}/spool\n    upload_timeout 1s\n    content_type application/x-ndjson\n{extra}",
            d = dir.display()
        ),
    )
}

/// Runs the agent with only the identity the test gives (no ambient Google credentials).
fn agent(dir: &Path, cfg: &Path, env: &[(&str, String)]) -> Agent {
    let env = env.to_vec();
    let home = dir.to_path_buf();
    Agent::start_custom(dir, cfg, move |c| {
        c.env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("GOOGLE_SERVICE_CREDENTIALS")
            .env_remove("GCE_METADATA_HOST")
            .env("HOME", &home)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            c.env(k, v);
        }
    })
}

fn gke_env(metadata: &CredentialEndpoint) -> Vec<(&'static str, String)> {
    vec![(
        "GCE_METADATA_HOST",
        metadata.url.trim_start_matches("http://").to_string(),
    )]
}

/// All objects under `prefix`, as `log` values, in name order.
fn logs(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let mut names = list(endpoint, bucket, prefix);
    names.sort();
    names
        .iter()
        .flat_map(|(n, _)| object_logs(&download(endpoint, bucket, n).unwrap_or_default()))
        .collect()
}

#[test]
fn media_upload_with_the_gke_metadata_server_token() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "media");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    append_numbered(&dir.path().join("app.log"), "m", 0, 300);
    let cfg = config(dir.path(), &proxy.url, &bucket, "");
    let a = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "300 lines uploaded", || {
        logs(emulator, &bucket, "fluent-bit-logs/").len() >= 300
    });
    let objects = list(emulator, &bucket, "");
    // Fluent Bit's gcs key: fluent-bit-logs/$TAG/%Y/%m/%d/%H/%M/%S of the upload time (the
    // sample records' times are "now" too), plus -object<8 hex>.
    let re = fancy_regex::Regex::new(
        r"^fluent-bit-logs/app\.log/\d{4}/\d{2}/\d{2}/\d{2}/\d{2}/\d{2}-object[0-9a-f]{8}$",
    )
    .unwrap();
    for (name, _) in &objects {
        assert!(re.is_match(name).unwrap(), "key {name}");
    }
    let body = download(emulator, &bucket, &objects[0].0).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&body).lines().next().unwrap()).unwrap();
    // Fluent Bit's gcs body: the record only, no date key.
    assert_eq!(
        first.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["log"]
    );
    let values = logs(emulator, &bucket, "fluent-bit-logs/");
    assert_eq!(assert_all_present(&values, "m", 300), 0);
    let seen = proxy.seen();
    let uploads: Vec<_> = seen
        .iter()
        .filter(|s| s.line.starts_with("POST /upload/storage/v1/b/"))
        .collect();
    assert!(!uploads.is_empty(), "{seen:?}");
    assert!(uploads
        .iter()
        .all(|s| s.line.contains("uploadType=media") && s.line.contains("ifGenerationMatch=0")));
    assert!(
        seen.iter()
            .all(|s| s.authorization == format!("Bearer {GKE_TOKEN}")),
        "every request carries the metadata server's token: {seen:?}"
    );
    assert!(metadata
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token")));
    wait_until(T, "upload confirmed in the log", || {
        a.log_text().contains("first upload confirmed")
    });
    assert!(!a.log_text().contains(GKE_TOKEN), "token in the log");
}

#[test]
fn metadata_server_refusal_keeps_the_data_until_it_answers() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "flavor");
    let proxy = Proxy::start(emulator);
    let refusing = CredentialEndpoint::start(|_| Reply::new(403, "no"));
    let dir = tempfile::tempdir().unwrap();
    append_numbered(&dir.path().join("app.log"), "f", 0, 50);
    let cfg = config(dir.path(), &proxy.url, &bucket, "");
    let mut a = agent(dir.path(), &cfg, &gke_env(&refusing));
    wait_until(T, "token refusal reported", || {
        a.log_text().contains("cannot get a token")
    });
    assert!(list(emulator, &bucket, "").is_empty());
    assert!(proxy.seen().is_empty(), "nothing sent without a token");
    a.sigterm();
    a.wait_exit(T);
    // The next start has a metadata server that answers: the spooled lines go out.
    let metadata = metadata_server(GKE_TOKEN);
    let _b = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "spooled lines uploaded", || {
        logs(emulator, &bucket, "").len() >= 50
    });
    assert_eq!(assert_all_present(&logs(emulator, &bucket, ""), "f", 50), 0);
}

#[test]
fn large_chunk_goes_by_resumable_upload() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "resumable");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    append_numbered(&dir.path().join("app.log"), "r", 0, 20_000); // ~1.7 MB of records
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        "    upload_chunk_size 262144\n    upload_timeout 3s\n    gcs_key_format logs/$TAG/$UUID\n",
    );
    let _agent = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "20000 lines uploaded", || {
        logs(emulator, &bucket, "logs/").len() >= 20_000
    });
    assert_eq!(
        assert_all_present(&logs(emulator, &bucket, "logs/"), "r", 20_000),
        0
    );
    let seen = proxy.seen();
    assert!(seen
        .iter()
        .any(|s| s.line.contains("uploadType=resumable") && s.line.starts_with("POST")));
    let chunks = seen
        .iter()
        .filter(|s| s.line.starts_with("PUT") && s.content_range.starts_with("bytes 0-262143/"))
        .count();
    assert!(chunks >= 1, "first 256 KiB chunk sent: {seen:?}");
    assert!(seen
        .iter()
        .all(|s| s.authorization == format!("Bearer {GKE_TOKEN}")));
}

#[test]
fn kill9_mid_resumable_upload_resumes_the_session() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "resume");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    append_numbered(&dir.path().join("app.log"), "k", 0, 20_000);
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        "    upload_chunk_size 262144\n    upload_timeout 3s\n    gcs_key_format logs/$TAG/$UUID\n",
    );
    // Two chunks go through, the third is held unanswered; then the agent dies.
    proxy.hold_after_chunks.store(2, Ordering::SeqCst);
    let mut a = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "third chunk sent", || {
        proxy
            .seen()
            .iter()
            .filter(|s| s.content_range.starts_with("bytes ") && !s.content_range.contains('*'))
            .count()
            >= 3
    });
    a.kill9();
    assert!(list(emulator, &bucket, "logs/").is_empty());
    proxy.hold_after_chunks.store(usize::MAX, Ordering::SeqCst);
    let b = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "upload finished after restart", || {
        !list(emulator, &bucket, "logs/").is_empty()
    });
    assert!(b.log_text().contains("resuming a resumable upload"));
    assert!(
        !b.log_text().contains("upload_id="),
        "session URIs are capabilities"
    );
    let values = logs(emulator, &bucket, "logs/");
    assert_eq!(values.len(), 20_000, "each line once");
    assert_eq!(assert_all_present(&values, "k", 20_000), 0);
    let seen = proxy.seen();
    let sessions = seen
        .iter()
        .filter(|s| s.line.starts_with("POST") && s.line.contains("uploadType=resumable"))
        .count();
    assert_eq!(
        sessions, 1,
        "the session was resumed, not started again: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.content_range.starts_with("bytes */")),
        "the restart asked the session what it holds"
    );
    assert!(
        seen.iter()
            .filter(|s| s.content_range.starts_with("bytes 0-"))
            .count()
            == 1,
        "the first chunk was not sent again"
    );
}

#[test]
fn static_key_appends_by_compose_across_uploads_and_a_restart() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let key = "persisted-logs/app.log";
    for compression in ["none", "gzip"] {
        let bucket = create_bucket(emulator, &format!("compose-{compression}"));
        let _ = std::fs::remove_dir_all(dir.path().join("spool"));
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(dir.path().join("tail.db"));
        let cfg = config(
            dir.path(),
            &proxy.url,
            &bucket,
            &format!("    gcs_key_format /persisted-logs/$TAG\n    static_file_path true\n    compression {compression}\n"),
        );
        append_numbered(&log, "c", 0, 100);
        let mut a = agent(dir.path(), &cfg, &gke_env(&metadata));
        let read = || {
            download(emulator, &bucket, key)
                .map(|b| object_logs(&b))
                .unwrap_or_default()
        };
        wait_until(T, "first upload", || read().len() >= 100);
        append_numbered(&log, "c", 100, 100);
        wait_until(T, "second upload appended", || read().len() >= 200);
        a.sigterm();
        a.wait_exit(T);
        append_numbered(&log, "c", 200, 100);
        let _b = agent(dir.path(), &cfg, &gke_env(&metadata));
        wait_until(T, "third upload after restart", || read().len() >= 300);
        std::thread::sleep(Duration::from_millis(1500));
        let values = read();
        assert_eq!(values.len(), 300, "{compression}: each line once");
        assert_eq!(assert_all_present(&values, "c", 300), 0);
        let expected: Vec<String> = (0..300)
            .map(|n| format!("c-{n:08} some padding text to make the line a realistic length"))
            .collect();
        assert_eq!(values, expected, "{compression}: in order");
        wait_until(T, "components deleted", || {
            list(emulator, &bucket, "").len() == 1
        });
        let names: Vec<String> = list(emulator, &bucket, "")
            .into_iter()
            .map(|o| o.0)
            .collect();
        assert_eq!(names, vec![key.to_string()], "components deleted");
        let composes = proxy
            .seen()
            .iter()
            .filter(|s| s.line.contains(&format!("/b/{bucket}/o/")) && s.line.contains("/compose"))
            .count();
        assert!(composes >= 3, "{compression}: {composes} composes");
        let meta = object_meta(emulator, &bucket, key).unwrap();
        if compression == "gzip" {
            assert_eq!(meta["contentEncoding"], "gzip");
        }
    }
}

#[test]
fn emulator_outage_mid_run_loses_nothing() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "outage");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "o", 0, 100);
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        "    gcs_key_format logs/$TAG/$INDEX\n    Retry_Limit no_limits\n",
    );
    let a = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "first lines", || {
        logs(emulator, &bucket, "logs/").len() >= 100
    });
    proxy.down.store(true, Ordering::SeqCst);
    append_numbered(&log, "o", 100, 200);
    wait_until(T, "upload failures during the outage", || {
        a.log_text()
            .contains("upload failed, data kept in the spool")
    });
    assert_eq!(logs(emulator, &bucket, "logs/").len(), 100);
    proxy.down.store(false, Ordering::SeqCst);
    wait_until(T, "every line after the outage", || {
        logs(emulator, &bucket, "logs/").len() >= 300
    });
    let values = logs(emulator, &bucket, "logs/");
    assert_eq!(values.len(), 300);
    assert_eq!(assert_all_present(&values, "o", 300), 0);
}

#[test]
fn external_account_file_exchanges_the_token_file_at_its_sts() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "wif");
    let proxy = Proxy::start(emulator);
    let sts = CredentialEndpoint::start(|r| {
        if r.method == "POST" && r.path == "/v1/token" {
            Reply::new(
                200,
                r#"{"access_token":"ya29.federated-test","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}"#,
            )
        } else {
            Reply::new(404, "{}")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.e30.c2ln").unwrap();
    let creds = dir.path().join("wif.json");
    std::fs::write(
        &creds,
        serde_json::json!({
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/pool/providers/k8s",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": format!("{}/v1/token", sts.url),
            "credential_source": {"file": token_file},
        })
        .to_string(),
    )
    .unwrap();
    append_numbered(&dir.path().join("app.log"), "w", 0, 100);
    let cfg = config(dir.path(), &proxy.url, &bucket, "");
    let _agent = agent(
        dir.path(),
        &cfg,
        &[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            creds.display().to_string(),
        )],
    );
    wait_until(T, "uploaded", || logs(emulator, &bucket, "").len() >= 100);
    assert!(sts.requests().iter().any(|r| r == "POST /v1/token"));
    assert!(proxy
        .seen()
        .iter()
        .all(|s| s.authorization == "Bearer ya29.federated-test"));
    assert_eq!(
        assert_all_present(&logs(emulator, &bucket, ""), "w", 100),
        0
    );
}

#[test]
fn service_account_key_file_signs_its_token() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "sakey");
    let proxy = Proxy::start(emulator);
    let dir = tempfile::tempdir().unwrap();
    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let key_file = dir.path().join("sa.json");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "test-key-id-1",
            "private_key": rsa.serialize_pem(),
            "client_email": "logferry@test-project.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{}/token", p.var("OIDC_ISSUER")),
        })
        .to_string(),
    )
    .unwrap();
    append_numbered(&dir.path().join("app.log"), "s", 0, 100);
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        &format!("    google_service_credentials {}\n", key_file.display()),
    );
    let _agent = agent(dir.path(), &cfg, &[]);
    wait_until(T, "uploaded", || logs(emulator, &bucket, "").len() >= 100);
    // google-cloud-auth signs a JWT with the key (a self-signed token, which Cloud Storage
    // accepts) rather than calling token_uri: the bearer token is that JWT.
    use base64::Engine;
    let seen = proxy.seen();
    let auth = seen[0].authorization.trim_start_matches("Bearer ");
    let part = |i: usize| -> serde_json::Value {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(auth.split('.').nth(i).unwrap())
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    assert_eq!(part(0)["kid"], "test-key-id-1");
    assert_eq!(
        part(1)["iss"],
        "logferry@test-project.iam.gserviceaccount.com"
    );
    assert!(part(1)["scope"]
        .as_str()
        .unwrap()
        .contains("devstorage.read_write"));
    assert_eq!(
        assert_all_present(&logs(emulator, &bucket, ""), "s", 100),
        0
    );
}

#[test]
fn bad_config_is_refused_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let key_only = dir.path().join("key.pem");
    std::fs::write(
        &key_only,
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let not_creds = dir.path().join("user.json");
    std::fs::write(&not_creds, r#"{"type":"authorized_user"}"#).unwrap();
    let cases = [
        ("", "bucket"),
        ("    bucket b\n    compression lz4\n", "compression 'lz4'"),
        (
            "    bucket b\n    canned_acl everyone\n",
            "unsupported canned ACL",
        ),
        (
            "    bucket b\n    upload_chunk_size 256K\n",
            "multiple of 262,144",
        ),
        (
            "    bucket b\n    endpoint storage.example\n",
            "http:// or https://",
        ),
        (
            "    bucket b\n    static_file_mode rewrite\n",
            "append or overwrite",
        ),
        (
            "    bucket b\n    google_service_credentials /nonexistent/sa.json\n",
            "cannot read credentials file /nonexistent/sa.json",
        ),
        (
            &format!(
                "    bucket b\n    google_service_credentials {}\n",
                not_creds.display()
            ),
            "type 'authorized_user' is not supported",
        ),
        (
            "    bucket b\n    tls.verify off\n",
            "verification off is not supported",
        ),
        ("    bucket b\n    auth_type none\n", "set endpoint too"),
        (
            &format!("    bucket b\n    tls.ca_file {}\n", key_only.display()),
            "no PEM certificate",
        ),
    ];
    for (extra, expected) in cases {
        let cfg = write_config(
            dir.path(),
            "bad.conf",
            &format!("[INPUT]\n    Name dummy\n[OUTPUT]\n    Name gcs\n    Match *\n{extra}"),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
            .args(["--dry-run", "-c"])
            .arg(&cfg)
            .env_remove("GOOGLE_SERVICE_CREDENTIALS")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} accepted");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(err.contains("bad.conf"), "names the file: {err}");
    }
}

/// Union's DaemonSet ConfigMap (shared notes union-firelens §1.2) with its output swapped for
/// `gcs` on GKE Workload Identity: every line lands once in `persisted-logs/<tag>`.
#[test]
fn union_configmap_with_gcs_output_writes_every_line_once() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "union");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let containers = dir.path().join("containers");
    std::fs::create_dir(&containers).unwrap();
    let pod_log = containers.join(
        "web-7d9f_prod_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log",
    );
    let cri = |start: usize, count: usize| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&pod_log)
            .unwrap();
        for n in start..start + count {
            writeln!(f, "2026-11-22T08:00:00.{n:09}Z stdout F u-{n:08} some padding text to make the line a realistic length").unwrap();
        }
    };
    cri(0, 1000);
    let cfg = write_config(
        dir.path(),
        "fluent-bit.conf",
        &format!(
            "[SERVICE]\n    Grace 20\n[INPUT]\n    Name                tail\n    Tag                 namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>\n    Tag_Regex           (?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-\n    Path                {d}/containers/*.log\n    DB                  {d}/flb_kube.db\n    multiline.parser    docker, cri\n    Mem_Buf_Limit       5MB\n    Skip_Long_Lines     On\n    Refresh_Interval    1\n    Read_from_Head      On\n[OUTPUT]\n    Name gcs\n    Match *\n    upload_timeout 2s\n    gcs_key_format persisted-logs/$TAG\n    static_file_path true\n    bucket {bucket}\n    endpoint {endpoint}\n    content_type application/x-ndjson\n    store_dir {d}/spool\n",
            d = dir.path().display(),
            endpoint = proxy.url,
        ),
    );
    let key = "persisted-logs/namespace-prod.pod-web-7d9f.cont-nginx";
    let read = || {
        download(emulator, &bucket, key)
            .map(|b| object_logs(&b))
            .unwrap_or_default()
    };
    let _agent = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "first window", || read().len() >= 1000);
    cri(1000, 500);
    wait_until(T, "second window appended", || read().len() >= 1500);
    std::thread::sleep(Duration::from_millis(2500));
    let values = read();
    assert_eq!(values.len(), 1500);
    assert_eq!(assert_all_present(&values, "u", 1500), 0);
    wait_until(T, "components deleted", || {
        list(emulator, &bucket, "").len() == 1
    });
    let names: Vec<String> = list(emulator, &bucket, "")
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(names, vec![key.to_string()]);
    assert!(proxy
        .seen()
        .iter()
        .all(|s| s.authorization == format!("Bearer {GKE_TOKEN}")));
}

#[test]
fn auth_type_none_sends_no_credentials_to_an_emulator() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "anonymous");
    let proxy = Proxy::start(emulator);
    let dir = tempfile::tempdir().unwrap();
    append_numbered(&dir.path().join("app.log"), "n", 0, 50);
    let cfg = config(dir.path(), &proxy.url, &bucket, "    auth_type none\n");
    let _agent = agent(dir.path(), &cfg, &[]);
    wait_until(T, "uploaded", || logs(emulator, &bucket, "").len() >= 50);
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.authorization.is_empty()), "{seen:?}");
}

/// kill -9 between the steps of a compose append: after the component upload (compose not
/// sent), and after the compose (component not yet deleted). The restart finishes each append
/// once: nothing lost, nothing twice, no component left.
#[test]
fn kill9_between_compose_steps_neither_loses_nor_repeats() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "compose-crash");
    let proxy = Proxy::start(emulator);
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let key = "persisted-logs/app.log";
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        "    gcs_key_format persisted-logs/$TAG\n    static_file_path true\n",
    );
    let read = || {
        download(emulator, &bucket, key)
            .map(|b| object_logs(&b))
            .unwrap_or_default()
    };
    append_numbered(&log, "x", 0, 100);
    let mut a = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "first upload", || read().len() >= 100);
    let mut total = 100;
    for step in ["/compose", "DELETE "] {
        *proxy.hold_containing.lock().unwrap() = step.to_string();
        append_numbered(&log, "x", total, 100);
        total += 100;
        wait_until(T, "the held step sent", || {
            proxy.seen().iter().any(|s| s.line.contains(step))
        });
        a.kill9();
        proxy.hold_containing.lock().unwrap().clear();
        a = agent(dir.path(), &cfg, &gke_env(&metadata));
        wait_until(T, "the append finished after the restart", || {
            read().len() >= total && list(emulator, &bucket, "").len() == 1
        });
        proxy.seen.lock().unwrap().clear();
    }
    std::thread::sleep(Duration::from_millis(1500));
    let values = read();
    let expected: Vec<String> = (0..total)
        .map(|n| format!("x-{n:08} some padding text to make the line a realistic length"))
        .collect();
    assert_eq!(values, expected, "each line once, in order");
    wait_until(T, "components deleted", || {
        list(emulator, &bucket, "").len() == 1
    });
    let names: Vec<String> = list(emulator, &bucket, "")
        .into_iter()
        .map(|o| o.0)
        .collect();
    assert_eq!(names, vec![key.to_string()], "components deleted");
}

/// `examples/gcs-emulator/logferry.conf` as its README runs it: both sample logs land in
/// `persisted-logs/`, gzip-compressed, every line once.
#[test]
fn the_emulator_quickstart_ships_the_sample_logs() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "quickstart");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = repo.join("examples/gcs-emulator/logferry.conf");
    let env = vec![
        ("GCS_ENDPOINT", emulator.to_string()),
        ("BUCKET", bucket.clone()),
        ("LOG_DIR", repo.join("examples/logs").display().to_string()),
        ("STATE_DIR", dir.path().display().to_string()),
    ];
    let _agent = agent(dir.path(), &cfg, &env);
    // 11 lines: one docker split line and one CRI partial (`P`) line are joined to the next
    // by `multiline.parser`.
    let expected = 9;
    // `upload_timeout 10s`: the objects appear about ten seconds after the start.
    wait_until(T, "every sample line uploaded", || {
        logs(emulator, &bucket, "persisted-logs/").len() >= expected
    });
    let want = vec![
        "persisted-logs/namespace-billing.pod-api-5f6d7c8b9-qwert.cont-app".to_string(),
        "persisted-logs/namespace-shop.pod-web-7d9f8b6c5d-x2x9k.cont-nginx".to_string(),
    ];
    let names = || -> Vec<String> {
        list(emulator, &bucket, "")
            .into_iter()
            .map(|o| o.0)
            .collect()
    };
    // A compose append deletes its temporary part object right after the compose.
    wait_until(T, "one object per container, parts deleted", || {
        names() == want
    });
    let names = names();
    let body = download(emulator, &bucket, &names[0]).unwrap();
    assert!(body.starts_with(&[0x1f, 0x8b]), "gzip");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(logs(emulator, &bucket, "persisted-logs/").len(), expected);
}

/// `deploy/gcp/fluentbit-configmap.yaml`'s `fluent-bit.conf` passes `--dry-run` (its parsers
/// files placed where the DaemonSet mounts them, here under a temp dir).
#[test]
fn the_gke_configmap_passes_dry_run() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo.join("deploy/gcp/fluentbit-configmap.yaml")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("custom_parsers.conf");
    std::fs::write(
        &custom,
        yaml["data"]["custom_parsers.conf"].as_str().unwrap(),
    )
    .unwrap();
    let conf = yaml["data"]["fluent-bit.conf"]
        .as_str()
        .unwrap()
        .replace(
            "/fluent-bit/etc/parsers.conf",
            &repo.join("conf/parsers.conf").display().to_string(),
        )
        .replace(
            "/fluent-bit/etc/conf/custom_parsers.conf",
            &custom.display().to_string(),
        );
    assert!(conf.contains("Name gcs"));
    let cfg = write_config(dir.path(), "fluent-bit.conf", &conf);
    let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .args(["--dry-run", "-c"])
        .arg(&cfg)
        .env_remove("GOOGLE_SERVICE_CREDENTIALS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// HTTPS to the endpoint is verified: a private CA is trusted only through `tls.ca_file`.
#[test]
fn tls_ca_file_trusts_a_private_ca_and_nothing_else_does() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "tls");
    let (proxy, ca_pem) = Proxy::start_tls(emulator);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    append_numbered(&dir.path().join("app.log"), "t", 0, 50);
    let cfg = config(dir.path(), &proxy.url, &bucket, "    auth_type none\n");
    let a = agent(dir.path(), &cfg, &[]);
    wait_until(T, "certificate refused", || {
        a.log_text()
            .contains("upload failed, data kept in the spool")
    });
    assert!(list(emulator, &bucket, "").is_empty());
    drop(a);
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        &format!("    auth_type none\n    tls.ca_file {}\n", ca.display()),
    );
    let _b = agent(dir.path(), &cfg, &[]);
    wait_until(T, "uploaded over HTTPS", || {
        logs(emulator, &bucket, "").len() >= 50
    });
    assert_eq!(assert_all_present(&logs(emulator, &bucket, ""), "t", 50), 0);
}

/// A refusal (403 with the JSON API's error body) is reported at once, naming the bucket, the
/// object, the status, the reason and the identity; the data stays spooled and goes out once
/// the refusal ends.
#[test]
fn a_refusal_names_bucket_object_status_reason_and_identity() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "refused");
    let proxy = Proxy::start(emulator);
    let body = r#"{"error":{"code":403,"message":"logferry@p.iam.gserviceaccount.com does not have storage.objects.create access.","errors":[{"reason":"forbidden"}]}}"#;
    *proxy.answer.lock().unwrap() = Some(format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let metadata = metadata_server(GKE_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    append_numbered(&dir.path().join("app.log"), "d", 0, 50);
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        "    gcs_key_format logs/$TAG/$INDEX\n",
    );
    let a = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "refusal logged", || {
        a.log_text().contains("upload refused")
    });
    let log = a.log_text();
    let line = log.lines().find(|l| l.contains("upload refused")).unwrap();
    for part in [
        &format!("gs://{bucket}/logs/app.log/"),
        "HTTP 403 forbidden",
        "does not have storage.objects.create access",
        "metadata server at 127.0.0.1:",
    ] {
        assert!(line.contains(part), "{part:?} missing in: {line}");
    }
    assert!(!log.contains(GKE_TOKEN));
    *proxy.answer.lock().unwrap() = None;
    wait_until(T, "uploaded after the refusal ended", || {
        logs(emulator, &bucket, "logs/").len() >= 50
    });
    assert_eq!(
        assert_all_present(&logs(emulator, &bucket, "logs/"), "d", 50),
        0
    );
}

/// Tokens are refreshed before they expire: with a token 245 s from expiry (inside the
/// crate's 4-minute refresh margin) the metadata server is asked again, and later uploads carry
/// the new token.
#[test]
fn the_token_is_refreshed_before_it_expires() {
    let p = Peers::get();
    let emulator = p.var("GCS_ENDPOINT");
    let bucket = create_bucket(emulator, "refresh");
    let proxy = Proxy::start(emulator);
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    let metadata = CredentialEndpoint::start(move |r| {
        if r.headers.get("metadata-flavor").map(String::as_str) != Some("Google")
            || !r.path.contains("/service-accounts/default/token")
        {
            return Reply::new(403, "no");
        }
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::new(
            200,
            format!("{{\"access_token\":\"ya29.token-{n}\",\"expires_in\":245,\"token_type\":\"Bearer\"}}"),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_numbered(&log, "e", 0, 50);
    let cfg = config(
        dir.path(),
        &proxy.url,
        &bucket,
        "    gcs_key_format logs/$TAG/$INDEX\n",
    );
    let _agent = agent(dir.path(), &cfg, &gke_env(&metadata));
    wait_until(T, "first upload", || {
        logs(emulator, &bucket, "logs/").len() >= 50
    });
    wait_until(T, "a second token fetched", || {
        issued.load(Ordering::SeqCst) >= 2
    });
    proxy.seen.lock().unwrap().clear();
    append_numbered(&log, "e", 50, 50);
    wait_until(T, "second upload", || {
        logs(emulator, &bucket, "logs/").len() >= 100
    });
    let seen = proxy.seen();
    assert!(!seen.is_empty());
    // A refreshed token (2, or a later one: the crate refreshes again every few seconds while
    // the token is inside its margin), never the first.
    assert!(
        seen.iter()
            .all(|s| s.authorization.starts_with("Bearer ya29.token-")
                && s.authorization != "Bearer ya29.token-1"),
        "later requests carry a refreshed token: {seen:?}"
    );
    assert_eq!(
        assert_all_present(&logs(emulator, &bucket, "logs/"), "e", 100),
        0
    );
}
