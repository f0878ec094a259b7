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
mod config;
mod naming;
mod send;
mod template;

pub use config::build;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;

use self::batch::Prepared;
use self::naming::{NameContext, Naming};
use self::send::{deliver, GroupSettings, Shared};
use super::Written;
use crate::cloud::aws::AwsIdentity;
use crate::engine::metrics::{HealthWindow, OutputMetrics};
use crate::record::{Event, Map, Value};

/// Which plugin's conventions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// `cloudwatch_logs`
    FluentBit,
    /// `cloudwatch` (Go)
    Go,
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
        // The word-at-a-time check first (what the JSON writer makes is valid UTF-8); the
        // lossy conversion walks bytes one by one.
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        };
        Some(if self.trim {
            text.trim().to_string()
        } else {
            text.into_owned()
        })
    }
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
    retry: crate::outputs::RetryPolicy,
    /// `ECS_CONTAINER_METADATA_URI_V4` (or the v3 variable the Go plugin reads) when a template
    /// uses `$(ecs_*)`.
    ecs_endpoint: Option<Result<String, String>>,
    groups: Option<GroupSettings>,
    names: NameContext,
    shared: Option<Arc<Shared>>,
}

impl CloudWatchOutput {
    pub async fn start(&mut self, metrics: Arc<OutputMetrics>, health: Arc<HealthWindow>) {
        metrics
            .cloudwatch
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(g) = self
            .groups
            .as_ref()
            .filter(|g| g.class.is_some() && !g.auto_create_group)
        {
            tracing::warn!(output = %self.instance, class = ?g.class, "log_group_class applies only to log groups logferry creates, and auto_create_group is off");
        }
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
            retry: self.retry,
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
        let meta = crate::cloud::ecs::task_metadata(&base)
            .await
            .map_err(fail)?;
        tracing::info!(output = %self.instance, cluster = %meta.cluster, task_id = %meta.task_id, "ECS task metadata read");
        self.names.ecs = Some(meta);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
