//! Stopping: SIGINT and SIGTERM wake the main loop (a second one ends the process),
//! and the pool is ended with a bound on the wait.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use subinterp::Pool;

use super::order::Wake;
use crate::stdio;

/// How long ending the pool may take past its grace period after a signal or a write
/// failure before the command leaves without it.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// On the first SIGINT or SIGTERM, wakes the main loop with it; a second one ends the
/// process at once, with status 128 + the signal. A signal ignored when the command
/// started (a background job of a script, `nohup`) stays ignored.
pub(super) fn watch_signals(wakes: Sender<Wake>) -> io::Result<()> {
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

/// Ends the pool: what is queued and running gets `grace` to finish, then is cancelled.
/// Gives up waiting a few seconds later, as code stuck in C can hold an interpreter for
/// ever; returns whether the pool ended.
pub(super) fn end_pool(pool: Pool, grace: Duration) -> bool {
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
