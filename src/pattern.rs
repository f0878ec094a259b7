//! Regular expressions with Fluent Bit's (Onigmo/Ruby) syntax: named groups `(?<name>...)`,
//! lookahead/lookbehind and backreferences. `fancy-regex` hands patterns without those features
//! to the linear-time `regex` engine, so plain patterns stay fast.
//!
//! [`Pattern::new`] reads a pattern as Fluent Bit's `flb_regex_create` does and translates what
//! Ruby syntax means differently from the `regex` crate:
//! - `/pattern/` and `/pattern/imx` are accepted: the slashes are stripped and the options applied;
//! - `^` and `$` match at every line boundary (Ruby has no single-line mode), so `(?m)` is on;
//! - `\<` and `\>` are the literal characters (the `regex` crate reads them as word boundaries,
//!   which made the stock syslog parsers never match), `\h`/`\H` are (non-)hex digits, `\Z` is
//!   "end, or before a final newline", and `{,n}` is `{0,n}`.
//!
//! Not translated: `\w`, `\d` and `\s` stay Unicode-aware (Onigmo's are ASCII-only), and
//! duplicate group names (Onigmo allows them) are an error.

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
        let regex = fancy_regex::RegexBuilder::new(&translate(source))
            .backtrack_limit(1_000_000)
            .build()
            .map_err(|e| format!("invalid regular expression '{source}': {e}"))?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
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
        let groups = self.named_groups(text)?;
        Some(
            groups
                .into_iter()
                .filter_map(|(name, range)| Some((name, range?)))
                .collect(),
        )
    }

    /// Every named group of the first match, in pattern order, `None` for a group that took no
    /// part in the match (Fluent Bit's regex parser reads those as empty values).
    pub fn named_groups(
        &self,
        text: &str,
    ) -> Option<Vec<(String, Option<std::ops::Range<usize>>)>> {
        let caps = self.regex.captures(text).ok()??;
        Some(
            self.regex
                .capture_names()
                .flatten()
                .map(|name| (name.to_string(), caps.name(name).map(|m| m.range())))
                .collect(),
        )
    }

    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.regex.capture_names().flatten()
    }
}

/// Splits `/pattern/options` as `flb_regex_create` does: a pattern that starts with `/` and has a
/// later `/` followed only by the options `i`, `m`, `x` (or nothing) is the text between them.
fn strip_slashes(source: &str) -> (&str, &'static str) {
    let Some(body) = source.strip_prefix('/') else {
        return (source, "");
    };
    let Some(last) = body.rfind('/') else {
        return (source, "");
    };
    let (inner, options) = (&body[..last], &body[last + 1..]);
    if !options.bytes().all(|b| matches!(b, b'i' | b'm' | b'x')) {
        return (source, "");
    }
    // Ruby's `m` is dot-matches-newline: the `regex` crate's `s`.
    let flags = match (
        options.contains('i'),
        options.contains('m'),
        options.contains('x'),
    ) {
        (false, false, false) => "",
        (true, false, false) => "i",
        (false, true, false) => "s",
        (false, false, true) => "x",
        (true, true, false) => "is",
        (true, false, true) => "ix",
        (false, true, true) => "sx",
        (true, true, true) => "isx",
    };
    (inner, flags)
}

/// After a `{`: is this `,n}` (Onigmo's `{,n}`, "at most n")?
fn is_low_abbreviated_interval(mut rest: impl Iterator<Item = char>) -> bool {
    if rest.next() != Some(',') {
        return false;
    }
    let mut digits = 0;
    for c in rest {
        match c {
            '0'..='9' => digits += 1,
            '}' => return digits > 0,
            _ => return false,
        }
    }
    false
}

/// Onigmo (Ruby syntax) → `fancy-regex` syntax; see the module documentation.
fn translate(source: &str) -> String {
    let (body, flags) = strip_slashes(source);
    let mut out = String::with_capacity(body.len() + 16);
    out.push_str("(?m");
    out.push_str(flags);
    out.push(')');
    let mut in_class = false;
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('<' | '>')) => out.push(e),
                Some('h') if in_class => out.push_str("0-9a-fA-F"),
                Some('h') => out.push_str("[0-9a-fA-F]"),
                Some('H') if !in_class => out.push_str("[^0-9a-fA-F]"),
                Some('Z') if !in_class => out.push_str("(?=\\n?\\z)"),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => out.push('\\'),
            },
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                // A `]` or `^]` right after the opening bracket is a literal.
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().unwrap_or('^'));
                }
                if chars.peek() == Some(&']') {
                    chars.next();
                    out.push_str("\\]");
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '{' if !in_class && is_low_abbreviated_interval(chars.clone()) => out.push_str("{0"),
            c => out.push(c),
        }
    }
    out
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
    fn ruby_syntax_translated() {
        // `\<`/`\>` are literals in Ruby syntax (word boundaries in the `regex` crate).
        let p = Pattern::new(r"^\<(?<pri>[0-9]+)\>").unwrap();
        assert_eq!(
            p.named_captures("<13>Oct").unwrap(),
            vec![("pri".into(), 1..3)]
        );
        // `/pattern/options`, as flb_regex_create reads it; a `/` not closing options stays.
        assert!(Pattern::new("/^hello$/i").unwrap().is_match("HELLO"));
        assert!(Pattern::new("/^a/x/").unwrap().is_match("a/x"));
        assert!(Pattern::new("/var/log/").unwrap().is_match("var/log"));
        assert!(!Pattern::new("/^var/").unwrap().is_match("/var"));
        // `^`/`$` at line boundaries; `\h` hex digits; `{,n}`; `\Z`.
        assert!(Pattern::new("^b$").unwrap().is_match("a\nb\nc"));
        assert!(Pattern::new(r"^\h+$").unwrap().is_match("0aF9"));
        assert!(!Pattern::new(r"^\h+$").unwrap().is_match("xyz"));
        assert!(Pattern::new(r"^[\h-]+$").unwrap().is_match("ab-12"));
        assert!(Pattern::new("^a{,2}$").unwrap().is_match("aa"));
        assert!(!Pattern::new("^a{,2}$").unwrap().is_match("aaa"));
        assert!(Pattern::new(r"end\Z").unwrap().is_match("the end\n"));
        assert!(Pattern::new(r"[]a]").unwrap().is_match("]"));
    }

    #[test]
    fn start_anchor_only() {
        let p = Pattern::new("kube\\.").unwrap();
        assert!(p.is_match_at_start("kube.var.log"));
        assert!(!p.is_match_at_start("x.kube.var"));
    }
}
