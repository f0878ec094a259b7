//! Regular expressions with Fluent Bit's (Onigmo/Ruby) syntax: named groups `(?<name>...)`,
//! lookahead/lookbehind and backreferences. `fancy-regex` hands patterns without those features
//! to the linear-time `regex` engine, so plain patterns stay fast.

use std::fmt;

#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: fancy_regex::Regex,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        let regex = fancy_regex::RegexBuilder::new(source)
            .backtrack_limit(1_000_000)
            .build()
            .map_err(|e| format!("invalid regular expression '{source}': {e}"))?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    /// A pattern written as `/regex/` (multiline rules); the slashes are optional.
    pub fn new_slashed(source: &str) -> Result<Self, String> {
        let s = source.trim();
        let inner = s
            .strip_prefix('/')
            .and_then(|r| r.strip_suffix('/'))
            .unwrap_or(s);
        Self::new(inner)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Unanchored search, as Fluent Bit's `flb_regex_match`. A pattern that exceeds the
    /// backtracking budget counts as no match.
    pub fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text).unwrap_or(false)
    }

    /// Match that must start at position 0 (Fluent Bit's `Match_Regex`: anchored at the start only).
    pub fn is_match_at_start(&self, text: &str) -> bool {
        matches!(self.regex.find(text), Ok(Some(m)) if m.start() == 0)
            || self
                .regex
                .captures_iter(text)
                .flatten()
                .any(|c| c.get(0).is_some_and(|m| m.start() == 0))
    }

    /// Named captures of the first match, in pattern order: (name, byte range in `text`).
    pub fn named_captures(&self, text: &str) -> Option<Vec<(String, std::ops::Range<usize>)>> {
        let caps = self.regex.captures(text).ok()??;
        Some(
            self.regex
                .capture_names()
                .flatten()
                .filter_map(|name| caps.name(name).map(|m| (name.to_string(), m.range())))
                .collect(),
        )
    }

    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.regex.capture_names().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onigmo_features() {
        let p = Pattern::new(r"^(?!.*healthcheck).*$").unwrap();
        assert!(p.is_match("GET /api"));
        assert!(!p.is_match("GET /healthcheck"));
        let p = Pattern::new(r"(?<a>\w+)-(?<b>\d+)").unwrap();
        let caps = p.named_captures("x foo-12").unwrap();
        assert_eq!(caps, vec![("a".into(), 2..5), ("b".into(), 6..8)]);
    }

    #[test]
    fn start_anchor_only() {
        let p = Pattern::new("kube\\.").unwrap();
        assert!(p.is_match_at_start("kube.var.log"));
        assert!(!p.is_match_at_start("x.kube.var"));
    }
}
