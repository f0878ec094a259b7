//! Fluent Bit YAML config reader: `env`, `includes`, `service`, `pipeline.{inputs,filters,outputs}`,
//! `parsers`, `multiline_parsers` → the same [`Section`]s the classic reader produces.
//!
//! YAML values carry no positions in the YAML crate, so each property's line is found by scanning
//! the text forward from its section's list item; errors still name file and line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_norway::Value;

use super::{ConfigDocument, ConfigError, Origin, Property, Section, SectionKind};

pub fn load(path: &Path) -> Result<ConfigDocument, ConfigError> {
    let mut doc = ConfigDocument {
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ..Default::default()
    };
    let mut stack = Vec::new();
    read_file(&mut doc, path, &mut stack, None)?;
    Ok(doc)
}

fn read_file(
    doc: &mut ConfigDocument,
    path: &Path,
    stack: &mut Vec<PathBuf>,
    from: Option<&Origin>,
) -> Result<(), ConfigError> {
    let fail = |msg: String| match from {
        Some(o) => ConfigError::at(o, msg),
        None => ConfigError::plain(msg),
    };
    let canonical = std::fs::canonicalize(path)
        .map_err(|e| fail(format!("cannot open config file '{}': {e}", path.display())))?;
    if stack.contains(&canonical) {
        return Err(fail(format!(
            "include cycle: '{}' is already being read",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&canonical)
        .map_err(|e| fail(format!("cannot read '{}': {e}", path.display())))?;
    let file = Arc::new(path.to_path_buf());
    let root: Value = serde_norway::from_str(&text).map_err(|e| {
        let line = e.location().map(|l| l.line()).unwrap_or(0);
        ConfigError::at(
            &Origin {
                file: file.clone(),
                line,
            },
            format!("invalid YAML: {e}"),
        )
    })?;
    let Value::Mapping(root) = root else {
        if root.is_null() {
            return Ok(());
        }
        return Err(ConfigError::at(
            &Origin { file, line: 1 },
            "a YAML config must be a mapping",
        ));
    };
    let mut locator = LineLocator {
        lines: text.lines().collect(),
        cursor: 0,
        file: file.clone(),
    };
    stack.push(canonical);

    if let Some(env) = root.get("env") {
        let Value::Mapping(env) = env else {
            return Err(ConfigError::at(
                &locator.find("env:"),
                "'env' must be a mapping",
            ));
        };
        for (k, v) in env {
            let name = scalar(k).unwrap_or_default();
            let value = scalar(v).unwrap_or_default();
            let (value, _) = doc.env.expand(&value);
            doc.env.set(&name, &value);
        }
    }
    if let Some(includes) = root.get("includes") {
        let origin = locator.find("includes:");
        for inc in as_list(includes) {
            let target = scalar(inc).unwrap_or_default();
            let p = Path::new(&target);
            let resolved = if p.is_absolute() {
                p.to_path_buf()
            } else {
                path.parent().unwrap_or(Path::new(".")).join(p)
            };
            read_file(doc, &resolved, stack, Some(&origin))?;
        }
    }
    for (key, value) in &root {
        let key = scalar(key).unwrap_or_default();
        match key.as_str() {
            "env" | "includes" => {}
            "service" => {
                let origin = locator.find("service:");
                push_section(doc, &mut locator, SectionKind::Service, origin, value)?;
            }
            "parsers" | "multiline_parsers" => {
                let kind = if key == "parsers" {
                    SectionKind::Parser
                } else {
                    SectionKind::MultilineParser
                };
                locator.find(&format!("{key}:"));
                for item in as_list(value) {
                    let origin = locator.find("-");
                    push_section(doc, &mut locator, kind, origin, item)?;
                }
            }
            "pipeline" => {
                locator.find("pipeline:");
                let Value::Mapping(pipeline) = value else {
                    return Err(ConfigError::at(
                        &locator.here(),
                        "'pipeline' must be a mapping",
                    ));
                };
                for (pk, pv) in pipeline {
                    let pk = scalar(pk).unwrap_or_default();
                    let kind = match pk.as_str() {
                        "inputs" => SectionKind::Input,
                        "filters" => SectionKind::Filter,
                        "outputs" => SectionKind::Output,
                        other => {
                            return Err(ConfigError::at(
                                &locator.find(&format!("{other}:")),
                                format!("unknown pipeline key '{other}'"),
                            ))
                        }
                    };
                    locator.find(&format!("{pk}:"));
                    for item in as_list(pv) {
                        let origin = locator.find("-");
                        push_section(doc, &mut locator, kind, origin, item)?;
                    }
                }
            }
            other => {
                return Err(ConfigError::at(
                    &locator.find(&format!("{other}:")),
                    format!("unknown or unsupported top-level key '{other}'"),
                ));
            }
        }
    }
    stack.pop();
    Ok(())
}

fn push_section(
    doc: &mut ConfigDocument,
    locator: &mut LineLocator,
    kind: SectionKind,
    origin: Origin,
    value: &Value,
) -> Result<(), ConfigError> {
    let Value::Mapping(map) = value else {
        return Err(ConfigError::at(
            &origin,
            "expected a mapping of keys to values",
        ));
    };
    let mut section = Section {
        kind,
        origin: origin.clone(),
        props: Vec::new(),
    };
    let start = locator.cursor;
    for (k, v) in map {
        let key = scalar(k).unwrap_or_default();
        locator.cursor = start.saturating_sub(1);
        let prop_origin = locator.find(&format!("{key}:"));
        let values: Vec<String> = match v {
            Value::Sequence(items) if key == "rules" => items
                .iter()
                .map(rule_text)
                .collect::<Result<_, _>>()
                .map_err(|m| ConfigError::at(&prop_origin, m))?,
            Value::Sequence(items) => items
                .iter()
                .map(|i| {
                    scalar(i).ok_or_else(|| {
                        ConfigError::at(&prop_origin, format!("'{key}' items must be scalars"))
                    })
                })
                .collect::<Result<_, _>>()?,
            Value::Mapping(_) if key == "processors" => {
                return Err(ConfigError::at(
                    &prop_origin,
                    "processors are not supported",
                ))
            }
            // Fluent Bit reads YAML scalars as text: `name: null` is the `null` plugin.
            Value::Null if locator.line_has_value(&prop_origin, &key) => vec!["null".to_string()],
            Value::Null => vec![String::new()],
            other => vec![scalar(other).ok_or_else(|| {
                ConfigError::at(&prop_origin, format!("'{key}' must be a scalar"))
            })?],
        };
        let key = if key == "rules" {
            "rule".to_string()
        } else {
            key
        };
        for raw in values {
            let (value, unset) = doc.env.expand(&raw);
            for name in unset {
                doc.warnings.push(format!(
                    "{prop_origin}: variable ${{{name}}} is used but not set"
                ));
            }
            if value.is_empty() {
                return Err(ConfigError {
                    origin: Some(prop_origin.clone()),
                    key: Some(key.clone()),
                    message: "key has an empty value".into(),
                });
            }
            section.props.push(Property {
                key: key.clone(),
                value,
                origin: prop_origin.clone(),
            });
        }
    }
    doc.sections.push(section);
    Ok(())
}

/// A YAML multiline rule `{state, regex, next_state}` → the classic `"state" "/regex/" "next"` text.
fn rule_text(v: &Value) -> Result<String, String> {
    let field = |k: &str| {
        v.get(k)
            .and_then(scalar)
            .ok_or_else(|| format!("a rule needs '{k}'"))
    };
    Ok(format!(
        "\"{}\" \"/{}/\" \"{}\"",
        field("state")?,
        field("regex")?,
        field("next_state")?
    ))
}

fn as_list(v: &Value) -> Vec<&Value> {
    match v {
        Value::Sequence(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

struct LineLocator<'a> {
    lines: Vec<&'a str>,
    cursor: usize,
    file: Arc<PathBuf>,
}

impl LineLocator<'_> {
    /// The next line (from the cursor) whose trimmed text starts with `needle`, else the cursor's.
    fn find(&mut self, needle: &str) -> Origin {
        let needle_item = format!("- {needle}");
        if let Some(offset) = self.lines[self.cursor.min(self.lines.len())..]
            .iter()
            .position(|l| {
                let t = l.trim_start();
                t.starts_with(needle) || t.starts_with(&needle_item)
            })
        {
            self.cursor += offset + 1;
        }
        self.here()
    }

    /// Whether `key:` on the origin's line is followed by text (as opposed to an empty value).
    fn line_has_value(&self, origin: &Origin, key: &str) -> bool {
        let Some(line) = self.lines.get(origin.line.saturating_sub(1)) else {
            return false;
        };
        let t = line.trim_start().trim_start_matches("- ");
        t.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(|v| !v.trim().is_empty())
    }

    fn here(&self) -> Origin {
        Origin {
            file: self.file.clone(),
            line: self.cursor.max(1),
        }
    }
}
