//! [`Pool`]: a fixed number of isolated interpreters taking calls from one queue, with
//! deadlines that stop runaway Python code, cancellation, recycling and shutdown. The
//! workers start with the pool, or one with it and the others as work arrives
//! ([`PoolConfig::start_on_demand`]).
//!
//! Each worker is an [`Interpreter`] running a loop on its own thread: it waits for the
//! next task with its GIL released, runs it, and hands the result straight back — one
//! thread hop each way. A watchdog thread enforces deadlines: at the deadline it
//! interrupts the task inside its interpreter (`TimeoutError`); if the task is stuck in C
//! code and still running after a grace period, the task is reported as timed out and its
//! worker is replaced by a fresh interpreter, so the pool keeps its size.
//!
//! A task whose import an isolated interpreter refuses (numpy and most compiled wheels)
//! runs in a worker process instead (`process.rs`), with the same deadlines,
//! cancellation, recycling and results; see [`PoolConfig::process_fallback`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{
    bounded, select, unbounded, Receiver, RecvError, RecvTimeoutError, Sender, TryRecvError,
};

use crate::call::{call_target_wire_as, Args, ResultForm, Target};
use crate::error::{Error, PyException, Result};
use crate::interpreter::config::InterpreterConfig;
use crate::interpreter::limits::Meter;
use crate::interpreter::{Interpreter, InterruptHandle};
use crate::raw::lifecycle::clear_pending_async;
use crate::raw::Python;
use crate::runtime::Runtime;
use crate::stats::{self, Counters, Outcome, Stats, StatsHandle};
use crate::value::wire;
use crate::value::Value;
use crate::wait::InterruptReason;

pub(crate) mod process;
mod usage;

#[cfg(feature = "extension-module")]
pub(crate) use process::refusals_for_runner;

/// How a [`Pool`] is built.
///
/// ```
/// use std::time::Duration;
/// let mut config = subinterp::PoolConfig::new();
/// config
///     .workers(4)
///     .init("import json")
///     .max_tasks_per_worker(10_000)
///     .timeout(Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
pub struct PoolConfig {
    workers: usize,
    interpreter: InterpreterConfig,
    init: Vec<String>,
    max_tasks_per_worker: Option<u64>,
    timeout: Option<Duration>,
    cpu_budget: Option<Duration>,
    setup_timeout: Option<Duration>,
    grace: Duration,
    ready_on_first: bool,
    on_demand: bool,
    name: Option<String>,
    /// How a task's result counts in the stats (the package reads its own failures).
    pub(crate) task_outcome: fn(&Result<Vec<u8>>) -> Outcome,
    process_fallback: bool,
    rerun_refused: bool,
    process_targets: Vec<String>,
    process_python: Option<std::path::PathBuf>,
}

/// The shortest set-up deadline given by default when tasks have a deadline.
const MIN_DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for PoolConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PoolConfig {
    /// One isolated interpreter per core, no initializer, no deadline, no recycling, and
    /// one second of grace for tasks stuck in C code.
    pub fn new() -> Self {
        PoolConfig {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            interpreter: InterpreterConfig::isolated(),
            init: Vec::new(),
            max_tasks_per_worker: None,
            timeout: None,
            cpu_budget: None,
            setup_timeout: None,
            grace: Duration::from_secs(1),
            ready_on_first: false,
            on_demand: false,
            name: None,
            task_outcome: Outcome::of,
            process_fallback: true,
            rerun_refused: true,
            process_targets: Vec::new(),
            process_python: None,
        }
    }

    /// Number of interpreters (at least 1).
    pub fn workers(&mut self, n: usize) -> &mut Self {
        self.workers = n;
        self
    }

    /// The configuration of every worker interpreter (default: isolated).
    pub fn interpreter(&mut self, config: InterpreterConfig) -> &mut Self {
        self.interpreter = config;
        self
    }

    /// Python code run once in each new worker before it takes work (repeatable; runs
    /// in `__main__`). Typically imports and set-up shared by every task.
    pub fn init(&mut self, code: impl Into<String>) -> &mut Self {
        self.init.push(code.into());
        self
    }

    /// Compiles the init code ahead of the workers, in the interpreter of `py` (each
    /// worker then loads it compiled); what does not compile is left to the workers,
    /// which report it.
    #[cfg(feature = "extension-module")]
    pub(crate) fn compile_init_ahead(&self, py: Python<'_>) {
        for code in &self.init {
            let _ = py.compile_once(code, "<string>");
        }
        let _ = crate::hazards::prepare::Preparation::compile_ahead(py);
    }

    /// Replace a worker by a fresh interpreter after it ran this many tasks.
    pub fn max_tasks_per_worker(&mut self, n: u64) -> &mut Self {
        self.max_tasks_per_worker = Some(n);
        self
    }

    /// Default CPU-time budget of every task (a task may set its own): CPU time of the
    /// worker's thread counted from when the task starts. A task past it is interrupted
    /// as at its deadline, with a `TimeoutError` naming the CPU budget, and reported as
    /// [`Error::Timeout`]; a task that does not stop gets the grace period, then its
    /// worker is replaced. Unlike a deadline it does not count time spent waiting (on
    /// I/O, a lock, the GIL of a shared-GIL worker). Threads the task starts are not
    /// counted.
    pub fn cpu_budget(&mut self, budget: Duration) -> &mut Self {
        self.cpu_budget = Some(budget);
        self
    }

    /// Default deadline of every task (a task may set its own).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = Some(timeout);
        self
    }

    /// Deadline of each worker's set-up: the initializers ([`init`](Self::init)) of a new
    /// or replacing worker, counted from when the first starts. At the deadline the
    /// running initializer is interrupted (`TimeoutError`), as a task is at its deadline,
    /// and the set-up fails with a `TimeoutError` naming the deadline.
    ///
    /// Default: none — unless tasks have a deadline ([`timeout`](Self::timeout)), then
    /// the task deadline, but at least 30 s.
    pub fn setup_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.setup_timeout = Some(timeout);
        self
    }

    /// The set-up deadline in effect (see [`setup_timeout`](Self::setup_timeout)).
    pub fn setup_deadline(&self) -> Option<Duration> {
        self.setup_timeout.or_else(|| {
            self.timeout
                .map(|timeout| timeout.max(MIN_DEFAULT_SETUP_TIMEOUT))
        })
    }

    /// Whether [`Pool::new`] returns as soon as one worker is ready (default: once all
    /// are). The others finish their set-up meanwhile; a set-up error of the first is
    /// still `new`'s error, one of the others is handled like a failed replacement.
    pub fn start_on_first_worker(&mut self, yes: bool) -> &mut Self {
        self.ready_on_first = yes;
        self
    }

    /// The pool's name, its `pool` label in the metrics of [`Pool::stats`]'s counters
    /// (default: `pool-N`, numbered in the order pools are made in the process).
    pub fn name(&mut self, name: impl Into<String>) -> &mut Self {
        self.name = Some(name.into());
        self
    }

    /// Whether workers start as work arrives (default: all start in [`Pool::new`]). With
    /// it, `new` starts one worker; each submitted task that finds no idle worker starts
    /// one more, up to [`workers`](Self::workers), as `concurrent.futures` executors do.
    /// A pool that never has much to do then never pays for its other interpreters (each
    /// costs memory, a thread and its set-up). Workers are not ended when idle.
    pub fn start_on_demand(&mut self, yes: bool) -> &mut Self {
        self.on_demand = yes;
        self
    }

    /// Whether a task whose import an isolated interpreter refuses (an extension module
    /// such as numpy's, which CPython will not load in a subinterpreter) runs in a worker
    /// process instead (default: yes). The refusal is recognised by CPython's
    /// `ImportError` ("module X does not support loading in subinterpreters") or the
    /// module's own ("cannot load module more than once per process", Cython's and
    /// PyO3's), also when wrapped by the package that imported it (numpy's "IMPORTANT:
    /// PLEASE READ THIS", pandas). The pool then records the task's module for its life,
    /// says so once through `tracing::warn!` naming the refused module and why, re-runs the
    /// task in a worker process, and sends later tasks of that module straight there.
    ///
    /// Off, the refusal is the task's error.
    pub fn process_fallback(&mut self, yes: bool) -> &mut Self {
        self.process_fallback = yes;
        self
    }

    /// Whether the task that met a refusal is itself re-run in a worker process (default:
    /// yes). A task that imports the refused module only inside its body, after doing
    /// work (writing a file, sending a message), then does that work twice: once in the
    /// interpreter up to the refused import, once in the process. With `false`, that
    /// task fails with the refusal; later tasks of its module still go to processes.
    pub fn rerun_refused_tasks(&mut self, yes: bool) -> &mut Self {
        self.rerun_refused = yes;
        self
    }

    /// Sends the tasks of a module (`"mypkg.heavy"`, its submodules too) or of one target
    /// (`"mypkg.heavy:fit"`) to worker processes from the start (repeatable).
    pub fn in_processes(&mut self, name: impl Into<String>) -> &mut Self {
        self.process_targets.push(name.into());
        self
    }

    /// The Python executable worker processes run (default: `sys.executable` of the
    /// pool's interpreters — the virtual environment's `python`, or the Python the crate
    /// was built against). It must be the same CPython version, able to import what the
    /// tasks import with the pool's `sys.path`.
    pub fn process_python(&mut self, python: impl Into<std::path::PathBuf>) -> &mut Self {
        self.process_python = Some(python.into());
        self
    }

    /// How long a task may keep running past its deadline after it was interrupted,
    /// before it is reported as timed out and its worker replaced (default 1 s).
    pub fn grace(&mut self, grace: Duration) -> &mut Self {
        self.grace = grace;
        self
    }
}

/// Options of one submitted task.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskOptions {
    /// Deadline, counted from when the task starts running; overrides the pool's default.
    pub timeout: Option<Duration>,
    /// CPU-time budget, counted from when the task starts running; overrides the pool's
    /// default ([`PoolConfig::cpu_budget`]).
    pub cpu_budget: Option<Duration>,
}

/// A pool of isolated interpreters.
///
/// ```no_run
/// use subinterp::{Pool, PoolConfig, Runtime, RuntimeConfig, Value};
/// let rt = Runtime::init(&RuntimeConfig::new())?;
/// let pool = Pool::new(&rt, &PoolConfig::new())?;
/// let task = pool.submit("math:factorial", (20,))?;
/// assert_eq!(task.wait()?, Value::Int(2432902008176640000));
/// let squares: Vec<Value> = pool
///     .map("operator:mul", (0..5).map(|i| (i, i)))?
///     .collect::<Result<_, _>>()?;
/// pool.shutdown(std::time::Duration::from_secs(5));
/// # Ok::<(), subinterp::Error>(())
/// ```
///
/// Dropping the pool is an immediate shutdown ([`Pool::shutdown_now`]).
pub struct Pool {
    shared: Arc<Shared>,
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPING: u8 = 2;

struct Shared {
    /// The pool's counters, which its workers' are added to.
    stats: Arc<Counters>,
    name: String,
    runtime: Runtime,
    config: PoolConfig,
    queue_tx: Mutex<Option<Sender<Queued>>>,
    queue_rx: Receiver<Queued>,
    state: AtomicU8,
    /// Dropped to tell keepers to stop now.
    stop_tx: Mutex<Option<Sender<()>>>,
    stop_rx: Receiver<()>,
    watchdog: Sender<Watch>,
    next_task: AtomicU64,
    workers: Mutex<Vec<Arc<Worker>>>,
    /// Keepers still running (each keeps one worker slot filled).
    keepers: AtomicUsize,
    /// The keepers' threads, taken by the shutdown that joins them. Keepers are started
    /// only with this lock held and while the pool runs.
    keeper_threads: Mutex<Vec<JoinHandle<()>>>,
    /// Tasks an interpreter worker has taken and not finished.
    busy: AtomicUsize,
    /// Set once no keeper is left because setting up workers failed: what every
    /// remaining and later task fails with.
    broken: Mutex<Option<Arc<Error>>>,
    /// The worker processes, for tasks isolated interpreters refuse.
    procs: process::Procs,
}

impl Shared {
    /// Called by each keeper as it ends, with the set-up failure that made it give up,
    /// if any. When the last keeper ends while tasks can still arrive, the pool can no
    /// longer run anything: queued tasks fail, and so does every later submission.
    fn keeper_ended(&self, failure: Option<Error>) {
        if let Some(failure) = failure {
            let mut broken = lock(&self.broken);
            if broken.is_none() {
                *broken = Some(Arc::new(failure));
            }
        }
        if self.keepers.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        // The last keeper: nobody takes tasks from the queue any more.
        let cause = lock(&self.broken).clone();
        lock(&self.queue_tx).take();
        let fail = |queued: Queued| {
            let err = match &cause {
                Some(cause) => Error::Setup(Arc::clone(cause)),
                None => Error::Cancelled,
            };
            queued.state.complete(Err(err));
        };
        while let Ok(queued) = self.queue_rx.try_recv() {
            fail(queued);
        }
        if let Some(cause) = &cause {
            tracing::error!(error = %cause, "every pool worker failed to be set up: the pool stops");
        }
    }
}

struct Queued {
    id: u64,
    target: Target,
    /// The module a refusal is recorded for and routing decided by.
    route: String,
    /// The arguments in the wire format, written by the submitting thread.
    args: Vec<u8>,
    /// How the result is written.
    form: ResultForm,
    timeout: Option<Duration>,
    cpu_budget: Option<Duration>,
    state: Arc<TaskState>,
}

struct Worker {
    /// The task running now (0: none); changed only with the interpreter's GIL held.
    current: AtomicU64,
    interrupt: InterruptHandle,
    /// Set when an interrupt was sent to this worker's running task.
    interrupted: AtomicBool,
    abandoned: AtomicBool,
    abandon_tx: Sender<()>,
    /// The interpreter's memory and CPU meters.
    meter: Arc<Meter>,
}

impl Worker {
    fn interrupt_task(self: &Arc<Self>, task: u64, reason: InterruptReason) {
        // Interrupting never waits for the worker's GIL (a thread of the interpreter's
        // raises it).
        self.interrupted.store(true, Ordering::Release);
        let current = Arc::clone(self);
        let _ = self.interrupt.interrupt_if(reason, move || {
            current.current.load(Ordering::Acquire) == task
        });
    }
}

/// A pool whose first workers are being set up ([`Pool::start`]). Dropped before it is
/// ready, it stops the set-up as [`Pool::shutdown_now`] does.
pub(crate) struct Starting {
    /// Taken out once ready.
    pool: Option<Pool>,
    ready_rx: Receiver<Result<()>>,
    /// Workers still to report ready.
    left: usize,
}

impl Starting {
    /// Waits at most `slice`: the pool once every worker it waits for is ready, the
    /// error of the first that could not be set up, or `None` while they are not ready.
    /// Once it has given the pool or an error, it gives [`Error::Closed`].
    pub(crate) fn wait(&mut self, slice: Duration) -> Option<Result<Pool>> {
        if self.pool.is_none() {
            return Some(Err(Error::Closed));
        }
        let deadline = Instant::now() + slice;
        while self.left > 0 {
            match self.ready_rx.recv_deadline(deadline) {
                Ok(Ok(())) => self.left -= 1,
                Ok(Err(err)) => {
                    self.pool = None; // stops the others
                    return Some(Err(err));
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.pool = None;
                    return Some(Err(Error::CreateFailed(
                        "a worker ended during start-up".into(),
                    )));
                }
            }
        }
        self.pool.take().map(Ok)
    }

    /// The pool at once, its workers still being set up: one whose set-up fails is
    /// handled like a failed replacement (tried again; once every worker has failed,
    /// queued and later tasks fail with [`Error::Setup`]).
    #[cfg(feature = "extension-module")]
    pub(crate) fn without_waiting(mut self) -> Result<Pool> {
        self.pool.take().ok_or(Error::Closed)
    }
}

impl Pool {
    /// Starts the workers (in parallel; only the first with
    /// [`start_on_demand`](PoolConfig::start_on_demand)) and runs the initializer in each;
    /// fails if any worker started here cannot be created or its initializer raises.
    pub fn new(runtime: &Runtime, config: &PoolConfig) -> Result<Pool> {
        let mut starting = Self::start(runtime, config)?;
        loop {
            if let Some(made) = starting.wait(Duration::from_secs(3600)) {
                return made;
            }
        }
    }

    /// [`new`](Self::new) in two steps: starts the workers and returns at once; the
    /// caller waits for them with [`Starting::wait`], in slices of its choosing (the
    /// Python package checks for Ctrl-C between them, on its own thread).
    pub(crate) fn start(runtime: &Runtime, config: &PoolConfig) -> Result<Starting> {
        if config.workers == 0 {
            return Err(Error::InvalidConfig(
                "a pool needs at least one worker".into(),
            ));
        }
        config.interpreter.validate()?;
        if config.interpreter.memory_limit_bytes().is_some() && !runtime.memory_accounting() {
            // Said here, not by each worker's set-up, which a caller may not wait for.
            return Err(Error::InvalidConfig(
                crate::interpreter::limits::unavailable().into(),
            ));
        }
        let (queue_tx, queue_rx) = unbounded();
        let (stop_tx, stop_rx) = bounded(0);
        let (watch_tx, watch_rx) = unbounded();
        let name = config.name.clone().unwrap_or_else(|| {
            static POOLS: AtomicU64 = AtomicU64::new(1);
            format!("pool-{}", POOLS.fetch_add(1, Ordering::Relaxed))
        });
        let shared = Arc::new(Shared {
            stats: Arc::new(Counters::for_pool(&name)),
            name,
            runtime: runtime.clone(),
            config: config.clone(),
            queue_tx: Mutex::new(Some(queue_tx)),
            queue_rx,
            state: AtomicU8::new(RUNNING),
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            watchdog: watch_tx,
            next_task: AtomicU64::new(1),
            workers: Mutex::new(Vec::new()),
            keepers: AtomicUsize::new(0),
            keeper_threads: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            broken: Mutex::new(None),
            procs: process::Procs::new(),
        });
        let grace = config.grace;
        std::thread::Builder::new()
            .name("subinterp-watchdog".into())
            .spawn(move || watchdog(watch_rx, grace))
            .map_err(|e| Error::CreateFailed(format!("cannot start the watchdog: {e}")))?;
        let (ready_tx, ready_rx) = unbounded::<Result<()>>();
        let pool = Pool {
            shared: Arc::clone(&shared),
        };
        let start = if config.on_demand { 1 } else { config.workers };
        for _ in 0..start {
            let mut threads = lock(&shared.keeper_threads);
            start_keeper(&shared, &mut threads, Some(ready_tx.clone()))?;
        }
        drop(ready_tx);
        let wait_for = if config.ready_on_first { 1 } else { start };
        Ok(Starting {
            pool: Some(pool),
            ready_rx,
            left: wait_for,
        })
    }

    /// A snapshot of the pool's counters (see [`Stats`]): its tasks by outcome, counted
    /// once each as they finish (a task cancelled while queued included); and, over every
    /// worker it had, replacements included, the channel messages, guard rail events and
    /// interpreters created and ended.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// A handle that reads the pool's counters after it was shut down too.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.shared.stats))
    }

    /// The pool's name: the `pool` label of its metrics ([`PoolConfig::name`]).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.shared.config.workers
    }

    /// How many tasks ran in worker processes so far (see
    /// [`PoolConfig::process_fallback`]).
    pub fn tasks_in_processes(&self) -> u64 {
        self.shared.procs.ran()
    }

    /// Queues a call of `target` (`module:function` or `module.function`) with `args`.
    ///
    /// Fails with [`Error::Closed`] once the pool shuts down, and with [`Error::Setup`]
    /// once it has no worker left because every attempt to set one up failed (say, an
    /// initializer that raises when a worker is replaced).
    pub fn submit(&self, target: &str, args: impl Into<Args>) -> Result<Task> {
        self.submit_with(target, args, TaskOptions::default())
    }

    /// Like [`submit`](Self::submit), with per-task options.
    pub fn submit_with(
        &self,
        target: &str,
        args: impl Into<Args>,
        options: TaskOptions,
    ) -> Result<Task> {
        self.submit_routed(target, None, args, options)
    }

    /// [`submit_with`](Self::submit_with) with the name under which the pool records a
    /// refusal and routes the task to a worker process (default: the target's module). A
    /// runner target that calls the user's function gives that function's module.
    pub(crate) fn submit_routed(
        &self,
        target: &str,
        route: Option<String>,
        args: impl Into<Args>,
        options: TaskOptions,
    ) -> Result<Task> {
        let target = Target::parse(target)?;
        self.submit_wire(
            target,
            route,
            args.into().to_wire()?,
            options,
            ResultForm::VALUE,
        )
    }

    /// Queues a call of `target` with arguments already in the wire format (as
    /// [`raw_wire::call_encoded`](crate::raw::wire::call_encoded) reads them), its result
    /// written as `form` says (taken with [`Task::try_take_wire`]); `route` as for
    /// [`submit_routed`](Self::submit_routed).
    pub(crate) fn submit_wire(
        &self,
        target: Target,
        route: Option<String>,
        args: Vec<u8>,
        options: TaskOptions,
        form: ResultForm,
    ) -> Result<Task> {
        let id = self.shared.next_task.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(TaskState::new(
            Arc::clone(&self.shared.stats),
            self.shared.config.task_outcome,
        ));
        let queued = Queued {
            id,
            route: route.unwrap_or_else(|| target.module().to_owned()),
            target,
            args,
            form,
            timeout: options.timeout.or(self.shared.config.timeout),
            cpu_budget: options.cpu_budget.or(self.shared.config.cpu_budget),
            state: Arc::clone(&state),
        };
        if self.shared.state.load(Ordering::Acquire) == RUNNING
            && self
                .shared
                .procs
                .routes(&self.shared, &queued.target, &queued.route)
        {
            self.shared.procs.send(&self.shared, queued);
            return Ok(Task { id, state });
        }
        let tx = lock(&self.shared.queue_tx);
        match tx.as_ref() {
            Some(tx) if self.shared.state.load(Ordering::Acquire) == RUNNING => {
                tx.send(queued).map_err(|_| Error::Closed)?;
                grow(&self.shared);
            }
            _ => {
                return Err(match lock(&self.shared.broken).as_ref() {
                    Some(cause) => Error::Setup(Arc::clone(cause)),
                    None => Error::Closed,
                })
            }
        }
        Ok(Task { id, state })
    }

    /// Calls `target` on every input, in parallel, yielding results in input order.
    ///
    /// At most `8 × workers` calls are in flight at a time, so the input is read as
    /// results are consumed, not all at once.
    pub fn map<I>(&self, target: &str, inputs: I) -> Result<MapResults<'_, I::IntoIter>>
    where
        I: IntoIterator,
        I::Item: Into<Args>,
    {
        self.map_with(target, inputs, TaskOptions::default(), 8 * self.workers())
    }

    /// Like [`map`](Self::map) with per-task options and the number of calls in flight.
    pub fn map_with<I>(
        &self,
        target: &str,
        inputs: I,
        options: TaskOptions,
        in_flight: usize,
    ) -> Result<MapResults<'_, I::IntoIter>>
    where
        I: IntoIterator,
        I::Item: Into<Args>,
    {
        Target::parse(target)?;
        Ok(MapResults {
            pool: self,
            target: target.to_owned(),
            inputs: inputs.into_iter(),
            options,
            in_flight: in_flight.max(1),
            window: VecDeque::new(),
        })
    }

    /// Graceful shutdown: no new tasks; queued and running tasks finish. What is still
    /// running after `timeout` is cancelled as by [`shutdown_now`](Self::shutdown_now).
    /// Returns once every worker has ended (or was abandoned, stuck in C code).
    pub fn shutdown(self, timeout: Duration) {
        self.shared.state.store(DRAINING, Ordering::Release);
        lock(&self.shared.queue_tx).take();
        self.shared.procs.drain();
        let deadline = Instant::now() + timeout;
        let keepers = std::mem::take(&mut *lock(&self.shared.keeper_threads));
        let (done_tx, done_rx) = unbounded();
        let count = keepers.len();
        std::thread::spawn(move || {
            for keeper in keepers {
                let _ = keeper.join();
                let _ = done_tx.send(());
            }
        });
        let mut finished = 0;
        while finished < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(()) => finished += 1,
                Err(_) => break,
            }
        }
        if finished < count {
            tracing::info!("graceful shutdown timed out: cancelling the remaining tasks");
            self.stop_now();
            while finished < count && done_rx.recv().is_ok() {
                finished += 1;
            }
        }
    }

    /// Immediate shutdown: queued tasks are cancelled, running ones interrupted
    /// (`KeyboardInterrupt`), and every interpreter ends. Returns within about the grace
    /// period even if tasks are stuck in C code (their interpreters are abandoned).
    pub fn shutdown_now(self) {
        self.stop_now();
        self.join_keepers();
    }

    fn join_keepers(&self) {
        let keepers = std::mem::take(&mut *lock(&self.shared.keeper_threads));
        for keeper in keepers {
            let _ = keeper.join();
        }
    }

    fn stop_now(&self) {
        self.shared.stop_now();
    }

    #[cfg(feature = "extension-module")]
    /// A handle that turns a graceful shutdown running on another thread into an
    /// immediate one.
    pub(crate) fn stopper(&self) -> Stopper {
        Stopper(Arc::downgrade(&self.shared))
    }
}

#[cfg(feature = "extension-module")]
/// See [`Pool::stopper`].
pub(crate) struct Stopper(std::sync::Weak<Shared>);

#[cfg(feature = "extension-module")]
impl Stopper {
    /// As [`Pool::shutdown_now`], without waiting: queued tasks are cancelled, running
    /// ones interrupted, and one stuck in C code is abandoned after the grace period.
    pub(crate) fn stop_now(&self) {
        if let Some(shared) = self.0.upgrade() {
            shared.stop_now();
        }
    }
}

impl Shared {
    fn stop_now(&self) {
        self.state.store(STOPPING, Ordering::Release);
        lock(&self.queue_tx).take();
        while let Ok(queued) = self.queue_rx.try_recv() {
            queued.state.complete(Err(Error::Cancelled));
        }
        self.procs.cancel_queued();
        for worker in lock(&self.workers).iter() {
            let task = worker.current.load(Ordering::Acquire);
            if task != 0 {
                worker.interrupt_task(task, InterruptReason::Cancelled);
            }
        }
        lock(&self.stop_tx).take();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !lock(&self.shared.keeper_threads).is_empty() {
            self.stop_now();
            self.join_keepers();
        }
    }
}

/// Starts a keeper (one more worker slot) with `threads`, the pool's keeper threads,
/// locked; `ready` hears when its worker is set up.
fn start_keeper(
    shared: &Arc<Shared>,
    threads: &mut Vec<JoinHandle<()>>,
    ready: Option<Sender<Result<()>>>,
) -> Result<()> {
    let kept = Arc::clone(shared);
    shared.keepers.fetch_add(1, Ordering::AcqRel);
    let keeper = std::thread::Builder::new()
        .name("subinterp-keeper".into())
        .spawn(move || {
            let failure = keep(&kept, ready);
            kept.keeper_ended(failure);
        });
    match keeper {
        Ok(keeper) => {
            threads.push(keeper);
            Ok(())
        }
        Err(e) => {
            shared.keepers.fetch_sub(1, Ordering::AcqRel);
            Err(Error::CreateFailed(format!("cannot start a worker: {e}")))
        }
    }
}

/// With workers started on demand: starts one more if the tasks waiting or running
/// outnumber the workers and the pool may have more. Called after a task is queued and
/// after a worker takes one (so that a task queued while the last idle worker was taking
/// another is not left waiting).
fn grow(shared: &Arc<Shared>) {
    if !shared.config.on_demand {
        return;
    }
    let wanted = |shared: &Shared| {
        let keepers = shared.keepers.load(Ordering::Acquire);
        keepers < shared.config.workers
            && shared.queue_rx.len() + shared.busy.load(Ordering::Acquire) > keepers
    };
    if !wanted(shared) {
        return;
    }
    let mut threads = lock(&shared.keeper_threads);
    if shared.state.load(Ordering::Acquire) != RUNNING || !wanted(shared) {
        return;
    }
    if let Err(err) = start_keeper(shared, &mut threads, None) {
        tracing::warn!(error = %err, "could not start one more pool worker");
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.workers())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Times a keeper tries in a row to replace its worker before it gives up.
const REPLACE_ATTEMPTS: u32 = 3;

/// Keeps one worker slot filled: creates the interpreter, runs its loop, and replaces it
/// when it is recycled, fails or is abandoned — until the pool stops. Returns the set-up
/// failure that made it give up, if that is why it ended.
fn keep(shared: &Arc<Shared>, mut ready: Option<Sender<Result<()>>>) -> Option<Error> {
    let mut failures = 0;
    while shared.state.load(Ordering::Acquire) != STOPPING {
        let interp = match start_worker(shared) {
            Ok(interp) => interp,
            Err(err) if shared.procs.init_refused(shared, &err) => {
                // Every task runs in worker processes: this slot is not needed.
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                while let Ok(queued) = shared.queue_rx.try_recv() {
                    shared.procs.send(shared, queued);
                }
                return None;
            }
            Err(err) => {
                let err = match ready.take() {
                    Some(ready) => match ready.send(Err(err)) {
                        Ok(()) => return None, // Pool::new reports it
                        // Pool::new no longer waits (it returned on the first worker):
                        // a failure like a replacement's.
                        Err(crossbeam_channel::SendError(back)) => match back {
                            Err(err) => err,
                            Ok(()) => return None,
                        },
                    },
                    None => err,
                };
                failures += 1;
                tracing::error!(error = %err, "could not replace a pool worker");
                if failures >= REPLACE_ATTEMPTS {
                    return Some(err);
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        failures = 0;
        let (abandon_tx, abandon_rx) = bounded(1);
        let worker = Arc::new(Worker {
            current: AtomicU64::new(0),
            interrupt: interp.interrupt_handle(),
            interrupted: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            abandon_tx,
            meter: interp.meter(),
        });
        lock(&shared.workers).push(Arc::clone(&worker));
        let job = {
            let shared = Arc::clone(shared);
            let worker = Arc::clone(&worker);
            interp.submit(move |py| worker_loop(py, &shared, &worker))
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let Ok(job) = job else {
            lock(&shared.workers).retain(|w| !Arc::ptr_eq(w, &worker));
            continue;
        };
        let abandon = select! {
            recv(job) -> _ => false,
            recv(abandon_rx) -> _ => true,
            recv(shared.stop_rx) -> _ => {
                // Stopping now: the running task was interrupted; give it the grace period.
                job.recv_timeout(shared.config.grace).is_err()
            }
        };
        lock(&shared.workers).retain(|w| !Arc::ptr_eq(w, &worker));
        if abandon {
            tracing::warn!(
                interpreter = interp.id(),
                "pool worker stuck in C code: replaced"
            );
            // Its thread ends when the C call returns; close it then, off this thread.
            left_behind(interp, job);
        } else {
            let _ = interp.close();
        }
        if shared.state.load(Ordering::Acquire) != RUNNING && !abandon {
            break;
        }
    }
    None
}

fn start_worker(shared: &Shared) -> Result<Interpreter> {
    let limit = shared.config.setup_deadline();
    let deadline = limit.and_then(|limit| Instant::now().checked_add(limit));
    let interp = Interpreter::new_in(
        &shared.runtime,
        &shared.config.interpreter,
        Some(Arc::clone(&shared.stats)),
    )?;
    // One job of the interpreter's thread for the whole set-up (a hand-over between
    // threads costs tens of microseconds, more on a busy machine): where worker processes
    // come from, read from the pool's first interpreter, then the initializers in order.
    let wants_spec = shared.procs.spec.get().is_none();
    let init = shared.config.init.clone();
    // The spec comes back whatever the initializers do: init code an interpreter refuses
    // sends the pool's tasks to worker processes, which need it.
    let done = interp.submit(move |py| {
        let spec = if wants_spec { process_spec(py)? } else { None };
        let ran = init
            .iter()
            .try_for_each(|code| py.run_compiled_once(code, "<string>", &py.main_dict()?));
        Ok((spec, ran))
    })?;
    let stop = |reason| {
        let _ = interp.interrupt_handle().interrupt(reason);
        // Give it the grace period to stop; past it, the interpreter is stuck in C.
        done.recv_timeout(shared.config.grace)
            .ok()
            .map(|result| result.and_then(|(_, ran)| ran))
    };
    let deadline_passed = match deadline {
        Some(deadline) => crossbeam_channel::at(deadline),
        None => crossbeam_channel::never(),
    };
    let stopped = select! {
        recv(done) -> result => {
            let (spec, ran) = result.map_err(|_| Error::Closed)??;
            if let Some(spec) = spec {
                let _ = shared.procs.spec.set(spec);
            }
            ran?;
            tracing::debug!(interpreter = interp.id(), "pool worker ready");
            return Ok(interp);
        }
        recv(deadline_passed) -> _ => (InterruptReason::Timeout, stop(InterruptReason::Timeout)),
        recv(shared.stop_rx) -> _ => (InterruptReason::Cancelled, stop(InterruptReason::Cancelled)),
    };
    let limit = limit.unwrap_or_default().as_secs_f64();
    let past = format!("the pool's initializer ran past its set-up deadline of {limit:.3} s");
    let err = match stopped {
        (InterruptReason::Cancelled, _) => Error::Cancelled,
        // Stopped by the interrupt (whatever it raised then, the traceback says where).
        (_, Some(Err(Error::Python(exc)))) => Error::Timeout {
            message: past.clone(),
            exception: Some(Box::new(PyException {
                type_name: "builtins.TimeoutError".into(),
                message: past,
                ..*exc
            })),
        },
        (_, Some(_)) => Error::timeout(past),
        (_, None) => {
            tracing::warn!(
                interpreter = interp.id(),
                "pool worker stuck in C code during set-up: abandoned"
            );
            // Its thread ends when the C call returns; close it then, off this thread.
            left_behind(interp, done);
            return Err(Error::timeout(format!(
                "{past} and did not stop when interrupted (blocked in C code?)"
            )));
        }
    };
    Err(err)
}

/// Where worker processes come from, read from a pool interpreter: its `sys.executable`
/// and `sys.path` (none if they are not text a process can be given).
fn process_spec(py: Python<'_>) -> Result<Option<process::Spec>> {
    let sys = py.import("sys")?;
    let python = sys.getattr("executable")?.to_value();
    let path = sys.getattr("path")?.to_value();
    let builtins = sys.getattr("builtin_module_names")?.to_value();
    let (Ok(Value::Str(python)), Ok(Value::List(path)), Ok(Value::Tuple(builtins))) =
        (python, path, builtins)
    else {
        return Ok(None);
    };
    let strings = |items: Vec<Value>| {
        items
            .into_iter()
            .filter_map(|p| match p {
                Value::Str(p) => Some(p),
                _ => None,
            })
            .collect()
    };
    Ok(Some(process::Spec {
        python: python.into(),
        path: strings(path),
        builtins: strings(builtins),
    }))
}

/// Workers left behind stuck in C code whose interpreter has not ended yet.
static LEFT_BEHIND: AtomicUsize = AtomicUsize::new(0);

#[cfg(feature = "extension-module")]
/// The number of pool workers left behind stuck in C code, in every pool, whose
/// interpreters still exist (they end when the C call returns).
pub(crate) fn workers_left_behind() -> usize {
    LEFT_BEHIND.load(Ordering::Acquire)
}

/// Ends `interp`, stuck in C code, once `running` (its job) has finished, off this thread.
fn left_behind<T: Send + 'static>(interp: Interpreter, running: Receiver<T>) {
    LEFT_BEHIND.fetch_add(1, Ordering::AcqRel);
    std::thread::spawn(move || {
        let _ = running.recv();
        drop(interp);
        LEFT_BEHIND.fetch_sub(1, Ordering::AcqRel);
    });
}

/// How long an idle worker, or a caller waiting for a result, keeps checking before it
/// sleeps: waking a sleeping thread costs tens of microseconds on some machines, more
/// than a short task takes.
pub(crate) const SPIN: Duration = Duration::from_micros(50);

/// Receives the next task, checking for [`SPIN`] before sleeping on the queue.
fn spin_then_recv(rx: &Receiver<Queued>) -> std::result::Result<Queued, RecvError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(task) => return Ok(task),
            Err(TryRecvError::Disconnected) => return Err(RecvError),
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::thread::yield_now(),
            Err(TryRecvError::Empty) => return rx.recv(),
        }
    }
}

/// The loop a worker runs on its interpreter's thread.
fn worker_loop(py: Python<'_>, shared: &Arc<Shared>, worker: &Arc<Worker>) -> Result<()> {
    let mut done: u64 = 0;
    loop {
        // Take a waiting task while holding the GIL; release it only to wait for one.
        let next = match shared.queue_rx.try_recv() {
            Ok(task) => Ok(task),
            Err(_) => {
                let rx = shared.queue_rx.clone();
                py.allow_threads(move || spin_then_recv(&rx))
            }
        };
        let Ok(task) = next else {
            return Ok(()); // the queue was closed and drained
        };
        worker.current.store(task.id, Ordering::Release);
        if !task.state.start(worker) {
            worker.current.store(0, Ordering::Release);
            continue; // cancelled while queued
        }
        shared.busy.fetch_add(1, Ordering::AcqRel);
        grow(shared);
        let started = Instant::now();
        if let Some(timeout) = task.timeout {
            let _ = shared.watchdog.send(Watch {
                due: started + timeout,
                task: task.id,
                limit: Limit::Deadline(timeout),
                worker: Arc::clone(worker),
                state: Arc::clone(&task.state),
                abandon: false,
            });
        }
        if let Some(budget) = task.cpu_budget {
            // The thread cannot use more CPU time than wall time: the budget is checked
            // no earlier than it could be spent, then again for what is left.
            let _ = shared.watchdog.send(Watch {
                due: started + budget,
                task: task.id,
                limit: Limit::Cpu {
                    budget,
                    from: worker.meter.cpu_time(),
                },
                worker: Arc::clone(worker),
                state: Arc::clone(&task.state),
                abandon: false,
            });
        }
        let refusals = worker.meter.memory_refusals();
        tracing::debug!(task = task.id, target = %task.target, "task started");
        // The result leaves in the wire format: whoever takes it reads it into a Value,
        // off this worker's GIL.
        let result = tracing::debug_span!("task", task = task.id)
            .in_scope(|| call_target_wire_as(py, &task.target, &task.args, &task.form));
        worker.current.store(0, Ordering::Release);
        if worker.interrupted.swap(false, Ordering::AcqRel) {
            // An interrupt aimed at this task may still be pending: it must not hit the next.
            clear_pending_async(py);
        }
        let refused = match &result {
            Err(Error::Python(exc)) if shared.config.process_fallback => process::refusal(exc),
            _ => None,
        };
        if let Some(refusal) = refused {
            shared.procs.record_refusal(&task.route, &refusal);
            if shared.config.rerun_refused && !task.state.timed_out.load(Ordering::Acquire) {
                task.state.hand_over();
                shared.busy.fetch_sub(1, Ordering::AcqRel);
                shared.procs.send(shared, task);
                continue;
            }
        }
        let elapsed = started.elapsed();
        // Whatever the task did after its deadline — raise, or catch the `TimeoutError`
        // and return — it is reported as timed out.
        let result = if task.state.timed_out.load(Ordering::Acquire) {
            Err(timed_out(result, task.limit_passed()))
        } else {
            result
        };
        // An interpreter that ran out of memory may be left in any state (a module half
        // imported, a cache half filled): it is replaced.
        let out_of_memory = worker.meter.memory_refusals() > refusals;
        match &result {
            Ok(_) => tracing::debug!(
                task = task.id,
                elapsed_us = elapsed.as_micros() as u64,
                "task finished"
            ),
            Err(err) if task.state.timed_out.load(Ordering::Acquire) => {
                tracing::warn!(
                    task = task.id,
                    elapsed_us = elapsed.as_micros() as u64,
                    "task timed out: {err}"
                )
            }
            Err(err) => tracing::debug!(
                task = task.id,
                elapsed_us = elapsed.as_micros() as u64,
                "task failed: {err}"
            ),
        }
        let outcome = (shared.config.task_outcome)(&result);
        stats::with_current(py, |counters| counters.task(outcome));
        task.state.complete(result);
        shared.busy.fetch_sub(1, Ordering::AcqRel);
        if worker.abandoned.load(Ordering::Acquire) {
            return Ok(());
        }
        if out_of_memory {
            shared.stats.task_over_memory_limit();
            tracing::warn!(
                task = task.id,
                limit = worker.meter.memory_limit(),
                "task reached its interpreter's memory limit: the worker is replaced"
            );
            return Ok(());
        }
        if worker.meter.take_replacement_request() {
            tracing::info!(
                task = task.id,
                "the soft memory limit's callback asked for the worker to be replaced"
            );
            return Ok(());
        }
        done += 1;
        if shared
            .config
            .max_tasks_per_worker
            .is_some_and(|max| done >= max)
        {
            tracing::debug!(tasks = done, "pool worker recycled");
            return Ok(());
        }
        if shared.state.load(Ordering::Acquire) == STOPPING {
            return Ok(());
        }
    }
}

/// The [`Error::Timeout`] a task that ran past its deadline is reported with: holding the
/// `TimeoutError` raised at the deadline; or, if the task went on and returned or raised
/// something else, a `TimeoutError` saying so (with what it raised as its context).
fn timed_out<T>(result: Result<T>, limit: Option<Limit>) -> Error {
    let deadline = match limit {
        Some(limit) => limit.past(),
        None => crate::error::past_deadline("the task", None),
    };
    let went_on = |what: &str, context: Option<Box<PyException>>| PyException {
        type_name: "builtins.TimeoutError".into(),
        message: format!("{deadline}; it was interrupted, and then {what}"),
        traceback: String::new(),
        cause: None,
        context,
        exit: None,
    };
    let exc = match result {
        Err(Error::Python(exc)) if exc.is("TimeoutError") => {
            return Error::timeout_in_python(deadline, exc)
        }
        Err(Error::Python(exc)) => went_on(&format!("raised {}", exc.type_name), Some(exc)),
        Err(err) => went_on(&format!("failed: {err}"), None),
        Ok(_) => went_on("returned a result, which is discarded", None),
    };
    Error::Timeout {
        message: exc.message.clone(),
        exception: Some(Box::new(exc)),
    }
}

impl Queued {
    /// The limit a task that was stopped went past: its CPU budget or its deadline.
    fn limit_passed(&self) -> Option<Limit> {
        match self.state.over_cpu_budget.load(Ordering::Acquire) {
            true => self.cpu_budget.map(|budget| Limit::Cpu {
                budget,
                from: Duration::ZERO,
            }),
            false => self.timeout.map(Limit::Deadline),
        }
    }
}

/// What a watch enforces.
#[derive(Clone, Copy, Debug)]
enum Limit {
    /// Wall-clock time from the task's start.
    Deadline(Duration),
    /// CPU time of the worker's thread, from `from` (its CPU time when the task started).
    Cpu { budget: Duration, from: Duration },
}

impl Limit {
    /// What the task went past.
    fn past(&self) -> String {
        match self {
            Limit::Deadline(t) => crate::error::past_deadline("the task", Some(*t)),
            Limit::Cpu { budget, .. } => format!(
                "the task used up its CPU budget of {:.3} s",
                budget.as_secs_f64()
            ),
        }
    }
}

struct Watch {
    due: Instant,
    task: u64,
    limit: Limit,
    worker: Arc<Worker>,
    state: Arc<TaskState>,
    /// False: interrupt at `due`. True: `due` is the end of the grace period.
    abandon: bool,
}

/// Enforces deadlines: interrupts at the deadline, abandons after the grace period.
fn watchdog(rx: Receiver<Watch>, grace: Duration) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut entries: std::collections::HashMap<u64, Watch> = std::collections::HashMap::new();
    let mut seq = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((due, _))| *due);
        let received = match next {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(watch) => {
                seq += 1;
                heap.push(Reverse((watch.due, seq)));
                entries.insert(seq, watch);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if heap.is_empty() => return,
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(next.map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(Instant::now())
                }));
            }
        }
        let now = Instant::now();
        while let Some(Reverse((due, key))) = heap.peek().copied() {
            if due > now {
                break;
            }
            heap.pop();
            let Some(watch) = entries.remove(&key) else {
                continue;
            };
            let still_running = !watch.state.is_done()
                && watch.worker.current.load(Ordering::Acquire) == watch.task;
            if !still_running {
                continue;
            }
            if !watch.abandon && watch.state.timed_out.load(Ordering::Acquire) {
                continue; // its other limit already stopped it
            }
            if let (false, Limit::Cpu { budget, from }) = (watch.abandon, watch.limit) {
                let used = watch.worker.meter.cpu_time().saturating_sub(from);
                if used < budget {
                    // Not yet: look again when the rest could have been used.
                    let due = now + (budget - used).max(Duration::from_millis(1));
                    seq += 1;
                    heap.push(Reverse((due, seq)));
                    entries.insert(seq, Watch { due, ..watch });
                    continue;
                }
                watch.state.over_cpu_budget.store(true, Ordering::Release);
            }
            if !watch.abandon {
                watch.state.timed_out.store(true, Ordering::Release);
                tracing::info!(
                    task = watch.task,
                    "task reached its limit: {}: interrupting",
                    watch.limit.past()
                );
                watch
                    .worker
                    .interrupt_task(watch.task, InterruptReason::Timeout);
                seq += 1;
                heap.push(Reverse((now + grace, seq)));
                entries.insert(
                    seq,
                    Watch {
                        due: now + grace,
                        abandon: true,
                        ..watch
                    },
                );
            } else {
                watch.state.complete(Err(Error::timeout(format!(
                    "{} and did not stop when interrupted (blocked in C code?); its \
                     interpreter was replaced",
                    watch.limit.past()
                ))));
                watch.worker.abandoned.store(true, Ordering::Release);
                let _ = watch.worker.abandon_tx.try_send(());
            }
        }
    }
}

/// A task's result, read from the wire format the worker left it in.
fn read_result(result: Option<Result<Vec<u8>>>) -> Result<Value> {
    result
        .unwrap_or(Err(Error::Closed))
        .and_then(|bytes| wire::decode(&bytes))
}

struct TaskState {
    slot: Mutex<TaskSlot>,
    done: Condvar,
    timed_out: AtomicBool,
    /// The pool's counters, which count the task's outcome once it is stored.
    stats: Arc<Counters>,
    outcome: fn(&Result<Vec<u8>>) -> Outcome,
    /// Set with `timed_out` when it was the CPU budget that ran out.
    over_cpu_budget: AtomicBool,
}

#[derive(Default)]
struct TaskSlot {
    /// The result in the wire format (read by whoever takes it).
    result: Option<Result<Vec<u8>>>,
    finished: bool,
    /// Set when a worker takes the task.
    started: bool,
    wakers: Vec<Waker>,
    worker: Option<Arc<Worker>>,
    /// The worker process running the task, if one does.
    process: Option<Arc<process::Control>>,
}

impl TaskState {
    fn new(stats: Arc<Counters>, outcome: fn(&Result<Vec<u8>>) -> Outcome) -> Self {
        TaskState {
            slot: Mutex::new(TaskSlot::default()),
            done: Condvar::new(),
            timed_out: AtomicBool::new(false),
            stats,
            outcome,
            over_cpu_budget: AtomicBool::new(false),
        }
    }

    fn is_done(&self) -> bool {
        lock(&self.slot).finished
    }

    /// A worker takes the task: false if it was cancelled while queued.
    fn start(&self, worker: &Arc<Worker>) -> bool {
        let mut slot = lock(&self.slot);
        if slot.finished {
            return false;
        }
        slot.started = true;
        slot.worker = Some(Arc::clone(worker));
        true
    }

    /// A worker process takes the task: false if it was cancelled meanwhile.
    fn start_in_process(&self, control: &Arc<process::Control>) -> bool {
        let mut slot = lock(&self.slot);
        if slot.finished {
            return false;
        }
        slot.started = true;
        slot.process = Some(Arc::clone(control));
        true
    }

    /// The interpreter that took the task hands it over to a worker process.
    fn hand_over(&self) {
        lock(&self.slot).worker = None;
    }

    /// Stores the result unless one is already there; returns whether it was stored.
    fn complete(&self, result: Result<Vec<u8>>) -> bool {
        self.complete_if(result, |_| true)
    }

    /// Stores the result if there is none yet and `when` holds for the slot, in one
    /// critical section; returns whether it was stored.
    fn complete_if(&self, result: Result<Vec<u8>>, when: impl FnOnce(&TaskSlot) -> bool) -> bool {
        let mut slot = lock(&self.slot);
        if slot.finished || !when(&slot) {
            return false;
        }
        slot.finished = true;
        self.stats.task((self.outcome)(&result));
        slot.result = Some(result);
        slot.worker = None;
        slot.process = None;
        for waker in slot.wakers.drain(..) {
            waker.wake();
        }
        self.done.notify_all();
        true
    }
}

/// A submitted call: wait for its result (blocking, with a timeout, or as a future), or
/// cancel it.
pub struct Task {
    id: u64,
    state: Arc<TaskState>,
}

impl Task {
    /// The task's id within its pool.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits for the result. A cancelled task gives [`Error::Cancelled`]; a task past its
    /// deadline gives a Python `TimeoutError`.
    pub fn wait(self) -> Result<Value> {
        let mut slot = lock(&self.state.slot);
        while !slot.finished {
            slot = self
                .state
                .done
                .wait(slot)
                .unwrap_or_else(|e| e.into_inner());
        }
        let result = slot.result.take();
        drop(slot);
        read_result(result)
    }

    /// Waits at most `timeout`; gives the task back if it has not finished.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Result<Value>, Task> {
        let deadline = Instant::now() + timeout;
        {
            let mut slot = lock(&self.state.slot);
            while !slot.finished {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    drop(slot);
                    return Err(self);
                }
                slot = self
                    .state
                    .done
                    .wait_timeout(slot, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        Ok(self.wait())
    }

    /// Waits at most `timeout` for the task to finish, without taking its result: true
    /// once it has one.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        let slot = lock(&self.state.slot);
        let (slot, _) = self
            .state
            .done
            .wait_timeout_while(slot, timeout, |slot| !slot.finished)
            .unwrap_or_else(|e| e.into_inner());
        slot.finished
    }

    /// The result, if the task has finished and it was not taken yet.
    pub fn try_take(&self) -> Option<Result<Value>> {
        self.try_take_wire().map(|r| read_result(Some(r)))
    }

    /// The result in the wire format, as the worker wrote it, if the task has finished
    /// and it was not taken yet.
    pub(crate) fn try_take_wire(&self) -> Option<Result<Vec<u8>>> {
        let mut slot = lock(&self.state.slot);
        if !slot.finished {
            return None;
        }
        slot.result.take()
    }

    /// Wakes `waker` once the task finishes; false (and nothing registered) if it has.
    #[cfg_attr(not(feature = "extension-module"), allow(dead_code))]
    pub(crate) fn wake_when_finished(&self, waker: &Waker) -> bool {
        let mut slot = lock(&self.state.slot);
        if slot.finished {
            return false;
        }
        slot.wakers.push(waker.clone());
        true
    }

    /// True once the task has a result (or was cancelled).
    pub fn is_finished(&self) -> bool {
        self.state.is_done()
    }

    /// Cancels the task: a queued task never runs; a running one is interrupted inside
    /// its interpreter (`KeyboardInterrupt`). Returns false if it had already finished.
    pub fn cancel(&self) -> bool {
        let (worker, process) = {
            let slot = lock(&self.state.slot);
            (slot.worker.clone(), slot.process.clone())
        };
        if !self.state.complete(Err(Error::Cancelled)) {
            return false;
        }
        if let Some(worker) = worker {
            worker.interrupt_task(self.id, InterruptReason::Cancelled);
        }
        if let Some(process) = process {
            process.interrupt(self.id, InterruptReason::Cancelled);
        }
        true
    }

    /// Cancels the task only if no worker has taken it yet, as
    /// `concurrent.futures.Future.cancel` does: returns false once it runs or finished.
    pub fn cancel_queued(&self) -> bool {
        self.state
            .complete_if(Err(Error::Cancelled), |slot| !slot.started)
    }

    /// True once a worker has taken the task (it may have finished since).
    pub fn is_started(&self) -> bool {
        lock(&self.state.slot).started
    }
}

impl Future for Task {
    type Output = Result<Value>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = lock(&self.state.slot);
        if slot.finished {
            let result = slot.result.take();
            drop(slot);
            return Poll::Ready(read_result(result));
        }
        slot.wakers.push(cx.waker().clone());
        Poll::Pending
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// The results of [`Pool::map`], in input order.
pub struct MapResults<'p, I> {
    pool: &'p Pool,
    target: String,
    inputs: I,
    options: TaskOptions,
    in_flight: usize,
    window: VecDeque<Result<Task>>,
}

impl<I> Iterator for MapResults<'_, I>
where
    I: Iterator,
    I::Item: Into<Args>,
{
    type Item = Result<Value>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.window.len() < self.in_flight {
            let Some(input) = self.inputs.next() else {
                break;
            };
            self.window
                .push_back(self.pool.submit_with(&self.target, input, self.options));
        }
        Some(self.window.pop_front()?.and_then(Task::wait))
    }
}
