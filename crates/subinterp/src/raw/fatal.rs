//! Ending the process with a chosen exit status, instead of a signal, when CPython
//! crashes after a host has settled its outcome (see [`crate::hazards::settle_exit`]).

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};

/// The status the process exits with from the handler; only read by it.
static STATUS: AtomicI32 = AtomicI32::new(1);
/// The message the handler writes to stderr: a leaked, never freed byte string.
static MESSAGE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static MESSAGE_LEN: AtomicUsize = AtomicUsize::new(0);

/// The signals a crashing CPython dies of.
const FATAL: [libc::c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
];

/// Async-signal-safe: reads atomics, calls `write` and `_exit` only.
extern "C" fn on_fatal_signal(_signal: libc::c_int) {
    let ptr = MESSAGE.load(Ordering::Acquire);
    let len = MESSAGE_LEN.load(Ordering::Acquire);
    if !ptr.is_null() {
        // SAFETY: `ptr` and `len` describe a leaked byte string that is never freed;
        // `write` is async-signal-safe. A short or failed write is ignored: the process
        // ends next either way.
        let _ = unsafe { libc::write(2, ptr.cast(), len) };
    }
    // SAFETY: `_exit` is async-signal-safe and ends the process at once, without running
    // atexit handlers or unwinding: nothing of the crashed state is touched.
    unsafe { libc::_exit(STATUS.load(Ordering::Relaxed)) }
}

/// From now on, a fatal signal writes `message` to stderr and ends the process with
/// `status`. Calling it again replaces the status and message (the old message leaks,
/// a few bytes per call).
pub(crate) fn exit_on_fatal_signal(status: u8, message: &str) {
    let bytes: &'static mut [u8] = Box::leak(message.as_bytes().to_vec().into_boxed_slice());
    STATUS.store(i32::from(status), Ordering::Relaxed);
    MESSAGE_LEN.store(0, Ordering::Release);
    MESSAGE.store(bytes.as_mut_ptr(), Ordering::Release);
    MESSAGE_LEN.store(bytes.len(), Ordering::Release);
    for signal in FATAL {
        // SAFETY: a zeroed sigaction with only the handler and an empty mask set is a
        // valid argument; the handler is async-signal-safe (see above) and cannot unwind
        // (it calls nothing that panics).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_NODEFER;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
