//! What an interpreter uses: the memory its threads allocate through CPython (bytes in
//! use, peak, allocations refused past its limit) and the CPU time of its thread. The
//! mechanisms are in `raw/alloc.rs` and `raw/cputime.rs`; this module keeps one
//! interpreter's figures readable from any thread, and after it ended.
//!
//! Sizes given by people (`--memory-limit 256M`) are read by [`parse_size`], the one rule
//! for a number of bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, Weak};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::raw::alloc::{Account, Usage};
use crate::raw::cputime::ThreadCpuClock;
use crate::raw::lifecycle::SubInterpreter;
use crate::stats::Meters;

/// One interpreter's meters, shared by its thread and its handles.
#[derive(Debug)]
pub(crate) struct Meter {
    state: Mutex<State>,
    limit: Option<u64>,
    soft: Option<u64>,
    /// A soft limit's callback asked for the pool worker to be replaced.
    replace: AtomicBool,
}

#[derive(Debug)]
struct State {
    /// None: memory is not counted (no hooks), or the interpreter ended.
    account: Option<Account>,
    /// The last figures, once the account is closed.
    ended_memory: Option<Usage>,
    /// The interpreter thread's CPU clock while the thread lives.
    clock: Option<ThreadCpuClock>,
    /// The CPU time it had used when it stopped being read.
    ended_cpu: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the watcher does for one interpreter.
pub(crate) struct Watch {
    /// It went past its hard limit: raise `MemoryError` in it.
    pub(crate) memory_error: Box<dyn Fn() + Send + Sync>,
    /// It passed its soft limit, holding this many bytes: tell the host.
    pub(crate) soft: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

/// The interpreters with a limit, for the watcher.
static WATCHED: Mutex<Vec<(Weak<Meter>, Arc<Watch>)>> = Mutex::new(Vec::new());
static WATCHER: Once = Once::new();

/// The watcher thread: woken by the allocator hooks when an interpreter was granted
/// memory past its limit or passed its soft limit (and every 50 ms while any
/// interpreter has a limit, in case a notice came before it was watched, and to arm
/// soft limits again), it acts for that interpreter. The actions run with no lock held:
/// a host's callback may create interpreters.
fn watcher() {
    loop {
        let watched: Vec<(Arc<Meter>, Arc<Watch>)> = {
            let mut watched = lock(&WATCHED);
            watched.retain(|(meter, _)| meter.strong_count() > 0);
            watched
                .iter()
                .filter_map(|(meter, watch)| Some((meter.upgrade()?, Arc::clone(watch))))
                .collect()
        };
        for (meter, watch) in &watched {
            let state = lock(&meter.state);
            let Some(account) = state.account.as_ref() else {
                continue;
            };
            let over = account.take_over_limit();
            let soft = account
                .take_soft_notice()
                .then(|| account.usage().in_use as u64);
            account.rearm_soft();
            drop(state);
            if over {
                (watch.memory_error)();
            }
            if let (Some(in_use), Some(tell)) = (soft, &watch.soft) {
                let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tell(in_use)));
                if told.is_err() {
                    tracing::error!("the soft memory limit callback panicked: taken as Continue");
                }
            }
        }
        if watched.is_empty() {
            std::thread::park();
        } else {
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
}

impl Meter {
    /// Starts metering `sub` on its own thread (the calling thread): opens its memory
    /// account with `limit`, and takes the thread's CPU clock. A limit that cannot be
    /// enforced is an error.
    pub(crate) fn start(
        sub: &SubInterpreter,
        limit: Option<u64>,
        soft: Option<u64>,
    ) -> Result<Meter> {
        if crate::raw::alloc::installed() && crate::raw::alloc::restore_raw_hook() {
            tracing::warn!(
                "the raw allocator's accounting hook had been replaced (CPython restored an \
                 allocator it had saved before the hooks went in); put back"
            );
        }
        let bytes = |l: Option<u64>| l.map_or(0, |l| usize::try_from(l).unwrap_or(usize::MAX));
        let account = Account::open(sub, bytes(limit), bytes(soft));
        if (limit.is_some() || soft.is_some()) && account.is_none() {
            return Err(Error::CreateFailed(if crate::raw::alloc::installed() {
                "too many interpreters with memory accounting at once".into()
            } else {
                unavailable().into()
            }));
        }
        if let Some(account) = &account {
            account.enter_thread();
        }
        Ok(Meter {
            state: Mutex::new(State {
                account,
                ended_memory: None,
                clock: ThreadCpuClock::current(),
                ended_cpu: Duration::ZERO,
            }),
            limit,
            soft,
            replace: AtomicBool::new(false),
        })
    }

    /// Has the watcher act for this interpreter past its limits (nothing without one).
    /// The actions must not wait for the interpreter.
    pub(crate) fn watch(self: &Arc<Self>, watch: Watch) {
        if self.limit.is_none() && self.soft.is_none() {
            return;
        }
        WATCHER.call_once(|| {
            match std::thread::Builder::new()
                .name("subinterp-memory".into())
                .spawn(watcher)
            {
                Ok(handle) => crate::raw::alloc::set_watcher(handle.thread().clone()),
                Err(err) => tracing::error!("cannot start the memory watcher: {err}"),
            }
        });
        lock(&WATCHED).push((Arc::downgrade(self), Arc::new(watch)));
    }

    /// Asks for the pool worker to be replaced once its task ends.
    pub(crate) fn request_replacement(&self) {
        self.replace.store(true, Ordering::Release);
    }

    /// Whether a replacement was asked for (once).
    pub(crate) fn take_replacement_request(&self) -> bool {
        self.replace.swap(false, Ordering::AcqRel)
    }

    /// Whether the interpreter holds more than its limit now; if so, counts the
    /// `MemoryError` about to be raised for it.
    pub(crate) fn enforcing(&self) -> bool {
        let state = lock(&self.state);
        match &state.account {
            Some(account) if account.over_limit() => {
                account.note_enforced();
                true
            }
            _ => false,
        }
    }

    /// Before the interpreter's thread attaches another interpreter's thread state
    /// (ending the interpreter does): what it allocates is no longer charged to this
    /// interpreter without a look at the thread state.
    pub(crate) fn leave_thread(&self) {
        Account::leave_thread();
    }

    /// Stops metering, on the interpreter's thread after the interpreter ended (or was
    /// left running): the last figures stay readable.
    pub(crate) fn finish(&self) {
        Account::leave_thread();
        let mut state = lock(&self.state);
        if let Some(clock) = state.clock.take() {
            state.ended_cpu = clock.read().unwrap_or_default();
        }
        if let Some(account) = state.account.take() {
            state.ended_memory = Some(account.release());
        }
    }

    fn memory(&self) -> Option<Usage> {
        let state = lock(&self.state);
        match &state.account {
            Some(account) => Some(account.usage()),
            None => state.ended_memory,
        }
    }

    /// Bytes CPython holds for the interpreter's threads (arenas of small objects,
    /// larger blocks); None without accounting.
    pub(crate) fn memory_in_use(&self) -> Option<u64> {
        self.memory().map(|u| u.in_use as u64)
    }

    /// The most [`memory_in_use`](Self::memory_in_use) has been.
    pub(crate) fn memory_peak(&self) -> Option<u64> {
        self.memory().map(|u| u.peak as u64)
    }

    /// Allocations refused because they would have gone past the limit.
    pub(crate) fn memory_refusals(&self) -> u64 {
        self.memory().map_or(0, |u| u.refused)
    }

    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.limit
    }

    /// CPU time used by the interpreter's own thread (not the threads its Python code
    /// started).
    pub(crate) fn cpu_time(&self) -> Duration {
        let state = lock(&self.state);
        match &state.clock {
            // Read under the lock: the thread cannot end (and its clock id be reused)
            // before `finish`, which waits for it.
            Some(clock) => clock.read().unwrap_or(state.ended_cpu),
            None => state.ended_cpu,
        }
    }
}

impl Meters for Meter {
    fn memory(&self) -> Option<(u64, u64, u64)> {
        self.memory()
            .map(|u| (u.in_use as u64, u.peak as u64, u.refused))
    }

    fn cpu_seconds(&self) -> f64 {
        self.cpu_time().as_secs_f64()
    }
}

/// Why a limit cannot be had.
pub(crate) fn unavailable() -> &'static str {
    "memory limits need memory accounting, which is off: it needs \
     RuntimeConfig::memory_accounting(true) (the default) and a Python whose raw allocator \
     is plain malloc (not a debug build of CPython, and, in a running Python, no \
     tracemalloc tracing when subinterp started)"
}

/// Reads a number of bytes: digits with an optional binary unit, `K`, `M`, `G` or `T`
/// (powers of 1024; an optional `B`, `iB`, any case; `256M`, `2G`, `1.5GiB`,
/// `1048576`). Zero, negative, fractions of a byte and sizes past `u64` are refused.
///
/// ```
/// assert_eq!(subinterp::parse_size("256M").unwrap(), 256 << 20);
/// assert_eq!(subinterp::parse_size("2g").unwrap(), 2 << 30);
/// assert!(subinterp::parse_size("0").is_err());
/// ```
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = |why: &str| {
        Error::InvalidConfig(format!(
            "invalid size {text:?}: {why} (a number of bytes, or with K, M, G or T: 256M, 2G)"
        ))
    };
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad("unknown unit")),
    };
    if !number.contains('.') {
        let whole: u64 = number.parse().map_err(|_| bad("too large"))?;
        if whole == 0 {
            return Err(bad("must be at least one byte"));
        }
        return whole
            .checked_mul(1u64 << shift)
            .ok_or_else(|| bad("too large"));
    }
    let value: f64 = number.parse().map_err(|_| bad("not a number"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad("too large"));
    }
    if bytes < 1.0 {
        return Err(bad("must be at least one byte"));
    }
    if bytes.fract() != 0.0 {
        return Err(bad("not a whole number of bytes"));
    }
    Ok(bytes as u64)
}
