//! `Format ltsv` (Labeled Tab-Separated Values, ltsv.org): `label:value` fields separated by
//! tabs, read as Fluent Bit's `flb_parser_ltsv.c` reads them.
//!
//! A label is `[0-9A-Za-z_.-]+`; a value runs to the next tab, line break or NUL. Reading stops
//! at a label that is not followed by `:` and at the first line break.

use bytes::Bytes;

fn is_label_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn is_value_byte(b: u8) -> bool {
    !matches!(b, 0 | b'\t' | b'\n' | b'\r')
}

/// The fields of `line`; `None` when there is none.
pub fn fields(line: &Bytes) -> Option<Vec<(Bytes, Bytes)>> {
    let b = line.as_ref();
    let mut out = Vec::new();
    let mut c = 0;
    while c < b.len() {
        let label = c;
        while c < b.len() && is_label_byte(b[c]) {
            c += 1;
        }
        if c == b.len() || b[c] != b':' {
            break;
        }
        let label = line.slice(label..c);
        c += 1;
        let value = c;
        while c < b.len() && is_value_byte(b[c]) {
            c += 1;
        }
        if !label.is_empty() {
            out.push((label, line.slice(value..c)));
        }
        if b.get(c) == Some(&b'\t') {
            c += 1;
        }
        if matches!(b.get(c), Some(b'\n' | b'\r')) {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_values_and_stops() {
        let line = Bytes::from_static(b"host:127.0.0.1\tident:-\ttime:[10/Oct/2000:13:55:36 -0700]\treq:GET / HTTP/1.1\tempty:\n2nd:line");
        let got: Vec<(String, String)> = fields(&line)
            .unwrap()
            .iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let want = [
            ("host", "127.0.0.1"),
            ("ident", "-"),
            ("time", "[10/Oct/2000:13:55:36 -0700]"),
            ("req", "GET / HTTP/1.1"),
            ("empty", ""),
        ];
        assert_eq!(
            got,
            want.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            fields(&Bytes::from_static(b"a:1\tbad label:2"))
                .unwrap()
                .len(),
            1
        );
        assert!(fields(&Bytes::from_static(b"no label here")).is_none());
    }
}
