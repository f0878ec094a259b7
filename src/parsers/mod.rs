//! Parsers: `[PARSER]` definitions (`json`, `regex`, `logfmt`, `ltsv`) with their time, type and
//! decoder options, `[MULTILINE_PARSER]` definitions, and the registry that tail and filters look
//! names up in. The built-in container multiline parsers (`cri`, `docker`) live in [`multiline`].
//!
//! A parsed line gives the record Fluent Bit gives (`flb_parser_{json,regex,logfmt,ltsv}.c`):
//! - keys in the order of the line (regex: of the named groups); `Skip_Empty_Values` (default on,
//!   regex only) leaves out empty and unmatched groups;
//! - the `Time_Key` field (default `time`) sets the event time and is removed unless `Time_Keep`.
//!   When it does not match `Time_Format` the record keeps every other field and the event time is
//!   "now": a regex record loses the time field, a JSON record keeps it. A logfmt or ltsv line
//!   whose time does not match is not parsed (Fluent Bit's behaviour; the line stays whole);
//! - `Types` (`key:integer|float|bool|hex|string`) apply to regex, logfmt and ltsv fields, with C's
//!   lenient number reading (`atoll`, `atof`, `strtoull`); a bool that is not true/false stays text;
//! - `Decode_Field[_As]` rules ([`decode`]) run after the fields are read (JSON: before the time).

pub mod decode;
pub mod logfmt;
pub mod ltsv;
pub mod multiline;
pub mod time;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{ConfigDocument, ConfigError, Props, SectionKind};
use crate::pattern::Pattern;
use crate::record::{EventTime, Map, Value};
use decode::Decoders;
use time::{TimeFormat, TimeOptions};

#[derive(Debug)]
pub enum ParserFormat {
    Json,
    Regex(Pattern),
    Logfmt { no_bare_keys: bool },
    Ltsv,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldType {
    Integer,
    Float,
    Bool,
    Hex,
    String,
}

/// The time field did not match `Time_Format`.
struct BadTime;

/// One `[PARSER]` section.
#[derive(Debug)]
pub struct Parser {
    pub name: String,
    format: ParserFormat,
    time_key: Bytes,
    time_format: Option<TimeFormat>,
    time_keep: bool,
    types: Vec<(Bytes, FieldType)>,
    skip_empty_values: bool,
    decoders: Decoders,
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
            "logfmt" => ParserFormat::Logfmt {
                no_bare_keys: p.bool("logfmt_no_bare_keys", false)?,
            },
            "ltsv" => ParserFormat::Ltsv,
            other => {
                return Err(ConfigError::key(
                    format_prop,
                    format!("parser format '{other}' is not supported (json, regex, logfmt, ltsv)"),
                ))
            }
        };
        if !matches!(format, ParserFormat::Regex(_)) {
            // Fluent Bit ignores a Regex given to another format.
            p.accept(&["regex"]);
        }
        if let Some(tz) = p.prop("time_zone") {
            return Err(ConfigError::key(
                tz,
                "Time_Zone (IANA zone names) is not supported: use Time_Offset or Time_System_Timezone",
            ));
        }
        let mut options = TimeOptions {
            offset: 0,
            strict: p.bool("time_strict", true)?,
            system_timezone: p.bool("time_system_timezone", false)?,
        };
        if let Some(o) = p.prop("time_offset") {
            options.offset = time::parse_offset(&o.value).ok_or_else(|| {
                ConfigError::key(o, "expected a UTC offset such as +0200 or -05:00")
            })?;
        }
        let time_format = match p.prop("time_format") {
            Some(f) => {
                Some(TimeFormat::new(&f.value, options).map_err(|e| ConfigError::key(f, e))?)
            }
            None => None,
        };
        let mut types = Vec::new();
        if let Some(t) = p.prop("types") {
            for item in t.value.split_whitespace() {
                // As Fluent Bit: an item without ':' is ignored, an unknown type is a string.
                let Some((k, ty)) = item.split_once(':') else {
                    continue;
                };
                let ty = match ty.to_ascii_lowercase().as_str() {
                    "integer" => FieldType::Integer,
                    "float" => FieldType::Float,
                    "bool" => FieldType::Bool,
                    "hex" => FieldType::Hex,
                    _ => FieldType::String,
                };
                types.push((Bytes::copy_from_slice(k.as_bytes()), ty));
            }
        }
        p.all("decode_field");
        p.all("decode_field_as");
        let decoders = Decoders::from_props(p.section.props.iter().filter(|prop| {
            prop.key.eq_ignore_ascii_case("decode_field")
                || prop.key.eq_ignore_ascii_case("decode_field_as")
        }))?;
        Ok(Parser {
            name,
            format,
            time_key: Bytes::from(p.string_or("time_key", "time")),
            time_format,
            time_keep: p.bool("time_keep", false)?,
            types,
            skip_empty_values: p.bool("skip_empty_values", true)?,
            decoders,
        })
    }

    /// Parses `line`; `None` when it does not match (the caller keeps the line unparsed). The time
    /// is `None` when the line has no time field or its time does not match (the caller uses now).
    pub fn parse(&self, line: &Bytes) -> Option<(Option<EventTime>, Map)> {
        let mut time = None;
        let mut map;
        match &self.format {
            ParserFormat::Json => {
                map = match crate::json::parse(line) {
                    Ok(Value::Map(m)) => m,
                    _ => return None,
                };
                self.decode(&mut map);
                time = self.json_time(&mut map);
                return Some((time, map));
            }
            ParserFormat::Regex(re) => {
                let text = std::str::from_utf8(line).ok()?;
                let caps = re.named_groups(text)?;
                map = Map::with_capacity(caps.len());
                for (name, range) in caps {
                    let value = range.map(|r| line.slice(r)).unwrap_or_default();
                    if self.skip_empty_values && value.is_empty() {
                        continue;
                    }
                    if self
                        .field(&mut map, &mut time, Bytes::from(name), Some(value))
                        .is_err()
                    {
                        tracing::warn!(parser = %self.name, "invalid time format for the time field; the record keeps its other fields and is stamped now");
                    }
                }
            }
            ParserFormat::Logfmt { no_bare_keys } => {
                let pairs = logfmt::pairs(line, *no_bare_keys)?;
                map = Map::with_capacity(pairs.len());
                for (key, value) in pairs {
                    self.field(&mut map, &mut time, key, value).ok()?;
                }
            }
            ParserFormat::Ltsv => {
                let fields = ltsv::fields(line)?;
                map = Map::with_capacity(fields.len());
                for (key, value) in fields {
                    self.field(&mut map, &mut time, key, Some(value)).ok()?;
                }
            }
        }
        self.decode(&mut map);
        Some((time, map))
    }

    fn decode(&self, map: &mut Map) {
        if !self.decoders.is_empty() {
            self.decoders.apply(map);
        }
    }

    /// Adds one field of a regex, logfmt or ltsv line: the time field sets `time` (and stays only
    /// with `Time_Keep`), `Types` convert, a value-less logfmt key is `true`.
    fn field(
        &self,
        map: &mut Map,
        time: &mut Option<EventTime>,
        key: Bytes,
        value: Option<Bytes>,
    ) -> Result<(), BadTime> {
        if let (Some(format), Some(text)) = (&self.time_format, &value) {
            if !text.is_empty() && key == self.time_key {
                *time = Some(format.parse(text).ok_or(BadTime)?);
                if !self.time_keep {
                    return Ok(());
                }
            }
        }
        let value = match (value, self.types.is_empty()) {
            (None, true) => Value::Bool(true),
            (value, _) => self.typed(&key, value.unwrap_or_default()),
        };
        map.push(key, value);
        Ok(())
    }

    fn typed(&self, key: &[u8], text: Bytes) -> Value {
        let Some((_, ty)) = self.types.iter().find(|(k, _)| k.as_ref() == key) else {
            return Value::Str(text);
        };
        let s = String::from_utf8_lossy(&text);
        match ty {
            FieldType::Integer => Value::Int(c_number::atoll(&s)),
            FieldType::Float => Value::Float(c_number::atof(&s)),
            FieldType::Hex => Value::UInt(c_number::strtoull_hex(&s)),
            FieldType::Bool if starts_with_ignore_case(&text, b"true") => Value::Bool(true),
            FieldType::Bool if starts_with_ignore_case(&text, b"false") => Value::Bool(false),
            FieldType::Bool => {
                tracing::warn!(parser = %self.name, key = %String::from_utf8_lossy(key), "not a bool; kept as a string");
                Value::Str(text)
            }
            FieldType::String => Value::Str(text),
        }
    }

    /// JSON: the first top-level `Time_Key` string sets the time; a time that does not match
    /// leaves the record whole.
    fn json_time(&self, map: &mut Map) -> Option<EventTime> {
        let format = self.time_format.as_ref()?;
        let i = map.0.iter().position(|(k, _)| *k == self.time_key)?;
        let Value::Str(text) = &map.0[i].1 else {
            return None;
        };
        let Some(time) = format.parse(text) else {
            tracing::warn!(parser = %self.name, "invalid time format for the time field; the record is stamped now");
            return None;
        };
        if !self.time_keep {
            map.0.remove(i);
        }
        Some(time)
    }
}

fn starts_with_ignore_case(text: &[u8], prefix: &[u8]) -> bool {
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// C's lenient number reading, which `Types` follows: leading whitespace, then the longest
/// number prefix; no number reads as 0.
mod c_number {
    fn split_sign(s: &str) -> (bool, &str) {
        let s = s.trim_start();
        match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        }
    }

    pub fn atoll(s: &str) -> i64 {
        let (negative, rest) = split_sign(s);
        let mut v: i64 = 0;
        for d in rest.bytes().take_while(u8::is_ascii_digit) {
            v = v.saturating_mul(10).saturating_add((d - b'0') as i64);
        }
        if negative {
            -v
        } else {
            v
        }
    }

    pub fn atof(s: &str) -> f64 {
        let t = s.trim_start();
        // The longest prefix that is a number: sign, digits, fraction, exponent.
        let b = t.as_bytes();
        let mut end = 0;
        let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
        let digits = |i: &mut usize| {
            let start = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > start
        };
        let mut mantissa = digits(&mut i);
        if b.get(i) == Some(&b'.') {
            i += 1;
            mantissa |= digits(&mut i);
        }
        if mantissa {
            end = i;
            if matches!(b.get(i), Some(b'e' | b'E')) {
                let mut j = i + 1;
                if matches!(b.get(j), Some(b'+' | b'-')) {
                    j += 1;
                }
                if digits(&mut j) {
                    end = j;
                }
            }
        }
        t[..end].parse().unwrap_or(0.0)
    }

    pub fn strtoull_hex(s: &str) -> u64 {
        let (negative, rest) = split_sign(s);
        let rest = rest
            .strip_prefix("0x")
            .or_else(|| rest.strip_prefix("0X"))
            .filter(|r| r.starts_with(|c: char| c.is_ascii_hexdigit()))
            .unwrap_or(rest);
        let mut v: u64 = 0;
        for c in rest.chars().map_while(|c| c.to_digit(16)) {
            v = v.saturating_mul(16).saturating_add(c as u64);
        }
        if negative {
            v.wrapping_neg()
        } else {
            v
        }
    }
}

/// All parsers a config defines, by name.
#[derive(Debug, Default, Clone)]
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
            // As Fluent Bit: a name defined twice stops the load.
            if reg.parsers.contains_key(&parser.name) {
                return Err(ConfigError::at(
                    &section.origin,
                    format!("parser '{}' is already defined", parser.name),
                ));
            }
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
    use chrono::Datelike;

    /// Every parser name Fluent Bit's own `conf/parsers.conf` defines.
    const STOCK: [&str; 18] = [
        "apache",
        "apache2",
        "apache_error",
        "nginx",
        "k8s-nginx-ingress",
        "json",
        "logfmt",
        "docker",
        "docker-daemon",
        "syslog-rfc5424",
        "syslog-rfc3164-local",
        "syslog-rfc3164",
        "mongodb",
        "envoy",
        "istio-envoy-proxy",
        "cri",
        "kube-custom",
        "kmsg-netfilter-log",
    ];

    fn registry(text: &str) -> ParserRegistry {
        let doc = crate::config::classic::parse_str("parsers.conf", text).unwrap();
        ParserRegistry::from_config(&doc).unwrap()
    }

    fn stock() -> ParserRegistry {
        registry(include_str!("../../conf/parsers.conf"))
    }

    fn s(v: &str) -> Value {
        Value::string(v.to_string())
    }

    /// Parses `line` and compares the record with `want` (keys in order) and the time.
    fn check(
        reg: &ParserRegistry,
        name: &str,
        line: &str,
        want: &[(&str, Value)],
        time: Option<(i64, u32)>,
    ) {
        let parser = reg
            .get(name)
            .unwrap_or_else(|| panic!("no parser '{name}'"));
        let (t, m) = parser
            .parse(&Bytes::copy_from_slice(line.as_bytes()))
            .unwrap_or_else(|| panic!("'{name}' did not match {line:?}"));
        let got: Vec<(String, Value)> =
            m.0.iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone()))
                .collect();
        let want: Vec<(String, Value)> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(got, want, "record of '{name}'");
        assert_eq!(t.map(|t| (t.sec, t.nsec)), time, "time of '{name}'");
    }

    /// Seconds of `Mon dd hh:mm:ss` in the current UTC year, as a year-less format reads it.
    fn this_year(month: u32, day: u32, h: u32, m: u32, sec: u32) -> i64 {
        chrono::NaiveDate::from_ymd_opt(chrono::Utc::now().year(), month, day)
            .and_then(|d| d.and_hms_opt(h, m, sec))
            .unwrap()
            .and_utc()
            .timestamp()
    }

    #[test]
    fn stock_file_defines_every_fluent_bit_parser() {
        let reg = stock();
        for name in STOCK {
            assert!(reg.get(name).is_some(), "stock parser '{name}' missing");
        }
    }

    #[test]
    fn web_server_parsers() {
        let reg = stock();
        check(
            &reg,
            "apache",
            r#"192.168.2.20 - - [28/Jul/2006:10:27:10 -0300] "GET /cgi-bin/try/ HTTP/1.0" 200 3395"#,
            &[
                ("host", s("192.168.2.20")),
                ("user", s("-")),
                ("method", s("GET")),
                ("path", s("/cgi-bin/try/")),
                ("code", s("200")),
                ("size", s("3395")),
            ],
            Some((1_154_093_230, 0)),
        );
        check(
            &reg,
            "apache2",
            r#"127.0.0.1 - frank [28/Jul/2006:10:27:10 -0300] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#,
            &[
                ("host", s("127.0.0.1")),
                ("user", s("frank")),
                ("method", s("GET")),
                ("path", s("/apache_pb.gif")),
                ("code", s("200")),
                ("size", s("2326")),
                ("referer", s("http://www.example.com/start.html")),
                ("agent", s("Mozilla/4.08 [en] (Win98; I ;Nav)")),
            ],
            Some((1_154_093_230, 0)),
        );
        check(&reg, "apache_error", "[Wed Oct 11 14:32:52 2000] [error] [client 127.0.0.1] client denied by server configuration: /export/home/htdocs/test",
            &[("time", s("Oct 11 14:32:52 2000")), ("level", s("error")), ("client", s("127.0.0.1")), ("message", s("client denied by server configuration: /export/home/htdocs/test"))],
            None);
        check(
            &reg,
            "nginx",
            r#"93.180.71.3 - - [17/May/2015:08:05:32 +0000] "GET /downloads/product_1 HTTP/1.1" 304 0 "-" "Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)""#,
            &[
                ("remote", s("93.180.71.3")),
                ("host", s("-")),
                ("user", s("-")),
                ("method", s("GET")),
                ("path", s("/downloads/product_1")),
                ("code", s("304")),
                ("size", s("0")),
                ("referer", s("-")),
                ("agent", s("Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)")),
            ],
            Some((1_431_849_932, 0)),
        );
        check(
            &reg,
            "k8s-nginx-ingress",
            r#"10.0.0.1 - alice [17/May/2015:08:05:32 +0000] "GET /api HTTP/1.1" 200 612 "-" "curl/7.68.0" 80 0.005 [default-web-80] [] 10.1.2.3:80 612 0.004 200 6f1e2d"#,
            &[
                ("host", s("10.0.0.1")),
                ("user", s("alice")),
                ("method", s("GET")),
                ("path", s("/api")),
                ("code", s("200")),
                ("size", s("612")),
                ("referer", s("-")),
                ("agent", s("curl/7.68.0")),
                ("request_length", s("80")),
                ("request_time", s("0.005")),
                ("proxy_upstream_name", s("default-web-80")),
                ("upstream_addr", s("10.1.2.3:80")),
                ("upstream_response_length", s("612")),
                ("upstream_response_time", s("0.004")),
                ("upstream_status", s("200")),
                ("reg_id", s("6f1e2d")),
            ],
            Some((1_431_849_932, 0)),
        );
    }

    #[test]
    fn structured_and_container_parsers() {
        let reg = stock();
        check(
            &reg,
            "json",
            r#"{"time":"28/Jul/2006:10:27:10 -0300","key":"v","n":1}"#,
            &[("key", s("v")), ("n", Value::Int(1))],
            Some((1_154_093_230, 0)),
        );
        check(
            &reg,
            "logfmt",
            r#"level=info msg="hello \"world\"" took=12ms debug"#,
            &[
                ("level", s("info")),
                ("msg", s("hello \"world\"")),
                ("took", s("12ms")),
                ("debug", Value::Bool(true)),
            ],
            None,
        );
        check(
            &reg,
            "docker",
            r#"{"log":"hello\n","stream":"stdout","time":"2024-01-01T00:00:01.5Z"}"#,
            &[
                ("log", s("hello\n")),
                ("stream", s("stdout")),
                ("time", s("2024-01-01T00:00:01.5Z")),
            ],
            Some((1_704_067_201, 500_000_000)),
        );
        check(
            &reg,
            "docker-daemon",
            r#"time="2024-01-01T00:00:01.123456789Z" level=info msg="Container started""#,
            &[
                ("time", s("2024-01-01T00:00:01.123456789Z")),
                ("level", s("info")),
                ("msg", s("Container started")),
            ],
            Some((1_704_067_201, 123_456_789)),
        );
        check(
            &reg,
            "cri",
            "2024-01-01T00:00:01.5Z stdout F hello world",
            &[
                ("time", s("2024-01-01T00:00:01.5Z")),
                ("stream", s("stdout")),
                ("logtag", s("F")),
                ("message", s("hello world")),
            ],
            Some((1_704_067_201, 500_000_000)),
        );
        let id = "0123456789abcdef".repeat(4);
        check(
            &reg,
            "kube-custom",
            &format!("kube.var.log.containers.web-7d9f_prod_nginx-{id}.log"),
            &[
                ("tag", s("kube")),
                ("pod_name", s("var.log.containers.web-7d9f")),
                ("namespace_name", s("prod")),
                ("container_name", s("nginx")),
                ("docker_id", s(&id)),
            ],
            None,
        );
    }

    #[test]
    fn syslog_parsers() {
        let reg = stock();
        check(
            &reg,
            "syslog-rfc5424",
            r#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event log entry"#,
            &[
                ("pri", s("165")),
                ("time", s("2003-10-11T22:14:15.003Z")),
                ("host", s("mymachine.example.com")),
                ("ident", s("evntslog")),
                ("pid", s("-")),
                ("msgid", s("ID47")),
                (
                    "extradata",
                    s(r#"[exampleSDID@32473 iut="3" eventSource="Application"]"#),
                ),
                ("message", s("An application event log entry")),
            ],
            Some((1_065_910_455, 3_000_000)),
        );
        check(
            &reg,
            "syslog-rfc3164",
            "<34>Oct 11 22:14:15 mymachine su[230]: 'su root' failed for lonvick on /dev/pts/8",
            &[
                ("pri", s("34")),
                ("time", s("Oct 11 22:14:15")),
                ("host", s("mymachine")),
                ("ident", s("su")),
                ("pid", s("230")),
                ("message", s("'su root' failed for lonvick on /dev/pts/8")),
            ],
            Some((this_year(10, 11, 22, 14, 15), 0)),
        );
        check(
            &reg,
            "syslog-rfc3164-local",
            "<13>Oct  1 22:14:15 myapp: hello world",
            &[
                ("pri", s("13")),
                ("time", s("Oct  1 22:14:15")),
                ("ident", s("myapp")),
                ("message", s("hello world")),
            ],
            Some((this_year(10, 1, 22, 14, 15), 0)),
        );
        check(&reg, "kmsg-netfilter-log", "<4>1 2023-01-01T00:00:00.000000+00:00 myhost kernel - - - [12345.678] IPTABLES-DROP: IN=eth0 OUT= MAC=00:11:22:33:44:55:66:77:88:99:aa:bb:08:00 SRC=10.0.0.1 DST=10.0.0.2 LEN=60 TOS=0x00 PREC=0x00 TTL=64 ID=54321 DF PROTO=TCP SPT=12345 DPT=80 WINDOW=29200 RES=0x00 SYN URGP=0",
            &[("pri", s("4")), ("host", s("myhost")), ("logprefix", s("IPTABLES-DROP:")), ("in", s("eth0")), ("macsrc", s("00:11:22:33:44:55")), ("macdst", s("66:77:88:99:aa:bb")), ("ethtype", s("08:00")), ("saddr", s("10.0.0.1")), ("daddr", s("10.0.0.2")), ("len", s("60")), ("tos", s("0x00")), ("prec", s("0x00")), ("ttl", s("64")), ("id", s("54321")), ("proto", s("TCP")), ("sport", s("12345")), ("dport", s("80")), ("window", s("29200")), ("res", s("0x00")), ("flag", s("SYN")), ("urgp", s("0"))],
            Some((1_672_531_200, 0)));
    }

    #[test]
    fn database_and_proxy_parsers() {
        let reg = stock();
        check(&reg, "mongodb", "2014-11-03T18:28:32.450-0500 I NETWORK  [initandlisten] waiting for connections on port 27017",
            &[("time", s("2014-11-03T18:28:32.450-0500")), ("severity", s("I")), ("component", s("NETWORK")), ("context", s("initandlisten")), ("message", s("waiting for connections on port")), ("ms", s("27017"))],
            Some((1_415_039_312, 450_000_000)));
        check(
            &reg,
            "envoy",
            r#"[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 "10.0.35.28" "nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" "tcp://10.0.2.1:80""#,
            &[
                ("start_time", s("2016-04-15T20:17:00.310Z")),
                ("method", s("POST")),
                ("path", s("/api/v1/locations")),
                ("protocol", s("HTTP/2")),
                ("code", s("204")),
                ("response_flags", s("-")),
                ("bytes_received", s("154")),
                ("bytes_sent", s("0")),
                ("duration", s("226")),
                ("x_envoy_upstream_service_time", s("100")),
                ("x_forwarded_for", s("10.0.35.28")),
                ("user_agent", s("nsq2http")),
                ("request_id", s("cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2")),
                ("authority", s("locations")),
                ("upstream_host", s("tcp://10.0.2.1:80")),
            ],
            Some((1_460_751_420, 310_000_000)),
        );
        check(
            &reg,
            "istio-envoy-proxy",
            r#"[2022-05-18T12:00:00.000Z] "GET /status HTTP/1.1" 200 - via_upstream - "-" 0 15 3 2 "-" "curl/7.79.1" "a1b2" "svc.ns:8080" "10.0.0.5:8080" outbound|8080||svc.ns.svc.cluster.local 10.0.0.4:40000 10.0.0.5:8080 10.0.0.4:39999 - default"#,
            &[
                ("start_time", s("2022-05-18T12:00:00.000Z")),
                ("method", s("GET")),
                ("path", s("/status")),
                ("protocol", s("HTTP/1.1")),
                ("response_code", s("200")),
                ("response_flags", s("-")),
                ("response_code_details", s("via_upstream")),
                ("connection_termination_details", s("-")),
                ("upstream_transport_failure_reason", s("-")),
                ("bytes_received", s("0")),
                ("bytes_sent", s("15")),
                ("duration", s("3")),
                ("x_envoy_upstream_service_time", s("2")),
                ("x_forwarded_for", s("-")),
                ("user_agent", s("curl/7.79.1")),
                ("x_request_id", s("a1b2")),
                ("authority", s("svc.ns:8080")),
                ("upstream_host", s("10.0.0.5:8080")),
                (
                    "upstream_cluster",
                    s("outbound|8080||svc.ns.svc.cluster.local"),
                ),
                ("upstream_local_address", s("10.0.0.4:40000")),
                ("downstream_local_address", s("10.0.0.5:8080")),
                ("downstream_remote_address", s("10.0.0.4:39999")),
                ("requested_server_name", s("-")),
                ("route_name", s("default")),
            ],
            Some((1_652_875_200, 0)),
        );
    }

    #[test]
    fn a_time_that_does_not_parse_keeps_the_fields() {
        let reg = stock();
        // Regex: the time field goes, the others stay, the event is stamped "now".
        check(
            &reg,
            "syslog-rfc3164",
            "<34>Foo 11 22:14:15 mymachine su: hi",
            &[
                ("pri", s("34")),
                ("host", s("mymachine")),
                ("ident", s("su")),
                ("message", s("hi")),
            ],
            None,
        );
        // JSON: the record stays whole.
        check(
            &reg,
            "docker",
            r#"{"log":"x","time":"yesterday"}"#,
            &[("log", s("x")), ("time", s("yesterday"))],
            None,
        );
        // logfmt and ltsv: the line is not parsed (Fluent Bit's behaviour).
        let reg = registry("[PARSER]\n    Name l\n    Format logfmt\n    Time_Key ts\n    Time_Format %s\n[PARSER]\n    Name t\n    Format ltsv\n    Time_Format %s\n");
        assert!(reg
            .get("l")
            .unwrap()
            .parse(&Bytes::from_static(b"ts=soon a=1"))
            .is_none());
        check(
            &reg,
            "l",
            "ts=1065910455 a=1",
            &[("a", s("1"))],
            Some((1_065_910_455, 0)),
        );
        assert!(reg
            .get("t")
            .unwrap()
            .parse(&Bytes::from_static(b"time:soon\ta:1"))
            .is_none());
        check(
            &reg,
            "t",
            "time:1065910455\ta:1",
            &[("a", s("1"))],
            Some((1_065_910_455, 0)),
        );
    }

    #[test]
    fn types_skip_empty_values_and_time_offset() {
        let reg = registry(concat!(
            "[PARSER]\n    Name r\n    Format regex\n",
            "    Regex ^(?<i>\\S*) (?<f>\\S*) (?<b>\\S*) (?<h>\\S*) (?<e>\\S*) (?<t>.*)$\n",
            "    Types i:integer f:float b:bool h:hex e:string junk\n",
            "    Time_Key t\n    Time_Format %Y-%m-%d %H:%M:%S\n    Time_Offset -0200\n",
            "[PARSER]\n    Name k\n    Format regex\n    Regex ^(?<a>\\S*)(?<opt>x)? (?<b>\\S*)$\n    Skip_Empty_Values Off\n",
        ));
        check(
            &reg,
            "r",
            "42abc -1.5e2x TRUE 0x1F  2024-01-01 00:00:01",
            &[
                ("i", Value::Int(42)),
                ("f", Value::Float(-150.0)),
                ("b", Value::Bool(true)),
                ("h", Value::UInt(31)),
            ],
            Some((1_704_067_201 + 7200, 0)),
        );
        check(
            &reg,
            "r",
            "x y maybe zz e 2024-01-01 00:00:01",
            &[
                ("i", Value::Int(0)),
                ("f", Value::Float(0.0)),
                ("b", s("maybe")),
                ("h", Value::UInt(0)),
                ("e", s("e")),
            ],
            Some((1_704_067_201 + 7200, 0)),
        );
        check(
            &reg,
            "k",
            " b",
            &[("a", s("")), ("opt", s("")), ("b", s("b"))],
            None,
        );
    }

    #[test]
    fn fluent_bit_style_file_loads() {
        // Indented comments, a commented-out decoder, `/regex/` and an ltsv parser.
        let reg = registry(concat!(
            "[PARSER]\n    Name   docker\n    Format json\n    Time_Key time\n    Time_Format %Y-%m-%dT%H:%M:%S.%L\n    Time_Keep On\n",
            "    # a comment inside the section\n    #Decode_Field_As json log\n",
            "    Decode_Field_As escaped_utf8 log do_next\n    Decode_Field_As json log\n",
            "[PARSER]\n    Name slashed\n    Format regex\n    Regex /^(?<word>HELLO)$/i\n",
            "[PARSER]\n    Name ltsv\n    Format ltsv\n    Time_Key time\n    Time_Format [%d/%b/%Y:%H:%M:%S %z]\n    Types size:integer\n",
        ));
        let (_, m) = reg
            .get("docker")
            .unwrap()
            .parse(&Bytes::from_static(
                br#"{"log":"{\"a\":1}","time":"2024-01-01T00:00:01.0Z"}"#,
            ))
            .unwrap();
        assert!(matches!(m.get(b"log"), Some(Value::Map(_))), "{m:?}");
        check(&reg, "slashed", "hello", &[("word", s("hello"))], None);
        check(
            &reg,
            "ltsv",
            "host:127.0.0.1\ttime:[28/Jul/2006:10:27:10 -0300]\tsize:777",
            &[("host", s("127.0.0.1")), ("size", Value::Int(777))],
            Some((1_154_093_230, 0)),
        );
        let dup = crate::config::classic::parse_str(
            "p.conf",
            "[PARSER]\n    Name a\n    Format json\n[PARSER]\n    Name a\n    Format json\n",
        )
        .unwrap();
        assert!(
            ParserRegistry::from_config(&dup).is_err(),
            "a name defined twice stops the load"
        );
        let tz = crate::config::classic::parse_str("p.conf", "[PARSER]\n    Name a\n    Format json\n    Time_Format %H\n    Time_Zone Europe/Paris\n").unwrap();
        assert!(
            ParserRegistry::from_config(&tz).is_err(),
            "Time_Zone is refused, not ignored"
        );
    }
}
