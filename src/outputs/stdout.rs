//! `stdout`: `Format msgpack` (Fluent Bit's readable `[N] tag: [[time, {}], {...}]` print),
//! `json` (one array per flush) or `json_lines`, with `json_date_key`/`json_date_format`.

use std::io::Write;

use super::format::DateKey;
use crate::config::{ConfigError, Props};
use crate::json::{self, DateFormat};
use crate::record::Event;

#[derive(Debug, Clone, Copy, PartialEq)]
enum StdoutFormat {
    Msgpack,
    Json,
    JsonLines,
}

pub struct Stdout {
    format: StdoutFormat,
    date: DateKey,
    counter: u64,
}

impl Stdout {
    pub fn from_props(p: &Props) -> Result<Self, ConfigError> {
        let format = match p.prop("format") {
            None => StdoutFormat::Msgpack,
            Some(f) => match f.value.to_ascii_lowercase().as_str() {
                "msgpack" => StdoutFormat::Msgpack,
                "json" => StdoutFormat::Json,
                "json_lines" | "json_stream" => StdoutFormat::JsonLines,
                _ => return Err(ConfigError::key(f, "expected msgpack, json or json_lines")),
            },
        };
        Ok(Stdout {
            format,
            date: DateKey::from_props(p, DateFormat::Double)?,
            counter: 0,
        })
    }

    pub fn write(&mut self, batches: &[(&str, &[Event])]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(64 * 1024);
        for (tag, events) in batches {
            match self.format {
                StdoutFormat::JsonLines => {
                    for e in *events {
                        self.date.write_record(&mut out, e, true);
                        out.push(b'\n');
                    }
                }
                StdoutFormat::Json => {
                    out.push(b'[');
                    for (i, e) in events.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.date.write_record(&mut out, e, true);
                    }
                    out.extend_from_slice(b"]\n");
                }
                StdoutFormat::Msgpack => {
                    for e in *events {
                        out.extend_from_slice(
                            format!(
                                "[{}] {tag}: [[{}.{:09}, {{}}], ",
                                self.counter, e.time.sec, e.time.nsec
                            )
                            .as_bytes(),
                        );
                        json::write_map(&mut out, &e.record, None, true);
                        out.extend_from_slice(b"]\n");
                        self.counter += 1;
                    }
                }
            }
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&out)?;
        stdout.flush()
    }
}
