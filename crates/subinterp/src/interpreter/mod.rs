//! [`Interpreter`]: one isolated subinterpreter, owned by a dedicated OS thread.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde::de::DeserializeOwned;

pub mod config;
pub(crate) mod limits;

use crate::audit;
use crate::call::{call_target_wire, result_wire, Args, Target};
use crate::error::{Error, Result};
use crate::hazards;
use crate::hazards::prepare;
use crate::interpreter::config::InterpreterConfig;
use crate::interpreter::config::{MemoryPressure, SoftLimit, SoftLimitAction};
use crate::interpreter::limits::{Meter, Watch};
use crate::raw::lifecycle::{clear_pending_async, InterruptTarget, Raise, SubInterpreter};
use crate::raw::threads;
use crate::raw::Python;
use crate::runtime::spare::{self, Body};
use crate::runtime::{Runtime, RuntimeInner};
use crate::stats::{self, Counters, Meters, Outcome, Stats};
use crate::value::wire;
use crate::value::Value;
use crate::wait::{self, InterruptReason, InterruptState};

/// An operation: runs with the GIL held and returns how to hand its result to its
/// caller, which happens only once the operation is no longer marked as running (so a
/// caller that got its result never sees it still running).
type Job = Box<dyn for<'py> FnOnce(Python<'py>) -> Reply + Send>;
type Reply = Box<dyn FnOnce() + Send>;

enum Msg {
    Job(Job),
    /// End the interpreter; with a sender, reply with the output captured until the end.
    Close(Option<Sender<Result<Output>>>),
}

/// How long an operation interrupted at its deadline may go on before the caller gets
/// [`Error::Timeout`] anyway (code blocked in C cannot be stopped).
pub const CALL_GRACE: Duration = Duration::from_secs(1);

/// How often an operation past its deadline is interrupted again, until it ends: code
/// that catches the `TimeoutError` (say, `except Exception` in a plugin's loop) gets it
/// again.
const REPEAT_INTERRUPT: Duration = Duration::from_millis(200);

/// Options of one [`call_with`](Interpreter::call_with) or
/// [`exec_with`](Interpreter::exec_with) (compare the pool's
/// [`TaskOptions`](crate::TaskOptions)).
///
/// ```
/// use std::time::Duration;
/// let options = subinterp::CallOptions::new().timeout(Duration::from_secs(2));
/// assert_eq!(options.timeout, Some(Duration::from_secs(2)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallOptions {
    /// Deadline, counted from the call — time spent queued behind other operations of
    /// the interpreter included.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    /// No deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// An interpreter's operation, started; see [`Interpreter::start`].
pub(crate) struct Running<R> {
    reply: Receiver<Result<R>>,
    /// The operation's number once it runs (0: not yet; [`NEVER`]: it never will).
    op: Arc<AtomicU64>,
    interrupts: Arc<Interrupts>,
}

/// [`Running::op`] of an operation withdrawn before it started.
const NEVER: u64 = u64::MAX;

impl<R> Running<R> {
    /// Waits up to `timeout` for the result (`None`: not yet).
    pub(crate) fn wait(&self, timeout: Duration) -> Option<Result<R>> {
        match self.reply.recv_timeout(timeout) {
            Ok(result) => Some(result),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Err(Error::Closed)),
        }
    }

    /// Interrupts this operation, never another: raises `reason` in it if it runs (again
    /// every [`REPEAT_INTERRUPT`] until it ends, with `repeat`), or withdraws it if it
    /// has not started: then it never runs, and this returns true. Never waits for the
    /// interpreter's GIL.
    pub(crate) fn interrupt(&self, reason: InterruptReason, repeat: bool) -> bool {
        match self
            .op
            .compare_exchange(0, NEVER, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(NEVER) => true,
            Err(op) => {
                let _ = self.interrupts.request(Request {
                    raise: Raise::Interrupt(reason),
                    op,
                    still_wanted: None,
                    repeat,
                });
                false
            }
        }
    }
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
///
/// # Deadlines and stuck interpreters
///
/// [`call_with`](Self::call_with) and [`exec_with`](Self::exec_with) take a deadline: at
/// it, the operation gets `TimeoutError` (and again every 0.2 s while it goes on, so a
/// loop that catches `Exception` does not outlive it); if it still runs
/// [`CALL_GRACE`] later — blocked in C code, which no interrupt reaches — the caller gets
/// [`Error::Timeout`] and the operation is left running. The interpreter is then
/// busy until that code returns: later operations wait for it (queued in order; a
/// deadline counts from the call, so a later `call_with` times out in turn), and
/// [`close`](Self::close) leaves it behind after its grace period.
pub struct Interpreter {
    tx: Sender<Msg>,
    id: i64,
    thread_id: ThreadId,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Disconnected when the interpreter's thread has ended; a message when it has
    /// finished its operations and is ending the interpreter.
    ending: Receiver<()>,
    capture: bool,
    grace: Duration,
    interrupts: Arc<Interrupts>,
    stats: Arc<Counters>,
    meter: Arc<Meter>,
}

/// Shared between an interpreter's thread and its [`InterruptHandle`]s.
struct Interrupts {
    /// Taken away (under this lock) before the interpreter ends.
    target: Mutex<Option<InterruptTarget>>,
    /// True while an operation runs; changed only with the interpreter's GIL held.
    running: AtomicBool,
    /// The number of the operation running or last run; changed only with the GIL held.
    op: AtomicU64,
    /// Blocking waits (channels) in progress in this interpreter.
    waits: Arc<InterruptState>,
    /// Set when [`Interpreter::close`]'s grace period has passed with operations still
    /// running: each operation that runs from then on is cancelled (again every
    /// [`REPEAT_INTERRUPT`] until it ends), so that queued code cannot keep the
    /// interpreter from ending.
    cancel_all: AtomicBool,
    /// Interrupts waiting for the delivery thread.
    delivery: Mutex<Delivery>,
    wake: Condvar,
}

#[derive(Default)]
struct Delivery {
    pending: Vec<Request>,
    started: bool,
    /// Set when the interpreter ends: no more interrupts.
    ended: bool,
}

/// An interrupt for the delivery thread to raise.
struct Request {
    raise: Raise,
    /// The operation it is meant for.
    op: u64,
    /// Asked with the interpreter's GIL held, right before raising.
    still_wanted: Option<Box<dyn Fn() -> bool + Send>>,
    /// Raise again every [`REPEAT_INTERRUPT`] until the operation ends.
    repeat: bool,
}

impl Interrupts {
    fn new(target: InterruptTarget, waits: Arc<InterruptState>) -> Self {
        Interrupts {
            target: Mutex::new(Some(target)),
            running: AtomicBool::new(false),
            op: AtomicU64::new(0),
            waits,
            cancel_all: AtomicBool::new(false),
            delivery: Mutex::new(Delivery::default()),
            wake: Condvar::new(),
        }
    }

    /// True while operation `op` runs (as seen without the GIL).
    fn runs(&self, op: u64) -> bool {
        self.running.load(Ordering::Acquire) && self.op.load(Ordering::Acquire) == op
    }

    /// Hands `request` to the delivery thread (started on first use), which raises it
    /// with the interpreter's GIL held: whoever interrupts never waits for that GIL,
    /// which code running in C may hold for long.
    fn request(self: &Arc<Self>, request: Request) -> Result<()> {
        let mut delivery = lock(&self.delivery);
        if delivery.ended {
            return Err(Error::Closed);
        }
        delivery.pending.push(request);
        if !delivery.started {
            let interrupts = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("subinterp-interrupt".into())
                .spawn(move || interrupts.deliver_all());
            if let Err(err) = spawned {
                delivery.pending.clear();
                tracing::error!("cannot start the interrupt thread: {err}");
                return Ok(());
            }
            delivery.started = true;
        }
        self.wake.notify_all();
        Ok(())
    }

    /// The delivery thread: raises each request, and the repeating ones again until
    /// their operation ends; ends with the interpreter.
    fn deliver_all(self: Arc<Self>) {
        let mut repeating: Vec<Request> = Vec::new();
        loop {
            let batch = {
                let mut delivery = lock(&self.delivery);
                loop {
                    if delivery.ended {
                        return;
                    }
                    if !delivery.pending.is_empty() {
                        break std::mem::take(&mut delivery.pending);
                    }
                    repeating.retain(|r| self.runs(r.op));
                    if repeating.is_empty() {
                        delivery = self.wake.wait(delivery).unwrap_or_else(|e| e.into_inner());
                    } else {
                        let (guard, waited) = self
                            .wake
                            .wait_timeout(delivery, REPEAT_INTERRUPT)
                            .unwrap_or_else(|e| e.into_inner());
                        delivery = guard;
                        if waited.timed_out() && delivery.pending.is_empty() {
                            break Vec::new();
                        }
                    }
                }
            };
            let again = batch.is_empty();
            for request in batch.iter().chain(repeating.iter().filter(|_| again)) {
                self.deliver(request);
            }
            repeating.extend(batch.into_iter().filter(|r| r.repeat));
        }
    }

    /// Raises `request` if its operation still runs, with the interpreter's GIL held so
    /// that the operation cannot end meanwhile: an interrupt never reaches a later one.
    fn deliver(&self, request: &Request) {
        let target = lock(&self.target);
        let Some(target) = target.as_ref() else {
            return;
        };
        target.interrupt(
            || {
                self.runs(request.op)
                    && request.still_wanted.as_ref().map_or(true, |wanted| wanted())
                    // A wait in progress receives the interrupt directly; otherwise the
                    // running bytecode gets it as an asynchronous exception.
                    && match request.raise {
                        Raise::Interrupt(reason) => !self.waits.request(reason),
                        // Memory is allocated by running code, not by a wait.
                        Raise::MemoryError => true,
                    }
            },
            request.raise,
        );
    }

    /// Raises `KeyboardInterrupt` in the operation running now, if any, again every
    /// [`REPEAT_INTERRUPT`] until it ends.
    fn cancel_running(self: &Arc<Self>) {
        let op = self.op.load(Ordering::Acquire);
        if self.runs(op) {
            let _ = self.request(Request {
                raise: Raise::Interrupt(InterruptReason::Cancelled),
                op,
                still_wanted: None,
                repeat: true,
            });
        }
    }

    /// No more interrupts: the interpreter ends.
    fn end(&self) {
        let mut delivery = lock(&self.delivery);
        delivery.ended = true;
        delivery.pending.clear();
        self.wake.notify_all();
    }
}

/// What the memory watcher does when the interpreter was granted memory past its limit:
/// raises `MemoryError` in the operation running, if it still holds too much once the
/// interpreter's GIL is held (a wait in progress is left alone: waits allocate nothing).
fn memory_error(interrupts: &Arc<Interrupts>, meter: &Arc<Meter>) -> impl Fn() + Send + Sync {
    let interrupts = Arc::downgrade(interrupts);
    let meter = Arc::downgrade(meter);
    move || {
        let (Some(interrupts), Some(meter)) = (interrupts.upgrade(), meter.upgrade()) else {
            return;
        };
        let op = interrupts.op.load(Ordering::Acquire);
        if interrupts.runs(op) {
            let _ = interrupts.request(Request {
                raise: Raise::MemoryError,
                op,
                still_wanted: Some(Box::new(move || meter.enforcing())),
                repeat: false,
            });
        }
    }
}

/// What the memory watcher does when the interpreter passed its soft limit: asks the
/// host's callback, and does what it says.
fn soft_limit_told(
    id: i64,
    soft: SoftLimit,
    interrupts: &Arc<Interrupts>,
    meter: &Arc<Meter>,
) -> Box<dyn Fn(u64) + Send + Sync> {
    let interrupts = Arc::downgrade(interrupts);
    let meter = Arc::downgrade(meter);
    Box::new(move |in_use| {
        let (Some(interrupts), Some(meter)) = (interrupts.upgrade(), meter.upgrade()) else {
            return;
        };
        let pressure = MemoryPressure {
            interpreter: id,
            in_use,
            soft_limit: soft.bytes,
            limit: meter.memory_limit(),
        };
        let action = (soft.callback)(&pressure);
        tracing::info!(
            interpreter = id,
            in_use,
            soft_limit = soft.bytes,
            ?action,
            "soft memory limit passed"
        );
        let raise = match action {
            SoftLimitAction::RaiseMemoryError => Raise::MemoryError,
            SoftLimitAction::Cancel => Raise::Interrupt(InterruptReason::Cancelled),
            SoftLimitAction::ReplaceWorker => {
                meter.request_replacement();
                return;
            }
            _ => return,
        };
        let op = interrupts.op.load(Ordering::Acquire);
        if interrupts.runs(op) {
            let _ = interrupts.request(Request {
                raise,
                op,
                still_wanted: None,
                repeat: false,
            });
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Interrupts the operation an [`Interpreter`] is running, from any thread (compare
/// `rusqlite::InterruptHandle`, `v8::IsolateHandle`).
///
/// Python code running bytecode gets the exception at its next bytecode boundary (within
/// about 5 ms, CPython's switch interval); code blocked in a channel `send`/`recv` wakes at
/// once and raises it. Code blocked inside a C function that never returns to Python
/// cannot be interrupted this way. Interrupting never waits for the interpreter: the
/// exception is raised by a thread of its own, which takes the interpreter's GIL (code
/// running in C may hold it for long), and only if the operation running when
/// [`interrupt`](Self::interrupt) was called is still running then.
#[derive(Clone)]
pub struct InterruptHandle {
    interrupts: Arc<Interrupts>,
}

impl InterruptHandle {
    /// Raises `TimeoutError` ([`InterruptReason::Timeout`]) or `KeyboardInterrupt`
    /// ([`InterruptReason::Cancelled`]) in the running operation. Returns whether an
    /// operation was running; [`Error::Closed`] once the interpreter has ended.
    pub fn interrupt(&self, reason: InterruptReason) -> Result<bool> {
        self.request(reason, None)
    }

    /// Like [`interrupt`](Self::interrupt), only if `still_wanted()` — evaluated with the
    /// interpreter's GIL held, so that what it reads cannot change meanwhile — is true.
    pub(crate) fn interrupt_if(
        &self,
        reason: InterruptReason,
        still_wanted: impl Fn() -> bool + Send + 'static,
    ) -> Result<bool> {
        self.request(reason, Some(Box::new(still_wanted)))
    }

    fn request(
        &self,
        reason: InterruptReason,
        still_wanted: Option<Box<dyn Fn() -> bool + Send>>,
    ) -> Result<bool> {
        let interrupts = &self.interrupts;
        let op = interrupts.op.load(Ordering::Acquire);
        let running = interrupts.runs(op);
        if lock(&interrupts.delivery).ended {
            return Err(Error::Closed);
        }
        if running {
            interrupts.request(Request {
                raise: Raise::Interrupt(reason),
                op,
                still_wanted,
                repeat: false,
            })?;
        }
        Ok(running)
    }
}

impl std::fmt::Debug for InterruptHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterruptHandle").finish_non_exhaustive()
    }
}

thread_local! {
    /// The interpreters whose operations wait, directly or through host functions, for
    /// the operation running on this thread (this interpreter's own id last).
    static CHAIN: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
}

/// True if interpreter `id` waits for what this thread runs: an operation on it from
/// here would wait for itself (A calls a host function that evaluates in B, whose host
/// function evaluates in A).
fn waits_for_this_thread(id: i64) -> bool {
    CHAIN.with(|chain| chain.borrow().contains(&id))
}

/// Captured output of an interpreter (see [`InterpreterConfig::capture_output`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// Everything written to `sys.stdout` since the last take.
    pub stdout: String,
    /// Everything written to `sys.stderr` since the last take.
    pub stderr: String,
}

impl Interpreter {
    /// Creates an interpreter from `config` on a new thread.
    ///
    /// The configuration is validated first ([`Error::InvalidConfig`]); CPython's own
    /// refusal arrives as [`Error::CreateFailed`].
    pub fn new(runtime: &Runtime, config: &InterpreterConfig) -> Result<Interpreter> {
        Self::new_in(runtime, config, None)
    }

    /// Starts creating an interpreter of `config`'s kind in the background, on a thread
    /// of its own: the next [`Interpreter::new`] (or pool worker) of that kind takes it,
    /// and is ready without waiting the 5–10 ms CPython takes to create an isolated
    /// interpreter. Only the kind must match (isolated or legacy, and what it allows);
    /// the rest of the taker's config applies as usual. One spare at a time: while one
    /// waits, this does nothing. A spare never taken ends with the runtime.
    pub fn prestart(runtime: &Runtime, config: &InterpreterConfig) -> Result<()> {
        let raw = config.to_raw()?;
        let main = runtime.inner.main();
        runtime.inner.keep_spare(|| spare::Spare::start(main, raw))
    }

    /// [`new`](Self::new), its counters added to `parent` too (a pool's).
    pub(crate) fn new_in(
        runtime: &Runtime,
        config: &InterpreterConfig,
        parent: Option<Arc<Counters>>,
    ) -> Result<Interpreter> {
        let raw = config.to_raw()?;
        let rt = Arc::clone(&runtime.inner);
        let capture = config.captures_output();
        let grace = config.shutdown_grace_period();
        let paths: Vec<PathBuf> = config.paths().to_vec();
        let host_data = config.host_data_value();
        let guards = config.guard_rails().clone();
        let memory_limit = config.memory_limit_bytes();
        let soft_limit = config.soft_limit().cloned();
        if (memory_limit.is_some() || soft_limit.is_some()) && !crate::raw::alloc::installed() {
            return Err(Error::InvalidConfig(limits::unavailable().into()));
        }
        let (tx, rx) = unbounded::<Msg>();
        type Ready = (i64, Arc<Interrupts>, Arc<Counters>, Arc<Meter>);
        let (ready_tx, ready_rx) = bounded::<Result<Ready>>(1);
        let (ending_tx, ending) = bounded::<()>(1);
        let main = rt.main();
        let body: Body = Box::new(move |made, ahead| {
            let started = std::time::Instant::now();
            let sub = match made {
                Ok(sub) => sub,
                Err(msg) => {
                    let _ = ready_tx.send(Err(Error::CreateFailed(msg)));
                    return;
                }
            };
            let meter = match Meter::start(&sub, memory_limit, soft_limit.as_ref().map(|s| s.bytes))
            {
                Ok(meter) => Arc::new(meter),
                Err(err) => {
                    sub.end();
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            // Isolated interpreters have every extension module prepared; legacy ones
            // only those a hazard names: preparing numpy, Cython or PyO3 modules in
            // the main interpreter would take the one interpreter they allow.
            let prepare = prepare::Preparation::of(
                rt.prepares_extensions(),
                raw.use_main_obmalloc,
                rt.version(),
            );
            let counters = Arc::new(Counters::for_interpreter(sub.id(), parent));
            let setup = sub.with_gil(|py| {
                stats::attach(py, Arc::clone(&counters))?;
                if ahead {
                    refresh_environ(py)?;
                }
                setup(py, &rt, capture, prepare, &paths)?;
                if let Some(data) = host_data {
                    crate::host::attach_data(py, data)?;
                }
                audit::install(py, &guards)?;
                wait::register(py)
            });
            let waits = match setup {
                Ok(waits) => waits,
                Err(err) => {
                    meter.leave_thread();
                    sub.end();
                    meter.finish();
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            let id = sub.id();
            let interrupts = Arc::new(Interrupts::new(sub.interrupt_target(), waits));
            meter.watch(Watch {
                memory_error: Box::new(memory_error(&interrupts, &meter)),
                soft: soft_limit.map(|soft| soft_limit_told(id, soft, &interrupts, &meter)),
            });
            tracing::debug!(
                interpreter = id,
                elapsed_us = started.elapsed().as_micros() as u64,
                "interpreter created"
            );
            counters.created();
            let meters: Arc<dyn Meters> = meter.clone();
            counters.meter(&meters);
            let _ = ready_tx.send(Ok((
                id,
                Arc::clone(&interrupts),
                Arc::clone(&counters),
                Arc::clone(&meter),
            )));
            let reply = serve(&sub, &rx, &interrupts);
            let _ = ending_tx.try_send(());
            // Threads of the interpreter blocked in a channel wait are cancelled, so that
            // waiting for them below ends.
            interrupts.waits.request(InterruptReason::Cancelled);
            let ended = sub.with_gil(|py| wind_down(py, capture, grace));
            if let Some(reply) = reply {
                let _ = reply.send(ended.output);
            }
            drop(rx);
            interrupts.end();
            // No interrupter may hold a thread state of this interpreter past here.
            lock(&interrupts.target).take();
            meter.leave_thread();
            if ended.running.is_empty() {
                sub.end();
                counters.ended();
                tracing::debug!(
                    interpreter = id,
                    stats = %counters.snapshot().to_json(),
                    "interpreter closed"
                );
                if !raw.use_main_obmalloc {
                    hazards::isolated_interpreter_ended(rt.version());
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
            meter.finish();
            counters.unmeter(&meters);
            drop(rt);
            drop(ending_tx);
        });
        // A spare of this kind, made ahead, if the runtime has one; else a new thread.
        let given = match runtime.inner.take_spare(raw) {
            Some(spare) => spare.give(body),
            None => Err(body),
        };
        let thread = match given {
            Ok(thread) => thread,
            Err(body) => spare::spawn(move || body(SubInterpreter::new(main, raw), false))?,
        };
        let thread_id = thread.thread().id();
        let (id, interrupts, stats, meter) = match ready_rx.recv() {
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
            ending,
            capture,
            grace,
            interrupts,
            stats,
            meter,
        })
    }

    /// A snapshot of this interpreter's counters: its operations by outcome, the channel
    /// messages its code sent and received, its guard rail events, its memory and CPU time
    /// (see [`Stats`]). Never waits for the interpreter.
    pub fn stats(&self) -> Stats {
        self.stats.snapshot()
    }

    /// Bytes CPython holds for this interpreter's threads (its own, and those its code
    /// started): the allocator arenas holding its small objects, and its larger blocks;
    /// None without memory accounting
    /// ([`RuntimeConfig::memory_accounting`](crate::RuntimeConfig::memory_accounting)).
    /// After the interpreter ended: what was left when it ended. See the README's
    /// "Limits" for what is and is not counted.
    pub fn memory_in_use(&self) -> Option<u64> {
        self.meter.memory_in_use()
    }

    /// The most [`memory_in_use`](Self::memory_in_use) has been since the interpreter
    /// was created (its start-up included).
    pub fn memory_peak(&self) -> Option<u64> {
        self.meter.memory_peak()
    }

    /// How many allocations were refused because they would have gone past the
    /// interpreter's [`memory_limit`](crate::InterpreterConfig::memory_limit) (each was a
    /// `MemoryError`, or a failure CPython handled itself).
    pub fn memory_refusals(&self) -> u64 {
        self.meter.memory_refusals()
    }

    /// The interpreter's memory limit, if it has one.
    pub fn memory_limit(&self) -> Option<u64> {
        self.meter.memory_limit()
    }

    /// CPU time used by the interpreter's own thread (the thread every call runs on;
    /// not the threads its Python code started). Keeps its last value once the
    /// interpreter ended.
    pub fn cpu_time(&self) -> Duration {
        self.meter.cpu_time()
    }

    pub(crate) fn meter(&self) -> Arc<Meter> {
        Arc::clone(&self.meter)
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
        self.run_with(f, CallOptions::default())
    }

    /// Counts a task of this interpreter that ran through [`start`](Self::start).
    #[cfg(feature = "extension-module")]
    pub(crate) fn count_task(&self, outcome: Outcome) {
        self.stats.task(outcome);
    }

    /// Runs `f` as an operation not counted as a task.
    fn bookkeeping<R, F>(&self, f: F) -> Result<R>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.run_uncounted(f, CallOptions::default())
    }

    /// [`Error::WouldDeadlock`] if waiting here for an operation of this interpreter
    /// would wait for itself: on its own thread, in a host function it called, or on the
    /// thread of an interpreter that one of its operations waits for (a cycle of host
    /// functions evaluating in each other's interpreters).
    fn check_reentry(&self) -> Result<()> {
        if std::thread::current().id() == self.thread_id
            || crate::host::calling_from(self.id)
            || waits_for_this_thread(self.id)
        {
            return Err(Error::WouldDeadlock);
        }
        Ok(())
    }

    /// Runs `f` as an operation with `options` (see [`call_with`](Self::call_with)),
    /// counted as a task in the interpreter's [`stats`](Self::stats) unless it never ran
    /// (the interpreter closed, or the call would have waited for itself).
    fn run_with<R, F>(&self, f: F, options: CallOptions) -> Result<R>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let result = self.run_uncounted(f, options);
        if !matches!(result, Err(Error::Closed | Error::WouldDeadlock)) {
            self.stats.task(Outcome::of(&result));
        }
        result
    }

    /// Runs `f` as an operation with `options`, not counted as a task (bookkeeping such
    /// as setting `sys.argv`).
    fn run_uncounted<R, F>(&self, f: F, options: CallOptions) -> Result<R>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.check_reentry()?;
        let deadline = options
            .timeout
            .map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future));
        let running = self.start(f)?;
        let Some(deadline) = deadline else {
            return running.reply.recv().map_err(|_| Error::Closed)?;
        };
        match running.reply.recv_deadline(deadline) {
            Ok(result) => return result,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Err(Error::Closed),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        let limit = options.timeout.unwrap_or_default();
        if running.interrupt(InterruptReason::Timeout, true) {
            // Queued behind other operations until its deadline: it never runs.
            return Err(Error::timeout(format!(
                "{} before it started",
                past_deadline(limit)
            )));
        }
        match running.wait(CALL_GRACE) {
            // Stopped by the interrupt.
            Some(Err(Error::Python(exc))) if exc.is("TimeoutError") => {
                Err(Error::timeout_in_python(past_deadline(limit), exc))
            }
            // Whatever it did once interrupted (returned, raised something else), the
            // deadline passed: its result is discarded.
            Some(_) => Err(Error::timeout(past_deadline(limit))),
            None => {
                tracing::warn!(
                    interpreter = self.id,
                    "{}; it did not stop within {:.1} s of being interrupted (blocked in C \
                     code?) and is left running: the interpreter is busy until it returns",
                    past_deadline(limit),
                    CALL_GRACE.as_secs_f64()
                );
                Err(Error::timeout(format!(
                    "{}; it is still running (blocked in C code?)",
                    past_deadline(limit)
                )))
            }
        }
    }

    /// Queues `f` to run on the interpreter's thread without waiting for it; its result
    /// arrives on the returned receiver (disconnected if the interpreter ends first).
    pub(crate) fn submit<R, F>(&self, f: F) -> Result<Receiver<Result<R>>>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        Ok(self.start(f)?.reply)
    }

    /// Queues `f` as an operation of this interpreter, which the returned handle can
    /// wait for and interrupt.
    pub(crate) fn start<R, F>(&self, f: F) -> Result<Running<R>>
    where
        F: for<'py> FnOnce(Python<'py>) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (reply_tx, reply_rx) = bounded::<Result<R>>(1);
        let op = Arc::new(AtomicU64::new(0));
        // The interpreters that wait for this operation: those waiting for the caller,
        // and this one.
        let mut chain = CHAIN.with(|chain| chain.borrow().clone());
        chain.push(self.id);
        let interrupts = Arc::clone(&self.interrupts);
        let this_op = Arc::clone(&op);
        let job: Job = Box::new(move |py| {
            let number = interrupts.op.load(Ordering::Acquire);
            if let Err(NEVER) =
                this_op.compare_exchange(0, number, Ordering::AcqRel, Ordering::Acquire)
            {
                // Withdrawn by its deadline before it started.
                return Box::new(move || {
                    let _ = reply_tx.send(Err(Error::timeout(
                        "the call ran past its deadline before it started",
                    )));
                });
            }
            let outer = CHAIN.with(|c| std::mem::replace(&mut *c.borrow_mut(), chain));
            let result = catch_unwind(AssertUnwindSafe(|| f(py)))
                .unwrap_or_else(|payload| Err(Error::Panic(panic_message(&*payload))));
            CHAIN.with(|c| *c.borrow_mut() = outer);
            Box::new(move || {
                let _ = reply_tx.send(result);
            })
        });
        self.tx.send(Msg::Job(job)).map_err(|_| Error::Closed)?;
        Ok(Running {
            reply: reply_rx,
            op,
            interrupts: Arc::clone(&self.interrupts),
        })
    }

    #[cfg(feature = "extension-module")]
    /// The grace period of this interpreter's end ([`InterpreterConfig::shutdown_grace`]).
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    /// Runs Python statements in the interpreter's `__main__` namespace.
    pub fn exec(&self, code: &str) -> Result<()> {
        self.exec_with(code, CallOptions::default())
    }

    /// Like [`exec`](Self::exec), with a deadline (see [`call_with`](Self::call_with)).
    pub fn exec_with(&self, code: &str, options: CallOptions) -> Result<()> {
        let code = code.to_owned();
        self.run_with(
            move |py| py.run(&code, "<string>", &py.main_dict()?),
            options,
        )
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
        let bytes = self.run(move |py| result_wire(&py.eval(&expr)?))?;
        wire::decode(&bytes)
    }

    /// Calls a function named `module:qualname` (e.g. `"os.path:join"`,
    /// `"pkg.mod:Class.method"`) or `module.attr` (e.g. `"math.sqrt"`), importing the
    /// module if needed, and copies the result out.
    pub fn call(&self, target: &str, args: impl Into<Args>) -> Result<Value> {
        self.call_with(target, args, CallOptions::default())
    }

    /// Like [`call`](Self::call), with a deadline: past `options.timeout` the call gets
    /// `TimeoutError` — again every 0.2 s while it goes on — and its caller gets
    /// [`Error::Timeout`]: holding that `TimeoutError` (with the traceback of where the
    /// code was) once the call has stopped, or without one if the call went on and
    /// returned, or still runs [`CALL_GRACE`] after the deadline (blocked in C code: it is left running, and the interpreter
    /// stays busy until it returns; see [`Interpreter`]).
    ///
    /// ```no_run
    /// # use subinterp::{CallOptions, Error, Interpreter, InterpreterConfig, Runtime, RuntimeConfig};
    /// # use std::time::Duration;
    /// # let rt = Runtime::init(&RuntimeConfig::new())?;
    /// # let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;
    /// interp.exec("def spin():\n    while True:\n        pass")?;
    /// let options = CallOptions::new().timeout(Duration::from_millis(100));
    /// let err = interp.call_with("__main__:spin", (), options).unwrap_err();
    /// assert!(err.as_python().is_some_and(|e| e.is("TimeoutError")));
    /// # Ok::<(), subinterp::Error>(())
    /// ```
    pub fn call_with(
        &self,
        target: &str,
        args: impl Into<Args>,
        options: CallOptions,
    ) -> Result<Value> {
        let target = Target::parse(target)?;
        // Written here, read in the interpreter; its result read here.
        let args = args.into().to_wire()?;
        let bytes = self.run_with(move |py| call_target_wire(py, &target, &args), options)?;
        wire::decode(&bytes)
    }

    /// Like [`call`](Self::call), converting the result to `T` with serde.
    pub fn call_as<T: DeserializeOwned>(&self, target: &str, args: impl Into<Args>) -> Result<T> {
        crate::value::from_value(self.call(target, args)?)
    }

    /// Prepends a directory to this interpreter's `sys.path`. A path that is not UTF-8
    /// keeps its bytes, as Python's own file names do (`os.fsdecode`).
    pub fn add_path(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref().to_owned();
        self.bookkeeping(move |py| {
            let path = py.import("sys")?.getattr("path")?;
            path.call_method("insert", &[&py.to_object(&Value::Int(0))?, &py.path(&dir)?])
                .map(drop)
        })
    }

    /// Sets `sys.argv`.
    pub fn set_argv<S: AsRef<str>>(&self, argv: &[S]) -> Result<()> {
        let argv = Value::List(argv.iter().map(|a| Value::from(a.as_ref())).collect());
        self.bookkeeping(move |py| py.import("sys")?.setattr("argv", &py.to_object(&argv)?))
    }

    /// Sets `sys.argv` from operating-system strings (script paths, arguments), decoded
    /// as `python` decodes its command line: bytes that are not UTF-8 become surrogate
    /// escapes, so `os.fsencode(sys.argv[i])` gives them back.
    pub fn set_argv_os<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<()> {
        let argv: Vec<PathBuf> = argv.iter().map(|a| PathBuf::from(a.as_ref())).collect();
        self.bookkeeping(move |py| {
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
        self.bookkeeping(|py| {
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
    /// Bounded by the configured [`shutdown_grace`](InterpreterConfig::shutdown_grace)
    /// (default [`DEFAULT_SHUTDOWN_GRACE`](crate::DEFAULT_SHUTDOWN_GRACE)): operations
    /// still running or queued when it has passed (one that caught the
    /// `KeyboardInterrupt`, one queued behind) are cancelled in turn, each with
    /// `KeyboardInterrupt` again every 0.2 s until it stops. If they still do not end
    /// within [`CALL_GRACE`] (code blocked in C, such as `time.sleep(3600)`, which no
    /// interrupt reaches), or the interpreter's Python threads still run after that, the
    /// interpreter is left behind with a warning (`tracing`) and this returns. Its
    /// thread ends it when the blocked code returns, if ever; until then the runtime is
    /// not finalised.
    pub fn close(&self) -> Result<()> {
        self.shut(None).map(drop)
    }

    #[cfg(feature = "extension-module")]
    /// Closes like [`close`](Self::close); true if the interpreter was left behind,
    /// still running, past the grace period.
    pub(crate) fn close_reporting(&self) -> Result<bool> {
        self.shut(None)
    }

    /// Closes the interpreter like [`close`](Self::close) and returns the output it
    /// captured until its very end — including what its Python threads and `atexit`
    /// callbacks wrote while it ended. Needs [`InterpreterConfig::capture_output`].
    /// [`Error::Timeout`] if the interpreter was left behind, still running.
    pub fn close_and_take_output(&self) -> Result<Output> {
        if !self.capture {
            return Err(capture_off());
        }
        if self.is_closed() {
            return Err(Error::Closed);
        }
        let (tx, rx) = bounded(1);
        if self.shut(Some(tx))? {
            return Err(Error::timeout(
                "the interpreter did not end within its grace period and was left running",
            ));
        }
        rx.try_recv().map_err(|_| Error::Closed)?
    }

    /// Returns whether the interpreter was left behind, still running.
    fn shut(&self, reply: Option<Sender<Result<Output>>>) -> Result<bool> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        let _ = self.tx.send(Msg::Close(reply));
        // A running operation (say, blocked in a channel receive) is cancelled.
        let _ = self
            .interrupt_handle()
            .interrupt(InterruptReason::Cancelled);
        if std::thread::current().id() == self.thread_id {
            // Closing from inside one of its own operations: the thread ends after it.
            return Ok(false);
        }
        let started = Instant::now();
        let grace = self.grace;
        // The operations get the grace period to end; then ending the interpreter (its
        // Python threads get the grace period again, `atexit` a little more).
        let ends_within = |limit: Duration| match self.ending.recv_timeout(limit) {
            Ok(()) => true,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
        };
        let served = ends_within(grace) || {
            // Still running past the grace period: an operation that ignored the first
            // interrupt (catching `KeyboardInterrupt`) or was queued behind the one
            // running at the call. Each is cancelled now, again until it stops; only code
            // blocked in C is then left running.
            self.interrupts.cancel_all.store(true, Ordering::Release);
            // Pairs with the fence in `serve`: an operation starting now is cancelled by
            // one side or the other.
            std::sync::atomic::fence(Ordering::SeqCst);
            self.interrupts.cancel_running();
            ends_within(CALL_GRACE)
        };
        let ended = served
            && matches!(
                self.ending
                    .recv_timeout(grace.saturating_add(grace).saturating_add(CALL_GRACE)),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected)
            );
        let thread = lock(&self.thread).take();
        if ended {
            if let Some(thread) = thread {
                thread
                    .join()
                    .map_err(|p| Error::Panic(panic_message(&*p)))?;
            }
            return Ok(false);
        }
        let what = if served {
            "it did not finish ending"
        } else {
            "its running operation did not stop (blocked in C code?)"
        };
        tracing::warn!(
            interpreter = self.id,
            "interpreter {} left running: {what} within {:.1} s of being closed; it ends \
             when that code returns",
            self.id,
            started.elapsed().as_secs_f64()
        );
        Ok(true)
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
    interrupts: &Arc<Interrupts>,
) -> Option<Sender<Result<Output>>> {
    loop {
        match rx.recv() {
            Ok(Msg::Job(job)) => sub.with_gil(|py| {
                interrupts.op.fetch_add(1, Ordering::AcqRel);
                interrupts.running.store(true, Ordering::Release);
                // Pairs with the fence in `shut`: one of the two sees the other's store.
                std::sync::atomic::fence(Ordering::SeqCst);
                if interrupts.cancel_all.load(Ordering::Acquire) {
                    // Queued before `close`, whose grace period has passed.
                    interrupts.cancel_running();
                }
                let reply = job(py);
                // An interrupt that arrived as the job ended must not hit the next one.
                interrupts.running.store(false, Ordering::Release);
                clear_pending_async(py);
                reply();
            }),
            Ok(Msg::Close(reply)) => return reply,
            Err(_) => return None,
        }
    }
}

/// Joins the interpreter's threads when it ends: what it does is said in the file.
const JOIN_THREADS: &str = include_str!("join_threads.py");

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
        let threading = py.loaded_module("threading")?;
        // Nothing to wait for (no `threading`, no other thread state): the script, which
        // each interpreter would compile to find that out, is not run.
        if threading.is_none() && threads::other_thread_states(py) == 0 {
            return Ok(());
        }
        let thread = py.loaded_module("_thread")?;
        let globals = py.dict()?;
        for (name, module) in [("threading", threading), ("_thread", thread)] {
            globals.set_item(&py.str(name)?, &module.unwrap_or_else(|| py.none()))?;
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
    if running.is_empty() {
        // What no module counts: a thread `_thread` started that has not begun to run,
        // or one an `atexit` function just started (its thread state exists already;
        // CPython would end the interpreter under it and abort, "not the last thread").
        // It gets the grace period too.
        let deadline = Instant::now().checked_add(grace);
        let mut others = threads::other_thread_states(py);
        while others > 0 && deadline.map_or(true, |d| Instant::now() < d) {
            py.allow_threads(|| std::thread::sleep(Duration::from_millis(1)));
            others = threads::other_thread_states(py);
        }
        if others > 0 {
            running.push(format!("{others} thread(s) not begun or not ended"));
        }
    }
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

/// Brings `os.environ` of an interpreter made ahead (a spare) up to date with the
/// process's environment, which the program may have changed since.
fn refresh_environ(py: Python<'_>) -> Result<()> {
    use std::os::unix::ffi::OsStringExt;
    let fresh = std::env::vars_os()
        .map(|(name, value)| {
            Value::Tuple(vec![
                Value::Bytes(name.into_vec()),
                Value::Bytes(value.into_vec()),
            ])
        })
        .collect();
    let globals = py.dict()?;
    globals.set_item(&py.str("__builtins__")?, &py.builtins()?)?;
    globals.set_item(&py.str("fresh")?, &py.to_object(&Value::List(fresh))?)?;
    py.run(include_str!("environ.py"), "<subinterp environ>", &globals)
}

fn setup(
    py: Python<'_>,
    rt: &RuntimeInner,
    capture: bool,
    prepare: prepare::Preparation,
    paths: &[PathBuf],
) -> Result<()> {
    hazards::limit_thread_walks(py)?;
    let globals = py.dict()?;
    if rt.is_borrowed() {
        // No built-in `subinterp` module in a borrowed Python: this interpreter gets its
        // own from the definition the extension module made.
        let module = crate::raw::module::instantiate(py, 0, "subinterp")?;
        py.import("sys")?
            .getattr("modules")?
            .set_item(&py.str("subinterp")?, &module)?;
    }
    prepare.install(py)?;
    if let Some(bootstrap) = rt.bootstrap() {
        py.run(bootstrap, "<subinterp bootstrap>", &globals)?;
    }
    if !paths.is_empty() {
        let path = py.import("sys")?.getattr("path")?;
        for (i, dir) in paths.iter().enumerate() {
            path.call_method("insert", &[&py.to_object(&Value::from(i))?, &py.path(dir)?])?;
        }
    }
    if capture {
        py.run(include_str!("capture.py"), "<subinterp capture>", &globals)?;
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

fn past_deadline(limit: Duration) -> String {
    crate::error::past_deadline("the call", Some(limit))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365)
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
