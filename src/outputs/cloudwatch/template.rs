//! Log group and stream name templates of both CloudWatch plugins, compiled once at start:
//! Fluent Bit's record accessor (`cloudwatch_logs`: `$TAG`, `$TAG[n]`, `$key`, `$key['sub']`)
//! and the Go plugin's `$(var)` (`cloudwatch`: `$(tag)`, `$(tag[n])`, `$(uuid)`, `$(key['sub'])`,
//! `$(ecs_task_id)`, `$(ecs_cluster)`, `$(ecs_task_arn)`).
//!
//! Rendering returns `None` when a variable does not resolve (a missing key, a Go tag index past
//! the tag's parts); the caller then falls back to the configured default name, as both plugins do.

pub use crate::cloud::ecs::TaskMetadata;
use crate::record::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Tag,
    /// `$TAG[n]` renders empty past the last part; `$(tag[n])` fails there (`strict`).
    TagIndex {
        index: usize,
        strict: bool,
    },
    /// A record key and its sub-keys. `strings_only`: the Go plugin resolves strings only.
    Key {
        path: Vec<Vec<u8>>,
        strings_only: bool,
    },
    Uuid,
    EcsTaskId,
    EcsCluster,
    EcsTaskArn,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Fluent Bit's record accessor syntax (`flb_ra_create`): a variable runs from `$` to the next
    /// `.`, `,`, space or `"` outside quotes; `$TAG` and `$TAG[n]` are recognised first.
    pub fn record_accessor(s: &str) -> Result<Template, String> {
        let b = s.as_bytes();
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' || i + 1 == b.len() {
                let next = s[i..].chars().next().expect("in bounds");
                text.push(next);
                i += next.len_utf8();
                continue;
            }
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            let rest = &s[i + 1..];
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!(
                    "'${}': regex captures have no meaning in a name template",
                    &rest[..1]
                ));
            }
            if let Some(after) = rest.strip_prefix("TAG") {
                if let Some(inner) = after.strip_prefix('[') {
                    let close = inner
                        .find(']')
                        .ok_or_else(|| format!("'$TAG[' without ']' in '{s}'"))?;
                    let index = inner[..close]
                        .trim()
                        .parse()
                        .map_err(|_| format!("'$TAG[{}]' is not a tag index", &inner[..close]))?;
                    parts.push(Part::TagIndex {
                        index,
                        strict: false,
                    });
                    i += 1 + 3 + 1 + close + 1;
                } else {
                    parts.push(Part::Tag);
                    i += 1 + 3;
                }
                continue;
            }
            let mut quotes = 0;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    if c == '\'' {
                        quotes += 1;
                    }
                    quotes % 2 == 0 && matches!(c, '.' | ' ' | ',' | '"')
                })
                .map_or(rest.len(), |(at, _)| at);
            parts.push(Part::Key {
                path: key_path(&rest[..end]).ok_or_else(|| {
                    format!(
                        "cannot parse '${}' (expected $key or $key['sub']['sub'])",
                        &rest[..end]
                    )
                })?,
                strings_only: false,
            });
            i += 1 + end;
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { parts })
    }

    /// The Go plugin's `$(var)` syntax.
    pub fn go(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("$(") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let body = &rest[start + 2..];
            let close = body
                .find(')')
                .ok_or_else(|| format!("'$(' without ')' in '{s}'"))?;
            let var = &body[..close];
            parts.push(match var {
                "ecs_task_id" => Part::EcsTaskId,
                "ecs_cluster" => Part::EcsCluster,
                "ecs_task_arn" => Part::EcsTaskArn,
                "uuid" => Part::Uuid,
                "tag" => Part::Tag,
                _ if var.starts_with("tag[") => {
                    let index = var[4..]
                        .strip_suffix(']')
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n < 10)
                        .ok_or_else(|| format!("'$({var})': the tag index must be 0 to 9"))?;
                    Part::TagIndex {
                        index,
                        strict: true,
                    }
                }
                _ => Part::Key {
                    path: key_path(var).ok_or_else(|| {
                        format!("cannot parse '$({var})' (expected $(key) or $(key['sub']))")
                    })?,
                    strings_only: true,
                },
            });
            rest = &body[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether rendering reads the record (else one render per tag is enough).
    pub fn reads_record(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Key { .. }))
    }

    /// Whether rendering needs the ECS task metadata.
    pub fn needs_ecs(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::EcsTaskId | Part::EcsCluster | Part::EcsTaskArn))
    }

    /// Renders into `out` (cleared first); false when a variable does not resolve.
    pub fn render(
        &self,
        out: &mut String,
        tag: &str,
        record: &Map,
        uuid: &str,
        ecs: Option<&TaskMetadata>,
    ) -> bool {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Tag => out.push_str(tag),
                Part::TagIndex { index, strict } => {
                    let limit = if *strict { 10 } else { usize::MAX };
                    match tag.splitn(limit, '.').nth(*index) {
                        Some(p) => out.push_str(p),
                        None if *strict => return false,
                        None => {}
                    }
                }
                Part::Key { path, strings_only } => {
                    let mut value = record.get(&path[0]);
                    for sub in &path[1..] {
                        value = match value {
                            Some(Value::Map(m)) => m.get(sub),
                            _ => None,
                        };
                    }
                    match value {
                        Some(Value::Str(s)) => out.push_str(&String::from_utf8_lossy(s)),
                        Some(
                            v @ (Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Bool(_)),
                        ) if !strings_only => out.push_str(&v.to_text().expect("scalar")),
                        _ => return false,
                    }
                }
                Part::Uuid => out.push_str(uuid),
                Part::EcsTaskId | Part::EcsCluster | Part::EcsTaskArn => {
                    let Some(m) = ecs else { return false };
                    out.push_str(match part {
                        Part::EcsTaskId => &m.task_id,
                        Part::EcsCluster => &m.cluster,
                        _ => &m.task_arn,
                    })
                }
            }
        }
        true
    }
}

/// `key` or `key['a']['b']` → `[key, a, b]`.
fn key_path(s: &str) -> Option<Vec<Vec<u8>>> {
    let (head, mut rest) = s.split_at(s.find('[').unwrap_or(s.len()));
    if head.is_empty() || head.contains(['\'', ']', '$', '(', ')']) {
        return None;
    }
    let mut path = vec![head.as_bytes().to_vec()];
    while !rest.is_empty() {
        let inner = rest.strip_prefix("['")?;
        let close = inner.find("']")?;
        path.push(inner.as_bytes()[..close].to_vec());
        rest = &inner[close + 2..];
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> Map {
        let mut k8s = Map::default();
        k8s.push(Bytes::from_static(b"pod_name"), Value::str("web-1"));
        k8s.push(Bytes::from_static(b"namespace_name"), Value::str("prod"));
        let mut m = Map::default();
        m.push(Bytes::from_static(b"kubernetes"), Value::Map(k8s));
        m.push(Bytes::from_static(b"app"), Value::str("shop"));
        m.push(Bytes::from_static(b"code"), Value::Int(42));
        m
    }

    fn render(t: &Template, tag: &str) -> Option<String> {
        let meta = TaskMetadata {
            cluster: "prod-cluster".into(),
            task_arn: "arn:aws:ecs:us-west-2:111111111111:task/prod-cluster/abc123".into(),
            task_id: "abc123".into(),
            ..Default::default()
        };
        let mut out = String::new();
        t.render(&mut out, tag, &record(), "UUID", Some(&meta))
            .then_some(out)
    }

    #[test]
    fn record_accessor_templates() {
        let t = Template::record_accessor("/aws/$kubernetes['namespace_name'].$TAG[1]").unwrap();
        assert!(t.reads_record());
        assert_eq!(render(&t, "kube.var.log").as_deref(), Some("/aws/prod.var"));
        let t = Template::record_accessor("$TAG-$app,$code").unwrap();
        assert_eq!(render(&t, "a.b").as_deref(), Some("a.b-shop,42"));
        // A part past the tag's end renders empty, as Fluent Bit does.
        let t = Template::record_accessor("x$TAG[5]y").unwrap();
        assert_eq!(render(&t, "a.b").as_deref(), Some("xy"));
        // A missing key fails the template: the caller falls back to log_group_name.
        let t = Template::record_accessor("$kubernetes['labels'].x").unwrap();
        assert_eq!(render(&t, "a"), None);
        assert!(Template::record_accessor("$a['b'").is_err());
        assert!(Template::record_accessor("$1").is_err());
        let t = Template::record_accessor("plain").unwrap();
        assert!(!t.reads_record() && !t.needs_ecs());
        assert_eq!(render(&t, "a").as_deref(), Some("plain"));
    }

    #[test]
    fn go_templates() {
        let t =
            Template::go("/aws/ecs/$(ecs_cluster)/$(tag[1])/$(kubernetes['pod_name'])").unwrap();
        assert!(t.needs_ecs() && t.reads_record());
        assert_eq!(
            render(&t, "app.firelens.x").as_deref(),
            Some("/aws/ecs/prod-cluster/firelens/web-1")
        );
        let t = Template::go("$(ecs_task_id)-$(uuid)-$(tag)").unwrap();
        assert_eq!(render(&t, "t").as_deref(), Some("abc123-UUID-t"));
        // The Go plugin fails on a missing tag part, a missing key and a non-string value.
        for bad in ["$(tag[3])", "$(missing)", "$(code)"] {
            assert_eq!(render(&Template::go(bad).unwrap(), "a.b"), None, "{bad}");
        }
        let mut out = String::new();
        let t = Template::go("$(ecs_cluster)").unwrap();
        assert!(!t.render(&mut out, "t", &record(), "u", None));
        assert!(Template::go("$(tag[10])").is_err());
        assert!(Template::go("$(open").is_err());
    }
}
