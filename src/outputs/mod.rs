//! Outputs and the runner that drives them: batching what is queued, retrying with Fluent Bit's
//! full-jitter backoff (`scheduler.base`/`scheduler.cap`, `Retry_Limit`), and settling claims.
//!
//! Invariant 1: a claim is settled as delivered only after the plugin's `write` returned Ok (for
//! `file`, after fsync). A batch that exhausts `Retry_Limit` is settled as dropped, counted in
//! `retries_failed`/`dropped_records` and logged with Fluent Bit's "cannot be retried" line —
//! except for object-store outputs: there `Retry_Limit` governs uploads (which are retried from
//! the spool until delivered), and a failed write into the local spool (a full or failing disk)
//! is retried until it succeeds, holding the input back, never dropped.
//! Invariant 2: the runner blocks on a failing batch (no unbounded retry queue); the inputs'
//! byte budgets then fill and reading pauses.

pub mod azure_blob;
pub mod cloudwatch;
pub mod file;
pub mod format;
pub mod forward;
pub mod gcs;
pub mod objectstore;
pub mod s3;
pub mod stdout;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigError, Props};
use crate::engine::metrics::{HealthWindow, OutputMetrics};
use crate::engine::Delivery;
use crate::record::Event;

pub enum OutputPlugin {
    Null,
    Stdout(stdout::Stdout),
    File(file::FileOut),
    Forward(Box<forward::ForwardOut>),
    ObjectStore(Box<objectstore::ObjectStoreOutput>),
    CloudWatch(Box<cloudwatch::CloudWatchOutput>),
}

/// What a successful write settled: every record, or all but some given up (counted and logged
/// by the plugin), as a count per batch in the order the batches were given.
pub enum Written {
    All,
    Partly(Vec<usize>),
}

impl Written {
    fn given_up(&self, batch: usize) -> usize {
        match self {
            Written::All => 0,
            Written::Partly(n) => n[batch],
        }
    }
}

impl OutputPlugin {
    pub fn build(
        name: &str,
        instance: &str,
        p: &Props,
        service: &crate::engine::ServiceConfig,
    ) -> Result<Self, ConfigError> {
        Ok(match name {
            "null" => OutputPlugin::Null,
            "stdout" => OutputPlugin::Stdout(stdout::Stdout::from_props(p)?),
            "file" => OutputPlugin::File(file::FileOut::from_props(p)?),
            "forward" => {
                OutputPlugin::Forward(Box::new(forward::ForwardOut::from_props(p, instance)?))
            }
            "azure_blob" => OutputPlugin::ObjectStore(Box::new(azure_blob::build(
                p,
                instance,
                service.storage_path.as_deref(),
                service.backoff,
            )?)),
            "s3" => OutputPlugin::ObjectStore(Box::new(s3::build(
                p,
                instance,
                service.storage_path.as_deref(),
                service.backoff,
            )?)),
            "gcs" => OutputPlugin::ObjectStore(Box::new(gcs::build(
                p,
                instance,
                service.storage_path.as_deref(),
                service.backoff,
            )?)),
            "cloudwatch_logs" | "cloudwatch" => {
                let flavour = if name == "cloudwatch" {
                    cloudwatch::Flavour::Go
                } else {
                    cloudwatch::Flavour::FluentBit
                };
                OutputPlugin::CloudWatch(Box::new(cloudwatch::build(
                    p,
                    instance,
                    flavour,
                    service.backoff,
                )?))
            }
            other => {
                let prop = p.prop("name").expect("name checked by the caller");
                return Err(ConfigError::key(
                    prop,
                    format!("unknown output plugin '{other}' (null, stdout, file, forward, s3, gcs, cloudwatch_logs, cloudwatch)"),
                ));
            }
        })
    }

    /// Starts background work (the object-store uploader) or clients (CloudWatch).
    async fn start(
        &mut self,
        metrics: &Arc<OutputMetrics>,
        health: &Arc<HealthWindow>,
        hard_stop: &watch::Receiver<bool>,
    ) {
        match self {
            OutputPlugin::ObjectStore(o) => {
                o.start(metrics.clone(), health.clone(), hard_stop.clone())
                    .await
            }
            OutputPlugin::CloudWatch(c) => c.start(metrics.clone(), health.clone()).await,
            _ => {}
        }
    }

    /// Shutdown after the queue drained: object stores upload what they spooled.
    async fn finish(&mut self) {
        if let OutputPlugin::ObjectStore(o) = self {
            o.finish().await;
        }
    }

    /// Whether a failed write is retried without limit instead of dropped at `Retry_Limit`.
    fn never_drops(&self) -> bool {
        matches!(self, OutputPlugin::ObjectStore(_))
    }

    /// Writes every batch; Ok means the destination has them durably. Plugins that write to
    /// local files or the spool do so on a blocking section of the runtime; network plugins
    /// await their peers.
    async fn write(&mut self, batches: &[(&str, &[Event])]) -> std::io::Result<Written> {
        use tokio::task::block_in_place;
        match self {
            OutputPlugin::Null => Ok(()),
            OutputPlugin::Stdout(s) => block_in_place(|| s.write(batches)),
            OutputPlugin::File(f) => block_in_place(|| f.write(batches)),
            OutputPlugin::Forward(f) => f.write(batches).await,
            OutputPlugin::ObjectStore(o) => block_in_place(|| o.write(batches)),
            OutputPlugin::CloudWatch(c) => return c.write(batches).await,
        }
        .map(|()| Written::All)
    }
}

/// `Retry_Limit` when a section does not set it. Fluent Bit's is 1 for every output; logferry
/// keeps that for local outputs, but the network outputs (`forward`, `cloudwatch_logs`,
/// `cloudwatch`) retry until delivered by default: their records were acknowledged to nobody
/// yet, and dropping them after one retry would lose them on any outage longer than a few
/// seconds. An explicit `Retry_Limit` is honoured (counted, logged drops).
pub fn default_retry_limit(plugin: &str) -> Option<u32> {
    match plugin {
        "forward" | "cloudwatch_logs" | "cloudwatch" => None,
        _ => Some(1),
    }
}

/// `Retry_Limit`: a count, `no_limits`/`false`/`off` (unlimited) or `no_retries` (0).
/// `default` applies when the key is absent ([`default_retry_limit`]; `s3` uses 5, as Fluent
/// Bit does).
pub fn parse_retry_limit(p: &Props, default: Option<u32>) -> Result<Option<u32>, ConfigError> {
    let Some(prop) = p.prop("retry_limit") else {
        return Ok(default);
    };
    match prop.value.to_ascii_lowercase().as_str() {
        "no_limits" | "false" | "off" => Ok(None),
        "no_retries" => Ok(Some(0)),
        v => match v.parse::<i64>() {
            Ok(n) if n > 0 => Ok(Some(n as u32)),
            Ok(_) => Ok(Some(1)),
            Err(_) => Err(ConfigError::key(
                prop,
                "expected a number, no_limits or no_retries",
            )),
        },
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: u64,
    pub cap: u64,
}

/// When a failed attempt is tried again: `Retry_Limit` and the backoff.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub limit: Option<u32>,
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// The wait before trying again after failed attempt number `attempt` (0-based), or None
    /// when `Retry_Limit` is reached.
    pub fn after_failure(&self, attempt: u32) -> Option<Duration> {
        self.limit
            .is_none_or(|limit| attempt < limit)
            .then(|| self.backoff.delay(attempt))
    }
}

impl Backoff {
    /// Full jitter: random in [base, min(cap, base·2^attempt)] seconds.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u64 << attempt.min(30))
            .min(self.cap)
            .max(self.base);
        Duration::from_secs(rand::rng().random_range(self.base..=ceiling))
    }
}

pub struct OutputRunner {
    pub plugin: OutputPlugin,
    pub metrics: Arc<OutputMetrics>,
    pub health: Arc<HealthWindow>,
    pub retry: RetryPolicy,
}

/// Upper bound on the source bytes one write gathers from the queue.
const MAX_GATHER_BYTES: u64 = 4 * 1024 * 1024;

impl OutputRunner {
    /// Runs until the queue closes and is drained, or until `hard_stop` (Grace expired).
    pub async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Delivery>,
        mut hard_stop: watch::Receiver<bool>,
    ) {
        let name = self.metrics.name.clone();
        self.plugin
            .start(&self.metrics, &self.health, &hard_stop)
            .await;
        loop {
            let next = tokio::select! {
                d = queue.recv() => d,
                _ = hard_stop.wait_for(|s| *s) => return,
            };
            let Some(first) = next else {
                self.plugin.finish().await;
                return;
            };
            let mut pending = vec![first];
            let mut records = pending[0].batch.events.len();
            let mut bytes = pending[0].batch.raw_bytes;
            while bytes < MAX_GATHER_BYTES {
                match queue.try_recv() {
                    Ok(d) => {
                        records += d.batch.events.len();
                        bytes += d.batch.raw_bytes;
                        pending.push(d);
                    }
                    Err(_) => break,
                }
            }
            let mut attempt = 0u32;
            loop {
                let views: Vec<(&str, &[Event])> = pending
                    .iter()
                    .map(|d| (&*d.batch.tag, d.batch.events.as_slice()))
                    .collect();
                // A write that is still waiting on its peer when Grace ends is abandoned: its
                // claims stay unsettled, so the records are not committed (read or sent again).
                let result = tokio::select! {
                    r = self.plugin.write(&views) => r,
                    _ = hard_stop.wait_for(|s| *s) => {
                        tracing::warn!(output = %name, "grace period over during a write: {records} records stay unacknowledged and will be read again on restart");
                        return;
                    }
                };
                match result {
                    Ok(written) => {
                        for (i, d) in pending.into_iter().enumerate() {
                            let given_up = written.given_up(i);
                            let n = d.batch.events.len();
                            self.metrics.proc_records.add((n - given_up) as u64);
                            // Bytes in proportion to the records taken.
                            self.metrics
                                .proc_bytes
                                .add(d.batch.raw_bytes * (n - given_up) as u64 / n.max(1) as u64);
                            if given_up == 0 {
                                d.claim.delivered();
                            } else {
                                self.metrics.dropped_records.add(given_up as u64);
                                d.claim.dropped();
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        self.metrics.errors.add(1);
                        self.health.error();
                        let retry = if self.plugin.never_drops() {
                            Some(self.retry.backoff.delay(attempt))
                        } else {
                            self.retry.after_failure(attempt)
                        };
                        if let Some(wait) = retry {
                            attempt += 1;
                            self.metrics.retries.add(1);
                            self.metrics.retried_records.add(records as u64);
                            tracing::warn!(output = %name, error = %e, "[engine] failed to flush {records} records, retry in {} seconds", wait.as_secs());
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = hard_stop.wait_for(|s| *s) => {
                                    tracing::warn!(output = %name, "grace period over: {records} undelivered records stay unacknowledged and will be read again on restart");
                                    return;
                                }
                            }
                        } else {
                            self.metrics.retries_failed.add(1);
                            self.metrics.dropped_records.add(records as u64);
                            self.health.retry_failure();
                            tracing::error!(output = %name, error = %e, "[engine] {records} records cannot be retried (Retry_Limit reached): dropped");
                            pending.into_iter().for_each(|d| d.claim.dropped());
                            break;
                        }
                    }
                }
            }
        }
    }
}
