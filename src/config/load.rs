//! Loading a configuration: file to YAML tree to validated [`Config`].
//!
//! Owns the entry points [`load`] and [`load_str`], reading the file, and the
//! [`Walk`] that visits the tree with typed getters which report problems at the
//! line of the offending key or value and carry on. The schema itself (which
//! keys exist, defaults, rules) is in `schema.rs`. Invariant: a load either
//! returns a `Config` for which every rule holds, or every error it found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::env::{LoadOptions, expand};
use super::files::{OpenError, ReadError, read_regular};
use super::problems::{Problem, Problems, Report};
use super::values::{closest, quote};
use super::yaml::{self, Entry, Kind, Node};
use super::{Config, Digest};

/// The largest configuration file accepted: room for 300,000 accounts.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// A successfully loaded configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Things that are allowed but probably not intended, in file order.
    pub warnings: Vec<Problem>,
}

/// Reads and validates the configuration file at `path`.
///
/// Errors with every problem found (never just the first): an unreadable file,
/// invalid YAML, unknown keys, wrong types, values that break a rule of
/// contract §2, missing environment variables and unreadable secret files.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded, Problems> {
    let text = read(path)?;
    load_str(&text, path, opts)
}

/// Validates configuration `text` as if it had been read from `source`, which
/// names the file in problems and anchors relative `secret_file` paths.
///
/// Errors like [`load`], except that it never reads `source` itself.
pub fn load_str(text: &str, source: &Path, opts: &LoadOptions) -> Result<Loaded, Problems> {
    let digest = Digest::of(text);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(e) => return Err(Problems(vec![Problem::new(source, e.line, e.message)])),
    };
    let mut walk = Walk::new(source, opts, digest);
    let config = walk.config(root.as_ref());
    let (errors, warnings) = walk.report.finish();
    match config {
        Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
        _ if errors.is_empty() => Err(Problems::single(
            source,
            "the configuration is invalid (no details found; please report this)",
        )),
        _ => Err(Problems(errors)),
    }
}

/// Reads the configuration file at `path` as UTF-8 text, without parsing it
/// (what [`load`] does first; [`load_str`] does the rest).
///
/// Errors, as one problem, when the file cannot be opened, is not a regular
/// file (a FIFO or a device is refused at once, never waited on), is larger
/// than 64 MiB or is not UTF-8.
pub fn read(path: &Path) -> Result<String, Problems> {
    let fail = |message: String| Problems::single(path, message);
    let bytes = match read_regular(path, MAX_FILE_BYTES) {
        Ok((bytes, _)) => bytes,
        Err(ReadError::Open(OpenError::Io(e)) | ReadError::Io(e)) => {
            return Err(fail(describe_io(&e)));
        }
        Err(ReadError::Open(OpenError::Directory)) => {
            return Err(fail(IS_A_DIRECTORY.to_string()));
        }
        Err(ReadError::Open(OpenError::NotRegular(what))) => {
            return Err(fail(format!(
                "the config file is not a regular file ({what}); give the path of the YAML file"
            )));
        }
        Err(ReadError::TooLarge) => {
            return Err(fail(format!(
                "the config file is larger than {} MiB; is this the right file?",
                MAX_FILE_BYTES / 1024 / 1024
            )));
        }
    };
    String::from_utf8(bytes).map_err(|e| {
        fail(format!(
            "the config file is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// The problem of a config path that names a directory.
const IS_A_DIRECTORY: &str = "this is a directory, not a config file";

/// A lowercase sentence for an error opening or reading the config file.
fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => {
            "config file not found (give its path with --config PATH or WXTOKEN_CONFIG)".to_string()
        }
        ErrorKind::PermissionDenied => "permission denied reading the config file".to_string(),
        ErrorKind::IsADirectory => IS_A_DIRECTORY.to_string(),
        _ => format!(
            "cannot read the config file: {}",
            lowercase_first(&e.to_string())
        ),
    }
}

/// `"No such file"` to `"no such file"`, for OS messages inside our sentences.
pub(crate) fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Where a key may be written instead, for "unknown key" hints.
const HOMES: &[(&str, &str)] = &[
    ("base_urls", "under `upstream:`"),
    ("timeout", "under `upstream:`"),
    ("max_concurrency", "under `upstream:`"),
    ("path", "under `store:`"),
    ("redis", "under `store:`"),
    ("redis_prefix", "under `store:`"),
    ("legacy_at", "under `refresh:`"),
    ("jitter", "under `refresh:`"),
    ("stable_window", "under `refresh:`"),
    ("backoff_initial", "under `refresh:`"),
    ("backoff_max", "under `refresh:`"),
    ("appid", "in an entry of `accounts:`"),
    ("secret", "in an entry of `accounts:`"),
    ("secret_file", "in an entry of `accounts:`"),
    ("mode", "in an entry of `accounts:`"),
    ("enabled", "in an entry of `accounts:`"),
    ("key", "in an entry of `clients:`"),
    ("appids", "in an entry of `clients:`"),
    ("admin", "in an entry of `clients:`"),
];

/// The keys of one mapping, after unknown and repeated keys were reported.
pub(crate) struct Fields<'n> {
    /// The line the mapping starts on (its first key).
    pub line: usize,
    entries: &'n [Entry],
}

impl<'n> Fields<'n> {
    /// The value of `key` (its first occurrence), if the key is present.
    pub(crate) fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// The line of `key`, if present.
    pub(crate) fn key_line(&self, key: &str) -> Option<usize> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.key_line)
    }
}

/// The result of reading one optional setting.
pub(crate) enum Got<T> {
    /// The key is not there: the default applies.
    Absent,
    /// The key is there but its value is wrong (already reported).
    Bad,
    /// The value, and the line it is on.
    Value(T, usize),
}

impl<T> Got<T> {
    /// The value, or `default` when absent; `None` when the value was bad.
    pub(crate) fn or(self, default: T) -> Option<T> {
        match self {
            Got::Absent => Some(default),
            Got::Bad => None,
            Got::Value(v, _) => Some(v),
        }
    }

    /// The line of the value, when it was given and valid.
    pub(crate) fn line(&self) -> Option<usize> {
        match self {
            Got::Value(_, line) => Some(*line),
            _ => None,
        }
    }
}

/// A string value after `${VAR}` expansion.
pub(crate) enum Text {
    /// Fully expanded, with the names of the variables used.
    Value(String, Vec<String>),
    /// Some variables are not set (reported only if the caller asked).
    MissingVars,
    /// Not a usable string (already reported).
    Bad,
}

/// One pass over a configuration tree.
pub(crate) struct Walk<'o> {
    pub opts: &'o LoadOptions,
    /// The directory relative `secret_file` paths are resolved against.
    pub base_dir: PathBuf,
    /// The digest of the text being walked, for the `Config` it makes.
    pub digest: Digest,
    pub report: Report,
}

impl<'o> Walk<'o> {
    fn new(source: &Path, opts: &'o LoadOptions, digest: Digest) -> Self {
        let base_dir = match source.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Walk {
            opts,
            base_dir,
            digest,
            report: Report::new(source),
        }
    }

    /// Checks that `node` is a mapping with only `known` keys, each at most once.
    /// `what` names the mapping in messages ("upstream", "accounts[2]", or
    /// empty for the top level). Reports and returns `None` when it is not a mapping.
    pub(crate) fn fields<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        let Kind::Map(entries) = &node.kind else {
            let name = if what.is_empty() {
                "the top level"
            } else {
                what
            };
            self.report.error(
                node.line,
                format!(
                    "{name} must be a mapping of keys ({}), not {}",
                    known.join(", "),
                    node.type_name()
                ),
            );
            return None;
        };
        let place = if what.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {what}")
        };
        let mut first_lines: HashMap<&str, usize> = HashMap::new();
        for entry in entries {
            let key = entry.key.as_str();
            if let Some(first) = first_lines.get(key) {
                self.report.error(
                    entry.key_line,
                    format!(
                        "key {} appears twice {place} (first at line {first}); keep one",
                        quote(key)
                    ),
                );
                continue;
            }
            first_lines.insert(key, entry.key_line);
            if !known.contains(&key) {
                let hint = if let Some(k) = closest(key, known) {
                    format!("did you mean {}?", quote(k))
                } else if let Some((_, home)) = HOMES.iter().find(|(k, _)| *k == key) {
                    format!("it belongs {home}")
                } else {
                    format!("known keys: {}", known.join(", "))
                };
                self.report.error(
                    entry.key_line,
                    format!("unknown key {} {place} ({hint})", quote(key)),
                );
            }
        }
        Some(Fields {
            line: node.line,
            entries,
        })
    }

    /// Expands a scalar value. `show` allows quoting the raw text in messages;
    /// `missing_is_error` reports unset variables (otherwise the caller decides).
    pub(crate) fn expand_text(
        &mut self,
        node: &Node,
        path: &str,
        show: bool,
        missing_is_error: bool,
    ) -> Text {
        let raw = match &node.kind {
            Kind::Scalar { text, .. } => text,
            Kind::Null => {
                self.report.error(node.line, format!("{path} has no value"));
                return Text::Bad;
            }
            Kind::Seq(_) | Kind::Map(_) => {
                self.report.error(
                    node.line,
                    format!("{path} must be a single value, not {}", node.type_name()),
                );
                return Text::Bad;
            }
        };
        let expanded = expand(raw, self.opts);
        let mut bad = false;
        if let Some(m) = &expanded.malformed {
            self.report
                .error(node.line, format!("{path} {}", m.describe(show)));
            bad = true;
        }
        if !expanded.missing.is_empty() && missing_is_error {
            // A running server cannot see variables exported after it started.
            let hint = if self.opts.reloading {
                "; the environment is read at start: use secret_file for accounts added by reload, or restart"
            } else {
                ""
            };
            for var in &expanded.missing {
                self.report.error(
                    node.line,
                    format!("{path}: environment variable {var} is not set{hint}"),
                );
            }
            bad = true;
        }
        if bad {
            Text::Bad
        } else if !expanded.missing.is_empty() {
            Text::MissingVars
        } else {
            Text::Value(expanded.value, expanded.used)
        }
    }

    /// The expanded text of a scalar value; `None` after reporting why not.
    pub(crate) fn text(&mut self, node: &Node, path: &str) -> Option<String> {
        match self.expand_text(node, path, true, true) {
            Text::Value(v, _) => Some(v),
            Text::MissingVars | Text::Bad => None,
        }
    }

    /// The value parsed by `parse`, whose error message gets `path` in front.
    pub(crate) fn parsed<T>(
        &mut self,
        node: &Node,
        path: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(node, path)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(message) => {
                self.report.error(node.line, format!("{path}: {message}"));
                None
            }
        }
    }

    /// An optional setting `key` of `fields` (a mapping named `prefix`), parsed by `parse`.
    pub(crate) fn setting<T>(
        &mut self,
        fields: &Fields<'_>,
        prefix: &str,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Got<T> {
        let Some(node) = fields.get(key) else {
            return Got::Absent;
        };
        match self.parsed(node, &path_of(prefix, key), parse) {
            Some(v) => Got::Value(v, node.line),
            None => Got::Bad,
        }
    }
}

/// `upstream` + `timeout` to `upstream.timeout`; an empty prefix is the top level.
pub(crate) fn path_of(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}
