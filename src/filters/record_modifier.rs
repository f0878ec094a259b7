//! `record_modifier`: append fixed keys (`Record`), remove keys (`Remove_key`), or keep only
//! listed keys (`Allowlist_key`, alias `Whitelist_key`). FireLens adds its `ecs_*` fields with it.
//! As in Fluent Bit: `Record` appends even when the key exists, a trailing `*` makes a key list
//! entry a prefix, and `Remove_key` and `Allowlist_key` are exclusive.

use bytes::Bytes;

use super::key_and_rest;
use crate::config::{ConfigError, Props};
use crate::record::{Map, Value};

#[derive(Debug)]
pub struct RecordModifier {
    records: Vec<(Bytes, Bytes)>,
    remove: Vec<Bytes>,
    allow: Vec<Bytes>,
}

impl RecordModifier {
    pub fn from_props(p: &Props) -> Result<Self, ConfigError> {
        let mut records = Vec::new();
        for prop in p.all("record") {
            let (k, v) = key_and_rest(&prop.value)
                .ok_or_else(|| ConfigError::key(prop, "expected 'KEY VALUE'"))?;
            records.push((
                Bytes::copy_from_slice(k.as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            ));
        }
        let list = |key: &str| {
            p.all(key)
                .into_iter()
                .map(|x| Bytes::copy_from_slice(x.value.trim().as_bytes()))
                .collect::<Vec<_>>()
        };
        let remove = list("remove_key");
        let mut allow = list("allowlist_key");
        allow.extend(list("whitelist_key"));
        Ok(RecordModifier {
            records,
            remove,
            allow,
        })
    }

    pub fn apply(&self, record: &mut Map) {
        if !self.allow.is_empty() {
            record
                .0
                .retain(|(k, _)| self.allow.iter().any(|p| key_matches(p, k)));
        }
        if !self.remove.is_empty() {
            record
                .0
                .retain(|(k, _)| !self.remove.iter().any(|p| key_matches(p, k)));
        }
        for (k, v) in &self.records {
            record.push(k.clone(), Value::Str(v.clone()));
        }
    }
}

/// `key` matches exactly; `prefix*` matches any key starting with `prefix`.
fn key_matches(pattern: &[u8], key: &[u8]) -> bool {
    match pattern.strip_suffix(b"*") {
        Some(prefix) => key.starts_with(prefix),
        None => pattern == key,
    }
}
