//! `Decode_Field` / `Decode_Field_As`: per-field decoders a `[PARSER]` applies to the record it
//! produced, as Fluent Bit's `flb_parser_decoder.c` does.
//!
//! A rule is `Decode_Field[_As] <decoder> <field> [try_next|do_next]`; rules for the same field run
//! in the order written. Decoders: `json` (a string holding a JSON object), `escaped` (C escapes),
//! `escaped_utf8` (C and JSON escapes, `\uXXXX` included), `mysql_quoted` (a quoted MySQL string).
//! - `Decode_Field_As` replaces the field's value in place; the following rules see the new value.
//!   A value decoded into an object takes no further rules.
//! - `Decode_Field` keeps the field and appends the keys of the decoded object at the end of the
//!   record (a decoder giving a string adds nothing).
//! - A rule that fails stops the field's rules unless it says `try_next` or `do_next`; a rule that
//!   succeeds stops them unless it says `do_next`. After one `Decode_Field` succeeded, later
//!   `Decode_Field ... do_next` rules are skipped. Only top-level string values are decoded.

use bytes::Bytes;

use crate::config::{ConfigError, Property};
use crate::record::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Decoder {
    Json,
    Escaped,
    EscapedUtf8,
    MysqlQuoted,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Stop,
    TryNext,
    DoNext,
}

#[derive(Debug)]
struct Rule {
    /// `Decode_Field_As` (in place) rather than `Decode_Field` (keys appended).
    in_place: bool,
    decoder: Decoder,
    action: Action,
}

/// The decoder rules of one parser, grouped by field in the order fields were first named.
#[derive(Debug, Default)]
pub struct Decoders {
    fields: Vec<(Bytes, Vec<Rule>)>,
}

enum Decoded {
    Text(Bytes),
    Object(Map),
}

impl Decoders {
    /// Builds the rules from a section's `Decode_Field` and `Decode_Field_As` properties, in order.
    pub fn from_props<'a>(props: impl Iterator<Item = &'a Property>) -> Result<Self, ConfigError> {
        let mut decoders = Decoders::default();
        for prop in props {
            let in_place = prop.key.eq_ignore_ascii_case("decode_field_as");
            let mut words = prop.value.split_whitespace();
            let (Some(decoder), Some(field)) = (words.next(), words.next()) else {
                return Err(ConfigError::key(
                    prop,
                    "expected '<decoder> <field> [try_next|do_next]'",
                ));
            };
            let decoder = match decoder.to_ascii_lowercase().as_str() {
                "json" => Decoder::Json,
                "escaped" => Decoder::Escaped,
                "escaped_utf8" => Decoder::EscapedUtf8,
                "mysql_quoted" => Decoder::MysqlQuoted,
                other => {
                    return Err(ConfigError::key(
                        prop,
                        format!(
                            "unknown decoder '{other}' (json, escaped, escaped_utf8, mysql_quoted)"
                        ),
                    ))
                }
            };
            // Fluent Bit reads any other word as "no action".
            let action = match words.next().map(str::to_ascii_lowercase).as_deref() {
                Some("try_next") => Action::TryNext,
                Some("do_next") => Action::DoNext,
                _ => Action::Stop,
            };
            let rule = Rule {
                in_place,
                decoder,
                action,
            };
            match decoders.fields.iter_mut().find(|(f, _)| f == field) {
                Some((_, rules)) => rules.push(rule),
                None => decoders
                    .fields
                    .push((Bytes::copy_from_slice(field.as_bytes()), vec![rule])),
            }
        }
        Ok(decoders)
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Applies the rules to every top-level string field they name.
    pub fn apply(&self, map: &mut Map) {
        let mut appended = Vec::new();
        for (key, value) in map.0.iter_mut() {
            let Value::Str(text) = value else { continue };
            let Some((_, rules)) = self.fields.iter().find(|(f, _)| f == key) else {
                continue;
            };
            let (in_place, extra) = run_rules(rules, text.clone());
            if let Some(v) = in_place {
                *value = v;
            }
            appended.extend(extra);
        }
        map.0.extend(appended);
    }
}

/// One field's rules: the value to put in place (if any) and the keys to append.
fn run_rules(rules: &[Rule], mut data: Bytes) -> (Option<Value>, Vec<(Bytes, Value)>) {
    let mut in_place: Option<Value> = None;
    let mut extra = Vec::new();
    let mut decoded_into_keys = false;
    for rule in rules {
        if !rule.in_place && rule.action == Action::DoNext && decoded_into_keys {
            continue;
        }
        if matches!(in_place, Some(Value::Map(_))) {
            break;
        }
        let Some(result) = decode(rule.decoder, &data) else {
            if rule.action == Action::Stop {
                break;
            }
            continue;
        };
        if rule.in_place {
            in_place = Some(match result {
                Decoded::Text(t) => {
                    data = t.clone();
                    Value::Str(t)
                }
                Decoded::Object(m) => Value::Map(m),
            });
        } else {
            // Only an object can be appended; the last successful rule's keys win.
            extra = match result {
                Decoded::Object(m) => m.0,
                Decoded::Text(_) => Vec::new(),
            };
            decoded_into_keys = true;
        }
        if rule.action != Action::DoNext {
            break;
        }
    }
    (in_place, extra)
}

fn decode(decoder: Decoder, data: &Bytes) -> Option<Decoded> {
    match decoder {
        Decoder::Json => {
            // Spaces may lead; the text must be one JSON object.
            let start = data.iter().position(|&b| b != b' ')?;
            if !matches!(data[start], b'{' | b'[') {
                return None;
            }
            match crate::json::parse(&data[start..]) {
                Ok(Value::Map(m)) => Some(Decoded::Object(m)),
                _ => None,
            }
        }
        Decoder::Escaped => Some(Decoded::Text(unescape(data).into())),
        Decoder::EscapedUtf8 => Some(Decoded::Text(unescape_utf8(data).into())),
        Decoder::MysqlQuoted => Some(Decoded::Text(mysql_unquote(data))),
    }
}

/// `escaped`: `\n \a \b \t \v \f \r \\` become their characters; a backslash before anything
/// else is dropped and the character kept.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() {
            out.push(match s[i + 1] {
                b'n' => b'\n',
                b'a' => 0x07,
                b'b' => 0x08,
                b't' => b'\t',
                b'v' => 0x0b,
                b'f' => 0x0c,
                b'r' => b'\r',
                other => other,
            });
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// `escaped_utf8` (also logfmt's quoted values): C and JSON escapes, octal `\ooo`, `\xHH`,
/// `\uXXXX` (surrogate pairs joined, a lone surrogate becomes U+FFFD) and `\UXXXXXXXX` are
/// written as UTF-8; any other escaped character stands for itself; other bytes pass through.
/// The text ends at a NUL byte, as in C.
pub fn unescape_utf8(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() && s[i] != 0 {
        if s[i] != b'\\' || i + 1 >= s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let (ch, used) = escape_sequence(&s[i + 1..]);
        i += 1 + used;
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    out
}

/// Reads the escape after a backslash: the character and how many bytes it took.
fn escape_sequence(s: &[u8]) -> (char, usize) {
    let hex = |from: usize, max: usize| -> (u32, usize) {
        let digits = s[from..]
            .iter()
            .take(max)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let text = std::str::from_utf8(&s[from..from + digits]).unwrap_or("0");
        (u32::from_str_radix(text, 16).unwrap_or(0), digits)
    };
    let simple = match s[0] {
        b'n' => Some('\n'),
        b't' => Some('\t'),
        b'r' => Some('\r'),
        b'b' => Some('\u{8}'),
        b'f' => Some('\u{c}'),
        b'v' => Some('\u{b}'),
        b'a' => Some('\u{7}'),
        _ => None,
    };
    if let Some(c) = simple {
        return (c, 1);
    }
    match s[0] {
        b'0'..=b'7' => {
            let n = s
                .iter()
                .take(3)
                .take_while(|b| (b'0'..=b'7').contains(b))
                .count();
            let v = s[..n].iter().fold(0u32, |v, d| v * 8 + (d - b'0') as u32);
            (char::from_u32(v).unwrap_or('\u{fffd}'), n)
        }
        b'x' | b'U' => {
            let (v, n) = hex(1, if s[0] == b'x' { 2 } else { 8 });
            if n == 0 {
                return (s[0] as char, 1);
            }
            (char::from_u32(v).unwrap_or('\u{fffd}'), 1 + n)
        }
        b'u' => {
            let (high, n) = hex(1, 4);
            if n < 4 {
                return (if n == 0 { 'u' } else { '\u{fffd}' }, 1 + n);
            }
            if !(0xD800..=0xDBFF).contains(&high) {
                return (char::from_u32(high).unwrap_or('\u{fffd}'), 5);
            }
            // A high surrogate must be followed by `\u` and a low one.
            if s.len() >= 7 && s[5] == b'\\' && s[6] == b'u' {
                let (low, m) = hex(7, 4);
                if m == 4 && (0xDC00..=0xDFFF).contains(&low) {
                    let c = 0x10000 + ((high - 0xD800) << 10 | (low - 0xDC00));
                    return (char::from_u32(c).unwrap_or('\u{fffd}'), 11);
                }
            }
            ('\u{fffd}', 5)
        }
        // `\"`, `\\`, `\/`, `\'` and anything else: the character itself (a whole UTF-8
        // character when it is one).
        _ => {
            let len = match s[0] {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            }
            .min(s.len());
            match std::str::from_utf8(&s[..len]) {
                Ok(c) => (c.chars().next().unwrap_or('\u{fffd}'), len),
                Err(_) => ('\u{fffd}', 1),
            }
        }
    }
}

/// `mysql_quoted`: a value in single or double quotes loses them and its MySQL escapes
/// (`\n \r \t \\ \' \" \0 \Z`); any other value is kept as it is.
fn mysql_unquote(data: &Bytes) -> Bytes {
    let quoted =
        data.len() >= 2 && matches!(data[0], b'\'' | b'"') && data[data.len() - 1] == data[0];
    if !quoted {
        return data.clone();
    }
    let s = &data[1..data.len() - 1];
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' || i + 1 >= s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        match s[i + 1] {
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'\\' => out.push(b'\\'),
            b'\'' => out.push(b'\''),
            b'"' => out.push(b'"'),
            b'0' => out.push(0),
            b'Z' => out.push(0x1a),
            other => out.extend_from_slice(&[b'\\', other]),
        }
        i += 2;
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(lines: &[&str]) -> Result<Decoders, ConfigError> {
        let body: String = lines.iter().map(|l| format!("    {l}\n")).collect();
        let doc =
            crate::config::classic::parse_str("p.conf", &format!("[PARSER]\n    Name t\n{body}"))
                .unwrap();
        Decoders::from_props(doc.sections[0].props.iter().skip(1))
    }

    fn rules(lines: &[&str]) -> Decoders {
        rules_of(lines).unwrap()
    }

    fn record(pairs: &[(&'static str, &'static str)]) -> Map {
        Map(pairs
            .iter()
            .map(|(k, v)| (Bytes::from_static(k.as_bytes()), Value::str(v)))
            .collect())
    }

    #[test]
    fn decode_field_as_escaped_utf8_then_json() {
        let d = rules(&[
            "Decode_Field_As escaped_utf8 log do_next",
            "Decode_Field_As json log",
        ]);
        let mut m = record(&[("log", r#"{\"a\":\"caf\u00e9\"}"#), ("stream", "stdout")]);
        d.apply(&mut m);
        let Some(Value::Map(inner)) = m.get(b"log") else {
            panic!("log not decoded: {m:?}")
        };
        assert_eq!(inner.get(b"a"), Some(&Value::string("café".into())));
        assert_eq!(m.0[1].0.as_ref(), b"stream", "key order kept");
        // Not JSON after unescaping: the unescaped text stays in place.
        let mut m = record(&[("log", r"line\tone")]);
        d.apply(&mut m);
        assert_eq!(m.get(b"log"), Some(&Value::str("line\tone")));
    }

    #[test]
    fn decode_field_appends_keys_and_actions() {
        let d = rules(&["Decode_Field json log"]);
        let mut m = record(&[("log", r#" {"level":"info"}"#), ("x", "1")]);
        d.apply(&mut m);
        let keys: Vec<&[u8]> = m.0.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, vec![&b"log"[..], b"x", b"level"]);
        assert_eq!(m.get(b"log"), Some(&Value::str(r#" {"level":"info"}"#)));
        // A failed rule without an action stops; with try_next the next rule runs.
        let stop = rules(&["Decode_Field_As json log", "Decode_Field_As escaped log"]);
        let mut m = record(&[("log", r"a\nb")]);
        stop.apply(&mut m);
        assert_eq!(m.get(b"log"), Some(&Value::str(r"a\nb")));
        let next = rules(&[
            "Decode_Field_As json log try_next",
            "Decode_Field_As escaped log",
        ]);
        next.apply(&mut m);
        assert_eq!(m.get(b"log"), Some(&Value::str("a\nb")));
        assert!(rules_of(&["Decode_Field yaml log"]).is_err());
        assert!(rules_of(&["Decode_Field json"]).is_err());
    }

    #[test]
    fn unescapers() {
        assert_eq!(unescape(br#"a\"b\\c\td"#), b"a\"b\\c\td");
        assert_eq!(
            unescape_utf8(br#"\u00e9 \ud83d\ude00 \x41 \101 \/ \q \ud800x"#),
            "é 😀 A A / q \u{fffd}x".as_bytes()
        );
        assert_eq!(
            mysql_unquote(&Bytes::from_static(br#"'it\'s\n'"#)).as_ref(),
            b"it's\n"
        );
        assert_eq!(
            mysql_unquote(&Bytes::from_static(b"bare")).as_ref(),
            b"bare"
        );
    }
}
