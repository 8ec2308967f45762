//! The engine of the `subinterp` Python package: this crate loaded as an extension
//! module (`subinterp._native`) of a CPython it did not start.
//!
//! The extension module is the `subinterp` module of every interpreter (channels,
//! buffers, `id()`) plus a few functions for the package's Python code, which only the
//! main interpreter may call: they start the runtime in borrow mode
//! ([`RuntimeConfig::borrow_running`]) and drive pools of isolated interpreters. The
//! package's `Pool` (a `concurrent.futures.Executor`) is Python code over them. Every
//! wait releases the caller's GIL: the runtime needs the main interpreter's GIL to make
//! interpreters, and the program's other threads go on meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::builtin_module::{parse, required};
use crate::call::{call_target, Args, Target};
use crate::error::{Error, Result};
use crate::interpreter::config::InterpreterConfig;
use crate::interpreter::Interpreter;
use crate::pool::{Pool, PoolConfig, Task, TaskOptions};
use crate::raw::callback::{self, FastArgs, Outcome};
use crate::raw::module::{self, ModuleSpec};
use crate::raw::{ExcKind, PyObj, Python};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::value::Value;
use crate::wait::InterruptReason;

/// Defines `PyInit_<name>` of the package's extension module: the module definition,
/// initialised (NULL with an exception set on failure).
#[doc(hidden)]
#[macro_export]
macro_rules! python_extension {
    ($init:ident) => {
        $crate::extension_entry!($init, $crate::package::extension_init);
    };
}

/// The body of the package's `PyInit__native`, made by
/// [`python_extension!`](crate::python_extension).
#[doc(hidden)]
pub fn extension_init() -> *mut std::ffi::c_void {
    module::extension_init(specs).cast()
}

fn specs() -> Vec<ModuleSpec> {
    let mut spec = crate::builtin_module::spec();
    spec.methods.extend([
        callback::method_def(
            c"_runtime_start",
            c"_runtime_start()\n--\n\nStarts the engine over this Python (once).",
            runtime_start,
        ),
        callback::method_def(
            c"_runtime_stop",
            c"_runtime_stop()\n--\n\nEnds every pool and gives the main interpreter back.",
            runtime_stop,
        ),
        callback::method_def(
            c"_runtime_wait",
            c"_runtime_wait(timeout)\n--\n\nWaits at most timeout seconds for the engine to \
              end after _runtime_stop (a task stuck in C code holds it until the call \
              returns): None while it runs, else the number of interpreters left running \
              with Python threads that did not end.",
            runtime_wait,
        ),
        callback::method_def(
            c"_interp_new",
            c"_interp_new(config)\n--\n\nA new interpreter; config is a dict (isolated, \
              init).",
            interp_new,
        ),
        callback::method_def(
            c"_interp_exec",
            c"_interp_exec(interp, code, timeout)\n--\n\nRuns code in the interpreter's \
              __main__: (kind, payload) as _pool_done gives them.",
            interp_exec,
        ),
        callback::method_def(
            c"_interp_call",
            c"_interp_call(interp, target, args, kwargs, timeout)\n--\n\nCalls target \
              ('module:qualname') in the interpreter: (kind, payload).",
            interp_call,
        ),
        callback::method_def(
            c"_interp_close_all",
            c"_interp_close_all(interps)\n--\n\nEnds the interpreters all at once, each \
              within its grace period; for each, the grace period in seconds if it was left \
              running, else None.",
            interp_close_all,
        ),
        callback::method_def(
            c"_check",
            c"_check(modules, paths, timeout)\n--\n\nWhat `subinterp check` reports for \
              each module: a list of dicts.",
            check_modules,
        ),
        callback::method_def(
            c"_exit_guard",
            c"_exit_guard()\n--\n\nPython statements that make os._exit raise RuntimeError \
              in the interpreter that runs them.",
            exit_guard,
        ),
        callback::method_def(
            c"_workers_left_behind",
            c"_workers_left_behind()\n--\n\nThe number of pool workers left behind stuck in C \
              code whose interpreters still exist.",
            workers_left_behind,
        ),
        callback::method_def(
            c"_memory_warning",
            c"_memory_warning()\n--\n\nThe latest warning about the memory CPython keeps \
              of ended interpreters not taken yet, or None.",
            memory_warning,
        ),
        callback::method_def(
            c"_pool_new",
            c"_pool_new(config)\n--\n\nA pool of isolated interpreters; config is a dict \
              (its init a list of sources run one after the other).",
            pool_new,
        ),
        callback::method_def(
            c"_pool_submit",
            c"_pool_submit(pool, target, args, kwargs, timeout)\n--\n\nQueues a call of \
              target ('module:qualname'); returns the task's id.",
            pool_submit,
        ),
        callback::method_def(
            c"_pool_done",
            c"_pool_done(pool, timeout)\n--\n\nWaits at most timeout seconds for finished \
              tasks: a list of (id, kind, payload), [] on timeout, None once the pool ended \
              and every result was handed out.",
            pool_done,
        ),
        callback::method_def(
            c"_pool_wait",
            c"_pool_wait(pool, id, timeout)\n--\n\nWaits for one task and takes its \
              result: (id, kind, payload); False on timeout; None if the collector has it.",
            pool_wait,
        ),
        callback::method_def(
            c"_pool_cancel",
            c"_pool_cancel(pool, id, running)\n--\n\nCancels a task not started yet; with \
              running, one that runs too (interrupted in its worker).",
            pool_cancel,
        ),
        callback::method_def(
            c"_pool_started",
            c"_pool_started(pool, id)\n--\n\nWhether a worker took the task (false once \
              its result is collected).",
            pool_started,
        ),
        callback::method_def(
            c"_pool_shutdown",
            c"_pool_shutdown(pool, now=False)\n--\n\nStarts ending the pool, in the \
              background: queued and running tasks finish first, or with now, are \
              cancelled and interrupted (one stuck in C code is left behind after the \
              grace period), even if a graceful end is under way; _pool_done says when it \
              has ended.",
            pool_shutdown,
        ),
    ]);
    vec![spec]
}

// ---------------------------------------------------------------- handles

/// Objects Python code refers to by plain int handles.
struct Registry<T> {
    items: Mutex<Option<HashMap<u64, Arc<T>>>>,
}

static NEXT_HANDLE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl<T> Registry<T> {
    const fn new() -> Self {
        Registry {
            items: Mutex::new(None),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, Arc<T>>>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `item`; returns its handle.
    fn insert(&self, item: T) -> u64 {
        self.insert_shared(Arc::new(item))
    }

    fn insert_shared(&self, item: Arc<T>) -> u64 {
        let id = NEXT_HANDLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.map().get_or_insert_with(HashMap::new).insert(id, item);
        id
    }

    fn id_of(handle: &PyObj<'_>) -> Result<Option<u64>> {
        Ok(u64::try_from(handle.to_value()?.as_i64().unwrap_or(-1)).ok())
    }

    /// The item of a handle, or a `RuntimeError` saying it is `gone`.
    fn get(&self, handle: &PyObj<'_>, gone: &str) -> Result<Arc<T>> {
        Self::id_of(handle)?
            .and_then(|id| self.map().as_ref()?.get(&id).cloned())
            .ok_or_else(|| Error::python("builtins.RuntimeError", gone))
    }

    fn remove(&self, handle: &PyObj<'_>) -> Result<Option<Arc<T>>> {
        Ok(Self::id_of(handle)?.and_then(|id| self.map().as_mut()?.remove(&id)))
    }

    fn remove_id(&self, id: u64) -> Option<Arc<T>> {
        self.map().as_mut()?.remove(&id)
    }

    fn take_all(&self) -> Vec<Arc<T>> {
        self.map()
            .take()
            .unwrap_or_default()
            .into_values()
            .collect()
    }
}

static POOLS: Registry<PoolHandle> = Registry::new();
static INTERPS: Registry<Interpreter> = Registry::new();

fn pool_of(handle: &PyObj<'_>) -> Result<Arc<PoolHandle>> {
    POOLS.get(handle, "the pool has ended")
}

fn interp_of(handle: &PyObj<'_>) -> Result<Arc<Interpreter>> {
    INTERPS.get(handle, "the interpreter is closed")
}

// ---------------------------------------------------------------- runtime

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);

fn main_only(py: Python<'_>, what: &str) -> Result<()> {
    if py.interpreter_id() == 0 {
        Ok(())
    } else {
        Err(Error::python(
            "builtins.RuntimeError",
            format!("subinterp.{what} is only available in the main interpreter"),
        ))
    }
}

fn runtime() -> Result<Runtime> {
    let mut held = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = held.as_ref() {
        return Ok(rt.clone());
    }
    let rt = Runtime::init(RuntimeConfig::new().borrow_running())?;
    *held = Some(rt.clone());
    Ok(rt)
}

fn runtime_start<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "_runtime_start", [], 0)?;
    main_only(py, "_runtime_start")?;
    let version = py.allow_threads(|| runtime().map(|rt| rt.python_version().to_owned()))?;
    Ok(py.to_object(&Value::from(version))?)
}

fn runtime_stop<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "_runtime_stop", [], 0)?;
    main_only(py, "_runtime_stop")?;
    let pools = POOLS.take_all();
    py.allow_threads(move || {
        for pool in pools {
            pool.end(None);
        }
        RUNTIME.lock().unwrap_or_else(|e| e.into_inner()).take();
    });
    Ok(py.none())
}

fn runtime_wait<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_runtime_wait", ["timeout"], 1)?;
    main_only(py, "_runtime_wait")?;
    let timeout = seconds(py, a[0].as_ref(), "timeout")?.unwrap_or(Duration::ZERO);
    if !py.allow_threads(move || crate::runtime::wait_ended(timeout)) {
        return Ok(py.none());
    }
    let left = crate::raw::lifecycle::abandoned_interpreters();
    Ok(py.to_object(&Value::Int(left as i64))?)
}

// ---------------------------------------------------------------- interpreters

fn interp_new<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_interp_new", ["config"], 1)?;
    main_only(py, "Interpreter")?;
    let Value::Dict(config) = required(&a[0]).to_value()? else {
        return Err(py.new_error(ExcKind::Type, "config must be a dict").into());
    };
    let interp = interpreter_config(&config)?;
    let init = match field(&config, "init") {
        Some(Value::Str(code)) => Some(code.clone()),
        _ => None,
    };
    let timeout = field(&config, "timeout").and_then(positive_seconds);
    let made = Arc::new(py.allow_threads(move || Interpreter::new(&runtime()?, &interp))?);
    if let Some(code) = init {
        let ran = wait_in(py, &made, timeout, move |py| {
            py.run(&code, "<string>", &py.main_dict()?)?;
            Ok(Value::None)
        });
        let failure = match ran {
            Ok(Ended::Done(Ok(_))) => None,
            Ok(Ended::Done(Err(err))) => Some(err),
            Ok(Ended::TimedOut { limit, stuck }) => Some(Error::python(
                "builtins.TimeoutError",
                timed_out_message("the interpreter's init", limit, stuck),
            )),
            Ok(Ended::NotStarted { limit }) => Some(Error::python(
                "builtins.TimeoutError",
                not_started_message("the interpreter's init", limit),
            )),
            Err(err) => Some(err),
        };
        if let Some(err) = failure {
            // Interrupted (it was) or failed: end it without making the caller wait.
            std::thread::spawn(move || made.close());
            return Err(err.into());
        }
    }
    let id = INTERPS.insert_shared(made);
    Ok(py.to_object(&Value::Int(id as i64))?)
}

/// How long a job interrupted by a deadline or Ctrl-C is waited for.
const GRACE: Duration = Duration::from_secs(1);

/// How an operation of a package's interpreter ended.
enum Ended {
    Done(Result<Value>),
    /// Past its deadline; `stuck`: it still runs (blocked in C code).
    TimedOut {
        limit: Duration,
        stuck: bool,
    },
    /// Its deadline passed while it waited behind earlier code, which it never ran.
    NotStarted {
        limit: Duration,
    },
}

fn not_started_message(what: &str, limit: Duration) -> String {
    format!(
        "{what} did not start within its deadline of {:.3} s: the interpreter is busy \
         with earlier code (stuck in C since an earlier deadline or Ctrl-C?)",
        limit.as_secs_f64()
    )
}

fn timed_out_message(what: &str, limit: Duration, stuck: bool) -> String {
    let mut message = format!(
        "{what} did not finish within its deadline of {:.3} s",
        limit.as_secs_f64()
    );
    if stuck {
        message.push_str(
            "; it did not stop when interrupted (blocked in C code?) and still runs: the \
             interpreter is busy until it returns",
        );
    }
    message
}

/// Runs `job` in `interp` and waits for it with this interpreter's GIL released: past
/// `timeout` the job is interrupted (`TimeoutError` in it, again every 0.2 s until it
/// stops) and reported as timed out, at once if it stops within [`GRACE`], else then
/// (left running). Ctrl-C (a signal handler raising here) interrupts it too and is raised
/// here once it has stopped, or after [`GRACE`]. Closing the interpreter meanwhile is a
/// `RuntimeError` here. Interrupting never waits for the interpreter's GIL.
fn wait_in(
    py: Python<'_>,
    interp: &Interpreter,
    timeout: Option<Duration>,
    job: impl for<'a> FnOnce(Python<'a>) -> Result<Value> + Send + 'static,
) -> Result<Ended> {
    let running = interp.start(job)?;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let limit = timeout.unwrap_or_default();
    let mut timed_out = false;
    let mut closed_at = None;
    let closed = || {
        Error::python(
            "builtins.RuntimeError",
            "the interpreter was closed while this call ran",
        )
    };
    loop {
        if let Some(result) = py.allow_threads(|| running.wait(Duration::from_millis(50))) {
            // Whatever the code did once interrupted (raised, or caught the TimeoutError
            // and returned), the call is reported as past its deadline.
            if timed_out {
                return Ok(Ended::TimedOut {
                    limit,
                    stuck: false,
                });
            }
            let cancelled = match &result {
                Err(Error::Closed) => true,
                Err(err) => err.as_python().is_some_and(|e| e.is("KeyboardInterrupt")),
                Ok(_) => false,
            };
            if cancelled && interp.is_closed() {
                return Err(closed());
            }
            return Ok(Ended::Done(result));
        }
        let now = Instant::now();
        if let Some(due) = deadline.filter(|due| now >= *due) {
            if !timed_out {
                timed_out = true;
                if running.interrupt(InterruptReason::Timeout, true) {
                    return Ok(Ended::NotStarted { limit });
                }
            } else if now >= due + GRACE {
                return Ok(Ended::TimedOut { limit, stuck: true });
            }
        }
        if interp.is_closed() {
            // Closed from another thread: `close` gives the call its grace period.
            let since = *closed_at.get_or_insert(now);
            if now >= since + interp.grace() + GRACE {
                return Err(closed());
            }
        }
        if let Err(signal) = py.check_signals() {
            if !running.interrupt(InterruptReason::Cancelled, false) {
                let _ = py.allow_threads(|| running.wait(GRACE));
            }
            return Err(signal);
        }
    }
}

/// [`wait_in`], its outcome as the `(kind, payload)` pair the package's code reads.
fn run_in<'py>(
    py: Python<'py>,
    interp: &Interpreter,
    timeout: Option<Duration>,
    job: impl for<'a> FnOnce(Python<'a>) -> Result<Value> + Send + 'static,
) -> Outcome<PyObj<'py>> {
    let (kind, payload) = match wait_in(py, interp, timeout, job)? {
        Ended::Done(result) => kind_and_payload(result),
        Ended::TimedOut { limit, stuck } => (
            "timeout",
            Value::from(timed_out_message("the call", limit, stuck)),
        ),
        Ended::NotStarted { limit } => (
            "timeout",
            Value::from(not_started_message("the call", limit)),
        ),
    };
    Ok(py.to_object(&Value::Tuple(vec![Value::from(kind), payload]))?)
}

fn interp_exec<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_interp_exec", ["interp", "code", "timeout"], 2)?;
    let interp = interp_of(required(&a[0]))?;
    let code = required(&a[1]).extract_str()?;
    let timeout = seconds(py, a[2].as_ref(), "timeout")?;
    run_in(py, &interp, timeout, move |py| {
        py.run(&code, "<string>", &py.main_dict()?)?;
        Ok(Value::None)
    })
}

fn interp_call<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(
        args,
        "_interp_call",
        ["interp", "target", "args", "kwargs", "timeout"],
        4,
    )?;
    let interp = interp_of(required(&a[0]))?;
    let target = Target::parse(&required(&a[1]).extract_str()?)?;
    let call = call_args(py, required(&a[2]), required(&a[3]))?;
    let timeout = seconds(py, a[4].as_ref(), "timeout")?;
    run_in(py, &interp, timeout, move |py| {
        call_target(py, &target, &call)
    })
}

/// Closes the interpreters of the handles in the list all at once (exit closes every
/// interpreter: each stuck one then costs its grace period once, not one after another).
fn interp_close_all<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_interp_close_all", ["interps"], 1)?;
    let Value::List(handles) = required(&a[0]).to_value()? else {
        return Err(Error::python("builtins.TypeError", "_interp_close_all takes a list").into());
    };
    let interps = handles
        .iter()
        .map(|handle| {
            let id = handle.as_i64().and_then(|id| u64::try_from(id).ok());
            id.and_then(|id| INTERPS.remove_id(id))
        })
        .collect();
    let left = close_together(py, interps)?;
    Ok(py.to_object(&Value::List(left))?)
}

/// Closes the interpreters, each within its grace period, all at once and off this
/// thread, so that Ctrl-C (a signal handler raising here) stops the waiting, not the
/// ending. For each: its grace period in seconds if it was left behind, still running
/// (blocked in C code), else `None`.
fn close_together(py: Python<'_>, interps: Vec<Option<Arc<Interpreter>>>) -> Outcome<Vec<Value>> {
    let closing: Vec<_> = interps
        .into_iter()
        .map(|interp| {
            let interp = interp?;
            let grace = interp.grace();
            let (tx, rx) = crossbeam_channel::bounded(1);
            std::thread::spawn(move || {
                let _ = tx.send(interp.close_reporting());
            });
            Some((grace, rx))
        })
        .collect();
    let mut left = Vec::with_capacity(closing.len());
    for closed in closing {
        let Some((grace, rx)) = closed else {
            left.push(Value::None);
            continue;
        };
        let behind = loop {
            match py.allow_threads(|| rx.recv_timeout(Duration::from_millis(50))) {
                Ok(result) => break result?,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break false,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => py.check_signals()?,
            }
        };
        left.push(if behind {
            Value::Float(grace.as_secs_f64())
        } else {
            Value::None
        });
    }
    Ok(left)
}

fn check_modules<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_check", ["modules", "paths", "timeout"], 2)?;
    main_only(py, "check")?;
    let names = match required(&a[0]).to_value()? {
        Value::List(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s),
                _ => Err(py.new_error(ExcKind::Type, "module names must be str")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(py.new_error(ExcKind::Type, "modules must be a list").into()),
    };
    let mut options = crate::check::CheckOptions::new();
    let executable = py.import("sys")?.getattr("executable")?.extract_str()?;
    options.python(executable);
    if let Value::List(paths) = required(&a[1]).to_value()? {
        for p in paths {
            if let Value::Str(p) = p {
                options.add_path(p);
            }
        }
    }
    if let Some(timeout) = seconds(py, a[2].as_ref(), "timeout")? {
        options.timeout(timeout);
    }
    let reports = py
        .allow_threads(move || crate::check::check(&names, &options))
        .map_err(|e| Error::python("builtins.RuntimeError", e.to_string()))?;
    let mut out = Vec::with_capacity(reports.len());
    for report in reports {
        let reason = report.reason();
        let mut value = crate::value::to_value(&report)?;
        if let Value::Dict(items) = &mut value {
            items.push((Value::from("reason"), Value::from(reason)));
        }
        out.push(value);
    }
    Ok(py.to_object(&Value::List(out))?)
}

// ---------------------------------------------------------------- pools

/// A pool and what its Python side has not collected yet.
struct PoolHandle {
    pool: Mutex<Option<Pool>>,
    /// Makes a graceful end under way immediate.
    stopper: crate::pool::Stopper,
    /// Ids of tasks whose result is ready, sent by their wakers.
    ready_tx: Sender<u64>,
    ready_rx: Receiver<u64>,
    tasks: Mutex<HashMap<u64, Pending>>,
    /// Tasks a caller waits for in `_pool_wait`: the collector leaves them to it.
    awaited: Mutex<std::collections::HashSet<u64>>,
    /// Set once the pool has ended: every task has its result then.
    ended: std::sync::atomic::AtomicBool,
}

enum Pending {
    /// Shared with a caller waiting for this very task (`_pool_wait`).
    Running(Arc<Task>),
    Done(Result<Value>),
}

/// Sends a task's id when its result is ready.
struct Notify {
    id: u64,
    tx: Sender<u64>,
}

impl Wake for Notify {
    fn wake(self: Arc<Self>) {
        let _ = self.tx.send(self.id);
    }
}

impl PoolHandle {
    /// Ends the pool (gracefully within `grace`, or at once), cancelling what is left.
    /// Only the first call ends it; the others return at once.
    fn end(&self, grace: Option<Duration>) {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner()).take();
        match (pool, grace) {
            (Some(pool), Some(grace)) => pool.shutdown(grace),
            (Some(pool), None) => pool.shutdown_now(),
            (None, _) => return,
        }
        self.ended.store(true, std::sync::atomic::Ordering::Release);
        // Wake a collector waiting for results: the pool has ended.
        let _ = self.ready_tx.send(u64::MAX);
    }
}

fn seconds(py: Python<'_>, obj: Option<&PyObj<'_>>, what: &str) -> Result<Option<Duration>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let secs = match obj.to_value()? {
        Value::Int(n) => n as f64,
        Value::Float(f) => f,
        _ => return Err(py.new_error(ExcKind::Type, &format!("{what} must be a number or None"))),
    };
    match crate::seconds::non_negative(secs) {
        Ok(duration) => Ok(Some(duration)),
        Err(crate::seconds::SecondsError::TooLarge) => Err(crate::builtin_module::too_large(py)),
        Err(_) => Err(py.new_error(ExcKind::Value, &format!("{what} must be >= 0 and finite"))),
    }
}

fn field<'a>(config: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    config
        .iter()
        .find(|(k, _)| matches!(k, Value::Str(s) if s == name))
        .map(|(_, v)| v)
        .filter(|v| !matches!(v, Value::None))
}

/// The interpreter settings of a pool's or an interpreter's config dict. Legacy
/// interpreters refuse `os.exec*()` too: it would replace the whole process, every
/// interpreter in it, as `os._exit()` would end it (fork and exec in C, as `subprocess`
/// does, stays allowed).
fn interpreter_config(config: &[(Value, Value)]) -> Result<InterpreterConfig, Error> {
    let mut interp = match field(config, "isolated") {
        Some(Value::Bool(false)) => {
            let mut legacy = InterpreterConfig::legacy();
            legacy.allow_exec(false);
            legacy
        }
        _ => InterpreterConfig::isolated(),
    };
    // A number of bytes, or a size such as "256M". The borrowed Python has no memory
    // accounting: creating the interpreter then fails, saying why.
    match field(config, "memory_limit") {
        Some(Value::Int(n)) if *n >= 1 => {
            interp.memory_limit(*n as u64);
        }
        Some(Value::Str(size)) => {
            let bytes = crate::interpreter::limits::parse_size(size).map_err(|err| match err {
                Error::InvalidConfig(message) => Error::InvalidArgument(message),
                other => other,
            })?;
            interp.memory_limit(bytes);
        }
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "memory_limit must be a positive number of bytes or a size such as \"256M\", \
                 not {other:?}"
            )))
        }
        None => {}
    }
    Ok(interp)
}

/// A positive number of seconds.
fn positive_seconds(value: &Value) -> Option<Duration> {
    let secs = match value {
        Value::Int(n) => *n as f64,
        Value::Float(f) => *f,
        _ => return None,
    };
    crate::seconds::positive(secs).ok()
}

fn pool_new<'py>(py: Python<'py>, _: &PyObj<'py>, args: &FastArgs<'_, 'py>) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_pool_new", ["config"], 1)?;
    main_only(py, "Pool")?;
    let Value::Dict(config) = required(&a[0]).to_value()? else {
        return Err(py.new_error(ExcKind::Type, "config must be a dict").into());
    };
    let mut pool_config = PoolConfig::new();
    // As the standard executors: workers start as tasks arrive, one at first.
    pool_config.start_on_demand(true);
    let bad = |what: &str| py.new_error(ExcKind::Value, &format!("invalid pool setting {what}"));
    if let Some(v) = field(&config, "workers") {
        let n = v
            .as_i64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("workers"))?;
        pool_config.workers(n as usize);
    }
    match field(&config, "init") {
        Some(Value::Str(code)) => {
            pool_config.init(code.clone());
        }
        Some(Value::List(codes)) => {
            // Each its own source, so that errors point at the lines of the one they are in.
            for code in codes {
                if let Value::Str(code) = code {
                    pool_config.init(code.clone());
                }
            }
        }
        _ => {}
    }
    if let Some(v) = field(&config, "timeout") {
        pool_config.timeout(positive_seconds(v).ok_or_else(|| bad("timeout"))?);
    }
    if let Some(v) = field(&config, "setup_timeout") {
        pool_config.setup_timeout(positive_seconds(v).ok_or_else(|| bad("setup_timeout"))?);
    }
    if let Some(v) = field(&config, "max_tasks_per_worker") {
        let n = v
            .as_i64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| bad("max_tasks_per_worker"))?;
        pool_config.max_tasks_per_worker(n as u64);
    }
    pool_config.interpreter(interpreter_config(&config)?);
    // Set up off this thread, so that Ctrl-C (a signal handler raising here) stops it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let (made_tx, made_rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("subinterp-pool-setup".into())
        .spawn(move || {
            let made = runtime().and_then(|rt| {
                Pool::new_until(&rt, &pool_config, || {
                    stopped.load(std::sync::atomic::Ordering::Acquire)
                })
            });
            let _ = made_tx.send(made);
        })
        .map_err(|e| Error::CreateFailed(format!("cannot start the pool: {e}")))?;
    let pool = loop {
        match py.allow_threads(|| made_rx.recv_timeout(Duration::from_millis(50))) {
            Ok(made) => break made?,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                return Err(Error::Closed.into())
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if let Err(signal) = py.check_signals() {
            // The set-up is interrupted; one stuck in C code is left behind after the
            // grace period.
            stop.store(true, std::sync::atomic::Ordering::Release);
            let _ = py.allow_threads(|| made_rx.recv());
            return Err(signal.into());
        }
    };
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let handle = PoolHandle {
        stopper: pool.stopper(),
        pool: Mutex::new(Some(pool)),
        ready_tx,
        ready_rx,
        tasks: Mutex::new(HashMap::new()),
        awaited: Mutex::new(std::collections::HashSet::new()),
        ended: std::sync::atomic::AtomicBool::new(false),
    };
    let id = POOLS.insert(handle);
    Ok(py.to_object(&Value::Int(id as i64))?)
}

fn exit_guard<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "_exit_guard", [], 0)?;
    let code = crate::guards::exit_guard(crate::guards::ExitGuard::Refuse(
        "code in a subinterp Pool worker or Interpreter",
    ));
    Ok(py.to_object(&Value::from(code))?)
}

fn workers_left_behind<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "_workers_left_behind", [], 0)?;
    let n = crate::pool::workers_left_behind();
    Ok(py.to_object(&Value::Int(n as i64))?)
}

fn memory_warning<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "_memory_warning", [], 0)?;
    match crate::hazards::take_memory_warning() {
        Some(message) => Ok(py.to_object(&Value::from(message))?),
        None => Ok(py.none()),
    }
}

/// A call's arguments from a list and a dict of plain data.
fn call_args(py: Python<'_>, args: &PyObj<'_>, kwargs: &PyObj<'_>) -> Result<Args> {
    let positional = match args.to_value()? {
        Value::List(items) | Value::Tuple(items) => items,
        _ => return Err(py.new_error(ExcKind::Type, "args must be a list")),
    };
    let keywords = match kwargs.to_value()? {
        Value::Dict(items) => items
            .into_iter()
            .map(|(k, v)| match k {
                Value::Str(k) => Ok((k, v)),
                _ => Err(py.new_error(ExcKind::Type, "keyword names must be str")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(py.new_error(ExcKind::Type, "kwargs must be a dict")),
    };
    Ok(Args {
        positional,
        keywords,
    })
}

fn pool_submit<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(
        args,
        "_pool_submit",
        ["pool", "target", "args", "kwargs", "timeout"],
        4,
    )?;
    let handle = pool_of(required(&a[0]))?;
    let target = required(&a[1]).extract_str()?;
    let call = call_args(py, required(&a[2]), required(&a[3]))?;
    let options = TaskOptions {
        timeout: seconds(py, a[4].as_ref(), "timeout")?,
        ..TaskOptions::default()
    };
    let id = {
        let pool = handle.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pool
            .as_ref()
            .ok_or_else(|| Error::python("builtins.RuntimeError", "the pool has ended"))?;
        let mut task = pool.submit_with(&target, call, options)?;
        let id = task.id();
        // Held until the task is in the map: its waker may fire at once, and the
        // collector looks the id up only after taking this lock.
        let mut tasks = handle.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let waker = Waker::from(Arc::new(Notify {
            id,
            tx: handle.ready_tx.clone(),
        }));
        let pending = match std::pin::Pin::new(&mut task).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(result) => {
                let _ = handle.ready_tx.send(id);
                Pending::Done(result)
            }
            Poll::Pending => Pending::Running(Arc::new(task)),
        };
        tasks.insert(id, pending);
        id
    };
    Ok(py.to_object(&Value::Int(id as i64))?)
}

/// What Python code gets for a finished task: `(id, "ok", value)`, `(id, "python",
/// (type name, message, traceback))`, `(id, "cancelled", None)`, `(id, "timeout",
/// message)` or `(id, "error", message)`.
fn outcome(id: u64, result: Result<Value>) -> Value {
    let (kind, payload) = kind_and_payload(result);
    Value::Tuple(vec![Value::Int(id as i64), Value::from(kind), payload])
}

/// The kind and payload of [`outcome`].
fn kind_and_payload(result: Result<Value>) -> (&'static str, Value) {
    match result {
        Ok(value) => ("ok", value),
        Err(Error::Python(exc))
        | Err(Error::Timeout {
            exception: Some(exc),
            ..
        }) => (
            "python",
            Value::Tuple(vec![
                Value::from(exc.type_name.as_str()),
                Value::from(exc.message.as_str()),
                Value::from(exc.traceback.as_str()),
            ]),
        ),
        Err(Error::Cancelled) => ("cancelled", Value::None),
        Err(err @ Error::Timeout { .. }) => ("timeout", Value::from(err.to_string())),
        Err(err) => ("error", Value::from(err.to_string())),
    }
}

fn pool_done<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_pool_done", ["pool", "timeout"], 2)?;
    let handle = pool_of(required(&a[0]))?;
    let timeout = seconds(py, a[1].as_ref(), "timeout")?.unwrap_or(Duration::from_secs(3600));
    let done = py.allow_threads(move || {
        // Set only after the pool's shutdown returned, when every task has its result.
        let ended = handle.ended.load(std::sync::atomic::Ordering::Acquire);
        let mut tasks = handle.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if ended {
            // Every task has its result once the pool ended: hand out what is left.
            if tasks.is_empty() {
                return None;
            }
            return Some(
                tasks
                    .drain()
                    .map(|(id, pending)| outcome(id, take(pending)))
                    .collect(),
            );
        }
        drop(tasks);
        // Return to Python (and its GIL) only with results: a task whose caller took
        // its result itself (`_pool_wait`) still sends its id here.
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(first) = handle.ready_rx.recv_timeout(left) else {
                return Some(Vec::new());
            };
            let ids: Vec<u64> = std::iter::once(first)
                .chain(handle.ready_rx.try_iter())
                .collect();
            let mut tasks = handle.tasks.lock().unwrap_or_else(|e| e.into_inner());
            let awaited = handle.awaited.lock().unwrap_or_else(|e| e.into_inner());
            let mut done = Vec::new();
            for id in &ids {
                let unfinished =
                    matches!(tasks.get(id), Some(Pending::Running(t)) if !t.is_finished());
                // Left to the caller waiting for it, or (sent again by a caller that
                // stopped waiting) reported by its waker when it finishes.
                if awaited.contains(id) || unfinished {
                    continue;
                }
                if let Some(pending) = tasks.remove(id) {
                    done.push(outcome(*id, take(pending)));
                }
            }
            drop(awaited);
            // u64::MAX says the pool has ended: the next call hands out what is left.
            if !done.is_empty() || ids.contains(&u64::MAX) {
                return Some(done);
            }
        }
    });
    let Some(done) = done else {
        POOLS.remove(required(&a[0]))?;
        return Ok(py.none());
    };
    Ok(py.to_object(&Value::List(done))?)
}

/// The result of a task taken out of the map (so that nobody else reports it).
fn take(pending: Pending) -> Result<Value> {
    match pending {
        Pending::Done(result) => result,
        Pending::Running(task) => task.try_take().unwrap_or(Err(Error::Closed)),
    }
}

fn pool_wait<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_pool_wait", ["pool", "id", "timeout"], 2)?;
    let handle = pool_of(required(&a[0]))?;
    let id = required(&a[1]).to_value()?.as_i64().unwrap_or(-1);
    let Ok(id) = u64::try_from(id) else {
        return Ok(py.none());
    };
    let timeout = seconds(py, a[2].as_ref(), "timeout")?;
    let deadline = timeout.and_then(|t| std::time::Instant::now().checked_add(t));
    {
        let tasks = handle.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.contains_key(&id) {
            return Ok(py.none()); // collected (or being delivered) by the collector
        }
        handle
            .awaited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }
    let got = wait_awaited(py, &handle, id, deadline);
    handle
        .awaited
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    if !matches!(got, Ok(Waited::Taken(_))) {
        // Not taken here (deadline, Ctrl-C): the collector reports it when it finishes,
        // or now if it already has.
        let _ = handle.ready_tx.send(id);
    }
    match got? {
        Waited::Taken(done) => Ok(py.to_object(&done)?),
        Waited::TimedOut => Ok(py.to_object(&Value::Bool(false))?),
        Waited::Collected => Ok(py.none()),
    }
}

enum Waited {
    /// The task's outcome, taken out of the map.
    Taken(Value),
    TimedOut,
    /// The pool ended and its collector handed every task out.
    Collected,
}

/// Waits for a task marked awaited and takes its result.
fn wait_awaited(
    py: Python<'_>,
    handle: &PoolHandle,
    id: u64,
    deadline: Option<std::time::Instant>,
) -> Result<Waited> {
    loop {
        let task = {
            let mut tasks = handle.tasks.lock().unwrap_or_else(|e| e.into_inner());
            match tasks.get(&id) {
                Some(Pending::Running(task)) if !task.is_finished() => Arc::clone(task),
                Some(_) => {
                    let result = tasks.remove(&id).map_or(Err(Error::Closed), take);
                    return Ok(Waited::Taken(outcome(id, result)));
                }
                None => return Ok(Waited::Collected),
            }
        };
        let mut slice = Duration::from_millis(50);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(Waited::TimedOut);
            }
            slice = slice.min(left);
        }
        let finished = py.allow_threads(|| {
            // A short task is often done before a sleeping thread could be woken.
            let start = std::time::Instant::now();
            while start.elapsed() < crate::pool::SPIN {
                if task.is_finished() {
                    return true;
                }
                std::thread::yield_now();
            }
            task.wait_finished(slice)
        });
        drop(task);
        if !finished {
            py.check_signals()?;
        }
    }
}

fn pool_cancel<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_pool_cancel", ["pool", "id", "running"], 3)?;
    let handle = pool_of(required(&a[0]))?;
    let running = matches!(required(&a[2]).to_value()?, Value::Bool(true));
    let cancelled = with_task(&handle, required(&a[1]), |task| {
        if running {
            task.cancel()
        } else {
            task.cancel_queued()
        }
    })?;
    Ok(py.to_object(&Value::Bool(cancelled))?)
}

fn pool_started<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_pool_started", ["pool", "id"], 2)?;
    let handle = pool_of(required(&a[0]))?;
    let started = with_task(&handle, required(&a[1]), Task::is_started)?;
    Ok(py.to_object(&Value::Bool(started))?)
}

/// `f` of the task with this id while it has no result; false once it has one.
fn with_task(handle: &PoolHandle, id: &PyObj<'_>, f: impl FnOnce(&Task) -> bool) -> Result<bool> {
    let id = id.to_value()?.as_i64().unwrap_or(-1);
    let Ok(id) = u64::try_from(id) else {
        return Ok(false);
    };
    Ok(
        match handle
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            Some(Pending::Running(task)) => f(task),
            _ => false,
        },
    )
}

fn pool_shutdown<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_pool_shutdown", ["pool", "now"], 1)?;
    let handle = pool_of(required(&a[0]))?;
    if matches!(
        a[1].as_ref().map(|o| o.to_value()).transpose()?,
        Some(Value::Bool(true))
    ) {
        // A graceful end under way (it owns the pool) becomes immediate.
        handle.stopper.stop_now();
        let ender = Arc::clone(&handle);
        let started = std::thread::Builder::new()
            .name("subinterp-pool-end".into())
            .spawn(move || ender.end(None));
        if started.is_err() {
            py.allow_threads(move || handle.end(None));
        }
        return Ok(py.none());
    }
    // Ended off this thread (Python may not start threads any more at exit): queued and
    // running tasks finish first; the collector sees the end.
    let ender = Arc::clone(&handle);
    let started = std::thread::Builder::new()
        .name("subinterp-pool-end".into())
        .spawn(move || ender.end(Some(Duration::from_secs(365 * 24 * 3600))));
    if started.is_err() {
        py.allow_threads(move || handle.end(Some(Duration::from_secs(365 * 24 * 3600))));
    }
    Ok(py.none())
}
