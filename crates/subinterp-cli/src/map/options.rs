//! The options of `subinterp map`, its `--help` text, and the checks of what the
//! options ask for before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Args;

use crate::usage::UsageError;

const AFTER_HELP: &str = "\
Each input line is one JSON value; FUNC is called with it (as json.loads gives it) in one
of the pool's interpreters, and one output line is written per input line, in input order:
  {\"ok\": RESULT}                                   RESULT as json.dumps writes it
  {\"error\": {\"type\": \"builtins.ValueError\", \"message\": \"...\", \"traceback\": \"...\"}}
A record past its --timeout is interrupted inside its interpreter and reported with the
type builtins.TimeoutError. A record that allocates past --memory-limit fails with
builtins.MemoryError (unless FUNC catches it) and its interpreter is replaced; the other
interpreters and records go on. A line that is not valid UTF-8 or not valid JSON, or holds a
number too large for a float, gives
  {\"error\": {\"type\": \"InvalidInput\", \"message\": \"...\", \"line\": N}}
and the run goes on. Blank lines are skipped. A result json.dumps cannot encode is an
error for that record (builtins.TypeError, or ValueError for inf and nan).

Results are written as soon as they and those before them are ready, and flushed
whenever the input is idle, so `tail -f log | subinterp map ...` shows them as they come.

Python code never writes into the results: the interpreters' sys.stdout and fd 1 go to
this process's stderr, and their sys.stdin and fd 0 read /dev/null (the records are read
by this command alone). os._exit() raises RuntimeError in FUNC and --init instead of
ending the process.

Progress is shown on stderr when it is a terminal; a summary line is printed at the end.
On SIGINT or SIGTERM, reading stops, records in flight get a second to finish, results
are written up to the first unfinished record (the output stays a prefix of the input),
the summary is printed and the command exits with 130 or 143; a second signal ends it at
once. A signal ignored when the command started (nohup, a script's background job)
stays ignored. When the reader of the output goes away (`| head`), the command stops quietly.
Every result and the summary are written, and the exit status settled, before the
interpreters end: if CPython crashes while they end (CPython 3.12 and 3.13 have such
bugs; subinterp works around the known ones), the command says so and still exits with
that status.

Exit status:
  0    every record succeeded
  1    at least one record failed (or was an invalid input)
  2    usage or set-up error: bad option, unreadable input, unwritable output, an output
       that is the input file, module or function not found, a module that raised while
       being imported, an --init that raised, a set-up past --setup-timeout, a pool that
       could not set up a replacement for a stuck worker (the run stops there)
  130  stopped by SIGINT (143: SIGTERM)
  141  the reader of the output went away (broken pipe)";

/// Options of `subinterp map`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct MapArgs {
    /// The function to call on each record: `module:function` (or `module.function`).
    #[arg(value_name = "MODULE:FUNC")]
    pub(super) target: String,

    /// JSON Lines input file (default: standard input).
    #[arg(short, long, value_name = "FILE")]
    pub(super) input: Option<PathBuf>,

    /// JSON Lines output file (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,

    /// Number of interpreters (default: the number of cores; at most 1024, and more than
    /// 4 per core draws a warning).
    #[arg(short, long, value_name = "N")]
    pub(super) workers: Option<usize>,

    /// Deadline of each record, in seconds (positive, at most 1e9).
    #[arg(long, value_name = "SECS", value_parser = crate::parse_seconds)]
    pub(super) timeout: Option<Duration>,

    /// Records whose module isolated interpreters refuse (it imports numpy, orjson, lxml...)
    /// fail with the refusal (builtins.ImportError) instead of running in worker
    /// processes.
    #[arg(long, conflicts_with = "in_processes")]
    pub(super) no_process_fallback: bool,

    /// Run every record in worker processes from the start (fresh Python processes of
    /// this Python and sys.path), not in interpreters: for a module known to be refused,
    /// or one that crashes isolated interpreters.
    #[arg(long)]
    pub(super) in_processes: bool,

    /// CPU-time budget of each record, in seconds of its interpreter's thread (waiting on
    /// I/O or a lock uses none). A record past it is stopped as at --timeout.
    #[arg(long, value_name = "SECS", value_parser = crate::parse_seconds)]
    pub(super) cpu_budget: Option<Duration>,

    /// Memory limit of each interpreter: what its Python code allocates through CPython
    /// (256M, 2G; K, M, G, T are powers of 1024). A record that goes past it fails with
    /// builtins.MemoryError (blocks of 1 MiB or more are refused at the limit, smaller
    /// ones raise it within milliseconds; nothing passes the limit plus a quarter), and
    /// its interpreter is replaced.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size)]
    pub(super) memory_limit: Option<u64>,

    /// Deadline for setting up each interpreter: importing the module and running the
    /// --init codes, in seconds (default: none; with --timeout, that deadline but at least
    /// 30 s).
    #[arg(long, value_name = "SECS", value_parser = crate::parse_seconds)]
    pub(super) setup_timeout: Option<Duration>,

    /// Prepend DIR to sys.path in every interpreter (repeatable; DIR must exist). The
    /// current directory is on sys.path too, after these.
    #[arg(long = "path", value_name = "DIR")]
    pub(super) paths: Vec<PathBuf>,

    /// Python code run once in each interpreter before it takes work (repeatable).
    #[arg(long, value_name = "CODE")]
    pub(super) init: Vec<String>,

    /// At the end, print the pool's counters as one JSON line on stderr: records by
    /// outcome (tasks_ok, tasks_failed, tasks_timed_out...), channel messages, guard rail
    /// events, interpreters created and ended.
    #[arg(long)]
    pub(super) stats: bool,

    #[command(flatten)]
    pub(super) guards: crate::guard_args::GuardArgs,
}

/// The most workers `--workers` accepts: each is an interpreter on a thread of its own.
const MAX_WORKERS: usize = 1024;

/// Past this many workers per core, `--workers` draws a warning.
const WORKERS_PER_CORE: usize = 4;

impl MapArgs {
    /// Checks the options clap cannot check alone; returns the target's module and
    /// attribute path.
    pub(crate) fn check(&self) -> Result<(String, String), UsageError> {
        let Ok((module, path)) = subinterp::parse_target(&self.target) else {
            return Err(UsageError::new(
                ErrorKind::ValueValidation,
                format!(
                    "{:?} is not MODULE:FUNC (e.g. textstats:analyze)",
                    self.target
                ),
            ));
        };
        if self.workers == Some(0) {
            return Err(UsageError::new(
                ErrorKind::ValueValidation,
                "--workers must be at least 1",
            ));
        }
        crate::check_paths(&self.paths)?;
        if self.workers.is_some_and(|workers| workers > MAX_WORKERS) {
            return Err(UsageError::new(
                ErrorKind::ValueValidation,
                format!("--workers must be at most {MAX_WORKERS}, one interpreter and thread each"),
            ));
        }
        Ok((module, path))
    }

    /// Warns on stderr when `--workers` asks for more than a few interpreters per core.
    pub(super) fn warn_if_many_workers(&self) {
        let Some(workers) = self.workers else {
            return;
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if workers > WORKERS_PER_CORE * cores {
            eprintln!(
                "subinterp map: warning: {workers} workers on {cores} cores: more than \
                 {WORKERS_PER_CORE} per core only adds memory and start-up time for \
                 CPU-bound functions"
            );
        }
    }
}
