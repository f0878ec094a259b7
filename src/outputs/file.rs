//! `file`: appends records to `Path`/`File` (default file name: the tag) in `out_file`, `plain`,
//! `json_lines` or `template` format; `Mkdir` creates the directory.
//!
//! Invariant 1: a write is acknowledged only after every file touched by it was fsynced. A crash
//! mid-write can leave a torn last line; since it was never acknowledged it will be written
//! again, so the torn tail is cut back to the last newline when the file is first opened.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use super::format::{write_out_file_line, DateKey, Template};
use crate::config::{ConfigError, Props};
use crate::json::{self, DateFormat};
use crate::record::Event;

#[derive(Debug, Clone)]
enum FileFormat {
    OutFile,
    Plain,
    JsonLines(DateKey),
    Template(Template),
}

pub struct FileOut {
    dir: Option<PathBuf>,
    file: Option<String>,
    format: FileFormat,
    mkdir: bool,
    open: HashMap<PathBuf, File>,
    buf: Vec<u8>,
}

impl FileOut {
    pub fn from_props(p: &Props) -> Result<Self, ConfigError> {
        let format = match p.prop("format") {
            None => FileFormat::OutFile,
            Some(f) => match f.value.to_ascii_lowercase().as_str() {
                "out_file" => FileFormat::OutFile,
                "plain" => FileFormat::Plain,
                "json_lines" => FileFormat::JsonLines(DateKey::from_props(p, DateFormat::Double)?),
                "template" => FileFormat::Template(Template::parse(
                    &p.string_or("template", "{time} {message}"),
                )),
                other => {
                    return Err(ConfigError::key(
                        f,
                        format!(
                        "format '{other}' is not supported (out_file, plain, json_lines, template)"
                    ),
                    ))
                }
            },
        };
        Ok(FileOut {
            dir: p.str("path").map(PathBuf::from),
            file: p.str("file").map(str::to_string),
            format,
            mkdir: p.bool("mkdir", false)?,
            open: HashMap::new(),
            buf: Vec::with_capacity(1 << 20),
        })
    }

    fn target(&self, tag: &str) -> PathBuf {
        let name = self.file.clone().unwrap_or_else(|| tag.to_string());
        match &self.dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    fn handle(&mut self, path: &PathBuf) -> std::io::Result<&mut File> {
        if !self.open.contains_key(path) {
            if self.mkdir {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
            }
            let f = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open '{}': {e}", path.display()))
                })?;
            cut_torn_tail(&f, path)?;
            self.open.insert(path.clone(), f);
        }
        Ok(self.open.get_mut(path).expect("inserted above"))
    }

    pub fn write(&mut self, batches: &[(&str, &[Event])]) -> std::io::Result<()> {
        let mut touched: Vec<PathBuf> = Vec::new();
        for (tag, events) in batches {
            let path = self.target(tag);
            let mut buf = std::mem::take(&mut self.buf);
            let mut result = Ok(());
            for chunk in events.chunks(4096) {
                buf.clear();
                for e in chunk {
                    match &self.format {
                        FileFormat::OutFile => write_out_file_line(&mut buf, tag, e, true),
                        FileFormat::Plain => {
                            json::write_map(&mut buf, &e.record, None, true);
                            buf.push(b'\n');
                        }
                        FileFormat::JsonLines(d) => {
                            d.write_record(&mut buf, e, true);
                            buf.push(b'\n');
                        }
                        FileFormat::Template(t) => t.write(&mut buf, e),
                    }
                }
                result = self.handle(&path).and_then(|f| f.write_all(&buf));
                if result.is_err() {
                    break;
                }
            }
            buf.clear();
            buf.shrink_to(2 << 20);
            self.buf = buf;
            if let Err(e) = result {
                self.open.remove(&path);
                return Err(e);
            }
            if !touched.contains(&path) {
                touched.push(path);
            }
        }
        for path in touched {
            if let Some(f) = self.open.get(&path) {
                if let Err(e) = f.sync_data() {
                    self.open.remove(&path);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Truncates an unterminated last line (left by a crash mid-write) back to the last newline.
pub(crate) fn cut_torn_tail(f: &File, path: &std::path::Path) -> std::io::Result<()> {
    let len = f.metadata()?.len();
    let keep = complete_lines_len(f)?;
    if keep < len {
        if keep == 0 {
            tracing::warn!(file = %path.display(), bytes = len, "file holds no complete line: cutting it (its records are written again)");
        } else {
            tracing::warn!(file = %path.display(), bytes = len - keep, "cutting an unterminated last line left by an interrupted write (its records are written again)");
        }
        f.set_len(keep)?;
    }
    Ok(())
}

/// The length of `f` up to and including its last newline (0 when it holds none).
pub(crate) fn complete_lines_len(f: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut end = f.metadata()?.len();
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        f.read_exact_at(chunk, start)?;
        if let Some(i) = memchr::memrchr(b'\n', chunk) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
