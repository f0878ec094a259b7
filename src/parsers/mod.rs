//! Parsers: `[PARSER]` definitions (json, regex) with `Time_Key`/`Time_Format`/`Time_Keep`/`Types`,
//! `[MULTILINE_PARSER]` definitions, and the registry that tail and filters look names up in.
//! The built-in container multiline parsers (`cri`, `docker`) live in [`multiline`].

pub mod multiline;
pub mod time;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{ConfigDocument, ConfigError, Props, SectionKind};
use crate::pattern::Pattern;
use crate::record::{EventTime, Map, Value};
use time::TimeFormat;

#[derive(Debug)]
pub enum ParserFormat {
    Json,
    Regex(Pattern),
}

#[derive(Debug, Clone, Copy)]
enum FieldType {
    Integer,
    Float,
    Bool,
    String,
}

/// One `[PARSER]` section.
#[derive(Debug)]
pub struct Parser {
    pub name: String,
    format: ParserFormat,
    time_key: Option<Bytes>,
    time_format: Option<TimeFormat>,
    time_keep: bool,
    types: Vec<(Bytes, FieldType)>,
    skip_empty_values: bool,
}

impl Parser {
    fn from_props(p: &Props) -> Result<Self, ConfigError> {
        let name = p.required("name")?.value.clone();
        let format_prop = p.required("format")?;
        let format = match format_prop.value.to_ascii_lowercase().as_str() {
            "json" => ParserFormat::Json,
            "regex" => {
                let r = p.required("regex")?;
                ParserFormat::Regex(Pattern::new(&r.value).map_err(|e| ConfigError::key(r, e))?)
            }
            other => {
                return Err(ConfigError::key(
                    format_prop,
                    format!("parser format '{other}' is not supported (json, regex)"),
                ))
            }
        };
        let time_format = p.str("time_format").map(TimeFormat::new);
        let mut types = Vec::new();
        if let Some(t) = p.prop("types") {
            for item in t.value.split_whitespace() {
                let (k, ty) = item
                    .split_once(':')
                    .ok_or_else(|| ConfigError::key(t, format!("'{item}' is not key:type")))?;
                let ty = match ty {
                    "integer" => FieldType::Integer,
                    "float" => FieldType::Float,
                    "bool" => FieldType::Bool,
                    "string" => FieldType::String,
                    other => {
                        return Err(ConfigError::key(
                            t,
                            format!("unknown type '{other}' (integer, float, bool, string)"),
                        ))
                    }
                };
                types.push((Bytes::copy_from_slice(k.as_bytes()), ty));
            }
        }
        let parser = Parser {
            name,
            format,
            time_key: Some(Bytes::from(p.string_or("time_key", "time"))),
            time_format,
            time_keep: p.bool("time_keep", false)?,
            types,
            skip_empty_values: p.bool("skip_empty_values", true)?,
        };
        p.accept(&[
            "time_strict",
            "time_offset",
            "decode_field",
            "decode_field_as",
        ]);
        Ok(parser)
    }

    /// Parses `line`; `None` when it does not match (the caller keeps the line unparsed).
    pub fn parse(&self, line: &Bytes) -> Option<(Option<EventTime>, Map)> {
        let mut map = match &self.format {
            ParserFormat::Json => match crate::json::parse(line) {
                Ok(Value::Map(m)) => m,
                _ => return None,
            },
            ParserFormat::Regex(re) => {
                let text = std::str::from_utf8(line).ok()?;
                let caps = re.named_captures(text)?;
                let mut m = Map::with_capacity(caps.len());
                for (name, range) in caps {
                    if self.skip_empty_values && range.is_empty() {
                        continue;
                    }
                    m.push(Bytes::from(name), Value::Str(line.slice(range)));
                }
                m
            }
        };
        for (key, ty) in &self.types {
            if let Some(Value::Str(s)) = map.get(key) {
                let text = String::from_utf8_lossy(s);
                let converted = match ty {
                    FieldType::Integer => text.trim().parse().ok().map(Value::Int),
                    FieldType::Float => text.trim().parse().ok().map(Value::Float),
                    FieldType::Bool => crate::config::units::parse_bool(&text).map(Value::Bool),
                    FieldType::String => None,
                };
                if let Some(v) = converted {
                    map.set(key.clone(), v);
                }
            }
        }
        let mut time = None;
        if let (Some(key), Some(format)) = (&self.time_key, &self.time_format) {
            if let Some(Value::Str(s)) = map.get(key) {
                time = format.parse(s);
                if time.is_some() && !self.time_keep {
                    map.remove(key);
                }
            }
        }
        Some((time, map))
    }
}

/// All parsers a config defines, by name.
#[derive(Debug, Default)]
pub struct ParserRegistry {
    parsers: HashMap<String, Arc<Parser>>,
    multiline: HashMap<String, Arc<multiline::RuleSet>>,
}

impl ParserRegistry {
    pub fn from_config(doc: &ConfigDocument) -> Result<Self, ConfigError> {
        let mut reg = ParserRegistry::default();
        for section in doc.of_kind(SectionKind::Parser) {
            let props = Props::new(section);
            let parser = Parser::from_props(&props)?;
            props.finish("parser")?;
            reg.parsers.insert(parser.name.clone(), Arc::new(parser));
        }
        for section in doc.of_kind(SectionKind::MultilineParser) {
            let props = Props::new(section);
            let rules = multiline::RuleSet::from_props(&props, &reg)?;
            props.finish("multiline_parser")?;
            reg.multiline.insert(rules.name.clone(), Arc::new(rules));
        }
        Ok(reg)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Parser>> {
        self.parsers.get(name).cloned()
    }

    pub fn multiline(&self, name: &str) -> Option<Arc<multiline::RuleSet>> {
        self.multiline.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_cri_regex_parser() {
        let doc = crate::config::classic::parse_str(
            "p.conf",
            "[PARSER]\n    Name cri\n    Format regex\n    Regex ^(?<time>[^ ]+) (?<stream>stdout|stderr) (?<logtag>[^ ]*) (?<message>.*)$\n    Time_Key time\n    Time_Format %Y-%m-%dT%H:%M:%S.%L%z\n    Time_Keep On\n",
        )
        .unwrap();
        let reg = ParserRegistry::from_config(&doc).unwrap();
        let (t, m) = reg
            .get("cri")
            .unwrap()
            .parse(&Bytes::from_static(
                b"2024-01-01T00:00:01.5Z stdout F hello world",
            ))
            .unwrap();
        assert_eq!(t.unwrap().sec, 1_704_067_201);
        assert_eq!(m.get(b"message"), Some(&Value::str("hello world")));
        assert_eq!(m.get(b"logtag"), Some(&Value::str("F")));
    }
}
