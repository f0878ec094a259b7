//! Fluent Bit classic-mode `.conf` reader.
//!
//! Rules kept (see `flb_cf_fluentbit.c`): `[SECTION]` headers at column 0, indented
//! `key value` lines, `#` comments only at the start of a line, `@INCLUDE` (globs, as-is then
//! relative to the including file) and `@SET` at column 0, no environment expansion in include
//! paths. Include cycles are errors naming the `@INCLUDE` line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ConfigDocument, ConfigError, Origin, Property, Section, SectionKind};

pub fn load(path: &Path) -> Result<ConfigDocument, ConfigError> {
    let mut doc = ConfigDocument {
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ..Default::default()
    };
    let mut reader = Reader {
        doc: &mut doc,
        stack: Vec::new(),
    };
    reader.read_file(path, None)?;
    Ok(doc)
}

/// Parses classic text that is not backed by a file (used by tests and the embedded parsers).
pub fn parse_str(name: &str, text: &str) -> Result<ConfigDocument, ConfigError> {
    let mut doc = ConfigDocument::default();
    let mut reader = Reader {
        doc: &mut doc,
        stack: Vec::new(),
    };
    reader.read_text(Arc::new(PathBuf::from(name)), text)?;
    Ok(doc)
}

struct Reader<'a> {
    doc: &'a mut ConfigDocument,
    /// Canonical paths of the files being read, for include-cycle detection.
    stack: Vec<PathBuf>,
}

impl Reader<'_> {
    fn read_file(
        &mut self,
        path: &Path,
        included_from: Option<&Origin>,
    ) -> Result<(), ConfigError> {
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            let msg = format!("cannot open config file '{}': {e}", path.display());
            match included_from {
                Some(o) => ConfigError::at(o, msg),
                None => ConfigError::plain(msg),
            }
        })?;
        if self.stack.contains(&canonical) {
            let o = included_from.expect("a cycle needs an include");
            return Err(ConfigError::at(
                o,
                format!("@INCLUDE cycle: '{}' is already being read", path.display()),
            ));
        }
        let bytes = std::fs::read(&canonical).map_err(|e| {
            ConfigError::plain(format!("cannot read config file '{}': {e}", path.display()))
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ConfigError::plain(format!(
                "config file '{}' is not valid UTF-8",
                path.display()
            ))
        })?;
        self.stack.push(canonical);
        let result = self.read_text(Arc::new(path.to_path_buf()), &text);
        self.stack.pop();
        result
    }

    fn read_text(&mut self, file: Arc<PathBuf>, text: &str) -> Result<(), ConfigError> {
        let mut current: Option<Section> = None;
        for (index, raw) in text.lines().enumerate() {
            let origin = Origin {
                file: file.clone(),
                line: index + 1,
            };
            let line = raw.trim_end_matches(['\r', ' ', '\t']);
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indented = trimmed.len() != line.len();
            if !indented && line.starts_with('@') {
                if current.is_some() && starts_with_ci(line, "@SET ") {
                    return Err(ConfigError::at(
                        &origin,
                        "@SET is not allowed inside a section",
                    ));
                }
                self.command(line, &origin, &file)?;
                continue;
            }
            if trimmed.starts_with('[') {
                let Some(end) = trimmed.find(']') else {
                    return Err(ConfigError::at(
                        &origin,
                        format!("malformed section header '{trimmed}'"),
                    ));
                };
                if indented {
                    return Err(ConfigError::at(
                        &origin,
                        format!("nested group '{trimmed}' (processors) is not supported"),
                    ));
                }
                let name = trimmed[1..end].trim();
                let kind = SectionKind::from_name(name).ok_or_else(|| {
                    ConfigError::at(&origin, format!("unknown section '[{name}]'"))
                })?;
                if let Some(done) = current.take() {
                    self.doc.sections.push(done);
                }
                current = Some(Section {
                    kind,
                    origin,
                    props: Vec::new(),
                });
                continue;
            }
            let Some(section) = current.as_mut() else {
                return Err(ConfigError::at(
                    &origin,
                    format!("'{trimmed}' is outside any section"),
                ));
            };
            if !indented {
                return Err(ConfigError::at(
                    &origin,
                    format!("'{trimmed}' must be indented under its section header"),
                ));
            }
            let (key, value) = match trimmed.find([' ', '\t']) {
                Some(i) => (&trimmed[..i], trimmed[i..].trim()),
                None => (trimmed, ""),
            };
            if value.is_empty() {
                return Err(ConfigError {
                    origin: Some(origin),
                    key: Some(key.to_string()),
                    message: "key has an empty value".into(),
                });
            }
            let (expanded, unset) = self.doc.env.expand(value);
            for name in unset {
                self.doc.warnings.push(format!(
                    "{origin}: variable ${{{name}}} is used but not set"
                ));
            }
            section.props.push(Property {
                key: key.to_string(),
                value: expanded,
                origin,
            });
        }
        if let Some(done) = current.take() {
            self.doc.sections.push(done);
        }
        Ok(())
    }

    fn command(&mut self, line: &str, origin: &Origin, file: &Path) -> Result<(), ConfigError> {
        if starts_with_ci(line, "@INCLUDE ") {
            let target = line[9..].trim();
            for path in resolve_include(target, file, origin)? {
                self.read_file(&path, Some(origin))?;
            }
            Ok(())
        } else if starts_with_ci(line, "@SET ") {
            let assignment = line[5..].trim();
            let Some((k, v)) = assignment.split_once('=') else {
                return Err(ConfigError::at(
                    origin,
                    format!("@SET needs KEY=VALUE, got '{assignment}'"),
                ));
            };
            let (value, _) = self.doc.env.expand(v.trim());
            self.doc.env.set(k.trim(), &value);
            Ok(())
        } else {
            Err(ConfigError::at(
                origin,
                format!(
                    "unknown command '{}'",
                    line.split_whitespace().next().unwrap_or(line)
                ),
            ))
        }
    }
}

fn starts_with_ci(line: &str, prefix: &str) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// `@INCLUDE` target → files: tried as written, then relative to the including file's folder;
/// `*` makes it a glob (an empty glob is not an error, as in Fluent Bit).
fn resolve_include(
    target: &str,
    including: &Path,
    origin: &Origin,
) -> Result<Vec<PathBuf>, ConfigError> {
    let relative = including.parent().unwrap_or(Path::new(".")).join(target);
    let candidates = if Path::new(target).is_absolute() {
        vec![PathBuf::from(target)]
    } else {
        vec![PathBuf::from(target), relative]
    };
    if target.contains('*') {
        for candidate in &candidates {
            let pattern = candidate.to_string_lossy();
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map_err(|e| {
                    ConfigError::at(origin, format!("bad @INCLUDE pattern '{target}': {e}"))
                })?
                .filter_map(Result::ok)
                .collect();
            if !found.is_empty() {
                found.sort();
                return Ok(found);
            }
        }
        return Ok(Vec::new());
    }
    candidates
        .into_iter()
        .find(|c| c.is_file())
        .map(|c| vec![c])
        .ok_or_else(|| ConfigError::at(origin, format!("@INCLUDE file '{target}' not found")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_keys_and_set() {
        let doc = parse_str(
            "t.conf",
            "@SET who=world\n[SERVICE]\n    Flush 1\n# c\n[INPUT]\n    Name dummy\n    Dummy {\"hello\":\"${who}\"}\n",
        )
        .unwrap();
        assert_eq!(doc.sections.len(), 2);
        assert_eq!(
            doc.sections[1].get("dummy").unwrap().value,
            "{\"hello\":\"world\"}"
        );
        assert_eq!(doc.sections[1].get("NAME").unwrap().origin.line, 6);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse_str("t.conf", "[INPUT]\n    Name tail\n    Path\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.conf:3: key 'Path': key has an empty value"
        );
        let err = parse_str("t.conf", "[INPUTS]\n").unwrap_err();
        assert!(err.to_string().starts_with("t.conf:1: unknown section"));
        let err = parse_str("t.conf", "[INPUT]\nName tail\n").unwrap_err();
        assert!(err.to_string().starts_with("t.conf:2:"), "{err}");
    }

    #[test]
    fn union_tag_regex_keeps_doubled_backslash() {
        let doc = parse_str(
            "u.conf",
            "[INPUT]\n    Tag_Regex           (?:\\\\.[a-z0-9])-\n",
        )
        .unwrap();
        assert_eq!(
            doc.sections[0].get("tag_regex").unwrap().value,
            "(?:\\\\.[a-z0-9])-"
        );
    }
}
