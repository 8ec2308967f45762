//! Blocking waits that wake on events, never on a timer: a waiting thread parks, and
//! whoever changes what it waits for unparks it. Waits of an interpreter's threads can
//! also be interrupted (a deadline or a cancellation), through a per-interpreter
//! [`InterruptState`].

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::thread::Thread;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::raw::callback;
use crate::raw::Python;

pub use crate::error::InterruptReason;

/// One parked waiter: a thread or an async task.
#[derive(Clone)]
pub(crate) enum Waiter {
    Thread(Arc<Signal>),
    Task(Waker),
}

impl Waiter {
    pub(crate) fn wake(&self) {
        match self {
            Waiter::Thread(signal) => signal.notify(),
            Waiter::Task(waker) => waker.wake_by_ref(),
        }
    }
}

/// Wakes one parked thread.
pub(crate) struct Signal {
    thread: Thread,
    notified: AtomicBool,
}

impl Signal {
    pub(crate) fn for_current_thread() -> Arc<Signal> {
        Arc::new(Signal {
            thread: std::thread::current(),
            notified: AtomicBool::new(false),
        })
    }

    pub(crate) fn notify(&self) {
        self.notified.store(true, Ordering::Release);
        self.thread.unpark();
    }

    /// Parks until notified or the deadline passes; returns false on timeout. Clears the
    /// notification it consumed.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.notified.swap(false, Ordering::AcqRel) {
                return true;
            }
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return self.notified.swap(false, Ordering::AcqRel);
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        }
    }
}

/// One blocking wait of an interpreter's thread, as seen by interrupters.
pub(crate) struct WaitSlot {
    signal: Arc<Signal>,
    reason: AtomicU8,
}

impl WaitSlot {
    pub(crate) fn signal(&self) -> &Arc<Signal> {
        &self.signal
    }

    /// Takes the interrupt delivered to this wait, if any.
    pub(crate) fn take(&self) -> Option<InterruptReason> {
        InterruptReason::from_code(self.reason.swap(0, Ordering::SeqCst))
    }
}

/// The blocking waits in progress in one interpreter, so that they can be interrupted.
pub(crate) struct InterruptState {
    waiting: Mutex<Vec<Arc<WaitSlot>>>,
}

impl InterruptState {
    fn new() -> Self {
        InterruptState {
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// Delivers an interrupt to every wait in progress and wakes them. Returns whether
    /// there was any: without one nothing is recorded, and the caller interrupts the
    /// running code another way.
    pub(crate) fn request(&self, reason: InterruptReason) -> bool {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        for slot in waiting.iter() {
            slot.reason.store(reason.code(), Ordering::SeqCst);
            slot.signal.notify();
        }
        !waiting.is_empty()
    }

    /// Registers a wait of the current thread.
    pub(crate) fn enter_wait(&self) -> Arc<WaitSlot> {
        let slot = Arc::new(WaitSlot {
            signal: Signal::for_current_thread(),
            reason: AtomicU8::new(0),
        });
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&slot));
        slot
    }

    /// Unregisters a wait; returns an interrupt that reached it too late to stop it.
    pub(crate) fn leave_wait(&self, slot: &Arc<WaitSlot>) -> Option<InterruptReason> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| !Arc::ptr_eq(s, slot));
        slot.take()
    }
}

/// The key of an interpreter's own dict under which its [`InterruptState`] is kept.
const INTERRUPTS_KEY: &str = "subinterp.interrupts";

/// What the interpreter's dict holds.
struct Attached(Arc<InterruptState>);

/// Makes the waits of the interpreter of `py` interruptible: its interrupt state is kept
/// in the interpreter's own dict (it goes with the interpreter), where every thread of it
/// finds it.
pub(crate) fn register(py: Python<'_>) -> Result<Arc<InterruptState>> {
    let state = Arc::new(InterruptState::new());
    let capsule = callback::capsule(py, Attached(Arc::clone(&state)))?;
    py.interpreter_dict()?
        .set_item(&py.str(INTERRUPTS_KEY)?, &capsule)?;
    Ok(state)
}

/// The interrupt state of the interpreter of `py`, if it was created by this crate.
pub(crate) fn lookup(py: Python<'_>) -> Option<Arc<InterruptState>> {
    let dict = py.interpreter_dict().ok()?;
    let capsule = dict.dict_get(&py.str(INTERRUPTS_KEY).ok()?)?;
    callback::capsule_value::<Attached>(&capsule).map(|a| Arc::clone(&a.0))
}

/// How long a blocked operation may wait.
pub(crate) fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(|t| Instant::now().checked_add(t).unwrap_or_else(far_future))
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365)
}
