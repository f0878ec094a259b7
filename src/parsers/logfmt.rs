//! `Format logfmt`: `key=value key="quoted value" bare_key` pairs, read as Fluent Bit's
//! `flb_parser_logfmt.c` reads them.
//!
//! A key is a run of bytes above space other than `=` and `"`; anything else between pairs is
//! skipped. A quoted value may hold `\"` and other escapes (decoded as `escaped_utf8`) and runs to
//! the closing quote or the end of the line. A key without a value (`debug`, `debug=`) is `true`.
//! Reading stops at the first line break after a pair.

use bytes::Bytes;

use super::decode::unescape_utf8;

fn is_key_byte(b: u8) -> bool {
    b > b' ' && b != b'=' && b != b'"'
}

/// The pairs of `line`, values `None` for bare keys. `None` when there is no pair, or with
/// `Logfmt_No_Bare_Keys` when a key has no `=`.
pub fn pairs(line: &Bytes, no_bare_keys: bool) -> Option<Vec<(Bytes, Option<Bytes>)>> {
    let b = line.as_ref();
    let run = |mut i: usize| {
        while i < b.len() && is_key_byte(b[i]) {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut c = 0;
    while c < b.len() {
        while c < b.len() && !is_key_byte(b[c]) {
            c += 1;
        }
        if c == b.len() {
            break;
        }
        let key_start = c;
        c = run(c);
        let key = line.slice(key_start..c);
        let mut value = None;
        if b.get(c) == Some(&b'=') {
            c += 1;
            if b.get(c) == Some(&b'"') {
                c += 1;
                let start = c;
                let mut escaped = false;
                while c < b.len() && b[c] != b'"' {
                    if b[c] == b'\\' {
                        escaped = true;
                        c += 1;
                    }
                    c += 1;
                }
                let end = c.min(b.len());
                value = Some(if escaped {
                    Bytes::from(unescape_utf8(&b[start..end]))
                } else {
                    line.slice(start..end)
                });
                if c < b.len() {
                    c += 1;
                }
            } else {
                let start = c;
                c = run(c);
                // `key=` reads as a bare key.
                value = (c > start).then(|| line.slice(start..c));
            }
        } else if no_bare_keys {
            return None;
        }
        out.push((key, value));
        match b.get(c) {
            Some(b'\n') | Some(b'\r') => break,
            _ => {}
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(p: &[(Bytes, Option<Bytes>)]) -> Vec<(String, Option<String>)> {
        p.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn pairs_quotes_bare_keys_and_garbage() {
        let line = Bytes::from_static(
            br#"  level=info msg="a \"quoted\" word" debug empty= q="" =junk n=1
next=line"#,
        );
        let got = text(&pairs(&line, false).unwrap());
        let want: Vec<(String, Option<String>)> = [
            ("level", Some("info")),
            ("msg", Some(r#"a "quoted" word"#)),
            ("debug", None),
            ("empty", None),
            ("q", Some("")),
            ("junk", None),
            ("n", Some("1")),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .collect();
        assert_eq!(got, want);
        assert!(pairs(&Bytes::from_static(b"a=1 bare"), true).is_none());
        assert!(pairs(&Bytes::from_static(b"a=1 b="), true).is_some());
        assert!(pairs(&Bytes::from_static(b"  \"\" "), false).is_none());
    }
}
