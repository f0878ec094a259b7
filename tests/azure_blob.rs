//! The `azure_blob` output against real Azurite (tests/peers): Shared Key over HTTP, SAS,
//! bearer tokens over HTTPS from a workload-identity exchange with an Entra ID stand-in
//! (oauth2-mock-server, `tests/peers/entra_idp.mjs`), append and block blobs, the block-limit
//! rollover, container auto-create, kill -9 mid-upload, and Union's ConfigMap on Azure.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::azure::{BlobReader, EntraAzurite, ACCOUNT, CLIENT_ID, KEY, TENANT};
use common::peers::Peers;
use common::*;

const T: Duration = Duration::from_secs(90);
const TAG: &str = "namespace-ns.pod-p.cont-c";

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Azurite's host without the account path, and a reader for it.
fn azurite() -> (String, BlobReader) {
    let p = Peers::get();
    let endpoint = p.var("AZURITE_ENDPOINT").to_string();
    let host = endpoint
        .trim_end_matches(&format!("/{ACCOUNT}"))
        .to_string();
    (host, BlobReader::new(&endpoint, None))
}

/// A tail of `<dir>/c.log` tagged [`TAG`] into `azure_blob` with the given output lines.
fn config(dir: &Path, output: &str) -> PathBuf {
    write_config(
        dir,
        "agent.conf",
        &format!(
            "[SERVICE]\n    Flush 1\n    Grace 10\n[INPUT]\n    Name tail\n    Path {log}\n    Tag {TAG}\n    Read_from_Head On\n    Refresh_Interval 1\n    DB {db}\n[OUTPUT]\n    Name azure_blob\n    Match *\n    account_name {ACCOUNT}\n    store_dir {spool}\n    upload_timeout 1s\n    Retry_Limit no_limits\n{output}",
            log = dir.join("c.log").display(),
            db = dir.join("offsets.db").display(),
            spool = dir.join("spool").display(),
        ),
    )
}

fn key_auth(host: &str, container: &str) -> String {
    format!("    container_name {container}\n    endpoint {host}\n    emulator_mode on\n    shared_key {KEY}\n")
}

/// Fluent Bit's append-blob name and body: `<path>/<tag>`, JSON Lines with `@timestamp`; each
/// upload window is appended; the container is created on first use.
#[test]
fn shared_key_append_blob_on_http_with_auto_create() {
    let dir = tempfile::tempdir().unwrap();
    let (host, reader) = azurite();
    let container = unique("auto");
    assert!(!reader.container_exists(&container));
    let log = dir.path().join("c.log");
    append_numbered(&log, "a", 0, 300);
    let cfg = config(
        dir.path(),
        &format!("{}    path persisted-logs/\n", key_auth(&host, &container)),
    );
    let agent = Agent::start(dir.path(), &cfg);
    let blob = format!("persisted-logs/{TAG}");
    wait_until(T, "first window", || {
        reader.logs(&container, "persisted-logs/").len() >= 300
    });
    append_numbered(&log, "a", 300, 200);
    wait_until(T, "second window", || {
        reader.logs(&container, "persisted-logs/").len() >= 500
    });
    let blobs = reader.list(&container, "");
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    assert_eq!(blobs[0].name, blob);
    assert_eq!(blobs[0].kind, "AppendBlob");
    assert!(reader.committed_blocks(&container, &blob) >= 2);
    let body = String::from_utf8(reader.get(&container, &blob)).unwrap();
    for line in body.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ts = v["@timestamp"].as_str().expect("@timestamp on every line");
        assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    }
    let logs = reader.logs(&container, "");
    assert_eq!(assert_all_present(&logs, "a", 500), 0, "duplicates");
    assert_eq!(logs.len(), 500);
    assert!(agent.log_text().contains("created the container"));
}

/// An account SAS (sv 2019-12-12) signed with the Azurite key.
fn account_sas() -> String {
    use base64::Engine;
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let (sp, ss, srt, sv) = ("rwdlac", "b", "sco", "2019-12-12");
    let text = format!("{ACCOUNT}\n{sp}\n{ss}\n{srt}\n\n{expiry}\n\n\n{sv}\n");
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &common::azure::base64_decode(KEY),
    );
    let sig = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, text.as_bytes()).as_ref());
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    format!(
        "?sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={}&sig={}",
        enc(&expiry),
        enc(&sig)
    )
}

/// SAS with block blobs: one blob per upload named `<path>/<tag>.<64 random>.<ms>`, each a
/// committed block blob; `compress_blob` adds `.gz` and gzips the body.
#[test]
fn sas_block_blobs_with_fluent_bit_names() {
    let (host, reader) = azurite();
    for (compress, ext) in [("", ""), ("    compress_blob on\n", ".gz")] {
        let dir = tempfile::tempdir().unwrap();
        let container = unique("sas");
        let log = dir.path().join("c.log");
        append_numbered(&log, "s", 0, 200);
        let cfg = config(
            dir.path(),
            &format!("    container_name {container}\n    endpoint {host}\n    emulator_mode on\n    auth_type sas\n    sas_token {}\n    blob_type blockblob\n    path logs/%Y\n{compress}", account_sas()),
        );
        let _agent = Agent::start(dir.path(), &cfg);
        wait_until(T, "first blob", || {
            reader.logs(&container, "logs/").len() >= 200
        });
        append_numbered(&log, "s", 200, 100);
        wait_until(T, "second blob", || {
            reader.logs(&container, "logs/").len() >= 300
        });
        let blobs = reader.list(&container, "");
        assert!(blobs.len() >= 2, "{blobs:?}");
        let year = chrono::Utc::now().format("%Y").to_string();
        for b in &blobs {
            assert_eq!(b.kind, "BlockBlob");
            let rest = b
                .name
                .strip_prefix(&format!("logs/{year}/{TAG}."))
                .unwrap_or_else(|| panic!("{}", b.name));
            let rest = rest
                .strip_suffix(ext)
                .unwrap_or_else(|| panic!("{}", b.name));
            let (random, ms) = rest.split_once('.').unwrap();
            assert_eq!(random.len(), 64, "{}", b.name);
            assert!(random.chars().all(|c| c.is_ascii_alphanumeric()));
            assert!(ms.parse::<u64>().unwrap() > 1_700_000_000_000);
            if !ext.is_empty() {
                assert!(reader.get(&container, &b.name).starts_with(&[0x1f, 0x8b]));
            }
        }
        let logs = reader.logs(&container, "");
        assert_eq!(assert_all_present(&logs, "s", 300), 0);
        assert_eq!(logs.len(), 300);
    }
}

/// At the block limit (lowered to 3, with 2 KB blocks: each upload window takes 2) an append
/// blob is continued in `<name>.1`, `<name>.2`, …: no block is refused, each blob holds whole
/// upload windows, and every line is there once and in order.
#[test]
fn append_blob_rolls_over_at_the_block_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (host, reader) = azurite();
    let container = unique("roll");
    let log = dir.path().join("c.log");
    let cfg = config(
        dir.path(),
        &format!(
            "{}    append_block_limit 3\n    block_size 2K\n",
            key_auth(&host, &container)
        ),
    );
    let agent = Agent::start_tailing(dir.path(), &cfg);
    for window in 0..4 {
        append_numbered(&log, "r", window * 40, 40);
        wait_until(T, "the window uploaded", || {
            reader.logs(&container, "").len() >= (window + 1) * 40
        });
    }
    let blobs = reader.list(&container, "");
    assert!(blobs.len() >= 2, "{blobs:?}");
    for (i, b) in blobs.iter().enumerate() {
        let expected = if i == 0 {
            TAG.to_string()
        } else {
            format!("{TAG}.{i}")
        };
        assert_eq!(b.name, expected);
        assert!(reader.committed_blocks(&container, &b.name) <= 3);
        let body = reader.get(&container, &b.name);
        assert!(body.ends_with(b"\n"), "{} ends in a part of a line", b.name);
    }
    let logs = reader.logs(&container, "");
    assert_eq!(logs.len(), 160);
    assert_eq!(assert_all_present(&logs, "r", 160), 0);
    let mut sorted = logs.clone();
    sorted.sort();
    assert_eq!(logs, sorted, "order kept across blobs");
    assert!(agent.log_text().contains("continuing in the next blob"));
}

/// kill -9 while a chunk is being appended block by block, then a restart: the resumed append
/// goes on after the blocks that landed; nothing lost, nothing twice.
#[test]
fn kill9_mid_append_resumes_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (host, reader) = azurite();
    let container = unique("kill");
    reader.create_container(&container);
    let log = dir.path().join("c.log");
    append_numbered(&log, "k", 0, 20_000);
    let size = std::fs::metadata(&log).unwrap().len();
    let cfg = config(
        dir.path(),
        &format!("{}    block_size 1K\n", key_auth(&host, &container)),
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let length = || reader.list(&container, "").first().map_or(0, |b| b.len);
    wait_until(T, "the append under way", || length() > 50_000);
    agent.kill9();
    let at_kill = length();
    assert!(
        at_kill < size,
        "killed after the upload finished: make the chunk bigger"
    );
    let _agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "all lines after the restart", || {
        reader.logs(&container, "").len() >= 20_000
    });
    std::thread::sleep(Duration::from_secs(3));
    let logs = reader.logs(&container, "");
    assert_eq!(assert_all_present(&logs, "k", 20_000), 0, "duplicates");
    assert_eq!(logs.len(), 20_000);
}

/// kill -9 while a block blob's blocks are being staged (ids in the upload state), then a
/// restart: the upload resumes from the spool, stages what is missing and commits once;
/// nothing lost, nothing twice.
#[test]
fn kill9_mid_block_staging_resumes_and_commits_once() {
    let dir = tempfile::tempdir().unwrap();
    let (host, reader) = azurite();
    let container = unique("killblock");
    let log = dir.path().join("c.log");
    append_numbered(&log, "b", 0, 8_000);
    let cfg = config(
        dir.path(),
        &format!(
            "{}    blob_type blockblob\n    block_size 1K\n",
            key_auth(&host, &container)
        ),
    );
    let mut agent = Agent::start(dir.path(), &cfg);
    let sealed = dir
        .path()
        .join(format!("spool/{ACCOUNT}/{container}/sealed"));
    let staged = || -> usize {
        std::fs::read_dir(&sealed)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "state"))
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .map(|v| v["parts"].as_array().map_or(0, |a| a.len()))
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_until(T, "blocks being staged", || staged() > 50);
    agent.kill9();
    assert!(
        reader.list(&container, "").is_empty(),
        "killed after the commit: make the chunk bigger"
    );
    let _agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "all lines after the restart", || {
        reader.logs(&container, "").len() >= 8_000
    });
    std::thread::sleep(Duration::from_secs(3));
    let logs = reader.logs(&container, "");
    assert_eq!(assert_all_present(&logs, "b", 8_000), 0, "duplicates");
    assert_eq!(logs.len(), 8_000);
}

fn workload_env(
    fixture: &EntraAzurite,
    token_file: &Path,
) -> impl FnOnce(&mut std::process::Command) {
    let authority = fixture.authority.clone();
    let token_file = token_file.to_path_buf();
    move |c| {
        c.env("AZURE_AUTHORITY_HOST", authority)
            .env("AZURE_CLIENT_ID", CLIENT_ID)
            .env("AZURE_TENANT_ID", TENANT)
            .env("AZURE_FEDERATED_TOKEN_FILE", token_file);
    }
}

fn workload_output(fixture: &EntraAzurite, container: &str, extra: &str) -> String {
    format!(
        "    container_name {container}\n    endpoint {}\n    emulator_mode on\n    auth_type workload_identity\n    tls.ca_file {}\n{extra}",
        fixture.endpoint,
        fixture.ca.display()
    )
}

/// Workload identity end to end: the federated token file is exchanged at the Entra ID
/// stand-in (reached through `AZURE_AUTHORITY_HOST`), the token goes as a bearer to HTTPS
/// Azurite trusted through `tls.ca_file`. The token file is rotated mid-run and the IdP then
/// refuses the old assertion: the next refresh reads the new file and delivery goes on.
#[test]
fn workload_identity_over_https_and_a_rotated_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = EntraAzurite::start(dir.path());
    let reader = fixture.reader();
    let container = unique("wi");
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "assertion-one").unwrap();
    fixture.control(r#"{"accept":["assertion-one"],"ttl":5}"#);
    let log = dir.path().join("c.log");
    append_numbered(&log, "w", 0, 200);
    let cfg = config(dir.path(), &workload_output(&fixture, &container, ""));
    let agent = Agent::start_custom(dir.path(), &cfg, workload_env(&fixture, &token_file));
    wait_until(T, "delivered with the first token", || {
        reader.logs(&container, "").len() >= 200
    });
    std::fs::write(&token_file, "assertion-two").unwrap();
    fixture.control(r#"{"accept":["assertion-two"],"ttl":5}"#);
    std::thread::sleep(Duration::from_secs(6));
    append_numbered(&log, "w", 200, 200);
    wait_until(T, "delivered after the rotation", || {
        reader.logs(&container, "").len() >= 400
    });
    let accepted = fixture.accepted();
    assert!(
        accepted.contains(&"assertion-two".to_string()),
        "{accepted:?}"
    );
    let logs = reader.logs(&container, "");
    assert_eq!(assert_all_present(&logs, "w", 400), 0);
    assert_eq!(logs.len(), 400);
    let text = agent.log_text();
    assert!(
        text.contains(&format!("workload identity (client id {CLIENT_ID}")),
        "{text}"
    );
    for secret in ["assertion-one", "assertion-two", "eyJ"] {
        assert!(!text.contains(secret), "a secret in the log: {secret}");
    }
}

/// A refused assertion (AADSTS code), an expired token and a token for the wrong audience each
/// give a clear error naming the identity and keep the data; once the IdP is fixed, every
/// line is delivered once.
#[test]
fn refused_expired_and_wrong_audience_tokens_keep_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = EntraAzurite::start(dir.path());
    let reader = fixture.reader();
    let container = unique("bad");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "the-assertion").unwrap();
    let log = dir.path().join("c.log");
    append_numbered(&log, "e", 0, 300);
    let cfg = config(dir.path(), &workload_output(&fixture, &container, ""));
    let agent = Agent::start_custom(dir.path(), &cfg, workload_env(&fixture, &token_file));
    wait_until(T, "the refused assertion reported", || {
        agent.log_text().contains("AADSTS700024")
    });
    fixture.control(r#"{"accept":["the-assertion"],"expired":true}"#);
    let before = agent.log_text().len();
    wait_until(T, "the expired token refused by the storage", || {
        agent.log_text()[before..].contains("refused: HTTP 403, AuthenticationFailed")
    });
    fixture.control(r#"{"accept":["the-assertion"],"aud":"https://management.azure.com"}"#);
    let before = agent.log_text().len();
    wait_until(T, "the wrong audience refused by the storage", || {
        agent.log_text()[before..].contains("refused: HTTP 403, AuthenticationFailed")
    });
    assert!(reader.logs(&container, "").is_empty());
    let text = agent.log_text();
    assert!(text.contains(&format!("container {container}")), "{text}");
    assert!(text.contains("identity: workload identity"), "{text}");
    fixture.control(r#"{"accept":["the-assertion"]}"#);
    wait_until(T, "delivered once fixed", || {
        reader.logs(&container, "").len() >= 300
    });
    let logs = reader.logs(&container, "");
    assert_eq!(assert_all_present(&logs, "e", 300), 0);
    assert_eq!(logs.len(), 300);
}

/// `deploy/azure/fluentbit-configmap.yaml` (Union's DaemonSet ConfigMap with its output swapped
/// for `azure_blob` with workload identity), run with only its host paths moved under a temp
/// dir, `upload_timeout` shortened and Azurite's endpoint and test CA added: every line lands
/// once in `persisted-logs/<tag>`, one append blob per container.
#[test]
fn union_configmap_on_azure_with_workload_identity() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = EntraAzurite::start(d);
    let reader = fixture.reader();
    let container = unique("union");
    let token_file = d.join("token");
    std::fs::write(&token_file, "projected-sa-token").unwrap();
    fixture.control(r#"{"accept":["projected-sa-token"]}"#);

    let yaml: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/azure/fluentbit-configmap.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    let data = |k: &str| yaml["data"][k].as_str().unwrap().to_string();
    std::fs::write(d.join("custom_parsers.conf"), data("custom_parsers.conf")).unwrap();
    let conf = data("fluent-bit.conf");
    let port = free_port();
    let replacements = [
        (
            "/fluent-bit/etc/parsers.conf".to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/parsers.conf").to_string(),
        ),
        (
            "/fluent-bit/etc/conf/custom_parsers.conf".to_string(),
            d.join("custom_parsers.conf").display().to_string(),
        ),
        ("/var/log/".to_string(), format!("{}/", d.display())),
        (
            "HTTP_Listen 0.0.0.0".to_string(),
            format!("HTTP_Listen 127.0.0.1\n    HTTP_Port {port}"),
        ),
        ("upload_timeout      1m".to_string(), "upload_timeout 2s".to_string()),
        (
            "auth_type           workload_identity".to_string(),
            format!(
                "auth_type workload_identity\n    endpoint {}\n    emulator_mode on\n    tls.ca_file {}",
                fixture.endpoint,
                fixture.ca.display()
            ),
        ),
    ];
    let mut conf_text = conf.clone();
    for (from, to) in &replacements {
        assert!(
            conf_text.contains(from.as_str()),
            "the ConfigMap lacks {from}"
        );
        conf_text = conf_text.replace(from.as_str(), to);
    }
    let cfg = write_config(d, "fluent-bit.conf", &conf_text);
    let pods = [
        (
            "web-7d9f_prod_nginx",
            "namespace-prod.pod-web-7d9f.cont-nginx",
        ),
        ("job-1_batch_main", "namespace-batch.pod-job-1.cont-main"),
    ];
    let suffix = "-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log";
    std::fs::create_dir_all(d.join("containers")).unwrap();
    let files: Vec<PathBuf> = pods
        .iter()
        .map(|(pod, _)| d.join("containers").join(format!("{pod}{suffix}")))
        .collect();
    for f in &files {
        std::fs::write(f, "").unwrap();
    }
    let container_env = container.clone();
    let wi = workload_env(&fixture, &token_file);
    let agent = Agent::start_custom(d, &cfg, move |c| {
        c.env("AZURE_STORAGE_ACCOUNT", ACCOUNT)
            .env("AZURE_STORAGE_CONTAINER", container_env);
        wi(c);
    });
    wait_until(T, "tail input started", || {
        agent.log_text().contains("tail input started")
    });
    // Union's tail starts at the end of files that exist (no Read_from_Head): lines come after.
    for (i, f) in files.iter().enumerate() {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new().append(true).open(f).unwrap();
        for n in 0..500 {
            writeln!(
                out,
                "2026-11-22T08:00:00.{n:09}Z stdout F p{i}-{n:08} some padding text"
            )
            .unwrap();
        }
    }
    wait_until(T, "both pods delivered", || {
        reader.logs(&container, "persisted-logs/").len() >= 1000
    });
    let blobs = reader.list(&container, "");
    let names: Vec<&str> = blobs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "persisted-logs/namespace-batch.pod-job-1.cont-main",
            "persisted-logs/namespace-prod.pod-web-7d9f.cont-nginx"
        ]
    );
    assert!(blobs.iter().all(|b| b.kind == "AppendBlob"));
    for (i, (_, tag)) in pods.iter().enumerate() {
        let logs = reader.logs(&container, &format!("persisted-logs/{tag}"));
        assert_eq!(assert_all_present(&logs, &format!("p{i}"), 500), 0);
        assert_eq!(logs.len(), 500, "{tag}");
    }
}

/// Bad options are refused by `--dry-run`, naming the file and key.
#[test]
fn bad_options_are_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    for (line, expected) in [
        ("    shared_key a2V5\n    blob_type pageblob\n", "key 'blob_type'"),
        ("    shared_key a2V5\n    compress_blob on\n", "key 'compress_blob'"),
        ("    shared_key a2V5\n    compress brotli\n", "key 'compress'"),
        ("    shared_key not*base64\n", "key 'shared_key'"),
        ("    auth_type sas\n", "sas_token"),
        ("    auth_type oauth\n", "key 'auth_type'"),
        (
            "    auth_type workload_identity\n    client_id c\n    tenant_id t\n    workload_identity_token_file /t\n    endpoint http://127.0.0.1:1\n",
            "over https only",
        ),
        (
            "    auth_type workload_identity\n    client_id c\n    tenant_id t\n",
            "workload_identity_token_file or $AZURE_FEDERATED_TOKEN_FILE",
        ),
        ("    shared_key a2V5\n    tls.verify off\n", "key 'tls.verify'"),
        ("    shared_key a2V5\n    tls.ca_file /nonexistent.pem\n", "key 'tls.ca_file'"),
        ("    shared_key a2V5\n    append_block_limit 60000\n", "key 'append_block_limit'"),
    ] {
        let cfg = write_config(
            dir.path(),
            "bad.conf",
            &format!("[INPUT]\n    Name dummy\n[OUTPUT]\n    Name azure_blob\n    Match *\n    account_name a\n    container_name c\n{line}"),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_logferry"))
            .args(["--dry-run", "-c"])
            .arg(&cfg)
            .env_remove("AZURE_FEDERATED_TOKEN_FILE")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted: {line}");
        assert!(
            text.contains("bad.conf:") && text.contains(expected),
            "expected {expected} in {text}"
        );
    }
}

/// `examples/azurite/azurite.conf`, as its README runs it (only the container and HTTP port
/// set through its variables): the sample logs land in Union's blob names.
#[test]
fn the_azurite_example_ships_the_sample_logs() {
    let dir = tempfile::tempdir().unwrap();
    let (host, reader) = azurite();
    let container = unique("example");
    let repo = env!("CARGO_MANIFEST_DIR");
    let cfg = PathBuf::from(repo).join("examples/azurite/azurite.conf");
    let state = dir.path().to_path_buf();
    let container_env = container.clone();
    let _agent = Agent::start_custom(dir.path(), &cfg, move |c| {
        c.env("AZURITE_ENDPOINT", host)
            .env("LOG_DIR", format!("{repo}/examples/logs"))
            .env("STATE_DIR", state)
            .env("CONTAINER", container_env)
            .env("HTTP_PORT", free_port().to_string());
    });
    wait_until(T, "the sample logs delivered", || {
        reader.logs(&container, "persisted-logs/").len() >= 9
    });
    let api = reader.logs(
        &container,
        "persisted-logs/namespace-billing.pod-api-5f6d7c8b9-qwert.cont-app",
    );
    assert_eq!(
        api,
        [
            "starting billing api v2.3.1\n",
            "listening on :8080\n",
            "a 16 KiB docker split, part one; part two\n",
            "invoice INV-77 issued\n",
        ]
    );
    let names: Vec<String> = reader
        .list(&container, "")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(
        names,
        [
            "persisted-logs/namespace-billing.pod-api-5f6d7c8b9-qwert.cont-app",
            "persisted-logs/namespace-shop.pod-web-7d9f8b6c5d-x2x9k.cont-nginx"
        ]
    );
}

/// An unsigned JWT of the shape Azurite accepts from Entra ID (it does not check signatures).
fn storage_jwt() -> String {
    use base64::Engine;
    let now = chrono::Utc::now().timestamp();
    let enc = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2lnbmF0dXJl",
        enc(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        enc(serde_json::json!({
            "iss": format!("https://sts.windows.net/{TENANT}/"),
            "aud": "https://storage.azure.com",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            "oid": "00000000-0000-0000-0000-0000000000aa",
        }))
    )
}

/// `auth_type managed_identity` through the SDK's `ManagedIdentityCredential`, reaching a
/// local managed-identity endpoint in the App Service form (`IDENTITY_ENDPOINT` +
/// `IDENTITY_HEADER`; IMDS's link-local address cannot be served here): the user-assigned
/// `client_id` and the secret header are sent, and the token writes to HTTPS Azurite.
#[test]
fn managed_identity_through_the_sdk() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = EntraAzurite::start(dir.path());
    let reader = fixture.reader();
    let container = unique("mi");
    let token = storage_jwt();
    let endpoint = common::peers::CredentialEndpoint::start(move |r| {
        let ok = r.path.contains(&format!("client_id={CLIENT_ID}"))
            && r.path.contains("resource=https")
            && r.headers.get("x-identity-header").map(String::as_str) == Some("identity-secret");
        if ok {
            let expires = chrono::Utc::now().timestamp() + 3600;
            common::peers::Reply::new(
                200,
                format!(
                    r#"{{"access_token":"{token}","expires_on":"{expires}","resource":"https://storage.azure.com","token_type":"Bearer","client_id":"{CLIENT_ID}"}}"#
                ),
            )
        } else {
            common::peers::Reply::new(400, r#"{"error":"invalid_request"}"#)
        }
    });
    let log = dir.path().join("c.log");
    append_numbered(&log, "m", 0, 100);
    let cfg = config(
        dir.path(),
        &format!(
            "    container_name {container}\n    endpoint {}\n    emulator_mode on\n    auth_type managed_identity\n    client_id {CLIENT_ID}\n    tls.ca_file {}\n",
            fixture.endpoint,
            fixture.ca.display()
        ),
    );
    let url = format!("{}/msi/token", endpoint.url);
    let agent = Agent::start_custom(dir.path(), &cfg, move |c| {
        c.env("IDENTITY_ENDPOINT", url)
            .env("IDENTITY_HEADER", "identity-secret");
    });
    wait_until(T, "delivered with the managed identity's token", || {
        reader.logs(&container, "").len() >= 100
    });
    let logs = reader.logs(&container, "");
    assert_eq!(assert_all_present(&logs, "m", 100), 0);
    assert!(endpoint
        .requests()
        .iter()
        .any(|r| r.starts_with("GET /msi/token")));
    let text = agent.log_text();
    assert!(
        text.contains(&format!("managed identity (client id {CLIENT_ID})")),
        "{text}"
    );
    assert!(!text.contains("identity-secret"));
}

/// `auth_type default`: workload identity when the webhook's environment is there.
#[test]
fn default_identity_uses_workload_identity_when_its_environment_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = EntraAzurite::start(dir.path());
    let reader = fixture.reader();
    let container = unique("default");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "default-chain-assertion").unwrap();
    fixture.control(r#"{"accept":["default-chain-assertion"]}"#);
    let log = dir.path().join("c.log");
    append_numbered(&log, "d", 0, 100);
    let output = workload_output(&fixture, &container, "")
        .replace("auth_type workload_identity", "auth_type default");
    let cfg = config(dir.path(), &output);
    let agent = Agent::start_custom(dir.path(), &cfg, workload_env(&fixture, &token_file));
    wait_until(T, "delivered", || reader.logs(&container, "").len() >= 100);
    assert_eq!(fixture.accepted(), ["default-chain-assertion"]);
    assert!(agent.log_text().contains("workload identity (client id"));
}

/// A SAS token never reaches the log, also when the endpoint cannot be reached (transport
/// errors name the URL otherwise).
#[test]
fn a_sas_token_is_not_logged_on_transport_errors() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let sas = account_sas();
    let sig = sas.split("sig=").nth(1).unwrap().to_string();
    let log = dir.path().join("c.log");
    append_numbered(&log, "x", 0, 10);
    let cfg = config(
        dir.path(),
        &format!("    container_name c\n    endpoint {closed}\n    emulator_mode on\n    auth_type sas\n    sas_token {sas}\n"),
    );
    let agent = Agent::start(dir.path(), &cfg);
    wait_until(T, "the transport error logged", || {
        agent.log_text().contains("upload failed")
    });
    let text = agent.log_text();
    assert!(text.contains("container c"), "{text}");
    assert!(!text.contains(&sig) && !text.contains("sig="), "{text}");
}
