//! [`Interpreter`]: one isolated subinterpreter, owned by a dedicated OS thread.

use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde::de::DeserializeOwned;

use crate::config::InterpreterConfig;
use crate::error::{Error, Result};
use crate::hazards;
use crate::raw::lifecycle::{clear_pending_async, InterruptTarget, SubInterpreter};
use crate::raw::{PyObj, Python};
use crate::runtime::{Runtime, RuntimeInner};
use crate::wait::{self, InterruptReason, InterruptState};
use crate::Value;

/// Stack of an interpreter's thread: as much as a Python main thread usually gets, so deep
/// Python recursion and deep value conversion do not overflow it (it is virtual memory,
/// committed only as used).
const INTERPRETER_STACK: usize = 16 << 20;

type Job = Box<dyn for<'py> FnOnce(Python<'py>) + Send>;

enum Msg {
    Job(Job),
    /// End the interpreter; with a sender, reply with the output captured until the end.
    Close(Option<Sender<Result<Output>>>),
}

/// An isolated Python interpreter running on a thread of its own.
///
/// Every operation is sent to that thread, runs there with the interpreter's GIL held,
/// and its result comes back; the handle is `Send + Sync`, so many Rust threads can share
/// one interpreter (their calls run one after another). Interpreters with their own GIL
/// (the default) run in parallel with each other.
///
/// ```no_run
/// use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};
/// let rt = Runtime::init(&RuntimeConfig::new())?;
/// let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;
/// interp.exec("def double(x):\n    return 2 * x")?;
/// assert_eq!(interp.call("__main__:double", (21,))?, Value::Int(42));
/// interp.close()?;
/// # Ok::<(), subinterp::Error>(())
/// ```
///
/// Dropping the handle closes the interpreter. Every operation after
/// [`close`](Self::close) fails with [`Error::Closed`].
pub struct Interpreter {
    tx: Sender<Msg>,
    id: i64,
    thread_id: ThreadId,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    capture: bool,
    interrupts: Arc<Interrupts>,
}

/// Shared between an interpreter's thread and its [`InterruptHandle`]s.
struct Interrupts {
    /// Taken away (under this lock) before the interpreter ends.
    target: Mutex<Option<InterruptTarget>>,
    /// True while an operation runs; changed only with the interpreter's GIL held.
    running: AtomicBool,
    /// Blocking waits (channels) in progress in this interpreter.
    waits: Arc<InterruptState>,
}

/// Interrupts the operation an [`Interpreter`] is running, from any thread (compare
/// `rusqlite::InterruptHandle`, `v8::IsolateHandle`).
///
/// Python code running bytecode gets the exception at its next bytecode boundary (within
/// about 5 ms, CPython's switch interval); code blocked in a channel `send`/`recv` wakes at
/// once and raises it. Code blocked inside a C function that never returns to Python
/// cannot be interrupted this way.
#[derive(Clone)]
pub struct InterruptHandle {
    interrupts: Arc<Interrupts>,
}

impl InterruptHandle {
    /// Raises `TimeoutError` ([`InterruptReason::Timeout`]) or `KeyboardInterrupt`
    /// ([`InterruptReason::Cancelled`]) in the running operation. Returns whether an
    /// operation was running; [`Error::Closed`] once the interpreter has ended.
    pub fn interrupt(&self, reason: InterruptReason) -> Result<bool> {
        self.interrupt_if(reason, || true)
    }

    /// Like [`interrupt`](Self::interrupt), only if `still_wanted()` — evaluated with the
    /// interpreter's GIL held, so that what it reads cannot change meanwhile — is true.
    pub(crate) fn interrupt_if(
        &self,
        reason: InterruptReason,
        still_wanted: impl FnOnce() -> bool,
    ) -> Result<bool> {
        let target = self
            .interrupts
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(target) = target.as_ref() else {
            return Err(Error::Closed);
        };
        let interrupts = &self.interrupts;
        let mut running = false;
        target.interrupt(
            || {
                running = interrupts.running.load(Ordering::Acquire) && still_wanted();
                // A wait in progress receives the interrupt directly; otherwise the
                // running bytecode gets it as an asynchronous exception.
                running && !interrupts.waits.request(reason)
            },
            reason,
        );
        Ok(running)
    }
}

impl std::fmt::Debug for InterruptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptHandle").finish_non_exhaustive()
    }
}

/// Captured output of an interpreter (see [`InterpreterConfig::capture_output`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Everything written to `sys.stdout` since the last take.
    pub stdout: String,
    /// Everything written to `sys.stderr` since the last take.
    pub stderr: String,
}

/// Positional and keyword arguments of a [`call`](Interpreter::call).
///
/// Tuples of up to six items convert (`(1, "a")`), as do `()` and `Vec<Value>`:
///
/// ```
/// use subinterp::{Args, Value};
/// let args = Args::new().arg(1).arg("two").kwarg("sep", ", ");
/// assert_eq!(args.positional, vec![Value::Int(1), Value::from("two")]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    /// Positional arguments.
    pub positional: Vec<Value>,
    /// Keyword arguments, in order.
    pub keywords: Vec<(String, Value)>,
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a positional argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        self.positional.push(value.into());
        self
    }

    /// Appends a keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.keywords.push((name.into(), value.into()));
        self
    }

    /// Appends a positional argument converted from any `Serialize` type.
    pub fn arg_serde<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.positional.push(crate::to_value(value)?);
        Ok(self)
    }
}

impl From<()> for Args {
    fn from(_: ()) -> Self {
        Args::new()
    }
}

impl From<Vec<Value>> for Args {
    fn from(positional: Vec<Value>) -> Self {
        Args {
            positional,
            keywords: Vec::new(),
        }
    }
}

macro_rules! args_from_tuple {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> From<($($name,)+)> for Args {
            #[allow(non_snake_case)]
            fn from(($($name,)+): ($($name,)+)) -> Self {
                Args { positional: vec![$($name.into()),+], keywords: Vec::new() }
            }
        }
    };
}
args_from_tuple!(A);
args_from_tuple!(A, B);
args_from_tuple!(A, B, C);
args_from_tuple!(A, B, C, D);
args_from_tuple!(A, B, C, D, E);
args_from_tuple!(A, B, C, D, E, F);

impl Interpreter {
    /// Creates an interpreter from `config` on a new thread.
    ///
    /// The configuration is validated first ([`Error::InvalidConfig`]); CPython's own
    /// refusal arrives as [`Error::CreateFailed`].
    pub fn new(runtime: &Runtime, config: &InterpreterConfig) -> Result<Interpreter> {
        let raw = config.to_raw()?;
        let rt = Arc::clone(&runtime.inner);
        let capture = config.captures_output();
        let grace = config.shutdown_grace_period();
        let paths: Vec<PathBuf> = config.paths().to_vec();
        let host_data = config.host_data_value();
        let (tx, rx) = unbounded::<Msg>();
        let (ready_tx, ready_rx) = bounded::<Result<(i64, Arc<Interrupts>)>>(1);
        let thread = std::thread::Builder::new()
            .name("subinterp".into())
            .stack_size(INTERPRETER_STACK)
            .spawn(move || {
                let started = std::time::Instant::now();
                let sub = match SubInterpreter::new(rt.main, raw) {
                    Ok(sub) => sub,
                    Err(msg) => {
                        let _ = ready_tx.send(Err(Error::CreateFailed(msg)));
                        return;
                    }
                };
                // Isolated interpreters have every extension module prepared; legacy ones
                // only those a hazard names: preparing numpy, Cython or PyO3 modules in
                // the main interpreter would take the one interpreter they allow.
                let prepare = match (rt.prepare_extensions, raw.use_main_obmalloc) {
                    (false, _) => Preparation::Off,
                    (true, false) => Preparation::All,
                    (true, true) => Preparation::Only(hazards::prepared_in_legacy(&rt.version)),
                };
                let setup = sub.with_gil(|py| {
                    setup(py, &rt, capture, prepare, &paths)?;
                    if let Some(data) = host_data {
                        crate::host::attach_data(py, data)?;
                    }
                    wait::register(py)
                });
                let waits = match setup {
                    Ok(waits) => waits,
                    Err(err) => {
                        sub.end();
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let id = sub.id();
                let interrupts = Arc::new(Interrupts {
                    target: Mutex::new(Some(sub.interrupt_target())),
                    running: AtomicBool::new(false),
                    waits,
                });
                tracing::debug!(
                    interpreter = id,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "interpreter created"
                );
                let _ = ready_tx.send(Ok((id, Arc::clone(&interrupts))));
                let reply = serve(&sub, &rx, &interrupts);
                // Threads of the interpreter blocked in a channel wait are cancelled, so that
                // waiting for them below ends.
                interrupts.waits.request(InterruptReason::Cancelled);
                let ended = sub.with_gil(|py| wind_down(py, capture, grace));
                if let Some(reply) = reply {
                    let _ = reply.send(ended.output);
                }
                drop(rx);
                // No interrupter may hold a thread state of this interpreter past here.
                interrupts
                    .target
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if ended.running.is_empty() {
                    sub.end();
                    tracing::debug!(interpreter = id, "interpreter closed");
                    if !raw.use_main_obmalloc {
                        hazards::isolated_interpreter_ended(&rt.version);
                    }
                } else {
                    tracing::warn!(
                        interpreter = id,
                        threads = ?ended.running,
                        "interpreter {id} left running: its Python threads {:?} did not end \
                         within the shutdown grace period of {:.1} s (daemon threads are \
                         not waited for)",
                        ended.running,
                        grace.as_secs_f64()
                    );
                    sub.abandon();
                }
                drop(rt);
            })
            .map_err(|e| Error::CreateFailed(format!("cannot start a thread: {e}")))?;
        let thread_id = thread.thread().id();
        let (id, interrupts) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(err)) => {
                let _ = thread.join();
                return Err(err);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::CreateFailed(
                    "the interpreter thread ended during creation".into(),
                ));
            }
        };
        Ok(Interpreter {
            tx,
            id,
            thread_id,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            capture,
            interrupts,
        })
    }

    /// A handle that interrupts whatever this interpreter is running, from any thread.
    pub fn interrupt_handle(&self) -> InterruptHandle {
        InterruptHandle {
            interrupts: Arc::clone(&self.interrupts),
        }
    }

    /// CPython's id for this interpreter (unique while it lives; 0 is the main one).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Runs `f` on the interpreter's thread with its GIL held, and returns its result.
    ///
    /// `f` gets a [`Python`] token whose brand ties every object it makes to this call:
    /// objects cannot be returned, stored, or used with another interpreter. A panic in
    /// `f` is caught and returned as [`Error::Panic`]; the interpreter stays usable.
    /// Calling this from inside `f` on the same interpreter would wait for itself and
    /// fails with [`Error::WouldDeadlock`].
    pub fn with_gil<R, F>(&self, f: F) -> Result<R>
    where
        F: for<'py> FnOnce(Python<'py>) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run(move |py| Ok(f(py)))
    }

    fn run<R, F>(&self, f: F) -> Result<R>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        if std::thread::current().id() == self.thread_id || crate::host::calling_from(self.id) {
            return Err(Error::WouldDeadlock);
        }
        self.submit(f)?.recv().map_err(|_| Error::Closed)?
    }

    /// Queues `f` to run on the interpreter's thread without waiting for it; its result
    /// arrives on the returned receiver (disconnected if the interpreter ends first).
    pub(crate) fn submit<R, F>(&self, f: F) -> Result<Receiver<Result<R>>>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (reply_tx, reply_rx) = bounded::<Result<R>>(1);
        let job: Job = Box::new(move |py| {
            let result = catch_unwind(AssertUnwindSafe(|| f(py)))
                .unwrap_or_else(|payload| Err(Error::Panic(panic_message(&*payload))));
            let _ = reply_tx.send(result);
        });
        self.tx.send(Msg::Job(job)).map_err(|_| Error::Closed)?;
        Ok(reply_rx)
    }

    /// Runs Python statements in the interpreter's `__main__` namespace.
    pub fn exec(&self, code: &str) -> Result<()> {
        let code = code.to_owned();
        self.run(move |py| py.run(&code, "<string>", &py.main_dict()?))
    }

    /// Runs a Python file in `__main__`, with `__file__` set to its path.
    ///
    /// The file is compiled as `python FILE` compiles it: UTF-8 unless a PEP 263 coding
    /// line (`# -*- coding: latin-1 -*-`) says otherwise; source that does not decode is a
    /// `SyntaxError`. A path that is not UTF-8 keeps its bytes, as `os.fsdecode` does.
    pub fn exec_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref().to_owned();
        let source = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.run(move |py| {
            let globals = py.main_dict()?;
            let filename = py.path(&path)?;
            globals.set_item(&py.str("__file__")?, &filename)?;
            let code = py.compile_bytes(&source, &filename, "exec")?;
            py.eval_code(&code, &globals).map(drop)
        })
    }

    /// Evaluates an expression in `__main__` and copies the result out.
    pub fn eval(&self, expr: &str) -> Result<Value> {
        let expr = expr.to_owned();
        self.run(move |py| py.eval(&expr)?.to_value())
    }

    /// Calls a function named `module:qualname` (e.g. `"os.path:join"`,
    /// `"pkg.mod:Class.method"`) or `module.attr` (e.g. `"math.sqrt"`), importing the
    /// module if needed, and copies the result out.
    pub fn call(&self, target: &str, args: impl Into<Args>) -> Result<Value> {
        let (module, path) = parse_target(target)?;
        let args = args.into();
        self.run(move |py| call_target(py, &module, &path, &args))
    }

    /// Like [`call`](Self::call), converting the result to `T` with serde.
    pub fn call_as<T: DeserializeOwned>(&self, target: &str, args: impl Into<Args>) -> Result<T> {
        crate::from_value(self.call(target, args)?)
    }

    /// Prepends a directory to this interpreter's `sys.path`. A path that is not UTF-8
    /// keeps its bytes, as Python's own file names do (`os.fsdecode`).
    pub fn add_path(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref().to_owned();
        self.run(move |py| {
            let path = py.import("sys")?.getattr("path")?;
            path.call_method("insert", &[&py.to_object(&Value::Int(0))?, &py.path(&dir)?])
                .map(drop)
        })
    }

    /// Sets `sys.argv`.
    pub fn set_argv<S: AsRef<str>>(&self, argv: &[S]) -> Result<()> {
        let argv = Value::List(argv.iter().map(|a| Value::from(a.as_ref())).collect());
        self.run(move |py| py.import("sys")?.setattr("argv", &py.to_object(&argv)?))
    }

    /// Sets `sys.argv` from operating-system strings (script paths, arguments), decoded
    /// as `python` decodes its command line: bytes that are not UTF-8 become surrogate
    /// escapes, so `os.fsencode(sys.argv[i])` gives them back.
    pub fn set_argv_os<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<()> {
        let argv: Vec<PathBuf> = argv.iter().map(|a| PathBuf::from(a.as_ref())).collect();
        self.run(move |py| {
            let items = argv
                .iter()
                .map(|a| py.path(a))
                .collect::<Result<Vec<_>>>()?;
            let list = py.to_object(&Value::List(Vec::new()))?;
            for item in &items {
                list.call_method("append", &[item])?;
            }
            py.import("sys")?.setattr("argv", &list)
        })
    }

    /// Takes what the interpreter wrote to `sys.stdout` and `sys.stderr` since the last
    /// take. Needs [`InterpreterConfig::capture_output`].
    pub fn take_output(&self) -> Result<Output> {
        if !self.capture {
            return Err(capture_off());
        }
        self.run(|py| {
            Ok(Output {
                stdout: take_stream(py, "stdout")?,
                stderr: take_stream(py, "stderr")?,
            })
        })
    }

    /// Ends the interpreter: interrupts the running operation, if any, with
    /// `KeyboardInterrupt` (and the channel waits of its other threads), waits for its
    /// Python threads, runs its `atexit` handlers, flushes its output and frees it.
    /// Operations queued behind the running one still run first. Idempotent.
    ///
    /// The wait for Python threads lasts at most the configured
    /// [`shutdown_grace`](InterpreterConfig::shutdown_grace); an interpreter whose threads
    /// still run after it is left in memory with a warning (CPython cannot end it), and
    /// this returns.
    pub fn close(&self) -> Result<()> {
        self.shut(None)
    }

    /// Closes the interpreter like [`close`](Self::close) and returns the output it
    /// captured until its very end — including what its Python threads and `atexit`
    /// callbacks wrote while it ended. Needs [`InterpreterConfig::capture_output`].
    pub fn close_and_take_output(&self) -> Result<Output> {
        if !self.capture {
            return Err(capture_off());
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (tx, rx) = bounded(1);
        self.shut(Some(tx))?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    fn shut(&self, reply: Option<Sender<Result<Output>>>) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let _ = self.tx.send(Msg::Close(reply));
        // A running operation (say, blocked in a channel receive) is cancelled.
        let _ = self
            .interrupt_handle()
            .interrupt(InterruptReason::Cancelled);
        if std::thread::current().id() == self.thread_id {
            // Closing from inside one of its own operations: the thread ends after it.
            return Ok(());
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            thread
                .join()
                .map_err(|p| Error::Panic(panic_message(&*p)))?;
        }
        Ok(())
    }
}

impl Drop for Interpreter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

impl std::fmt::Debug for Interpreter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interpreter")
            .field("id", &self.id)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The interpreter thread's loop: the GIL is held only while a job runs.
/// Returns the reply channel of the `Close` message, if it asked for the final output.
fn serve(
    sub: &SubInterpreter,
    rx: &Receiver<Msg>,
    interrupts: &Interrupts,
) -> Option<Sender<Result<Output>>> {
    loop {
        match rx.recv() {
            Ok(Msg::Job(job)) => sub.with_gil(|py| {
                interrupts.running.store(true, Ordering::Release);
                job(py);
                // An interrupt that arrived as the job ended must not hit the next one.
                interrupts.running.store(false, Ordering::Release);
                clear_pending_async(py);
            }),
            Ok(Msg::Close(reply)) => return reply,
            Err(_) => return None,
        }
    }
}

/// Joins the interpreter's non-daemon threads, for at most `grace` seconds (`None`: no
/// limit), including threads started meanwhile; leaves in `left` the names of the threads
/// still running then — and of daemon threads, which are not waited for (as `python`
/// does not wait for them) but, running, keep the interpreter from ending. `threading`
/// and `_thread` are the modules if loaded, else `None`.
///
/// Neither this thread (never asked for with `current_thread()`, which would make
/// `threading` record it as a dummy thread) nor the main thread is waited for: in a
/// subinterpreter `threading` may take the process's main thread for it (3.13), and it
/// never ends while we run.
const JOIN_THREADS: &str = "\
def _join(threading, grace):
    me = threading.get_ident()
    main = threading.main_thread()
    clock = threading._time
    deadline = None if grace is None else clock() + grace
    def others():
        return [
            t for t in threading.enumerate()
            if t.ident != me and t is not main
            and not isinstance(t, threading._DummyThread)
        ]
    while True:
        pending = [t for t in others() if not t.daemon]
        if not pending:
            break
        for thread in pending:
            if deadline is None:
                thread.join()
            else:
                thread.join(max(0.0, deadline - clock()))
        if deadline is not None and clock() >= deadline:
            break
    return [t.name for t in others() if t.is_alive()]
left = [] if threading is None else _join(threading, grace)
if not left and _thread is not None and _thread._count() > 0:
    left = [f'{_thread._count()} started with _thread']
";

/// How an interpreter's end went: the output captured until then, and the names of its
/// Python threads still running after the grace period.
struct WoundDown {
    output: Result<Output>,
    running: Vec<String>,
}

/// What `Py_EndInterpreter` would do first — wait for the interpreter's Python threads and
/// run its `atexit` callbacks — done here so their output can still be flushed and
/// collected, and so the wait for threads is bounded by `grace`. `Py_EndInterpreter`
/// repeats both steps, finding nothing left to do. Only modules already loaded are used:
/// nothing is imported while the interpreter ends.
fn wind_down(py: Python<'_>, capture: bool, grace: Duration) -> WoundDown {
    // Joining the threads ourselves (rather than `threading._shutdown()`, which CPython
    // 3.12 cannot run twice, and which waits without limit) leaves `Py_EndInterpreter`
    // nothing to wait for.
    let mut running = Vec::new();
    let mut join = || -> Result<()> {
        let globals = py.dict()?;
        for name in ["threading", "_thread"] {
            let module = py.loaded_module(name)?.unwrap_or_else(|| py.none());
            globals.set_item(&py.str(name)?, &module)?;
        }
        let grace = match grace.as_secs_f64() {
            // Beyond a century: no limit.
            secs if secs > 3.0e9 => py.none(),
            secs => py.to_object(&Value::Float(secs))?,
        };
        globals.set_item(&py.str("grace")?, &grace)?;
        py.run(JOIN_THREADS, "<subinterp shutdown>", &globals)?;
        if let Value::List(names) = globals.get_item(&py.str("left")?)?.to_value()? {
            running = names
                .into_iter()
                .map(|name| match name {
                    Value::Str(name) => name,
                    other => format!("{other:?}"),
                })
                .collect();
        }
        Ok(())
    };
    let joined = join();
    let exited = py
        .loaded_module("atexit")
        .and_then(|m| m.map(|m| m.call_method("_run_exitfuncs", &[])).transpose());
    for (what, result) in [
        ("joining threads", joined),
        ("running atexit", exited.map(drop)),
    ] {
        if let Err(err) = result {
            tracing::warn!("while ending an interpreter, {what} failed: {err}");
        }
    }
    flush_streams(py);
    let output = if capture {
        take_stream(py, "stdout").and_then(|stdout| {
            Ok(Output {
                stdout,
                stderr: take_stream(py, "stderr")?,
            })
        })
    } else {
        Ok(Output::default())
    };
    WoundDown { output, running }
}

/// Wraps the extension module loader of a subinterpreter so that the main
/// interpreter imports each extension module first (see [`crate::hazards`]), or only
/// those named in `only` when it is a set. Built-in modules are left alone: single-phase
/// built-ins such as `faulthandler` load in isolated interpreters only while the main
/// interpreter has not imported them (CPython python/cpython#119450), and test runners
/// need them.
const PREPARE_IN_MAIN: &str = "\
def _wrap(only):
    import sys, subinterp
    external = sys.modules['_frozen_importlib_external']
    prepare = subinterp._prepare_in_main
    create = external.ExtensionFileLoader.create_module

    def create_module(self, spec, _create=create, _prepare=prepare, _sys=sys, _only=only):
        if _only is None or spec.name in _only:
            _prepare(spec.name, [entry for entry in _sys.path if isinstance(entry, str)])
        return _create(self, spec)

    external.ExtensionFileLoader.create_module = create_module
_wrap(None if only is None else frozenset(only))
";

/// Which extension modules a new interpreter has imported in the main interpreter first.
enum Preparation {
    Off,
    All,
    Only(Vec<&'static str>),
}

fn setup(
    py: Python<'_>,
    rt: &RuntimeInner,
    capture: bool,
    prepare: Preparation,
    paths: &[PathBuf],
) -> Result<()> {
    hazards::limit_thread_walks(py)?;
    let globals = py.dict()?;
    if rt.borrowed {
        // No built-in `subinterp` module in a borrowed Python: this interpreter gets its
        // own from the definition the extension module made.
        let module = crate::raw::module::instantiate(py, 0, "subinterp")?;
        py.import("sys")?
            .getattr("modules")?
            .set_item(&py.str("subinterp")?, &module)?;
    }
    let only = match prepare {
        Preparation::Off => None,
        Preparation::Only(names) if names.is_empty() => None,
        Preparation::All => Some(Value::None),
        Preparation::Only(names) => Some(Value::List(names.into_iter().map(Value::from).collect())),
    };
    if let Some(only) = only {
        let scope = py.dict()?;
        scope.set_item(&py.str("only")?, &py.to_object(&only)?)?;
        py.run(PREPARE_IN_MAIN, "<subinterp prepare>", &scope)?;
    }
    if let Some(bootstrap) = &rt.bootstrap {
        py.run(bootstrap, "<subinterp bootstrap>", &globals)?;
    }
    if !paths.is_empty() {
        let path = py.import("sys")?.getattr("path")?;
        for (i, dir) in paths.iter().enumerate() {
            path.call_method("insert", &[&py.to_object(&Value::from(i))?, &py.path(dir)?])?;
        }
    }
    if capture {
        py.run(
            "import io, sys\n\
             def _stream():\n    \
                 return io.TextIOWrapper(io.BytesIO(), encoding='utf-8', \
                 errors='backslashreplace', write_through=True)\n\
             sys.stdout = _stream()\n\
             sys.stderr = _stream()\n",
            "<subinterp capture>",
            &globals,
        )?;
    }
    Ok(())
}

fn take_stream(py: Python<'_>, name: &str) -> Result<String> {
    let stream = py.import("sys")?.getattr(name)?;
    stream.call_method("flush", &[])?;
    let buffer = stream.getattr("buffer")?;
    let data = buffer.call_method("getvalue", &[])?;
    let zero = py.to_object(&Value::Int(0))?;
    buffer.call_method("seek", &[&zero])?;
    buffer.call_method("truncate", &[])?;
    match data.to_value()? {
        Value::Bytes(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        _ => Ok(String::new()),
    }
}

/// Flushes `sys.stdout` and `sys.stderr`, ignoring failures (a closed or replaced stream).
fn flush_streams(py: Python<'_>) {
    for name in ["stdout", "stderr"] {
        let flushed = py
            .import("sys")
            .and_then(|sys| sys.getattr(name))
            .and_then(|s| s.call_method("flush", &[]));
        drop(flushed);
    }
}

/// Imports `module`, follows the dotted `path` to a callable, calls it with `args` and
/// copies the result out.
pub(crate) fn call_target(py: Python<'_>, module: &str, path: &str, args: &Args) -> Result<Value> {
    let mut callable = py.import(module)?;
    for attr in path.split('.') {
        callable = callable.getattr(attr)?;
    }
    call_with(py, &callable, args)?.to_value()
}

fn call_with<'py>(py: Python<'py>, callable: &PyObj<'py>, args: &Args) -> Result<PyObj<'py>> {
    let positional = args
        .positional
        .iter()
        .map(|v| py.to_object(v))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&PyObj<'py>> = positional.iter().collect();
    let kwargs = if args.keywords.is_empty() {
        None
    } else {
        let dict = py.dict()?;
        for (k, v) in &args.keywords {
            dict.set_item(&py.str(k)?, &py.to_object(v)?)?;
        }
        Some(dict)
    };
    py.call_kw(callable, &refs, kwargs.as_ref())
}

/// Splits a call target — `module:qualname` (`"pkg.mod:Class.method"`) or `module.attr`
/// (`"math.sqrt"`) — into the module name and the dotted attribute path, checking that
/// both are dotted Python identifiers.
///
/// ```
/// assert_eq!(
///     subinterp::parse_target("os.path:join").unwrap(),
///     ("os.path".to_owned(), "join".to_owned())
/// );
/// assert!(subinterp::parse_target("not a target").is_err());
/// ```
pub fn parse_target(target: &str) -> Result<(String, String)> {
    let bad = |reason: &str| Error::InvalidTarget {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    let (module, path) = match target.split_once(':') {
        Some((m, p)) => (m, p),
        None => target
            .rsplit_once('.')
            .ok_or_else(|| bad("expected module:function or module.function"))?,
    };
    let valid = |dotted: &str| {
        !dotted.is_empty()
            && dotted.split('.').all(|part| {
                let mut chars = part.chars();
                chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
                    && chars.all(|c| c == '_' || c.is_alphanumeric())
            })
    };
    if !valid(module) {
        return Err(bad("the module name must be a dotted Python identifier"));
    }
    if !valid(path) {
        return Err(bad("the function name must be a dotted Python identifier"));
    }
    Ok((module.to_owned(), path.to_owned()))
}

fn capture_off() -> Error {
    Error::InvalidConfig(
        "output capture is off for this interpreter; enable InterpreterConfig::capture_output"
            .into(),
    )
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("os.path:join").unwrap(),
            ("os.path".into(), "join".into())
        );
        assert_eq!(
            parse_target("math.sqrt").unwrap(),
            ("math".into(), "sqrt".into())
        );
        assert_eq!(
            parse_target("pkg.mod:Class.method").unwrap(),
            ("pkg.mod".into(), "Class.method".into())
        );
        for bad in ["", "math", ":f", "m:", "m:f g", "1m:f", "m:.f"] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
