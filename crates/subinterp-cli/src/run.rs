//! `subinterp run`: run scripts and code snippets, every copy in its own interpreter on
//! its own thread, all at the same time.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{ArgMatches, Args, ValueEnum};
use serde::Serialize;
use signal_hook::consts::SIGINT;
use signal_hook::iterator::Signals;
use subinterp::guards::{exit_guard, ExitGuard};
use subinterp::{
    Error, Interpreter, InterpreterConfig, InterruptHandle, InterruptReason, Output, Runtime, Stats,
};

use crate::usage::UsageError;
use crate::{stdio, EXIT_FAILED, EXIT_OK};

/// The most interpreters one `run` starts (scripts and codes times copies): each has a
/// thread and its own memory, and far more than this exhausts the machine before the
/// first script starts.
const MAX_INTERPRETERS: usize = 1024;

/// Exit status after SIGINT (128 + 2), as a shell shows for `python` ended by Ctrl-C.
const EXIT_INTERRUPTED: u8 = 130;

/// Flushes `sys.stdout` and `sys.stderr` after the script, as `python` does at exit.
const FLUSH_STREAMS: &str = include_str!("flush_streams.py");

/// Shown after the options in `subinterp run --help`.
const AFTER_HELP: &str = "\
Scripts and -c codes may be mixed; they run in command-line order, and with --copies N
each one runs N times. Every copy gets its own interpreter on its own thread, and all of
them run at the same time. A script runs as __main__ with sys.argv == [SCRIPT] and the
script's directory first on sys.path, like `python SCRIPT`; -c CODE runs with
sys.argv == ['-c'] and the current directory first on sys.path, like `python -c CODE`.

Without --json, the scripts' output is this process's own stdout and stderr, as with
`python`, and the traceback of each interpreter that fails is printed on stderr. A stdout
that cannot be written (a full disk, /dev/full) fails the script, as in `python`. With
--json, sys.stdout and sys.stderr are captured, whatever is written to fd 1 below them
(os.write, subprocesses, pytest's fd capture) goes to stderr, and one JSON document is
printed on the command's own copy of stdout, taken at start:

  {\"wall_ms\": 12.3,
   \"interpreters\": [{\"id\": 1, \"script\": \"a.py\", \"status\": \"ok\",
                     \"duration_ms\": 4.5, \"exit_code\": 0, \"stdout\": \"...\",
                     \"stderr\": \"...\", \"error\": null, \"stats\": {...}}]}

where a failed interpreter has \"status\": \"error\" and
\"error\": {\"type\": \"builtins.ValueError\", \"message\": \"...\", \"traceback\": \"...\"}.
A missing script is reported as builtins.FileNotFoundError, an interpreter that could not
be created as subinterp.CreateFailed (with \"id\": null). \"exit_code\" is the status
`python` would give for that script alone. \"stats\" holds the interpreter's counters:
its operations by outcome (tasks_ok, tasks_failed...; the command's own set-up counts
too), channel messages and bytes, guard rail events (guards: {\"env\": {\"counted\": 1,
\"refused\": 0}}), and memory_bytes, memory_peak_bytes and cpu_seconds (null where the
build does not measure them).

With --json or several interpreters, os._exit(N) ends only its own interpreter, as
sys.exit(N) does (SystemExit), so that one script cannot end the others or lose the
report; with one script and no --json it ends the process, as in `python`.

Ctrl-C (SIGINT) raises KeyboardInterrupt in every running interpreter, so `finally`
blocks and atexit handlers run, as with `python`; code blocked in a C call gets it when
the call returns. A second Ctrl-C ends the process at once. The exit status is then 130.
A SIGINT ignored when the command started (a script's background job) stays ignored.
Once the outcome is known (and the --json report written), a CPython crash while Python
is finalised no longer changes the exit status: the command says so and exits with it.

Exit status: with one script, its own status, as `python SCRIPT` gives it:
  0    the script ran to the end, or sys.exit() / sys.exit(0) / sys.exit(None) /
       sys.exit(False)
  N    sys.exit(N) with an integer N (pytest's 1, 2, 4, 5 come through)
  1    an uncaught exception, a syntax error, sys.exit(\"message\") (the message is
       printed), an interpreter that could not be created or a stdout that could not
       be written
  2    the script could not be opened (as with `python`), or a usage error: bad option,
       no SCRIPT and no -c, --copies 0, more than 1024 interpreters, unknown --config
  130  interrupted by Ctrl-C
  141  --json: the reader of the report went away (broken pipe)
With several scripts or copies, the status of the first one, in command-line order,
that did not succeed (0 if all did).";

/// Options of `subinterp run`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct RunArgs {
    /// Python file to run as __main__, with sys.argv == [SCRIPT] and its directory first
    /// on sys.path
    #[arg(value_name = "SCRIPT")]
    scripts: Vec<PathBuf>,

    /// Run CODE as if it were a script, with sys.argv == ['-c'] (repeatable)
    #[arg(short = 'c', long = "code", value_name = "CODE")]
    code: Vec<String>,

    /// Run N copies of each script and code, each in its own interpreter
    #[arg(
        short = 'n',
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = parse_copies
    )]
    copies: usize,

    /// Interpreter preset
    #[arg(long, value_name = "NAME", value_enum, default_value_t = Preset::Isolated)]
    config: Preset,

    /// Prepend DIR to sys.path in every interpreter (repeatable; the first given ends up
    /// first; DIR must exist)
    #[arg(long = "path", value_name = "DIR")]
    paths: Vec<PathBuf>,

    /// Memory limit of each interpreter: what its Python code allocates through CPython
    /// (256M, 2G; K, M, G, T are powers of 1024). Past it, that interpreter's code gets
    /// MemoryError, the others go on (blocks of 1 MiB or more are refused at the limit,
    /// smaller ones raise it within milliseconds; nothing passes the limit plus a
    /// quarter). --json reports each interpreter's memory_peak_bytes and cpu_seconds
    #[arg(long, value_name = "SIZE", value_parser = crate::parse_size)]
    memory_limit: Option<u64>,

    /// Capture each interpreter's output and print one JSON report on stdout instead of
    /// passing output through
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    guards: crate::guard_args::GuardArgs,
}

/// The interpreter presets `--config` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// Own GIL and allocator, runs in parallel; single-phase extension modules refused.
    Isolated,
    /// Shared GIL and allocator, runs one at a time; every extension module loads.
    Legacy,
}

impl Preset {
    /// The library's configuration for this preset.
    fn config(self) -> InterpreterConfig {
        match self {
            Preset::Isolated => InterpreterConfig::isolated(),
            Preset::Legacy => InterpreterConfig::legacy(),
        }
    }
}

/// Parses `--copies`: a whole number of at least 1.
fn parse_copies(text: &str) -> Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    if n == 0 {
        return Err("the number of copies must be at least 1".into());
    }
    if n > MAX_INTERPRETERS {
        return Err(format!(
            "at most {MAX_INTERPRETERS} interpreters can run at once, each on a thread of its own"
        ));
    }
    Ok(n)
}

/// What one interpreter runs.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// A Python file.
    Script(PathBuf),
    /// Code given with `-c`.
    Code(String),
}

impl Source {
    /// The name shown in reports: the path as given, or `-c`.
    fn label(&self) -> String {
        match self {
            Source::Script(path) => path.to_string_lossy().into_owned(),
            Source::Code(_) => "-c".to_owned(),
        }
    }
}

/// Scripts and codes in command-line order.
fn sources(args: &RunArgs, matches: &ArgMatches) -> Vec<Source> {
    let mut indexed: Vec<(usize, Source)> = Vec::new();
    if let Some(indices) = matches.indices_of("scripts") {
        indexed.extend(indices.zip(args.scripts.iter().cloned().map(Source::Script)));
    }
    if let Some(indices) = matches.indices_of("code") {
        indexed.extend(indices.zip(args.code.iter().cloned().map(Source::Code)));
    }
    indexed.sort_by_key(|(index, _)| *index);
    indexed.into_iter().map(|(_, source)| source).collect()
}

/// Why an interpreter failed, in the shape of the JSON report's `error` object.
#[derive(Debug, Clone, Serialize)]
struct Failure {
    /// Qualified exception type, e.g. `builtins.ValueError` or `subinterp.CreateFailed`.
    #[serde(rename = "type")]
    type_name: String,
    /// `str(exception)`, or the error message for errors outside Python.
    message: String,
    /// Python's formatted traceback; empty for errors outside Python.
    traceback: String,
}

/// When an error happened, which decides how it is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Creating the interpreter (or starting Python).
    Create,
    /// Preparing and running the script.
    Run,
}

impl Failure {
    /// Describes a library error.
    fn from_error(err: &Error, phase: Phase) -> Failure {
        let traceback = err
            .as_python()
            .map(|exc| exc.traceback.clone())
            .unwrap_or_default();
        let type_name = match (phase, err.as_python(), err) {
            (Phase::Create, _, _) => "subinterp.CreateFailed".to_owned(),
            // A Python exception, or the TimeoutError that stopped the script at --timeout.
            (Phase::Run, Some(exc), _) => exc.type_name.clone(),
            (Phase::Run, None, Error::Timeout { .. }) => "builtins.TimeoutError".to_owned(),
            (Phase::Run, None, Error::Io { source, .. }) => {
                if source.kind() == std::io::ErrorKind::NotFound {
                    "builtins.FileNotFoundError".to_owned()
                } else {
                    "builtins.OSError".to_owned()
                }
            }
            (Phase::Run, None, _) => "subinterp.RunFailed".to_owned(),
        };
        let message = match (err.as_python(), phase) {
            (Some(exc), Phase::Run) => exc.message.clone(),
            _ => err.to_string(),
        };
        Failure {
            type_name,
            message,
            traceback,
        }
    }
}

/// What happened in one interpreter.
#[derive(Debug)]
struct Outcome {
    /// CPython's id for the interpreter, if it was created.
    id: Option<i64>,
    /// Time spent running the script or code.
    duration: Duration,
    /// Captured output (empty unless capturing).
    output: Output,
    /// The failure, if any.
    failure: Option<Failure>,
    /// The exit status `python` would give for this script alone.
    exit_code: u8,
    /// What `python` prints instead of a traceback for this ending (`sys.exit("bye")`).
    exit_message: Option<String>,
    /// The interpreter's counters once it ended.
    stats: Option<Stats>,
}

impl Outcome {
    /// An interpreter that never started.
    fn not_created(err: &Error) -> Outcome {
        Outcome {
            id: None,
            duration: Duration::ZERO,
            output: Output::default(),
            failure: Some(Failure::from_error(err, Phase::Create)),
            exit_code: EXIT_FAILED,
            exit_message: None,
            stats: None,
        }
    }
}

/// How `python` would end on `err`: the exit status, and what it prints instead of a
/// traceback (`None`: the traceback). `SystemExit` follows `sys.exit`: no code, `None`
/// and `False` give 0, an integer gives itself (its low 8 bits, as the system keeps),
/// anything else gives 1 and is printed; `KeyboardInterrupt` gives 130; a script that
/// cannot be opened gives 2, as `python` does.
fn exit_status(err: &Error) -> (u8, Option<String>) {
    if let Error::Io { .. } = err {
        return (2, None);
    }
    let Some(exc) = err.as_python() else {
        return (EXIT_FAILED, None);
    };
    if exc.is("KeyboardInterrupt") {
        return (EXIT_INTERRUPTED, None);
    }
    match &exc.exit {
        // The library reads `SystemExit.code` as `python` does; the system keeps the low
        // 8 bits of the status (-1, for a code past a C long, is 255 as in `python`).
        Some(exit) => (
            exit.code as u8,
            Some(exit.message.clone().unwrap_or_default()),
        ),
        None => (EXIT_FAILED, None),
    }
}

/// One entry of the JSON report's `interpreters` list.
#[derive(Debug, Serialize)]
struct InterpreterReport {
    /// CPython's interpreter id, or null if it could not be created.
    id: Option<i64>,
    /// The script as given, or `-c`.
    script: String,
    /// `ok` or `error`.
    status: Status,
    /// Milliseconds spent running the script.
    duration_ms: f64,
    /// The exit status `python` would give for this script alone.
    exit_code: u8,
    /// Everything the interpreter wrote to `sys.stdout`.
    stdout: String,
    /// Everything the interpreter wrote to `sys.stderr`.
    stderr: String,
    /// Why it failed, or null.
    error: Option<Failure>,
    /// The interpreter's counters (tasks, channel messages, guard rail events; memory and
    /// CPU where built in), or null if it could not be created.
    stats: Option<Stats>,
}

/// Whether an interpreter succeeded.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    /// The script ran to the end.
    Ok,
    /// The script raised, or could not run.
    Error,
}

/// The JSON report printed with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    /// Milliseconds from creating the first interpreter to closing the last.
    wall_ms: f64,
    /// One entry per interpreter, in command-line order with copies adjacent.
    interpreters: Vec<InterpreterReport>,
}

/// Milliseconds, rounded to the microsecond.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// The scripts and codes to run, in command-line order, once the options clap cannot
/// check alone are checked.
pub(crate) fn check(args: &RunArgs, matches: &ArgMatches) -> Result<Vec<Source>, UsageError> {
    let sources = sources(args, matches);
    if sources.is_empty() {
        return Err(UsageError::new(
            ErrorKind::MissingRequiredArgument,
            "nothing to run: give at least one SCRIPT or -c CODE",
        ));
    }
    crate::check_paths(&args.paths)?;
    if sources.len().saturating_mul(args.copies) > MAX_INTERPRETERS {
        return Err(UsageError::new(
            ErrorKind::ValueValidation,
            format!(
                "{} interpreters asked for ({} scripts or codes, {} copies each): at most \
                 {MAX_INTERPRETERS} can run at once, each on a thread of its own",
                sources.len().saturating_mul(args.copies),
                sources.len(),
                args.copies
            ),
        ));
    }
    Ok(sources)
}

/// Runs `subinterp run`; returns the exit status.
pub fn main(args: RunArgs, matches: &ArgMatches) -> u8 {
    let sources = match check(&args, matches) {
        Ok(sources) => sources,
        Err(err) => return err.report("run"),
    };
    // With --json the report goes to the command's own copy of stdout, taken before any
    // Python code runs: what scripts write to fd 1 (subprocesses, os.write, pytest's fd
    // capture) shows on stderr and cannot reach it. Without --json, stdout is the
    // scripts' own, as with `python`.
    let report_to = if args.json {
        match stdio::take_stdout() {
            Ok(file) => Some(file),
            Err(err) => {
                eprintln!("subinterp: cannot use standard output: {err}");
                return EXIT_FAILED;
            }
        }
    } else {
        None
    };
    let mut config = args.config.config();
    config.capture_output(args.json);
    config.guards(args.guards.guards());
    if let Some(limit) = args.memory_limit {
        config.memory_limit(limit);
    }

    let jobs: Vec<Source> = sources
        .iter()
        .flat_map(|source| std::iter::repeat(source.clone()).take(args.copies))
        .collect();
    let many = jobs.len() > 1;

    let interrupts = Interrupts::default();
    if let Err(err) = interrupts.watch() {
        eprintln!("subinterp: cannot handle SIGINT: {err}");
        return EXIT_FAILED;
    }
    // Kept alive until the report is out: dropping it finalises Python.
    let runtime = crate::start_runtime(&args.paths);
    let started = Instant::now();
    let outcomes = match &runtime {
        Ok(runtime) => run_all(runtime, &config, &jobs, !args.json && many, &interrupts),
        Err(err) => {
            if !args.json {
                eprintln!("subinterp: {err}");
                return EXIT_FAILED;
            }
            jobs.iter().map(|_| Outcome::not_created(err)).collect()
        }
    };
    let wall = started.elapsed();

    // One script: its own status, as `python SCRIPT` gives. Several: the status of the
    // first one (in command-line order) that did not succeed.
    let status = outcomes
        .iter()
        .map(|o| o.exit_code)
        .find(|&code| code != EXIT_OK)
        .unwrap_or(EXIT_OK);
    if let Some(file) = report_to {
        let report = Report {
            wall_ms: millis(wall),
            interpreters: jobs
                .iter()
                .zip(outcomes)
                .map(|(source, outcome)| InterpreterReport {
                    id: outcome.id,
                    script: source.label(),
                    status: if outcome.failure.is_some() {
                        Status::Error
                    } else {
                        Status::Ok
                    },
                    duration_ms: millis(outcome.duration),
                    exit_code: outcome.exit_code,
                    stdout: outcome.output.stdout,
                    stderr: outcome.output.stderr,
                    error: outcome.failure,
                    stats: outcome.stats,
                })
                .collect(),
        };
        match print_report(file, &report) {
            Ok(()) => {}
            // The reader went away (`| head`): end quietly, as Unix tools do.
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
                return crate::EXIT_BROKEN_PIPE;
            }
            Err(err) => {
                eprintln!("subinterp: cannot write the report: {err}");
                return EXIT_FAILED;
            }
        }
    }
    let status = if interrupts.requested() {
        EXIT_INTERRUPTED
    } else {
        status
    };
    // Everything is out; what is left is finalising Python when `runtime` drops.
    crate::settle("run", status);
    status
}

/// Writes the report as one JSON document.
fn print_report(file: File, report: &Report) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(file);
    serde_json::to_writer_pretty(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Ctrl-C: the interpreters that are running, to deliver `KeyboardInterrupt` to.
#[derive(Clone, Default)]
struct Interrupts {
    handles: Arc<Mutex<Vec<InterruptHandle>>>,
    requested: Arc<AtomicBool>,
}

impl Interrupts {
    /// On the first SIGINT, raises `KeyboardInterrupt` in every running interpreter (so
    /// `finally` blocks and `atexit` handlers run, as with `python`); a second SIGINT ends
    /// the process at once with status 130.
    fn watch(&self) -> std::io::Result<()> {
        if stdio::ignored_at_start(SIGINT) {
            // Started with SIGINT ignored (a background job of a script): leave it so.
            return Ok(());
        }
        signal_hook::flag::register_conditional_shutdown(
            SIGINT,
            i32::from(EXIT_INTERRUPTED),
            Arc::clone(&self.requested),
        )?;
        let mut signals = Signals::new([SIGINT])?;
        let this = self.clone();
        thread::Builder::new()
            .name("subinterp-run-signals".into())
            .spawn(move || {
                for _ in signals.forever() {
                    this.requested.store(true, Ordering::SeqCst);
                    let handles = this.handles.lock().unwrap_or_else(|e| e.into_inner());
                    for handle in handles.iter() {
                        // An interpreter that has ended has nothing to interrupt.
                        let _ = handle.interrupt(InterruptReason::Cancelled);
                    }
                }
            })?;
        Ok(())
    }

    /// Registers a new interpreter; false if Ctrl-C came already (do not start it).
    fn register(&self, interp: &Interpreter) -> bool {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        handles.push(interp.interrupt_handle());
        !self.requested()
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// Runs every job on a thread of its own, all at once, and returns their outcomes in
/// job order. Unless the output is captured, each failure is printed on stderr as it
/// happens, headed by the job's name when `headed`.
fn run_all(
    runtime: &Runtime,
    config: &InterpreterConfig,
    jobs: &[Source],
    headed: bool,
    interrupts: &Interrupts,
) -> Vec<Outcome> {
    let json = config.captures_output();
    let guard_exit = json || jobs.len() > 1;
    let report = |source: &Source, outcome: &Outcome| {
        if let (false, Some(failure)) = (json, &outcome.failure) {
            print_failure(source, outcome, failure, headed);
        }
    };
    thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, source)| {
                thread::Builder::new()
                    .name(format!("subinterp-run-{i}"))
                    .spawn_scoped(scope, move || {
                        let outcome = run_one(runtime, config, source, interrupts, guard_exit);
                        report(source, &outcome);
                        outcome
                    })
            })
            .collect();
        handles
            .into_iter()
            .zip(jobs)
            .map(|(handle, source)| {
                let lost = match handle {
                    Ok(handle) => match handle.join() {
                        Ok(outcome) => return outcome,
                        Err(_) => {
                            Error::Panic("the thread running this interpreter panicked".into())
                        }
                    },
                    Err(err) => Error::CreateFailed(format!("cannot start a thread: {err}")),
                };
                let outcome = Outcome::not_created(&lost);
                report(source, &outcome);
                outcome
            })
            .collect()
    })
}

/// Creates an interpreter, runs `source` in it, collects its output and closes it.
fn run_one(
    runtime: &Runtime,
    config: &InterpreterConfig,
    source: &Source,
    interrupts: &Interrupts,
    guard_exit: bool,
) -> Outcome {
    let interp = match Interpreter::new(runtime, config) {
        Ok(interp) => interp,
        Err(err) => return Outcome::not_created(&err),
    };
    let mut duration = Duration::ZERO;
    let result = if interrupts.register(&interp) {
        prepare(&interp, source, guard_exit).and_then(|()| {
            let started = Instant::now();
            let result = match source {
                Source::Script(path) => interp.exec_file(path),
                Source::Code(code) => interp.exec(code),
            };
            duration = started.elapsed();
            result
        })
    } else {
        Err(Error::Cancelled)
    };
    // What the script printed and Python still buffers must reach its destination: a
    // stdout that cannot be written (a full disk, /dev/full) is an error, as in `python`,
    // which flushes sys.stdout and sys.stderr unless they are None or closed.
    let flushed = interp.eval(FLUSH_STREAMS);
    let (mut exit_code, mut exit_message) = match &result {
        Ok(()) => (EXIT_OK, None),
        Err(err) => exit_status(err),
    };
    // `sys.exit()`, `sys.exit(0)`, `sys.exit(None)` and `sys.exit(False)` end a script
    // successfully, as in `python script.py`.
    let result = match result {
        Err(_) if exit_code == EXIT_OK => Ok(()),
        other => other,
    };
    let mut failure = result
        .err()
        .map(|err| Failure::from_error(&err, Phase::Run));
    if let (None, Err(err)) = (&failure, flushed) {
        exit_code = EXIT_FAILED;
        exit_message = None;
        failure = Some(Failure {
            type_name: err
                .as_python()
                .map_or("builtins.OSError".to_owned(), |exc| exc.type_name.clone()),
            message: format!(
                "cannot write the output: {}",
                err.as_python()
                    .map_or(err.to_string(), |exc| exc.message.clone())
            ),
            traceback: String::new(),
        });
    }
    let (output, closed) = if config.captures_output() {
        match interp.close_and_take_output() {
            Ok(output) => (output, Ok(())),
            Err(err) => (
                Output {
                    stdout: String::new(),
                    stderr: format!("subinterp: the output could not be collected: {err}\n"),
                },
                Err(err),
            ),
        }
    } else {
        (Output::default(), interp.close())
    };
    if let (None, Err(err)) = (&failure, closed) {
        exit_code = EXIT_FAILED;
        exit_message = None;
        failure = Some(Failure::from_error(&err, Phase::Run));
    }
    Outcome {
        id: Some(interp.id()),
        duration,
        output,
        failure,
        exit_code,
        exit_message,
        stats: Some(interp.stats()),
    }
}

/// Sets `sys.argv` and `sys.path[0]` the way `python SCRIPT` and `python -c CODE` do.
fn prepare(interp: &Interpreter, source: &Source, guard_exit: bool) -> subinterp::Result<()> {
    if guard_exit {
        // `os._exit(n)` ends only its own interpreter, as `sys.exit(n)` does: with several
        // interpreters or a report to write, one script must not end the others' run and
        // lose the report.
        interp.exec(&exit_guard(ExitGuard::SystemExit))?;
    }
    match source {
        Source::Script(path) => {
            interp.set_argv_os(&[path.as_os_str()])?;
            if let Some(dir) = script_dir(path) {
                interp.add_path(dir)?;
            }
            Ok(())
        }
        Source::Code(_) => {
            interp.set_argv(&["-c"])?;
            interp.add_path("")
        }
    }
}

/// The directory of the script with symbolic links resolved, as `python SCRIPT` puts
/// first on `sys.path`; `None` when the script cannot be found (running it reports why).
fn script_dir(path: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(path).ok()?;
    real.parent().map(Path::to_path_buf)
}

/// Prints a failure on stderr: the traceback for a Python exception, else the message;
/// headed by the script and interpreter id when several interpreters run.
fn print_failure(source: &Source, outcome: &Outcome, failure: &Failure, headed: bool) {
    let mut text = String::new();
    if headed {
        let who = match outcome.id {
            Some(id) => format!("interpreter {id}"),
            None => "interpreter not created".to_owned(),
        };
        let how = match outcome.exit_message.as_deref() {
            Some("") => format!("exited with status {}", outcome.exit_code),
            Some(_) => format!("exited with status {}:", outcome.exit_code),
            None => "failed:".to_owned(),
        };
        text.push_str(&format!("subinterp: {} ({who}) {how}\n", source.label()));
    }
    match &outcome.exit_message {
        // `sys.exit(3)`: python prints nothing.
        Some(message) if message.is_empty() => {}
        // `sys.exit("bye")`: python prints the message alone.
        Some(message) => {
            text.push_str(message);
            text.push('\n');
        }
        None if failure.traceback.is_empty() => {
            let prefix = if headed { "" } else { "subinterp: " };
            text.push_str(&format!("{prefix}{}\n", failure.message));
        }
        None => {
            text.push_str(&failure.traceback);
            if !failure.traceback.ends_with('\n') {
                text.push('\n');
            }
        }
    }
    if text.is_empty() {
        return;
    }
    // One write, so failures of interpreters finishing together do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
