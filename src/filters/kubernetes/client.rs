//! Pod metadata for the `kubernetes` filter: one background thread talks to the API server (or
//! the kubelet) and keeps a bounded cache the filter reads.
//!
//! Sources, in order of preference:
//! - **Node-scoped watch** (when `NODE_NAME` is set, as the chart sets it): one LIST of the pods
//!   with `fieldSelector=spec.nodeName=<node>`, then one WATCH from its resourceVersion. A pod's
//!   creation, update or deletion costs no request of ours, however many pods churn; the
//!   stream is re-opened (and re-listed on `410 Gone`) when it ends.
//! - **Kubelet** (`Use_Kubelet On`): `GET /pods` on the node's kubelet, at most once a second, when
//!   a pod is missing.
//! - **Per-pod GET** otherwise (Fluent Bit's way): `GET /api/v1/namespaces/<ns>/pods/<pod>` once
//!   per pod, cached.
//!
//! Invariants: the cache is bounded ([`MAX_PODS`]); a deleted pod keeps its metadata for
//! [`DELETED_GRACE`], so lines read after the pod is gone are still enriched; the filter never
//! waits longer than [`LOOKUP_WAIT`] for a pod, and a pod not found then is remembered as missing
//! for [`MISSING_RETRY`], so an unreachable API server delays a batch once, not every batch.
//! The service-account token is read from its file on every request (projected tokens rotate).
//! Tokens never appear in logs.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::engine::metrics::FilterMetrics;

/// Pods kept at most (a node runs up to a few hundred; deleted ones wait out their grace).
pub const MAX_PODS: usize = 4096;
/// How long a deleted pod's metadata stays for lines still being read.
pub const DELETED_GRACE: Duration = Duration::from_secs(600);
/// The longest the filter waits for a pod's metadata before passing records without it.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// How long a pod that could not be found is not waited for again.
pub const MISSING_RETRY: Duration = Duration::from_secs(30);
/// A watch stream silent this long is taken for dead (the server closes it at 300 s).
const WATCH_SILENCE: Duration = Duration::from_secs(330);
/// The largest watch event accepted (a Pod object is a few KiB).
const MAX_EVENT_BYTES: usize = 16 << 20;

/// What the filter shows of one container of a pod.
/// What the pod's status says of one of its containers (as Fluent Bit reads it: from
/// `status.containerStatuses` and `status.initContainerStatuses`).
#[derive(Debug, Clone, Default)]
pub struct ContainerMeta {
    pub name: String,
    pub image: Option<String>,
    /// `imageID` without its scheme (`docker-pullable://`).
    pub image_id: Option<String>,
    /// `containerID` without its runtime scheme (`containerd://`).
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PodMeta {
    pub uid: Option<String>,
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
    pub host: Option<String>,
    pub pod_ip: Option<String>,
    pub containers: Vec<ContainerMeta>,
    /// `metadata.ownerReferences`, as JSON (`Owner_References`).
    pub owner_references: Option<Json>,
}

#[derive(Debug, Clone, Default)]
pub struct NamespaceMeta {
    pub labels: Vec<(String, String)>,
    pub annotations: Vec<(String, String)>,
}

impl PodMeta {
    /// From a Pod object of the API (or of the kubelet's pod list).
    pub fn from_json(pod: &Json) -> PodMeta {
        let str_of = |v: &Json| v.as_str().map(str::to_string);
        let pairs = |v: &Json| -> Vec<(String, String)> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        // `scheme://rest` → `rest` (Fluent Bit's extract_hash).
        let unscheme = |v: &Json| {
            v.as_str().filter(|s| !s.is_empty()).map(|s| {
                s.split_once("://")
                    .map_or(s, |(_, rest)| rest.trim_start_matches('/'))
                    .to_string()
            })
        };
        let statuses = pod["status"]["initContainerStatuses"]
            .as_array()
            .into_iter()
            .chain(pod["status"]["containerStatuses"].as_array())
            .flatten();
        let containers = statuses
            .filter_map(|c| {
                Some(ContainerMeta {
                    name: c["name"].as_str()?.to_string(),
                    image: str_of(&c["image"]),
                    image_id: unscheme(&c["imageID"]),
                    container_id: unscheme(&c["containerID"]),
                })
            })
            .collect();
        PodMeta {
            uid: str_of(&pod["metadata"]["uid"]),
            labels: pairs(&pod["metadata"]["labels"]),
            annotations: pairs(&pod["metadata"]["annotations"]),
            host: str_of(&pod["spec"]["nodeName"]),
            pod_ip: str_of(&pod["status"]["podIP"]),
            containers,
            owner_references: pod["metadata"]
                .get("ownerReferences")
                .filter(|o| o.is_array())
                .cloned(),
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How the client reaches the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    pub url: String,
    pub ca_file: PathBuf,
    pub token_file: PathBuf,
    pub tls_verify: bool,
    /// `tls.verify_hostname` (on by default here; Fluent Bit's default is off).
    pub tls_verify_hostname: bool,
    /// `NODE_NAME`: watch this node's pods.
    pub node_name: Option<String>,
    /// `Use_Kubelet`: the kubelet's address (`https://host:port`).
    pub kubelet: Option<String>,
    pub namespace_meta: bool,
    pub namespace_ttl: Duration,
    /// `Kube_Meta_Cache_TTL` (0: none): refetch a pod's metadata after this long (GET mode).
    pub cache_ttl: Duration,
}

struct Entry {
    meta: Arc<PodMeta>,
    fetched: Instant,
    deleted: Option<Instant>,
}

#[derive(Default)]
struct State {
    pods: HashMap<(String, String), Entry>,
    namespaces: HashMap<String, (Arc<NamespaceMeta>, Instant)>,
    /// Pods (or namespaces, with an empty pod name) looked for in vain, and when.
    missing: HashMap<(String, String), Instant>,
    /// Whether the last request to the API server (or kubelet) worked; None before the first.
    healthy: Option<bool>,
    /// No client could be built (see the log): lookups never wait.
    disabled: bool,
    /// Lookups the worker should make (GET and kubelet modes, namespaces), at most
    /// [`MAX_PODS`].
    wanted: VecDeque<(String, String)>,
}

impl State {
    /// A lookup waits for the worker only while the source answers (or has not been tried
    /// yet): an API server that is down or slow never holds the input thread beyond one
    /// bounded wait.
    fn worth_waiting(&self) -> bool {
        !self.disabled && self.healthy != Some(false)
    }

    fn want(&mut self, key: (String, String)) {
        if self.wanted.len() < MAX_PODS && !self.wanted.contains(&key) {
            self.wanted.push_back(key);
        }
    }
}

/// The cache shared by the filter (reader) and the worker thread (writer).
pub struct MetaCache {
    state: Mutex<State>,
    changed: Condvar,
    config: ClientConfig,
    /// The filter's metrics (replaced when a reloaded pipeline takes the cache over).
    metrics: Mutex<Arc<FilterMetrics>>,
    started: std::sync::Once,
}

/// Caches alive, so a hot reload that keeps the filter's settings keeps its cache (and its
/// watch): pods deleted before the reload keep their metadata for their grace period.
static CACHES: Mutex<Vec<Weak<MetaCache>>> = Mutex::new(Vec::new());

impl MetaCache {
    /// The cache for `config`: the running one with the same settings, else a new one.
    pub fn shared(config: ClientConfig, metrics: Arc<FilterMetrics>) -> Arc<MetaCache> {
        let mut caches = CACHES.lock().expect("kubernetes caches lock");
        caches.retain(|c| c.strong_count() > 0);
        if let Some(cache) = caches
            .iter()
            .filter_map(Weak::upgrade)
            .find(|c| c.config == config)
        {
            *cache.metrics.lock().expect("metrics lock") = metrics;
            return cache;
        }
        let cache = Arc::new(MetaCache {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            config,
            metrics: Mutex::new(metrics),
            started: std::sync::Once::new(),
        });
        caches.push(Arc::downgrade(&cache));
        cache
    }

    fn metrics(&self) -> Arc<FilterMetrics> {
        self.metrics.lock().expect("metrics lock").clone()
    }

    fn watching(&self) -> bool {
        self.config.node_name.is_some() && self.config.kubelet.is_none()
    }

    /// The pod's metadata, waiting at most [`LOOKUP_WAIT`] for it. The worker thread starts on
    /// the first lookup (never at config time, so `--dry-run` contacts nothing).
    pub fn pod(self: &Arc<Self>, namespace: &str, pod: &str) -> Option<Arc<PodMeta>> {
        let ttl = self.config.cache_ttl;
        let expires = !ttl.is_zero() && !self.watching();
        let key = (namespace.to_string(), pod.to_string());
        self.lookup(key, !self.watching(), |s, k| {
            s.pods
                .get(k)
                .filter(|e| !expires || e.fetched.elapsed() < ttl)
                .map(|e| e.meta.clone())
        })
    }

    /// The namespace's labels and annotations (`namespace_labels`/`namespace_annotations`).
    pub fn namespace(self: &Arc<Self>, namespace: &str) -> Option<Arc<NamespaceMeta>> {
        let ttl = self.config.namespace_ttl;
        self.lookup((namespace.to_string(), String::new()), true, |s, k| {
            s.namespaces
                .get(&k.0)
                .filter(|(_, t)| t.elapsed() < ttl)
                .map(|(m, _)| m.clone())
        })
    }

    /// Finds `key` with `get`, asking the worker for it (`ask`) and waiting at most
    /// [`LOOKUP_WAIT`] while that is worth it; a miss is not waited for again for
    /// [`MISSING_RETRY`]. Keys with an empty pod name are namespaces.
    fn lookup<T>(
        self: &Arc<Self>,
        key: (String, String),
        ask: bool,
        get: impl Fn(&State, &(String, String)) -> Option<T>,
    ) -> Option<T> {
        self.start();
        let mut state = self.state.lock().expect("kubernetes cache lock");
        if let Some(found) = get(&state, &key) {
            return Some(found);
        }
        if state
            .missing
            .get(&key)
            .is_some_and(|t| t.elapsed() < MISSING_RETRY)
        {
            return None;
        }
        if ask {
            state.want(key.clone());
            self.changed.notify_all();
        }
        let deadline = Instant::now() + LOOKUP_WAIT;
        loop {
            if let Some(found) = get(&state, &key) {
                return Some(found);
            }
            let now = Instant::now();
            if now >= deadline || !state.worth_waiting() {
                state.missing.insert(key, now);
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .expect("kubernetes cache lock")
                .0;
        }
    }

    /// Records whether a request worked; waiting lookups re-check whether to go on waiting.
    fn set_healthy(&self, healthy: bool) {
        self.state.lock().expect("kubernetes cache lock").healthy = Some(healthy);
        self.changed.notify_all();
    }

    fn disable(&self) {
        self.state.lock().expect("kubernetes cache lock").disabled = true;
        self.changed.notify_all();
    }

    fn start(self: &Arc<Self>) {
        self.started.call_once(|| {
            let cache = Arc::downgrade(self);
            let config = self.config.clone();
            let spawned = std::thread::Builder::new()
                .name("kubernetes-meta".into())
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime for kubernetes metadata");
                    runtime.block_on(Worker::new(cache, config).run());
                });
            if let Err(e) = spawned {
                tracing::error!("kubernetes filter: cannot start its metadata thread: {e}; records pass without pod metadata");
                self.disable();
            }
        });
    }

    fn store(&self, namespace: &str, name: &str, meta: PodMeta) {
        let mut state = self.state.lock().expect("kubernetes cache lock");
        insert(&mut state, (namespace.to_string(), name.to_string()), meta);
        bound(&mut state);
        self.changed.notify_all();
    }

    fn mark_deleted(&self, namespace: &str, name: &str) {
        let mut state = self.state.lock().expect("kubernetes cache lock");
        if let Some(e) = state
            .pods
            .get_mut(&(namespace.to_string(), name.to_string()))
        {
            e.deleted.get_or_insert_with(Instant::now);
        }
    }

    /// After a LIST: pods not in it were deleted while the watch was down.
    fn replace_all(&self, pods: Vec<(String, String, PodMeta)>) {
        let mut state = self.state.lock().expect("kubernetes cache lock");
        let now = Instant::now();
        let listed: std::collections::HashSet<(String, String)> = pods
            .iter()
            .map(|(ns, name, _)| (ns.clone(), name.clone()))
            .collect();
        for (key, entry) in state.pods.iter_mut() {
            if !listed.contains(key) {
                entry.deleted.get_or_insert(now);
            }
        }
        for (ns, name, meta) in pods {
            insert(&mut state, (ns, name), meta);
        }
        bound(&mut state);
        self.changed.notify_all();
    }

    fn store_namespace(&self, namespace: &str, meta: NamespaceMeta) {
        let mut state = self.state.lock().expect("kubernetes cache lock");
        state
            .missing
            .remove(&(namespace.to_string(), String::new()));
        state
            .namespaces
            .insert(namespace.to_string(), (Arc::new(meta), Instant::now()));
        if state.namespaces.len() > MAX_PODS {
            let ttl = self.config.namespace_ttl;
            state.namespaces.retain(|_, (_, t)| t.elapsed() < ttl);
        }
        self.changed.notify_all();
    }

    /// Waits for lookups to make (GET and kubelet modes; namespaces in every mode).
    fn next_wanted(&self, limit: Duration) -> Vec<(String, String)> {
        let mut state = self.state.lock().expect("kubernetes cache lock");
        if state.wanted.is_empty() {
            state = self
                .changed
                .wait_timeout(state, limit)
                .expect("kubernetes cache lock")
                .0;
        }
        let mut wanted: Vec<_> = state.wanted.drain(..).collect();
        wanted.sort();
        wanted.dedup();
        wanted
    }
}

fn insert(state: &mut State, key: (String, String), meta: PodMeta) {
    state.missing.remove(&key);
    state.pods.insert(
        key,
        Entry {
            meta: Arc::new(meta),
            fetched: Instant::now(),
            deleted: None,
        },
    );
}

/// Drops deleted pods past their grace, then (still over the bound) the longest-deleted ones,
/// then the oldest fetched; and forgets old misses.
fn bound(state: &mut State) {
    state
        .pods
        .retain(|_, e| e.deleted.is_none_or(|t| t.elapsed() < DELETED_GRACE));
    while state.pods.len() > MAX_PODS {
        let victim = state
            .pods
            .iter()
            .min_by_key(|(_, e)| (e.deleted.is_none(), e.deleted.unwrap_or(e.fetched)))
            .map(|(k, _)| k.clone());
        match victim {
            Some(k) => state.pods.remove(&k),
            None => break,
        };
    }
    state.missing.retain(|_, t| t.elapsed() < MISSING_RETRY);
}

/// An API or kubelet request that failed: what to log.
#[derive(Debug)]
struct RequestError(String);

/// Holds the cache weakly: when no pipeline uses it any more, the thread ends.
struct Worker {
    cache: Weak<MetaCache>,
    config: ClientConfig,
    http: Option<reqwest::Client>,
    /// Errors are logged when they change, not on every retry.
    last_error: Option<String>,
}

impl Worker {
    fn new(cache: Weak<MetaCache>, config: ClientConfig) -> Worker {
        let http = match build_client(&config) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!("kubernetes filter: {e}; records pass without pod metadata");
                if let Some(c) = cache.upgrade() {
                    c.disable();
                }
                None
            }
        };
        Worker {
            cache,
            config,
            http,
            last_error: None,
        }
    }

    fn report(&mut self, result: Result<(), RequestError>) {
        match result {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    tracing::info!(url = %self.config.url, "kubernetes filter: API server reachable again");
                }
            }
            Err(RequestError(e)) => {
                if self.last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!("kubernetes filter: {e}; records pass without pod metadata until it answers");
                    self.last_error = Some(e);
                }
            }
        }
    }

    async fn run(mut self) {
        if self.http.is_none() {
            return;
        }
        let watching = self.config.node_name.is_some() && self.config.kubelet.is_none();
        if watching {
            let (cache, config) = (self.cache.clone(), self.config.clone());
            let http = self.http.clone().expect("checked above");
            tokio::spawn(async move { watch_loop(cache, config, http).await });
        }
        let mut last_kubelet_poll = Instant::now() - Duration::from_secs(1);
        loop {
            let Some(cache) = self.cache.upgrade() else {
                return;
            };
            let waiting = cache.clone();
            let wanted =
                tokio::task::spawn_blocking(move || waiting.next_wanted(Duration::from_secs(5)))
                    .await
                    .unwrap_or_default();
            let kubelet_poll =
                self.config.kubelet.is_some() && wanted.iter().any(|w| !w.1.is_empty());
            if kubelet_poll {
                // One pod list answers every pod asked for; at most one poll a second.
                let since = last_kubelet_poll.elapsed();
                if since < Duration::from_secs(1) {
                    tokio::time::sleep(Duration::from_secs(1) - since).await;
                }
                last_kubelet_poll = Instant::now();
                let result = self.poll_kubelet(&cache).await;
                self.report(result);
            }
            for (namespace, pod) in wanted {
                let result = if pod.is_empty() {
                    self.fetch_namespace(&cache, &namespace).await
                } else if watching || kubelet_poll {
                    continue;
                } else {
                    self.fetch_pod(&cache, &namespace, &pod).await
                };
                self.report(result);
            }
        }
    }

    async fn fetch_pod(
        &self,
        cache: &MetaCache,
        namespace: &str,
        pod: &str,
    ) -> Result<(), RequestError> {
        let url = format!(
            "{}/api/v1/namespaces/{namespace}/pods/{pod}",
            self.config.url
        );
        if let Some(json) = get_json(cache, self.http.as_ref().expect("client"), &url).await? {
            cache.store(namespace, pod, PodMeta::from_json(&json));
        }
        Ok(())
    }

    async fn fetch_namespace(
        &self,
        cache: &MetaCache,
        namespace: &str,
    ) -> Result<(), RequestError> {
        let url = format!("{}/api/v1/namespaces/{namespace}", self.config.url);
        if let Some(json) = get_json(cache, self.http.as_ref().expect("client"), &url).await? {
            let meta = PodMeta::from_json(&json);
            cache.store_namespace(
                namespace,
                NamespaceMeta {
                    labels: meta.labels,
                    annotations: meta.annotations,
                },
            );
        }
        Ok(())
    }

    async fn poll_kubelet(&self, cache: &MetaCache) -> Result<(), RequestError> {
        let base = self.config.kubelet.as_deref().expect("kubelet mode");
        let url = format!("{base}/pods");
        let Some(list) = get_json(cache, self.http.as_ref().expect("client"), &url).await? else {
            return Ok(());
        };
        cache.replace_all(pods_of(&list, None));
        Ok(())
    }
}

/// (namespace, name, metadata) of each pod in a list, on `node` when given (the API server
/// applies the field selector; this keeps a server that ignores it from filling the cache).
fn pods_of(list: &Json, node: Option<&str>) -> Vec<(String, String, PodMeta)> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| node.is_none_or(|n| p["spec"]["nodeName"].as_str() == Some(n)))
        .filter_map(|p| {
            Some((
                p["metadata"]["namespace"].as_str()?.to_string(),
                p["metadata"]["name"].as_str()?.to_string(),
                PodMeta::from_json(p),
            ))
        })
        .collect()
}

fn build_client(config: &ClientConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .no_proxy();
    if config.url.starts_with("https://") || config.kubelet.is_some() {
        if !config.tls_verify {
            tracing::warn!(
                "kubernetes filter: tls.verify Off: the API server's certificate is not checked"
            );
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else {
            match std::fs::read(&config.ca_file) {
                Ok(pem) => {
                    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                        format!(
                            "Kube_CA_File {}: not a PEM certificate: {e}",
                            config.ca_file.display()
                        )
                    })?;
                    builder = builder.tls_certs_only(certs);
                }
                Err(e) => tracing::warn!(
                    "kubernetes filter: Kube_CA_File {}: {e}; trusting the system's roots instead",
                    config.ca_file.display()
                ),
            }
            if !config.tls_verify_hostname {
                builder = builder.tls_danger_accept_invalid_hostnames(true);
            }
        }
    } else if token(config).is_some() {
        tracing::warn!(url = %config.url, "kubernetes filter: the service-account token goes over plain http");
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the API client: {e}"))
}

/// The service-account token, read now (projected tokens are rotated on disk).
fn token(config: &ClientConfig) -> Option<String> {
    std::fs::read_to_string(&config.token_file)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn request(cache: &MetaCache, http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    cache.metrics().kubernetes_api_requests.add(1);
    let mut req = http.get(url).header("Accept", "application/json");
    if let Some(t) = token(&cache.config) {
        req = req.bearer_auth(t);
    }
    req
}

/// GET a JSON object; `Ok(None)` for 404 (the pod or namespace is gone).
async fn get_json(
    cache: &MetaCache,
    http: &reqwest::Client,
    url: &str,
) -> Result<Option<Json>, RequestError> {
    let result = get_json_once(cache, http, url).await;
    cache.set_healthy(result.is_ok());
    result
}

async fn get_json_once(
    cache: &MetaCache,
    http: &reqwest::Client,
    url: &str,
) -> Result<Option<Json>, RequestError> {
    let shown = url.split('?').next().unwrap_or(url);
    let response = request(cache, http, url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| RequestError(format!("GET {shown}: {}", error_chain(&e))))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !status.is_success() {
        let reason = response
            .json::<Json>()
            .await
            .ok()
            .and_then(|j| j["message"].as_str().map(str::to_string))
            .unwrap_or_default();
        return Err(RequestError(format!(
            "GET {shown}: HTTP {}{}{}",
            status.as_u16(),
            if reason.is_empty() { "" } else { ": " },
            reason
        )));
    }
    response
        .json::<Json>()
        .await
        .map(Some)
        .map_err(|e| RequestError(format!("GET {shown}: bad JSON: {e}")))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// LIST then WATCH this node's pods, forever; re-LIST when the watch cannot resume.
async fn watch_loop(cache: Weak<MetaCache>, config: ClientConfig, http: reqwest::Client) {
    let node = config.node_name.clone().expect("watch mode");
    let selector = format!("spec.nodeName={node}");
    let base = format!("{}/api/v1/pods", config.url);
    let mut backoff = Duration::from_millis(500);
    let mut last_error: Option<String> = None;
    // The resourceVersion to resume from; None: LIST first.
    let mut version: Option<String> = None;
    loop {
        // No pipeline uses the cache any more (a reload changed the filter's settings).
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let started = Instant::now();
        let result = list_and_watch(&cache, &http, &base, &selector, &node, &mut version).await;
        if result.is_err() {
            cache.set_healthy(false);
        }
        drop(cache);
        // A server that ends watches at once, or answers with ERROR events, must not turn
        // this into a request loop.
        if started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match result {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(RequestError(e)) => {
                version = None;
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(node = %node, "kubernetes filter: pod watch failed: {e}; retrying, records pass without metadata for pods not yet seen");
                    last_error = Some(e);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        }
        if last_error.take().is_some() {
            tracing::info!(node = %node, "kubernetes filter: pod watch restored");
        }
    }
}

/// LISTs when there is no version to resume from, then follows one WATCH stream to its end
/// (server timeout, load balancer); `version` keeps the last version seen, or None after an
/// `ERROR` event (410 Gone: too old to resume from).
async fn list_and_watch(
    cache: &MetaCache,
    http: &reqwest::Client,
    base: &str,
    selector: &str,
    node: &str,
    resume: &mut Option<String>,
) -> Result<(), RequestError> {
    let mut version = match resume.take() {
        Some(v) => v,
        None => {
            let list_url = format!("{base}?fieldSelector={}", encode(selector));
            let list = get_json(cache, http, &list_url)
                .await?
                .ok_or_else(|| RequestError(format!("GET {base}: HTTP 404")))?;
            cache.replace_all(pods_of(&list, Some(node)));
            list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    {
        let url = format!(
            "{base}?watch=true&allowWatchBookmarks=true&timeoutSeconds=300&fieldSelector={}&resourceVersion={}",
            encode(selector),
            encode(&version)
        );
        let mut response = request(cache, http, &url)
            .send()
            .await
            .map_err(|e| RequestError(format!("WATCH {base}: {}", error_chain(&e))))?;
        if !response.status().is_success() {
            return Err(RequestError(format!(
                "WATCH {base}: HTTP {}",
                response.status().as_u16()
            )));
        }
        let mut pending: Vec<u8> = Vec::new();
        loop {
            // The server ends a watch after `timeoutSeconds` and sends bookmarks meanwhile: a
            // stream silent for longer is a dead connection.
            let chunk = match tokio::time::timeout(WATCH_SILENCE, response.chunk()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    return Err(RequestError(format!("WATCH {base}: {}", error_chain(&e))))
                }
                Err(_) => {
                    return Err(RequestError(format!(
                        "WATCH {base}: no data for {}s",
                        WATCH_SILENCE.as_secs()
                    )))
                }
            };
            if pending.len() + chunk.len() > MAX_EVENT_BYTES {
                return Err(RequestError(format!(
                    "WATCH {base}: an event over {MAX_EVENT_BYTES} bytes"
                )));
            }
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(event) = serde_json::from_slice::<Json>(&line) else {
                    continue;
                };
                let object = &event["object"];
                if let Some(v) = object["metadata"]["resourceVersion"].as_str() {
                    version = v.to_string();
                }
                let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = object["metadata"]["name"].as_str().unwrap_or_default();
                match event["type"].as_str() {
                    Some("ADDED" | "MODIFIED")
                        if object["spec"]["nodeName"].as_str() == Some(node) =>
                    {
                        cache.store(ns, name, PodMeta::from_json(object))
                    }
                    Some("DELETED") => cache.mark_deleted(ns, name),
                    // 410 Gone: the version is too old to resume from: list again.
                    Some("ERROR") => return Ok(()),
                    _ => {}
                }
            }
        }
    }
    *resume = Some(version);
    Ok(())
}

/// Percent-encodes a query value (the selector's `=`, a version's characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_metadata_comes_from_spec_and_status() {
        let pod: Json = serde_json::from_str(
            r#"{"metadata":{"name":"web-1","namespace":"shop","uid":"u-1","labels":{"app":"web"},
                "annotations":{"fluentbit.io/exclude":"true"}},
               "spec":{"nodeName":"node-a","containers":[{"name":"nginx","image":"nginx:1"}],
                       "initContainers":[{"name":"init","image":"busybox"}]},
               "status":{"podIP":"10.0.0.7","containerStatuses":[{"name":"nginx",
                  "image":"docker.io/library/nginx:1","imageID":"docker-pullable://docker.io/library/nginx@sha256:ab",
                  "containerID":"containerd://0123abcd"}],
                 "initContainerStatuses":[{"name":"init","image":"busybox:1"}]}}"#,
        )
        .unwrap();
        let m = PodMeta::from_json(&pod);
        assert_eq!(m.uid.as_deref(), Some("u-1"));
        assert_eq!(m.labels, vec![("app".to_string(), "web".to_string())]);
        assert_eq!(m.annotation("fluentbit.io/exclude"), Some("true"));
        assert_eq!(m.host.as_deref(), Some("node-a"));
        assert_eq!(m.pod_ip.as_deref(), Some("10.0.0.7"));
        // Init containers first, as listed in the status; schemes stripped as Fluent Bit does.
        assert_eq!(m.containers[0].name, "init");
        assert_eq!(m.containers[0].image.as_deref(), Some("busybox:1"));
        assert_eq!(
            m.containers[1].image.as_deref(),
            Some("docker.io/library/nginx:1")
        );
        assert_eq!(
            m.containers[1].image_id.as_deref(),
            Some("docker.io/library/nginx@sha256:ab")
        );
        assert_eq!(m.containers[1].container_id.as_deref(), Some("0123abcd"));
    }

    #[test]
    fn the_cache_stays_bounded_and_keeps_deleted_pods_for_their_grace() {
        let mut state = State::default();
        for i in 0..MAX_PODS + 10 {
            state.pods.insert(
                ("ns".into(), format!("p{i}")),
                Entry {
                    meta: Arc::new(PodMeta::default()),
                    fetched: Instant::now(),
                    deleted: (i < 20).then(Instant::now),
                },
            );
        }
        bound(&mut state);
        assert_eq!(state.pods.len(), MAX_PODS);
        // The deleted ones went first; the live ones all stayed.
        assert!(
            (20..MAX_PODS + 10).all(|i| state.pods.contains_key(&("ns".into(), format!("p{i}"))))
        );
    }

    #[test]
    fn selectors_are_percent_encoded() {
        assert_eq!(encode("spec.nodeName=node-1"), "spec.nodeName%3Dnode-1");
    }
}
