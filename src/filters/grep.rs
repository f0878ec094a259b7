//! `grep`: keep or drop records by regular expressions on a key (`Regex`, `Exclude`,
//! `Logical_Op legacy|AND|OR`), with Fluent Bit's Onigmo syntax (lookarounds included).

use super::{key_and_rest, KeyPath};
use crate::config::{ConfigError, Props};
use crate::pattern::Pattern;
use crate::record::Map;

#[derive(Debug, Clone, Copy, PartialEq)]
enum LogicalOp {
    Legacy,
    And,
    Or,
}

#[derive(Debug)]
struct Rule {
    exclude: bool,
    key: KeyPath,
    pattern: Pattern,
}

#[derive(Debug)]
pub struct Grep {
    rules: Vec<Rule>,
    op: LogicalOp,
}

impl Grep {
    pub fn from_props(p: &Props) -> Result<Self, ConfigError> {
        let mut rules = Vec::new();
        for prop in p.section.props.iter() {
            let exclude = if prop.key.eq_ignore_ascii_case("regex") {
                false
            } else if prop.key.eq_ignore_ascii_case("exclude") {
                true
            } else {
                continue;
            };
            let (key, re) = key_and_rest(&prop.value)
                .ok_or_else(|| ConfigError::key(prop, "expected 'KEY REGEX'"))?;
            rules.push(Rule {
                exclude,
                key: KeyPath::parse(key).map_err(|e| ConfigError::key(prop, e))?,
                pattern: Pattern::new(re).map_err(|e| ConfigError::key(prop, e))?,
            });
        }
        p.all("regex");
        p.all("exclude");
        let op = match p.prop("logical_op") {
            None => LogicalOp::Legacy,
            Some(o) => match o.value.to_ascii_lowercase().as_str() {
                "legacy" => LogicalOp::Legacy,
                "and" => LogicalOp::And,
                "or" => LogicalOp::Or,
                _ => return Err(ConfigError::key(o, "expected legacy, AND or OR")),
            },
        };
        if op != LogicalOp::Legacy
            && rules.iter().any(|r| r.exclude)
            && rules.iter().any(|r| !r.exclude)
        {
            return Err(ConfigError::at(
                &p.section.origin,
                "Regex and Exclude cannot be mixed with Logical_Op AND/OR",
            ));
        }
        if rules.is_empty() {
            return Err(ConfigError::at(
                &p.section.origin,
                "grep needs at least one Regex or Exclude rule",
            ));
        }
        Ok(Grep { rules, op })
    }

    fn rule_matches(rule: &Rule, record: &Map) -> bool {
        match rule.key.lookup(record).and_then(|v| v.to_text()) {
            Some(text) => rule.pattern.is_match(&text),
            None => false,
        }
    }

    pub fn keep(&self, record: &Map) -> bool {
        match self.op {
            LogicalOp::Legacy => self
                .rules
                .iter()
                .all(|r| Self::rule_matches(r, record) != r.exclude),
            LogicalOp::And | LogicalOp::Or => {
                let exclude = self.rules[0].exclude;
                let hit = if self.op == LogicalOp::And {
                    self.rules.iter().all(|r| Self::rule_matches(r, record))
                } else {
                    self.rules.iter().any(|r| Self::rule_matches(r, record))
                };
                hit != exclude
            }
        }
    }
}
