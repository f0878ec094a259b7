//! `modify`: ordered rules (`Set`, `Add`, `Remove`, `Remove_wildcard`, `Remove_regex`, `Rename`,
//! `Hard_rename`, `Copy`, `Hard_copy`) applied when every `Condition` holds. Key placement is
//! Fluent Bit's: `Set` and `Add` append at the end (`Set` drops the old key), renames stay in
//! place, a copy goes right after its source, and rules with several source keys do nothing.

use bytes::Bytes;

use super::key_and_rest;
use crate::config::{ConfigError, Property, Props};
use crate::pattern::Pattern;
use crate::record::{Map, Value};

#[derive(Debug)]
enum Rule {
    Set(Bytes, Bytes),
    Add(Bytes, Bytes),
    Remove(Bytes),
    RemoveWildcard(Bytes),
    RemoveRegex(Pattern),
    Rename { from: Bytes, to: Bytes, hard: bool },
    Copy { from: Bytes, to: Bytes, hard: bool },
}

#[derive(Debug)]
enum Condition {
    KeyExists(Bytes),
    KeyDoesNotExist(Bytes),
    KeyValueEquals(Bytes, String),
    KeyValueDoesNotEqual(Bytes, String),
    KeyValueMatches(Bytes, Pattern),
    KeyValueDoesNotMatch(Bytes, Pattern),
    AKeyMatches(Pattern),
    NoKeyMatches(Pattern),
}

#[derive(Debug)]
pub struct Modify {
    rules: Vec<Rule>,
    conditions: Vec<Condition>,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn two(prop: &Property) -> Result<(Bytes, Bytes), ConfigError> {
    let (k, v) =
        key_and_rest(&prop.value).ok_or_else(|| ConfigError::key(prop, "expected 'KEY VALUE'"))?;
    Ok((b(k), b(v)))
}

fn regex(prop: &Property, text: &str) -> Result<Pattern, ConfigError> {
    Pattern::new(text).map_err(|e| ConfigError::key(prop, e))
}

impl Modify {
    pub fn from_props(p: &Props) -> Result<Self, ConfigError> {
        let mut rules = Vec::new();
        let mut conditions = Vec::new();
        for prop in &p.section.props {
            let key = prop.key.to_ascii_lowercase();
            let rule = match key.as_str() {
                "set" => Some(two(prop).map(|(k, v)| Rule::Set(k, v))?),
                "add" => Some(two(prop).map(|(k, v)| Rule::Add(k, v))?),
                "remove" => Some(Rule::Remove(b(prop.value.trim()))),
                "remove_wildcard" => Some(Rule::RemoveWildcard(b(prop.value.trim()))),
                "remove_regex" => Some(Rule::RemoveRegex(regex(prop, prop.value.trim())?)),
                "rename" | "hard_rename" => Some(two(prop).map(|(from, to)| Rule::Rename {
                    from,
                    to,
                    hard: key == "hard_rename",
                })?),
                "copy" | "hard_copy" => Some(two(prop).map(|(from, to)| Rule::Copy {
                    from,
                    to,
                    hard: key == "hard_copy",
                })?),
                "condition" => {
                    conditions.push(Self::condition(prop)?);
                    None
                }
                _ => continue,
            };
            if let Some(r) = rule {
                rules.push(r);
            }
            p.all(&prop.key);
        }
        Ok(Modify { rules, conditions })
    }

    fn condition(prop: &Property) -> Result<Condition, ConfigError> {
        let mut parts = prop
            .value
            .trim()
            .splitn(3, char::is_whitespace)
            .filter(|s| !s.is_empty());
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let a = parts.next().map(str::to_string);
        let rest = parts.next().map(|s| s.trim().to_string());
        let need = |x: Option<String>| {
            x.ok_or_else(|| {
                ConfigError::key(prop, format!("condition '{kind}' needs more arguments"))
            })
        };
        Ok(match kind.as_str() {
            "key_exists" => Condition::KeyExists(b(&need(a)?)),
            "key_does_not_exist" => Condition::KeyDoesNotExist(b(&need(a)?)),
            "key_value_equals" => Condition::KeyValueEquals(b(&need(a)?), need(rest)?),
            "key_value_does_not_equal" => {
                Condition::KeyValueDoesNotEqual(b(&need(a)?), need(rest)?)
            }
            "key_value_matches" => {
                Condition::KeyValueMatches(b(&need(a)?), regex(prop, &need(rest)?)?)
            }
            "key_value_does_not_match" => {
                Condition::KeyValueDoesNotMatch(b(&need(a)?), regex(prop, &need(rest)?)?)
            }
            "a_key_matches" => Condition::AKeyMatches(regex(prop, &need(a)?)?),
            "no_key_matches" => Condition::NoKeyMatches(regex(prop, &need(a)?)?),
            other => {
                return Err(ConfigError::key(
                    prop,
                    format!("unsupported condition '{other}'"),
                ))
            }
        })
    }

    fn holds(c: &Condition, r: &Map) -> bool {
        let text = |k: &Bytes| r.get(k).and_then(|v| v.to_text()).map(|t| t.into_owned());
        let any_key = |p: &Pattern| {
            r.0.iter()
                .any(|(k, _)| p.is_match(&String::from_utf8_lossy(k)))
        };
        match c {
            Condition::KeyExists(k) => r.contains(k),
            Condition::KeyDoesNotExist(k) => !r.contains(k),
            Condition::KeyValueEquals(k, v) => text(k).as_deref() == Some(v.as_str()),
            Condition::KeyValueDoesNotEqual(k, v) => {
                r.contains(k) && text(k).as_deref() != Some(v.as_str())
            }
            Condition::KeyValueMatches(k, p) => text(k).is_some_and(|t| p.is_match(&t)),
            Condition::KeyValueDoesNotMatch(k, p) => text(k).is_some_and(|t| !p.is_match(&t)),
            Condition::AKeyMatches(p) => any_key(p),
            Condition::NoKeyMatches(p) => !any_key(p),
        }
    }

    pub fn apply(&self, r: &mut Map) {
        if !self.conditions.iter().all(|c| Self::holds(c, r)) {
            return;
        }
        for rule in &self.rules {
            apply_rule(rule, r);
        }
    }
}

fn count(r: &Map, key: &[u8]) -> usize {
    r.0.iter().filter(|(k, _)| k.as_ref() == key).count()
}

fn apply_rule(rule: &Rule, r: &mut Map) {
    match rule {
        Rule::Set(k, v) => {
            r.0.retain(|(key, _)| key != k);
            r.push(k.clone(), Value::Str(v.clone()));
        }
        Rule::Add(k, v) => {
            if !r.contains(k) {
                r.push(k.clone(), Value::Str(v.clone()));
            }
        }
        Rule::Remove(k) => r.0.retain(|(key, _)| key != k),
        Rule::RemoveWildcard(prefix) => {
            let p = prefix.strip_suffix(b"*").unwrap_or(prefix);
            r.0.retain(|(k, _)| !k.starts_with(p));
        }
        Rule::RemoveRegex(p) => {
            r.0.retain(|(k, _)| !p.is_match(&String::from_utf8_lossy(k)))
        }
        Rule::Rename { from, to, hard } => {
            let conflicts = count(r, to);
            if count(r, from) == 0 || (!hard && conflicts > 0) {
                return;
            }
            r.0.retain(|(k, _)| k != to);
            for (k, _) in r.0.iter_mut() {
                if k == from {
                    *k = to.clone();
                }
            }
        }
        Rule::Copy { from, to, hard } => {
            let conflicts = count(r, to);
            if count(r, from) != 1 || (!hard && conflicts > 0) || conflicts > 1 {
                return;
            }
            r.0.retain(|(k, _)| k != to);
            let i = r.0.iter().position(|(k, _)| k == from).expect("counted");
            let v = r.0[i].1.clone();
            r.0.insert(i + 1, (to.clone(), v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_in_order() {
        let doc = crate::config::classic::parse_str(
            "m.conf",
            "[FILTER]\n    Name modify\n    Condition Key_exists log\n    Rename log message\n    Add env prod\n    Set env dev\n    Copy message msg2\n    Remove stream\n",
        )
        .unwrap();
        let props = Props::new(&doc.sections[0]);
        props.prop("name");
        let m = Modify::from_props(&props).unwrap();
        props.finish("modify").unwrap();
        let mut r = Map::default();
        r.push(b("log"), Value::str("x"));
        r.push(b("stream"), Value::str("stdout"));
        m.apply(&mut r);
        let keys: Vec<_> =
            r.0.iter()
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
        assert_eq!(keys, vec!["message", "msg2", "env"]);
        assert_eq!(r.get(b"env"), Some(&Value::str("dev")));
    }
}
