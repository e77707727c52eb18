//! Loading a configuration: file to YAML tree to serde structs to validated [`Config`].
//!
//! Owns the entry points [`load`] and [`load_str`], reading the file, and the
//! [`Walk`] over the `raw` structs with typed getters which report problems at
//! the line of the offending key or value (from the `yaml` index) and carry
//! on. Which keys exist is `raw.rs`; defaults and rules are `schema.rs`.
//! Invariant: a load either returns a `Config` for which every rule holds, or
//! every error it found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::env::{LoadOptions, expand};
use super::files::{OpenError, ReadError, read_regular};
use super::problems::{Problem, Problems, Report};
use super::raw::{self, RawConfig, Shaped, Slot};
use super::values::{closest, quote};
use super::yaml::{self, At, Index};
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
    let (tree, index) = match yaml::parse(text) {
        Ok(Some(doc)) => (Some(doc.root), doc.index),
        Ok(None) => (None, Index::default()),
        Err(e) => return Err(Problems(vec![Problem::new(source, e.line, e.message)])),
    };
    // Cannot fail: every field is a lenient `Slot` (see `raw`). Should it,
    // serde's message is not shown: it could quote a secret. The tree is read
    // in place and dropped at the end: freeing it value by value while the
    // `Config` is built would leave the allocator a long free list to sort.
    let root = match &tree {
        Some(tree) => Some(Slot::<RawConfig>::deserialize(tree).map_err(|_| {
            Problems::single(
                source,
                "the configuration could not be read (an internal error; please report this)",
            )
        })?),
        None => None,
    };
    let mut walk = Walk::new(source, opts, digest, index);
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

/// The keys of one mapping (a `raw` struct), after unknown and repeated keys
/// were reported; derefs to the struct.
pub(crate) struct Fields<'r, R> {
    raw: &'r R,
    /// The line the mapping starts on (its first key).
    pub line: usize,
}

impl<R> std::ops::Deref for Fields<'_, R> {
    type Target = R;

    fn deref(&self) -> &R {
        self.raw
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

    /// The value and its line, when it was given and valid.
    pub(crate) fn value(self) -> Option<(T, usize)> {
        match self {
            Got::Value(v, line) => Some((v, line)),
            _ => None,
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

/// How messages name what a slot holds when it is not the expected shape.
pub(crate) fn found<T>(slot: &Slot<T>) -> &'static str {
    match slot {
        Slot::Null(_) => "empty",
        Slot::Wrong(_, shape) => shape,
        Slot::Absent | Slot::Given(..) => "a value",
    }
}

/// One pass over a configuration's `raw` structs.
pub(crate) struct Walk<'o> {
    pub opts: &'o LoadOptions,
    /// The directory relative `secret_file` paths are resolved against.
    pub base_dir: PathBuf,
    /// The digest of the text being walked, for the `Config` it makes.
    pub digest: Digest,
    pub report: Report,
    /// Where every value is.
    index: Index,
}

impl<'o> Walk<'o> {
    fn new(source: &Path, opts: &'o LoadOptions, digest: Digest, index: Index) -> Self {
        let base_dir = match source.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Walk {
            opts,
            base_dir,
            digest,
            report: Report::new(source),
            index,
        }
    }

    /// The line of the value at `at`.
    pub(crate) fn line(&self, at: At) -> usize {
        self.index.get(at).line
    }

    /// The line of a value, when it is there.
    pub(crate) fn line_of<T>(&self, slot: &Slot<T>) -> Option<usize> {
        slot.at().map(|at| self.line(at))
    }

    /// The line of a value's key, when it is there.
    pub(crate) fn key_line<T>(&self, slot: &Slot<T>) -> Option<usize> {
        slot.at().and_then(|at| self.index.get(at).key_line)
    }

    /// Checks that `slot` is a mapping with only the keys of `R`, each at most
    /// once. `what` names the mapping in messages ("upstream", "accounts[2]",
    /// or empty for the top level). Reports and returns `None` when it is not
    /// a mapping; returns `None` quietly when it is absent.
    pub(crate) fn fields<'r, R>(&mut self, slot: &'r Slot<R>, what: &str) -> Option<Fields<'r, R>>
    where
        R: serde::de::DeserializeOwned + Shaped,
    {
        let known = raw::keys_of::<R>();
        let (at, raw) = match slot {
            Slot::Given(at, raw) => (*at, raw),
            Slot::Absent => return None,
            Slot::Null(at) | Slot::Wrong(at, _) => {
                let name = if what.is_empty() {
                    "the top level"
                } else {
                    what
                };
                self.report.error(
                    self.line(*at),
                    format!(
                        "{name} must be a mapping of keys ({}), not {}",
                        known.join(", "),
                        found(slot)
                    ),
                );
                return None;
            }
        };
        let place = if what.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {what}")
        };
        let mut first_lines: HashMap<&str, usize> = HashMap::new();
        let position = self.index.get(at);
        let mut problems = Vec::new();
        for (key, key_line) in &position.keys {
            let key = key.as_str();
            if let Some(first) = first_lines.get(key) {
                problems.push((
                    *key_line,
                    format!(
                        "key {} appears twice {place} (first at line {first}); keep one",
                        quote(key)
                    ),
                ));
                continue;
            }
            first_lines.insert(key, *key_line);
            if !known.contains(&key) {
                problems.push((
                    *key_line,
                    format!(
                        "unknown key {} {place} ({})",
                        quote(key),
                        unknown_hint(key, known)
                    ),
                ));
            }
        }
        let line = position.line;
        for (key_line, message) in problems {
            self.report.error(key_line, message);
        }
        Some(Fields { raw, line })
    }

    /// Expands a scalar value. `show` allows quoting the raw text in messages;
    /// `missing_is_error` reports unset variables (otherwise the caller decides).
    pub(crate) fn expand_text(
        &mut self,
        slot: &Slot<String>,
        path: &str,
        show: bool,
        missing_is_error: bool,
    ) -> Text {
        let (raw, line) = match slot {
            Slot::Given(at, text) => (text, self.line(*at)),
            Slot::Absent => return Text::Bad,
            Slot::Null(at) => {
                self.report
                    .error(self.line(*at), format!("{path} has no value"));
                return Text::Bad;
            }
            Slot::Wrong(at, shape) => {
                self.report.error(
                    self.line(*at),
                    format!("{path} must be a single value, not {shape}"),
                );
                return Text::Bad;
            }
        };
        let expanded = expand(raw, self.opts);
        let mut bad = false;
        if let Some(m) = &expanded.malformed {
            self.report
                .error(line, format!("{path} {}", m.describe(show)));
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
                    line,
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
    pub(crate) fn text(&mut self, slot: &Slot<String>, path: &str) -> Option<String> {
        match self.expand_text(slot, path, true, true) {
            Text::Value(v, _) => Some(v),
            Text::MissingVars | Text::Bad => None,
        }
    }

    /// The value parsed by `parse`, whose error message gets `path` in front.
    pub(crate) fn parsed<T>(
        &mut self,
        slot: &Slot<String>,
        path: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(slot, path)?;
        match parse(&text) {
            Ok(v) => Some(v),
            Err(message) => {
                self.report
                    .error(self.line_of(slot), format!("{path}: {message}"));
                None
            }
        }
    }

    /// An optional setting at `path`, parsed by `parse`.
    pub(crate) fn setting<T>(
        &mut self,
        slot: &Slot<String>,
        path: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Got<T> {
        let Some(line) = self.line_of(slot) else {
            return Got::Absent;
        };
        match self.parsed(slot, path, parse) {
            Some(v) => Got::Value(v, line),
            None => Got::Bad,
        }
    }
}

/// Why an unknown key may have been written: a near miss of a `known` key,
/// a key of another mapping, or else the list of known keys.
fn unknown_hint(key: &str, known: &[&str]) -> String {
    if let Some(k) = closest(key, known) {
        return format!("did you mean {}?", quote(k));
    }
    let homes: Vec<&str> = raw::homes()
        .into_iter()
        .filter(|(keys, _)| keys.contains(&key))
        .map(|(_, home)| home)
        .collect();
    if homes.is_empty() {
        format!("known keys: {}", known.join(", "))
    } else {
        format!("it belongs {}", homes.join(" or "))
    }
}
