//! Worker processes of a [`Pool`](super::Pool): where a task runs when an isolated
//! interpreter refuses an extension module it imports (numpy, pandas, pydantic-core, ...),
//! or when the pool is told to send its target there.
//!
//! A worker process is started fresh — never forked from this process — as the runtime's
//! own Python executable (`sys.executable` of the pool's interpreters: the virtual
//! environment's `python`, or the Python the crate was built against; another one with
//! [`PoolConfig::process_python`](super::PoolConfig::process_python)) running
//! `process_worker.py` with `-c`. It gets the pool's `sys.path` and runs the pool's `init`
//! code in its `__main__`, then takes tasks over its stdin and answers on its stdout, in
//! length-prefixed frames each holding one value in the wire format. A task crosses as
//! its target, then its arguments, already in the wire format, as a raw frame of their
//! own (not copied into a message); its result comes back the same way, and an
//! exception as its type, message, traceback, cause and context.
//!
//! Processes start only when a task needs one, up to the pool's number of workers. At a
//! task's deadline the process is told to raise `TimeoutError` in the task (it keeps
//! running); if the task is still running after the grace period (stuck in C code), the
//! process is killed and replaced. A process that dies fails only the task it ran, with
//! [`Error::WorkerDied`] naming the signal or the exit status, and is replaced.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, unbounded, Receiver, Sender};

use super::{lock, timed_out, usage, Queued, Shared, RUNNING, STOPPING};
use crate::call::Target;
use crate::error::{Error, ExitStatus, PyException, Result};
use crate::value::wire;
use crate::value::Value;
use crate::wait::InterruptReason;

/// The worker's source, run with `python -c`.
const WORKER_SOURCE: &str = include_str!("process_worker.py");

/// Where worker processes come from: the Python to run and the `sys.path` to give it,
/// read once from the pool's first interpreter.
#[derive(Clone, Debug)]
pub(super) struct Spec {
    pub(super) python: PathBuf,
    pub(super) path: Vec<String>,
    /// `sys.builtin_module_names` of the interpreters: those a worker process's Python
    /// lacks (the `subinterp` module, host modules) live only in the host process.
    pub(super) builtins: Vec<String>,
}

/// The process side of a pool.
pub(super) struct Procs {
    queue_tx: Sender<Queued>,
    queue_rx: Receiver<Queued>,
    pub(super) spec: OnceLock<Spec>,
    keepers: AtomicUsize,
    idle: AtomicUsize,
    /// Target modules known to need a process, with why.
    routed: Mutex<HashMap<String, Refusal>>,
    /// Tasks that ran (to a result or an error) in a worker process.
    ran: AtomicU64,
    /// Set when the pool's `init` code was refused in an interpreter: every task runs in
    /// a worker process.
    all: AtomicBool,
    /// The refusal of the pool's `init` code, once `all` is set.
    init_refusal: OnceLock<Refusal>,
    /// Dropped when the pool starts to drain (a graceful shutdown), to wake idle keepers.
    drain_tx: Mutex<Option<Sender<()>>>,
    drain_rx: Receiver<()>,
}

impl Procs {
    pub(super) fn new() -> Procs {
        let (queue_tx, queue_rx) = unbounded();
        let (drain_tx, drain_rx) = bounded(0);
        Procs {
            drain_tx: Mutex::new(Some(drain_tx)),
            drain_rx,
            queue_tx,
            queue_rx,
            spec: OnceLock::new(),
            keepers: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            routed: Mutex::new(HashMap::new()),
            ran: AtomicU64::new(0),
            all: AtomicBool::new(false),
            init_refusal: OnceLock::new(),
        }
    }

    pub(super) fn ran(&self) -> u64 {
        self.ran.load(Ordering::Relaxed)
    }

    /// Whether a task of `target` goes to a process from the start.
    pub(super) fn routes(&self, shared: &Shared, target: &Target, route: &str) -> bool {
        // A module names itself and its submodules; the task's route is the module of
        // the function a runner calls (the package's tasks).
        let within = |module: &str, name: &str| {
            module == name
                || module
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('.'))
        };
        let named = shared.config.process_targets.iter().any(|name| {
            within(target.module(), name) || within(route, name) || *name == target.to_string()
        });
        named || self.all.load(Ordering::Acquire) || lock(&self.routed).contains_key(route)
    }

    /// Whether `err`, the failure of an interpreter's set-up, is a refusal of an extension
    /// module the pool's `init` code imports, with the fallback on: every task then runs
    /// in worker processes (said once).
    pub(super) fn init_refused(&self, shared: &Shared, err: &Error) -> bool {
        if !shared.config.process_fallback || self.spec.get().is_none() {
            return false;
        }
        let Some(refusal) = err.as_python().and_then(refusal) else {
            return false;
        };
        let _ = self.init_refusal.set(refusal.clone());
        if !self.all.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                culprit = %refusal.culprit,
                "an isolated interpreter refused extension module {} ({}) imported by the \
                 pool's init code: every task of the pool runs in worker processes",
                refusal.culprit,
                refusal.reason,
            );
        }
        true
    }

    /// Why a task of `target` runs in a worker process, in words that end "this task runs
    /// in a worker process because ...": told to the process with the task, for the
    /// errors of what lives only in the host process.
    fn why(&self, target: &Target, route: &str) -> String {
        let refused = |refusal: &Refusal| {
            format!(
                "an isolated interpreter refused {} ({})",
                refusal.culprit, refusal.reason
            )
        };
        if let Some(refusal) = lock(&self.routed).get(route) {
            return refused(refusal);
        }
        if let Some(refusal) = self.init_refusal.get() {
            return format!("{} imported by the pool's init code", refused(refusal));
        }
        format!(
            "the pool sends {} to worker processes (PoolConfig::in_processes)",
            target.module()
        )
    }

    /// Records that the tasks of module `route` need a process, saying so once.
    pub(super) fn record_refusal(&self, route: &str, refusal: &Refusal) {
        let mut routed = lock(&self.routed);
        if routed.contains_key(route) {
            return;
        }
        routed.insert(route.to_owned(), refusal.clone());
        drop(routed);
        tracing::warn!(
            module = route,
            culprit = %refusal.culprit,
            "an isolated interpreter refused extension module {} ({}): tasks of module {} \
             run in worker processes from now on",
            refusal.culprit,
            refusal.reason,
            route
        );
    }

    /// Queues a task for a worker process, starting one if none is idle.
    pub(super) fn send(&self, shared: &Arc<Shared>, task: Queued) {
        if self.queue_tx.send(task).is_err() {
            return; // unreachable: the receiver lives as long as the sender
        }
        let wanted = |procs: &Procs| {
            procs.idle.load(Ordering::Acquire) < procs.queue_rx.len()
                && procs.keepers.load(Ordering::Acquire) < shared.config.workers
        };
        if !wanted(self) {
            return;
        }
        let mut threads = lock(&shared.keeper_threads);
        if !wanted(self) || shared.state.load(Ordering::Acquire) == STOPPING {
            return;
        }
        self.keepers.fetch_add(1, Ordering::AcqRel);
        let kept = Arc::clone(shared);
        let started = std::thread::Builder::new()
            .name("subinterp-process-keeper".into())
            .spawn(move || {
                keep(&kept);
                kept.procs.keepers.fetch_sub(1, Ordering::AcqRel);
            });
        match started {
            Ok(handle) => threads.push(handle),
            Err(err) => {
                self.keepers.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(error = %err, "could not start a worker process keeper");
            }
        }
    }

    /// The pool drains: idle keepers end once nothing can reach them any more.
    pub(super) fn drain(&self) {
        lock(&self.drain_tx).take();
    }

    /// Cancels the tasks queued for processes (an immediate shutdown).
    pub(super) fn cancel_queued(&self) {
        while let Ok(queued) = self.queue_rx.try_recv() {
            queued.state.complete(Err(Error::Cancelled));
        }
    }

    /// Fails the queued tasks with `err` (no keeper could start a process).
    fn fail_queued(&self, err: &Error) {
        while let Ok(queued) = self.queue_rx.try_recv() {
            queued
                .state
                .complete(Err(Error::WorkerDied(err.to_string())));
        }
    }
}

/// Why an isolated interpreter refused a task: the extension module and CPython's (or
/// the module's own) words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The extension module refused, as named in the error (or "an extension module").
    pub(crate) culprit: String,
    /// The `ImportError` message that says it.
    pub(crate) reason: String,
}

/// The messages by which an extension module is refused in an isolated interpreter:
/// CPython's own (`Python/import.c`, 3.12 and 3.13: `module X does not support loading in
/// subinterpreters`, raised for a single-phase module and for a multi-phase one that does
/// not declare support), and the ones modules raise from their own initialisation when
/// they can be loaded once per process (CPython's documented guard, numpy's), once per
/// interpreter (Cython), or not in subinterpreters at all (PyO3).
const REFUSALS: &[&str] = &[
    "does not support loading in subinterpreters",
    "cannot load module more than once per process",
    "can only be loaded into one interpreter per process",
    "PyO3 modules do not yet support subinterpreters",
    "PyO3 modules compiled for CPython 3.8 or older may only be initialized once per interpreter process",
];

/// Whether `message` (an `ImportError`'s) says that an isolated interpreter refused an
/// extension module, in one of the words a pool moves a task to a process for.
pub(crate) fn is_refusal(message: &str) -> bool {
    REFUSALS.iter().any(|pattern| message.contains(pattern))
}

/// Python code that gives the Python package's task runner (`_subinterp_worker`, which
/// reports a task's exceptions as its result) the refusal messages, so that it lets a
/// refusal reach the pool as an exception, and the pool can move the task to a process.
#[cfg(feature = "extension-module")]
pub(crate) fn refusals_for_runner() -> String {
    let patterns: Vec<String> = REFUSALS.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "__import__('sys').modules['_subinterp_worker']._SUBINTERP_REFUSALS = ({},)\n",
        patterns.join(", ")
    )
}

/// The refusal in `exc` or its chain (`__cause__`, `__context__`): numpy and pandas wrap
/// CPython's `ImportError` in one of their own.
pub(crate) fn refusal(exc: &PyException) -> Option<Refusal> {
    let mut stack = vec![exc];
    let mut depth = 0;
    while let Some(exc) = stack.pop() {
        depth += 1;
        if depth > 64 {
            break;
        }
        if exc.is("ImportError") || exc.is("ModuleNotFoundError") {
            for pattern in REFUSALS {
                if let Some(at) = exc.message.find(pattern) {
                    let line = exc.message[..at]
                        .rsplit('\n')
                        .next()
                        .unwrap_or_default()
                        .trim();
                    // "module X does not support ...", maybe after the wrapper's words
                    // ("Original error was: module X ...").
                    let culprit = line
                        .rsplit_once("module ")
                        .map(|(_, name)| name.trim())
                        .filter(|name| !name.is_empty() && !name.contains(' '))
                        .map_or_else(|| "an extension module".to_owned(), str::to_owned);
                    let reason = exc.message[at.saturating_sub(line.len())..]
                        .lines()
                        .next()
                        .unwrap_or(pattern)
                        .trim()
                        .to_owned();
                    return Some(Refusal { culprit, reason });
                }
            }
        }
        stack.extend(exc.context.as_deref());
        stack.extend(exc.cause.as_deref());
    }
    None
}

/// The one way into a running worker process from other threads: its stdin, to ask the
/// running task to stop.
pub(super) struct Control {
    stdin: Mutex<ChildStdin>,
    /// The task running now (0: none).
    current: AtomicU64,
    cancel_tx: Sender<()>,
}

impl Control {
    /// Asks the process to raise in `task` (`TimeoutError` or `KeyboardInterrupt`), if it
    /// still runs it.
    pub(super) fn interrupt(&self, task: u64, reason: InterruptReason) {
        if self.current.load(Ordering::Acquire) != task {
            return;
        }
        if reason == InterruptReason::Cancelled {
            let _ = self.cancel_tx.try_send(());
        }
        let msg = Value::Tuple(vec![
            Value::from("interrupt"),
            Value::Int(i64::from(reason.code())),
        ]);
        let _ = write_frame(&mut *lock(&self.stdin), &msg);
    }
}

fn write_frame(out: &mut impl Write, msg: &Value) -> Result<()> {
    write_frames(out, msg, None)
}

/// Writes `msg` in a frame, then `raw` as it is in a frame of its own if given: the
/// message and the raw frame's length in one write, the raw bytes in another.
fn write_frames(out: &mut impl Write, msg: &Value, raw: Option<&[u8]>) -> Result<()> {
    let frame_len = |n: usize| {
        u32::try_from(n)
            .map(u32::to_le_bytes)
            .map_err(|_| Error::InvalidArgument("a task's data is larger than 4 GiB".into()))
    };
    let data = wire::encode(msg)?;
    let mut head = Vec::with_capacity(data.len() + 8);
    head.extend(frame_len(data.len())?);
    head.extend(data);
    if let Some(raw) = raw {
        head.extend(frame_len(raw.len())?);
    }
    let io = |e: std::io::Error| Error::WorkerDied(format!("cannot write to it: {e}"));
    out.write_all(&head).map_err(io)?;
    if let Some(raw) = raw {
        out.write_all(raw).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// What the reader thread of a process hears.
#[derive(Debug)]
enum Heard {
    /// A message; for `("ok",)`, the raw frame that followed it is its second item (the
    /// result, in the wire format), moved there without a copy.
    Frame(Value),
    /// The process closed its stdout (it ended) or wrote something unreadable.
    End(Option<String>),
}

/// Reads one frame; `None` at the end of the input (or a truncated frame).
fn read_raw(out: &mut impl Read) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    out.read_exact(&mut len).ok()?;
    let len = u32::from_le_bytes(len) as usize;
    // Room for the whole frame at once (no copy as it grows), but not for what a
    // corrupt length may claim: past 256 MiB it grows with the bytes that really come.
    let mut data = Vec::with_capacity(len.min(1 << 28));
    let got = out.take(len as u64).read_to_end(&mut data).ok()?;
    (got == len).then_some(data)
}

fn read_frames(mut out: impl Read, tx: Sender<Heard>) {
    loop {
        let Some(data) = read_raw(&mut out) else {
            let _ = tx.send(Heard::End(None));
            return;
        };
        let heard = match wire::decode(&data) {
            Ok(Value::Tuple(mut items))
                if reply_kind_of(&items) == Some("ok") && items.len() == 1 =>
            {
                match read_raw(&mut out) {
                    Some(result) => {
                        items.push(Value::Bytes(result));
                        Heard::Frame(Value::Tuple(items))
                    }
                    None => Heard::End(Some("unreadable reply: a result cut short".into())),
                }
            }
            Ok(value) => Heard::Frame(value),
            Err(err) => Heard::End(Some(format!("unreadable reply: {err}"))),
        };
        let end = matches!(heard, Heard::End(_));
        if tx.send(heard).is_err() || end {
            return;
        }
    }
}

/// One running worker process.
struct Proc {
    child: Child,
    control: Arc<Control>,
    heard: Receiver<Heard>,
    cancel_rx: Receiver<()>,
}

impl Proc {
    fn start(shared: &Shared, spec: &Spec) -> Result<Proc> {
        let python = shared
            .config
            .process_python
            .clone()
            .unwrap_or_else(|| spec.python.clone());
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(WORKER_SOURCE)
            // The Python package, imported here by a task, makes no spare interpreter: a
            // worker process runs no pool.
            .env("SUBINTERP_SPARE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::CreateFailed(format!(
                    "cannot start a worker process ({}): {e}",
                    python.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::CreateFailed("a worker process has no pipes".into()));
        };
        let (heard_tx, heard) = unbounded();
        std::thread::Builder::new()
            .name("subinterp-process-reader".into())
            .spawn(move || {
                read_frames(std::io::BufReader::with_capacity(1 << 16, stdout), heard_tx)
            })
            .map_err(|e| Error::CreateFailed(format!("cannot start a reader thread: {e}")))?;
        let (cancel_tx, cancel_rx) = bounded(1);
        let proc = Proc {
            child,
            control: Arc::new(Control {
                stdin: Mutex::new(stdin),
                current: AtomicU64::new(0),
                cancel_tx,
            }),
            heard,
            cancel_rx,
        };
        Ok(proc)
    }

    fn send(&self, msg: &Value) -> Result<()> {
        write_frame(&mut *lock(&self.control.stdin), msg)
    }

    /// Kills the process (if it still runs) and says how it ended.
    fn kill(mut self) -> String {
        let _ = self.child.kill();
        self.status()
    }

    /// Waits for the process to end and says how it ended.
    fn status(&mut self) -> String {
        match self.child.wait() {
            Ok(status) => describe(status),
            Err(e) => format!("its status is unknown ({e})"),
        }
    }

    /// Sets the process up: `sys.path` and the pool's init code.
    fn setup(&mut self, shared: &Shared, spec: &Spec) -> Result<()> {
        let msg = Value::Tuple(vec![
            Value::from("setup"),
            Value::List(spec.path.iter().map(|p| Value::from(p.as_str())).collect()),
            Value::List(
                shared
                    .config
                    .init
                    .iter()
                    .map(|c| Value::from(c.as_str()))
                    .collect(),
            ),
            Value::List(
                spec.builtins
                    .iter()
                    .map(|p| Value::from(p.as_str()))
                    .collect(),
            ),
        ]);
        self.send(&msg)?;
        let deadline = shared
            .config
            .setup_deadline()
            .map_or_else(never, crossbeam_channel::after);
        select! {
            recv(self.heard) -> heard => match heard {
                Ok(Heard::Frame(reply)) => match reply_kind(&reply) {
                    Some("ready") => Ok(()),
                    _ => Err(reply_error(reply)),
                },
                _ => Err(Error::WorkerDied(format!(
                    "the worker process ended during its set-up: {}",
                    self.status()
                ))),
            },
            recv(deadline) -> _ => Err(Error::timeout(format!(
                "a worker process's set-up ran past its deadline of {:.3} s",
                shared.config.setup_deadline().unwrap_or_default().as_secs_f64()
            ))),
        }
    }
}

/// How a process ended, as a user reads it: the signal by name, or the exit status.
fn describe(status: std::process::ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        match signal_name(signal) {
            Some(name) => format!("killed by signal {signal} ({name})"),
            None => format!("killed by signal {signal}"),
        }
    } else {
        match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "ended".to_owned(),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        _ => return None,
    })
}

fn reply_kind(reply: &Value) -> Option<&str> {
    match reply {
        Value::Tuple(items) | Value::List(items) => reply_kind_of(items),
        _ => None,
    }
}

fn reply_kind_of(items: &[Value]) -> Option<&str> {
    match items.first() {
        Some(Value::Str(kind)) => Some(kind),
        _ => None,
    }
}

/// The error a reply other than `ok` stands for.
fn reply_error(reply: Value) -> Error {
    let (Value::Tuple(mut items) | Value::List(mut items)) = reply else {
        return Error::WorkerDied("the worker process sent an unreadable reply".into());
    };
    match (items.first(), items.len()) {
        (Some(Value::Str(kind)), 2) if kind == "error" => match exception(items.pop()) {
            Some(exc) => Error::Python(Box::new(exc)),
            None => Error::WorkerDied("the worker process sent an unreadable error".into()),
        },
        (Some(Value::Str(kind)), 3) if kind == "unshareable" => {
            let detail = items.pop();
            let type_name = items.pop();
            match (type_name, detail) {
                (Some(Value::Str(type_name)), Some(Value::Str(detail))) => {
                    Error::Unshareable { type_name, detail }
                }
                _ => Error::WorkerDied("the worker process sent an unreadable reply".into()),
            }
        }
        _ => Error::WorkerDied("the worker process sent an unreadable reply".into()),
    }
}

/// A [`PyException`] from the dict the worker writes.
fn exception(value: Option<Value>) -> Option<PyException> {
    let Some(Value::Dict(pairs)) = value else {
        return None;
    };
    let mut fields: HashMap<String, Value> = pairs
        .into_iter()
        .filter_map(|(k, v)| match k {
            Value::Str(k) => Some((k, v)),
            _ => None,
        })
        .collect();
    let mut text = |name: &str| match fields.remove(name) {
        Some(Value::Str(s)) => Some(s),
        _ => None,
    };
    let type_name = text("type")?;
    let message = text("message").unwrap_or_default();
    let traceback = text("traceback").unwrap_or_default();
    let exit = match fields.remove("exit") {
        Some(Value::Tuple(items)) | Some(Value::List(items)) => {
            let mut items = items.into_iter();
            let code = match items.next() {
                Some(Value::Int(code)) => i32::try_from(code).unwrap_or(-1),
                _ => 1,
            };
            let message = match items.next() {
                Some(Value::Str(m)) => Some(m),
                _ => None,
            };
            Some(ExitStatus { code, message })
        }
        _ => None,
    };
    Some(PyException {
        type_name,
        message,
        traceback,
        cause: exception(fields.remove("cause")).map(Box::new),
        context: exception(fields.remove("context")).map(Box::new),
        exit,
    })
}

/// Times in a row a process keeper tries to start its process before it gives up.
const START_ATTEMPTS: u32 = 3;

/// Keeps one worker process: starts it, feeds it tasks, replaces it when it dies, is
/// killed or is recycled, until the pool stops or drains.
fn keep(shared: &Arc<Shared>) {
    let procs = &shared.procs;
    // The pool's first interpreter says where worker processes come from; a task sent to
    // a process as the pool starts waits for it (`Pool::new` does not).
    let waited = Instant::now();
    let patience = shared
        .config
        .setup_timeout
        .unwrap_or(Duration::from_secs(60));
    let spec = loop {
        if let Some(spec) = procs.spec.get() {
            break spec.clone();
        }
        if shared.state.load(Ordering::Acquire) == STOPPING || waited.elapsed() > patience {
            procs.fail_queued(&Error::CreateFailed(
                "the pool does not know which Python to start: its first interpreter did not \
                 start"
                    .into(),
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut failures = 0;
    'processes: while shared.state.load(Ordering::Acquire) != STOPPING {
        let mut proc =
            match Proc::start(shared, &spec).and_then(|mut proc| match proc.setup(shared, &spec) {
                Ok(()) => Ok(proc),
                Err(err) => {
                    proc.kill();
                    Err(err)
                }
            }) {
                Ok(proc) => proc,
                Err(err) => {
                    failures += 1;
                    tracing::error!(error = %err, "could not start a worker process");
                    if failures >= START_ATTEMPTS {
                        // Nobody else may be there to run them: fail what waits.
                        if procs.keepers.load(Ordering::Acquire) == 1 {
                            procs.fail_queued(&err);
                        }
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
        failures = 0;
        tracing::debug!(pid = proc.child.id(), "worker process ready");
        let mut done: u64 = 0;
        loop {
            procs.idle.fetch_add(1, Ordering::AcqRel);
            let next = next_task(shared);
            procs.idle.fetch_sub(1, Ordering::AcqRel);
            let Some(task) = next else {
                let _ = proc.child.kill();
                let _ = proc.child.wait();
                break 'processes;
            };
            match run(shared, &mut proc, task) {
                Ran::Kept => {}
                Ran::Lost => continue 'processes,
            }
            done += 1;
            if shared
                .config
                .max_tasks_per_worker
                .is_some_and(|max| done >= max)
            {
                tracing::debug!(tasks = done, "worker process recycled");
                proc.kill();
                continue 'processes;
            }
        }
    }
}

/// The next task for a process: `None` once the pool stops, or drains with nothing left
/// that could still reach processes.
fn next_task(shared: &Shared) -> Option<Queued> {
    let procs = &shared.procs;
    loop {
        let state = shared.state.load(Ordering::Acquire);
        if state == STOPPING {
            return None;
        }
        if state != RUNNING
            && procs.queue_rx.is_empty()
            && shared.keepers.load(Ordering::Acquire) == 0
        {
            return None;
        }
        // Draining: the interpreters may still hand over tasks they find refused, until
        // the last of them ends.
        let (drain, wait) = if state == RUNNING {
            (&procs.drain_rx, never())
        } else {
            (
                &never_drain(),
                crossbeam_channel::after(Duration::from_millis(50)),
            )
        };
        select! {
            recv(procs.queue_rx) -> task => return task.ok(),
            recv(shared.stop_rx) -> _ => return None,
            recv(drain) -> _ => {}
            recv(wait) -> _ => {}
        }
    }
}

fn never_drain() -> Receiver<()> {
    never()
}

enum Ran {
    /// The process is still usable.
    Kept,
    /// The process died or was killed.
    Lost,
}

/// Runs one task in `proc` and completes it.
fn run(shared: &Shared, proc: &mut Proc, task: Queued) -> Ran {
    if !task.state.start_in_process(&proc.control) {
        return Ran::Kept; // cancelled while queued
    }
    while proc.cancel_rx.try_recv().is_ok() {}
    // What the result becomes when it is not plain data (the package's runner pickles
    // it), as in an interpreter: `(module, path)` or None.
    let otherwise = match &task.form.otherwise {
        Some(t) => Value::Tuple(vec![Value::from(t.module()), Value::from(t.path())]),
        None => Value::None,
    };
    let msg = Value::Tuple(vec![
        Value::from("call"),
        Value::from(task.target.module()),
        Value::from(task.target.path()),
        otherwise,
        Value::from(shared.procs.why(&task.target, &task.route)),
    ]);
    let finish = |proc: &Proc, result: Result<Vec<u8>>| {
        proc.control.current.store(0, Ordering::Release);
        shared.procs.ran.fetch_add(1, Ordering::Relaxed);
        task.state.complete(result);
    };
    // The call goes first on the pipe, then interrupts aimed at it may follow.
    let sent = {
        let mut stdin = lock(&proc.control.stdin);
        let sent = write_frames(&mut *stdin, &msg, Some(&task.args));
        proc.control.current.store(task.id, Ordering::Release);
        sent
    };
    if let Err(err) = sent {
        let status = proc.status();
        finish(proc, Err(Error::WorkerDied(format!("{err}; {status}"))));
        return Ran::Lost;
    }
    if task.state.is_done() {
        // Cancelled before it could be told: tell it now.
        let _ = proc.control.cancel_tx.try_send(());
        proc.control.interrupt(task.id, InterruptReason::Cancelled);
    }
    tracing::debug!(task = task.id, target = %task.target, pid = proc.child.id(), "task started in a worker process");
    let started = Instant::now();
    let deadline = task.timeout.and_then(|t| started.checked_add(t));
    let mut interrupted_at: Option<Instant> = None;
    // The pool's memory limit applies to the worker process's resident memory, and the
    // task's CPU budget to its main thread; both are looked at every 20 ms.
    let pid = proc.child.id();
    let memory_limit = shared.config.interpreter.memory_limit_bytes();
    let cpu_from = task.cpu_budget.and_then(|_| usage::main_thread_cpu(pid));
    let looks = match (memory_limit, cpu_from) {
        (None, None) => never(),
        _ => crossbeam_channel::tick(Duration::from_millis(20)),
    };
    loop {
        let wake = match (interrupted_at, deadline) {
            (Some(at), _) => crossbeam_channel::at(at + shared.config.grace),
            (None, Some(deadline)) => crossbeam_channel::at(deadline),
            (None, None) => never(),
        };
        select! {
            recv(proc.heard) -> heard => {
                let reply = match heard {
                    Ok(Heard::Frame(reply)) => reply,
                    other => {
                        let detail = match other {
                            Ok(Heard::End(detail)) => detail,
                            _ => None,
                        };
                        let status = proc.status();
                        let what = detail.map_or(String::new(), |d| format!(" after an {d}"));
                        let err = Error::WorkerDied(format!(
                            "the worker process running the task died{what}: {status}"
                        ));
                        tracing::warn!(task = task.id, "{err}");
                        finish(proc, Err(err));
                        return Ran::Lost;
                    }
                };
                let result = match reply_kind(&reply) {
                    Some("ok") => match reply {
                        Value::Tuple(mut items) if items.len() == 2 => match items.pop() {
                            Some(Value::Bytes(result)) => Ok(result),
                            _ => Err(Error::WorkerDied("the worker process sent an unreadable result".into())),
                        },
                        _ => Err(Error::WorkerDied("the worker process sent an unreadable result".into())),
                    },
                    _ => Err(reply_error(reply)),
                };
                let result = if task.state.timed_out.load(Ordering::Acquire) {
                    Err(timed_out(result, task.limit_passed()))
                } else {
                    result
                };
                finish(proc, result);
                return Ran::Kept;
            }
            recv(proc.cancel_rx) -> _ => {
                // Cancelled (the task already says so): give it the grace period to stop.
                interrupted_at.get_or_insert_with(Instant::now);
            }
            recv(shared.stop_rx) -> _ => {
                proc.control.interrupt(task.id, InterruptReason::Cancelled);
                interrupted_at.get_or_insert_with(Instant::now);
            }
            recv(looks) -> _ => {
                if let Some(limit) = memory_limit {
                    let rss = usage::resident_bytes(pid).unwrap_or(0);
                    if rss > limit {
                        let _ = proc.child.kill();
                        let _ = proc.child.wait();
                        let err = Error::python(
                            "builtins.MemoryError",
                            format!(
                                "the worker process running the task went past the memory \
                                 limit of {} MiB (resident memory {} MiB): it was killed and \
                                 replaced",
                                limit >> 20,
                                rss >> 20
                            ),
                        );
                        tracing::warn!(task = task.id, "{err}");
                        shared.stats.task_over_memory_limit();
                        finish(proc, Err(err));
                        return Ran::Lost;
                    }
                }
                if let (Some(budget), Some(from), None) = (task.cpu_budget, cpu_from, interrupted_at) {
                    let used = usage::main_thread_cpu(pid).map_or(Duration::ZERO, |now| now.saturating_sub(from));
                    if used >= budget {
                        task.state.over_cpu_budget.store(true, Ordering::Release);
                        task.state.timed_out.store(true, Ordering::Release);
                        tracing::info!(task = task.id, "task used up its CPU budget: interrupting its worker process");
                        proc.control.interrupt(task.id, InterruptReason::Timeout);
                        interrupted_at = Some(Instant::now());
                    }
                }
            }
            recv(wake) -> _ => {
                if interrupted_at.is_some() {
                    // Still running a grace period after it was told to stop: stuck in C.
                    let err = if task.state.timed_out.load(Ordering::Acquire) {
                        let limit = task.limit_passed().map_or_else(
                            || crate::error::past_deadline("the task", None),
                            |limit| limit.past(),
                        );
                        Error::timeout(format!(
                            "{limit} and did not stop when interrupted (blocked in C code?); its \
                             worker process was killed and replaced"
                        ))
                    } else {
                        Error::Cancelled
                    };
                    let _ = proc.child.kill();
                    let _ = proc.child.wait();
                    tracing::warn!(task = task.id, "worker process stuck in C code: killed and replaced");
                    finish(proc, Err(err));
                    return Ran::Lost;
                }
                task.state.timed_out.store(true, Ordering::Release);
                tracing::info!(task = task.id, "task reached its deadline: interrupting its worker process");
                proc.control.interrupt(task.id, InterruptReason::Timeout);
                interrupted_at = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import_error(message: &str) -> PyException {
        PyException::new("builtins.ImportError", message)
    }

    fn frame(data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn heard(input: Vec<u8>) -> Vec<Heard> {
        let (tx, rx) = unbounded();
        read_frames(std::io::Cursor::new(input), tx);
        rx.try_iter().collect()
    }

    #[test]
    fn a_result_arrives_as_the_raw_frame_after_its_header_and_bad_frames_end_the_reader() {
        let ok = wire::encode(&Value::Tuple(vec![Value::from("ok")])).unwrap();
        let result = wire::encode(&Value::Bytes(vec![7; 100_000])).unwrap();
        let ready = wire::encode(&Value::Tuple(vec![Value::from("ready")])).unwrap();
        // A header, its raw frame, another message, then the end of the input.
        let mut input = frame(&ok);
        input.extend(frame(&result));
        input.extend(frame(&ready));
        let got = heard(input);
        assert!(matches!(got.as_slice(), [
            Heard::Frame(Value::Tuple(first)),
            Heard::Frame(Value::Tuple(second)),
            Heard::End(None),
        ] if first == &vec![Value::from("ok"), Value::Bytes(result.clone())]
            && second == &vec![Value::from("ready")]));
        // A result cut short, a frame cut short, a length claiming 4 GiB, malformed data.
        let mut cut = frame(&ok);
        cut.extend(&frame(&result)[..5000]);
        let got = heard(cut);
        assert!(matches!(got.as_slice(), [Heard::End(Some(why))] if why.contains("cut short")));
        let got = heard(frame(&ready)[..6].to_vec());
        assert!(matches!(got.as_slice(), [Heard::End(None)]));
        let mut huge = u32::MAX.to_le_bytes().to_vec();
        huge.extend(&ready);
        assert!(matches!(heard(huge).as_slice(), [Heard::End(None)]));
        let got = heard(frame(b"SW\x01\x7f"));
        assert!(matches!(got.as_slice(), [Heard::End(Some(why))] if why.contains("unreadable")));
    }

    #[test]
    fn refusals_are_found_in_the_chain_with_their_culprit() {
        let cpython = import_error(
            "module numpy._core._multiarray_umath does not support loading in subinterpreters",
        );
        let mut wrapped = import_error(
            "\nIMPORTANT: PLEASE READ THIS FOR ADVICE ON HOW TO SOLVE THIS ISSUE!\n\n\
             Original error was: module numpy._core._multiarray_umath does not support \
             loading in subinterpreters\n",
        );
        wrapped.cause = Some(Box::new(cpython.clone()));
        for exc in [&cpython, &wrapped] {
            let refusal = refusal(exc).expect("a refusal");
            assert_eq!(refusal.culprit, "numpy._core._multiarray_umath");
            assert!(refusal
                .reason
                .ends_with("does not support loading in subinterpreters"));
        }
        let mut outer = PyException::new("builtins.RuntimeError", "task failed");
        outer.context = Some(Box::new(import_error(
            "cannot load module more than once per process",
        )));
        let found = refusal(&outer).expect("a refusal in the context");
        assert_eq!(found.culprit, "an extension module");
        assert!(refusal(&import_error("No module named 'nope'")).is_none());
        assert!(refusal(&PyException::new(
            "builtins.ValueError",
            "does not support loading in subinterpreters"
        ))
        .is_none());
    }
}
