//! The monitoring API on Fluent Bit's paths, so probes, dashboards and alerts keep working:
//! `/`, `/api/v1/uptime`, `/api/v1/health`, `/api/v2/health`, `/api/v1/metrics`,
//! `/api/v1/metrics/prometheus`, `/api/v2/metrics/prometheus`, `/api/v2/reload` (Fluent Bit metric names, plus
//! logferry's own `logferry_input_lag_bytes`, `logferry_input_files_tracked`, the parked
//! rotated files, and the object-store outputs' uploads and spools).

use std::fmt::Write;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::engine::metrics::Registry;
use crate::engine::reload::{ReloadHandle, Trigger};
use crate::engine::ServiceConfig;

/// What the handlers see: the running pipeline's registry (replaced on reload) and the reload
/// state.
#[derive(Clone)]
struct AppState {
    registry: Arc<RwLock<Arc<Registry>>>,
    reload: ReloadHandle,
}

impl AppState {
    fn registry(&self) -> Arc<Registry> {
        self.registry.read().expect("registry lock").clone()
    }
}

/// The HTTP server: started once and kept across hot reloads (restarted only when the new
/// config moves it to another address or turns it off).
pub struct HttpServer {
    state: AppState,
    running: Option<(String, tokio::task::JoinHandle<()>)>,
}

impl HttpServer {
    pub fn new(registry: Arc<Registry>, reload: ReloadHandle) -> HttpServer {
        HttpServer {
            state: AppState {
                registry: Arc::new(RwLock::new(registry)),
                reload,
            },
            running: None,
        }
    }

    /// Serves `registry` as the config says (`HTTP_Server`, `HTTP_Listen`, `HTTP_Port`).
    pub async fn serve(
        &mut self,
        service: &ServiceConfig,
        registry: Arc<Registry>,
    ) -> anyhow::Result<()> {
        *self.state.registry.write().expect("registry lock") = registry;
        let addr = format!("{}:{}", service.http_listen, service.http_port);
        let wanted = service.http_server.then_some(addr);
        if self.running.as_ref().map(|(a, _)| a) == wanted.as_ref() {
            return Ok(());
        }
        if let Some((_, task)) = self.running.take() {
            task.abort();
            let _ = task.await;
        }
        let Some(addr) = wanted else {
            return Ok(());
        };
        let app = Router::new()
            .route("/", get(root))
            .route("/api/v1/uptime", get(uptime))
            .route("/api/v1/health", get(health_v1))
            .route("/api/v2/health", get(health_v2))
            .route("/api/v1/metrics", get(metrics_json))
            .route("/api/v1/metrics/prometheus", get(prometheus))
            .route("/api/v2/metrics/prometheus", get(prometheus))
            .route("/api/v2/metrics", get(prometheus))
            .route(
                "/api/v2/reload",
                get(reload_status).post(reload).put(reload),
            )
            .with_state(self.state.clone());
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("HTTP server: cannot listen on {addr}: {e}"))?;
        tracing::info!("HTTP server listening on {addr}");
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        });
        self.running = Some((addr, task));
        Ok(())
    }
}

/// Fluent Bit's answers: `{"reload":"done","status":0}`, `{"reload":"not enabled","status":-1}`,
/// `{"reload":"in progress","status":-2}` (400).
async fn reload(State(s): State<AppState>) -> Response {
    let r = &s.reload;
    if !r.enabled {
        return axum::Json(json!({"reload": "not enabled", "status": -1})).into_response();
    }
    if r.in_progress.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"reload": "in progress", "status": -2})),
        )
            .into_response();
    }
    r.request(Trigger::Http);
    axum::Json(json!({"reload": "done", "status": 0})).into_response()
}

async fn reload_status(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(
        json!({"hot_reload_count": s.reload.count.load(std::sync::atomic::Ordering::SeqCst)}),
    )
}

async fn root() -> impl IntoResponse {
    axum::Json(json!({
        "fluent-bit": {"version": "5.1.1", "edition": "Community", "flags": []},
        "logferry": {"version": env!("CARGO_PKG_VERSION")}
    }))
}

async fn uptime(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.registry();
    let secs = r.started.elapsed().as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    axum::Json(json!({
        "uptime_sec": secs,
        "uptime_hr": format!("Fluent Bit has been running:  {d} day{}, {h} hour{}, {m} minute{} and {s} second{}",
            if d == 1 { "" } else { "s" }, if h == 1 { "" } else { "s" }, if m == 1 { "" } else { "s" }, if s == 1 { "" } else { "s" })
    }))
}

/// Fluent Bit's rule (errors and retry failures within `HC_Period`, when `Health_Check` is on),
/// and, always, no object store refusing its output permanently (credentials, bucket).
fn healthy(r: &Registry) -> bool {
    (!r.health_check || r.health.healthy()) && r.outputs.iter().all(|o| o.store_failing.get() == 0)
}

async fn health_v1(State(s): State<AppState>) -> Response {
    let r = s.registry();
    if healthy(&r) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "error\n").into_response()
    }
}

async fn health_v2(State(s): State<AppState>) -> Response {
    let r = s.registry();
    let (errors, failures) = r.health.counts();
    let ok = healthy(&r);
    let body = json!({
        "status": if ok { "ok" } else { "error" },
        "errors": errors,
        "retries_failed": failures,
        "error_limit": r.health.errors_limit,
        "retry_failure_limit": r.health.retry_failure_limit,
        "period_limit": r.health.period.as_secs(),
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        },
        axum::Json(body),
    )
        .into_response()
}

async fn metrics_json(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.registry();
    let mut input = serde_json::Map::new();
    for i in &r.inputs {
        let mut m = json!({"records": i.records.get(), "bytes": i.bytes.get()});
        if i.files_opened.get() > 0 || i.name.starts_with("tail") {
            m["files_opened"] = json!(i.files_opened.get());
            m["files_closed"] = json!(i.files_closed.get());
            m["files_rotated"] = json!(i.files_rotated.get());
        }
        input.insert(i.name.clone(), m);
    }
    let mut filter = serde_json::Map::new();
    for f in &r.filters {
        filter.insert(f.name.clone(), json!({"drop_records": f.drop_records.get(), "add_records": f.added_records.get(), "records": f.records.get()}));
    }
    let mut output = serde_json::Map::new();
    for o in &r.outputs {
        output.insert(o.name.clone(), json!({
            "proc_records": o.proc_records.get(), "proc_bytes": o.proc_bytes.get(), "errors": o.errors.get(),
            "retries": o.retries.get(), "retries_failed": o.retries_failed.get(),
            "dropped_records": o.dropped_records.get(), "retried_records": o.retried_records.get()
        }));
    }
    axum::Json(json!({"input": input, "filter": filter, "output": output}))
}

async fn prometheus(State(s): State<AppState>) -> impl IntoResponse {
    let r = s.registry();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render_prometheus(&r, s.reload.count.load(std::sync::atomic::Ordering::SeqCst)),
    )
}

pub fn render_prometheus(r: &Registry, reloads: u64) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, i64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (label, v) in rows {
            let _ = writeln!(out, "{name}{{name=\"{label}\"}} {v}");
        }
    };
    let ins = |f: &dyn Fn(&crate::engine::metrics::InputMetrics) -> i64| {
        r.inputs
            .iter()
            .map(|i| (i.name.clone(), f(i)))
            .collect::<Vec<_>>()
    };
    family(
        "fluentbit_input_records_total",
        "counter",
        "Number of input records.",
        ins(&|i| i.records.get() as i64),
    );
    family(
        "fluentbit_input_bytes_total",
        "counter",
        "Number of input bytes.",
        ins(&|i| i.bytes.get() as i64),
    );
    family(
        "fluentbit_input_ingestion_paused",
        "gauge",
        "Is the input paused or not?",
        ins(&|i| i.paused.get()),
    );
    let tails: Vec<_> = r
        .inputs
        .iter()
        .filter(|i| i.files_opened.get() > 0 || i.name.starts_with("tail"))
        .cloned()
        .collect();
    let tail_rows = |f: &dyn Fn(&crate::engine::metrics::InputMetrics) -> i64| {
        tails
            .iter()
            .map(|i| (i.name.clone(), f(i)))
            .collect::<Vec<_>>()
    };
    family(
        "fluentbit_input_files_opened_total",
        "counter",
        "Total number of opened files",
        tail_rows(&|i| i.files_opened.get() as i64),
    );
    family(
        "fluentbit_input_files_closed_total",
        "counter",
        "Total number of closed files",
        tail_rows(&|i| i.files_closed.get() as i64),
    );
    family(
        "fluentbit_input_files_rotated_total",
        "counter",
        "Total number of rotated files",
        tail_rows(&|i| i.files_rotated.get() as i64),
    );
    // The tcp input counts records over Buffer_Size here too.
    family(
        "fluentbit_input_long_line_skipped_total",
        "counter",
        "Total number of skipped long lines",
        tails
            .iter()
            .chain(r.inputs.iter().filter(|i| i.name.starts_with("tcp")))
            .map(|i| (i.name.clone(), i.long_line_skipped.get() as i64))
            .collect(),
    );
    family(
        "fluentbit_input_long_line_truncated_total",
        "counter",
        "Total number of truncated long lines",
        tail_rows(&|i| i.long_line_truncated.get() as i64),
    );
    family(
        "fluentbit_input_multiline_truncated_total",
        "counter",
        "Total number of truncated multiline records",
        tail_rows(&|i| i.multiline_truncated.get() as i64),
    );
    family(
        "logferry_input_lag_bytes",
        "gauge",
        "Bytes in tracked files not read yet.",
        tail_rows(&|i| i.lag_bytes.get()),
    );
    family(
        "logferry_input_files_tracked",
        "gauge",
        "Files currently followed.",
        tail_rows(&|i| i.files_tracked.get()),
    );
    family(
        "logferry_input_rotated_parked",
        "gauge",
        "Rotated files closed at Rotated_Files_Max, waiting to be read on.",
        tail_rows(&|i| i.rotated_parked.get()),
    );
    family(
        "logferry_input_rotated_lost_bytes_total",
        "counter",
        "Unread bytes of parked rotated files deleted before they could be reopened.",
        tail_rows(&|i| i.rotated_lost_bytes.get() as i64),
    );
    family(
        "logferry_input_compressed_recovered_bytes_total",
        "counter",
        "Bytes read from compressed rotated copies of files rotated while logferry was down.",
        tail_rows(&|i| i.compressed_recovered_bytes.get() as i64),
    );
    family(
        "logferry_input_db_resets_total",
        "counter",
        "Damaged offsets DB files moved aside (their files are read again from the head).",
        tail_rows(&|i| i.db_resets.get() as i64),
    );
    family(
        "logferry_input_forward_rejected_total",
        "counter",
        "Forward connections closed for bad input (garbage, oversized or truncated frames, unknown modes, failed handshakes).",
        r.inputs
            .iter()
            .filter(|i| i.name.starts_with("forward") || i.forward_rejected.get() > 0)
            .map(|i| (i.name.clone(), i.forward_rejected.get() as i64))
            .collect(),
    );
    let fil = |f: &dyn Fn(&crate::engine::metrics::FilterMetrics) -> i64| {
        r.filters
            .iter()
            .map(|i| (i.name.clone(), f(i)))
            .collect::<Vec<_>>()
    };
    if !r.filters.is_empty() {
        family(
            "fluentbit_filter_records_total",
            "counter",
            "Total number of new records processed.",
            fil(&|f| f.records.get() as i64),
        );
        family(
            "fluentbit_filter_drop_records_total",
            "counter",
            "Fluentbit metrics.",
            fil(&|f| f.drop_records.get() as i64),
        );
        family(
            "fluentbit_filter_add_records_total",
            "counter",
            "Fluentbit metrics.",
            fil(&|f| f.added_records.get() as i64),
        );
        let kube = |f: &dyn Fn(&crate::engine::metrics::FilterMetrics) -> i64| {
            r.filters
                .iter()
                .filter(|i| i.plugin == "kubernetes")
                .map(|i| (i.name.clone(), f(i)))
                .collect::<Vec<_>>()
        };
        family(
            "logferry_filter_kubernetes_meta_missing_total",
            "counter",
            "Records passed without pod metadata: the pod was not found in time (unknown pod, API server unreachable).",
            kube(&|f| f.kubernetes_meta_missing.get() as i64),
        );
        family(
            "logferry_filter_kubernetes_api_requests_total",
            "counter",
            "Requests the kubernetes filter made to the API server or kubelet.",
            kube(&|f| f.kubernetes_api_requests.get() as i64),
        );
    }
    let outs = |f: &dyn Fn(&crate::engine::metrics::OutputMetrics) -> i64| {
        r.outputs
            .iter()
            .map(|o| (o.name.clone(), f(o)))
            .collect::<Vec<_>>()
    };
    family(
        "fluentbit_output_proc_records_total",
        "counter",
        "Number of processed output records.",
        outs(&|o| o.proc_records.get() as i64),
    );
    family(
        "fluentbit_output_proc_bytes_total",
        "counter",
        "Number of processed output bytes.",
        outs(&|o| o.proc_bytes.get() as i64),
    );
    family(
        "fluentbit_output_errors_total",
        "counter",
        "Number of output errors.",
        outs(&|o| o.errors.get() as i64),
    );
    family(
        "fluentbit_output_retries_total",
        "counter",
        "Number of output retries.",
        outs(&|o| o.retries.get() as i64),
    );
    family(
        "fluentbit_output_retries_failed_total",
        "counter",
        "Number of abandoned batches because the maximum number of re-tries was reached.",
        outs(&|o| o.retries_failed.get() as i64),
    );
    family(
        "fluentbit_output_dropped_records_total",
        "counter",
        "Number of dropped records.",
        outs(&|o| o.dropped_records.get() as i64),
    );
    family(
        "fluentbit_output_retried_records_total",
        "counter",
        "Number of retried records.",
        outs(&|o| o.retried_records.get() as i64),
    );
    let stores: Vec<_> = r
        .outputs
        .iter()
        .filter(|o| o.is_object_store())
        .cloned()
        .collect();
    let store_rows = |f: &dyn Fn(&crate::engine::metrics::OutputMetrics) -> i64| {
        stores
            .iter()
            .map(|o| (o.name.clone(), f(o)))
            .collect::<Vec<_>>()
    };
    family(
        "logferry_output_uploaded_records_total",
        "counter",
        "Records the object store confirmed.",
        store_rows(&|o| o.uploaded_records.get() as i64),
    );
    family(
        "logferry_output_uploaded_bytes_total",
        "counter",
        "Bytes (as stored, after compression) the object store confirmed.",
        store_rows(&|o| o.uploaded_bytes.get() as i64),
    );
    family(
        "logferry_output_spool_bytes",
        "gauge",
        "Bytes held in the output's spool (store_dir).",
        store_rows(&|o| o.spool_bytes.get()),
    );
    family(
        "logferry_output_spool_oldest_age_seconds",
        "gauge",
        "Age of the oldest spooled data not yet uploaded.",
        store_rows(&|o| o.spool_oldest_age.get()),
    );
    family(
        "logferry_output_spool_damaged_bytes_total",
        "counter",
        "Bytes cut from damaged spool chunks at recovery.",
        store_rows(&|o| o.spool_damaged_bytes.get() as i64),
    );
    family(
        "logferry_output_store_failing",
        "gauge",
        "1 while the object store refuses the output permanently (credentials, permissions, bucket).",
        store_rows(&|o| o.store_failing.get()),
    );
    let cloudwatch_rows = |f: &dyn Fn(&crate::engine::metrics::OutputMetrics) -> i64| {
        r.outputs
            .iter()
            .filter(|o| o.cloudwatch.load(std::sync::atomic::Ordering::Relaxed))
            .map(|o| (o.name.clone(), f(o)))
            .collect::<Vec<_>>()
    };
    family(
        "logferry_output_cloudwatch_truncated_events_total",
        "counter",
        "Events cut to CloudWatch's 256 KiB event limit.",
        cloudwatch_rows(&|o| o.events_truncated.get() as i64),
    );
    family(
        "logferry_output_cloudwatch_rejected_events_total",
        "counter",
        "Events CloudWatch refused (too old, too new, expired) or that could not be sent (no log_key, empty).",
        cloudwatch_rows(&|o| o.events_rejected.get() as i64),
    );
    let _ = writeln!(out, "# HELP fluentbit_uptime Number of seconds that Fluent Bit has been running.\n# TYPE fluentbit_uptime counter\nfluentbit_uptime {}", r.started.elapsed().as_secs());
    let _ = writeln!(out, "# HELP fluentbit_hot_reloaded_times Number of hot reloads.\n# TYPE fluentbit_hot_reloaded_times gauge\nfluentbit_hot_reloaded_times {reloads}");
    let _ = writeln!(out, "# HELP fluentbit_process_start_time_seconds Start time of the process since unix epoch in seconds.\n# TYPE fluentbit_process_start_time_seconds gauge\nfluentbit_process_start_time_seconds {}", r.started_unix);
    let _ = writeln!(out, "# HELP fluentbit_build_info Build version information.\n# TYPE fluentbit_build_info gauge\nfluentbit_build_info{{version=\"{}\",edition=\"logferry\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}
