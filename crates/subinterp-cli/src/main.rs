//! The `subinterp` command: run Python in many isolated CPython subinterpreters inside
//! one process.
//!
//! Each command lives in a module of its own; this file parses the command line and
//! hands over to it.

mod check;
mod guard_args;
mod map;
mod run;
mod stdio;
mod usage;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use subinterp::{Runtime, RuntimeConfig};
use tracing_subscriber::layer::SubscriberExt;

use crate::usage::UsageError;

/// Exit status when everything succeeded.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit status when some Python code raised or some interpreter could not run.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit status for a command line that could not be understood (clap uses it too).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status when the reader of the output went away (128 + SIGPIPE, what a shell
/// shows for a Unix tool ended by a closed pipe).
pub(crate) const EXIT_BROKEN_PIPE: u8 = 141;

/// Run Python in many isolated CPython subinterpreters inside one process.
#[derive(Debug, Parser)]
#[command(
    name = "subinterp",
    version,
    propagate_version = true,
    after_help = "Run `subinterp help COMMAND` for the details of a command and its exit statuses.\n\
                  Exit status: 0 success, 1 some Python code failed, 2 usage error.\n\
                  Every command: a --path that is not a directory is a usage error; a\n\
                  VIRTUAL_ENV that is not a virtual environment for this Python is ignored\n\
                  with a warning.\n\
                  Set SUBINTERP_LOG=info (or debug) to log interpreters and tasks on stderr."
)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run Python scripts or code, every copy in its own interpreter on its own thread.
    Run(run::RunArgs),
    /// Call a Python function on every JSON Lines record, in parallel interpreters.
    Map(map::MapArgs),
    /// Tell which modules can be imported in isolated interpreters, and why not.
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    init_logging();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let status = match cli.command {
        Command::Run(args) => {
            let sub = matches
                .subcommand_matches("run")
                .expect("clap parsed the run subcommand, so its matches exist");
            run::main(args, sub)
        }
        Command::Map(args) => map::main(args),
        Command::Check(args) => check::main(args),
    };
    ExitCode::from(status)
}

/// Sends the library's `tracing` events (interpreters created and closed, tasks started,
/// finished, failed, timed out, with durations) to stderr when `SUBINTERP_LOG` names a
/// level: `error`, `warn`, `info`, `debug` or `trace`. Without it, the library's warnings
/// are shown (an interpreter left running past its shutdown grace period, a module the
/// runtime could not prepare), except the pool's about single tasks, which the commands
/// report themselves.
fn init_logging() {
    let Ok(level) = std::env::var("SUBINTERP_LOG") else {
        let quiet = tracing_subscriber::fmt()
            .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
            .with_writer(std::io::stderr)
            .without_time()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(tracing_subscriber::filter::filter_fn(|meta| {
                !meta.target().starts_with("subinterp::pool")
            }));
        // Only fails if a subscriber is already set, and then that one logs.
        let _ = tracing::subscriber::set_global_default(quiet);
        return;
    };
    match level.parse::<tracing_subscriber::filter::LevelFilter>() {
        Ok(level) => tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        Err(_) => eprintln!(
            "subinterp: ignoring SUBINTERP_LOG={level:?}: expected error, warn, info, debug or trace"
        ),
    }
}

/// Settles the command's exit status once its results and summary are out: if CPython
/// crashes while the interpreters end (3.12 and 3.13 have such bugs, see
/// `subinterp::hazards`), the process still exits with `status`, saying so on stderr.
pub(crate) fn settle(subcommand: &str, status: u8) {
    subinterp::hazards::settle_exit(
        status,
        &format!(
            "subinterp {subcommand}: CPython crashed while the interpreters ended, after \
             every result was written; exiting with the run's status {status}\n"
        ),
    );
}

/// Parses a `--timeout`: a positive number of seconds, at most
/// [`subinterp::seconds::MAX_SECONDS`].
pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    use subinterp::seconds::{parse_positive, SecondsError, MAX_SECONDS};
    parse_positive(text).map_err(|err| match err {
        SecondsError::NotANumber => format!("{text:?} is not a number of seconds"),
        SecondsError::TooLarge => format!("the timeout must be at most {MAX_SECONDS:.0} seconds"),
        _ => "the timeout must be a positive number of seconds".into(),
    })
}

/// Parses a `--memory-limit`: a number of bytes with an optional K, M, G or T
/// ([`subinterp::parse_size`], the library's one rule).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    subinterp::parse_size(text).map_err(|err| match err {
        subinterp::Error::InvalidConfig(message) => message,
        other => other.to_string(),
    })
}

/// Refuses a `--path` that is not a directory (the same rule as `check`'s): a mistyped
/// directory would otherwise go unnoticed until an import fails.
pub(crate) fn check_paths(paths: &[PathBuf]) -> Result<(), UsageError> {
    match paths.iter().find(|dir| !dir.is_dir()) {
        Some(dir) => Err(UsageError::new(
            ErrorKind::ValueValidation,
            format!("--path {}: no such directory", dir.display()),
        )),
        None => Ok(()),
    }
}

/// Starts CPython for this process with `paths` prepended to every interpreter's
/// `sys.path`. A `VIRTUAL_ENV` that is not a virtual environment for this Python is
/// ignored with a warning on stderr (the runtime's, shown by [`init_logging`]), as
/// `check` does.
pub(crate) fn start_runtime(paths: &[PathBuf]) -> subinterp::Result<Runtime> {
    let mut config = RuntimeConfig::new();
    for dir in paths {
        config.add_path(dir);
    }
    Runtime::init(&config)
}
