//! The `kubernetes` filter: Fluent Bit's options and record shape. The tag (the kubelet's
//! `<pod>_<namespace>_<container>-<id>.log` file name, after `Kube_Tag_Prefix`) names the pod;
//! its metadata comes from [`client::MetaCache`] (one node-scoped watch, a bounded cache). Adds
//! `kubernetes: {pod_name, namespace_name, pod_id, labels, annotations, host, pod_ip,
//! container_name, docker_id, container_hash, container_image}` (and `kubernetes_namespace` with
//! `namespace_labels`/`namespace_annotations`), merges a JSON `log` with `Merge_Log`, and honours
//! the pod's `fluentbit.io/parser` and `fluentbit.io/exclude` annotations when asked to.
//!
//! Invariant (never drop unread data, honest metrics): a record whose pod cannot be found
//! (unknown, API server unreachable) passes with the fields the tag gives, after a bounded
//! wait, and is counted in `logferry_filter_kubernetes_meta_missing_total`; only the pod's own
//! `fluentbit.io/exclude` annotation (with `K8S-Logging.Exclude On`) removes records.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{ConfigError, Props};
use crate::engine::metrics::FilterMetrics;
use crate::parsers::{Parser, ParserRegistry};
use crate::record::{Event, Map, Value};
use client::{ClientConfig, MetaCache, PodMeta};

/// Fluent Bit's tag → pod regex (`kube_regex.h`), on the tag after `Kube_Tag_Prefix`.
const TAG_REGEX: &str = r"(?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-(?<docker_id>[a-z0-9]{64})\.log$";

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Where the pod's identity comes from.
enum TagParser {
    Builtin(fancy_regex::Regex),
    /// `Regex_Parser`: a parser from the parsers file, run on the tag.
    Custom(Arc<Parser>),
}

/// The pod a tag names.
#[derive(Debug, Default, PartialEq)]
struct TagFields {
    pod_name: String,
    namespace_name: String,
    container_name: String,
    docker_id: String,
}

impl TagParser {
    fn parse(&self, tag: &str) -> Option<TagFields> {
        match self {
            TagParser::Builtin(re) => {
                let caps = re.captures(tag).ok()??;
                let get = |n: &str| {
                    caps.name(n)
                        .map_or(String::new(), |m| m.as_str().to_string())
                };
                Some(TagFields {
                    pod_name: get("pod_name"),
                    namespace_name: get("namespace_name"),
                    container_name: get("container_name"),
                    docker_id: get("docker_id"),
                })
            }
            TagParser::Custom(parser) => {
                let (_, map) = parser.parse(&Bytes::copy_from_slice(tag.as_bytes()))?;
                let get = |n: &str| match map.get(n.as_bytes()) {
                    Some(Value::Str(s)) => String::from_utf8_lossy(s).into_owned(),
                    _ => String::new(),
                };
                let fields = TagFields {
                    pod_name: get("pod_name"),
                    namespace_name: get("namespace_name"),
                    container_name: get("container_name"),
                    docker_id: get("docker_id"),
                };
                (!fields.pod_name.is_empty() && !fields.namespace_name.is_empty()).then_some(fields)
            }
        }
    }
}

pub struct Kubernetes {
    tag_prefix: String,
    tag_parser: TagParser,
    merge_log: bool,
    /// `Merge_Parser`: parses `log` instead of JSON.
    merge_parser: Option<Arc<Parser>>,
    /// `Use_Tag_For_Meta`: only what the tag gives, no API calls.
    tag_only: bool,
    owner_references: bool,
    merge_log_key: Option<Bytes>,
    merge_log_trim: bool,
    keep_log: bool,
    labels: bool,
    annotations: bool,
    logging_parser: bool,
    logging_exclude: bool,
    namespace_labels: bool,
    namespace_annotations: bool,
    /// Parsers a pod may name in `fluentbit.io/parser` (the whole registry).
    parsers: ParserRegistry,
    cache: Arc<MetaCache>,
    metrics: Arc<FilterMetrics>,
}

impl Kubernetes {
    pub fn from_props(
        p: &Props,
        parsers: &ParserRegistry,
        metrics: Arc<FilterMetrics>,
    ) -> Result<Self, ConfigError> {
        let tag_parser = match p.prop("regex_parser") {
            Some(prop) => TagParser::Custom(parsers.get(&prop.value).ok_or_else(|| {
                ConfigError::key(prop, format!("parser '{}' is not defined", prop.value))
            })?),
            None => TagParser::Builtin(fancy_regex::Regex::new(TAG_REGEX).expect("valid regex")),
        };
        let kubelet = if p.bool("use_kubelet", false)? {
            let host = p.string_or("kubelet_host", "127.0.0.1");
            let port = p.int("kubelet_port", 10250)?;
            Some(format!("https://{host}:{port}"))
        } else {
            None
        };
        let url = p
            .string_or("kube_url", "https://kubernetes.default.svc:443")
            .trim_end_matches('/')
            .to_string();
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(ConfigError::key(
                p.prop("kube_url").expect("the default is valid"),
                "Kube_URL must start with http:// or https://",
            ));
        }
        let namespace_labels = p.bool("namespace_labels", false)?;
        let namespace_annotations = p.bool("namespace_annotations", false)?;
        let config = ClientConfig {
            url,
            ca_file: p
                .string_or("kube_ca_file", &format!("{SERVICE_ACCOUNT}/ca.crt"))
                .into(),
            token_file: p
                .string_or("kube_token_file", &format!("{SERVICE_ACCOUNT}/token"))
                .into(),
            tls_verify: p.bool("tls.verify", true)?,
            tls_verify_hostname: p.bool("tls.verify_hostname", true)?,
            node_name: std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()),
            kubelet,
            namespace_meta: namespace_labels || namespace_annotations,
            namespace_ttl: p.duration("kube_meta_namespace_cache_ttl", Duration::from_secs(900))?,
            cache_ttl: p.duration("kube_meta_cache_ttl", Duration::ZERO)?,
        };
        // Accepted for compatibility: responses are streamed and never cut at a buffer size
        // (Fluent Bit's `Buffer_Size` silently drops metadata that does not fit); tokens are
        // re-read on every request, so there is no TTL to configure.
        p.accept(&[
            "buffer_size",
            "kube_token_ttl",
            "dns_retries",
            "dns_wait_time",
            "kube_namespace_file",
            "tls.debug",
            "cache_use_docker_id",
        ]);
        Ok(Kubernetes {
            tag_prefix: p.string_or("kube_tag_prefix", "kube.var.log.containers."),
            tag_parser,
            merge_log: p.bool("merge_log", false)?,
            merge_parser: match p.prop("merge_parser") {
                None => None,
                Some(prop) => Some(parsers.get(&prop.value).ok_or_else(|| {
                    ConfigError::key(prop, format!("parser '{}' is not defined", prop.value))
                })?),
            },
            tag_only: p.bool("use_tag_for_meta", false)?,
            owner_references: p.bool("owner_references", false)?,
            merge_log_key: p
                .str("merge_log_key")
                .map(|k| Bytes::copy_from_slice(k.as_bytes())),
            merge_log_trim: p.bool("merge_log_trim", true)?,
            keep_log: p.bool("keep_log", true)?,
            labels: p.bool("labels", true)?,
            annotations: p.bool("annotations", true)?,
            logging_parser: p.bool("k8s-logging.parser", false)?,
            logging_exclude: p.bool("k8s-logging.exclude", false)?,
            namespace_labels,
            namespace_annotations,
            parsers: parsers.clone(),
            cache: MetaCache::shared(config, metrics.clone()),
            metrics,
        })
    }

    /// Enriches every record of a batch (all share the tag); removes the ones the pod's
    /// `fluentbit.io/exclude` annotation excludes.
    pub fn apply(&self, tag: &str, events: &mut Vec<Event>) {
        let name = tag.strip_prefix(&self.tag_prefix).unwrap_or(tag);
        let Some(fields) = self.tag_parser.parse(name) else {
            return;
        };
        let pod = if self.tag_only {
            None
        } else {
            let pod = self.cache.pod(&fields.namespace_name, &fields.pod_name);
            if pod.is_none() {
                self.metrics
                    .kubernetes_meta_missing
                    .add(events.len() as u64);
            }
            pod
        };
        let namespace = if !self.tag_only && (self.namespace_labels || self.namespace_annotations) {
            self.cache.namespace(&fields.namespace_name)
        } else {
            None
        };
        let kubernetes = self.kubernetes_value(&fields, pod.as_deref());
        let namespace_value = namespace.map(|ns| {
            let mut m = Map::with_capacity(3);
            m.push(key("name"), text(&fields.namespace_name));
            if self.namespace_labels {
                m.push(key("labels"), pairs(&ns.labels));
            }
            if self.namespace_annotations {
                m.push(key("annotations"), pairs(&ns.annotations));
            }
            Value::Map(m)
        });
        let container = &fields.container_name;
        // The annotations depend on the record's stream only: looked up once per stream.
        let mut per_stream: Vec<(Option<Bytes>, bool, Option<&str>)> = Vec::with_capacity(2);
        events.retain_mut(|e| {
            let stream = match e.record.get(b"stream") {
                Some(Value::Str(s)) => Some(s.clone()),
                _ => None,
            };
            let (excluded, parser) = match per_stream.iter().find(|(s, _, _)| *s == stream) {
                Some((_, x, p)) => (*x, *p),
                None => {
                    let name = stream.as_deref().and_then(|s| std::str::from_utf8(s).ok());
                    let excluded =
                        pod.as_deref()
                            .filter(|_| self.logging_exclude)
                            .is_some_and(|p| {
                                annotation_for(p, "fluentbit.io/exclude", container, name)
                                    .is_some_and(is_true)
                            });
                    let parser = pod
                        .as_deref()
                        .filter(|_| self.logging_parser && self.merge_log)
                        .and_then(|p| annotation_for(p, "fluentbit.io/parser", container, name));
                    per_stream.push((stream, excluded, parser));
                    (excluded, parser)
                }
            };
            if excluded {
                return false;
            }
            if self.merge_log {
                if let Some(time) = self.merge(&mut e.record, parser) {
                    e.time = time;
                }
            }
            e.record.set(key("kubernetes"), kubernetes.clone());
            if let Some(ns) = &namespace_value {
                e.record.set(key("kubernetes_namespace"), ns.clone());
            }
            true
        });
    }

    fn kubernetes_value(&self, fields: &TagFields, pod: Option<&PodMeta>) -> Value {
        let mut m = Map::with_capacity(11);
        m.push(key("pod_name"), text(&fields.pod_name));
        m.push(key("namespace_name"), text(&fields.namespace_name));
        let container = pod.and_then(|p| {
            p.containers
                .iter()
                .find(|c| c.name == fields.container_name)
        });
        if let Some(p) = pod {
            if let Some(uid) = &p.uid {
                m.push(key("pod_id"), text(uid));
            }
            if self.labels && !p.labels.is_empty() {
                m.push(key("labels"), pairs(&p.labels));
            }
            if self.annotations && !p.annotations.is_empty() {
                m.push(key("annotations"), pairs(&p.annotations));
            }
            if let Some(owners) = p
                .owner_references
                .as_ref()
                .filter(|_| self.owner_references)
            {
                if let Ok(v) = crate::json::parse(owners.to_string().as_bytes()) {
                    m.push(key("ownerReferences"), v);
                }
            }
            if let Some(host) = &p.host {
                m.push(key("host"), text(host));
            }
            if let Some(ip) = &p.pod_ip {
                m.push(key("pod_ip"), text(ip));
            }
        }
        m.push(key("container_name"), text(&fields.container_name));
        // From the tag, else (a tag without the id, e.g. with Regex_Parser) the status.
        let docker_id = Some(fields.docker_id.as_str())
            .filter(|id| !id.is_empty())
            .or_else(|| container.and_then(|c| c.container_id.as_deref()));
        if let Some(id) = docker_id {
            m.push(key("docker_id"), text(id));
        }
        if let Some(c) = container {
            if let Some(hash) = &c.image_id {
                m.push(key("container_hash"), text(hash));
            }
            if let Some(image) = &c.image {
                m.push(key("container_image"), text(image));
            }
        }
        Value::Map(m)
    }

    /// `Merge_Log`: a `log` holding a JSON object (or what the pod's suggested parser, else
    /// `Merge_Parser`, makes of it) is merged into the record, or under `Merge_Log_Key`;
    /// `Keep_Log Off` then drops `log`. Returns the time a parser found, for the record.
    fn merge(&self, record: &mut Map, suggested: Option<&str>) -> Option<crate::record::EventTime> {
        let Some(Value::Str(log)) = record.get(b"log") else {
            return None;
        };
        let log = log.clone();
        let parser = suggested
            .and_then(|name| self.parsers.get(name))
            .or_else(|| self.merge_parser.clone());
        let (time, parsed) = match parser {
            Some(parser) => match parser.parse(&log) {
                Some((time, m)) => (time, Some(m)),
                None => (None, None),
            },
            None => {
                let trimmed = trim_end(&log);
                if trimmed.first() != Some(&b'{') {
                    return None;
                }
                match crate::json::parse(trimmed) {
                    Ok(Value::Map(m)) => (None, Some(m)),
                    _ => (None, None),
                }
            }
        };
        let mut merged = parsed?;
        if self.merge_log_trim {
            for (_, v) in merged.0.iter_mut() {
                if let Value::Str(s) = v {
                    let end = trim_end(s).len();
                    s.truncate(end);
                }
            }
        }
        if !self.keep_log {
            record.remove(b"log");
        }
        match &self.merge_log_key {
            Some(k) => record.set(k.clone(), Value::Map(merged)),
            None => merged.0.into_iter().for_each(|(k, v)| record.set(k, v)),
        }
        time
    }
}

/// The most specific of a pod's annotations for this container and stream:
/// `<base>_<stream>-<container>`, `<base>-<container>`, `<base>_<stream>`, `<base>`.
fn annotation_for<'a>(
    pod: &'a PodMeta,
    base: &str,
    container: &str,
    stream: Option<&str>,
) -> Option<&'a str> {
    let mut names = Vec::with_capacity(4);
    if let Some(s) = stream {
        names.push(format!("{base}_{s}-{container}"));
    }
    names.push(format!("{base}-{container}"));
    if let Some(s) = stream {
        names.push(format!("{base}_{s}"));
    }
    names.push(base.to_string());
    names.iter().find_map(|n| pod.annotation(n))
}

/// Fluent Bit's boolean words for annotation values.
fn is_true(v: &str) -> bool {
    ["true", "on", "yes"]
        .iter()
        .any(|t| v.eq_ignore_ascii_case(t))
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    &s[..end]
}

fn key(k: &'static str) -> Bytes {
    Bytes::from_static(k.as_bytes())
}

fn text(s: &str) -> Value {
    Value::Str(Bytes::copy_from_slice(s.as_bytes()))
}

fn pairs(p: &[(String, String)]) -> Value {
    Value::Map(Map(p
        .iter()
        .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), text(v)))
        .collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_names_pod_namespace_container_and_id() {
        let re = TagParser::Builtin(fancy_regex::Regex::new(TAG_REGEX).unwrap());
        let id = "a".repeat(64);
        let fields = re
            .parse(&format!("web-7d9f-x2k_shop_nginx-{id}.log"))
            .unwrap();
        assert_eq!(
            fields,
            TagFields {
                pod_name: "web-7d9f-x2k".into(),
                namespace_name: "shop".into(),
                container_name: "nginx".into(),
                docker_id: id,
            }
        );
        assert!(re.parse("not-a-kubelet-name.log").is_none());
    }

    #[test]
    fn annotations_pick_the_most_specific_form() {
        let pod = PodMeta {
            annotations: vec![
                ("fluentbit.io/exclude".into(), "false".into()),
                ("fluentbit.io/exclude_stderr-sidecar".into(), "true".into()),
            ],
            ..Default::default()
        };
        let get = |c, s| annotation_for(&pod, "fluentbit.io/exclude", c, s);
        assert_eq!(get("sidecar", Some("stderr")), Some("true"));
        assert_eq!(get("sidecar", Some("stdout")), Some("false"));
        assert_eq!(get("app", Some("stderr")), Some("false"));
    }

    #[test]
    fn trailing_newlines_are_trimmed() {
        assert_eq!(trim_end(b"{\"a\":1}\r\n"), b"{\"a\":1}");
        assert_eq!(trim_end(b"\n\n"), b"");
    }
}
