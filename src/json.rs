//! JSON in and out, byte-compatible with Fluent Bit's msgpack→JSON conversion.
//!
//! Writer rules kept from `flb_utils_write_str` / `flb_msgpack_to_json`: `"` `\` and the C escapes
//! `\n \r \t \b \f` are escaped, other control bytes and DEL become `\u00xx`, non-ASCII becomes
//! `\uXXXX` (surrogate pairs above U+FFFF) while `json.escape_unicode` is on, each byte of invalid
//! UTF-8 becomes U+E000 + byte (as Fluent Bit maps fragments), `/` is left alone; integral floats print as `%.1f`, others as `%.16g`. The string
//! scanner copies clean runs in one go, so ASCII log lines cost one table lookup per byte.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::record::{EventTime, Map, Value};

/// Byte classes: 0 = copy, 1 = needs escaping, 2 = non-ASCII.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if i < 0x20 || i == b'"' as usize || i == b'\\' as usize || i == 0x7f {
            1
        } else if i >= 0x80 {
            2
        } else {
            0
        };
        i += 1;
    }
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether none of 8 bytes needs escaping or is non-ASCII (class 0 above), tested a word at a
/// time: log text is mostly long plain runs, and a byte-at-a-time table walk over it was a
/// fifth of the CloudWatch output's CPU.
fn plain_word(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let w = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    let special = has_zero(w ^ (ONES * u64::from(b'"')))
        | has_zero(w ^ (ONES * u64::from(b'\\')))
        | has_zero(w ^ (ONES * 0x7f));
    ((w & HIGHS) | below_space | special) == 0
}

fn push_u_escape(out: &mut Vec<u8>, cp: u32) {
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((cp >> shift) & 0xf) as usize]);
    }
}

/// Writes `s` as a JSON string (with quotes).
pub fn write_str(out: &mut Vec<u8>, s: &[u8], escape_unicode: bool) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut i = 0;
    let mut run_start = 0;
    while i < s.len() {
        let b = s[i];
        match CLASS[b as usize] {
            0 => {
                i += 1;
                while i + 8 <= s.len() && plain_word(&s[i..i + 8]) {
                    i += 8;
                }
                continue;
            }
            1 => {
                out.extend_from_slice(&s[run_start..i]);
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    0x08 => out.extend_from_slice(b"\\b"),
                    0x0c => out.extend_from_slice(b"\\f"),
                    other => push_u_escape(out, other as u32),
                }
                i += 1;
            }
            _ => {
                out.extend_from_slice(&s[run_start..i]);
                let width = utf8_width(b);
                let valid = width > 0
                    && i + width <= s.len()
                    && std::str::from_utf8(&s[i..i + width]).is_ok();
                if !valid {
                    // Fluent Bit maps each byte of an invalid sequence to U+E000 + byte (its
                    // "fragment" private-use block), so the byte stays recoverable.
                    let mapped = char::from_u32(0xE000 + b as u32).expect("private-use code point");
                    let mut tmp = [0u8; 4];
                    out.extend_from_slice(mapped.encode_utf8(&mut tmp).as_bytes());
                    i += 1;
                } else if escape_unicode {
                    let ch = std::str::from_utf8(&s[i..i + width])
                        .unwrap()
                        .chars()
                        .next()
                        .unwrap();
                    let cp = ch as u32;
                    if cp > 0xFFFF {
                        let v = cp - 0x10000;
                        push_u_escape(out, 0xD800 + (v >> 10));
                        push_u_escape(out, 0xDC00 + (v & 0x3FF));
                    } else {
                        push_u_escape(out, cp);
                    }
                    i += width;
                } else {
                    out.extend_from_slice(&s[i..i + width]);
                    i += width;
                }
            }
        }
        run_start = i;
    }
    out.extend_from_slice(&s[run_start..]);
    out.push(b'"');
}

fn utf8_width(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

/// C's `%.16g`, as Fluent Bit prints non-integral doubles.
pub fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() && v == (v as i64) as f64 {
        out.extend_from_slice(format!("{v:.1}").as_bytes());
        return;
    }
    if !v.is_finite() {
        out.extend_from_slice(if v.is_nan() {
            b"nan"
        } else if v > 0.0 {
            b"inf"
        } else {
            b"-inf"
        });
        return;
    }
    let sci = format!("{v:.15e}");
    let (mantissa, exp) = sci.split_once('e').expect("exponent form");
    let exp: i32 = exp.parse().expect("exponent");
    let text = if !(-4..16).contains(&exp) {
        let m = trim_zeros(mantissa);
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        let decimals = (15 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    };
    out.extend_from_slice(text.as_bytes());
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

pub fn write_value(out: &mut Vec<u8>, v: &Value, escape_unicode: bool) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
        Value::Float(f) => write_f64(out, *f),
        Value::Str(s) => write_str(out, s, escape_unicode),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, escape_unicode);
            }
            out.push(b']');
        }
        Value::Map(m) => write_map(out, m, None, escape_unicode),
    }
}

/// Writes a record as a JSON object, optionally with a leading date key (as `json_date_key`).
pub fn write_map(out: &mut Vec<u8>, m: &Map, date: Option<(&[u8], &Value)>, escape_unicode: bool) {
    out.push(b'{');
    let mut first = true;
    if let Some((k, v)) = date {
        write_str(out, k, escape_unicode);
        out.push(b':');
        write_value(out, v, escape_unicode);
        first = false;
    }
    for (k, v) in &m.0 {
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, k, escape_unicode);
        out.push(b':');
        write_value(out, v, escape_unicode);
    }
    out.push(b'}');
}

/// `json_date_format`: how the date key renders an event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateFormat {
    Double,
    Epoch,
    EpochMs,
    Iso8601,
    JavaSqlTimestamp,
}

impl DateFormat {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "double" => DateFormat::Double,
            "epoch" => DateFormat::Epoch,
            "epoch_ms" => DateFormat::EpochMs,
            "iso8601" => DateFormat::Iso8601,
            "java_sql_timestamp" => DateFormat::JavaSqlTimestamp,
            _ => return None,
        })
    }

    pub fn render(self, t: EventTime) -> Value {
        match self {
            DateFormat::Double => Value::Float(t.as_f64()),
            DateFormat::Epoch => Value::UInt(t.sec.max(0) as u64),
            DateFormat::EpochMs => {
                Value::UInt((t.sec.max(0) as u64) * 1000 + (t.nsec / 1_000_000) as u64)
            }
            DateFormat::Iso8601 => Value::string(calendar_time(t, b'T', "Z")),
            DateFormat::JavaSqlTimestamp => Value::string(calendar_time(t, b' ', "")),
        }
    }
}

/// `YYYY-MM-DD<sep>HH:MM:SS.ffffff<suffix>` in UTC. Written digit by digit: it runs once per
/// record, and a strftime pattern would be parsed again every time.
fn calendar_time(t: EventTime, sep: u8, suffix: &str) -> String {
    use chrono::{Datelike, Timelike};
    let dt = chrono::DateTime::from_timestamp(t.sec, t.nsec).unwrap_or_default();
    let mut out = Vec::with_capacity(27 + suffix.len());
    let mut digits = |n: u32, width: usize, after: Option<u8>| {
        let mut buf = [b'0'; 10];
        let mut v = n;
        for i in (0..width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
        if let Some(c) = after {
            out.push(c);
        }
    };
    digits(dt.year().clamp(0, 9999) as u32, 4, Some(b'-'));
    digits(dt.month(), 2, Some(b'-'));
    digits(dt.day(), 2, Some(sep));
    digits(dt.hour(), 2, Some(b':'));
    digits(dt.minute(), 2, Some(b':'));
    digits(dt.second(), 2, Some(b'.'));
    digits(t.nsec / 1000, 6, None);
    out.extend_from_slice(suffix.as_bytes());
    String::from_utf8(out).expect("ASCII digits")
}

/// Parses one JSON document into a [`Value`], keeping key order. Errors say what is wrong.
pub fn parse(input: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(input);
    let v = ValueSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct ValueSeed;

impl<'de> de::DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(if v <= i64::MAX as u64 {
            Value::Int(v as i64)
        } else {
            Value::UInt(v)
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(Bytes::copy_from_slice(v.as_bytes())))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(Bytes::from(v)))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let v = map.next_value_seed(ValueSeed)?;
            m.set(Bytes::copy_from_slice(k.as_bytes()), v);
        }
        Ok(Value::Map(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_scan_finds_every_special_byte_at_every_position() {
        for special in [0u8, 0x08, b'\n', 0x1f, b'"', b'\\', 0x7f, 0xe9] {
            for pos in 0..24 {
                let mut s = b"abcdefghijklmnopqrstuvwx".to_vec();
                s[pos] = special;
                let mut fast = Vec::new();
                write_str(&mut fast, &s, false);
                // The byte-at-a-time result: each byte written by itself.
                let mut slow = vec![b'"'];
                for b in &s {
                    let mut one = Vec::new();
                    write_str(&mut one, std::slice::from_ref(b), false);
                    slow.extend_from_slice(&one[1..one.len() - 1]);
                }
                slow.push(b'"');
                assert_eq!(fast, slow, "byte {special:#x} at {pos}");
            }
        }
        assert!(plain_word(b"GET /a?b"));
        assert!(!plain_word(b"GET /a?\x7f"));
    }

    fn s(v: &[u8], esc: bool) -> String {
        let mut out = Vec::new();
        write_str(&mut out, v, esc);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn calendar_dates_match_strftime() {
        for (sec, nsec) in [
            (0i64, 0u32),
            (1_700_000_000, 123_456_789),
            (951_782_400, 999_999_999),
            (4_102_444_799, 1_000),
        ] {
            let t = crate::record::EventTime { sec, nsec };
            let dt = chrono::DateTime::from_timestamp(sec, nsec).unwrap();
            let micros = nsec / 1000;
            assert_eq!(
                DateFormat::Iso8601.render(t),
                Value::string(format!("{}.{micros:06}Z", dt.format("%Y-%m-%dT%H:%M:%S")))
            );
            assert_eq!(
                DateFormat::JavaSqlTimestamp.render(t),
                Value::string(format!("{}.{micros:06}", dt.format("%Y-%m-%d %H:%M:%S")))
            );
        }
    }

    #[test]
    fn escapes_like_fluent_bit() {
        assert_eq!(
            s(b"a\"b\\c/d\n\t\x01\x7f", true),
            r#""a\"b\\c/d\n\t\u0001\u007f""#
        );
        assert_eq!(s("é😀".as_bytes(), true), r#""\u00e9\ud83d\ude00""#);
        assert_eq!(s("é".as_bytes(), false), "\"é\"");
        assert_eq!(s(b"a\xffb\x00", true), "\"a\u{E0FF}b\\u0000\"");
    }

    #[test]
    fn floats_like_printf() {
        let f = |v: f64| {
            let mut o = Vec::new();
            write_f64(&mut o, v);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(f(3.0), "3.0");
        assert_eq!(f(1700000000.123456), "1700000000.123456");
        assert_eq!(f(0.1), "0.1");
        assert_eq!(f(1.5e-7), "1.5e-07");
    }

    #[test]
    fn parse_keeps_order() {
        let v = parse(br#"{"z":1,"a":[true,null,"x"],"m":{"k":1.5}}"#).unwrap();
        let mut out = Vec::new();
        write_value(&mut out, &v, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"z":1,"a":[true,null,"x"],"m":{"k":1.5}}"#
        );
    }
}
