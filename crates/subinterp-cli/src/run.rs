//! `subinterp run`: run scripts and code snippets, every copy in its own interpreter on
//! its own thread, all at the same time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use clap::{ArgMatches, Args, ValueEnum};
use serde::Serialize;
use subinterp::{Error, Interpreter, InterpreterConfig, Output, Runtime};

use crate::{EXIT_FAILED, EXIT_OK};

/// Shown after the options in `subinterp run --help`.
const AFTER_HELP: &str = "\
Scripts and -c codes may be mixed; they run in command-line order, and with --copies N
each one runs N times. Every copy gets its own interpreter on its own thread, and all of
them run at the same time. A script runs as __main__ with sys.argv == [SCRIPT] and the
script's directory first on sys.path, like `python SCRIPT`; -c CODE runs with
sys.argv == ['-c'] and the current directory first on sys.path, like `python -c CODE`.

Without --json, output goes straight to this process's stdout and stderr, and the
traceback of each interpreter that fails is printed on stderr. With --json, output is
captured and one JSON document is printed on stdout:

  {\"wall_ms\": 12.3,
   \"interpreters\": [{\"id\": 1, \"script\": \"a.py\", \"status\": \"ok\",
                     \"duration_ms\": 4.5, \"stdout\": \"...\", \"stderr\": \"...\",
                     \"error\": null}]}

where a failed interpreter has \"status\": \"error\" and
\"error\": {\"type\": \"builtins.ValueError\", \"message\": \"...\", \"traceback\": \"...\"}.
A missing script is reported as builtins.FileNotFoundError, an interpreter that could not
be created as subinterp.CreateFailed (with \"id\": null).

Exit status:
  0  every interpreter ran its script to the end
  1  at least one raised (an exception, a syntax error, or SystemExit with a non-zero
     code; sys.exit() and sys.exit(0) count as success), had a
     missing or unreadable script, or could not be created
  2  usage error: bad option, no SCRIPT and no -c, --copies 0, unknown --config";

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
    /// first)
    #[arg(long = "path", value_name = "DIR")]
    paths: Vec<PathBuf>,

    /// Capture each interpreter's output and print one JSON report on stdout instead of
    /// passing output through
    #[arg(long)]
    json: bool,
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
    Ok(n)
}

/// What one interpreter runs.
#[derive(Debug, Clone)]
enum Source {
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
        let type_name = match (err, phase) {
            (_, Phase::Create) => "subinterp.CreateFailed".to_owned(),
            (Error::Python(exc), Phase::Run) => exc.type_name.clone(),
            (Error::Io { source, .. }, Phase::Run) => {
                if source.kind() == std::io::ErrorKind::NotFound {
                    "builtins.FileNotFoundError".to_owned()
                } else {
                    "builtins.OSError".to_owned()
                }
            }
            (_, Phase::Run) => "subinterp.RunFailed".to_owned(),
        };
        let message = match (err, phase) {
            (Error::Python(exc), Phase::Run) => exc.message.clone(),
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
}

impl Outcome {
    /// An interpreter that never started.
    fn not_created(err: &Error) -> Outcome {
        Outcome {
            id: None,
            duration: Duration::ZERO,
            output: Output::default(),
            failure: Some(Failure::from_error(err, Phase::Create)),
        }
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
    /// Everything the interpreter wrote to `sys.stdout`.
    stdout: String,
    /// Everything the interpreter wrote to `sys.stderr`.
    stderr: String,
    /// Why it failed, or null.
    error: Option<Failure>,
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

/// Runs `subinterp run`; returns the exit status.
pub fn main(args: RunArgs, matches: &ArgMatches) -> u8 {
    let sources = sources(&args, matches);
    if sources.is_empty() {
        return crate::usage_error("run", "nothing to run: give at least one SCRIPT or -c CODE");
    }
    let mut config = args.config.config();
    config.capture_output(args.json);

    let jobs: Vec<Source> = sources
        .iter()
        .flat_map(|source| std::iter::repeat(source.clone()).take(args.copies))
        .collect();
    let many = jobs.len() > 1;

    // Kept alive until the report is out: dropping it finalises Python.
    let runtime = crate::start_runtime(&args.paths);
    let started = Instant::now();
    let outcomes = match &runtime {
        Ok(runtime) => run_all(runtime, &config, &jobs, !args.json && many, args.json),
        Err(err) => {
            if !args.json {
                eprintln!("subinterp: {err}");
                return EXIT_FAILED;
            }
            jobs.iter().map(|_| Outcome::not_created(err)).collect()
        }
    };
    let wall = started.elapsed();

    let failed = outcomes.iter().any(|o| o.failure.is_some());
    if args.json {
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
                    stdout: outcome.output.stdout,
                    stderr: outcome.output.stderr,
                    error: outcome.failure,
                })
                .collect(),
        };
        if let Err(err) = print_report(&report) {
            eprintln!("subinterp: cannot write the report: {err}");
            return EXIT_FAILED;
        }
    }
    if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// Writes the report as one JSON document on stdout.
fn print_report(report: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Runs every job on a thread of its own, all at once, and returns their outcomes in
/// job order. Unless `json`, each failure is printed on stderr as it happens, headed by
/// the job's name when `headed`.
fn run_all(
    runtime: &Runtime,
    config: &InterpreterConfig,
    jobs: &[Source],
    headed: bool,
    json: bool,
) -> Vec<Outcome> {
    let report = |source: &Source, outcome: &Outcome| {
        if let (false, Some(failure)) = (json, &outcome.failure) {
            print_failure(source, outcome.id, failure, headed);
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
                        let outcome = run_one(runtime, config, source);
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
fn run_one(runtime: &Runtime, config: &InterpreterConfig, source: &Source) -> Outcome {
    let interp = match Interpreter::new(runtime, config) {
        Ok(interp) => interp,
        Err(err) => return Outcome::not_created(&err),
    };
    let mut duration = Duration::ZERO;
    let result = prepare(&interp, source).and_then(|()| {
        let started = Instant::now();
        let result = match source {
            Source::Script(path) => interp.exec_file(path),
            Source::Code(code) => interp.exec(code),
        };
        duration = started.elapsed();
        result
    });
    // `sys.exit()`, `sys.exit(0)` and `sys.exit(None)` end a script successfully, as in
    // `python script.py`.
    let result = result.or_else(|err| {
        if is_clean_exit(&err) {
            Ok(())
        } else {
            Err(err)
        }
    });
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
    let result = result.and(closed);
    Outcome {
        id: Some(interp.id()),
        duration,
        output,
        failure: result
            .err()
            .map(|err| Failure::from_error(&err, Phase::Run)),
    }
}

/// True for a `SystemExit` whose code means success (none or zero).
fn is_clean_exit(err: &Error) -> bool {
    err.as_python().is_some_and(|exc| {
        exc.type_name == "builtins.SystemExit" && matches!(exc.message.as_str(), "" | "0" | "None")
    })
}

/// Sets `sys.argv` and `sys.path[0]` the way `python SCRIPT` and `python -c CODE` do.
fn prepare(interp: &Interpreter, source: &Source) -> subinterp::Result<()> {
    match source {
        Source::Script(path) => {
            interp.set_argv(&[path.to_string_lossy()])?;
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
fn print_failure(source: &Source, id: Option<i64>, failure: &Failure, headed: bool) {
    let mut text = String::new();
    if headed {
        let who = match id {
            Some(id) => format!("interpreter {id}"),
            None => "interpreter not created".to_owned(),
        };
        text.push_str(&format!("subinterp: {} ({who}) failed:\n", source.label()));
    }
    if failure.traceback.is_empty() {
        let prefix = if headed { "" } else { "subinterp: " };
        text.push_str(&format!("{prefix}{}\n", failure.message));
    } else {
        text.push_str(&failure.traceback);
        if !failure.traceback.ends_with('\n') {
            text.push('\n');
        }
    }
    // One write, so failures of interpreters finishing together do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}
