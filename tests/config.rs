//! Configuration handling through the real binary: `--dry-run` verdicts, errors that name
//! file:line:key, includes, variables, YAML, and Union's ConfigMap.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn dry_run(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_logferry"))
        .arg("--dry-run")
        .arg("-c")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const GOOD: &str = "[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n";

#[test]
fn dry_run_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = dry_run(&write_config(dir.path(), "good.conf", GOOD));
    assert!(ok, "{text}");
    assert!(text.contains("configuration test is successful"));
}

#[test]
fn each_config_error_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("[INPUT]\n    Name dummy\n    Bogus_Key 1\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:3: key 'Bogus_Key': unknown key for plugin 'dummy'"),
        ("[INPUT]\n    Name nosuch\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:2: key 'Name': unknown input plugin 'nosuch'"),
        ("[INPUT]\n    Name tail\n    Path /x\n    Skip_Long_Lines maybe\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:4: key 'Skip_Long_Lines'"),
        ("[INPUT]\n    Name tail\n    Path /x\n    Buffer_Max_Size 12Q\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:4: key 'Buffer_Max_Size'"),
        ("[INPUT]\n    Name dummy\n    Tag\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:3: key 'Tag': key has an empty value"),
        ("[FILTER]\n    Name grep\n    Match *\n    Regex log (unclosed\n[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:4: key 'Regex'"),
        ("[INPUT]\n    Name dummy\n    Dummy {not json\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:3: key 'Dummy': invalid JSON"),
        ("[SERVICE]\n    Parsers_File /nonexistent/parsers.conf\n[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:2: key 'Parsers_File'"),
        ("[INPUT]\n    Name tail\n    Path /x\n    multiline.parser nope\n[OUTPUT]\n    Name null\n    Match *\n", "unknown.conf:4: key 'multiline.parser': unknown multiline parser 'nope'"),
        ("[OUTPUTS]\n    Name null\n", "unknown.conf:1: unknown section '[OUTPUTS]'"),
        ("[INPUT]\nName dummy\n", "unknown.conf:2: 'Name dummy' must be indented"),
        ("@INCLUDE missing.conf\n", "unknown.conf:1: @INCLUDE file 'missing.conf' not found"),
    ];
    for (text, expected) in cases {
        let (ok, out) = dry_run(&write_config(dir.path(), "unknown.conf", text));
        assert!(!ok, "should fail: {text}");
        assert!(
            out.contains(expected),
            "for config:\n{text}\nexpected '{expected}' in:\n{out}"
        );
    }
}

#[test]
fn huge_negative_and_non_finite_durations_and_sizes_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let tail = |key_value: &str| {
        format!("[INPUT]\n    Name tail\n    Path /x\n    {key_value}\n[OUTPUT]\n    Name null\n    Match *\n")
    };
    let cases: Vec<(String, &str)> = vec![
        ("[SERVICE]\n    Flush 1e30\n[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n".into(), "huge.conf:2: key 'Flush': '1e30' is too long"),
        ("[SERVICE]\n    Flush NaN\n[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n".into(), "huge.conf:2: key 'Flush': 'NaN' is not a finite number"),
        ("[SERVICE]\n    Grace 1e30\n[INPUT]\n    Name dummy\n[OUTPUT]\n    Name null\n    Match *\n".into(), "huge.conf:2: key 'Grace'"),
        (tail("Refresh_Interval 99999999999999999999"), "huge.conf:4: key 'Refresh_Interval': '99999999999999999999' is too long"),
        (tail("Rotate_Wait -5"), "huge.conf:4: key 'Rotate_Wait': '-5' is negative"),
        (tail("Ignore_Older inf"), "huge.conf:4: key 'Ignore_Older': 'inf' is not a finite number"),
        (tail("Refresh_Interval 1e300d"), "huge.conf:4: key 'Refresh_Interval': '1e300d' is too long"),
        (tail("Buffer_Max_Size 99999999999T"), "huge.conf:4: key 'Buffer_Max_Size': '99999999999T' is not a size"),
        (tail("Buffer_Max_Size 99999999999G"), "huge.conf:4: key 'Buffer_Max_Size': '99999999999G' is too large"),
        (tail("Buffer_Chunk_Size -32k"), "huge.conf:4: key 'Buffer_Chunk_Size': '-32k' is negative"),
        (tail("Mem_Buf_Limit 99999999999999999999"), "huge.conf:4: key 'Mem_Buf_Limit': '99999999999999999999' is too large"),
        (format!("[INPUT]\n    Name dummy\n[OUTPUT]\n    Name s3\n    Match *\n    bucket b\n    store_dir {}\n    upload_timeout 1e30m\n", dir.path().join("spool").display()), "huge.conf:8: key 'upload_timeout': '1e30m' is too long"),
    ];
    for (text, expected) in &cases {
        let (ok, out) = dry_run(&write_config(dir.path(), "huge.conf", text));
        assert!(!ok, "should fail: {text}");
        assert!(
            !out.contains("panicked"),
            "panic for config:\n{text}\n{out}"
        );
        assert!(
            out.contains(expected),
            "for config:\n{text}\nexpected '{expected}' in:\n{out}"
        );
    }
}

#[test]
fn include_cycles_are_errors_naming_the_include_line() {
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        "a.conf",
        "[SERVICE]\n    Flush 1\n@INCLUDE b.conf\n",
    );
    write_config(dir.path(), "b.conf", "@INCLUDE a.conf\n");
    let (ok, out) = dry_run(&dir.path().join("a.conf"));
    assert!(!ok);
    assert!(out.contains("b.conf:1: @INCLUDE cycle"), "{out}");
}

#[test]
fn includes_globs_set_and_env_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    write_config(dir.path(), "conf.d/in.conf", "[INPUT]\n    Name dummy\n    Dummy {\"who\":\"${WHO}\",\"env\":\"${LOGFERRY_TEST_UNSET:-fallback}\",\"missing\":\"${LOGFERRY_TEST_UNSET}\"}\n    Samples 1\n");
    let out_dir = dir.path().join("out");
    let main = write_config(
        dir.path(),
        "main.conf",
        &format!("@SET WHO=world\n@INCLUDE conf.d/*.conf\n[OUTPUT]\n    Name file\n    Match *\n    Path {}\n    File o\n    Format plain\n    Mkdir On\n", out_dir.display()),
    );
    let agent = Agent::start(dir.path(), &main);
    wait_until(Duration::from_secs(20), "dummy record", || {
        count_lines(&out_dir.join("o")) >= 1
    });
    assert_eq!(
        lines(&out_dir.join("o"))[0],
        r#"{"who":"world","env":"fallback","missing":""}"#
    );
    wait_until(Duration::from_secs(5), "unset warning", || {
        agent.log_text().contains("LOGFERRY_TEST_UNSET")
    });
}

#[test]
fn yaml_config_runs_the_same_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let yaml = format!(
        "env:\n  GREETING: hello\nservice:\n  flush: 1\n  log_level: info\npipeline:\n  inputs:\n    - name: dummy\n      tag: app.one\n      dummy: '{{\"msg\":\"${{GREETING}}\"}}'\n      samples: 2\n  filters:\n    - name: record_modifier\n      match: app.*\n      record:\n        - cluster prod\n        - region eu\n  outputs:\n    - name: file\n      match: '*'\n      path: {}\n      file: o\n      format: plain\n      mkdir: on\n",
        out_dir.display()
    );
    let cfg = write_config(dir.path(), "c.yaml", &yaml);
    let _agent = Agent::start(dir.path(), &cfg);
    wait_until(Duration::from_secs(20), "two records", || {
        count_lines(&out_dir.join("o")) >= 2
    });
    assert_eq!(
        lines(&out_dir.join("o"))[0],
        r#"{"msg":"hello","cluster":"prod","region":"eu"}"#
    );
    let bad = write_config(dir.path(), "bad.yaml", "pipeline:\n  inputs:\n    - name: dummy\n      nonsense: 1\n  outputs:\n    - name: null\n      match: '*'\n");
    let (ok, out) = dry_run(&bad);
    assert!(!ok);
    assert!(out.contains("bad.yaml:4: key 'nonsense'"), "{out}");
}

/// Union's exact DaemonSet ConfigMap (../shared/notes/union-firelens.md §1.2) with the s3 output
/// replaced by `file`, and its /fluent-bit paths moved under a temp dir.
#[test]
fn union_configmap_tags_records_by_namespace_pod_container() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let containers = root.join("var/log/containers");
    let pods = root.join("var/log/pods/prod_web-7d9f_uid/nginx");
    std::fs::create_dir_all(&containers).unwrap();
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::create_dir_all(root.join("fluent-bit/etc/conf")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/conf/parsers.conf"),
        root.join("fluent-bit/etc/parsers.conf"),
    )
    .unwrap();
    std::fs::write(root.join("fluent-bit/etc/conf/custom_parsers.conf"), "[PARSER]\n    Name docker_no_time\n    Format json\n    Time_Keep Off\n    Time_Key time\n    Time_Format %Y-%m-%dT%H:%M:%S.%L\n").unwrap();
    let id = "0123456789abcdef".repeat(4);
    let real = pods.join("0.log");
    let link = containers.join(format!("web-7d9f_prod_nginx-{id}.log"));
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::write(&real, "2026-11-22T08:00:00.1Z stdout F hello\n2026-11-22T08:00:00.2Z stdout P split \n2026-11-22T08:00:00.3Z stdout F line\n").unwrap();
    let port = free_port();
    let conf = format!(
        "[SERVICE]\n    Parsers_File {r}/fluent-bit/etc/parsers.conf\n    Parsers_File {r}/fluent-bit/etc/conf/custom_parsers.conf\n    HTTP_Server On\n    HTTP_Listen 0.0.0.0\n    HTTP_Port {port}\n    Health_Check On\n[INPUT]\n    Name                tail\n    Tag                 namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>\n    Tag_Regex           (?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-\n    Path                {r}/var/log/containers/*.log\n    DB                  {r}/var/log/flb_kube.db\n    multiline.parser    docker, cri\n    Mem_Buf_Limit       5MB\n    Skip_Long_Lines     On\n    Refresh_Interval    10\n    Read_from_Head      On\n[OUTPUT]\n    Name file\n    Match *\n    Path {r}/persisted-logs\n    Format plain\n    Mkdir On\n",
        r = root.display()
    );
    let cfg = write_config(root, "fluent-bit.conf", &conf);
    let _agent = Agent::start(root, &cfg);
    let out = root.join("persisted-logs/namespace-prod.pod-web-7d9f.cont-nginx");
    wait_until(Duration::from_secs(20), "tagged records", || {
        count_lines(&out) >= 2
    });
    assert_eq!(
        lines(&out),
        vec![
            r#"{"time":"2026-11-22T08:00:00.1Z","stream":"stdout","_p":"F","log":"hello"}"#,
            r#"{"time":"2026-11-22T08:00:00.2Z","stream":"stdout","_p":"P","log":"split line"}"#,
        ]
    );
    // Probes the chart configures.
    assert_eq!(http_get(port, "/").map(|r| r.0), Some(200));
    assert_eq!(
        http_get(port, "/api/v1/health"),
        Some((200, "ok\n".to_string()))
    );
    // Kubelet rotation: 0.log renamed to 0.log.<ts> in the pod dir, a new 0.log created.
    std::fs::rename(&real, pods.join("0.log.20261122-080001")).unwrap();
    std::fs::write(&real, "2026-11-22T08:00:01.0Z stderr F after rotation\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Refresh_Interval is 10 s; inotify on /var/log/containers does not see the pod dir, so the
    // new target is found at the next scan.
    wait_until(Duration::from_secs(30), "line after rotation", || {
        count_lines(&out) >= 3
    });
    assert!(lines(&out)[2].contains("after rotation"));
}

/// The stock parsers file through the real binary: `Parser syslog-rfc3164` (a `/regex/` with
/// `\<`) and `Parser logfmt` give Fluent Bit's fields, not `{"log": …}`.
#[test]
fn stock_parsers_give_fields_for_syslog_and_logfmt_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("syslog.log"),
        "<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed\n",
    )
    .unwrap();
    std::fs::write(d.join("app.log"), "level=info msg=\"hi there\" n=1 debug\n").unwrap();
    let conf = format!(
        "[SERVICE]\n    Parsers_File {stock}\n[INPUT]\n    Name tail\n    Path {d}/syslog.log\n    Tag sys\n    Read_from_Head On\n    Parser syslog-rfc3164\n[INPUT]\n    Name tail\n    Path {d}/app.log\n    Tag app\n    Read_from_Head On\n    Parser logfmt\n[OUTPUT]\n    Name file\n    Match sys\n    Path {d}\n    File sys.out\n    Format plain\n[OUTPUT]\n    Name file\n    Match app\n    Path {d}\n    File app.out\n    Format plain\n",
        stock = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/parsers.conf"),
        d = d.display()
    );
    let cfg = write_config(d, "a.conf", &conf);
    let _agent = Agent::start(d, &cfg);
    wait_until(Duration::from_secs(20), "both records", || {
        count_lines(&d.join("sys.out")) >= 1 && count_lines(&d.join("app.out")) >= 1
    });
    assert_eq!(
        lines(&d.join("sys.out")),
        vec![
            r#"{"pri":"34","time":"Oct 11 22:14:15","host":"mymachine","ident":"su","pid":"230","message":"'su root' failed"}"#
        ]
    );
    assert_eq!(
        lines(&d.join("app.out")),
        vec![r#"{"level":"info","msg":"hi there","n":"1","debug":true}"#]
    );
}

#[test]
fn tls_options_not_applied_are_refused_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = "[INPUT]\n    Name dummy\n[OUTPUT]\n    Name s3\n    Match *\n    bucket b\n    region us-east-1\n    endpoint https://minio.local:9000\n    store_dir /tmp/x\n";
    for (extra, key) in [
        ("    tls.verify Off\n", "tls.verify"),
        ("    tls.ca_file /etc/minio/ca.crt\n", "tls.ca_file"),
    ] {
        let (ok, text) = dry_run(&write_config(
            dir.path(),
            "tls.conf",
            &format!("{s3}{extra}"),
        ));
        assert!(!ok, "{key} must be refused: {text}");
        assert!(text.contains("tls.conf:10") && text.contains(key), "{text}");
    }
    let (ok, text) = dry_run(&write_config(
        dir.path(),
        "ok.conf",
        &format!(
            "{s3}    tls On\n    tls.verify On\n    storage.total_limit_size 50M\n    workers 2\n"
        ),
    ));
    assert!(ok, "{text}");
}
