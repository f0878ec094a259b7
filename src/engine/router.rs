//! Tag routing: `Match` (only `*` is special, and it crosses dots) and `Match_Regex` (anchored at
//! the start only), ORed as Fluent Bit's `flb_router_match` does.

use crate::config::{ConfigError, Props};
use crate::pattern::Pattern;

#[derive(Debug, Clone)]
pub struct TagMatcher {
    glob: Option<String>,
    regex: Option<Pattern>,
}

impl TagMatcher {
    /// Reads `Match`/`Match_Regex`; a plugin with neither matches nothing, except when the config
    /// has a single input and a single output (Fluent Bit then connects them).
    pub fn from_props(p: &Props) -> Result<Option<Self>, ConfigError> {
        let glob = p.str("match").map(str::to_string);
        let regex = match p.prop("match_regex") {
            Some(r) => Some(Pattern::new(&r.value).map_err(|e| ConfigError::key(r, e))?),
            None => None,
        };
        Ok((glob.is_some() || regex.is_some()).then_some(TagMatcher { glob, regex }))
    }

    pub fn from_parts(glob: Option<String>, regex: Option<Pattern>) -> Self {
        TagMatcher { glob, regex }
    }

    pub fn everything() -> Self {
        TagMatcher {
            glob: Some("*".into()),
            regex: None,
        }
    }

    pub fn matches(&self, tag: &str) -> bool {
        if let Some(r) = &self.regex {
            if r.is_match_at_start(tag) {
                return true;
            }
        }
        self.glob
            .as_deref()
            .is_some_and(|g| glob_match(g.as_bytes(), tag.as_bytes()))
    }
}

/// `*` matches any run of bytes (dots included); everything else is literal.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_crosses_dots() {
        assert!(glob_match(b"*", b"a.b.c"));
        assert!(glob_match(b"kube.*", b"kube.var.log.x"));
        assert!(glob_match(b"*-firelens*", b"app-firelens-123"));
        assert!(!glob_match(b"kube.*", b"kubex"));
        assert!(glob_match(b"a**b", b"a.x.b"));
        assert!(!glob_match(b"abc", b"abcd"));
    }
}
