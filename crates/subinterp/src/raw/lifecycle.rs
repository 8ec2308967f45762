//! Process start-up and shut-down, and the thread states of subinterpreters.

use std::ffi::{c_int, c_long};
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::NonNull;

use pyo3_ffi as ffi;

use super::object::{cstring, from_cstr};
use super::Python;
use crate::error::InterruptReason;

/// Options for [`initialize`], already validated by the caller.
pub(crate) struct InitOptions<'a> {
    pub home: Option<&'a str>,
    pub executable: Option<&'a str>,
    pub use_environment: bool,
    pub site_import: bool,
    /// Modules defined at run time, built in to every interpreter: the crate's own
    /// `subinterp` module and the host's modules.
    pub modules: &'a [super::module::ModuleSpec],
    /// Install the memory accounting hooks ([`super::alloc`]).
    pub memory_accounting: bool,
}

/// The main interpreter's thread state, detached, owned by the thread that initialised
/// the runtime. It is the only handle through which the runtime can be finalised.
pub(crate) struct MainThreadState(NonNull<ffi::PyThreadState>);

/// Proof that CPython is initialised and its main interpreter exists, which new
/// interpreters are made from (they copy its configuration). Given by [`initialize`] and
/// [`borrow_running`]; the runtime is finalised only after every interpreter thread, the
/// only users of this proof, has ended.
#[derive(Clone, Copy)]
pub(crate) struct MainInterpreter(());

impl MainInterpreter {
    /// The proof for the running Python whose GIL (of any interpreter) the token proves
    /// held.
    #[cfg(feature = "extension-module")]
    pub(crate) fn running(_py: Python<'_>) -> MainInterpreter {
        MainInterpreter(())
    }
}

fn status_error(status: &ffi::PyStatus) -> Option<String> {
    // SAFETY: `PyStatus_Exception` only reads the plain struct.
    if unsafe { ffi::PyStatus_Exception(*status) } == 0 {
        return None;
    }
    // SAFETY: `func` and `err_msg` are NULL or static C strings set by CPython.
    let (func, msg) = unsafe { (from_cstr(status.func), from_cstr(status.err_msg)) };
    Some(if func.is_empty() {
        msg
    } else {
        format!("{func}: {msg}")
    })
}

/// Initialises CPython on the calling thread, then detaches, returning the main thread
/// state for [`finalize`].
pub(crate) fn initialize(
    opts: &InitOptions<'_>,
) -> Result<(MainThreadState, MainInterpreter), String> {
    // SAFETY: reading a flag; no other thread can be initialising (the caller serialises).
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        return Err("Python is already initialised in this process by other code".into());
    }
    super::module::register(opts.modules.to_vec())?;
    // UTF-8 mode (PEP 540): file names, `open()` and the standard streams use UTF-8
    // whatever locale the host process has (a host rarely calls setlocale, which leaves
    // the "C" locale and ASCII otherwise).
    let mut pre = MaybeUninit::<ffi::PyPreConfig>::uninit();
    // SAFETY: PyPreConfig_InitIsolatedConfig fully initialises the struct; it is then
    // read by Py_PreInitialize, before any interpreter exists.
    let status = unsafe {
        ffi::PyPreConfig_InitIsolatedConfig(pre.as_mut_ptr());
        let mut pre = pre.assume_init();
        pre.utf8_mode = 1;
        ffi::Py_PreInitialize(&pre)
    };
    if let Some(err) = status_error(&status) {
        return Err(err);
    }
    if opts.memory_accounting {
        // Pre-initialised, not yet initialised: the one moment the hooks can go in.
        // Not installed (false) when the raw domain is not plain malloc: figures are
        // then absent and limits refused, as with accounting off.
        let _ = super::alloc::install();
    }
    let mut config = MaybeUninit::<ffi::PyConfig>::uninit();
    // SAFETY: PyConfig_InitIsolatedConfig fully initialises the struct.
    unsafe { ffi::PyConfig_InitIsolatedConfig(config.as_mut_ptr()) };
    // SAFETY: initialised just above.
    let mut config = unsafe { config.assume_init() };
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    config.user_site_directory = 0;
    config.use_environment = c_int::from(opts.use_environment);
    config.site_import = c_int::from(opts.site_import);
    let cfg: *mut ffi::PyConfig = &mut config;
    let set = |field: *mut *mut libc::wchar_t, value: &str| -> Result<(), String> {
        let value = cstring(value);
        // SAFETY: `cfg` points to the initialised `config`, which outlives this closure;
        // `field` points into it; the string is NUL-terminated and copied by CPython.
        let status = unsafe { ffi::PyConfig_SetBytesString(cfg, field, value.as_ptr()) };
        status_error(&status).map_or(Ok(()), Err)
    };
    let result = (|| {
        if let Some(home) = opts.home {
            // SAFETY: taking the address of a field of the live config.
            let field = unsafe { std::ptr::addr_of_mut!((*cfg).home) };
            set(field, home)?;
        }
        if let Some(executable) = opts.executable {
            // SAFETY: taking the address of a field of the live config.
            let field = unsafe { std::ptr::addr_of_mut!((*cfg).executable) };
            set(field, executable)?;
        }
        // SAFETY: `config` is a fully initialised PyConfig; no interpreter exists yet.
        let status = unsafe { ffi::Py_InitializeFromConfig(cfg) };
        status_error(&status).map_or(Ok(()), Err)
    })();
    // SAFETY: releases the memory the config owns; the runtime made its own copy.
    unsafe { ffi::PyConfig_Clear(cfg) };
    result?;
    // SAFETY: initialisation succeeded, so this thread holds the main GIL; detach it.
    let tstate = unsafe { ffi::PyEval_SaveThread() };
    // SAFETY: the main interpreter exists after a successful initialisation.
    let interp = unsafe { ffi::PyInterpreterState_Main() };
    match (NonNull::new(tstate), NonNull::new(interp)) {
        (Some(ts), Some(_)) => {
            super::lent::register(0);
            Ok((MainThreadState(ts), MainInterpreter(())))
        }
        _ => Err("CPython did not return the main thread state".into()),
    }
}

/// Borrows the CPython already running in this process (this crate loaded as one of its
/// extension modules): a new thread state of its main interpreter for the calling
/// thread, detached, to give back with [`MainThreadState::release`]. The module
/// definitions must be made already ([`super::module::extension_init`]).
pub(crate) fn borrow_running() -> Result<(MainThreadState, MainInterpreter), String> {
    // SAFETY: reading a flag.
    if unsafe { ffi::Py_IsInitialized() } == 0 {
        return Err("no Python is running in this process to borrow".into());
    }
    if !super::module::defined() {
        return Err("the subinterp extension module is not loaded".into());
    }
    // SAFETY: Python is initialised, so the main interpreter exists; a new thread state
    // needs no GIL (CPython serialises its creation) and starts detached.
    let (interp, tstate) = unsafe {
        let interp = ffi::PyInterpreterState_Main();
        (interp, ffi::PyThreadState_New(interp))
    };
    match (NonNull::new(tstate), NonNull::new(interp)) {
        (Some(ts), Some(_)) => {
            // The running Python finalises itself, without `lent::interpreter_ending`:
            // what its main interpreter lends is then never released, but stays valid
            // (a referenced object is never freed).
            super::lent::register(0);
            Ok((MainThreadState(ts), MainInterpreter(())))
        }
        _ => Err("could not make a thread state of the main interpreter".into()),
    }
}

impl MainThreadState {
    /// Gives back a thread state made by [`borrow_running`]: Python goes on running.
    pub(crate) fn release(self) {
        // SAFETY: this thread owns the detached thread state; attach it (waiting for the
        // main GIL), clear it and delete it, which detaches.
        unsafe {
            ffi::PyEval_RestoreThread(self.0.as_ptr());
            ffi::PyThreadState_Clear(self.0.as_ptr());
            ffi::PyThreadState_DeleteCurrent();
        }
    }

    /// Runs `f` with the main interpreter's GIL held.
    pub(crate) fn with_gil<R>(&self, f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
        // SAFETY: this thread owns the detached main thread state.
        unsafe { ffi::PyEval_RestoreThread(self.0.as_ptr()) };
        let _detach = Detach;
        // SAFETY: attached just above, detached when `_detach` drops (also on unwind).
        unsafe { Python::assume_attached(f) }
    }

    /// Finalises CPython. Must be called on the thread that called [`initialize`], after
    /// every other interpreter has ended. Returns false if flushing buffered data failed.
    pub(crate) fn finalize(self) -> bool {
        // SAFETY: this thread owns the main thread state; re-attach it (the token for
        // the loans' hook is then true), then finalise, which destroys it.
        unsafe {
            ffi::PyEval_RestoreThread(self.0.as_ptr());
            Python::assume_attached(super::lent::interpreter_ending);
            ffi::Py_FinalizeEx() == 0
        }
    }
}

/// Detaches the current thread state when dropped.
struct Detach;

impl Drop for Detach {
    fn drop(&mut self) {
        // SAFETY: created only right after attaching a thread state on this thread.
        unsafe { ffi::PyEval_SaveThread() };
    }
}

/// The fields of `PyInterpreterConfig`, validated by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawConfig {
    pub use_main_obmalloc: bool,
    pub allow_fork: bool,
    pub allow_exec: bool,
    pub allow_threads: bool,
    pub allow_daemon_threads: bool,
    pub check_multi_interp_extensions: bool,
    pub own_gil: bool,
}

/// A subinterpreter and the thread states through which the owning thread uses it.
///
/// Not `Send`: it lives and dies on the thread that created it.
pub(crate) struct SubInterpreter {
    tstate: NonNull<ffi::PyThreadState>,
    id: i64,
    /// CPython's identifier of the owning OS thread.
    thread_id: std::ffi::c_ulong,
}

/// What another thread needs to interrupt code running in an interpreter.
pub(crate) struct InterruptTarget {
    interp: NonNull<ffi::PyInterpreterState>,
    thread_id: std::ffi::c_ulong,
}

// SAFETY: the interpreter pointer is only used while the interpreter is alive: its owner
// takes the target away (under a lock the interrupter holds) before ending it.
unsafe impl Send for InterruptTarget {}

impl InterruptTarget {
    /// Attaches a fresh thread state of the target interpreter (waiting for its GIL: the
    /// caller is a delivery thread of its own, which may wait), asks `decide` whether to
    /// interrupt, and if so raises `reason` asynchronously in the interpreter's own thread. The temporary thread state is then deleted, so it never
    /// outlives this call. Returns `decide`'s answer.
    pub(crate) fn interrupt(&self, decide: impl FnOnce() -> bool, raise: Raise) -> bool {
        // SAFETY: the interpreter is alive (see `Send`); the new thread state belongs to
        // this thread, is attached, used, then cleared and deleted while attached.
        unsafe {
            let ts = ffi::PyThreadState_New(self.interp.as_ptr());
            if ts.is_null() {
                return false;
            }
            ffi::PyEval_RestoreThread(ts);
            let interrupt = catch_unwind(AssertUnwindSafe(decide)).unwrap_or(false);
            if interrupt {
                ffi::PyThreadState_SetAsyncExc(self.thread_id as c_long, raise.exception());
            }
            ffi::PyThreadState_Clear(ts);
            ffi::PyThreadState_DeleteCurrent();
            interrupt
        }
    }
}

/// The exception an interrupt raises in Python code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Raise {
    /// `TimeoutError` or `KeyboardInterrupt`, as the reason says.
    Interrupt(InterruptReason),
    /// `MemoryError`: the interpreter went past its memory limit.
    MemoryError,
}

impl Raise {
    fn exception(self) -> *mut ffi::PyObject {
        // SAFETY: reading the addresses of CPython's static exception types.
        unsafe {
            match self {
                Raise::Interrupt(InterruptReason::Timeout) => ffi::PyExc_TimeoutError,
                Raise::Interrupt(InterruptReason::Cancelled) => ffi::PyExc_KeyboardInterrupt,
                Raise::MemoryError => ffi::PyExc_MemoryError,
            }
        }
    }
}

/// Schedules `reason` to be raised in the current thread at the next bytecode boundary.
pub(crate) fn raise_soon(_py: Python<'_>, reason: InterruptReason) {
    // SAFETY: the token proves the GIL is held; targets the calling thread.
    unsafe {
        ffi::PyThreadState_SetAsyncExc(
            ffi::PyThread_get_thread_ident() as c_long,
            Raise::Interrupt(reason).exception(),
        );
    }
}

/// Drops an asynchronous exception scheduled for the current thread and not raised yet.
pub(crate) fn clear_pending_async(_py: Python<'_>) {
    // SAFETY: the token proves the GIL is held; targets the calling thread.
    unsafe {
        ffi::PyThreadState_SetAsyncExc(
            ffi::PyThread_get_thread_ident() as c_long,
            std::ptr::null_mut(),
        );
    }
}

impl SubInterpreter {
    /// Creates a subinterpreter on the calling thread. On success the new interpreter's
    /// thread state is created but detached.
    pub(crate) fn new(_main: MainInterpreter, config: RawConfig) -> Result<SubInterpreter, String> {
        let raw = ffi::PyInterpreterConfig {
            use_main_obmalloc: c_int::from(config.use_main_obmalloc),
            allow_fork: c_int::from(config.allow_fork),
            allow_exec: c_int::from(config.allow_exec),
            allow_threads: c_int::from(config.allow_threads),
            allow_daemon_threads: c_int::from(config.allow_daemon_threads),
            check_multi_interp_extensions: c_int::from(config.check_multi_interp_extensions),
            gil: if config.own_gil {
                ffi::PyInterpreterConfig_OWN_GIL
            } else {
                ffi::PyInterpreterConfig_SHARED_GIL
            },
        };
        // No thread state is attached on this thread: CPython then copies the main
        // interpreter's config, and the creation never waits for the main interpreter's
        // GIL, which the program's own Python code may hold for a whole switch interval.
        let mut tstate: *mut ffi::PyThreadState = std::ptr::null_mut();
        // SAFETY: `_main` proves the runtime is initialised; no thread state is current on
        // this thread; `raw` is a valid config. On success the new thread state is current;
        // on failure none is.
        let status = unsafe { ffi::Py_NewInterpreterFromConfig(&mut tstate, &raw) };
        let failure = status_error(&status);
        match (failure, NonNull::new(tstate)) {
            (None, Some(tstate)) => {
                // SAFETY: the new thread state is current; detach it. The id is read first.
                let id = unsafe {
                    let id = ffi::PyInterpreterState_GetID(ffi::PyThreadState_GetInterpreter(
                        tstate.as_ptr(),
                    ));
                    ffi::PyEval_SaveThread();
                    id
                };
                super::lent::register(id);
                Ok(SubInterpreter {
                    tstate,
                    id,
                    // SAFETY: a plain query about the calling thread.
                    thread_id: unsafe { ffi::PyThread_get_thread_ident() },
                })
            }
            (failure, _) => Err(failure.unwrap_or_else(|| "no thread state returned".into())),
        }
    }

    /// CPython's id of this interpreter.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// The address of this interpreter's `PyInterpreterState`, as a key (never
    /// dereferenced by the caller).
    pub(crate) fn interp_address(&self) -> usize {
        // SAFETY: the thread state lives as long as `self`; the call only reads a field.
        unsafe { ffi::PyThreadState_GetInterpreter(self.tstate.as_ptr()) as usize }
    }

    /// What another thread needs to interrupt code running here.
    pub(crate) fn interrupt_target(&self) -> InterruptTarget {
        // SAFETY: the thread state is alive; reading its interpreter needs no GIL.
        let interp = unsafe { ffi::PyThreadState_GetInterpreter(self.tstate.as_ptr()) };
        InterruptTarget {
            interp: NonNull::new(interp).expect("a thread state has an interpreter"),
            thread_id: self.thread_id,
        }
    }

    /// Runs `f` with this interpreter's GIL held.
    pub(crate) fn with_gil<R>(&self, f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
        // SAFETY: this thread owns the detached thread state of this interpreter.
        unsafe { ffi::PyEval_RestoreThread(self.tstate.as_ptr()) };
        let _detach = Detach;
        // SAFETY: attached just above, detached when `_detach` drops (also on unwind).
        unsafe { Python::assume_attached(f) }
    }

    /// Ends the interpreter: waits for its Python threads, runs `atexit`, and frees it.
    ///
    /// From CPython 3.13 on, the thread state the interpreter's code ran on is cleared
    /// first, while its modules are still intact, and the interpreter is ended on a fresh
    /// one — as CPython's own `_interpreters` does, which runs code on temporary thread
    /// states. What the old state held (thread-local data, such as the record 3.13's
    /// `threading` keeps of a thread it did not start) is released then, not during
    /// finalisation, when module globals are already gone and releasing it fails noisily.
    /// CPython 3.12 keeps no such record, and its `threading._shutdown` expects the thread
    /// state that imported `threading` to be alive still: it ends on the old one.
    pub(crate) fn end(self) {
        // SAFETY: the thread state is alive; reading its interpreter needs no GIL.
        let interp = unsafe { ffi::PyThreadState_GetInterpreter(self.tstate.as_ptr()) };
        // SAFETY: reading an immutable integer CPython exports.
        let version = unsafe { ffi::Py_Version };
        let fresh = if version >= 0x030D_0000 {
            // SAFETY: `interp` is alive until ended below; the new thread state belongs
            // to this thread and is not attached yet.
            NonNull::new(unsafe { ffi::PyThreadState_New(interp) })
        } else {
            None
        };
        let last = match fresh {
            Some(fresh) => {
                // SAFETY: this thread owns the detached old thread state: attach it, clear
                // it (running any finalisers with the modules intact) and delete it,
                // which detaches it. The fresh one then becomes the only thread state of
                // this thread in the interpreter.
                unsafe {
                    ffi::PyEval_RestoreThread(self.tstate.as_ptr());
                    ffi::PyThreadState_Clear(self.tstate.as_ptr());
                    ffi::PyThreadState_DeleteCurrent();
                }
                fresh
            }
            // CPython 3.12, or no memory for a new thread state: end on the old one.
            None => self.tstate,
        };
        // SAFETY: this thread owns the thread state. Attach the interpreter's remaining
        // one (the token for the loans' hook is then true) and end it, which leaves no
        // current thread state, as before the interpreter was created.
        unsafe {
            ffi::PyEval_RestoreThread(last.as_ptr());
            Python::assume_attached(super::lent::interpreter_ending);
            ffi::Py_EndInterpreter(last.as_ptr());
        }
    }

    /// Leaves the interpreter alive, never to be used again by this thread: for an
    /// interpreter whose own Python threads are still running, which CPython cannot end
    /// (`Py_EndInterpreter` waits for them without limit). Its memory stays allocated
    /// until the process exits, and the runtime is no longer finalised
    /// ([`abandoned_interpreters`]).
    pub(crate) fn abandon(self) {
        // The interpreter's own thread state stays allocated and detached: its threads
        // may still use the interpreter.
        ABANDONED.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Interpreters left alive by [`SubInterpreter::abandon`].
static ABANDONED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many interpreters were abandoned with threads still running in them. While any
/// is, CPython must not be finalised: finalising would wait for those threads forever
/// or free what they still use.
pub(crate) fn abandoned_interpreters() -> usize {
    ABANDONED.load(std::sync::atomic::Ordering::Acquire)
}
