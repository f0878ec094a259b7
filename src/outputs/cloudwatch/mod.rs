//! CloudWatch Logs under both plugin names on one implementation: `cloudwatch_logs` (Fluent
//! Bit's C plugin: options and record-accessor templates from `plugins/out_cloudwatch_logs`) and
//! `cloudwatch` (the Go plugin aws-for-fluent-bit ships: its option names and `$(var)`
//! templates, with `$(ecs_*)` from the ECS task metadata endpoint v4).
//!
//! Invariant 1 (no silent loss): a record counts as delivered only when the PutLogEvents request
//! holding it succeeded. Each request is retried by itself (throttling, 5xx, network, refused
//! credentials) with the service backoff up to `Retry_Limit`, so a request that succeeded is
//! never sent again because a sibling failed; only an ambiguous failure (the SDK's own retry of
//! a request whose answer was lost) can repeat events. A request that exhausts `Retry_Limit` is
//! dropped: counted in `retries_failed`/`dropped_records` and logged with its group and stream.
//! Events the service rejects (`rejectedLogEventsInfo`: too old, too new, expired), events that
//! cannot be sent (no `log_key`, empty) and truncated events are counted and logged.
//! Invariant 2 (bounded memory): a write holds at most what the runner gathered (≤ 4 MiB of
//! source), with at most `workers` requests in flight.

mod batch;
mod template;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::{InputLogEvent, LogGroupClass};
use aws_sdk_cloudwatchlogs::Client;

use self::batch::Prepared;
use self::template::{TaskMetadata, Template};
use super::{Backoff, Written};
use crate::cloud::aws::{with_scheme, AwsIdentity};
use crate::config::{ConfigError, Props};
use crate::engine::metrics::{HealthWindow, OutputMetrics};
use crate::record::{Event, Map, Value};

/// CloudWatch's limit on group and stream name length.
const MAX_NAME_LEN: usize = 512;
/// Requests in flight when `workers` is not set.
const DEFAULT_IN_FLIGHT: usize = 4;
/// Retention periods CloudWatch accepts (days).
const RETENTION_DAYS: [i64; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

/// Which plugin's conventions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `cloudwatch_logs`
    FluentBit,
    /// `cloudwatch` (Go)
    Go,
}

/// How a record finds its group and stream. A template that does not resolve (or renders empty)
/// falls back: `cloudwatch_logs` to `log_group_name` / `log_stream_name` (or prefix + tag),
/// `cloudwatch` to `default_log_group_name` / `default_log_stream_name`.
#[derive(Debug)]
struct Naming {
    group: Option<Template>,
    group_fallback: String,
    stream: Option<Template>,
    stream_fallback: StreamFallback,
    /// The Go plugin replaces characters CloudWatch refuses (group: outside `[A-Za-z0-9_./-]`;
    /// stream: `:` and `*`) with `.`.
    sanitize: bool,
}

#[derive(Debug)]
enum StreamFallback {
    Name(String),
    /// `log_stream_prefix`: the stream is prefix + tag.
    Prefix(String),
}

impl Naming {
    fn reads_record(&self) -> bool {
        self.group.as_ref().is_some_and(Template::reads_record)
            || self.stream.as_ref().is_some_and(Template::reads_record)
    }

    fn needs_ecs(&self) -> bool {
        self.group.as_ref().is_some_and(Template::needs_ecs)
            || self.stream.as_ref().is_some_and(Template::needs_ecs)
    }

    /// Writes `group\0stream` into `key`; returns how many templates fell back.
    fn resolve(
        &self,
        key: &mut String,
        scratch: &mut String,
        tag: &str,
        record: &Map,
        ctx: &NameContext,
    ) -> u32 {
        let mut fallbacks = 0;
        key.clear();
        match &self.group {
            Some(t)
                if t.render(scratch, tag, record, &ctx.uuid, ctx.ecs.as_ref())
                    && !scratch.is_empty() =>
            {
                push_name(key, scratch, self.sanitize.then_some(sanitize_group));
            }
            other => {
                fallbacks += u32::from(other.is_some());
                key.push_str(&self.group_fallback);
            }
        }
        key.push('\0');
        match &self.stream {
            Some(t)
                if t.render(scratch, tag, record, &ctx.uuid, ctx.ecs.as_ref())
                    && !scratch.is_empty() =>
            {
                push_name(key, scratch, self.sanitize.then_some(sanitize_stream));
            }
            other => {
                fallbacks += u32::from(other.is_some());
                match &self.stream_fallback {
                    StreamFallback::Name(n) => key.push_str(n),
                    StreamFallback::Prefix(p) => {
                        key.push_str(p);
                        key.push_str(tag);
                    }
                }
            }
        }
        fallbacks
    }
}

fn push_name(key: &mut String, name: &str, sanitize: Option<fn(char) -> char>) {
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    match sanitize {
        Some(f) => key.extend(name[..end].chars().map(f)),
        None => key.push_str(&name[..end]),
    }
}

fn sanitize_group(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/') {
        c
    } else {
        '.'
    }
}

fn sanitize_stream(c: char) -> char {
    if matches!(c, ':' | '*') {
        '.'
    } else {
        c
    }
}

/// Values templates read besides the record: the instance's `$(uuid)` and the ECS metadata.
#[derive(Debug, Default)]
struct NameContext {
    uuid: String,
    ecs: Option<TaskMetadata>,
}

/// What each event's message is: the record as JSON, or the value of `log_key` (a string as-is,
/// anything else as JSON). The Go plugin trims surrounding white space.
#[derive(Debug)]
struct MessageFormat {
    log_key: Option<Vec<u8>>,
    trim: bool,
}

impl MessageFormat {
    /// None when the record lacks `log_key`. JSON is written into `scratch` (reused across
    /// records) and copied out once at its exact size; a string `log_key` value is copied once.
    fn encode(&self, record: &Map, scratch: &mut Vec<u8>) -> Option<String> {
        scratch.clear();
        let bytes: &[u8] = match &self.log_key {
            None => {
                crate::json::write_map(scratch, record, None, true);
                scratch
            }
            Some(k) => match record.get(k)? {
                Value::Str(s) => s,
                v => {
                    crate::json::write_value(scratch, v, true);
                    scratch
                }
            },
        };
        let text = String::from_utf8_lossy(bytes);
        Some(if self.trim {
            text.trim().to_string()
        } else {
            text.into_owned()
        })
    }
}

/// Group creation and the settings requests share.
#[derive(Debug)]
struct GroupSettings {
    auto_create_group: bool,
    auto_create_stream: bool,
    retention_days: Option<i32>,
    class: Option<LogGroupClass>,
    tags: Vec<(String, String)>,
}

pub struct CloudWatchOutput {
    instance: String,
    flavour: Flavour,
    naming: Naming,
    message: MessageFormat,
    identity: AwsIdentity,
    endpoint: Option<String>,
    auto_retry_requests: bool,
    extra_user_agent: Option<aws_config::AppName>,
    log_format: Option<String>,
    in_flight: usize,
    retry_limit: Option<u32>,
    backoff: Backoff,
    /// `ECS_CONTAINER_METADATA_URI_V4` (or the v3 variable the Go plugin reads) when a template
    /// uses `$(ecs_*)`.
    ecs_endpoint: Option<Result<String, String>>,
    groups: Option<GroupSettings>,
    names: NameContext,
    shared: Option<Arc<Shared>>,
}

/// What every request task needs (built at start).
struct Shared {
    client: Client,
    instance: String,
    identity: String,
    groups: GroupSettings,
    log_format: Option<String>,
    retry_limit: Option<u32>,
    backoff: Backoff,
    metrics: Arc<OutputMetrics>,
    health: Arc<HealthWindow>,
}

pub fn build(
    p: &Props,
    instance: &str,
    flavour: Flavour,
    backoff: Backoff,
) -> Result<CloudWatchOutput, ConfigError> {
    let origin = &p.section.origin;
    if p.str("region").is_none() {
        return Err(ConfigError::at(origin, "'region' is a required field"));
    }
    let group_name = p
        .prop("log_group_name")
        .ok_or_else(|| ConfigError::at(origin, "'log_group_name' is a required field"))?;
    let stream_name = p.prop("log_stream_name");
    let prefix = p.prop("log_stream_prefix");
    match (stream_name, prefix, flavour) {
        (None, None, _) => {
            return Err(ConfigError::at(
                origin,
                "Either 'log_stream_name' or 'log_stream_prefix' is required",
            ))
        }
        (Some(_), Some(p), Flavour::FluentBit) => {
            return Err(ConfigError::key(
                p,
                "Either 'log_stream_name' or 'log_stream_prefix' is required, not both",
            ))
        }
        (Some(_), Some(p), Flavour::Go) => {
            return Err(ConfigError::key(p, "either log_stream_name or log_stream_prefix can be configured. They cannot be provided together"))
        }
        _ => {}
    }
    let template = |prop: &crate::config::Property, go: bool| {
        let parsed = if go {
            Template::go(&prop.value)
        } else {
            Template::record_accessor(&prop.value)
        };
        parsed.map_err(|e| ConfigError::key(prop, format!("could not parse the template: {e}")))
    };
    let naming = match flavour {
        Flavour::FluentBit => Naming {
            group: p
                .prop("log_group_template")
                .map(|t| template(t, false))
                .transpose()?,
            group_fallback: group_name.value.clone(),
            stream: p
                .prop("log_stream_template")
                .map(|t| template(t, false))
                .transpose()?,
            stream_fallback: match (stream_name, prefix) {
                (Some(n), _) => StreamFallback::Name(n.value.clone()),
                (None, Some(pre)) => StreamFallback::Prefix(pre.value.clone()),
                (None, None) => unreachable!("checked above"),
            },
            sanitize: false,
        },
        Flavour::Go => Naming {
            group: Some(template(group_name, true)?),
            group_fallback: p.string_or("default_log_group_name", "fluentbit-default"),
            stream: stream_name.map(|s| template(s, true)).transpose()?,
            stream_fallback: match prefix {
                Some(pre) => StreamFallback::Prefix(pre.value.clone()),
                None => StreamFallback::Name(
                    p.string_or("default_log_stream_name", "/fluentbit-default"),
                ),
            },
            sanitize: true,
        },
    };
    let ecs_endpoint = naming.needs_ecs().then(|| {
        std::env::var("ECS_CONTAINER_METADATA_URI_V4")
            .or_else(|_| std::env::var("ECS_CONTAINER_METADATA_URI"))
            .map_err(|_| {
                "ECS_CONTAINER_METADATA_URI_V4 is not set (not running in an ECS task?)".to_string()
            })
    });
    let retention_days = match p.prop("log_retention_days") {
        None => None,
        Some(prop) => match p.int("log_retention_days", 0)? {
            n if n <= 0 => None,
            n if RETENTION_DAYS.contains(&n) => Some(n as i32),
            n => {
                return Err(ConfigError::key(
                    prop,
                    format!("{n} is not a retention CloudWatch accepts ({RETENTION_DAYS:?})"),
                ))
            }
        },
    };
    let class = match p.prop("log_group_class") {
        None => None,
        Some(c) if c.value.is_empty() => None,
        Some(c) => match c.value.to_ascii_uppercase().as_str() {
            "STANDARD" => Some(LogGroupClass::Standard),
            "INFREQUENT_ACCESS" => Some(LogGroupClass::InfrequentAccess),
            _ => {
                return Err(ConfigError::key(
                    c,
                    format!(
                        "The valid values for log_group_class are {{STANDARD, INFREQUENT_ACCESS}}. Invalid input was {}",
                        c.value
                    ),
                ))
            }
        },
    };
    let (auto_create_stream, tags) = match flavour {
        Flavour::FluentBit => (true, Vec::new()),
        Flavour::Go => (
            p.bool("auto_create_stream", true)?,
            parse_tags(p.str("new_log_group_tags").unwrap_or_default()),
        ),
    };
    let mut identity = AwsIdentity::from_props(p, "us-east-1")?;
    if flavour == Flavour::Go {
        if let Some(prop) = p.prop("credentials_endpoint") {
            if !prop.value.starts_with("http://") {
                return Err(ConfigError::key(
                    prop,
                    "credentials_endpoint must be an http:// URL (the ECS or EKS agent's endpoint)",
                ));
            }
            identity.credentials_endpoint = Some(prop.value.clone());
        }
    }
    // Sent as the SDK's app name (`app/<name>` in the user agent), which allows letters, digits
    // and !#$%&'*+-.^_`|~ only; other characters (Fluent Bit allows any) become '-'.
    let extra_user_agent = p
        .str("extra_user_agent")
        .filter(|ua| !ua.is_empty())
        .map(|ua| {
            let name: String = ua
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            aws_config::AppName::new(name).expect("only allowed characters")
        });
    let log_format = match p.prop("log_format") {
        None => None,
        Some(f) if f.value.bytes().all(|b| b.is_ascii_graphic()) => Some(f.value.clone()),
        Some(f) => {
            return Err(ConfigError::key(
                f,
                "log_format must be a header value such as json/emf",
            ))
        }
    };
    if let Some(dims) = p.prop("metric_dimensions") {
        if p.str("metric_namespace").is_none() {
            return Err(ConfigError::key(
                dims,
                "metric_dimensions needs metric_namespace",
            ));
        }
    }
    let in_flight = match p.prop("workers") {
        None => DEFAULT_IN_FLIGHT,
        Some(w) => usize::try_from(p.int("workers", 0)?)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::key(w, "workers must be at least 1"))?,
    };
    // Only records from Fluent Bit's cpu/mem metrics inputs become EMF; logferry has none, so
    // these change nothing (as in Fluent Bit with log inputs). `add_entity` needs the
    // kubernetes filter's entity fields, which logferry does not produce.
    p.accept(&["metric_namespace", "metric_dimensions", "add_entity"]);
    Ok(CloudWatchOutput {
        instance: instance.to_string(),
        flavour,
        naming,
        message: MessageFormat {
            log_key: p.str("log_key").map(|k| k.as_bytes().to_vec()),
            trim: flavour == Flavour::Go,
        },
        identity,
        endpoint: p.str("endpoint").map(with_scheme),
        auto_retry_requests: p.bool("auto_retry_requests", true)?,
        extra_user_agent,
        log_format,
        in_flight,
        retry_limit: super::parse_retry_limit(p, 1)?,
        backoff,
        ecs_endpoint,
        groups: Some(GroupSettings {
            auto_create_group: p.bool("auto_create_group", false)?,
            auto_create_stream,
            retention_days,
            class,
            tags,
        }),
        names: NameContext {
            uuid: crate::outputs::objectstore::key::random_alnum(27),
            ecs: None,
        },
        shared: None,
    })
}

/// `new_log_group_tags`: `k=v,k2=v2`, spaces trimmed, empty keys ignored.
fn parse_tags(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

impl CloudWatchOutput {
    pub async fn start(&mut self, metrics: Arc<OutputMetrics>, health: Arc<HealthWindow>) {
        metrics
            .cloudwatch
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let sdk = self.identity.sdk_config().await;
        let mut conf = aws_sdk_cloudwatchlogs::config::Builder::from(&sdk)
            .retry_config(if self.auto_retry_requests {
                // One quick retry inside the SDK, as Fluent Bit's auto_retry_requests; the
                // output's own per-request retries follow the service backoff.
                aws_config::retry::RetryConfig::standard().with_max_attempts(2)
            } else {
                aws_config::retry::RetryConfig::disabled()
            })
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(endpoint) = &self.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        if let Some(app) = &self.extra_user_agent {
            conf = conf.app_name(app.clone());
        }
        self.shared = Some(Arc::new(Shared {
            client: Client::from_conf(conf.build()),
            instance: self.instance.clone(),
            identity: self.identity.describe(),
            groups: self.groups.take().expect("start runs once"),
            log_format: self.log_format.clone(),
            retry_limit: self.retry_limit,
            backoff: self.backoff,
            metrics,
            health,
        }));
        if self.ecs_endpoint.is_some() {
            if let Err(e) = self.task_metadata().await {
                tracing::error!(output = %self.instance, "{e}");
            }
        }
    }

    /// Fetches the ECS task metadata once (at start, or at the first write after a failure).
    async fn task_metadata(&mut self) -> io::Result<()> {
        let Some(endpoint) = &self.ecs_endpoint else {
            return Ok(());
        };
        if self.names.ecs.is_some() {
            return Ok(());
        }
        let fail = |why: String| {
            io::Error::other(format!(
                "the log group/stream template uses $(ecs_task_id)/$(ecs_cluster)/$(ecs_task_arn), which need the ECS task metadata endpoint: {why}"
            ))
        };
        let base = endpoint.clone().map_err(fail)?;
        let url = format!("{}/task", base.trim_end_matches('/'));
        let (status, body) = crate::cloud::local_http::get(&url, &[], Duration::from_secs(5))
            .await
            .map_err(|e| fail(format!("GET {url}: {e}")))?;
        if status != 200 {
            return Err(fail(format!("GET {url}: HTTP {status}")));
        }
        #[derive(serde::Deserialize)]
        struct Task {
            #[serde(rename = "Cluster")]
            cluster: String,
            #[serde(rename = "TaskARN")]
            task_arn: String,
        }
        let task: Task = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("GET {url}: unexpected document ({e})")))?;
        let task_id = task
            .task_arn
            .rsplit('/')
            .next()
            .filter(|id| !id.is_empty() && task.task_arn.starts_with("arn:"))
            .ok_or_else(|| fail(format!("GET {url}: '{}' is not a task ARN", task.task_arn)))?
            .to_string();
        tracing::info!(output = %self.instance, cluster = %task.cluster, task_id = %task_id, "ECS task metadata read");
        self.names.ecs = Some(TaskMetadata {
            cluster: task.cluster,
            task_arn: task.task_arn,
            task_id,
        });
        Ok(())
    }

    /// Sends every record; returns which were given up (rejected, unsendable or dropped at
    /// `Retry_Limit`). Errs only before anything was sent (ECS metadata unavailable), so the
    /// runner's whole-write retry cannot repeat a delivered request.
    pub async fn write(&mut self, batches: &[(&str, &[Event])]) -> io::Result<Written> {
        self.task_metadata().await?;
        let shared = self.shared.clone().expect("started before the first write");
        let mut given_up = vec![0usize; batches.len()];
        let streams = self.prepare(batches, &mut given_up, &shared.metrics);
        let mut requests = Vec::new();
        for (key, events) in streams {
            let (group, stream) = key.split_once('\0').expect("joined by resolve");
            let (group, stream): (Arc<str>, Arc<str>) = (group.into(), stream.into());
            for b in batch::split(events) {
                requests.push((group.clone(), stream.clone(), b));
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut collect = |result: Result<Vec<u32>, tokio::task::JoinError>| {
            for origin in result.expect("request task does not panic") {
                given_up[origin as usize] += 1;
            }
        };
        for (group, stream, events) in requests {
            while tasks.len() >= self.in_flight {
                collect(tasks.join_next().await.expect("non-empty"));
            }
            tasks.spawn(deliver(shared.clone(), group, stream, events));
        }
        while let Some(result) = tasks.join_next().await {
            collect(result);
        }
        Ok(if given_up.iter().all(|n| *n == 0) {
            Written::All
        } else {
            Written::Partly(given_up)
        })
    }

    /// Encodes each record once and files it under its `group\0stream`; records that cannot
    /// be sent are counted in `given_up` (per batch).
    fn prepare(
        &self,
        batches: &[(&str, &[Event])],
        given_up: &mut [usize],
        m: &OutputMetrics,
    ) -> HashMap<String, Vec<Prepared>> {
        let mut streams: HashMap<String, Vec<Prepared>> = HashMap::new();
        let (mut key, mut scratch, mut json) = (String::new(), String::new(), Vec::new());
        let (mut fallbacks, mut truncated, mut unsendable) = (0u32, 0u64, 0u64);
        let per_record = self.naming.reads_record();
        let empty = Map::default();
        for (origin, (tag, events)) in batches.iter().enumerate() {
            if !per_record {
                fallbacks += self
                    .naming
                    .resolve(&mut key, &mut scratch, tag, &empty, &self.names);
            }
            for e in events.iter() {
                if per_record {
                    fallbacks +=
                        self.naming
                            .resolve(&mut key, &mut scratch, tag, &e.record, &self.names);
                }
                let Some(mut message) = self
                    .message
                    .encode(&e.record, &mut json)
                    .filter(|m| !m.is_empty())
                else {
                    unsendable += 1;
                    given_up[origin] += 1;
                    continue;
                };
                truncated += u64::from(batch::truncate(&mut message));
                let event = Prepared {
                    ts_ms: e.time.sec * 1000 + i64::from(e.time.nsec) / 1_000_000,
                    message,
                    origin: origin as u32,
                };
                match streams.get_mut(key.as_str()) {
                    Some(v) => v.push(event),
                    None => {
                        streams.insert(key.clone(), vec![event]);
                    }
                }
            }
        }
        if truncated > 0 {
            m.events_truncated.add(truncated);
            tracing::warn!(output = %self.instance, "{truncated} events over 262,144 bytes (with CloudWatch's 26 per event) were truncated");
        }
        if unsendable > 0 {
            m.events_rejected.add(unsendable);
            match &self.message.log_key {
                Some(k) => {
                    tracing::error!(output = %self.instance, "{unsendable} records not sent: no '{}' key (log_key) or an empty message", String::from_utf8_lossy(k))
                }
                None => {
                    tracing::error!(output = %self.instance, "{unsendable} records not sent: empty message")
                }
            }
        }
        if fallbacks > 0 {
            let (group, stream) = match self.flavour {
                Flavour::FluentBit => ("log_group_name", "log_stream_name/log_stream_prefix"),
                Flavour::Go => ("default_log_group_name", "default_log_stream_name"),
            };
            tracing::warn!(output = %self.instance, "{fallbacks} group/stream names did not resolve from their template (a missing key or tag part): used {group} / {stream}");
        }

        streams
    }
}

/// Why a call failed, and what to do about it.
enum Failure {
    /// ResourceNotFoundException: create the stream (and the group), then send again.
    Missing,
    /// Throttling, 5xx, network: retry later.
    Transient(String),
    /// Refused credentials or permissions, a missing group that may not be created: retried
    /// (an administrator may fix it) but health fails meanwhile.
    Permanent(String),
}

fn classify<E>(e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let denied =
        |status: u16, code: &str| status == 401 || status == 403 || code.contains("AccessDenied");
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s.err().code().unwrap_or_default();
            let text = answer(status, code, s.err().message(), s.raw().body().bytes());
            match code {
                "ResourceNotFoundException" => Failure::Missing,
                "ThrottlingException"
                | "ServiceUnavailableException"
                | "LimitExceededException"
                | "RequestLimitExceeded" => Failure::Transient(text),
                _ if status >= 500 || status == 429 => Failure::Transient(text),
                _ if denied(status, code) => Failure::Permanent(format!("AccessDenied ({text})")),
                _ => Failure::Permanent(text),
            }
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let text = answer(status, "", None, r.raw().body().bytes());
            if denied(status, "") {
                Failure::Permanent(format!("AccessDenied ({text})"))
            } else {
                Failure::Transient(text)
            }
        }
        SdkError::DispatchFailure(_) if caused_by_credentials(e) => {
            // Credentials that cannot be had (the chain is empty, AssumeRole refused).
            Failure::Permanent(format!("no usable credentials: {}", DisplayErrorContext(e)))
        }
        SdkError::ConstructionFailure(_) => Failure::Permanent(DisplayErrorContext(e).to_string()),
        _ => Failure::Transient(DisplayErrorContext(e).to_string()),
    }
}

/// What the service answered, briefly: status, code and message; when the body was not the
/// JSON the SDK expects (a proxy's page, an XML error), its `<Message>` or its first 200 bytes.
fn answer(status: u16, code: &str, message: Option<&str>, body: Option<&[u8]>) -> String {
    let mut out = format!("HTTP {status}");
    if !code.is_empty() {
        out.push_str(&format!(" {code}"));
    }
    match message {
        Some(m) => out.push_str(&format!(": {m}")),
        None => {
            let body = String::from_utf8_lossy(body.unwrap_or_default());
            let text = match (body.find("<Message>"), body.find("</Message>")) {
                (Some(a), Some(b)) if a < b => &body[a + 9..b],
                _ => body.trim(),
            };
            if !text.is_empty() {
                let mut end = text.len().min(200);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.push_str(&format!(": {}", &text[..end]));
            }
        }
    }
    out
}

fn caused_by_credentials(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

fn is_code<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>,
    code: &str,
) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some(code)
}

/// One PutLogEvents request, retried by itself; returns the origins of the events given up.
async fn deliver(
    shared: Arc<Shared>,
    group: Arc<str>,
    stream: Arc<str>,
    events: Vec<Prepared>,
) -> Vec<u32> {
    let origins: Vec<u32> = events.iter().map(|e| e.origin).collect();
    let count = events.len();
    // The SDK consumes its input. The first attempt sends the messages themselves; a copy of
    // them in one buffer (one allocation per request) rebuilds the events for a retry.
    let mut kept = String::with_capacity(events.iter().map(|e| e.message.len()).sum());
    let spans: Vec<(i64, usize, usize)> = events
        .iter()
        .map(|e| {
            let start = kept.len();
            kept.push_str(&e.message);
            (e.ts_ms, start, kept.len())
        })
        .collect();
    let event = |ts_ms: i64, message: String| {
        InputLogEvent::builder()
            .timestamp(ts_ms)
            .message(message)
            .build()
            .expect("timestamp and message are set")
    };
    let mut first: Option<Vec<InputLogEvent>> = Some(
        events
            .into_iter()
            .map(|e| event(e.ts_ms, e.message))
            .collect(),
    );
    let m = &shared.metrics;
    let mut attempt = 0u32;
    let mut creations = 0;
    loop {
        let log_format = shared.log_format.clone();
        let sent = shared
            .client
            .put_log_events()
            .log_group_name(&*group)
            .log_stream_name(&*stream)
            .set_log_events(Some(first.take().unwrap_or_else(|| {
                spans
                    .iter()
                    .map(|&(ts, a, b)| event(ts, kept[a..b].to_string()))
                    .collect()
            })))
            .customize()
            .mutate_request(move |r| {
                if let Some(f) = &log_format {
                    r.headers_mut().insert("x-amzn-logs-format", f.clone());
                }
            })
            .send()
            .await;
        let failure = match sent {
            Ok(out) => {
                m.store_failing.set(0);
                return rejected(
                    &shared,
                    &group,
                    &stream,
                    &origins,
                    out.rejected_log_events_info(),
                );
            }
            Err(e) => match classify(&e) {
                Failure::Missing if creations < 2 => {
                    creations += 1;
                    match create_stream(&shared, &group, &stream).await {
                        Ok(()) => continue,
                        Err(f) => f,
                    }
                }
                Failure::Missing => Failure::Transient(DisplayErrorContext(&e).to_string()),
                f => f,
            },
        };
        m.errors.add(1);
        shared.health.error();
        let (output, identity) = (&shared.instance, &shared.identity);
        match &failure {
            Failure::Permanent(why) => {
                m.store_failing.set(1);
                tracing::error!(output = %output, group = %group, stream = %stream, identity = %identity, attempt, "PutLogEvents to log group '{group}' refused: {why} (identity: {identity})");
            }
            Failure::Transient(why) => {
                tracing::warn!(output = %output, group = %group, stream = %stream, attempt, "PutLogEvents failed: {why}");
            }
            Failure::Missing => {
                tracing::warn!(output = %output, group = %group, stream = %stream, attempt, "PutLogEvents failed: the group or stream is missing");
            }
        }
        if shared.retry_limit.is_some_and(|limit| attempt >= limit) {
            m.retries_failed.add(1);
            shared.health.retry_failure();
            tracing::error!(output = %output, group = %group, stream = %stream, "[engine] {count} records cannot be retried (Retry_Limit reached): dropped");
            return origins;
        }
        let wait = shared.backoff.delay(attempt);
        attempt += 1;
        m.retries.add(1);
        m.retried_records.add(count as u64);
        tokio::time::sleep(wait).await;
    }
}

/// Counts and logs the events CloudWatch refused in a successful call.
fn rejected(
    shared: &Shared,
    group: &str,
    stream: &str,
    origins: &[u32],
    info: Option<&aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo>,
) -> Vec<u32> {
    let Some(info) = info else {
        return Vec::new();
    };
    let n = origins.len();
    let (too_old, expired, too_new_from) = rejected_ranges(n, info);
    let old = too_old.max(expired).min(too_new_from);
    let mut given_up: Vec<u32> = origins[..old].to_vec();
    given_up.extend_from_slice(&origins[too_new_from..]);
    if !given_up.is_empty() {
        shared.metrics.events_rejected.add(given_up.len() as u64);
        tracing::error!(output = %shared.instance, group = %group, stream = %stream,
            "CloudWatch rejected {} events: {} too old, {} expired, {} too new (more than 14 days / the retention period old, or more than 2 hours ahead)",
            given_up.len(), too_old, expired, n - too_new_from);
    }
    given_up
}

/// `(too old, expired, first too new)`: events `[..too_old]`, `[..expired]` and
/// `[too_new_from..]` were refused. End indexes are exclusive (as documented); a reported end
/// index names at least one event (moto reports the last refused index itself).
fn rejected_ranges(
    n: usize,
    info: &aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo,
) -> (usize, usize, usize) {
    let end = |i: Option<i32>| i.map_or(0, |i| (i.max(1) as usize).min(n));
    (
        end(info.too_old_log_event_end_index()),
        end(info.expired_log_event_end_index()),
        info.too_new_log_event_start_index()
            .map_or(n, |i| (i.max(0) as usize).min(n)),
    )
}

/// Creates the stream, and the group first when it is missing and `auto_create_group` is on
/// (then its retention once, when `log_retention_days` is set).
async fn create_stream(shared: &Shared, group: &str, stream: &str) -> Result<(), Failure> {
    if !shared.groups.auto_create_stream {
        return Err(Failure::Permanent(format!(
            "log stream '{stream}' does not exist in log group '{group}' and auto_create_stream is off"
        )));
    }
    for _ in 0..2 {
        let created = shared
            .client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await;
        match created {
            Ok(_) => {
                tracing::info!(output = %shared.instance, group = %group, stream = %stream, "created log stream");
                return Ok(());
            }
            Err(e) if is_code(&e, "ResourceAlreadyExistsException") => return Ok(()),
            Err(e) => match classify(&e) {
                Failure::Missing => create_group(shared, group).await?,
                f => return Err(f),
            },
        }
    }
    Err(Failure::Transient(format!(
        "log group '{group}' still missing after creating it"
    )))
}

async fn create_group(shared: &Shared, group: &str) -> Result<(), Failure> {
    let settings = &shared.groups;
    if !settings.auto_create_group {
        return Err(Failure::Permanent(format!(
            "log group '{group}' does not exist and auto_create_group is off"
        )));
    }
    let mut request = shared
        .client
        .create_log_group()
        .log_group_name(group)
        .set_log_group_class(settings.class.clone());
    for (k, v) in &settings.tags {
        request = request.tags(k, v);
    }
    match request.send().await {
        Ok(_) => tracing::info!(output = %shared.instance, group = %group, "created log group"),
        Err(e) if is_code(&e, "ResourceAlreadyExistsException") => return Ok(()),
        Err(e) => return Err(classify(&e)),
    }
    if let Some(days) = settings.retention_days {
        let set = shared
            .client
            .put_retention_policy()
            .log_group_name(group)
            .retention_in_days(days)
            .send()
            .await;
        match set {
            Ok(_) => {
                tracing::info!(output = %shared.instance, group = %group, "set retention policy to {days} days")
            }
            Err(e) => {
                tracing::error!(output = %shared.instance, group = %group, identity = %shared.identity, "could not set the retention policy to {days} days: {}", DisplayErrorContext(&e))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_names_are_sanitized_and_fall_back_to_defaults() {
        let naming = Naming {
            group: Some(Template::go("/aws/$(app)#x").unwrap()),
            group_fallback: "fluentbit-default".into(),
            stream: Some(Template::go("$(tag):$(missing)").unwrap()),
            stream_fallback: StreamFallback::Name("/fluentbit-default".into()),
            sanitize: true,
        };
        let mut record = Map::default();
        record.push(bytes::Bytes::from_static(b"app"), Value::str("shop 1"));
        let (mut key, mut scratch) = (String::new(), String::new());
        let fell_back = naming.resolve(
            &mut key,
            &mut scratch,
            "a.b",
            &record,
            &NameContext::default(),
        );
        assert_eq!(key, "/aws/shop.1.x\0/fluentbit-default");
        assert_eq!(fell_back, 1);
    }

    #[test]
    fn log_key_sends_the_value_and_json_otherwise() {
        let mut record = Map::default();
        record.push(
            bytes::Bytes::from_static(b"log"),
            Value::str("  plain \"line\"\n"),
        );
        record.push(bytes::Bytes::from_static(b"n"), Value::Int(3));
        let scratch = &mut Vec::new();
        let json = MessageFormat {
            log_key: None,
            trim: false,
        };
        assert_eq!(
            json.encode(&record, scratch).unwrap(),
            r#"{"log":"  plain \"line\"\n","n":3}"#
        );
        let c = MessageFormat {
            log_key: Some(b"log".to_vec()),
            trim: false,
        };
        assert_eq!(c.encode(&record, scratch).unwrap(), "  plain \"line\"\n");
        let go = MessageFormat {
            log_key: Some(b"log".to_vec()),
            trim: true,
        };
        assert_eq!(go.encode(&record, scratch).unwrap(), "plain \"line\"");
        let n = MessageFormat {
            log_key: Some(b"n".to_vec()),
            trim: false,
        };
        assert_eq!(n.encode(&record, scratch).unwrap(), "3");
        let missing = MessageFormat {
            log_key: Some(b"nope".to_vec()),
            trim: false,
        };
        assert_eq!(missing.encode(&record, scratch), None);
    }

    #[test]
    fn rejected_event_ranges() {
        use aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo;
        let info = RejectedLogEventsInfo::builder()
            .too_old_log_event_end_index(2)
            .too_new_log_event_start_index(8)
            .build();
        assert_eq!(rejected_ranges(10, &info), (2, 0, 8));
        let info = RejectedLogEventsInfo::builder()
            .expired_log_event_end_index(0)
            .build();
        assert_eq!(rejected_ranges(10, &info), (0, 1, 10));
        let info = RejectedLogEventsInfo::builder()
            .too_new_log_event_start_index(20)
            .build();
        assert_eq!(rejected_ranges(3, &info), (0, 0, 3));
    }

    #[test]
    fn answers_are_brief() {
        assert_eq!(
            answer(400, "InvalidParameterException", Some("bad"), None),
            "HTTP 400 InvalidParameterException: bad"
        );
        let xml = b"<ErrorResponse><Error><Code>AccessDenied</Code><Message>User x is not authorized</Message></Error></ErrorResponse>";
        assert_eq!(
            answer(403, "", None, Some(xml)),
            "HTTP 403: User x is not authorized"
        );
        assert_eq!(answer(502, "", None, Some(b"")), "HTTP 502");
    }

    #[test]
    fn tags_parse_as_the_go_plugin_does() {
        assert_eq!(
            parse_tags(" team = a ,, =x,env=prod,flag"),
            vec![
                ("team".into(), "a".into()),
                ("env".into(), "prod".into()),
                ("flag".into(), String::new())
            ]
        );
    }
}
