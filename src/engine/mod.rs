//! The engine: builds the pipeline from a config (inputs → filters → router → outputs), runs it,
//! and shuts it down with Fluent Bit's `Grace` semantics.
//!
//! Shape: each input runs on its own thread and calls its [`Dispatcher`], which filters a batch,
//! routes it by tag, charges the input's byte budget and hands one [`Delivery`] to each matching
//! output's queue. Outputs run as tasks ([`crate::outputs::OutputRunner`]) and settle their
//! claims; settlement flows back to the input (see [`ack`]) to commit source positions.
//! Shutdown: stop reading → inputs emit what they hold → outputs drain their queues → inputs
//! commit what was acknowledged; whatever is still unsettled when `Grace` ends is left
//! uncommitted and is read again on the next start.

pub mod ack;
pub mod metrics;
pub mod reload;
pub mod router;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{ConfigDocument, ConfigError, Props, Section, SectionKind};
use crate::filters::Filter;
use crate::inputs::{self, InputContext};
use crate::outputs::{self, OutputPlugin, OutputRunner};
use crate::parsers::ParserRegistry;
use crate::record::Event;
pub use ack::{Claim, MemBudget};
use metrics::{FilterMetrics, HealthWindow, InputMetrics, OutputMetrics, Registry};
use router::TagMatcher;

/// Tags whose output routes are cached per input, at most.
const ROUTE_CACHE_MAX: usize = 4096;

/// How long shutdown waits for an output or input that ignores the hard stop after `Grace`.
const HARD_STOP_WAIT: Duration = Duration::from_secs(3);

/// Estimated per-record memory beyond the source bytes (record map, keys, value slots).
pub const RECORD_OVERHEAD: u64 = 320;

/// Records that share a tag, as one input produced them.
#[derive(Debug)]
pub struct EventBatch {
    pub tag: Arc<str>,
    pub events: Vec<Event>,
    /// Source bytes these records came from (input `bytes`, output `proc_bytes`).
    pub raw_bytes: u64,
}

/// One output's copy of a batch.
pub struct Delivery {
    pub batch: Arc<EventBatch>,
    pub claim: Claim,
}

struct OutputPort {
    matcher: TagMatcher,
    queue: mpsc::UnboundedSender<Delivery>,
}

struct FilterStage {
    matcher: TagMatcher,
    filter: Filter,
    metrics: Arc<FilterMetrics>,
}

/// An input's handle on the rest of the pipeline.
pub struct Dispatcher {
    pub metrics: Arc<InputMetrics>,
    pub budget: Arc<MemBudget>,
    filters: Arc<Vec<FilterStage>>,
    outputs: Arc<Vec<OutputPort>>,
    routes: HashMap<Arc<str>, Vec<usize>>,
}

impl Dispatcher {
    /// Filters, routes and queues `events`; `on_settled` runs once every output has them.
    pub fn dispatch(
        &mut self,
        tag: &Arc<str>,
        mut events: Vec<Event>,
        raw_bytes: u64,
        on_settled: Box<dyn FnOnce() + Send>,
    ) {
        self.metrics.records.add(events.len() as u64);
        self.metrics.bytes.add(raw_bytes);
        for stage in self.filters.iter() {
            if !events.is_empty() && stage.matcher.matches(tag) {
                stage.metrics.records.add(events.len() as u64);
                let dropped = stage.filter.apply(tag, &mut events);
                stage.metrics.drop_records.add(dropped as u64);
            }
        }
        let outputs = &self.outputs;
        if self.routes.len() >= ROUTE_CACHE_MAX && !self.routes.contains_key(tag) {
            // Tags come and go with pods: the cache must not grow with every tag ever seen.
            self.routes.clear();
        }
        let route = self.routes.entry(tag.clone()).or_insert_with(|| {
            outputs
                .iter()
                .enumerate()
                .filter(|(_, o)| o.matcher.matches(tag))
                .map(|(i, _)| i)
                .collect()
        });
        if events.is_empty() {
            on_settled();
            return;
        }
        // The budget bounds memory, so charge what the batch costs in memory, not just its source.
        let in_memory = raw_bytes + events.len() as u64 * RECORD_OVERHEAD;
        let claims = Claim::split(route.len(), in_memory, &self.budget, on_settled);
        let batch = Arc::new(EventBatch {
            tag: tag.clone(),
            events,
            raw_bytes,
        });
        for (claim, &i) in claims.into_iter().zip(route.iter()) {
            // A closed queue means the output stopped (shutdown): the claim is dropped unsettled.
            let _ = self.outputs[i].queue.send(Delivery {
                batch: batch.clone(),
                claim,
            });
        }
    }

    pub fn is_full(&self) -> bool {
        self.budget.is_full()
    }
}

/// `[SERVICE]` options.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub flush: Duration,
    pub grace: Duration,
    pub log_level: String,
    pub http_server: bool,
    pub http_listen: String,
    pub http_port: u16,
    pub health_check: bool,
    pub hc_errors_count: u64,
    pub hc_retry_failure_count: u64,
    pub hc_period: Duration,
    pub storage_path: Option<String>,
    pub backoff: outputs::Backoff,
    /// `Hot_Reload` (also `--enable-hot-reload`).
    pub hot_reload: bool,
}

impl ServiceConfig {
    pub fn from_doc(doc: &ConfigDocument) -> Result<Self, ConfigError> {
        let empty = Section {
            kind: SectionKind::Service,
            origin: crate::config::Origin {
                file: Arc::new("<default>".into()),
                line: 0,
            },
            props: Vec::new(),
        };
        let merged = doc.of_kind(SectionKind::Service).fold(empty, |mut acc, s| {
            acc.origin = s.origin.clone();
            acc.props.extend(s.props.iter().cloned());
            acc
        });
        let p = Props::new(&merged);
        let grace = match p.prop("grace") {
            Some(g) if g.value.trim() == "-1" => Duration::from_secs(u32::MAX as u64),
            Some(g) => crate::config::units::parse_duration(&g.value)
                .ok_or_else(|| ConfigError::key(g, "expected seconds or -1"))?,
            None => Duration::from_secs(5),
        };
        let log_level = p.string_or("log_level", "info").to_ascii_lowercase();
        if !["off", "error", "warn", "warning", "info", "debug", "trace"]
            .contains(&log_level.as_str())
        {
            let prop = p.prop("log_level").expect("set");
            return Err(ConfigError::key(
                prop,
                "expected off, error, warn, info, debug or trace",
            ));
        }
        let http_port = p.port("http_port", 2020)?;
        let cfg = ServiceConfig {
            flush: p.duration("flush", Duration::from_secs(1))?,
            grace,
            log_level,
            http_server: p.bool("http_server", false)?,
            http_listen: p.string_or("http_listen", "0.0.0.0"),
            http_port,
            health_check: p.bool("health_check", false)?,
            hc_errors_count: p.int("hc_errors_count", 5)?.max(0) as u64,
            hc_retry_failure_count: p.int("hc_retry_failure_count", 5)?.max(0) as u64,
            hc_period: Duration::from_secs(p.int("hc_period", 60)?.max(1) as u64),
            storage_path: p.str("storage.path").map(str::to_string),
            backoff: outputs::Backoff {
                base: p.int("scheduler.base", 5)?.max(1) as u64,
                cap: p.int("scheduler.cap", 2000)?.max(1) as u64,
            },
            hot_reload: p.bool("hot_reload", false)?,
        };
        p.all("parsers_file");
        p.accept(&[
            "daemon",
            "log_file",
            "storage.sync",
            "storage.checksum",
            "storage.metrics",
            "storage.max_chunks_up",
            "storage.backlog.mem_limit",
            "hot_reload.ensure_thread_safety",
            "hot_reload.timeout",
            "coro_stack_size",
        ]);
        p.finish("service")?;
        Ok(cfg)
    }
}

/// Overrides from the command line (Fluent Bit's `-f` etc.).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub flush: Option<Duration>,
}

/// A validated, ready-to-run pipeline.
pub struct Pipeline {
    pub service: ServiceConfig,
    pub registry: Arc<Registry>,
    inputs: Vec<inputs::Input>,
    outputs: Vec<(OutputRunner, mpsc::UnboundedReceiver<Delivery>)>,
    ports: Arc<Vec<OutputPort>>,
    filters: Arc<Vec<FilterStage>>,
    budgets: Vec<u64>,
}

fn plugin_name(p: &Props, kind: &str) -> Result<String, ConfigError> {
    Ok(p.required("name")
        .map_err(|e| ConfigError {
            message: format!("{kind} section: {}", e.message),
            ..e
        })?
        .value
        .to_ascii_lowercase())
}

impl Pipeline {
    /// Validates everything (what `--dry-run` runs): plugin names, keys, values, regexes.
    pub fn build(doc: &ConfigDocument, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut service = ServiceConfig::from_doc(doc)?;
        if let Some(f) = overrides.flush {
            service.flush = f;
        }
        let parsers = ParserRegistry::from_config(doc)?;
        let health = Arc::new(HealthWindow::new(
            service.hc_errors_count,
            service.hc_retry_failure_count,
            service.hc_period,
        ));
        let mut registry = Registry::new(health.clone(), service.health_check);

        let input_sections: Vec<&Section> = doc.of_kind(SectionKind::Input).collect();
        let output_sections: Vec<&Section> = doc.of_kind(SectionKind::Output).collect();
        if input_sections.is_empty() {
            return Err(ConfigError::plain("the configuration defines no [INPUT]"));
        }
        if output_sections.is_empty() {
            return Err(ConfigError::plain("the configuration defines no [OUTPUT]"));
        }
        let auto_connect = input_sections.len() == 1 && output_sections.len() == 1;

        let mut outputs = Vec::new();
        let mut ports = Vec::new();
        for (index, section) in output_sections.iter().enumerate() {
            let p = Props::new(section);
            let name = plugin_name(&p, "[OUTPUT]")?;
            let matcher = match TagMatcher::from_props(&p)? {
                Some(m) => m,
                None if auto_connect => TagMatcher::everything(),
                None => {
                    tracing::warn!(
                        "{}: output '{name}' has no Match or Match_Regex: it receives nothing",
                        section.origin
                    );
                    TagMatcher::never()
                }
            };
            let alias = p.str("alias").map(str::to_string);
            let retry_limit = outputs::parse_retry_limit(&p, outputs::default_retry_limit(&name))?;
            let instance = alias.clone().unwrap_or_else(|| format!("{name}.{index}"));
            let plugin = OutputPlugin::build(&name, &instance, &p, &service)?;
            if name == "gcs" {
                // `gcs` trusts `tls.ca_file` besides the system roots; verification stays on.
                reject_tls_verify_off(&p)?;
            } else if name != "forward" && name != "azure_blob" {
                // `forward` and `azure_blob` apply `tls.verify` and `tls.ca_file` themselves.
                reject_unimplemented_tls(&p)?;
            }
            // `workers`: outputs write from one task each (the object store uploads several keys
            // at once); `storage.total_limit_size`: only object stores keep data on disk, and
            // they read it as their spool bound. Neither changes what is delivered.
            p.accept(&[
                "log_level",
                "workers",
                "storage.total_limit_size",
                "net.connect_timeout",
                "net.keepalive",
                "tls",
            ]);
            p.finish(&name)?;
            let metrics = Arc::new(OutputMetrics {
                name: alias.unwrap_or_else(|| format!("{name}.{index}")),
                ..Default::default()
            });
            registry.outputs.push(metrics.clone());
            let (tx, rx) = mpsc::unbounded_channel();
            ports.push(OutputPort { matcher, queue: tx });
            outputs.push((
                OutputRunner {
                    plugin,
                    metrics,
                    health: health.clone(),
                    retry: outputs::RetryPolicy {
                        limit: retry_limit,
                        backoff: service.backoff,
                    },
                },
                rx,
            ));
        }

        let mut filters = Vec::new();
        for (index, section) in doc.of_kind(SectionKind::Filter).enumerate() {
            let p = Props::new(section);
            let name = plugin_name(&p, "[FILTER]")?;
            let matcher = TagMatcher::from_props(&p)?.unwrap_or_else(TagMatcher::never);
            let alias = p.str("alias").map(str::to_string);
            let metrics = Arc::new(FilterMetrics {
                name: alias.unwrap_or_else(|| format!("{name}.{index}")),
                plugin: name.clone(),
                ..Default::default()
            });
            let filter = Filter::build(&name, &p, &parsers, &metrics)?;
            p.accept(&["log_level"]);
            p.finish(&name)?;
            registry.filters.push(metrics.clone());
            filters.push(FilterStage {
                matcher,
                filter,
                metrics,
            });
        }

        let mut inputs = Vec::new();
        let mut budgets = Vec::new();
        for (index, section) in input_sections.iter().enumerate() {
            let p = Props::new(section);
            let name = plugin_name(&p, "[INPUT]")?;
            let alias = p.str("alias").map(str::to_string);
            let instance = alias.unwrap_or_else(|| format!("{name}.{index}"));
            let (input, budget) = inputs::Input::build(&name, &instance, &p, &parsers, &service)?;
            p.accept(&[
                "log_level",
                "threaded",
                "storage.type",
                "storage.pause_on_chunks_overlimit",
                "routable",
            ]);
            p.finish(&name)?;
            registry.inputs.push(input.metrics());
            budgets.push(budget);
            inputs.push(input);
        }
        Ok(Pipeline {
            service,
            registry: Arc::new(registry),
            inputs,
            outputs,
            ports: Arc::new(ports),
            filters: Arc::new(filters),
            budgets,
        })
    }

    /// Runs until SIGTERM/SIGINT (or every input finished, e.g. `Exit_On_Eof`), then shuts down
    /// within `Grace`.
    /// Runs until a signal, an input's end or failure (`Ok(None)` / `Err`), or a hot reload
    /// whose config loaded (`Ok(Some(next))`, after this pipeline stopped as on SIGTERM).
    pub async fn run(
        self,
        http: &mut crate::http::HttpServer,
        reloader: &mut reload::Reloader,
    ) -> anyhow::Result<Option<Pipeline>> {
        let Pipeline {
            service,
            registry,
            inputs,
            outputs,
            ports,
            filters,
            budgets,
        } = self;
        let (hard_stop_tx, hard_stop_rx) = watch::channel(false);
        let mut output_tasks = Vec::new();
        for (runner, rx) in outputs {
            output_tasks.push(tokio::spawn(runner.run(rx, hard_stop_rx.clone())));
        }
        http.serve(&service, registry.clone()).await?;
        let stop = Arc::new(AtomicBool::new(false));
        // Each input thread reports its end: `Err` carries why it died.
        let (finished_tx, mut finished_rx) =
            mpsc::unbounded_channel::<(String, Result<(), String>)>();
        let mut input_threads = 0usize;
        for (input, budget) in inputs.into_iter().zip(budgets) {
            let dispatcher = Dispatcher {
                metrics: input.metrics(),
                budget: MemBudget::new(budget),
                filters: filters.clone(),
                outputs: ports.clone(),
                routes: HashMap::new(),
            };
            let ctx = InputContext {
                dispatcher,
                stop: stop.clone(),
                flush: service.flush,
                grace: service.grace,
                runtime: tokio::runtime::Handle::current(),
            };
            let done = finished_tx.clone();
            let name = input.metrics().name.clone();
            input_threads += 1;
            drop(
                std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        // A panic is an input failure too: it must reach the engine, not
                        // vanish with the thread.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            input.run(ctx)
                        }));
                        let result = match result {
                            Ok(r) => r.map_err(|e| format!("{e:#}")),
                            Err(panic) => Err(format!(
                                "panicked: {}",
                                panic
                                    .downcast_ref::<&str>()
                                    .map(|s| s.to_string())
                                    .or_else(|| panic.downcast_ref::<String>().cloned())
                                    .unwrap_or_default()
                            )),
                        };
                        let _ = done.send((name, result));
                    })?,
            );
        }
        drop(finished_tx);
        drop(ports);

        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut failure: Option<String> = None;
        let mut ended = 0usize;
        let mut next: Option<Pipeline> = None;
        tokio::select! {
            pipeline = reloader.next() => {
                tracing::info!("the new configuration is valid: stopping inputs, flushing within Grace {}s, then starting it", service.grace.as_secs());
                next = Some(pipeline);
            }
            _ = sigterm.recv() => tracing::info!("SIGTERM received: stopping inputs, flushing within Grace {}s", service.grace.as_secs()),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received: stopping inputs, flushing within Grace {}s", service.grace.as_secs()),
            report = finished_rx.recv() => match report {
                // An input that finished its work (Exit_On_Eof, dummy Samples) ends the run.
                Some((name, Ok(()))) => {
                    ended += 1;
                    tracing::debug!(input = %name, "input finished");
                }
                Some((name, Err(e))) => {
                    ended += 1;
                    // A dead input must not leave the agent running half blind, nor exit 0:
                    // stop everything and exit non-zero so a supervisor restarts it.
                    tracing::error!(input = %name, "input stopped with an error: {e}; stopping logferry");
                    failure = Some(format!("input '{name}' failed: {e}"));
                }
                // Every input thread is gone without a word: treat it as a failure.
                None => failure = Some("every input stopped without reporting why".to_string()),
            }
        }
        stop.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + service.grace;
        // One bound for everything after Grace: outputs that ignore the hard stop and inputs
        // still committing are left behind, not waited for one after the other.
        let hard_deadline = deadline + HARD_STOP_WAIT;
        let all_done = async {
            for task in output_tasks {
                let _ = task.await;
            }
        };
        tokio::pin!(all_done);
        // Everything of this pipeline ended (a reload may then start the next one on the same
        // DB files and spools).
        let mut all_stopped = true;
        // Inputs close their dispatchers when they stop; outputs then drain and exit.
        if tokio::time::timeout_at(deadline, &mut all_done)
            .await
            .is_err()
        {
            tracing::warn!("Grace period expired before every output finished: unacknowledged records are read again on restart, spooled ones stay in the output's store_dir");
            let _ = hard_stop_tx.send(true);
            if tokio::time::timeout_at(hard_deadline, all_done)
                .await
                .is_err()
            {
                all_stopped = false;
                tracing::warn!("an output did not stop within {}s of the hard stop: exiting without it (its spooled data stays on disk)", HARD_STOP_WAIT.as_secs());
            }
        }
        // Inputs report their end on `finished_rx` (threads are not joined: a stuck one must
        // not hold the exit).
        while ended < input_threads {
            match tokio::time::timeout_at(hard_deadline, finished_rx.recv()).await {
                Ok(Some((name, result))) => {
                    ended += 1;
                    if let (Err(e), None) = (result, &failure) {
                        failure = Some(format!("input '{name}' failed: {e}"));
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    all_stopped = false;
                    tracing::warn!("{} input(s) did not stop in time: exiting without them (what they did not commit is read again on restart)", input_threads - ended);
                    break;
                }
            }
        }
        let read: u64 = registry.inputs.iter().map(|i| i.records.get()).sum();
        for o in registry.outputs.iter() {
            tracing::info!(output = %o.name, records_read = read, records_accepted = o.proc_records.get(), records_uploaded = o.uploaded_records.get(), records_dropped = o.dropped_records.get(), "exit summary");
        }
        match failure {
            Some(f) => Err(anyhow::anyhow!(f)),
            // Two pipelines on the same offsets DB and spools could repeat or lose records:
            // exit instead, and let the supervisor start the new configuration cleanly.
            None if next.is_some() && !all_stopped => Err(anyhow::anyhow!(
                "reload: the running pipeline did not stop in time; exiting so that the new configuration starts cleanly"
            )),
            None => Ok(next),
        }
    }
}

/// `tls.verify Off` and `tls.ca_file` are not applied to outputs yet: refused, rather than
/// accepted without effect (a user who set them expects a behaviour they would not get).
fn reject_tls_verify_off(p: &Props) -> Result<(), ConfigError> {
    if let Some(v) = p.prop("tls.verify") {
        if crate::config::units::parse_bool(&v.value) == Some(false) {
            return Err(ConfigError::key(v, "turning certificate verification off is not supported: trust the server's CA instead (add it to the system store, or point SSL_CERT_FILE at a bundle that includes it)"));
        }
    }
    Ok(())
}

fn reject_unimplemented_tls(p: &Props) -> Result<(), ConfigError> {
    reject_tls_verify_off(p)?;
    if let Some(v) = p.prop("tls.ca_file") {
        return Err(ConfigError::key(v, "not supported yet for outputs: add the CA to the system store, or point SSL_CERT_FILE at a bundle that includes it"));
    }
    Ok(())
}

impl TagMatcher {
    /// Matches no tag (a plugin without `Match`).
    pub fn never() -> Self {
        TagMatcher::from_parts(None, None)
    }
}
