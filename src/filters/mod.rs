//! Filters that FireLens and common configs use: `grep`, `record_modifier`, `modify`, and
//! `kubernetes` (pod metadata on node agents).
//! Each transforms a batch in place on the input's thread, before routing (as Fluent Bit does).

pub mod grep;
pub mod kubernetes;
pub mod modify;
pub mod record_modifier;

use std::sync::Arc;

use bytes::Bytes;

use crate::config::{ConfigError, Props};
use crate::engine::metrics::FilterMetrics;
use crate::parsers::ParserRegistry;
use crate::record::{Event, Map, Value};

pub enum Filter {
    Grep(grep::Grep),
    RecordModifier(record_modifier::RecordModifier),
    Modify(modify::Modify),
    Kubernetes(Box<kubernetes::Kubernetes>),
}

impl Filter {
    pub fn build(
        name: &str,
        p: &Props,
        parsers: &ParserRegistry,
        metrics: &Arc<FilterMetrics>,
    ) -> Result<Self, ConfigError> {
        Ok(match name {
            "grep" => Filter::Grep(grep::Grep::from_props(p)?),
            "record_modifier" => {
                Filter::RecordModifier(record_modifier::RecordModifier::from_props(p)?)
            }
            "modify" => Filter::Modify(modify::Modify::from_props(p)?),
            "kubernetes" => Filter::Kubernetes(Box::new(kubernetes::Kubernetes::from_props(
                p,
                parsers,
                metrics.clone(),
            )?)),
            other => {
                let prop = p.prop("name").expect("name checked by the caller");
                return Err(ConfigError::key(
                    prop,
                    format!("unknown filter plugin '{other}' (grep, record_modifier, modify, kubernetes)"),
                ));
            }
        })
    }

    /// Applies the filter to a batch of one tag; returns how many records it removed.
    pub fn apply(&self, tag: &str, events: &mut Vec<Event>) -> usize {
        let before = events.len();
        match self {
            Filter::Grep(g) => events.retain(|e| g.keep(&e.record)),
            Filter::RecordModifier(r) => events.iter_mut().for_each(|e| r.apply(&mut e.record)),
            Filter::Modify(m) => events.iter_mut().for_each(|e| m.apply(&mut e.record)),
            Filter::Kubernetes(k) => k.apply(tag, events),
        }
        before - events.len()
    }
}

/// A record accessor: `key` or `$key['sub']['subsub']` (Fluent Bit's `$a['b']` syntax).
#[derive(Debug, Clone)]
pub struct KeyPath(Vec<Bytes>);

impl KeyPath {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('$') else {
            return Ok(KeyPath(vec![Bytes::copy_from_slice(text.as_bytes())]));
        };
        let (head, mut tail) = match rest.find('[') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let mut parts = vec![Bytes::copy_from_slice(head.as_bytes())];
        while !tail.is_empty() {
            let inner = tail
                .strip_prefix("['")
                .or_else(|| tail.strip_prefix("[\""))
                .ok_or_else(|| format!("bad record accessor '{text}'"))?;
            let end = inner
                .find(['\'', '"'])
                .ok_or_else(|| format!("bad record accessor '{text}'"))?;
            parts.push(Bytes::copy_from_slice(&inner.as_bytes()[..end]));
            tail = inner[end + 1..]
                .strip_prefix(']')
                .ok_or_else(|| format!("bad record accessor '{text}'"))?;
        }
        if parts[0].is_empty() {
            return Err(format!("bad record accessor '{text}'"));
        }
        Ok(KeyPath(parts))
    }

    pub fn lookup<'a>(&self, record: &'a Map) -> Option<&'a Value> {
        let mut current = record.get(&self.0[0])?;
        for part in &self.0[1..] {
            match current {
                Value::Map(m) => current = m.get(part)?,
                _ => return None,
            }
        }
        Some(current)
    }
}

/// Splits `KEY VALUE` (value is the rest of the line).
pub fn key_and_rest(text: &str) -> Option<(&str, &str)> {
    let t = text.trim();
    let i = t.find([' ', '\t'])?;
    Some((&t[..i], t[i..].trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_accessor() {
        let mut inner = Map::default();
        inner.push(Bytes::from_static(b"app"), Value::str("web"));
        let mut m = Map::default();
        m.push(Bytes::from_static(b"labels"), Value::Map(inner));
        let kp = KeyPath::parse("$labels['app']").unwrap();
        assert_eq!(kp.lookup(&m), Some(&Value::str("web")));
        assert!(KeyPath::parse("$labels['app'").is_err());
    }
}
