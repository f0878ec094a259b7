//! `${VAR}` and `${VAR:-default}` expansion as Fluent Bit's `flb_env_var_translate` does it.
//!
//! Lookup order: variables set by the config (`@SET`, YAML `env:`) first, then the process
//! environment. An empty variable counts as unset. An unset variable without a default expands to
//! the empty string and is reported once, as Fluent Bit warns.

use std::collections::HashMap;

#[derive(Debug, Default, Clone)]
pub struct ConfigEnv {
    vars: HashMap<String, String>,
}

impl ConfigEnv {
    pub fn set(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_string(), value.to_string());
    }

    fn lookup(&self, name: &str) -> Option<String> {
        let value = match self.vars.get(name) {
            Some(v) => Some(v.clone()),
            None => std::env::var(name)
                .ok()
                .or_else(|| (name == "HOSTNAME").then(hostname).flatten()),
        };
        value.filter(|v| !v.is_empty())
    }

    /// Expands every `${...}` in `value`; returns the names that were unset without a default.
    pub fn expand(&self, value: &str) -> (String, Vec<String>) {
        let mut out = String::with_capacity(value.len());
        let mut unset = Vec::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                out.push_str(&rest[start..]);
                rest = "";
                break;
            };
            let inner = &after[..end];
            let (name, default) = match inner.find(":-") {
                Some(i) => (&inner[..i], Some(&inner[i + 2..])),
                None => (inner, None),
            };
            match (self.lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => unset.push(name.to_string()),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        (out, unset)
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_set_unset_and_defaults() {
        let mut env = ConfigEnv::default();
        env.set("A", "alpha");
        env.set("EMPTY", "");
        let (v, unset) = env.expand("x-${A}-${LOGFERRY_SURELY_UNSET}-${EMPTY:-dflt}-${A:-no}");
        assert_eq!(v, "x-alpha--dflt-alpha");
        assert_eq!(unset, vec!["LOGFERRY_SURELY_UNSET".to_string()]);
    }

    #[test]
    fn unterminated_is_literal() {
        let env = ConfigEnv::default();
        assert_eq!(env.expand("a${B").0, "a${B");
    }
}
