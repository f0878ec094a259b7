//! Which log group and stream a record goes to: the configured templates, their fallbacks, and
//! the Go plugin's name sanitising. Names are built into one reused buffer (`group\0stream`),
//! so naming a record allocates only when it opens a new stream (or prints a number).

use super::template::{TaskMetadata, Template};
use crate::record::Map;

/// CloudWatch's limit on group and stream name length.
const MAX_NAME_LEN: usize = 512;

/// How a record finds its group and stream. A template that does not resolve (or renders empty)
/// falls back: `cloudwatch_logs` to `log_group_name` / `log_stream_name` (or prefix + tag),
/// `cloudwatch` to `default_log_group_name` / `default_log_stream_name`.
#[derive(Debug)]
pub(super) struct Naming {
    pub(super) group: Option<Template>,
    pub(super) group_fallback: String,
    pub(super) stream: Option<Template>,
    pub(super) stream_fallback: StreamFallback,
    /// The Go plugin replaces characters CloudWatch refuses (group: outside `[A-Za-z0-9_./-]`;
    /// stream: `:` and `*`) with `.`.
    pub(super) sanitize: bool,
}

#[derive(Debug)]
pub(super) enum StreamFallback {
    Name(String),
    /// `log_stream_prefix`: the stream is prefix + tag.
    Prefix(String),
}

impl Naming {
    pub(super) fn reads_record(&self) -> bool {
        self.group.as_ref().is_some_and(Template::reads_record)
            || self.stream.as_ref().is_some_and(Template::reads_record)
    }

    pub(super) fn needs_ecs(&self) -> bool {
        self.group.as_ref().is_some_and(Template::needs_ecs)
            || self.stream.as_ref().is_some_and(Template::needs_ecs)
    }

    /// Writes `group\0stream` into `key`; returns how many templates fell back.
    pub(super) fn resolve(
        &self,
        key: &mut String,
        scratch: &mut String,
        tag: &str,
        record: &Map,
        ctx: &NameContext,
    ) -> u32 {
        let mut fallbacks = 0;
        key.clear();
        match &self.group {
            Some(t)
                if t.render(scratch, tag, record, &ctx.uuid, ctx.ecs.as_ref())
                    && !scratch.is_empty() =>
            {
                push_name(key, scratch, self.sanitize.then_some(sanitize_group));
            }
            other => {
                fallbacks += u32::from(other.is_some());
                key.push_str(&self.group_fallback);
            }
        }
        key.push('\0');
        match &self.stream {
            Some(t)
                if t.render(scratch, tag, record, &ctx.uuid, ctx.ecs.as_ref())
                    && !scratch.is_empty() =>
            {
                push_name(key, scratch, self.sanitize.then_some(sanitize_stream));
            }
            other => {
                fallbacks += u32::from(other.is_some());
                match &self.stream_fallback {
                    StreamFallback::Name(n) => key.push_str(n),
                    StreamFallback::Prefix(p) => {
                        key.push_str(p);
                        key.push_str(tag);
                    }
                }
            }
        }
        fallbacks
    }
}

fn push_name(key: &mut String, name: &str, sanitize: Option<fn(char) -> char>) {
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    match sanitize {
        Some(f) => key.extend(name[..end].chars().map(f)),
        None => key.push_str(&name[..end]),
    }
}

fn sanitize_group(c: char) -> char {
    if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/') {
        c
    } else {
        '.'
    }
}

fn sanitize_stream(c: char) -> char {
    if matches!(c, ':' | '*') {
        '.'
    } else {
        c
    }
}

/// Values templates read besides the record: the instance's `$(uuid)` and the ECS metadata.
#[derive(Debug, Default)]
pub(super) struct NameContext {
    pub(super) uuid: String,
    pub(super) ecs: Option<TaskMetadata>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Value;

    #[test]
    fn go_names_are_sanitized_and_fall_back_to_defaults() {
        let naming = Naming {
            group: Some(Template::go("/aws/$(app)#x").unwrap()),
            group_fallback: "fluentbit-default".into(),
            stream: Some(Template::go("$(tag):$(missing)").unwrap()),
            stream_fallback: StreamFallback::Name("/fluentbit-default".into()),
            sanitize: true,
        };
        let mut record = Map::default();
        record.push(bytes::Bytes::from_static(b"app"), Value::str("shop 1"));
        let (mut key, mut scratch) = (String::new(), String::new());
        let fell_back = naming.resolve(
            &mut key,
            &mut scratch,
            "a.b",
            &record,
            &NameContext::default(),
        );
        assert_eq!(key, "/aws/shop.1.x\0/fluentbit-default");
        assert_eq!(fell_back, 1);
    }
}
