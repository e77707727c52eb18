//! Problems found in a configuration file: what they say and where they are.
//!
//! Owns [`Problem`] (one message with its `file:line`), [`Problems`] (the error
//! of a failed load: every problem, not just the first) and the collector the
//! loader fills while it walks the file. Invariant: no message built here or by
//! the loader contains a secret value; callers only pass text that is safe to print.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with (or worth knowing about) a configuration file.
///
/// `Display` prints `PATH:LINE: message`, or `PATH: message` when the problem has
/// no line (a missing file, a key that is absent altogether).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The configuration file the problem is in.
    pub file: PathBuf,
    /// The 1-based line of the offending key or value, when there is one.
    pub line: Option<usize>,
    /// A lowercase sentence with the offending value (never a secret) and often a hint.
    pub message: String,
}

impl Problem {
    /// A problem at `line` of `file` (`None` when YAML gives no position).
    pub fn new(file: impl Into<PathBuf>, line: Option<usize>, message: impl Into<String>) -> Self {
        Problem {
            file: file.into(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every error found in a configuration file, in file order.
///
/// `Display` prints one problem per line, each as `PATH:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// A single problem without a line, e.g. "config file not found".
    pub fn single(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Problems(vec![Problem::new(file, None, message)])
    }

    /// The problems, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no problem at all (a failed load never returns that).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Collects errors and warnings for one file while the loader walks it.
#[derive(Debug)]
pub(crate) struct Report {
    file: PathBuf,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Report {
    pub(crate) fn new(file: &Path) -> Self {
        Report {
            file: file.to_path_buf(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Records an error at `line`.
    pub(crate) fn error(&mut self, line: impl Into<Option<usize>>, message: impl Into<String>) {
        self.errors
            .push(Problem::new(self.file.clone(), line.into(), message));
    }

    /// Records a warning at `line`.
    pub(crate) fn warn(&mut self, line: impl Into<Option<usize>>, message: impl Into<String>) {
        self.warnings
            .push(Problem::new(self.file.clone(), line.into(), message));
    }

    /// The file this report is about.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The errors and the warnings, each sorted by line (problems without a line first).
    pub(crate) fn finish(self) -> (Vec<Problem>, Vec<Problem>) {
        (sorted(self.errors), sorted(self.warnings))
    }
}

fn sorted(mut problems: Vec<Problem>) -> Vec<Problem> {
    // A stable sort keeps problems of the same line in the order they were found.
    problems.sort_by_key(|p| p.line.unwrap_or(0));
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_displays_file_line_and_message() {
        let p = Problem::new("accounts.yaml", Some(7), "listen: bad");
        assert_eq!(p.to_string(), "accounts.yaml:7: listen: bad");
        let p = Problem::new("accounts.yaml", None, "config file not found");
        assert_eq!(p.to_string(), "accounts.yaml: config file not found");
    }

    #[test]
    fn problems_display_one_per_line_in_line_order() {
        let mut r = Report::new(Path::new("a.yaml"));
        r.error(9, "second");
        r.error(None, "file-level");
        r.error(3, "first");
        let (errors, _) = r.finish();
        assert_eq!(
            Problems(errors).to_string(),
            "a.yaml: file-level\na.yaml:3: first\na.yaml:9: second"
        );
    }
}
