//! `subinterp map MODULE:FUNC`: call a Python function on every record of a JSON Lines
//! file, in parallel interpreters, writing results in input order.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use subinterp::{Error, Pool, PoolConfig, PyException, Task, TaskOptions, Value};

use crate::{usage_error, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

const AFTER_HELP: &str = "\
Each input line is one JSON value; FUNC is called with it (as json.loads gives it) in one
of the pool's interpreters, and one output line is written per input line, in input order:
  {\"ok\": RESULT}                                   RESULT as json.dumps writes it
  {\"error\": {\"type\": \"builtins.ValueError\", \"message\": \"...\", \"traceback\": \"...\"}}
A record past its --timeout is interrupted inside its interpreter and reported with the
type builtins.TimeoutError. A line that is not valid JSON gives
  {\"error\": {\"type\": \"InvalidInput\", \"message\": \"...\", \"line\": N}}
and the run goes on. Blank lines are skipped. A result json.dumps cannot encode is an
error for that record (builtins.TypeError).

Progress is shown on stderr when it is a terminal; a summary line is printed at the end.

Exit status:
  0  every record succeeded
  1  at least one record failed (or was not valid JSON)
  2  usage or set-up error: bad option, unreadable input, module or function not found,
     an --init that raised";

/// Options of `subinterp map`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct MapArgs {
    /// The function to call on each record: `module:function` (or `module.function`).
    #[arg(value_name = "MODULE:FUNC")]
    target: String,

    /// JSON Lines input file (default: standard input).
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// JSON Lines output file (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Number of interpreters (default: the number of cores).
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,

    /// Deadline of each record, in seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,

    /// Prepend DIR to sys.path in every interpreter (repeatable). The current directory
    /// is on sys.path too, after these.
    #[arg(long = "path", value_name = "DIR")]
    paths: Vec<PathBuf>,

    /// Python code run once in each interpreter before it takes work (repeatable).
    #[arg(long, value_name = "CODE")]
    init: Vec<String>,
}

/// Defines the per-record entry point in every worker, after the user's `--init`.
fn wrapper(module: &str, path: &str) -> String {
    format!(
        "import importlib as _si_importlib, json as _si_json\n\
         _si_func = _si_importlib.import_module({module:?})\n\
         for _si_attr in {path:?}.split('.'):\n    \
             _si_func = getattr(_si_func, _si_attr)\n\
         if not callable(_si_func):\n    \
             raise TypeError({target:?} + ' is not callable')\n\
         def _subinterp_map_record(line, _func=_si_func, _loads=_si_json.loads, _dumps=_si_json.dumps):\n    \
             return _dumps(_func(_loads(line)), ensure_ascii=False, allow_nan=False)\n\
         del _si_importlib, _si_json, _si_func, _si_attr\n",
        target = format!("{module}:{path}")
    )
}

/// One output line in the making.
enum Pending {
    Task(Task),
    Invalid { line: usize, message: String },
}

#[derive(Serialize)]
struct ErrorRecord<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
}

/// Runs the command; returns the exit status.
pub fn main(args: MapArgs) -> u8 {
    let Ok((module, path)) = subinterp::parse_target(&args.target) else {
        return usage_error(
            "map",
            format!(
                "{:?} is not MODULE:FUNC (e.g. textstats:analyze)",
                args.target
            ),
        );
    };
    if args.workers == Some(0) {
        return usage_error("map", "--workers must be at least 1");
    }
    let timeout = match args.timeout {
        None => None,
        Some(secs) if secs.is_finite() && secs > 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(_) => return usage_error("map", "--timeout must be a positive number of seconds"),
    };
    let input: Box<dyn BufRead> = match &args.input {
        None => Box::new(io::stdin().lock()),
        Some(file) => match File::open(file) {
            Ok(f) => Box::new(BufReader::new(f)),
            Err(err) => return setup_error(format!("cannot read {}: {err}", file.display())),
        },
    };
    let output: Box<dyn Write> = match &args.output {
        None => Box::new(io::stdout().lock()),
        Some(file) => match File::create(file) {
            Ok(f) => Box::new(f),
            Err(err) => return setup_error(format!("cannot write {}: {err}", file.display())),
        },
    };

    let mut paths = args.paths.clone();
    if let Ok(cwd) = std::env::current_dir() {
        paths.push(cwd);
    }
    let runtime = match crate::start_runtime(&paths) {
        Ok(rt) => rt,
        Err(err) => return setup_error(format!("cannot start Python: {err}")),
    };
    let mut config = PoolConfig::new();
    if let Some(n) = args.workers {
        config.workers(n);
    }
    for code in &args.init {
        config.init(code.clone());
    }
    config.init(wrapper(&module, &path));
    let started = Instant::now();
    let pool = match Pool::new(&runtime, &config) {
        Ok(pool) => pool,
        Err(err) => return setup_error(describe_setup_error(&args.target, &err)),
    };
    let workers = pool.workers();

    let progress = if io::stderr().is_terminal() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {pos} records  {rate}  {elapsed}  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0} records/s", state.per_sec());
                    },
                ),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };

    let options = TaskOptions { timeout };
    let in_flight = 4 * workers;
    let mut out = BufWriter::new(output);
    let mut window: VecDeque<Pending> = VecDeque::with_capacity(in_flight);
    let (mut records, mut errors) = (0usize, 0usize);
    let mut write_failed = None;
    let mut finish = |pending: Pending, out: &mut BufWriter<Box<dyn Write>>| {
        let (text, ok) = render(pending);
        records += 1;
        if !ok {
            errors += 1;
            progress.set_message(format!("{errors} errors"));
        }
        progress.inc(1);
        if write_failed.is_none() {
            if let Err(err) = writeln!(out, "{text}") {
                write_failed = Some(err);
            }
        }
    };
    for (index, line) in input.lines().enumerate() {
        let line_no = index + 1;
        let line = match line {
            Ok(line) => line,
            Err(err) => {
                progress.finish_and_clear();
                return setup_error(format!("cannot read line {line_no} of the input: {err}"));
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let pending = match serde_json::from_str::<serde::de::IgnoredAny>(&line) {
            Err(err) => Pending::Invalid {
                line: line_no,
                message: format!("line {line_no} is not valid JSON: {err}"),
            },
            Ok(_) => match pool.submit_with("__main__:_subinterp_map_record", (line,), options) {
                Ok(task) => Pending::Task(task),
                Err(err) => Pending::Invalid {
                    line: line_no,
                    message: format!("could not submit the record: {err}"),
                },
            },
        };
        window.push_back(pending);
        if window.len() >= in_flight {
            if let Some(done) = window.pop_front() {
                finish(done, &mut out);
            }
        }
    }
    while let Some(done) = window.pop_front() {
        finish(done, &mut out);
    }
    let flushed = out.flush();
    progress.finish_and_clear();
    pool.shutdown(Duration::from_secs(5));
    if let Some(err) = write_failed.or(flushed.err()) {
        return setup_error(format!("cannot write the output: {err}"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "subinterp map: {records} records, {errors} errors, {elapsed:.2} s, {:.0} records/s ({workers} interpreters)",
        records as f64 / elapsed.max(1e-9)
    );
    if errors == 0 {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// The output line for a finished record, and whether it succeeded.
fn render(pending: Pending) -> (String, bool) {
    match pending {
        Pending::Invalid { line, message } => (
            error_line("InvalidInput", &message, None, Some(line)),
            false,
        ),
        Pending::Task(task) => match task.wait() {
            Ok(Value::Str(json)) => (format!("{{\"ok\": {json}}}"), true),
            Ok(other) => (
                error_line(
                    "subinterp.InternalError",
                    &format!("the record wrapper returned {}", other.python_type()),
                    None,
                    None,
                ),
                false,
            ),
            Err(Error::Python(exc)) => (python_error_line(&exc), false),
            Err(err) => (
                error_line("subinterp.Error", &err.to_string(), None, None),
                false,
            ),
        },
    }
}

fn python_error_line(exc: &PyException) -> String {
    error_line(&exc.type_name, &exc.message, Some(&exc.traceback), None)
}

fn error_line(kind: &str, message: &str, traceback: Option<&str>, line: Option<usize>) -> String {
    let record = ErrorRecord {
        error: ErrorBody {
            kind,
            message,
            traceback,
            line,
        },
    };
    serde_json::to_string(&record).unwrap_or_else(|_| "{\"error\": null}".to_owned())
}

fn describe_setup_error(target: &str, err: &Error) -> String {
    match err.as_python() {
        Some(exc) if exc.is("ModuleNotFoundError") || exc.is("AttributeError") => format!(
            "cannot find {target}: {}: {}\n(is its directory on --path? the current directory is searched too)",
            exc.short_type_name(),
            exc.message
        ),
        Some(exc) => format!(
            "setting up the interpreters failed ({target}, --init):\n{}",
            exc.traceback.trim_end()
        ),
        None => format!("cannot start the interpreters: {err}"),
    }
}

fn setup_error(message: String) -> u8 {
    eprintln!("subinterp map: {message}");
    EXIT_USAGE
}
