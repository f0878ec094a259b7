//! Object keys from Fluent Bit's `s3_key_format`: `$TAG`, `$TAG[n]` (split on any character of
//! `s3_key_format_tag_delimiters`, empty parts skipped), `$INDEX`, `$UUID` (8 random
//! alphanumerics), then strftime in UTC of the first record's time (`s3`) or the upload time
//! (`gcs`), as each Fluent Bit plugin does. Fluent Bit's order is kept.

use rand::Rng;

use crate::record::EventTime;

#[derive(Debug, Clone)]
pub struct KeyFormat {
    pub format: String,
    pub delimiters: String,
    /// Whose time the strftime fields show.
    pub time: KeyTime,
}

/// Fluent Bit's `s3` renders key times from the chunk's first record, its `gcs` from the
/// moment of upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTime {
    FirstRecord,
    Upload,
}

/// Fluent Bit's `s3` suffixes `-object` + 8 letters and digits, its `gcs` 8 lower-case hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuffixAlphabet {
    Alphanumeric,
    Hex,
}

impl SuffixAlphabet {
    pub fn random(self, n: usize) -> String {
        match self {
            SuffixAlphabet::Alphanumeric => random_alnum(n),
            SuffixAlphabet::Hex => {
                let mut rng = rand::rng();
                (0..n)
                    .map(|_| char::from_digit(rng.random_range(0..16), 16).expect("hex digit"))
                    .collect()
            }
        }
    }
}

impl KeyFormat {
    pub fn has_uuid_or_index(&self) -> bool {
        self.format.contains("$UUID") || self.format.contains("$INDEX")
    }

    /// Whether every upload of a tag goes to the same key (no `$UUID`, `$INDEX` or time fields).
    pub fn is_static(&self) -> bool {
        !self.has_uuid_or_index() && !self.format.contains('%')
    }

    /// The object key (without the leading `/` the format starts with); `first_record` is the
    /// chunk's first record time, used when [`KeyTime::FirstRecord`].
    pub fn render(&self, tag: &str, index: u64, first_record: EventTime) -> String {
        let parts: Vec<&str> = tag
            .split(|c| self.delimiters.contains(c))
            .filter(|p| !p.is_empty())
            .collect();
        let mut key = self.format.clone();
        for n in 0..10 {
            let placeholder = format!("$TAG[{n}]");
            if key.contains(&placeholder) {
                key = key.replace(&placeholder, parts.get(n).copied().unwrap_or(""));
            }
        }
        key = key
            .replace("$TAG", tag)
            .replace("$INDEX", &index.to_string());
        while key.contains("$UUID") {
            key = key.replacen("$UUID", &random_alnum(8), 1);
        }
        if key.contains('%') {
            let t = match self.time {
                KeyTime::FirstRecord => first_record,
                KeyTime::Upload => EventTime::now(),
            };
            let when = chrono::DateTime::from_timestamp(t.sec, t.nsec).unwrap_or_default();
            let mut rendered = String::new();
            use std::fmt::Write;
            if write!(rendered, "{}", when.format(&key)).is_ok() {
                key = rendered;
            }
        }
        key.trim_start_matches('/').to_string()
    }
}

pub fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fluent_bit_docs_example() {
        let k = KeyFormat {
            format: "/$TAG[2]/$TAG[0]/%Y/%m/%d/%H/%M/%S/$UUID.gz".into(),
            delimiters: ".-".into(),
            time: KeyTime::FirstRecord,
        };
        let key = k.render(
            "my_app_name-logs.prod",
            0,
            EventTime {
                sec: 1_577_836_800,
                nsec: 0,
            },
        );
        assert!(
            key.starts_with("prod/my_app_name/2020/01/01/00/00/00/"),
            "{key}"
        );
        assert_eq!(
            key.len(),
            "prod/my_app_name/2020/01/01/00/00/00/".len() + 8 + 3
        );
    }

    #[test]
    fn union_static_key() {
        let k = KeyFormat {
            format: "/persisted-logs/$TAG".into(),
            delimiters: ".".into(),
            time: KeyTime::FirstRecord,
        };
        assert!(k.is_static());
        assert_eq!(
            k.render("namespace-a.pod-b.cont-c", 7, EventTime::default()),
            "persisted-logs/namespace-a.pod-b.cont-c"
        );
        let k = KeyFormat {
            format: "/logs/$TAG/$INDEX".into(),
            delimiters: ".".into(),
            time: KeyTime::FirstRecord,
        };
        assert_eq!(k.render("t", 7, EventTime::default()), "logs/t/7");
    }

    #[test]
    fn gcs_keys_take_the_upload_time_and_a_hex_suffix() {
        let k = KeyFormat {
            format: "logs/%Y".into(),
            delimiters: ".".into(),
            time: KeyTime::Upload,
        };
        let year = chrono::Utc::now().format("%Y").to_string();
        assert_eq!(
            k.render("t", 0, EventTime::default()),
            format!("logs/{year}")
        );
        let s = SuffixAlphabet::Hex.random(8);
        assert_eq!(s.len(), 8);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
