//! Where the loader gets environment variables from, and `${VAR}` expansion.
//!
//! Owns [`LoadOptions`] (the environment lookup and whether secrets must be
//! present) and the expansion of `${VAR}` inside string values. Invariant:
//! expansion reports problems by variable name only; it never returns text
//! that quotes the value of a variable.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Looks up an environment variable by name; `None` when it is not set.
pub type EnvLookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// How a configuration is loaded: where `${VAR}` values come from, and whether
/// account secrets must really be available.
#[derive(Clone)]
pub struct LoadOptions {
    /// Looks up an environment variable by name; `None` when it is not set.
    pub env: Arc<EnvLookup>,
    /// When false (for `demo`, whose simulator accepts any secret), a missing
    /// variable or unreadable file in an account's `secret`/`secret_file` is not
    /// an error: that account gets a generated placeholder secret.
    pub require_secrets: bool,
    /// True when a running server reloads: a missing variable's problem then
    /// says that the environment was read at start.
    pub reloading: bool,
}

impl LoadOptions {
    /// Reads variables from the process environment and requires every secret.
    pub fn from_process_env() -> Self {
        LoadOptions {
            env: Arc::new(|name| std::env::var(name).ok()),
            require_secrets: true,
            reloading: false,
        }
    }

    /// Reads variables from `vars` only (for tests) and requires every secret.
    pub fn from_map(vars: HashMap<String, String>) -> Self {
        LoadOptions {
            env: Arc::new(move |name| vars.get(name).cloned()),
            require_secrets: true,
            reloading: false,
        }
    }

    /// Reads variables from the given `(name, value)` pairs only (for tests).
    pub fn from_pairs<'a>(vars: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self::from_map(
            vars.into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The same options, but account secrets may be missing (placeholders are made up).
    pub fn secrets_optional(mut self) -> Self {
        self.require_secrets = false;
        self
    }

    /// The same options, for a reload of a running server.
    pub fn for_reload(mut self) -> Self {
        self.reloading = true;
        self
    }

    pub(crate) fn var(&self, name: &str) -> Option<String> {
        (self.env)(name)
    }
}

impl Default for LoadOptions {
    /// Same as [`LoadOptions::from_process_env`].
    fn default() -> Self {
        Self::from_process_env()
    }
}

impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("env", &"<lookup>")
            .field("require_secrets", &self.require_secrets)
            .field("reloading", &self.reloading)
            .finish()
    }
}

/// A string value after `${VAR}` expansion.
#[derive(Debug, Default)]
pub(crate) struct Expanded {
    /// The value with every variable that is set substituted.
    pub value: String,
    /// Variables referenced (in order, duplicates kept out).
    pub used: Vec<String>,
    /// Referenced variables that are not set.
    pub missing: Vec<String>,
    /// A `${` that does not form a valid reference, if any.
    pub malformed: Option<Malformed>,
}

/// Why a `${` in a value is not a variable reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// `${` without a closing `}`.
    Unterminated,
    /// `${...}` whose content is not a variable name.
    BadName(String),
}

impl Malformed {
    /// Describes the problem; `show` decides whether the offending text may be quoted.
    pub(crate) fn describe(&self, show: bool) -> String {
        let hint = "write `$${` for a literal `${`";
        match self {
            Malformed::Unterminated => format!("has `${{` without a closing `}}` ({hint})"),
            Malformed::BadName(name) if show => format!(
                "has `${{{name}}}`, which is not a variable name (letters, digits and `_`, not starting with a digit; {hint})"
            ),
            Malformed::BadName(_) => {
                format!("has a `${{...}}` that is not a variable name ({hint})")
            }
        }
    }
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every `${NAME}` in `text` with the variable's value. `$${` stands
/// for a literal `${`; any other `$` is kept as it is.
pub(crate) fn expand(text: &str, opts: &LoadOptions) -> Expanded {
    let mut out = Expanded::default();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.value.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.value.push_str("${");
            rest = literal;
        } else if let Some(reference) = after.strip_prefix('{') {
            let Some(end) = reference.find('}') else {
                out.malformed.get_or_insert(Malformed::Unterminated);
                out.value.push_str(&rest[pos..]);
                return out;
            };
            let name = &reference[..end];
            if !is_var_name(name) {
                out.malformed
                    .get_or_insert_with(|| Malformed::BadName(name.to_string()));
            } else {
                if !out.used.iter().any(|u| u == name) {
                    out.used.push(name.to_string());
                }
                match opts.var(name) {
                    Some(v) => out.value.push_str(&v),
                    None => {
                        if !out.missing.iter().any(|m| m == name) {
                            out.missing.push(name.to_string());
                        }
                    }
                }
            }
            rest = &reference[end + 1..];
        } else {
            out.value.push('$');
            rest = after;
        }
    }
    out.value.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LoadOptions {
        LoadOptions::from_pairs([("A", "alpha"), ("B_2", "beta"), ("EMPTY", "")])
    }

    #[test]
    fn expands_set_variables_anywhere_in_the_value() {
        let e = expand("x-${A}-${B_2}${A}", &opts());
        assert_eq!(e.value, "x-alpha-betaalpha");
        assert_eq!(e.used, ["A", "B_2"]);
        assert!(e.missing.is_empty() && e.malformed.is_none());
    }

    #[test]
    fn reports_missing_variables_once_each() {
        let e = expand("${NOPE}:${A}:${NOPE}:${ALSO_NOPE}", &opts());
        assert_eq!(e.missing, ["NOPE", "ALSO_NOPE"]);
        assert_eq!(e.value, ":alpha::");
    }

    #[test]
    fn keeps_lone_dollars_and_unescapes_double_dollar_brace() {
        let e = expand("a$b $$ $${A} $", &opts());
        assert_eq!(e.value, "a$b $$ ${A} $");
        assert!(e.used.is_empty());
    }

    #[test]
    fn flags_malformed_references() {
        assert_eq!(
            expand("${A", &opts()).malformed,
            Some(Malformed::Unterminated)
        );
        assert_eq!(
            expand("${A:-x}", &opts()).malformed,
            Some(Malformed::BadName("A:-x".into()))
        );
        assert_eq!(
            expand("${}", &opts()).malformed,
            Some(Malformed::BadName(String::new()))
        );
        assert_eq!(
            expand("${1A}", &opts()).malformed,
            Some(Malformed::BadName("1A".into()))
        );
    }
}
