//! The guard rail options `map` and `run` share: `--guard RULES` and `--allow-write DIR`.

use std::path::PathBuf;

use clap::Args;
use subinterp::Guards;

/// Guard rails on process-wide state for the interpreters of the command.
#[derive(Debug, Clone, Default, Args)]
pub struct GuardArgs {
    /// Refuse, in the interpreters, what would change the whole process: a comma-separated
    /// list of rules (chdir, env, signals, fork, subprocess, write, connect; `process` for
    /// the first five, `all` for every one); RULE=count lets it happen and counts it
    /// (repeatable). Refused actions raise PermissionError naming the rule. A guard rail
    /// against accidents, not a security boundary: native code and ctypes pass it.
    #[arg(long = "guard", value_name = "RULES", value_parser = parse_rules)]
    guard: Vec<String>,

    /// Let the Python code write files only under DIR (repeatable): opening a file for
    /// writing, creating, removing or renaming one anywhere else raises PermissionError
    /// (the `write` rule). Reading stays free.
    #[arg(long = "allow-write", value_name = "DIR")]
    allow_write: Vec<PathBuf>,
}

/// Checks one `--guard` value.
fn parse_rules(text: &str) -> Result<String, String> {
    text.parse::<Guards>()
        .map(|_| text.to_owned())
        .map_err(|err| match err {
            subinterp::Error::InvalidConfig(message) => message,
            other => other.to_string(),
        })
}

impl GuardArgs {
    /// The guard rails asked for (checked by clap already).
    pub(crate) fn guards(&self) -> Guards {
        let mut guards = Guards::new();
        for spec in &self.guard {
            guards
                .apply(spec)
                .expect("each --guard was checked when the options were parsed");
        }
        for dir in &self.allow_write {
            guards.allow_write(dir);
        }
        guards
    }
}
