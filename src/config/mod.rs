//! Fluent Bit configuration (classic `.conf` and YAML) → one list of typed sections.
//!
//! Owns: reading config files, `@INCLUDE`/`includes`, `@SET`/`env`, `${VAR}` expansion, and the
//! origin (file and line) of every property. Invariant: nothing a user wrote is silently
//! ignored — every property is either consumed by a plugin's option table or reported as an
//! error naming its file, line and key (see [`Props::finish`]).

pub mod classic;
pub mod env;
pub mod units;
pub mod yaml;

use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use env::ConfigEnv;

/// Where a property or section was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<PathBuf>,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A configuration error that names where it was found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub origin: Option<Origin>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.origin {
            write!(f, "{o}: ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "key '{k}': ")?;
        }
        f.write_str(&self.message)
    }
}

impl ConfigError {
    pub fn at(origin: &Origin, message: impl Into<String>) -> Self {
        ConfigError {
            origin: Some(origin.clone()),
            key: None,
            message: message.into(),
        }
    }
    pub fn key(prop: &Property, message: impl Into<String>) -> Self {
        ConfigError {
            origin: Some(prop.origin.clone()),
            key: Some(prop.key.clone()),
            message: message.into(),
        }
    }
    pub fn plain(message: impl Into<String>) -> Self {
        ConfigError {
            origin: None,
            key: None,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    Service,
    Input,
    Filter,
    Output,
    Parser,
    MultilineParser,
}

impl SectionKind {
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "service" => SectionKind::Service,
            "input" => SectionKind::Input,
            "filter" => SectionKind::Filter,
            "output" => SectionKind::Output,
            "parser" => SectionKind::Parser,
            "multiline_parser" => SectionKind::MultilineParser,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct Property {
    /// The key as written (compare case-insensitively).
    pub key: String,
    /// The value after `${VAR}` expansion.
    pub value: String,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub kind: SectionKind,
    pub origin: Origin,
    pub props: Vec<Property>,
}

impl Section {
    pub fn get(&self, key: &str) -> Option<&Property> {
        self.props
            .iter()
            .rev()
            .find(|p| p.key.eq_ignore_ascii_case(key))
    }
}

/// Everything a configuration (with its includes and parsers files) defines.
#[derive(Debug, Default)]
pub struct ConfigDocument {
    pub sections: Vec<Section>,
    pub env: ConfigEnv,
    /// Directory of the main config file: relative `Parsers_File` paths resolve against it.
    pub base_dir: PathBuf,
    pub warnings: Vec<String>,
}

impl ConfigDocument {
    pub fn of_kind(&self, kind: SectionKind) -> impl Iterator<Item = &Section> {
        self.sections.iter().filter(move |s| s.kind == kind)
    }

    /// Loads a config by its extension (`.yaml`/`.yml` → YAML, anything else → classic).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut doc = if is_yaml(path) {
            yaml::load(path)?
        } else {
            classic::load(path)?
        };
        doc.load_parsers_files()?;
        Ok(doc)
    }

    /// Loads an extra parsers file (`-R/--parser`, `[SERVICE] Parsers_File`).
    pub fn load_parsers_file(
        &mut self,
        path: &Path,
        origin: Option<&Property>,
    ) -> Result<(), ConfigError> {
        let resolved = if path.is_absolute() || path.exists() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        };
        if !resolved.exists() {
            let msg = format!("parsers file '{}' does not exist", path.display());
            return Err(match origin {
                Some(p) => ConfigError::key(p, msg),
                None => ConfigError::plain(msg),
            });
        }
        let parsed = if is_yaml(&resolved) {
            yaml::load(&resolved)?
        } else {
            classic::load(&resolved)?
        };
        for section in parsed.sections {
            match section.kind {
                SectionKind::Parser | SectionKind::MultilineParser => self.sections.push(section),
                _ => {
                    return Err(ConfigError::at(
                        &section.origin,
                        "only [PARSER] and [MULTILINE_PARSER] sections are valid in a parsers file",
                    ))
                }
            }
        }
        Ok(())
    }

    fn load_parsers_files(&mut self) -> Result<(), ConfigError> {
        let files: Vec<Property> = self
            .of_kind(SectionKind::Service)
            .flat_map(|s| s.props.iter())
            .filter(|p| p.key.eq_ignore_ascii_case("parsers_file"))
            .cloned()
            .collect();
        for prop in files {
            self.load_parsers_file(Path::new(&prop.value), Some(&prop))?;
        }
        Ok(())
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// A plugin's view of its section: typed getters that record which keys were consumed, so that
/// [`Props::finish`] can reject every key nobody understood.
pub struct Props<'a> {
    pub section: &'a Section,
    used: RefCell<Vec<bool>>,
}

impl<'a> Props<'a> {
    pub fn new(section: &'a Section) -> Self {
        Props {
            section,
            used: RefCell::new(vec![false; section.props.len()]),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.section
            .props
            .iter()
            .rposition(|p| p.key.eq_ignore_ascii_case(key))
    }

    /// Marks keys as understood but without effect (documented in the README's compatibility table).
    pub fn accept(&self, keys: &[&str]) {
        let mut used = self.used.borrow_mut();
        for (i, p) in self.section.props.iter().enumerate() {
            if keys.iter().any(|k| p.key.eq_ignore_ascii_case(k)) {
                used[i] = true;
            }
        }
    }

    /// The last value of `key` (a repeated single-valued key: the last one wins, as in Fluent Bit).
    pub fn prop(&self, key: &str) -> Option<&'a Property> {
        let i = self.position(key)?;
        let mut used = self.used.borrow_mut();
        for (j, p) in self.section.props.iter().enumerate() {
            if p.key.eq_ignore_ascii_case(key) {
                used[j] = true;
            }
        }
        Some(&self.section.props[i])
    }

    pub fn str(&self, key: &str) -> Option<&'a str> {
        self.prop(key).map(|p| p.value.as_str())
    }

    pub fn string_or(&self, key: &str, default: &str) -> String {
        self.str(key).unwrap_or(default).to_string()
    }

    /// Every value of a repeatable key (`Record`, `Regex`, `Parsers_File`...), in order.
    pub fn all(&self, key: &str) -> Vec<&'a Property> {
        let mut used = self.used.borrow_mut();
        self.section
            .props
            .iter()
            .enumerate()
            .filter(|(_, p)| p.key.eq_ignore_ascii_case(key))
            .map(|(i, p)| {
                used[i] = true;
                p
            })
            .collect()
    }

    pub fn required(&self, key: &str) -> Result<&'a Property, ConfigError> {
        self.prop(key).ok_or_else(|| {
            ConfigError::at(
                &self.section.origin,
                format!("missing required key '{key}'"),
            )
        })
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.prop(key) {
            None => Ok(default),
            Some(p) => units::parse_bool(&p.value).ok_or_else(|| {
                ConfigError::key(
                    p,
                    format!("'{}' is not a boolean (on/off/true/false/yes/no)", p.value),
                )
            }),
        }
    }

    pub fn size(&self, key: &str, default: u64) -> Result<u64, ConfigError> {
        match self.prop(key) {
            None => Ok(default),
            Some(p) => units::size(&p.value).map_err(|reason| ConfigError::key(p, reason)),
        }
    }

    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.prop(key) {
            None => Ok(default),
            Some(p) => units::duration(&p.value).map_err(|reason| ConfigError::key(p, reason)),
        }
    }

    pub fn int(&self, key: &str, default: i64) -> Result<i64, ConfigError> {
        match self.prop(key) {
            None => Ok(default),
            Some(p) => p
                .value
                .trim()
                .parse()
                .map_err(|_| ConfigError::key(p, format!("'{}' is not an integer", p.value))),
        }
    }

    /// A TCP port number.
    pub fn port(&self, key: &str, default: u16) -> Result<u16, ConfigError> {
        match self.prop(key) {
            None => Ok(default),
            Some(p) => p
                .value
                .trim()
                .parse()
                .map_err(|_| ConfigError::key(p, format!("'{}' is not a port number", p.value))),
        }
    }

    /// Errors on the first of `keys` that is set: options logferry knows but does not implement.
    pub fn refuse(&self, keys: &[&str], why: &str) -> Result<(), ConfigError> {
        match keys.iter().find_map(|k| self.prop(k)) {
            Some(prop) => Err(ConfigError::key(prop, why)),
            None => Ok(()),
        }
    }

    /// Errors on the first key no getter asked for.
    pub fn finish(self, plugin: &str) -> Result<(), ConfigError> {
        let used = self.used.borrow();
        for (i, p) in self.section.props.iter().enumerate() {
            if !used[i] {
                return Err(ConfigError::key(
                    p,
                    format!("unknown key for plugin '{plugin}'"),
                ));
            }
        }
        Ok(())
    }
}
