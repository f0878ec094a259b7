//! Counters behind `/api/v1/metrics` and the Prometheus endpoints, named as Fluent Bit names them.
//!
//! Invariant 4 (honest metrics): output counters move only when a destination acknowledged
//! (`proc_records`) or when records were given up (`dropped_records`, with a log line).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct InputMetrics {
    pub name: String,
    pub records: Counter,
    pub bytes: Counter,
    pub paused: Gauge,
    pub files_opened: Counter,
    pub files_closed: Counter,
    pub files_rotated: Counter,
    pub long_line_skipped: Counter,
    pub long_line_truncated: Counter,
    pub multiline_truncated: Counter,
    /// logferry: bytes present in tracked files and not yet read.
    pub lag_bytes: Gauge,
    /// logferry: files currently open.
    pub files_tracked: Gauge,
    /// logferry: rotated files closed at `Rotated_Files_Max`, waiting to be read on.
    pub rotated_parked: Gauge,
    /// logferry: unread bytes of parked rotated files deleted before they could be reopened.
    pub rotated_lost_bytes: Counter,
    /// logferry: bytes read from compressed rotated copies (the kubelet gzipped a file while the
    /// agent was down).
    pub compressed_recovered_bytes: Counter,
    /// logferry: offsets DB files found damaged and moved aside.
    pub db_resets: Counter,
    /// logferry: forward connections closed for bad input (garbage, oversized or truncated
    /// frames, unknown modes, failed handshakes).
    pub forward_rejected: Counter,
}

#[derive(Debug, Default)]
pub struct FilterMetrics {
    pub name: String,
    /// The plugin (`grep`, `kubernetes`, …): which families apply.
    pub plugin: String,
    pub records: Counter,
    pub drop_records: Counter,
    pub added_records: Counter,
    /// `kubernetes`: records passed without pod metadata (pod not found in time).
    pub kubernetes_meta_missing: Counter,
    /// `kubernetes`: requests made to the API server or kubelet.
    pub kubernetes_api_requests: Counter,
}

#[derive(Debug, Default)]
pub struct OutputMetrics {
    pub name: String,
    pub proc_records: Counter,
    pub proc_bytes: Counter,
    pub errors: Counter,
    pub retries: Counter,
    pub retries_failed: Counter,
    pub dropped_records: Counter,
    pub retried_records: Counter,
    /// logferry: records and (stored, possibly compressed) bytes confirmed by an object store.
    pub uploaded_records: Counter,
    pub uploaded_bytes: Counter,
    /// logferry: bytes held by an object-store output's spool, and the age in seconds of the
    /// oldest of them.
    pub spool_bytes: Gauge,
    pub spool_oldest_age: Gauge,
    /// logferry: bytes cut from damaged spool chunks at recovery (torn last records).
    pub spool_damaged_bytes: Counter,
    /// logferry: 1 while the output's store refuses it permanently (credentials, permissions,
    /// a missing bucket); health fails while any output reports it.
    pub store_failing: Gauge,
    /// Set by object-store outputs at start: their upload and spool series are exported.
    pub object_store: std::sync::atomic::AtomicBool,
    /// logferry (CloudWatch outputs): events cut to CloudWatch's event size limit.
    pub events_truncated: Counter,
    /// logferry (CloudWatch outputs): events not accepted: refused by the service (too old,
    /// too new, expired) or not sendable (no `log_key`, empty). Also in `dropped_records`.
    pub events_rejected: Counter,
    /// Set by CloudWatch outputs at start: their event series are exported.
    pub cloudwatch: std::sync::atomic::AtomicBool,
}

impl OutputMetrics {
    pub fn is_object_store(&self) -> bool {
        self.object_store.load(Ordering::Relaxed)
    }
}

/// Error and retry-failure events over the last `HC_Period`, for the health endpoints.
#[derive(Debug)]
pub struct HealthWindow {
    pub errors_limit: u64,
    pub retry_failure_limit: u64,
    pub period: Duration,
    events: Mutex<VecDeque<(Instant, bool)>>,
}

impl HealthWindow {
    pub fn new(errors_limit: u64, retry_failure_limit: u64, period: Duration) -> Self {
        HealthWindow {
            errors_limit,
            retry_failure_limit,
            period,
            events: Mutex::new(VecDeque::new()),
        }
    }

    fn record(&self, retry_failure: bool) {
        let mut ev = self.events.lock().expect("health lock");
        ev.push_back((Instant::now(), retry_failure));
        while ev.len() > 100_000 {
            ev.pop_front();
        }
    }
    pub fn error(&self) {
        self.record(false)
    }
    pub fn retry_failure(&self) {
        self.record(true)
    }

    /// (errors, retry failures) within the period.
    pub fn counts(&self) -> (u64, u64) {
        let mut ev = self.events.lock().expect("health lock");
        let horizon = Instant::now().checked_sub(self.period);
        while let (Some(front), Some(h)) = (ev.front(), horizon) {
            if front.0 < h {
                ev.pop_front();
            } else {
                break;
            }
        }
        let failures = ev.iter().filter(|e| e.1).count() as u64;
        (ev.len() as u64 - failures, failures)
    }

    pub fn healthy(&self) -> bool {
        let (errors, failures) = self.counts();
        errors <= self.errors_limit && failures <= self.retry_failure_limit
    }
}

#[derive(Debug)]
pub struct Registry {
    pub started: Instant,
    pub started_unix: u64,
    pub inputs: Vec<Arc<InputMetrics>>,
    pub filters: Vec<Arc<FilterMetrics>>,
    pub outputs: Vec<Arc<OutputMetrics>>,
    pub health: Arc<HealthWindow>,
    pub health_check: bool,
}

impl Registry {
    pub fn new(health: Arc<HealthWindow>, health_check: bool) -> Self {
        Registry {
            started: Instant::now(),
            started_unix: crate::record::EventTime::now().sec as u64,
            inputs: Vec::new(),
            filters: Vec::new(),
            outputs: Vec::new(),
            health,
            health_check,
        }
    }
}
