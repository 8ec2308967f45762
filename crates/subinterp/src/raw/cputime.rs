//! The CPU clock of a thread, readable from any thread while that thread lives.

use std::time::Duration;

/// The CPU-time clock of the thread that made it (`pthread_getcpuclockid`).
///
/// Valid only while that thread lives: the clock of an ended thread may read another
/// thread's time. Its owner stops reading it before the thread ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThreadCpuClock(libc::clockid_t);

impl ThreadCpuClock {
    /// The calling thread's CPU clock, if the system has one.
    pub(crate) fn current() -> Option<ThreadCpuClock> {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `pthread_self` is always valid for the calling thread; `clock` is a
        // valid out-parameter.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        (rc == 0).then_some(ThreadCpuClock(clock))
    }

    /// The CPU time the thread has used.
    pub(crate) fn read(&self) -> Option<Duration> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-parameter; an invalid clock id is reported as an
        // error, not undefined behaviour.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }
}
