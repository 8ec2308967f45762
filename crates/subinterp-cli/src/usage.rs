//! Usage errors the commands find themselves: a command line clap accepted that a
//! command refuses (nothing to run, a `--path` that is not a directory, an output that
//! is the input...). Each carries the kind of clap error it is, as clap's own do, and is
//! reported in clap's format.

use std::fmt::Display;

use clap::error::ErrorKind;
use clap::CommandFactory;

use crate::{Cli, EXIT_USAGE};

/// A command line a command refuses, and which kind of clap error that is.
#[derive(Debug)]
pub(crate) struct UsageError {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl UsageError {
    pub(crate) fn new(kind: ErrorKind, message: impl Display) -> Self {
        UsageError {
            kind,
            message: message.to_string(),
        }
    }

    /// Reports it as clap reports its own errors of `subcommand` (the message, the usage
    /// line, a hint at `--help`) on stderr; returns the usage exit status.
    pub(crate) fn report(&self, subcommand: &str) -> u8 {
        let mut cli = Cli::command();
        cli.build();
        let err = match cli.find_subcommand_mut(subcommand) {
            Some(sub) => sub.error(self.kind, &self.message),
            None => cli.error(self.kind, &self.message),
        };
        // Printing can only fail when stderr is gone; the exit status still tells.
        let _ = err.print();
        EXIT_USAGE
    }
}

#[cfg(test)]
mod tests {
    use clap::FromArgMatches;
    use subinterp::check::{CheckError, CheckOptions};

    use super::*;
    use crate::{check, run, Command};

    const MISSING: &str = "/nonexistent/subinterp-cli-usage-test";

    /// The kind of usage error `line` (the arguments after `subinterp`) is, whether
    /// clap finds it or the command's own checks do; `None` when it is accepted.
    fn kind_of(line: &str) -> Option<ErrorKind> {
        let argv = std::iter::once("subinterp").chain(line.split_whitespace());
        let matches = match Cli::command().try_get_matches_from(argv) {
            Ok(matches) => matches,
            Err(err) => return Some(err.kind()),
        };
        let cli = Cli::from_arg_matches(&matches).expect("clap accepted the command line");
        let checked = match cli.command {
            Command::Map(args) => args.check().map(drop),
            Command::Run(args) => {
                let sub = matches.subcommand_matches("run").expect("run's matches");
                run::check(&args, sub).map(drop)
            }
            Command::Check(args) => check::check_args(&args),
        };
        checked.err().map(|err| err.kind)
    }

    #[test]
    fn each_usage_error_of_map_has_its_own_kind() {
        let dir = std::env::temp_dir();
        let dir = dir.display();
        for (line, kind) in [
            ("map textstats", Some(ErrorKind::ValueValidation)),
            ("map text-stats:analyze", Some(ErrorKind::ValueValidation)),
            ("map m:f -w 0", Some(ErrorKind::ValueValidation)),
            ("map m:f -w 1025", Some(ErrorKind::ValueValidation)),
            (
                &format!("map m:f --path {MISSING}"),
                Some(ErrorKind::ValueValidation),
            ),
            ("map m:f --timeout soon", Some(ErrorKind::ValueValidation)),
            (
                "map m:f --setup-timeout 0",
                Some(ErrorKind::ValueValidation),
            ),
            ("map m:f -w many", Some(ErrorKind::ValueValidation)),
            (
                "map m:f --memory-limit 12X",
                Some(ErrorKind::ValueValidation),
            ),
            ("map m:f --memory-limit 0", Some(ErrorKind::ValueValidation)),
            ("map", Some(ErrorKind::MissingRequiredArgument)),
            ("map m:f --bogus", Some(ErrorKind::UnknownArgument)),
            (&format!("map m:f -w 2 --timeout 1 --path {dir}"), None),
        ] {
            assert_eq!(kind_of(line), kind, "{line}");
        }
    }

    #[test]
    fn each_usage_error_of_run_has_its_own_kind() {
        for (line, kind) in [
            ("run", Some(ErrorKind::MissingRequiredArgument)),
            ("run --json", Some(ErrorKind::MissingRequiredArgument)),
            (
                &format!("run -c pass --path {MISSING}"),
                Some(ErrorKind::ValueValidation),
            ),
            (
                "run -c pass -c pass -n 1000",
                Some(ErrorKind::ValueValidation),
            ),
            ("run -c pass -n 0", Some(ErrorKind::ValueValidation)),
            ("run -c pass --config bogus", Some(ErrorKind::InvalidValue)),
            ("run -c pass -n 1024", None),
            (
                "run -c pass --memory-limit 1.5",
                Some(ErrorKind::ValueValidation),
            ),
            ("run -c pass --memory-limit 2G", None),
        ] {
            assert_eq!(kind_of(line), kind, "{line}");
        }
    }

    #[test]
    fn each_usage_error_of_check_has_its_own_kind() {
        for (line, kind) in [
            ("check", Some(ErrorKind::MissingRequiredArgument)),
            ("check --json", Some(ErrorKind::MissingRequiredArgument)),
            ("check json --jobs 0", Some(ErrorKind::ValueValidation)),
            ("check json --timeout 0", Some(ErrorKind::ValueValidation)),
            ("check json", None),
            ("check --all", None),
        ] {
            assert_eq!(kind_of(line), kind, "{line}");
        }
        // What the library's checker refuses before it starts anything.
        let refused = subinterp::check::run(&["not-a-module"], &CheckOptions::new())
            .expect_err("an invalid module name is refused");
        let usage = check::usage_of(&refused).expect("a usage error");
        assert_eq!(usage.kind, ErrorKind::ValueValidation);
        let mut options = CheckOptions::new();
        options.add_path(MISSING);
        let refused =
            subinterp::check::run(&["json"], &options).expect_err("a missing --path is refused");
        let usage = check::usage_of(&refused).expect("a usage error");
        assert_eq!(usage.kind, ErrorKind::ValueValidation);
        let failure = CheckError::Probe("the probe crashed".into());
        assert!(check::usage_of(&failure).is_none(), "a failure of the run");
    }
}
