//! The `tail` input's options (Fluent Bit's table plus logferry's `Rotated_Files_Max` and
//! `DB.On_Corrupt`), the tag it composes for a file and the scan of its `Path` patterns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::db::OnCorrupt;
use super::file::LineLimits;
use crate::config::{ConfigError, Props};
use crate::engine::metrics::InputMetrics;
use crate::engine::ServiceConfig;
use crate::parsers::multiline::{Joiner, LineMode};
use crate::parsers::ParserRegistry;
use crate::pattern::Pattern;

pub struct Tail {
    pub metrics: Arc<InputMetrics>,
    pub(super) paths: Vec<String>,
    pub(super) excludes: Vec<glob::Pattern>,
    pub(super) tag: String,
    pub(super) tag_regex: Option<Pattern>,
    pub(super) mode: LineMode,
    pub(super) limits: LineLimits,
    pub(super) refresh_interval: Duration,
    pub(super) rotate_wait: Duration,
    pub(super) read_from_head: bool,
    pub(super) ignore_older: Option<Duration>,
    pub(super) exit_on_eof: bool,
    /// logferry: rotated files kept open at most (others are parked).
    pub(super) rotated_files_max: usize,
    pub(super) db: Option<DbOptions>,
}

pub(super) struct DbOptions {
    pub(super) path: PathBuf,
    pub(super) sync: String,
    pub(super) locking: bool,
    pub(super) journal_mode: String,
    /// logferry's `DB.On_Corrupt`: `reset` (default) or `exit`.
    pub(super) on_corrupt: OnCorrupt,
}

impl Tail {
    pub fn from_props(
        p: &Props,
        tag: Option<String>,
        metrics: Arc<InputMetrics>,
        parsers: &ParserRegistry,
        _service: &ServiceConfig,
    ) -> Result<Self, ConfigError> {
        let path_prop = p.required("path")?;
        let paths: Vec<String> = path_prop
            .value
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        for pattern in &paths {
            glob::Pattern::new(pattern).map_err(|e| {
                ConfigError::key(path_prop, format!("bad pattern '{pattern}': {e}"))
            })?;
        }
        let mut excludes = Vec::new();
        if let Some(ex) = p.prop("exclude_path") {
            for pattern in ex.value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                excludes.push(
                    glob::Pattern::new(pattern).map_err(|e| {
                        ConfigError::key(ex, format!("bad pattern '{pattern}': {e}"))
                    })?,
                );
            }
        }
        let tag_regex = match p.prop("tag_regex") {
            Some(r) => Some(Pattern::new(&r.value).map_err(|e| ConfigError::key(r, e))?),
            None => None,
        };
        let key = Bytes::from(p.string_or("key", "log"));
        let mode = if let Some(ml) = p.prop("multiline.parser") {
            let mut joiners = Vec::new();
            for name in ml.value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                joiners.push(Joiner::by_name(name, parsers).ok_or_else(|| {
                    ConfigError::key(ml, format!("unknown multiline parser '{name}'"))
                })?);
            }
            LineMode::Multiline(joiners)
        } else if let Some(pp) = p.prop("parser") {
            let parser = parsers.get(pp.value.trim()).ok_or_else(|| {
                ConfigError::key(
                    pp,
                    format!(
                        "unknown parser '{}' (is its Parsers_File loaded?)",
                        pp.value.trim()
                    ),
                )
            })?;
            LineMode::Parser { parser, key }
        } else {
            LineMode::Raw { key }
        };
        if let Some(dm) = p.prop("docker_mode") {
            if crate::config::units::parse_bool(&dm.value) == Some(true) {
                return Err(ConfigError::key(
                    dm,
                    "legacy Docker_Mode is not supported: use 'multiline.parser docker'",
                ));
            }
        }
        if let Some(m) = p.prop("multiline") {
            if crate::config::units::parse_bool(&m.value) == Some(true) {
                return Err(ConfigError::key(m, "legacy Multiline is not supported: use 'multiline.parser' with a [MULTILINE_PARSER]"));
            }
        }
        let chunk = p.size("buffer_chunk_size", 32_768)?;
        let max_line = p.size("buffer_max_size", 32_768)?.max(chunk) as usize;
        let limits = LineLimits {
            max_line,
            skip_long_lines: p.bool("skip_long_lines", false)?,
            skip_empty_lines: p.bool("skip_empty_lines", false)?,
            path_key: p
                .str("path_key")
                .map(|s| Bytes::copy_from_slice(s.as_bytes())),
            offset_key: p
                .str("offset_key")
                .map(|s| Bytes::copy_from_slice(s.as_bytes())),
        };
        let db = match p.str("db") {
            Some(path) => Some(DbOptions {
                path: PathBuf::from(path),
                sync: p.string_or("db.sync", "normal"),
                locking: p.bool("db.locking", false)?,
                journal_mode: p.string_or("db.journal_mode", "WAL"),
                on_corrupt: match p.prop("db.on_corrupt") {
                    None => OnCorrupt::Reset,
                    Some(v) => match v.value.trim().to_ascii_lowercase().as_str() {
                        "reset" => OnCorrupt::Reset,
                        "exit" => OnCorrupt::Exit,
                        _ => return Err(ConfigError::key(v, "expected reset or exit")),
                    },
                },
            }),
            None => None,
        };
        let ignore_older = match p.duration("ignore_older", Duration::ZERO)? {
            d if d.is_zero() => None,
            d => Some(d),
        };
        let tail = Tail {
            tag: tag.unwrap_or_else(|| metrics.name.clone()),
            metrics,
            paths,
            excludes,
            tag_regex,
            mode,
            limits,
            refresh_interval: p.duration("refresh_interval", Duration::from_secs(60))?,
            rotate_wait: p.duration("rotate_wait", Duration::from_secs(5))?,
            read_from_head: p.bool("read_from_head", false)?,
            ignore_older,
            exit_on_eof: p.bool("exit_on_eof", false)?,
            rotated_files_max: match p.int("rotated_files_max", 256)? {
                n if n >= 1 => n as usize,
                _ => {
                    return Err(ConfigError::key(
                        p.prop("rotated_files_max").expect("set"),
                        "must be at least 1",
                    ))
                }
            },
            db,
        };
        p.accept(&[
            "inotify_watcher",
            "watcher_interval",
            "progress_check_interval",
            "progress_check_interval_nsec",
            "file_cache_advise",
            "static_batch_size",
            "event_batch_size",
            "db.compare_filename",
            "read_newly_discovered_files_from_head",
            "docker_mode_flush",
            "multiline_flush",
        ]);
        Ok(tail)
    }

    /// The tag of a file: `Tag_Regex` captures into `<name>`, or the first `*` replaced by the
    /// path with `/` turned into `.` (Fluent Bit's `tag_compose`).
    pub fn compose_tag(&self, path: &Path) -> String {
        let path_str = path.to_string_lossy();
        if let Some(re) = &self.tag_regex {
            let caps = re.named_captures(&path_str).unwrap_or_default();
            let mut out = String::with_capacity(self.tag.len());
            let mut rest = self.tag.as_str();
            while let Some(open) = rest.find('<') {
                let Some(close) = rest[open..].find('>') else {
                    break;
                };
                out.push_str(&rest[..open]);
                let name = &rest[open + 1..open + close];
                match caps.iter().find(|(n, _)| n == name) {
                    Some((_, range)) => out.push_str(&path_str[range.clone()]),
                    None => out.push('_'),
                }
                rest = &rest[open + close + 1..];
            }
            out.push_str(rest);
            return out;
        }
        match self.tag.find('*') {
            Some(star) => {
                let mut expanded: String = path_str
                    .chars()
                    .map(|c| {
                        if c == '/' || c == '\\' || c == ':' {
                            '.'
                        } else {
                            c
                        }
                    })
                    .collect();
                while expanded.contains("..") {
                    expanded = expanded.replace("..", ".");
                }
                let expanded = expanded.trim_start_matches('.');
                let rest = self.tag[star + 1..].replace('*', "");
                format!("{}{}{}", &self.tag[..star], expanded, rest)
            }
            None => self.tag.clone(),
        }
    }

    pub(super) fn excluded(&self, path: &Path) -> bool {
        let s = path.to_string_lossy();
        self.excludes.iter().any(|p| p.matches(&s))
    }

    /// Every regular file the patterns match now.
    pub(super) fn scan(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut found = Vec::new();
        for pattern in &self.paths {
            let Ok(entries) = glob::glob(pattern) else {
                continue;
            };
            for path in entries.flatten() {
                if self.excluded(&path) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if !meta.is_file() {
                    continue;
                }
                if let Some(max_age) = self.ignore_older {
                    let old = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age > max_age);
                    if old {
                        continue;
                    }
                }
                found.push((path, meta));
            }
        }
        found
    }

    /// Directories to watch: the literal prefix of each pattern.
    pub(super) fn watch_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        for pattern in &self.paths {
            let literal: PathBuf = Path::new(pattern)
                .components()
                .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
                .collect();
            let dir = if literal.as_os_str() == pattern.as_str() {
                literal.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                literal
            };
            if dir.is_dir() && !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn tail_with(tag: &str, regex: Option<&str>) -> Tail {
        Tail {
            metrics: Arc::new(InputMetrics::default()),
            paths: vec![],
            excludes: vec![],
            tag: tag.into(),
            tag_regex: regex.map(|r| Pattern::new(r).unwrap()),
            mode: LineMode::Raw {
                key: Bytes::from_static(b"log"),
            },
            limits: LineLimits {
                max_line: 10,
                skip_long_lines: false,
                skip_empty_lines: false,
                path_key: None,
                offset_key: None,
            },
            refresh_interval: Duration::from_secs(1),
            rotate_wait: Duration::from_secs(1),
            read_from_head: false,
            ignore_older: None,
            exit_on_eof: false,
            rotated_files_max: 1,
            db: None,
        }
    }

    #[test]
    fn star_tag_expansion() {
        let t = tail_with("kube.*", None);
        assert_eq!(
            t.compose_tag(Path::new("/var/log/containers/a_b_c-123.log")),
            "kube.var.log.containers.a_b_c-123.log"
        );
    }

    #[test]
    fn union_tag_regex() {
        let re = r"(?<pod_name>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)_(?<namespace_name>[^_]+)_(?<container_name>.+)-";
        let t = tail_with(
            "namespace-<namespace_name>.pod-<pod_name>.cont-<container_name>",
            Some(re),
        );
        let path = Path::new("/var/log/containers/web-7d9f_prod_nginx-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.log");
        assert_eq!(
            t.compose_tag(path),
            "namespace-prod.pod-web-7d9f.cont-nginx"
        );
        let t = tail_with("x.<missing>", Some("(?<a>z)?"));
        assert_eq!(t.compose_tag(path), "x._");
    }
}
