//! Turning lines into records: raw lines, a single-line `Parser`, or `multiline.parser` lists
//! with the built-in `cri` and `docker` joiners and user `[MULTILINE_PARSER]` regex rule sets.
//!
//! Invariant kept for the tail input: [`LineAssembler::pending_since`] reports the file offset of
//! the oldest line still held in an unfinished group, so a checkpoint never moves past a line
//! that has not become a record yet (a crash cannot lose a half-joined CRI or docker line).
//! Record shapes are Fluent Bit's: `cri` → `time, stream, _p, log`; `docker` → the JSON keys in
//! order (`log, stream, time`); joined records keep the first line's keys with the content joined.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::time::parse_rfc3339;
use super::{Parser, ParserRegistry};
use crate::config::{ConfigError, Props};
use crate::pattern::Pattern;
use crate::record::{Event, EventTime, Map, Value};

pub const FLUSH_TIMEOUT: Duration = Duration::from_millis(4000);
/// Fluent Bit's `multiline_buffer_limit` default: a joined record is emitted when it grows past it.
pub const JOIN_LIMIT: usize = 2_000_000;

const K_TIME: &[u8] = b"time";
const K_STREAM: &[u8] = b"stream";
const K_P: &[u8] = b"_p";
const K_LOG: &[u8] = b"log";

/// A user `[MULTILINE_PARSER]` of `type regex`: states and transitions.
#[derive(Debug)]
pub struct RuleSet {
    pub name: String,
    /// `name` as the key of this rule set's join group (built once, not per line).
    group_key: Bytes,
    rules: Vec<(String, Pattern, String)>,
    parser: Option<Arc<Parser>>,
    key_content: Bytes,
    flush_timeout: Duration,
}

impl RuleSet {
    pub fn from_props(p: &Props, registry: &ParserRegistry) -> Result<Self, ConfigError> {
        let name = p.required("name")?.value.clone();
        let ty = p.required("type")?;
        if !ty.value.eq_ignore_ascii_case("regex") {
            return Err(ConfigError::key(
                ty,
                format!("multiline type '{}' is not supported (regex)", ty.value),
            ));
        }
        let mut rules = Vec::new();
        for r in p.all("rule") {
            let parts = quoted_parts(&r.value);
            if parts.len() != 3 {
                return Err(ConfigError::key(
                    r,
                    "a rule is three quoted fields: \"state\" \"/regex/\" \"next_state\"",
                ));
            }
            let pattern = Pattern::new(&parts[1]).map_err(|e| ConfigError::key(r, e))?;
            rules.push((parts[0].clone(), pattern, parts[2].clone()));
        }
        if !rules.iter().any(|r| r.0 == "start_state") {
            return Err(ConfigError::at(
                &p.section.origin,
                format!("multiline parser '{name}' has no \"start_state\" rule"),
            ));
        }
        let parser =
            match p.prop("parser") {
                Some(pp) => Some(registry.get(&pp.value).ok_or_else(|| {
                    ConfigError::key(pp, format!("unknown parser '{}'", pp.value))
                })?),
                None => None,
            };
        let flush_ms = p.int("flush_timeout", FLUSH_TIMEOUT.as_millis() as i64)?;
        p.accept(&["key_pattern", "key_group"]);
        Ok(RuleSet {
            group_key: Bytes::copy_from_slice(name.as_bytes()),
            name,
            rules,
            parser,
            key_content: Bytes::from(p.string_or("key_content", "log")),
            flush_timeout: Duration::from_millis(flush_ms.max(0) as u64),
        })
    }

    fn starts(&self, text: &str) -> bool {
        self.rules
            .iter()
            .any(|(state, re, _)| state == "start_state" && re.is_match(text))
    }

    fn continues(&self, state: &str, text: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(s, re, _)| s == state && re.is_match(text))
            .map(|(_, _, next)| next.as_str())
    }
}

fn quoted_parts(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = s.trim();
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        parts.push(after[..end].to_string());
        rest = &after[end + 1..];
    }
    parts
}

/// One entry of a `multiline.parser` list.
#[derive(Debug, Clone)]
pub enum Joiner {
    Cri,
    Docker,
    Rules(Arc<RuleSet>),
}

impl Joiner {
    pub fn by_name(name: &str, registry: &ParserRegistry) -> Option<Self> {
        match name {
            "cri" => Some(Joiner::Cri),
            "docker" => Some(Joiner::Docker),
            other => registry.multiline(other).map(Joiner::Rules),
        }
    }
}

/// How a tail input turns lines into records.
#[derive(Debug, Clone)]
pub enum LineMode {
    /// `{"<Key>": line}` (tail's default, `Key log`).
    Raw {
        key: Bytes,
    },
    /// `Parser <name>`: parsed, or raw when it does not match.
    Parser {
        parser: Arc<Parser>,
        key: Bytes,
    },
    Multiline(Vec<Joiner>),
}

/// A group of lines being joined into one record.
struct Group {
    /// Which stream (CRI/docker) or rule set the group belongs to.
    stream: Bytes,
    record: Map,
    time: EventTime,
    content_key: Bytes,
    content: BytesMut,
    start_offset: u64,
    since: Instant,
    state: String,
}

pub struct LineAssembler {
    mode: LineMode,
    joins: Joins,
}

/// Groups being joined, kept apart from the mode so a line borrows the joiners without a copy.
#[derive(Default)]
struct Joins {
    groups: Vec<Group>,
    truncated_joins: u64,
}

/// A parsed container line: `last` is false for a CRI `P` line or a docker line without `\n`.
struct ContainerLine {
    stream: Bytes,
    time: EventTime,
    record: Map,
    last: bool,
}

impl LineAssembler {
    pub fn new(mode: LineMode) -> Self {
        LineAssembler {
            mode,
            joins: Joins::default(),
        }
    }

    /// The file offset of the oldest line held in an unfinished group.
    pub fn pending_since(&self) -> Option<u64> {
        self.joins.groups.iter().map(|g| g.start_offset).min()
    }

    /// Joined records cut at [`JOIN_LIMIT`] since the last call.
    pub fn take_truncated_joins(&mut self) -> u64 {
        std::mem::take(&mut self.joins.truncated_joins)
    }

    /// Feeds one complete line (no newline) that started at file offset `offset`.
    pub fn push(&mut self, line: Bytes, offset: u64, out: &mut Vec<Event>) {
        match &self.mode {
            LineMode::Raw { key } => out.push(Event {
                time: EventTime::now(),
                record: raw_map(key, &line),
            }),
            LineMode::Parser { parser, key } => {
                let (time, record) = match parser.parse(&line) {
                    Some((t, m)) => (t.unwrap_or_else(EventTime::now), m),
                    None => (EventTime::now(), raw_map(key, &line)),
                };
                out.push(Event { time, record });
            }
            LineMode::Multiline(joiners) => self.joins.push(joiners, line, offset, out),
        }
    }
    /// Emits groups that waited longer than their flush timeout.
    pub fn flush_expired(&mut self, now: Instant, out: &mut Vec<Event>) {
        let timeout = |g: &Group, mode: &LineMode| match mode {
            LineMode::Multiline(js) => js
                .iter()
                .find_map(|j| match j {
                    Joiner::Rules(r) if r.group_key == g.stream => Some(r.flush_timeout),
                    _ => None,
                })
                .unwrap_or(FLUSH_TIMEOUT),
            _ => FLUSH_TIMEOUT,
        };
        let mut i = 0;
        while i < self.joins.groups.len() {
            if now.duration_since(self.joins.groups[i].since)
                >= timeout(&self.joins.groups[i], &self.mode)
            {
                let g = self.joins.groups.remove(i);
                out.push(finish(g));
            } else {
                i += 1;
            }
        }
    }

    pub fn flush_all(&mut self, out: &mut Vec<Event>) {
        for g in self.joins.groups.drain(..) {
            out.push(finish(g));
        }
    }
}

impl Joins {
    fn push(&mut self, joiners: &[Joiner], line: Bytes, offset: u64, out: &mut Vec<Event>) {
        for joiner in joiners {
            match joiner {
                Joiner::Cri => {
                    if let Some(p) = parse_cri(&line) {
                        return self.accept_container(p, K_LOG, offset, out);
                    }
                }
                Joiner::Docker => {
                    if let Some(p) = parse_docker(&line) {
                        return self.accept_container(p, K_LOG, offset, out);
                    }
                }
                Joiner::Rules(rules) => {
                    if self.push_rules(rules, &line, offset, out) {
                        return;
                    }
                }
            }
        }
        out.push(Event {
            time: EventTime::now(),
            record: raw_map(&Bytes::from_static(K_LOG), &line),
        });
    }

    fn accept_container(
        &mut self,
        parsed: ContainerLine,
        content_key: &'static [u8],
        offset: u64,
        out: &mut Vec<Event>,
    ) {
        let ContainerLine {
            stream,
            time,
            record,
            last,
        } = parsed;
        let open_group = self.groups.iter().any(|g| g.stream == stream);
        if last && !open_group {
            out.push(Event { time, record });
            return;
        }
        {
            {
                let piece = match record.get(content_key) {
                    Some(Value::Str(s)) => s.clone(),
                    _ => Bytes::new(),
                };
                let idx = match self.groups.iter().position(|g| g.stream == stream) {
                    Some(i) => i,
                    None => {
                        self.groups.push(Group {
                            stream,
                            record,
                            time,
                            content_key: Bytes::from_static(content_key),
                            content: BytesMut::new(),
                            start_offset: offset,
                            since: Instant::now(),
                            state: String::new(),
                        });
                        self.groups.len() - 1
                    }
                };
                let group = &mut self.groups[idx];
                let room = JOIN_LIMIT.saturating_sub(group.content.len());
                if piece.len() > room {
                    group.content.extend_from_slice(&piece[..room]);
                    self.truncated_joins += 1;
                } else {
                    group.content.extend_from_slice(&piece);
                }
                if last || group.content.len() >= JOIN_LIMIT {
                    let g = self.groups.remove(idx);
                    out.push(finish(g));
                }
            }
        }
    }

    /// Returns false when the line is not handled by this rule set (no group and no start match).
    fn push_rules(
        &mut self,
        rules: &Arc<RuleSet>,
        line: &Bytes,
        offset: u64,
        out: &mut Vec<Event>,
    ) -> bool {
        let (time, record) = match &rules.parser {
            Some(p) => match p.parse(line) {
                Some((t, m)) => (t.unwrap_or_else(EventTime::now), m),
                None => (EventTime::now(), raw_map(&rules.key_content, line)),
            },
            None => (EventTime::now(), raw_map(&rules.key_content, line)),
        };
        let content = match record.get(&rules.key_content) {
            Some(Value::Str(s)) => s.clone(),
            _ => return false,
        };
        let text = String::from_utf8_lossy(&content);
        let key = rules.group_key.clone();
        let existing = self.groups.iter().position(|g| g.stream == key);
        if let Some(i) = existing {
            let state = self.groups[i].state.clone();
            if let Some(next) = rules.continues(&state, &text) {
                let g = &mut self.groups[i];
                if g.content.len() + content.len() < JOIN_LIMIT {
                    g.content.extend_from_slice(b"\n");
                    g.content.extend_from_slice(&content);
                } else {
                    self.truncated_joins += 1;
                }
                g.state = next.to_string();
                return true;
            }
            let g = self.groups.remove(i);
            out.push(finish(g));
        }
        if rules.starts(&text) {
            let next = rules
                .continues("start_state", &text)
                .unwrap_or("start_state")
                .to_string();
            self.groups.push(Group {
                stream: key,
                record,
                time,
                content_key: rules.key_content.clone(),
                content: BytesMut::from(&content[..]),
                start_offset: offset,
                since: Instant::now(),
                state: next,
            });
            return true;
        }
        out.push(Event { time, record });
        true
    }
}

fn raw_map(key: &Bytes, line: &Bytes) -> Map {
    let mut m = Map::with_capacity(1);
    m.push(key.clone(), Value::Str(line.clone()));
    m
}

fn finish(mut g: Group) -> Event {
    g.record.set(g.content_key, Value::Str(g.content.freeze()));
    Event {
        time: g.time,
        record: g.record,
    }
}

/// CRI: `<time> <stdout|stderr> <F|P> <log>`, hand-matched like the regex
/// `^(?<time>.+?) (?<stream>stdout|stderr) (?<_p>F|P) (?<log>.*)$`.
fn parse_cri(line: &Bytes) -> Option<ContainerLine> {
    let b = line.as_ref();
    let mut search = 0;
    while let Some(rel) = memchr::memchr(b' ', &b[search..]) {
        let sp = search + rel;
        search = sp + 1;
        if sp == 0 {
            continue;
        }
        let rest = &b[sp + 1..];
        if rest.len() < 9 || !(rest.starts_with(b"stdout ") || rest.starts_with(b"stderr ")) {
            continue;
        }
        let flag = rest[7];
        if !(flag == b'F' || flag == b'P') || rest[8] != b' ' {
            continue;
        }
        let stream_at = sp + 1;
        let log_at = sp + 1 + 9;
        if b[log_at..].contains(&b'\n') {
            return None;
        }
        let time_bytes = line.slice(0..sp);
        let time = parse_rfc3339(&time_bytes).unwrap_or_else(EventTime::now);
        let stream = line.slice(stream_at..stream_at + 6);
        let mut record = Map::with_capacity(4);
        record.push(Bytes::from_static(K_TIME), Value::Str(time_bytes));
        record.push(Bytes::from_static(K_STREAM), Value::Str(stream.clone()));
        record.push(
            Bytes::from_static(K_P),
            Value::Str(line.slice(stream_at + 7..stream_at + 8)),
        );
        record.push(Bytes::from_static(K_LOG), Value::Str(line.slice(log_at..)));
        return Some(ContainerLine {
            stream,
            time,
            record,
            last: flag == b'F',
        });
    }
    None
}

/// docker json-file: `{"log":"...\n","stream":"stdout","time":"..."}`; a `log` without a
/// trailing newline is a 16 KiB split and is joined with what follows on the same stream.
fn parse_docker(line: &Bytes) -> Option<ContainerLine> {
    if line.first() != Some(&b'{') {
        return None;
    }
    let Ok(Value::Map(record)) = crate::json::parse(line) else {
        return None;
    };
    let log_ends_line = match record.get(K_LOG) {
        Some(Value::Str(s)) => s.last() == Some(&b'\n'),
        _ => return None,
    };
    let time = match record.get(K_TIME) {
        Some(Value::Str(s)) => parse_rfc3339(s).unwrap_or_else(EventTime::now),
        _ => EventTime::now(),
    };
    let stream = match record.get(K_STREAM) {
        Some(Value::Str(s)) => s.clone(),
        _ => Bytes::from_static(b"stdout"),
    };
    Some(ContainerLine {
        stream,
        time,
        record,
        last: log_ends_line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: LineMode, lines: &[&str]) -> (Vec<String>, Option<u64>) {
        let mut a = LineAssembler::new(mode);
        let mut out = Vec::new();
        let mut off = 0;
        for l in lines {
            a.push(Bytes::copy_from_slice(l.as_bytes()), off, &mut out);
            off += l.len() as u64 + 1;
        }
        let pending = a.pending_since();
        let rendered = out
            .iter()
            .map(|e| {
                let mut v = Vec::new();
                crate::json::write_map(&mut v, &e.record, None, true);
                String::from_utf8(v).unwrap()
            })
            .collect();
        (rendered, pending)
    }

    fn ml(js: &[Joiner]) -> LineMode {
        LineMode::Multiline(js.to_vec())
    }

    #[test]
    fn cri_shapes_and_joins() {
        let lines = [
            "2024-01-01T00:00:00.000000001Z stdout F hello",
            "2024-01-01T00:00:00.1Z stdout P part1 ",
            "2024-01-01T00:00:00.2Z stderr F err",
            "2024-01-01T00:00:00.3Z stdout F part2",
            "2024-01-01T00:00:00.4Z stdout P dangling",
        ];
        let (out, pending) = run(
            ml(&[Joiner::Docker, Joiner::Cri]),
            &[
                "2024-01-01T00:00:00.000000001Z stdout F hello",
                "2024-01-01T00:00:00.1Z stdout P part1 ",
                "2024-01-01T00:00:00.2Z stderr F err",
                "2024-01-01T00:00:00.3Z stdout F part2",
                "2024-01-01T00:00:00.4Z stdout P dangling",
            ],
        );
        assert_eq!(
            out,
            vec![
                r#"{"time":"2024-01-01T00:00:00.000000001Z","stream":"stdout","_p":"F","log":"hello"}"#,
                r#"{"time":"2024-01-01T00:00:00.2Z","stream":"stderr","_p":"F","log":"err"}"#,
                r#"{"time":"2024-01-01T00:00:00.1Z","stream":"stdout","_p":"P","log":"part1 part2"}"#,
            ]
        );
        // The dangling P line started after the four lines before it.
        let expected: u64 = lines[..4].iter().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(pending, Some(expected));
    }

    #[test]
    fn docker_split_join_and_fallback() {
        let (out, pending) = run(
            ml(&[Joiner::Docker, Joiner::Cri]),
            &[
                r#"{"log":"a","stream":"stdout","time":"2024-01-01T00:00:00Z"}"#,
                r#"{"log":"b\n","stream":"stdout","time":"2024-01-01T00:00:01Z"}"#,
                "not a container line",
            ],
        );
        assert_eq!(
            out,
            vec![
                r#"{"log":"ab\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}"#,
                r#"{"log":"not a container line"}"#,
            ]
        );
        assert_eq!(pending, None);
    }
}
