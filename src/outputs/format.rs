//! Record formats shared by `stdout` and `file`: JSON Lines with an optional date key
//! (`json_date_key`, `json_date_format`), Fluent Bit's `out_file` line, `plain`, and `template`.

use crate::config::{ConfigError, Props};
use crate::json::{self, DateFormat};
use crate::record::{Event, Value};

/// The date key added in front of each JSON record, as `json_date_key`/`json_date_format` set it.
#[derive(Debug, Clone)]
pub struct DateKey {
    pub key: Option<Vec<u8>>,
    pub format: DateFormat,
}

impl DateKey {
    pub fn from_props(p: &Props, default_format: DateFormat) -> Result<Self, ConfigError> {
        let key = match p.str("json_date_key") {
            None => Some(b"date".to_vec()),
            Some(v) if crate::config::units::parse_bool(v) == Some(false) => None,
            Some(v) => Some(v.as_bytes().to_vec()),
        };
        let format = match p.prop("json_date_format") {
            None => default_format,
            Some(f) => DateFormat::parse(&f.value).ok_or_else(|| {
                ConfigError::key(
                    f,
                    "expected double, epoch, epoch_ms, iso8601 or java_sql_timestamp",
                )
            })?,
        };
        Ok(DateKey { key, format })
    }

    pub fn write_record(&self, out: &mut Vec<u8>, e: &Event, escape_unicode: bool) {
        match &self.key {
            Some(k) => {
                let v = self.format.render(e.time);
                json::write_map(out, &e.record, Some((k, &v)), escape_unicode);
            }
            None => json::write_map(out, &e.record, None, escape_unicode),
        }
    }
}

/// `{key}` placeholders; `{time}` is the event time as a float (Fluent Bit's `%f`).
#[derive(Debug, Clone)]
pub struct Template(Vec<TemplatePart>);

#[derive(Debug, Clone)]
enum TemplatePart {
    Text(String),
    Key(String),
}

impl Template {
    pub fn parse(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            match rest[open..].find('}') {
                Some(close) => {
                    parts.push(TemplatePart::Text(rest[..open].to_string()));
                    parts.push(TemplatePart::Key(rest[open + 1..open + close].to_string()));
                    rest = &rest[open + close + 1..];
                }
                None => break,
            }
        }
        parts.push(TemplatePart::Text(rest.to_string()));
        Template(parts)
    }

    pub fn write(&self, out: &mut Vec<u8>, e: &Event) {
        for part in &self.0 {
            match part {
                TemplatePart::Text(t) => out.extend_from_slice(t.as_bytes()),
                TemplatePart::Key(k) if k == "time" => {
                    out.extend_from_slice(format!("{:.6}", e.time.as_f64()).as_bytes())
                }
                TemplatePart::Key(k) => match e.record.get(k.as_bytes()) {
                    Some(Value::Str(s)) => out.extend_from_slice(s),
                    Some(v) => json::write_value(out, v, false),
                    None => {}
                },
            }
        }
        out.push(b'\n');
    }
}

/// Fluent Bit's default `file` line: `tag: [sec.nsec, {record}]`.
pub fn write_out_file_line(out: &mut Vec<u8>, tag: &str, e: &Event, escape_unicode: bool) {
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(format!(": [{}.{:09}, ", e.time.sec, e.time.nsec).as_bytes());
    json::write_map(out, &e.record, None, escape_unicode);
    out.extend_from_slice(b"]\n");
}
