//! Counters per interpreter and per pool, read as a [`Stats`] snapshot, and exported
//! through the `metrics` facade (so whatever exporter the host installed sees them) and
//! as `tracing` events.
//!
//! The counters are relaxed atomics: a channel send or a finished task adds to them
//! without a lock (a channel message, counted under its interpreter's GIL, even without a
//! locked instruction). Each interpreter's counters may have a parent (its pool's), which
//! channel messages, guard rail events and interpreter creations and ends are added to
//! as well; tasks are counted by each side for itself.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge};
use serde::Serialize;

use crate::audit::GuardRule;
use crate::error::{Error, Result};
use crate::raw::callback;
use crate::raw::Python;
use crate::value::Value;

/// A snapshot of the counters of an [`Interpreter`](crate::Interpreter)
/// ([`Interpreter::stats`](crate::Interpreter::stats)) or of a [`Pool`](crate::Pool)
/// ([`Pool::stats`](crate::Pool::stats)).
///
/// Tasks are the operations of an interpreter (`exec`, `eval`, `call`, `with_gil`...),
/// or the tasks a pool worker ran; each lands in exactly one of ok, failed, timed out and
/// cancelled, and `tasks_run` is their sum. For a pool, tasks are counted once each as the
/// pool reports them (cancelled while queued included), and messages, guard rail events
/// and interpreters add up over every worker it ever had.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Tasks finished, whatever their outcome.
    pub tasks_run: u64,
    /// Tasks that returned.
    pub tasks_ok: u64,
    /// Tasks that raised (or failed otherwise), apart from those below.
    pub tasks_failed: u64,
    /// Tasks that ran past their deadline ([`Error::Timeout`]).
    pub tasks_timed_out: u64,
    /// Tasks cancelled ([`Error::Cancelled`]).
    pub tasks_cancelled: u64,
    /// Pool tasks during which their worker went past its memory limit (each also
    /// counted by its outcome, usually failed with `MemoryError`); the worker was
    /// replaced.
    pub tasks_over_memory_limit: u64,
    /// Messages sent on channels by the interpreter's code (`subinterp.channel(...).send`).
    pub messages_sent: u64,
    /// Bytes those messages carried: of `bytes` and `str` values, pickled objects and
    /// shared buffers; other plain values (numbers, lists, dicts) count as messages only.
    pub bytes_sent: u64,
    /// Messages received on channels by the interpreter's code.
    pub messages_received: u64,
    /// Bytes those messages carried, measured as for `bytes_sent`.
    pub bytes_received: u64,
    /// Guard rail events let through and counted ([`GuardAction::Count`](crate::GuardAction)).
    pub guard_counted: u64,
    /// Guard rail events refused with `PermissionError`.
    pub guard_refused: u64,
    /// Per rule that saw an event: its counted and refused events.
    pub guards: BTreeMap<String, GuardStats>,
    /// Interpreters created: 1 for an interpreter, every worker (replacements included)
    /// for a pool.
    pub interpreters_created: u64,
    /// Interpreters ended (left running past their grace period: not ended).
    pub interpreters_ended: u64,
    /// Bytes of memory CPython holds for the interpreter (for a pool: for its live
    /// workers), where memory accounting is on (see the README's "Limits").
    pub memory_bytes: Option<u64>,
    /// Peak of `memory_bytes` (for a pool: the highest any one worker reached).
    pub memory_peak_bytes: Option<u64>,
    /// CPU seconds used by the interpreter's own thread (for a pool: by every worker it
    /// had, added up).
    pub cpu_seconds: Option<f64>,
    /// Times the memory limit was enforced: an allocation refused, or a `MemoryError`
    /// raised because the interpreter went past it.
    pub memory_refusals: u64,
}

/// Reads the counters of a [`Pool`](crate::Pool) even after it was shut down (a
/// shutdown takes the pool): what ended while it shut down is counted then.
#[derive(Clone)]
pub struct StatsHandle(pub(crate) Arc<Counters>);

impl StatsHandle {
    /// A snapshot, as [`Pool::stats`](crate::Pool::stats) gives.
    pub fn stats(&self) -> Stats {
        self.0.snapshot()
    }
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsHandle").field(&self.stats()).finish()
    }
}

/// The events of one guard rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuardStats {
    /// Let through and counted.
    pub counted: u64,
    /// Refused.
    pub refused: u64,
}

impl Stats {
    /// The snapshot as a [`Value`] map (what `.stats()` returns in Python).
    pub fn to_value(&self) -> Value {
        crate::value::to_value(self).unwrap_or(Value::None)
    }

    /// The snapshot as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The outcome of a finished task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    TimedOut,
    Cancelled,
}

impl Outcome {
    pub(crate) fn of<T>(result: &Result<T>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(Error::Timeout { .. }) => Outcome::TimedOut,
            Err(Error::Cancelled) => Outcome::Cancelled,
            Err(_) => Outcome::Failed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }

    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Cancelled,
    ];
}

/// Handles into the `metrics` recorder installed when the counters were made (no-ops if
/// none was).
struct Exported {
    labels: Vec<(&'static str, String)>,
    tasks: [Counter; 4],
    messages_sent: Counter,
    bytes_sent: Counter,
    messages_received: Counter,
    bytes_received: Counter,
    memory_bytes: Gauge,
    memory_peak_bytes: Gauge,
    cpu_seconds: Gauge,
}

impl Exported {
    fn new(tasks_name: &'static str, labels: Vec<(&'static str, String)>) -> Exported {
        let with = |extra: Option<(&'static str, &'static str)>| -> Vec<metrics::Label> {
            labels
                .iter()
                .map(|(k, v)| metrics::Label::new(*k, v.clone()))
                .chain(extra.map(|(k, v)| metrics::Label::new(k, v)))
                .collect()
        };
        let tasks =
            Outcome::ALL.map(|o| metrics::counter!(tasks_name, with(Some(("outcome", o.name())))));
        // A pool's gauges add up its workers: named apart from one interpreter's.
        let gauges = if tasks_name.starts_with("subinterp_pool_") {
            [
                "subinterp_pool_memory_bytes",
                "subinterp_pool_memory_peak_bytes",
                "subinterp_pool_cpu_seconds",
            ]
        } else {
            [
                "subinterp_memory_bytes",
                "subinterp_memory_peak_bytes",
                "subinterp_cpu_seconds",
            ]
        };
        Exported {
            tasks,
            messages_sent: metrics::counter!(
                "subinterp_channel_messages_total",
                with(Some(("direction", "sent")))
            ),
            bytes_sent: metrics::counter!(
                "subinterp_channel_bytes_total",
                with(Some(("direction", "sent")))
            ),
            messages_received: metrics::counter!(
                "subinterp_channel_messages_total",
                with(Some(("direction", "received")))
            ),
            bytes_received: metrics::counter!(
                "subinterp_channel_bytes_total",
                with(Some(("direction", "received")))
            ),
            memory_bytes: metrics::gauge!(gauges[0], with(None)),
            memory_peak_bytes: metrics::gauge!(gauges[1], with(None)),
            cpu_seconds: metrics::gauge!(gauges[2], with(None)),
            labels,
        }
    }

    fn labels(&self, extra: &[(&'static str, &'static str)]) -> Vec<metrics::Label> {
        self.labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, v.clone()))
            .chain(extra.iter().map(|(k, v)| metrics::Label::new(*k, *v)))
            .collect()
    }
}

/// Memory and CPU figures of one interpreter, read live from its meters.
pub(crate) trait Meters: Send + Sync {
    /// Bytes in use now, the peak, and times the limit was enforced; None without
    /// memory accounting.
    fn memory(&self) -> Option<(u64, u64, u64)>;
    /// CPU seconds of the interpreter's own thread.
    fn cpu_seconds(&self) -> f64;
}

/// The meters of the interpreters counted here: those alive, and what those that ended
/// left.
#[derive(Default)]
struct Metered {
    live: Vec<Arc<dyn Meters>>,
    /// Any interpreter was metered.
    any: bool,
    /// Any had memory accounting.
    accounted: bool,
    ended_cpu: f64,
    ended_peak: u64,
    ended_refusals: u64,
}

impl Metered {
    fn fold(&mut self, meters: &dyn Meters) {
        self.any = true;
        self.ended_cpu += meters.cpu_seconds();
        if let Some((_, peak, refusals)) = meters.memory() {
            self.accounted = true;
            self.ended_peak = self.ended_peak.max(peak);
            self.ended_refusals += refusals;
        }
    }

    fn fill(&self, stats: &mut Stats) {
        let mut cpu = self.ended_cpu;
        let (mut in_use, mut peak, mut refusals) = (0, self.ended_peak, self.ended_refusals);
        let mut accounted = self.accounted;
        for meters in &self.live {
            cpu += meters.cpu_seconds();
            if let Some((now, high, refused)) = meters.memory() {
                accounted = true;
                in_use += now;
                peak = peak.max(high);
                refusals += refused;
            }
        }
        if self.any || !self.live.is_empty() {
            stats.cpu_seconds = Some(cpu);
        }
        if accounted {
            stats.memory_bytes = Some(in_use);
            stats.memory_peak_bytes = Some(peak);
        }
        stats.memory_refusals = refusals;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The live counters of an interpreter or a pool.
pub(crate) struct Counters {
    tasks: [AtomicU64; 4],
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    guards: [[AtomicU64; 2]; 7],
    interpreters_created: AtomicU64,
    interpreters_ended: AtomicU64,
    over_memory_limit: AtomicU64,
    metered: Mutex<Metered>,
    parent: Option<Arc<Counters>>,
    exported: Exported,
}

impl Counters {
    fn new(parent: Option<Arc<Counters>>, exported: Exported) -> Counters {
        Counters {
            tasks: Default::default(),
            messages_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            guards: Default::default(),
            interpreters_created: AtomicU64::new(0),
            interpreters_ended: AtomicU64::new(0),
            over_memory_limit: AtomicU64::new(0),
            metered: Mutex::new(Metered::default()),
            parent,
            exported,
        }
    }

    /// The counters of interpreter `id`, a worker of the pool `parent` if given. Exported
    /// with the label `interpreter` (and `pool`, for a worker).
    pub(crate) fn for_interpreter(id: i64, parent: Option<Arc<Counters>>) -> Counters {
        let mut labels = vec![("interpreter", id.to_string())];
        if let Some(pool) = parent.as_ref().and_then(|p| p.pool_name()) {
            labels.push(("pool", pool));
        }
        Counters::new(parent, Exported::new("subinterp_tasks_total", labels))
    }

    /// The counters of the pool called `name`, exported with the label `pool`: its tasks
    /// as `subinterp_pool_tasks_total` (its workers' own counters carry the rest).
    pub(crate) fn for_pool(name: &str) -> Counters {
        Counters::new(
            None,
            Exported::new(
                "subinterp_pool_tasks_total",
                vec![("pool", name.to_owned())],
            ),
        )
    }

    fn pool_name(&self) -> Option<String> {
        self.exported
            .labels
            .iter()
            .find(|(k, _)| *k == "pool")
            .map(|(_, v)| v.clone())
    }

    /// The counters this one adds to: its pool's.
    fn parents(&self) -> impl Iterator<Item = &Counters> {
        self.chain().skip(1)
    }

    fn chain(&self) -> impl Iterator<Item = &Counters> {
        std::iter::successors(Some(self), |c| c.parent.as_deref())
    }

    /// A task finished with `outcome` (counted here only, not in the parent). The
    /// memory and CPU gauges are brought up to date.
    pub(crate) fn task(&self, outcome: Outcome) {
        let i = outcome as usize;
        self.tasks[i].fetch_add(1, Ordering::Relaxed);
        self.exported.tasks[i].increment(1);
        self.export_usage();
    }

    /// Sets the memory and CPU gauges to the figures now.
    fn export_usage(&self) {
        let mut stats = Stats::default();
        lock(&self.metered).fill(&mut stats);
        if let Some(bytes) = stats.memory_bytes {
            self.exported.memory_bytes.set(bytes as f64);
        }
        if let Some(bytes) = stats.memory_peak_bytes {
            self.exported.memory_peak_bytes.set(bytes as f64);
        }
        if let Some(seconds) = stats.cpu_seconds {
            self.exported.cpu_seconds.set(seconds);
        }
    }

    /// A message of `bytes` bytes was sent by code holding this interpreter's GIL.
    pub(crate) fn sent(&self, bytes: u64) {
        gil_add(&self.messages_sent, 1);
        gil_add(&self.bytes_sent, bytes);
        for c in self.parents() {
            c.messages_sent.fetch_add(1, Ordering::Relaxed);
            c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        }
        self.exported.messages_sent.increment(1);
        self.exported.bytes_sent.increment(bytes);
    }

    /// A message of `bytes` bytes was received by code holding this interpreter's GIL.
    pub(crate) fn received(&self, bytes: u64) {
        gil_add(&self.messages_received, 1);
        gil_add(&self.bytes_received, bytes);
        for c in self.parents() {
            c.messages_received.fetch_add(1, Ordering::Relaxed);
            c.bytes_received.fetch_add(bytes, Ordering::Relaxed);
        }
        self.exported.messages_received.increment(1);
        self.exported.bytes_received.increment(bytes);
    }

    /// A guard rail event of `rule`, refused or counted.
    pub(crate) fn guard(&self, rule: GuardRule, refused: bool) {
        for c in self.chain() {
            c.guards[rule.index()][usize::from(refused)].fetch_add(1, Ordering::Relaxed);
        }
        let action = if refused { "refused" } else { "counted" };
        let labels = self
            .exported
            .labels(&[("rule", rule.name()), ("action", action)]);
        metrics::counter!("subinterp_guard_events_total", labels).increment(1);
    }

    /// A pool task ran its worker past its memory limit.
    pub(crate) fn task_over_memory_limit(&self) {
        self.over_memory_limit.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "subinterp_tasks_over_memory_limit_total",
            self.exported.labels(&[])
        )
        .increment(1);
    }

    /// Reads `meters` for this interpreter's figures (and its pool's) until
    /// [`unmeter`](Self::unmeter).
    pub(crate) fn meter(&self, meters: &Arc<dyn Meters>) {
        for c in self.chain() {
            lock(&c.metered).live.push(Arc::clone(meters));
        }
    }

    /// The interpreter ended: its last figures are kept, added up with those of the
    /// others that ended.
    pub(crate) fn unmeter(&self, meters: &Arc<dyn Meters>) {
        for c in self.chain() {
            let mut metered = lock(&c.metered);
            metered.live.retain(|m| !Arc::ptr_eq(m, meters));
            metered.fold(meters.as_ref());
            drop(metered);
            c.export_usage();
        }
    }

    /// The interpreter was created.
    pub(crate) fn created(&self) {
        self.lifecycle(
            |c| &c.interpreters_created,
            "subinterp_interpreters_created_total",
        );
    }

    /// The interpreter ended.
    pub(crate) fn ended(&self) {
        self.lifecycle(
            |c| &c.interpreters_ended,
            "subinterp_interpreters_ended_total",
        );
    }

    fn lifecycle(&self, counter: fn(&Counters) -> &AtomicU64, metric: &'static str) {
        for c in self.chain() {
            counter(c).fetch_add(1, Ordering::Relaxed);
        }
        metrics::counter!(metric, self.exported.labels(&[])).increment(1);
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let tasks = self.tasks.each_ref().map(get);
        let mut guards = BTreeMap::new();
        let (mut counted, mut refused) = (0, 0);
        for rule in GuardRule::ALL {
            let [c, r] = self.guards[rule.index()].each_ref().map(get);
            counted += c;
            refused += r;
            if c + r > 0 {
                guards.insert(
                    rule.name().to_owned(),
                    GuardStats {
                        counted: c,
                        refused: r,
                    },
                );
            }
        }
        let mut stats = Stats {
            tasks_run: tasks.iter().sum(),
            tasks_ok: tasks[Outcome::Ok as usize],
            tasks_failed: tasks[Outcome::Failed as usize],
            tasks_timed_out: tasks[Outcome::TimedOut as usize],
            tasks_cancelled: tasks[Outcome::Cancelled as usize],
            tasks_over_memory_limit: get(&self.over_memory_limit),
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            messages_received: get(&self.messages_received),
            bytes_received: get(&self.bytes_received),
            guard_counted: counted,
            guard_refused: refused,
            guards,
            interpreters_created: get(&self.interpreters_created),
            interpreters_ended: get(&self.interpreters_ended),
            memory_bytes: None,
            memory_peak_bytes: None,
            cpu_seconds: None,
            memory_refusals: 0,
        };
        lock(&self.metered).fill(&mut stats);
        stats
    }
}

/// Adds `n` to a counter only ever changed by code holding one interpreter's GIL (its
/// channel messages): those changes never overlap, so a plain load and store does, without
/// the locked instruction of `fetch_add` on the hottest path. Readers on other threads see
/// the value before or after, never a torn one.
fn gil_add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

// ---------------------------------------------------------------- per interpreter

const STATS_KEY: &str = "subinterp.stats";

struct Attached(Arc<Counters>);

/// Attaches `counters` to the interpreter `py` runs (called once, as it starts).
pub(crate) fn attach(py: Python<'_>, counters: Arc<Counters>) -> Result<()> {
    let capsule = callback::capsule(py, Attached(counters))?;
    py.interpreter_dict()?
        .set_item(&py.str(STATS_KEY)?, &capsule)
}

thread_local! {
    /// The counters last looked up on this thread, with their interpreter's id
    /// (CPython never reuses an interpreter id within a process).
    static CURRENT: RefCell<Option<(i64, Option<Arc<Counters>>)>> = const { RefCell::new(None) };
}

/// Runs `f` with the counters of the interpreter `py` runs, if it has any (the main
/// interpreter and interpreters not made by this crate have none). Cheap after the first
/// call on a thread: a thread-local cache keyed by the interpreter's id.
pub(crate) fn with_current(py: Python<'_>, f: impl FnOnce(&Counters)) {
    let id = py.interpreter_id();
    CURRENT.with(|current| {
        let mut current = current.borrow_mut();
        if !matches!(&*current, Some((cached, _)) if *cached == id) {
            *current = Some((id, lookup(py)));
        }
        if let Some((_, Some(counters))) = &*current {
            f(counters);
        }
    });
}

fn lookup(py: Python<'_>) -> Option<Arc<Counters>> {
    let dict = py.interpreter_dict().ok()?;
    let capsule = dict.dict_get(&py.str(STATS_KEY).ok()?)?;
    callback::capsule_value::<Attached>(&capsule).map(|a| Arc::clone(&a.0))
}
