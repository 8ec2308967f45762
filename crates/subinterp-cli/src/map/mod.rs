//! `subinterp map MODULE:FUNC`: call a Python function on every record of a JSON Lines
//! file, in parallel interpreters, writing results in input order.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::Args;
use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender, TryRecvError};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use subinterp::guards::{exit_guard, ExitGuard};
use subinterp::{Error, Pool, PoolConfig, Task, TaskOptions, Value};

use crate::stdio;
use crate::{usage_error, EXIT_BROKEN_PIPE, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

const AFTER_HELP: &str = "\
Each input line is one JSON value; FUNC is called with it (as json.loads gives it) in one
of the pool's interpreters, and one output line is written per input line, in input order:
  {\"ok\": RESULT}                                   RESULT as json.dumps writes it
  {\"error\": {\"type\": \"builtins.ValueError\", \"message\": \"...\", \"traceback\": \"...\"}}
A record past its --timeout is interrupted inside its interpreter and reported with the
type builtins.TimeoutError. A line that is not valid UTF-8 or not valid JSON, or holds a
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
    target: String,

    /// JSON Lines input file (default: standard input).
    #[arg(short, long, value_name = "FILE")]
    input: Option<PathBuf>,

    /// JSON Lines output file (default: standard output).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Number of interpreters (default: the number of cores; at most 1024, and more than
    /// 4 per core draws a warning).
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,

    /// Deadline of each record, in seconds (positive, at most 1e9).
    #[arg(long, value_name = "SECS", value_parser = crate::parse_seconds)]
    timeout: Option<Duration>,

    /// Deadline for setting up each interpreter: importing the module and running the
    /// --init codes, in seconds (default: none; with --timeout, that deadline but at least
    /// 30 s).
    #[arg(long, value_name = "SECS", value_parser = crate::parse_seconds)]
    setup_timeout: Option<Duration>,

    /// Prepend DIR to sys.path in every interpreter (repeatable; DIR must exist). The
    /// current directory is on sys.path too, after these.
    #[arg(long = "path", value_name = "DIR")]
    paths: Vec<PathBuf>,

    /// Python code run once in each interpreter before it takes work (repeatable).
    #[arg(long, value_name = "CODE")]
    init: Vec<String>,
}

/// The most workers `--workers` accepts: each is an interpreter on a thread of its own.
const MAX_WORKERS: usize = 1024;

/// Past this many workers per core, `--workers` draws a warning.
const WORKERS_PER_CORE: usize = 4;

/// How long ending the pool may take past its grace period after a signal or a write
/// failure before the command leaves without it.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// Marks, in the name of an exception the tool's own set-up code raises, a target that
/// does not exist or cannot be called.
const BAD_TARGET: &str = "_SubinterpBadTarget";
/// Marks a target module whose own import raised (the cause is the module's error).
const IMPORT_FAILED: &str = "_SubinterpImportFailed";
/// Marks a record the tool's wrapper found to be a bad input.
const BAD_INPUT: &str = "_SubinterpBadInput";

/// Runs first in every worker, before the user's `--init`: takes private references to
/// what the record wrapper needs (`json` from the standard library, even when the user's
/// directory has a `json.py`, which stays importable as the user's own). Before it, the
/// exit guard makes `os._exit` raise, so that no Python code can end the whole process as
/// if the run succeeded.
const PRELUDE: &str = r#"
import sys as _si_sys, os as _si_os

class _SubinterpBadTarget(Exception):
    pass

class _SubinterpImportFailed(Exception):
    pass

class _SubinterpBadInput(ValueError):
    pass

def _si_guard():
    saved = _si_sys.path[:]
    roots = tuple({_si_os.path.join(p, "") for p in (_si_sys.base_prefix, _si_sys.base_exec_prefix)})
    _si_sys.path[:] = [p for p in saved if _si_os.path.join(p, "").startswith(roots)]
    before = set(_si_sys.modules)
    try:
        import json
    finally:
        _si_sys.path[:] = saved
    for name in set(_si_sys.modules) - before:
        if name == "json" or name.startswith("json."):
            del _si_sys.modules[name]

    return json.loads, json.dumps

_si_loads, _si_dumps = _si_guard()
del _si_guard
"#;

/// Imports the target and defines the per-record entry point in every worker, after the
/// user's `--init`.
fn wrapper(module: &str, path: &str) -> String {
    let target = format!("{module}:{path}");
    format!(
        r#"
def _si_find(module, path, target):
    try:
        __import__(module)
        func = _si_sys.modules[module]
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise {BAD_TARGET}(f"cannot find {{target}}: no module named {{exc.name!r}}") from None
        raise {IMPORT_FAILED}(f"importing {{module}} failed") from exc.with_traceback(exc.__traceback__.tb_next)
    except BaseException as exc:
        raise {IMPORT_FAILED}(f"importing {{module}} failed") from exc.with_traceback(exc.__traceback__.tb_next)
    for attr in path.split("."):
        try:
            func = getattr(func, attr)
        except AttributeError:
            raise {BAD_TARGET}(f"cannot find {{target}}: {{func!r}} has no attribute {{attr!r}}") from None
    if not callable(func):
        raise {BAD_TARGET}(f"{{target}} is not callable")
    return func

def _subinterp_map_record(line, _func=_si_find({module:?}, {path:?}, {target:?}), _loads=_si_loads, _dumps=_si_dumps):
    try:
        record = _loads(line)
    except (ValueError, RecursionError) as exc:
        raise {BAD_INPUT}(str(exc)) from None
    result = _func(record)
    try:
        text = _dumps(result, ensure_ascii=False, allow_nan=False)
    except ValueError:
        try:
            _dumps(_loads(line), allow_nan=False)
        except ValueError as exc:
            raise {BAD_INPUT}("a number is too large for a float (json.loads reads it as inf)") from None
        raise
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = _dumps(result, allow_nan=False)
    return text

del _si_find
"#
    )
}

/// One output line in the making.
enum Pending {
    /// A submitted record and its line number.
    Task(Task, usize),
    Invalid {
        line: usize,
        message: String,
    },
    /// A record whose output line is known, and whether it succeeded.
    Done((String, bool)),
}

/// How long the main loop waits for the first record at a time before it looks for
/// signals again.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

impl Pending {
    /// True when its output line can be written now.
    fn is_ready(&self) -> bool {
        match self {
            Pending::Task(task, _) => task.is_finished(),
            Pending::Invalid { .. } | Pending::Done(_) => true,
        }
    }

    /// Waits at most [`SIGNAL_CHECK`] for a submitted record to finish.
    fn wait_briefly(&mut self) {
        if !matches!(self, Pending::Task(..)) {
            return;
        }
        let placeholder = Pending::Done((String::new(), true));
        if let Pending::Task(task, line) = std::mem::replace(self, placeholder) {
            *self = match task.wait_timeout(SIGNAL_CHECK) {
                Ok(result) => Pending::Done(render_result(result, line)),
                Err(task) => Pending::Task(task, line),
            };
        }
    }
}

/// What the input reader sends.
enum Event {
    /// The next input line: its number and its bytes, without the line end.
    Line(usize, Vec<u8>),
    /// The input ended.
    Eof,
    /// Reading line `usize` of the input failed.
    ReadFailed(usize, io::Error),
}

/// Wakes the main loop: the first record of the window finished, or a signal came.
enum Wake {
    Ready,
    Signal(i32),
}

/// Sends [`Wake::Ready`] when the task it was polled for finishes.
struct TaskWaker(Sender<Wake>);

impl std::task::Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.0.send(Wake::Ready);
    }
}

/// How the stream of records ended.
enum End {
    /// Every record was read and written.
    Done,
    /// Reading the input failed at this line; the records before it were written.
    ReadFailed(usize, io::Error),
    /// The pool could not take the record of this line (it has no workers left); the
    /// records before it were written.
    PoolFailed(usize, Error),
    /// Writing the output failed (or the reader of a pipe went away).
    WriteFailed(io::Error),
    /// SIGINT or SIGTERM.
    Signal(i32),
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

/// Where the results go.
enum Destination {
    /// The command's own copy of stdout, taken at start.
    Stdout(File),
    /// A file, created (or truncated) once set-up succeeded.
    Path(PathBuf),
}

/// Runs the command; returns the exit status.
pub fn main(args: MapArgs) -> u8 {
    let Ok((module, path)) = subinterp::parse_target(&args.target) else {
        return usage_error(
            "map",
            ErrorKind::ValueValidation,
            format!(
                "{:?} is not MODULE:FUNC (e.g. textstats:analyze)",
                args.target
            ),
        );
    };
    if args.workers == Some(0) {
        return usage_error(
            "map",
            ErrorKind::ValueValidation,
            "--workers must be at least 1",
        );
    }
    let timeout = args.timeout;
    if let Err(status) = crate::check_paths("map", &args.paths) {
        return status;
    }
    if let Some(workers) = args.workers {
        if workers > MAX_WORKERS {
            return usage_error(
                "map",
                ErrorKind::ValueValidation,
                format!("--workers must be at most {MAX_WORKERS}, one interpreter and thread each"),
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        if workers > WORKERS_PER_CORE * cores {
            eprintln!(
                "subinterp map: warning: {workers} workers on {cores} cores: more than \
                 {WORKERS_PER_CORE} per core only adds memory and start-up time for \
                 CPU-bound functions"
            );
        }
    }

    // The command's own streams, before any Python code runs: what Python writes to
    // stdout goes to stderr, and it reads an empty stdin.
    let destination = match &args.output {
        None => match stdio::take_stdout() {
            Ok(file) => Destination::Stdout(file),
            Err(err) => return setup_error(format!("cannot use standard output: {err}")),
        },
        Some(file) => {
            if let Err(err) = stdio::stdout_to_stderr() {
                return setup_error(format!("cannot redirect standard output: {err}"));
            }
            Destination::Path(file.clone())
        }
    };
    let input = match &args.input {
        None => stdio::take_stdin().map_err(|err| format!("cannot read standard input: {err}")),
        Some(file) => File::open(file)
            .map_err(|err| format!("cannot read {}: {err}", file.display()))
            .and_then(|f| {
                stdio::stdin_from_null()
                    .map(|()| f)
                    .map_err(|err| format!("cannot redirect standard input: {err}"))
            }),
    };
    let input = match input {
        Ok(input) => input,
        Err(message) => return setup_error(message),
    };
    if let Some(message) = same_file(&input, &destination) {
        return usage_error("map", ErrorKind::ArgumentConflict, message);
    }

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
    if let Some(timeout) = timeout {
        config.timeout(timeout);
    }
    if let Some(setup) = args.setup_timeout {
        config.setup_timeout(setup);
    }
    config.init(exit_guard(ExitGuard::Refuse("a map function or --init")));
    config.init(PRELUDE);
    for code in &args.init {
        config.init(code.clone());
    }
    config.init(wrapper(&module, &path));
    let started = Instant::now();
    let pool = match Pool::new(&runtime, &config) {
        Ok(pool) => pool,
        Err(err) => return setup_error(describe_setup_error(&module, &err)),
    };
    let workers = pool.workers();
    let output = match destination {
        Destination::Stdout(file) => file,
        Destination::Path(path) => match File::create(&path) {
            Ok(file) => file,
            Err(err) => {
                pool.shutdown_now();
                return setup_error(format!("cannot write {}: {err}", path.display()));
            }
        },
    };

    let (wake_tx, wake_rx) = unbounded::<Wake>();
    if let Err(err) = watch_signals(wake_tx.clone()) {
        pool.shutdown_now();
        return setup_error(format!("cannot handle signals: {err}"));
    }
    let progress = progress_bar();
    let in_flight = 4 * workers;
    let lines = read_lines(input, 2);
    let mut sink = Sink {
        out: BufWriter::new(output),
        records: 0,
        errors: 0,
        progress: &progress,
    };
    let mut window = VecDeque::with_capacity(in_flight);
    let waker = Waker::from(Arc::new(TaskWaker(wake_tx)));
    let stream = Stream {
        pool: &pool,
        options: TaskOptions { timeout },
        in_flight,
        lines: &lines,
        wakes: &wake_rx,
        waker: &waker,
    };
    let end = stream.run(&mut sink, &mut window);
    let ended;
    let status = match end {
        End::Done | End::ReadFailed(..) | End::PoolFailed(..) => {
            // Every record has its result: write them and the summary, and settle the
            // exit status, before what is left, the interpreters' own ending (threads
            // the user's code started, atexit handlers, and CPython's bugs there).
            let outcome = match sink.flush() {
                Err(err) => Err(err),
                Ok(()) => {
                    progress.finish_and_clear();
                    sink.summary("", started, workers);
                    Ok(match end {
                        End::ReadFailed(line, err) => {
                            setup_error(format!("cannot read line {line} of the input: {err}"))
                        }
                        End::PoolFailed(line, err) => {
                            setup_error(format!("stopped before line {line} of the input: {err}"))
                        }
                        _ if sink.errors == 0 => EXIT_OK,
                        _ => EXIT_FAILED,
                    })
                }
            };
            let code = outcome.unwrap_or_else(|err| write_failed(&err));
            crate::settle("map", code);
            ended = end_pool(pool, Duration::from_secs(5));
            Ok(code)
        }
        End::WriteFailed(err) => {
            ended = end_pool(pool, Duration::ZERO);
            Err(err)
        }
        End::Signal(signal) => {
            // Records already queued or running get a moment to finish, then what is
            // left is cancelled. The output stays a prefix of the input: results are
            // written up to the first record that did not finish.
            ended = end_pool(pool, Duration::from_secs(1));
            let mut unfinished = 0usize;
            let mut written = Ok(());
            for pending in window {
                let done = match pending {
                    Pending::Task(task, line) => match task.wait_timeout(Duration::ZERO) {
                        Err(_unfinished) => None,
                        Ok(Err(Error::Cancelled)) => None,
                        Ok(Err(Error::Python(exc))) if exc.is("KeyboardInterrupt") => None,
                        Ok(result) => Some(render_result(result, line)),
                    },
                    invalid => Some(render(invalid)),
                };
                match done {
                    Some((text, ok)) if unfinished == 0 && written.is_ok() => {
                        written = sink.write(&text, ok);
                    }
                    _ => unfinished += 1,
                }
            }
            match written.and_then(|()| sink.flush()) {
                Err(err) => Err(err),
                Ok(()) => {
                    progress.finish_and_clear();
                    let name = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    };
                    let dropped = match unfinished {
                        0 => String::new(),
                        n => format!(" ({n} records in flight not written)"),
                    };
                    sink.summary(&format!("stopped by {name}{dropped}: "), started, workers);
                    crate::settle("map", 128 + signal as u8);
                    Ok(128 + signal as u8)
                }
            }
        }
    };
    progress.finish_and_clear();
    let status = status.unwrap_or_else(|err| write_failed(&err));
    if !ended {
        // Past the grace period: leave the interpreter behind rather than hang.
        eprintln!(
            "subinterp map: warning: an interpreter did not end in time (a thread of the \
             user's code still running, or code stuck in C); exiting without waiting for it"
        );
        std::process::exit(i32::from(status));
    }
    status
}

/// Ends the pool: what is queued and running gets `grace` to finish, then is cancelled.
/// Gives up waiting a few seconds later, as code stuck in C can hold an interpreter for
/// ever; returns whether the pool ended.
fn end_pool(pool: Pool, grace: Duration) -> bool {
    let (done_tx, done_rx) = bounded(1);
    let spawned = std::thread::Builder::new()
        .name("subinterp-map-shutdown".into())
        .spawn(move || {
            if grace.is_zero() {
                pool.shutdown_now();
            } else {
                pool.shutdown(grace);
            }
            let _ = done_tx.send(());
        });
    spawned.is_ok() && done_rx.recv_timeout(grace + SHUTDOWN_LIMIT).is_ok()
}

/// Refuses an output that is the input file itself (compared by device and inode, so
/// through symbolic and hard links too): writing would destroy the input.
fn same_file(input: &File, destination: &Destination) -> Option<String> {
    let input = input.metadata().ok()?;
    if !input.is_file() {
        return None;
    }
    let (output, name) = match destination {
        Destination::Stdout(file) => (file.metadata().ok()?, "standard output".to_owned()),
        Destination::Path(path) => (std::fs::metadata(path).ok()?, path.display().to_string()),
    };
    (input.dev() == output.dev() && input.ino() == output.ino()).then(|| {
        format!("the output ({name}) is the input file: writing it would destroy the input")
    })
}

/// The most lines the reader sends at once.
const BATCH: usize = 256;

/// Reads the input on a thread of its own, line by line as bytes, and sends the lines
/// in batches: a line as soon as it is read, with the lines after it that are already
/// buffered (no waiting for more input). At most `capacity` batches are ahead of the
/// main loop.
fn read_lines(input: File, capacity: usize) -> Receiver<Vec<Event>> {
    let (tx, rx) = bounded(capacity);
    let reader = move || {
        let mut reader = BufReader::with_capacity(64 << 10, input);
        let mut number = 0;
        loop {
            let mut batch = Vec::new();
            let mut last = false;
            while !last
                && (batch.is_empty() || (batch.len() < BATCH && reader.buffer().contains(&b'\n')))
            {
                let mut line = Vec::new();
                let event = match reader.read_until(b'\n', &mut line) {
                    Ok(0) => Event::Eof,
                    Ok(_) => {
                        number += 1;
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        Event::Line(number, line)
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => Event::ReadFailed(number + 1, err),
                };
                last = !matches!(event, Event::Line(..));
                batch.push(event);
            }
            if tx.send(batch).is_err() || last {
                break;
            }
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("subinterp-map-input".into())
        .spawn(reader)
    {
        let (tx, rx) = bounded(1);
        let _ = tx.send(vec![Event::ReadFailed(1, err)]);
        return rx;
    }
    rx
}

/// On the first SIGINT or SIGTERM, wakes the main loop with it; a second one ends the
/// process at once, with status 128 + the signal. A signal ignored when the command
/// started (a background job of a script, `nohup`) stays ignored.
fn watch_signals(wakes: Sender<Wake>) -> io::Result<()> {
    let handled: Vec<i32> = [SIGINT, SIGTERM]
        .into_iter()
        .filter(|&signal| !stdio::ignored_at_start(signal))
        .collect();
    if handled.is_empty() {
        return Ok(());
    }
    let again = Arc::new(AtomicBool::new(false));
    for &signal in &handled {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, Arc::clone(&again))?;
        signal_hook::flag::register(signal, Arc::clone(&again))?;
    }
    let mut signals = Signals::new(&handled)?;
    std::thread::Builder::new()
        .name("subinterp-map-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let _ = wakes.send(Wake::Signal(signal));
            }
        })?;
    Ok(())
}

fn progress_bar() -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
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
}

/// The output and what was written to it.
struct Sink<'a> {
    out: BufWriter<File>,
    records: usize,
    errors: usize,
    progress: &'a ProgressBar,
}

impl Sink<'_> {
    fn write(&mut self, text: &str, ok: bool) -> io::Result<()> {
        self.out.write_all(text.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.records += 1;
        if !ok {
            self.errors += 1;
            self.progress.set_message(format!("{} errors", self.errors));
        }
        self.progress.inc(1);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn summary(&self, what: &str, started: Instant, workers: usize) {
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "subinterp map: {what}{} records, {} errors, {elapsed:.2} s, {:.0} records/s ({workers} interpreters)",
            self.records,
            self.errors,
            self.records as f64 / elapsed.max(1e-9)
        );
    }
}

/// The main loop's inputs.
struct Stream<'a> {
    pool: &'a Pool,
    options: TaskOptions,
    in_flight: usize,
    lines: &'a Receiver<Vec<Event>>,
    wakes: &'a Receiver<Wake>,
    waker: &'a Waker,
}

impl Stream<'_> {
    /// Submits input lines as they come, at most `in_flight` at a time, and writes each
    /// result, in input order, as soon as it and those before it are ready. The output is
    /// flushed whenever the loop has to wait (the input is idle or the next result is not
    /// ready), so results show as they are computed even when the input is slow.
    fn run(&self, sink: &mut Sink<'_>, window: &mut VecDeque<Pending>) -> End {
        let mut input_open = true;
        let mut stopped = None;
        let mut polled = None;
        let mut batch = Vec::new().into_iter();
        loop {
            while let Ok(wake) = self.wakes.try_recv() {
                if let Wake::Signal(signal) = wake {
                    return End::Signal(signal);
                }
            }
            if let Err(err) = self.write_ready(sink, window) {
                return End::WriteFailed(err);
            }
            if !input_open && window.is_empty() {
                return stopped.unwrap_or(End::Done);
            }
            let room = input_open && window.len() < self.in_flight;
            if room {
                if let Some(event) = batch.next() {
                    self.take(event, window, &mut input_open, &mut stopped);
                    continue;
                }
                match self.lines.try_recv() {
                    Ok(events) => {
                        batch = events.into_iter();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => {
                        input_open = false;
                        continue;
                    }
                    Err(TryRecvError::Empty) => {}
                }
            }
            // Nothing to do until a line comes or the first record finishes.
            if let Err(err) = sink.flush() {
                return End::WriteFailed(err);
            }
            if !room {
                // Only the first record can let the loop go on: wait for it alone (the
                // cheapest wait), looking for signals now and then.
                if let Some(front) = window.front_mut() {
                    front.wait_briefly();
                }
                continue;
            }
            // Waiting for input as well: the first record wakes the loop when it finishes.
            if let Some(Pending::Task(task, line)) = window.front_mut() {
                if polled != Some(task.id()) {
                    polled = Some(task.id());
                    let line = *line;
                    let mut cx = Context::from_waker(self.waker);
                    if let Poll::Ready(result) = Pin::new(task).poll(&mut cx) {
                        window[0] = Pending::Done(render_result(result, line));
                        continue;
                    }
                }
            }
            select! {
                recv(self.lines) -> events => match events {
                    Ok(events) => batch = events.into_iter(),
                    Err(_) => input_open = false,
                },
                recv(self.wakes) -> wake => {
                    if let Ok(Wake::Signal(signal)) = wake {
                        return End::Signal(signal);
                    }
                }
            }
        }
    }

    /// Writes the finished records at the front of the window.
    fn write_ready(&self, sink: &mut Sink<'_>, window: &mut VecDeque<Pending>) -> io::Result<()> {
        while window.front().is_some_and(Pending::is_ready) {
            if let Some(done) = window.pop_front() {
                let (text, ok) = render(done);
                sink.write(&text, ok)?;
            }
        }
        Ok(())
    }

    /// Takes one event of the input reader: submits a line, or notes the input's end.
    fn take(
        &self,
        event: Event,
        window: &mut VecDeque<Pending>,
        input_open: &mut bool,
        stopped: &mut Option<End>,
    ) {
        let (line_no, bytes) = match event {
            Event::Line(line_no, bytes) => (line_no, bytes),
            Event::Eof => {
                *input_open = false;
                return;
            }
            Event::ReadFailed(line_no, err) => {
                *input_open = false;
                *stopped = Some(End::ReadFailed(line_no, err));
                return;
            }
        };
        if bytes.trim_ascii().is_empty() {
            return;
        }
        let invalid = |message: String| Pending::Invalid {
            line: line_no,
            message,
        };
        let pending = match String::from_utf8(bytes) {
            Err(err) => invalid(format!(
                "line {line_no} is not valid UTF-8: {}",
                err.utf8_error()
            )),
            Ok(line) => match serde_json::from_str::<serde::de::IgnoredAny>(&line) {
                Err(err) => invalid(format!("line {line_no} is not valid JSON: {err}")),
                Ok(_) => match self.pool.submit_with(
                    "__main__:_subinterp_map_record",
                    (line,),
                    self.options,
                ) {
                    Ok(task) => Pending::Task(task, line_no),
                    Err(err) => {
                        // No interpreter can take it (none could be set up again): stop
                        // reading; what was submitted is written.
                        *input_open = false;
                        *stopped = Some(End::PoolFailed(line_no, err));
                        return;
                    }
                },
            },
        };
        window.push_back(pending);
    }
}

/// The output line for a finished record, and whether it succeeded.
fn render(pending: Pending) -> (String, bool) {
    match pending {
        Pending::Invalid { line, message } => (
            error_line("InvalidInput", &message, None, Some(line)),
            false,
        ),
        Pending::Task(task, line) => render_result(task.wait(), line),
        Pending::Done(done) => done,
    }
}

/// The output line for a record's result, and whether it succeeded.
fn render_result(result: subinterp::Result<Value>, line: usize) -> (String, bool) {
    let line = match result {
        Ok(Value::Str(json)) => return (format!("{{\"ok\": {json}}}"), true),
        Ok(other) => error_line(
            "subinterp.InternalError",
            &format!("the record wrapper returned {}", other.python_type()),
            None,
            None,
        ),
        Err(Error::Python(exc)) if exc.type_name.ends_with(BAD_INPUT) => error_line(
            "InvalidInput",
            &format!("line {line}: {}", exc.message),
            None,
            Some(line),
        ),
        Err(Error::Python(exc)) => error_line(
            &exc.type_name,
            &exc.message,
            Some(&without_wrapper_frame(&exc.traceback)),
            None,
        ),
        Err(err) => error_line("subinterp.Error", &err.to_string(), None, None),
    };
    (line, false)
}

/// The traceback without the line of the tool's own record wrapper.
fn without_wrapper_frame(traceback: &str) -> String {
    traceback
        .split_inclusive('\n')
        .filter(|line| {
            !(line.starts_with("  File \"<string>\", line ")
                && line.trim_end().ends_with(", in _subinterp_map_record"))
        })
        .collect()
}

/// An error line, spaced as `json.dumps` spaces the `ok` lines.
fn error_line(kind: &str, message: &str, traceback: Option<&str>, line: Option<usize>) -> String {
    let record = ErrorRecord {
        error: ErrorBody {
            kind,
            message,
            traceback,
            line,
        },
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, DumpsFormatter);
    match record.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => "{\"error\": null}".to_owned(),
    }
}

/// Separators as Python's `json.dumps` writes them: `", "` and `": "`.
struct DumpsFormatter;

impl serde_json::ser::Formatter for DumpsFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// What to say when the pool could not be set up: the target is not there, its module
/// raised while being imported, or an `--init` raised.
fn describe_setup_error(module: &str, err: &Error) -> String {
    match err.as_python() {
        Some(exc) if exc.is("TimeoutError") && exc.message.contains("set-up deadline") => {
            // The library's own TimeoutError, with the traceback of where the set-up was.
            let in_import = exc.traceback.contains(IMPORT_FAILED);
            let traceback = match (&exc.cause, in_import) {
                (Some(cause), true) => cause.traceback.as_str(),
                _ => exc.traceback.as_str(),
            };
            let place = if in_import {
                format!("importing {module}")
            } else {
                "an --init code".to_owned()
            };
            let mut text = format!(
                "setting up the interpreters timed out in {place}: {} (--setup-timeout)",
                exc.message
            );
            if !traceback.trim().is_empty() {
                text.push_str(":\n");
                text.push_str(traceback.trim_end());
            }
            text
        }
        Some(exc) if exc.type_name.ends_with(BAD_TARGET) => {
            let hint = if exc.message.contains("no module named") {
                "\n(is its directory on --path? the current directory is searched too)"
            } else {
                ""
            };
            format!("{}{hint}", exc.message)
        }
        Some(exc) if exc.type_name.ends_with(IMPORT_FAILED) => {
            let traceback = exc
                .cause
                .as_ref()
                .map_or(exc.traceback.as_str(), |cause| cause.traceback.as_str());
            format!(
                "importing {module} raised an exception:\n{}",
                traceback.trim_end()
            )
        }
        Some(exc) => format!(
            "an --init code raised an exception:\n{}",
            exc.traceback.trim_end()
        ),
        None => format!("cannot start the interpreters: {err}"),
    }
}

/// Reports an output that could not be written. A reader that went away (a closed pipe,
/// as with `| head`) ends the command quietly, as it ends other Unix tools.
fn write_failed(err: &io::Error) -> u8 {
    if err.kind() == io::ErrorKind::BrokenPipe {
        return EXIT_BROKEN_PIPE;
    }
    setup_error(format!("cannot write the output: {err}"))
}

fn setup_error(message: String) -> u8 {
    eprintln!("subinterp map: {message}");
    EXIT_USAGE
}
