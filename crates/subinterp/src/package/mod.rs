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
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::audit::Guards;
use crate::call::{call_target_wire_as, ResultForm, Target};
use crate::error::{Error, Result};
use crate::host::params::{self, refuse_seconds, seconds_arg, seconds_value, BadSeconds, Secs};
use crate::interpreter::config::InterpreterConfig;
use crate::interpreter::limits::parse_size;
use crate::interpreter::Interpreter;
use crate::pool::{Pool, PoolConfig, Task, TaskOptions};
use crate::raw::callback::{self, FastArgs, Outcome};
use crate::raw::lifecycle::MainInterpreter;
use crate::raw::module::{self, ModuleSpec};
use crate::raw::wire::{self as raw_wire, Mode};
use crate::raw::{ExcKind, PyObj, Python};
use crate::runtime::spare::Spare;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::stats::{Outcome as TaskOutcome, StatsHandle};
use crate::value::{wire, Value};
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
            c"_spare_start",
            c"_spare_start()\n--\n\nStarts creating, in the background, the isolated \
              interpreter the first pool or Interpreter takes (once; nothing if one is \
              being made or waits).",
            spare_start,
        ),
        callback::method_def(
            c"_spare_end",
            c"_spare_end()\n--\n\nEnds the spare interpreter, if there is one, and waits \
              for its thread (before a fork).",
            spare_end,
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
            c"_interp_new(config)\n--\n\nA new interpreter; config is a dict of settings \
              (isolated, init, timeout); an unknown one is a TypeError.",
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
            c"_interp_stats",
            c"_interp_stats(interp)\n--\n\nThe interpreter's counters: a dict.",
            interp_stats,
        ),
        callback::method_def(
            c"_pool_stats_handle",
            c"_pool_stats_handle(pool)\n--\n\nA handle of the pool's counters, readable \
              after the pool ended, until released.",
            pool_stats_handle,
        ),
        callback::method_def(
            c"_pool_stats",
            c"_pool_stats(stats)\n--\n\nThe counters of a pool: a dict.",
            pool_stats,
        ),
        callback::method_def(
            c"_pool_stats_release",
            c"_pool_stats_release(stats)\n--\n\nReleases a handle of _pool_stats_handle.",
            pool_stats_release,
        ),
        callback::method_def(
            c"_check",
            c"_check(modules, paths, timeout)\n--\n\nWhat `subinterp check` reports for \
              each module: a list of dicts. timeout: seconds, more than 0, or None.",
            check_modules,
        ),
        callback::method_def(
            c"_exit_guard",
            c"_exit_guard()\n--\n\nPython statements that make os._exit raise RuntimeError \
              in the interpreter that runs them.",
            exit_guard,
        ),
        callback::method_def(
            c"_share_bytes",
            c"_share_bytes(name, data)\n--\n\nKeeps data (bytes) under name for every \
              interpreter of the process to read with _shared_bytes (main interpreter \
              only; a second call with the same name replaces it).",
            share_bytes,
        ),
        callback::method_def(
            c"_share_compiled",
            c"_share_compiled(name, source, filename)\n--\n\nCompiles source (the bytes of \
              a file, decoded as python decodes one) and keeps its code, marshalled, under \
              name as _share_bytes does (main interpreter only); a SyntaxError if it does \
              not compile. Unlike builtins.compile, the first call does not build the ast \
              module's types.",
            share_compiled,
        ),
        callback::method_def(
            c"_compile",
            c"_compile(source, filename, mode, flags=0, dont_inherit=False, optimize=-1)\n\
              --\n\nbuiltins.compile, for importlib in pool workers: source (bytes or str) \
              compiled in 'exec' mode with no flags gives the same code without first \
              building the ast module's types (about 2 ms in a new interpreter); any \
              other call is builtins.compile's.",
            compile_source,
        ),
        callback::method_def(
            c"_shared_bytes",
            c"_shared_bytes(name)\n--\n\nThe bytes kept under name by _share_bytes, or \
              None; callable in any interpreter.",
            shared_bytes,
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
              of settings (workers, isolated, init: a list of sources run one after the \
              other, timeout, setup_timeout, max_tasks_per_worker); an unknown one is a \
              TypeError.",
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
    if let Some(spare) = lock(&EARLY_SPARE).take() {
        rt.inner.keep_spare(|| Ok(spare))?;
    }
    *held = Some(rt.clone());
    Ok(rt)
}

/// The spare interpreter made before the runtime started (when the package is imported),
/// until the runtime takes it.
static EARLY_SPARE: Mutex<Option<Spare>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kind of interpreter the package's pools and `Interpreter`s are by default.
fn spare_kind() -> Result<crate::raw::lifecycle::RawConfig> {
    InterpreterConfig::isolated().to_raw()
}

fn spare_start<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_spare_start", [])?;
    main_only(py, "_spare_start")?;
    let raw = spare_kind()?;
    let started = lock(&RUNTIME).clone();
    match started {
        Some(rt) => {
            let main = rt.inner.main();
            rt.inner.keep_spare(|| Spare::start(main, raw))?;
        }
        None => {
            let mut early = lock(&EARLY_SPARE);
            if early.is_none() {
                // As the runtime's start does: CPython's own walk would list (and, once
                // it runs code, crash on) the spare's thread.
                crate::hazards::limit_thread_walks(py)?;
                *early = Some(Spare::start(MainInterpreter::running(py), raw)?);
            }
        }
    }
    Ok(py.none())
}

fn spare_end<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_spare_end", [])?;
    main_only(py, "_spare_end")?;
    py.allow_threads(end_spares);
    Ok(py.none())
}

/// Ends the spare interpreter, made before or after the runtime started.
fn end_spares() {
    let early = lock(&EARLY_SPARE).take();
    if let Some(spare) = early {
        spare.end();
    }
    let started = lock(&RUNTIME).clone();
    if let Some(rt) = started {
        rt.inner.end_spare();
    }
}

fn runtime_start<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_runtime_start", [])?;
    main_only(py, "_runtime_start")?;
    let version = py.allow_threads(|| runtime().map(|rt| rt.python_version().to_owned()))?;
    Ok(py.to_object(&Value::from(version))?)
}

fn runtime_stop<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_runtime_stop", [])?;
    main_only(py, "_runtime_stop")?;
    let pools = POOLS.take_all();
    py.allow_threads(move || {
        for pool in pools {
            pool.end(None);
        }
        end_spares();
        RUNTIME.lock().unwrap_or_else(|e| e.into_inner()).take();
    });
    Ok(py.none())
}

fn runtime_wait<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (timeout,): (PyObj,) = params::args(args, "_runtime_wait", ["timeout"])?;
    main_only(py, "_runtime_wait")?;
    let timeout = seconds(py, Some(&timeout), "timeout")?.unwrap_or(Duration::ZERO);
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
    let (config,): (PyObj,) = params::args(args, "_interp_new", ["config"])?;
    main_only(py, "Interpreter")?;
    let settings = Settings::parse(py, &config, SettingsOf::Interpreter)?;
    let interp = settings.interpreter()?;
    let init = (!settings.init.is_empty()).then(|| settings.init.concat());
    let timeout = settings.timeout;
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
enum Ended<T> {
    Done(Result<T>),
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
    let mut message = crate::error::past_deadline(what, Some(limit));
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
fn wait_in<T: Send + 'static>(
    py: Python<'_>,
    interp: &Interpreter,
    timeout: Option<Duration>,
    job: impl for<'a> FnOnce(Python<'a>) -> Result<T> + Send + 'static,
) -> Result<Ended<T>> {
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

/// How the stats count a task of the package, whose result is in the wire format: its
/// worker code returns an exception of the function as `(2, ...)`, which is a failure.
fn task_outcome(result: &Result<Vec<u8>>) -> TaskOutcome {
    match result {
        Ok(bytes) if crate::value::wire::leading_int(bytes) == Some(2) => TaskOutcome::Failed,
        other => TaskOutcome::of(other),
    }
}

/// [`wait_in`], its outcome as the `(kind, payload)` pair the package's code reads;
/// counted in the interpreter's stats.
fn run_in<'py>(
    py: Python<'py>,
    interp: &Interpreter,
    timeout: Option<Duration>,
    job: impl for<'a> FnOnce(Python<'a>) -> Result<Vec<u8>> + Send + 'static,
) -> Outcome<PyObj<'py>> {
    let ended = wait_in(py, interp, timeout, job);
    interp.count_task(match &ended {
        Ok(Ended::Done(result)) => task_outcome(result),
        Ok(Ended::TimedOut { .. } | Ended::NotStarted { .. }) => TaskOutcome::TimedOut,
        Err(err) if err.as_python().is_some_and(|e| e.is("KeyboardInterrupt")) => {
            TaskOutcome::Cancelled
        }
        Err(_) => TaskOutcome::Failed,
    });
    let (kind, payload) = match ended? {
        Ended::Done(result) => kind_and_payload(py, result)?,
        Ended::TimedOut { limit, stuck } => (
            "timeout",
            py.str(&timed_out_message("the call", limit, stuck))?,
        ),
        Ended::NotStarted { limit } => {
            ("timeout", py.str(&not_started_message("the call", limit))?)
        }
    };
    Ok(py.tuple(&[&py.str(kind)?, &payload])?)
}

fn interp_exec<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (interp, code, timeout): (PyObj, String, Option<PyObj>) =
        params::args(args, "_interp_exec", ["interp", "code", "timeout"])?;
    let interp = interp_of(&interp)?;
    let timeout = seconds(py, timeout.as_ref(), "timeout")?;
    run_in(py, &interp, timeout, move |py| {
        py.run(&code, "<string>", &py.main_dict()?)?;
        wire::encode(&Value::None)
    })
}

fn interp_call<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (interp, target, positional, keywords, timeout): Call<'py> = params::args(
        args,
        "_interp_call",
        ["interp", "target", "args", "kwargs", "timeout"],
    )?;
    let interp = interp_of(&interp)?;
    let target = Target::parse(&target)?;
    let Some(call) = call_args(py, &positional, &keywords)? else {
        return Ok(py.none());
    };
    let timeout = seconds(py, timeout.as_ref(), "timeout")?;
    run_in(py, &interp, timeout, move |py| {
        call_target_wire_as(py, &target, &call, &worker_results())
    })
}

/// Closes the interpreters of the handles in the list all at once (exit closes every
/// interpreter: each stuck one then costs its grace period once, not one after another).
fn interp_close_all<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (handles,): (PyObj,) = params::args(args, "_interp_close_all", ["interps"])?;
    let Value::List(handles) = handles.to_value()? else {
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
    let (modules, paths, timeout): (PyObj, PyObj, Option<PyObj>) =
        params::args(args, "_check", ["modules", "paths", "timeout"])?;
    main_only(py, "check")?;
    let names = match modules.to_value()? {
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
    if let Value::List(paths) = paths.to_value()? {
        for p in paths {
            if let Value::Str(p) = p {
                options.add_path(p);
            }
        }
    }
    if let Some(timeout) = seconds_arg(py, timeout.as_ref(), "timeout", Secs::Positive)? {
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
    /// The pool's counters, readable after its shutdown too.
    stats: StatsHandle,
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
    Done(Result<Vec<u8>>),
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

/// A wait or a deadline in seconds ([`Secs::NonNegative`]).
fn seconds(py: Python<'_>, obj: Option<&PyObj<'_>>, what: &str) -> Result<Option<Duration>> {
    seconds_arg(py, obj, what, Secs::NonNegative)
}

// ---------------------------------------------------------------- settings

/// What the package's `Pool` (`_pool_new`) and `Interpreter` (`_interp_new`) give the
/// engine, parsed once from their dict of settings. A key the engine does not know is a
/// `TypeError` naming it, so that a setting added on one side only (or misspelt) is never
/// silently dropped; a value of the wrong type is a `TypeError`, one out of range a
/// `ValueError`. `None` means the setting is not given.
struct Settings {
    /// `isolated`: false makes legacy interpreters.
    isolated: bool,
    /// `init`: sources run one after the other in each new interpreter (a `str` or, for a
    /// pool, a list of them: each its own source, so that an error points at the lines
    /// of the one it is in).
    init: Vec<String>,
    /// `timeout`: a pool's default task deadline (more than 0 s); an interpreter's
    /// deadline of `init` (0 s or more, as its calls' deadlines).
    timeout: Option<Duration>,
    /// `workers` (pool): at most this many workers.
    workers: Option<usize>,
    /// `setup_timeout` (pool): a deadline for each worker's set-up.
    setup_timeout: Option<Duration>,
    /// `max_tasks_per_worker` (pool): tasks per worker before it is replaced.
    max_tasks_per_worker: Option<u64>,
    /// `guards`: the guard rails' rules, as [`Guards::apply`] reads them.
    guards: Option<String>,
    /// `allow_write`: directories the `write` rule allows.
    allow_write: Vec<String>,
    /// `process_fallback` (pool): tasks isolated interpreters refuse run in worker
    /// processes (default: yes).
    process_fallback: bool,
    /// `in_processes` (pool): modules whose tasks run in worker processes from the
    /// start (their submodules too).
    in_processes: Vec<String>,
    /// `cpu_budget` (pool): each task's default CPU-time budget.
    cpu_budget: Option<Duration>,
    /// `memory_limit`: bytes each interpreter may hold (an int, or a size such as
    /// `"256M"`).
    memory_limit: Option<u64>,
    /// `wait` (pool): `_pool_new` returns once the first worker is set up, with the
    /// error of its set-up if any (default: yes). False returns as soon as the worker is
    /// being created, so that the caller goes on meanwhile; a worker that cannot be set
    /// up then fails the tasks.
    wait: bool,
}

/// Whose settings [`Settings::parse`] reads: the keys each takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SettingsOf {
    Pool,
    Interpreter,
}

impl SettingsOf {
    fn keys(self) -> &'static [&'static str] {
        match self {
            SettingsOf::Pool => &[
                "workers",
                "isolated",
                "init",
                "timeout",
                "setup_timeout",
                "max_tasks_per_worker",
                "guards",
                "allow_write",
                "process_fallback",
                "in_processes",
                "memory_limit",
                "cpu_budget",
                "wait",
            ],
            SettingsOf::Interpreter => &[
                "isolated",
                "init",
                "timeout",
                "guards",
                "allow_write",
                "memory_limit",
            ],
        }
    }

    fn function(self) -> &'static str {
        match self {
            SettingsOf::Pool => "_pool_new",
            SettingsOf::Interpreter => "_interp_new",
        }
    }
}

impl Settings {
    fn parse(py: Python<'_>, config: &PyObj<'_>, of: SettingsOf) -> Result<Settings> {
        let function = of.function();
        let type_error = |message: String| py.new_error(ExcKind::Type, &message);
        let Value::Dict(items) = config.to_value()? else {
            return Err(type_error(format!(
                "{function}() takes a dict of settings, not {}",
                config.type_name()
            )));
        };
        let mut settings = Settings {
            isolated: true,
            init: Vec::new(),
            timeout: None,
            workers: None,
            setup_timeout: None,
            max_tasks_per_worker: None,
            guards: None,
            allow_write: Vec::new(),
            process_fallback: true,
            in_processes: Vec::new(),
            memory_limit: None,
            cpu_budget: None,
            wait: true,
        };
        for (key, value) in &items {
            let Value::Str(key) = key else {
                return Err(type_error(format!(
                    "{function}(): setting names must be str, not {}",
                    key.python_type()
                )));
            };
            let unknown = || {
                type_error(format!(
                    "{function}() got an unknown setting '{key}' (it knows {})",
                    of.keys().join(", ")
                ))
            };
            let wrong_type = |expected: &str| {
                type_error(format!(
                    "{function}(): setting '{key}' must be {expected}, not {}",
                    value.python_type()
                ))
            };
            // A pool's refusals name the setting as `Pool`'s own errors do.
            let invalid = |why: &str| {
                py.new_error(
                    ExcKind::Value,
                    &format!("invalid pool setting {key} ({why})"),
                )
            };
            let count = |value: &Value| -> Result<Option<i64>> {
                match value {
                    Value::None => Ok(None),
                    Value::Int(n) if *n >= 1 => Ok(Some(*n)),
                    Value::Int(_) => Err(invalid("at least 1")),
                    Value::BigInt(_) => Err(invalid("too large")),
                    _ => Err(wrong_type("an int")),
                }
            };
            match key.as_str() {
                _ if !of.keys().contains(&key.as_str()) => return Err(unknown()),
                "isolated" => match value {
                    Value::Bool(yes) => settings.isolated = *yes,
                    Value::None => {}
                    _ => return Err(wrong_type("a bool")),
                },
                "process_fallback" => match value {
                    Value::Bool(yes) => settings.process_fallback = *yes,
                    Value::None => {}
                    _ => return Err(wrong_type("a bool")),
                },
                "wait" => match value {
                    Value::Bool(yes) => settings.wait = *yes,
                    Value::None => {}
                    _ => return Err(wrong_type("a bool")),
                },
                "init" => match value {
                    Value::None => {}
                    Value::Str(code) => settings.init.push(code.clone()),
                    Value::List(codes) if of == SettingsOf::Pool => {
                        for code in codes {
                            let Value::Str(code) = code else {
                                return Err(wrong_type("a str or a list of str"));
                            };
                            settings.init.push(code.clone());
                        }
                    }
                    _ if of == SettingsOf::Pool => {
                        return Err(wrong_type("a str or a list of str"))
                    }
                    _ => return Err(wrong_type("a str")),
                },
                "timeout" | "setup_timeout" | "cpu_budget" => {
                    let parsed = match of {
                        SettingsOf::Pool => {
                            seconds_value(value, Secs::Positive).map_err(|bad| match bad {
                                BadSeconds::Type => wrong_type("a number of seconds"),
                                BadSeconds::Value(_) => {
                                    invalid("more than 0 seconds, at most threading.TIMEOUT_MAX")
                                }
                            })?
                        }
                        SettingsOf::Interpreter => seconds_value(value, Secs::NonNegative)
                            .map_err(|bad| {
                                refuse_seconds(py, bad, key, Secs::NonNegative, value.python_type())
                            })?,
                    };
                    match key.as_str() {
                        "timeout" => settings.timeout = parsed,
                        "cpu_budget" => settings.cpu_budget = parsed,
                        _ => settings.setup_timeout = parsed,
                    }
                }
                "guards" => match value {
                    Value::None => {}
                    Value::Str(spec) => settings.guards = Some(spec.clone()),
                    _ => return Err(wrong_type("a str")),
                },
                "in_processes" | "allow_write" => {
                    let strings = match value {
                        Value::None => Vec::new(),
                        Value::List(items) => items
                            .iter()
                            .map(|item| match item {
                                Value::Str(text) => Ok(text.clone()),
                                _ => Err(wrong_type("a list of str")),
                            })
                            .collect::<Result<_>>()?,
                        _ => return Err(wrong_type("a list of str")),
                    };
                    if key == "in_processes" {
                        settings.in_processes = strings;
                    } else {
                        settings.allow_write = strings;
                    }
                }
                "memory_limit" => match value {
                    Value::None => {}
                    Value::Int(n) if *n >= 1 => settings.memory_limit = Some(*n as u64),
                    Value::Int(_) | Value::BigInt(_) => {
                        return Err(py.new_error(
                            ExcKind::Value,
                            &format!("setting '{key}' must be at least 1 byte"),
                        ))
                    }
                    Value::Str(size) => {
                        let bytes = parse_size(size)
                            .map_err(|err| py.new_error(ExcKind::Value, &err.to_string()))?;
                        settings.memory_limit = Some(bytes);
                    }
                    _ => return Err(wrong_type("an int or a size such as '256M'")),
                },
                "workers" => {
                    settings.workers = count(value)?.and_then(|n| usize::try_from(n).ok());
                }
                "max_tasks_per_worker" => {
                    settings.max_tasks_per_worker =
                        count(value)?.and_then(|n| u64::try_from(n).ok());
                }
                _ => return Err(unknown()),
            }
        }
        Ok(settings)
    }

    /// The interpreters' configuration. Legacy interpreters refuse `os.exec*()` too: it
    /// would replace the whole process, every interpreter in it, as `os._exit()` would
    /// end it (fork and exec in C, as `subprocess` does, stays allowed). The guard rails:
    /// `guards` as [`Guards::apply`] reads it and `allow_write` directories; a bad rule is
    /// a `ValueError`.
    fn interpreter(&self) -> Result<InterpreterConfig> {
        let mut interp = if self.isolated {
            InterpreterConfig::isolated()
        } else {
            let mut legacy = InterpreterConfig::legacy();
            legacy.allow_exec(false);
            legacy
        };
        let mut guards = Guards::new();
        if let Some(spec) = &self.guards {
            guards.apply(spec).map_err(|err| match err {
                Error::InvalidConfig(message) => Error::python("builtins.ValueError", message),
                other => other,
            })?;
        }
        for dir in &self.allow_write {
            guards.allow_write(dir);
        }
        interp.guards(guards);
        if let Some(bytes) = self.memory_limit {
            interp.memory_limit(bytes);
        }
        Ok(interp)
    }

    /// The pool's configuration.
    fn pool(&self) -> Result<PoolConfig> {
        let mut config = PoolConfig::new();
        // As the standard executors: workers start as tasks arrive, one at first.
        config.start_on_demand(true);
        if let Some(n) = self.workers {
            config.workers(n);
        }
        for code in &self.init {
            config.init(code.clone());
        }
        // The runner lets a refused import reach the pool, which re-runs the task in a
        // worker process.
        config.init(crate::pool::refusals_for_runner());
        config.process_fallback(self.process_fallback);
        for name in &self.in_processes {
            config.in_processes(name.clone());
        }
        if let Some(timeout) = self.timeout {
            config.timeout(timeout);
        }
        if let Some(timeout) = self.setup_timeout {
            config.setup_timeout(timeout);
        }
        if let Some(budget) = self.cpu_budget {
            config.cpu_budget(budget);
        }
        if let Some(n) = self.max_tasks_per_worker {
            config.max_tasks_per_worker(n);
        }
        config.interpreter(self.interpreter()?);
        Ok(config)
    }
}

fn pool_new<'py>(py: Python<'py>, _: &PyObj<'py>, args: &FastArgs<'_, 'py>) -> Outcome<PyObj<'py>> {
    let (config,): (PyObj,) = params::args(args, "_pool_new", ["config"])?;
    main_only(py, "Pool")?;
    let settings = Settings::parse(py, &config, SettingsOf::Pool)?;
    let wait = settings.wait;
    let mut pool_config = settings.pool()?;
    pool_config.task_outcome = task_outcome;
    let mut starting =
        py.allow_threads(|| runtime().and_then(|rt| Pool::start(&rt, &pool_config)))?;
    // Here, in this interpreter, once a process, while the first worker is being created
    // (it needs the code only once created); a worker compiling it costs more.
    pool_config.compile_init_ahead(py);
    // Waited for in slices with this thread's GIL released (a worker's set-up may need
    // the main interpreter: modules prepared there), so that Ctrl-C (a signal handler
    // raising here) stops it.
    let pool = if wait {
        loop {
            if let Some(made) = py.allow_threads(|| starting.wait(Duration::from_millis(50))) {
                break made?;
            }
            if let Err(signal) = py.check_signals() {
                // The set-up is interrupted; one stuck in C code is left behind after the
                // grace period.
                py.allow_threads(move || drop(starting));
                return Err(signal.into());
            }
        }
    } else {
        starting.without_waiting()?
    };
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let handle = PoolHandle {
        stats: pool.stats_handle(),
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

fn interp_stats<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (interp,): (PyObj,) = params::args(args, "_interp_stats", ["interp"])?;
    let stats = interp_of(&interp)?.stats();
    Ok(py.to_object(&stats.to_value())?)
}

/// Readers of pools' counters, which outlive the pools (a `Pool` object reads its own
/// after its shutdown, and releases it when collected).
static POOL_STATS: Registry<StatsHandle> = Registry::new();

fn pool_stats_handle<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (pool,): (PyObj,) = params::args(args, "_pool_stats_handle", ["pool"])?;
    let handle = pool_of(&pool)?.stats.clone();
    Ok(py.to_object(&Value::Int(POOL_STATS.insert(handle) as i64))?)
}

fn pool_stats<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (stats,): (PyObj,) = params::args(args, "_pool_stats", ["stats"])?;
    let stats = POOL_STATS.get(&stats, "no such pool")?.stats();
    Ok(py.to_object(&stats.to_value())?)
}

fn pool_stats_release<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (stats,): (PyObj,) = params::args(args, "_pool_stats_release", ["stats"])?;
    POOL_STATS.remove(&stats)?;
    Ok(py.none())
}

fn exit_guard<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_exit_guard", [])?;
    let code = crate::guards::exit_guard(crate::guards::ExitGuard::Refuse(
        "code in a subinterp Pool worker or Interpreter",
    ));
    Ok(py.to_object(&Value::from(code))?)
}

/// Bytes the main interpreter keeps for every interpreter of the process, by name: what
/// the package's workers load at set-up (its runner's code, the main script's code),
/// handed over without being written into the set-up code as a literal that each new
/// interpreter would have to parse. A few entries a process, never removed.
static SHARED_BYTES: Mutex<Option<HashMap<String, Arc<[u8]>>>> = Mutex::new(None);

fn share_bytes<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (name, data): (String, PyObj) = params::args(args, "_share_bytes", ["name", "data"])?;
    main_only(py, "_share_bytes")?;
    let Value::Bytes(data) = data.to_value()? else {
        return Err(py
            .new_error(ExcKind::Type, "_share_bytes(): data must be bytes")
            .into());
    };
    keep_shared(name, data);
    Ok(py.none())
}

/// Keeps `data` under `name` in [`SHARED_BYTES`], replacing what was there.
fn keep_shared(name: String, data: Vec<u8>) {
    lock(&SHARED_BYTES)
        .get_or_insert_with(HashMap::new)
        .insert(name, data.into());
}

fn share_compiled<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (name, source, filename): (String, PyObj, PyObj) =
        params::args(args, "_share_compiled", ["name", "source", "filename"])?;
    main_only(py, "_share_compiled")?;
    let Value::Bytes(source) = source.to_value()? else {
        return Err(py
            .new_error(ExcKind::Type, "_share_compiled(): source must be bytes")
            .into());
    };
    keep_shared(name, py.compile_marshalled(&source, &filename)?);
    Ok(py.none())
}

type CompileArgs<'py> = (
    PyObj<'py>,
    PyObj<'py>,
    String,
    Option<params::Plain<i64>>,
    Option<PyObj<'py>>,
    Option<params::Plain<i64>>,
    Option<PyObj<'py>>,
);

fn compile_source<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let names = [
        "source",
        "filename",
        "mode",
        "flags",
        "dont_inherit",
        "optimize",
        "_feature_version",
    ];
    let (source, filename, mode, flags, dont_inherit, optimize, feature): CompileArgs<'py> =
        params::args(args, "compile", names)?;
    let flags = flags.map_or(0, |params::Plain(f)| f);
    let optimize = optimize.map_or(-1, |params::Plain(o)| o);
    let plain = mode == "exec" && flags == 0 && feature.is_none() && (-1..=2).contains(&optimize);
    if plain {
        // Only `bytes` and `str` themselves: anything else (an AST, a buffer) is left to
        // builtins.compile.
        let text = match source.to_value() {
            Ok(Value::Bytes(bytes)) => Some((bytes, false)),
            Ok(Value::Str(text)) => Some((text.into_bytes(), true)),
            _ => None,
        };
        if let Some((bytes, is_text)) = text {
            let optimize = i32::try_from(optimize).unwrap_or(-1);
            return Ok(py.compile_module(&bytes, is_text, &filename, optimize)?);
        }
    }
    // Anything else: builtins.compile, with the arguments given.
    let compile = py.builtins()?.getattr("compile")?;
    let mut positional = vec![source, filename, py.str(&mode)?];
    positional.push(py.to_object(&Value::Int(flags))?);
    positional.push(match dont_inherit {
        Some(value) => value,
        None => py.to_object(&Value::Bool(false))?,
    });
    positional.push(py.to_object(&Value::Int(optimize))?);
    let refs: Vec<&PyObj<'py>> = positional.iter().collect();
    let kwargs = match feature {
        None => None,
        Some(version) => {
            let kwargs = py.dict()?;
            kwargs.set_item(&py.str("_feature_version")?, &version)?;
            Some(kwargs)
        }
    };
    Ok(py.call_kw(&compile, &refs, kwargs.as_ref())?)
}

fn shared_bytes<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (name,): (String,) = params::args(args, "_shared_bytes", ["name"])?;
    let data = lock(&SHARED_BYTES)
        .as_ref()
        .and_then(|shared| shared.get(&name).cloned());
    match data {
        Some(data) => Ok(py.to_object_bytes(&data)?),
        None => Ok(py.none()),
    }
}

fn workers_left_behind<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_workers_left_behind", [])?;
    let n = crate::pool::workers_left_behind();
    Ok(py.to_object(&Value::Int(n as i64))?)
}

fn memory_warning<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "_memory_warning", [])?;
    match crate::hazards::take_memory_warning() {
        Some(message) => Ok(py.to_object(&Value::from(message))?),
        None => Ok(py.none()),
    }
}

/// A call's arguments, a tuple and a dict, written in the wire format straight from the
/// objects (by the submitting thread); `None` if they are not plain data (exactly the
/// plain types, no structure that contains itself or nests past the format's limit),
/// which the caller then pickles. Objects met twice are written once, so sharing
/// survives the crossing.
fn call_args<'py>(
    py: Python<'py>,
    args: &PyObj<'py>,
    kwargs: &PyObj<'py>,
) -> Result<Option<Vec<u8>>> {
    if !args.is_exact_tuple() {
        return Err(py.new_error(ExcKind::Type, "args must be a tuple"));
    }
    if !kwargs.is_exact_dict() {
        return Err(py.new_error(ExcKind::Type, "kwargs must be a dict"));
    }
    match raw_wire::encode(&py.tuple(&[args, kwargs])?, Mode::Exact, Vec::new()) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(Error::Unshareable { .. }) => Ok(None),
        Err(err) => Err(err),
    }
}

/// How the package's workers write a reply: every plain type kept; a reply that is not
/// plain data is handed to the runner's `_subinterp_unplain`, which pickles what it must.
fn worker_results() -> ResultForm {
    ResultForm {
        mode: Mode::Exact,
        otherwise: Target::parse("_subinterp_worker:_subinterp_unplain").ok(),
    }
}

/// The parameters of a call: the interpreter or pool, the target, its positional and
/// keyword arguments, and a deadline.
type Call<'py> = (
    PyObj<'py>,
    String,
    PyObj<'py>,
    PyObj<'py>,
    Option<PyObj<'py>>,
);

fn pool_submit<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (pool, target, positional, keywords, timeout): Call<'py> = params::args(
        args,
        "_pool_submit",
        ["pool", "target", "args", "kwargs", "timeout"],
    )?;
    let handle = pool_of(&pool)?;
    let target = Target::parse(&target)?;
    // The runner's first argument is the module of the user's function: refusals are
    // recorded, and tasks sent to worker processes, by it.
    let route = positional
        .get_item(&py.to_object(&Value::Int(0))?)
        .ok()
        .and_then(|module| module.extract_str().ok());
    let Some(call) = call_args(py, &positional, &keywords)? else {
        return Ok(py.none());
    };
    let options = TaskOptions {
        timeout: seconds(py, timeout.as_ref(), "timeout")?,
        ..TaskOptions::default()
    };
    let id = {
        let pool = handle.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pool = pool
            .as_ref()
            .ok_or_else(|| Error::python("builtins.RuntimeError", "the pool has ended"))?;
        let task = pool.submit_wire(target, route, call, options, worker_results())?;
        let id = task.id();
        // Held until the task is in the map: its waker may fire at once, and the
        // collector looks the id up only after taking this lock.
        let mut tasks = handle.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let waker = Waker::from(Arc::new(Notify {
            id,
            tx: handle.ready_tx.clone(),
        }));
        let pending = if task.wake_when_finished(&waker) {
            Pending::Running(Arc::new(task))
        } else {
            let _ = handle.ready_tx.send(id);
            Pending::Done(task.try_take_wire().unwrap_or(Err(Error::Closed)))
        };
        tasks.insert(id, pending);
        id
    };
    Ok(py.to_object(&Value::Int(id as i64))?)
}

/// What Python code gets for a finished task: `(id, "ok", value)`, `(id, "python",
/// (type name, message, traceback))`, `(id, "cancelled", None)`, `(id, "timeout",
/// message)` or `(id, "error", message)`. The value is read from the wire format the
/// worker wrote it in, straight into objects, by the thread that collects or waits.
fn outcome<'py>(py: Python<'py>, id: u64, result: Result<Vec<u8>>) -> Result<PyObj<'py>> {
    let (kind, payload) = kind_and_payload(py, result)?;
    py.tuple(&[
        &py.to_object(&Value::Int(id as i64))?,
        &py.str(kind)?,
        &payload,
    ])
}

/// The kind and payload of [`outcome`].
fn kind_and_payload<'py>(
    py: Python<'py>,
    result: Result<Vec<u8>>,
) -> Result<(&'static str, PyObj<'py>)> {
    let result = result.and_then(|bytes| raw_wire::decode(py, &bytes));
    let (kind, payload) = match result {
        Ok(value) => return Ok(("ok", value)),
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
    };
    Ok((kind, py.to_object(&payload)?))
}

fn pool_done<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (pool, timeout): (PyObj, PyObj) = params::args(args, "_pool_done", ["pool", "timeout"])?;
    let handle = pool_of(&pool)?;
    let timeout = seconds(py, Some(&timeout), "timeout")?.unwrap_or(Duration::from_secs(3600));
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
                    .map(|(id, pending)| (id, take(pending)))
                    .collect::<Vec<_>>(),
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
                    done.push((*id, take(pending)));
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
        POOLS.remove(&pool)?;
        return Ok(py.none());
    };
    let done = done
        .into_iter()
        .map(|(id, result)| outcome(py, id, result))
        .collect::<Result<Vec<_>>>()?;
    Ok(py.tuple(&done.iter().collect::<Vec<_>>())?)
}

/// The result of a task taken out of the map (so that nobody else reports it), in the
/// wire format.
fn take(pending: Pending) -> Result<Vec<u8>> {
    match pending {
        Pending::Done(result) => result,
        Pending::Running(task) => task.try_take_wire().unwrap_or(Err(Error::Closed)),
    }
}

fn pool_wait<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (pool, id, timeout): (PyObj, PyObj, Option<PyObj>) =
        params::args(args, "_pool_wait", ["pool", "id", "timeout"])?;
    let handle = pool_of(&pool)?;
    let id = id.to_value()?.as_i64().unwrap_or(-1);
    let Ok(id) = u64::try_from(id) else {
        return Ok(py.none());
    };
    let timeout = seconds(py, timeout.as_ref(), "timeout")?;
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
        Waited::Taken(result) => Ok(outcome(py, id, result)?),
        Waited::TimedOut => Ok(py.to_object(&Value::Bool(false))?),
        Waited::Collected => Ok(py.none()),
    }
}

enum Waited {
    /// The task's result, taken out of the map.
    Taken(Result<Vec<u8>>),
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
                    return Ok(Waited::Taken(result));
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
    let (pool, id, running): (PyObj, PyObj, PyObj) =
        params::args(args, "_pool_cancel", ["pool", "id", "running"])?;
    let handle = pool_of(&pool)?;
    let running = matches!(running.to_value()?, Value::Bool(true));
    let cancelled = with_task(&handle, &id, |task| {
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
    let (pool, id): (PyObj, PyObj) = params::args(args, "_pool_started", ["pool", "id"])?;
    let handle = pool_of(&pool)?;
    let started = with_task(&handle, &id, Task::is_started)?;
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
    let (pool, now): (PyObj, Option<PyObj>) =
        params::args(args, "_pool_shutdown", ["pool", "now"])?;
    let handle = pool_of(&pool)?;
    if matches!(
        now.map(|o| o.to_value()).transpose()?,
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
