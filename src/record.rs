//! The event model: a record is an ordered map of byte-string keys to values, with an event time.
//!
//! Strings are `bytes::Bytes`, so a parsed line's fields stay slices of the read buffer until an
//! output writes them (no per-field copy). Key order is insertion order, as Fluent Bit keeps it.

use bytes::Bytes;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// Raw bytes: usually UTF-8, but a log line may carry anything; writers sanitise.
    Str(Bytes),
    Array(Vec<Value>),
    Map(Map),
}

impl Value {
    pub fn str(s: &'static str) -> Value {
        Value::Str(Bytes::from_static(s.as_bytes()))
    }
    pub fn string(s: String) -> Value {
        Value::Str(Bytes::from(s))
    }
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Str(b) => Some(b),
            _ => None,
        }
    }
    /// The value as text for matching (grep, routing templates): strings as-is, scalars printed.
    pub fn to_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Str(b) => Some(String::from_utf8_lossy(b)),
            Value::Int(i) => Some(Cow::Owned(i.to_string())),
            Value::UInt(u) => Some(Cow::Owned(u.to_string())),
            Value::Float(f) => Some(Cow::Owned(f.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        }
    }
}

/// An ordered map. Lookups are linear: log records have a handful of keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Map(pub Vec<(Bytes, Value)>);

impl Map {
    pub fn with_capacity(n: usize) -> Self {
        Map(Vec::with_capacity(n))
    }
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v)
    }
    pub fn contains(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }
    /// Appends without checking for an existing key (parsers produce unique keys).
    pub fn push(&mut self, key: Bytes, value: Value) {
        self.0.push((key, value));
    }
    /// Replaces the value of an existing key in place, or appends.
    pub fn set(&mut self, key: Bytes, value: Value) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
    pub fn remove(&mut self, key: &[u8]) -> Option<Value> {
        let i = self.0.iter().position(|(k, _)| k.as_ref() == key)?;
        Some(self.0.remove(i).1)
    }
    pub fn rename(&mut self, from: &[u8], to: Bytes) -> bool {
        match self.0.iter_mut().find(|(k, _)| k.as_ref() == from) {
            Some(slot) => {
                slot.0 = to;
                true
            }
            None => false,
        }
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Event time as Fluent Bit keeps it: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct EventTime {
    pub sec: i64,
    pub nsec: u32,
}

impl EventTime {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        EventTime {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
    pub fn as_f64(&self) -> f64 {
        self.sec as f64 + self.nsec as f64 / 1e9
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub time: EventTime,
    pub record: Map,
}
