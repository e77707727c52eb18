//! `wxtoken check`: load the configuration and tell the operator what is wrong.
//!
//! Owns the output of `check` (contract §1) and the one-line [`summary`] of a
//! configuration. Invariant: nothing printed here quotes a secret; problems
//! come from the loader, which never puts one in a message.

use std::path::Path;

use super::values::quote;
use super::{ComponentConfig, Config, LoadOptions, load};
use crate::domain::Mode;

/// Exit code of `check` for a valid configuration.
pub const CHECK_OK: u8 = 0;
/// Exit code of `check` when the configuration has problems or cannot be read.
pub const CHECK_INVALID: u8 = 2;

/// Runs `wxtoken check` on `path` with the process environment.
///
/// Valid: prints each warning to stderr as `PATH:LINE: warning: ...` and a
/// summary line to stdout, and returns 0. Invalid or unreadable: prints every
/// problem to stderr as `PATH:LINE: message`, one per line, and returns 2.
pub fn run_check(path: &Path) -> u8 {
    match load(path, &LoadOptions::from_process_env()) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                match w.line {
                    Some(line) => {
                        eprintln!("{}:{}: warning: {}", w.file.display(), line, w.message)
                    }
                    None => eprintln!("{}: warning: {}", w.file.display(), w.message),
                }
            }
            println!("{}: ok, {}", path.display(), summary(&loaded.config));
            CHECK_OK
        }
        Err(problems) => {
            for p in &problems {
                eprintln!("{p}");
            }
            CHECK_INVALID
        }
    }
}

/// One line describing a configuration, e.g.
/// `3 accounts (2 stable, 1 legacy, 3 enabled), 2 clients, listen 127.0.0.1:8080`,
/// or with Open Platform platforms
/// `0 accounts, 1 component (1 enabled: wx9999999999999999 "Agency platform"), 2 clients, listen 127.0.0.1:8080`.
///
/// Components are few, so each is named (appid and name, never a secret);
/// the part about them is left out when there is none.
pub fn summary(config: &Config) -> String {
    let accounts = &config.accounts;
    let stable = accounts.iter().filter(|a| a.mode == Mode::Stable).count();
    let legacy = accounts.len() - stable;
    let enabled = accounts.iter().filter(|a| a.enabled).count();
    let mut line = plural(accounts.len(), "account");
    if !accounts.is_empty() || config.components.is_empty() {
        line.push_str(&format!(
            " ({stable} stable, {legacy} legacy, {enabled} enabled)"
        ));
    }
    if !config.components.is_empty() {
        line.push_str(&format!(", {}", components(&config.components)));
    }
    format!(
        "{line}, {}, listen {}",
        plural(config.clients.len(), "client"),
        config.listen
    )
}

/// `2 components (1 enabled: wx… "Agency A"; disabled: wx… "Agency B")`.
/// Names are quoted (escaped), so the summary stays one line.
fn components(components: &[ComponentConfig]) -> String {
    let named = |list: &[&ComponentConfig]| -> String {
        list.iter()
            .map(|c| {
                if c.name == c.appid.as_str() {
                    c.appid.to_string()
                } else {
                    format!("{} {}", c.appid, quote(&c.name))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (on, off): (Vec<&ComponentConfig>, Vec<&ComponentConfig>) =
        components.iter().partition(|c| c.enabled);
    let mut parts = if on.is_empty() {
        "0 enabled".to_string()
    } else {
        format!("{} enabled: {}", on.len(), named(&on))
    };
    if !off.is_empty() {
        parts.push_str(&format!("; disabled: {}", named(&off)));
    }
    format!("{} ({parts})", plural(components.len(), "component"))
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
