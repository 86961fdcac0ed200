//! The typed environment reader: every variable read once, every problem recorded in one
//! [`ConfigError`] instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use url::Url;

/// Every problem found in the environment, by variable name.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub problems: BTreeMap<&'static str, String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem(s)):",
            self.problems.len()
        )?;
        for (name, problem) in &self.problems {
            writeln!(f, "  {name}: {problem}")?;
        }
        Ok(())
    }
}

/// Reads variables from a source and records every problem instead of stopping at the first.
pub(super) struct Reader<F: Fn(&str) -> Option<String>> {
    pub(super) get: F,
    pub(super) problems: BTreeMap<&'static str, String>,
}

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    pub(super) fn raw(&self, name: &str) -> Option<String> {
        (self.get)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn problem(&mut self, name: &'static str, message: impl Into<String>) {
        self.problems.insert(name, message.into());
    }

    pub(super) fn string(&mut self, name: &'static str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    pub(super) fn required(&mut self, name: &'static str) -> Option<String> {
        let value = self.raw(name);
        if value.is_none() {
            self.problem(name, "is required but not set");
        }
        value
    }

    pub(super) fn parse<T: FromStr>(
        &mut self,
        name: &'static str,
        default: T,
        expected: &str,
    ) -> T {
        match self.raw(name) {
            None => default,
            Some(raw) => raw.parse().unwrap_or_else(|_| {
                self.problem(name, format!("expected {expected}, got {raw:?}"));
                default
            }),
        }
    }

    pub(super) fn bool(&mut self, name: &'static str, default: bool) -> bool {
        match self.raw(name).map(|v| v.to_ascii_lowercase()) {
            None => default,
            Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => true,
            Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => false,
            Some(v) => {
                self.problem(name, format!("expected true or false, got {v:?}"));
                default
            }
        }
    }

    pub(super) fn positive(&mut self, name: &'static str, default: usize) -> usize {
        let value = self.parse(name, default, "a positive integer");
        if value == 0 {
            self.problem(name, "must be at least 1");
            return default;
        }
        value
    }

    pub(super) fn url(&mut self, name: &'static str, raw: &str, schemes: &[&str]) -> Option<Url> {
        match Url::parse(raw) {
            Ok(url) if schemes.contains(&url.scheme()) => Some(url),
            Ok(url) => {
                self.problem(
                    name,
                    format!(
                        "scheme {:?} is not one of {}",
                        url.scheme(),
                        schemes.join(", ")
                    ),
                );
                None
            }
            Err(e) => {
                self.problem(name, format!("not a valid URL: {e}"));
                None
            }
        }
    }
}
