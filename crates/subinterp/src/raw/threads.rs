//! `sys._current_frames()` and `sys._current_exceptions()` limited to the threads of the
//! calling interpreter.
//!
//! CPython's own (`_PyThread_CurrentFrames` and `_PyThread_CurrentExceptions` in
//! `Python/pystate.c`, 3.12 and 3.13 alike) walk the thread states of *every*
//! interpreter of the process under the runtime's `HEAD_LOCK`, and make a frame object for
//! each thread that runs Python, whatever interpreter it runs in. A thread of another
//! interpreter with its own GIL is running meanwhile: the frame object is allocated by
//! the caller's allocator while that thread pushes and pops frames, is linked into that
//! thread's frame (`frame->frame_obj`), and is later freed by the other interpreter's
//! allocator. The process dies within milliseconds (`free(): invalid pointer`, double
//! free, SIGSEGV) when a sampler calls it while other interpreters run Python; Dask's
//! worker profiler calls it every 10 ms.
//!
//! [`install`] replaces the two `sys` functions of one interpreter by [`current_frames`]
//! and [`current_exceptions`], which walk only the thread states of the calling
//! interpreter, with its GIL held: every thread they report is one whose frames and
//! exceptions belong to the caller's interpreter and cannot change during the walk.
//! C code that calls `_PyThread_CurrentFrames` itself is not reached; only the `sys`
//! functions are replaced.
//!
//! # The thread identifier
//!
//! The keys are the `thread_id` field of each thread state, as CPython's functions give
//! them (`threading.get_ident()` of the thread). The C API has no accessor for it, so it
//! is read at its offset in `struct _ts` of the running minor version
//! (`Include/cpython/pystate.h` of 3.12 and 3.13, mirrored below). Every call first checks
//! the layout against the calling thread's own thread state: its interpreter field must
//! be the current interpreter, its `thread_id` field this thread's
//! `PyThread_get_thread_ident()`, and the handled exception read through its `exc_info`
//! field the one `PyErr_GetHandledException()` returns. On another version, or if the
//! check fails, the functions report the calling thread alone.

use std::ffi::{c_int, c_uint, c_ulong, c_void};
use std::mem::offset_of;
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

use pyo3_ffi as ffi;

use super::callback::{self, FastArgs, MethodDef, Outcome};
use super::{ExcKind, PyObj, Python};
use crate::error::Result;

/// `_PyErr_StackItem` (`Include/cpython/pystate.h`, the same in 3.12 and 3.13).
#[repr(C)]
struct ErrStackItem {
    exc_value: *mut ffi::PyObject,
    previous_item: *mut ErrStackItem,
}

/// The first fields of `struct _ts` in CPython 3.12, up to `thread_id`.
#[repr(C)]
#[allow(dead_code)] // Mirrors the C layout; only some fields are read.
struct ThreadState312 {
    prev: *mut c_void,
    next: *mut c_void,
    interp: *mut c_void,
    status: c_uint,
    py_recursion_remaining: c_int,
    py_recursion_limit: c_int,
    c_recursion_remaining: c_int,
    recursion_headroom: c_int,
    tracing: c_int,
    what_event: c_int,
    cframe: *mut c_void,
    c_profilefunc: *mut c_void,
    c_tracefunc: *mut c_void,
    c_profileobj: *mut c_void,
    c_traceobj: *mut c_void,
    current_exception: *mut c_void,
    exc_info: *mut ErrStackItem,
    dict: *mut c_void,
    gilstate_counter: c_int,
    async_exc: *mut c_void,
    thread_id: c_ulong,
}

/// The first fields of `struct _ts` in CPython 3.13, up to `thread_id`.
#[repr(C)]
#[allow(dead_code)] // Mirrors the C layout; only some fields are read.
struct ThreadState313 {
    prev: *mut c_void,
    next: *mut c_void,
    interp: *mut c_void,
    eval_breaker: usize,
    status: c_uint,
    whence: c_int,
    state: c_int,
    py_recursion_remaining: c_int,
    py_recursion_limit: c_int,
    c_recursion_remaining: c_int,
    recursion_headroom: c_int,
    tracing: c_int,
    what_event: c_int,
    current_frame: *mut c_void,
    c_profilefunc: *mut c_void,
    c_tracefunc: *mut c_void,
    c_profileobj: *mut c_void,
    c_traceobj: *mut c_void,
    current_exception: *mut c_void,
    exc_info: *mut ErrStackItem,
    dict: *mut c_void,
    gilstate_counter: c_int,
    async_exc: *mut c_void,
    thread_id: c_ulong,
}

/// Byte offsets of the fields read in a thread state.
#[derive(Clone, Copy)]
struct Layout {
    interp: usize,
    exc_info: usize,
    thread_id: usize,
}

/// The layout of the running minor version, if this file knows it.
fn layout() -> Option<Layout> {
    // SAFETY: reading an immutable integer CPython exports.
    let version = unsafe { ffi::Py_Version };
    match version >> 16 {
        0x030C => Some(Layout {
            interp: offset_of!(ThreadState312, interp),
            exc_info: offset_of!(ThreadState312, exc_info),
            thread_id: offset_of!(ThreadState312, thread_id),
        }),
        0x030D => Some(Layout {
            interp: offset_of!(ThreadState313, interp),
            exc_info: offset_of!(ThreadState313, exc_info),
            thread_id: offset_of!(ThreadState313, thread_id),
        }),
        _ => None,
    }
}

impl Layout {
    /// Reads the field at `offset` of the thread state `ts`.
    ///
    /// # Safety
    /// `ts` is a live thread state of the running CPython, whose layout `self` describes,
    /// and no other thread writes the field meanwhile.
    unsafe fn read<T: Copy>(ts: NonNull<ffi::PyThreadState>, offset: usize) -> T {
        // SAFETY: the field lies inside the live struct (the caller's contract), at an
        // offset computed from a `repr(C)` mirror of it, so it is aligned for `T`.
        unsafe { ts.as_ptr().cast::<u8>().add(offset).cast::<T>().read() }
    }

    /// The thread identifier of `ts`.
    ///
    /// # Safety
    /// As [`Layout::read`].
    unsafe fn thread_id(self, ts: NonNull<ffi::PyThreadState>) -> c_ulong {
        // SAFETY: the caller's contract.
        unsafe { Self::read(ts, self.thread_id) }
    }

    /// The exception `ts` is handling (what `sys.exception()` gives in its thread), as
    /// `_PyErr_GetTopmostException` finds it: borrowed, NULL for none.
    ///
    /// # Safety
    /// As [`Layout::read`]; besides, `ts` is not running (it is the caller's own, or its
    /// thread waits for the GIL the caller holds), so its exception stack, which lives in
    /// its C stack frames and generators, is stable and alive.
    unsafe fn handled(self, ts: NonNull<ffi::PyThreadState>) -> *mut ffi::PyObject {
        // SAFETY: the caller's contract; `exc_info` is never NULL in a thread state
        // (`init_threadstate` points it at the thread state's own `exc_state`), and each
        // `previous_item` is NULL or a live item below it.
        unsafe {
            let mut item: *mut ErrStackItem = Self::read(ts, self.exc_info);
            if item.is_null() {
                return ptr::null_mut();
            }
            let none = ffi::Py_None();
            while ((*item).exc_value.is_null() || (*item).exc_value == none)
                && !(*item).previous_item.is_null()
            {
                item = (*item).previous_item;
            }
            let exc = (*item).exc_value;
            if exc == none {
                ptr::null_mut()
            } else {
                exc
            }
        }
    }
}

/// The layout of the running version, if it describes the calling thread's own thread
/// state correctly.
fn checked_layout(_py: Python<'_>) -> Option<Layout> {
    let layout = layout()?;
    // SAFETY: the token proves this thread's thread state is attached, so it is alive, and
    // only this thread writes its fields while it runs. `layout` is the running version's
    // (and the check below is what confirms it before any other thread state is read).
    // `PyErr_GetHandledException` returns a new reference or NULL, released here.
    unsafe {
        let current = NonNull::new(ffi::PyThreadState_Get())?;
        let interp: *mut c_void = Layout::read(current, layout.interp);
        if interp != ffi::PyInterpreterState_Get().cast::<c_void>()
            || layout.thread_id(current) != ffi::PyThread_get_thread_ident()
        {
            return None;
        }
        let handled = ffi::PyErr_GetHandledException();
        let same = handled == layout.handled(current);
        ffi::Py_XDECREF(handled);
        same.then_some(layout)
    }
}

/// What a walk over the thread states collects.
#[derive(Clone, Copy)]
enum Want {
    Frames,
    Exceptions,
}

/// For each thread state of the calling interpreter: its thread identifier and its frame
/// (threads running no Python are left out) or handled exception (`None` for none).
fn walk<'py>(py: Python<'py>, want: Want) -> Vec<(c_ulong, PyObj<'py>)> {
    let mut found = Vec::new();
    let Some(layout) = checked_layout(py) else {
        // SAFETY: the token proves a thread state is attached; CPython's identifier of
        // this thread is a plain query.
        let me = unsafe { ffi::PyThread_get_thread_ident() };
        // SAFETY: as above: the current thread state exists.
        let current = unsafe { ffi::PyThreadState_Get() };
        if let Some(value) = own_value(py, NonNull::new(current), want, None) {
            found.push((me, value));
        }
        return found;
    };
    // SAFETY: the calling thread holds the GIL of the current interpreter from
    // the first read below to the last, and nothing called here runs Python code or
    // releases that GIL: `PyThreadState_GetFrame` only makes a frame object (an allocation;
    // since 3.12 a GC threshold crossed by an allocation only schedules a collection for
    // the eval loop, `_Py_ScheduleGC`), and the rest are plain reads. Every thread state of
    // the list belongs to this interpreter, so its frames and exceptions are this
    // interpreter's objects, made and freed by its allocator. What can change the list
    // meanwhile, CPython's `HEAD_LOCK` (which the C API does not expose) being not held:
    // - Deletion: CPython unlinks a thread state that runs in this interpreter while
    //   holding its GIL (`PyThreadState_DeleteCurrent` unlinks, then releases the GIL;
    //   `thread_run` of `_thread`, `PyGILState_Release`, and every thread state this crate
    //   makes, `InterruptTarget::interrupt` included, end so), so none goes while we hold
    //   it. Only `PyThreadState_Delete` of a detached thread state by another thread
    //   could, which CPython itself does only while ending the interpreter (with its GIL)
    //   and after `fork()`; C code of third parties that does it unsynchronised races
    //   CPython's own unlocked readers (`faulthandler`) the same way.
    // - Creation: `PyThreadState_New` needs no GIL; it links the new thread state at the
    //   head of the list under `HEAD_LOCK`, fully initialised (`init_threadstate` then
    //   `add_threadstate`), and binds it to its thread (`thread_id`) just after. The walk
    //   may or may not see it; if it does, the new state has no frame (it never ran) and
    //   its `thread_id` is its creator's or 0. This crate's interrupter creates such thread
    //   states in other interpreters at any time; only the head pointer and the newest
    //   state's fields are written concurrently, each a single aligned word.
    // - A thread state that ran Python was attached with this GIL; its fields and frames
    //   were last written before it released the GIL we now hold, so they are visible and
    //   stable, and its exception stack and frames live on its suspended C stack.
    unsafe {
        let interp = ffi::PyInterpreterState_Get();
        let mut next = NonNull::new(ffi::PyInterpreterState_ThreadHead(interp));
        while let Some(ts) = next {
            let id = layout.thread_id(ts);
            if let Some(value) = own_value(py, Some(ts), want, Some(layout)) {
                found.push((id, value));
            }
            next = NonNull::new(ffi::PyThreadState_Next(ts.as_ptr()));
        }
    }
    found
}

/// The frame or handled exception of the thread state `ts` of the current interpreter.
/// Without a layout, `ts` must be the caller's own thread state.
fn own_value<'py>(
    py: Python<'py>,
    ts: Option<NonNull<ffi::PyThreadState>>,
    want: Want,
    layout: Option<Layout>,
) -> Option<PyObj<'py>> {
    let ts = ts?;
    match want {
        Want::Frames => {
            // SAFETY: `ts` is a thread state of the current interpreter that is not
            // running (see `walk`); the GIL is held. A new reference or NULL (no frame, or
            // no memory, the error then cleared by CPython).
            let frame = unsafe { ffi::PyThreadState_GetFrame(ts.as_ptr()) };
            // SAFETY: a new reference to a frame of this interpreter, or NULL.
            NonNull::new(frame.cast::<ffi::PyObject>()).map(|f| unsafe { py.adopt(f) })
        }
        Want::Exceptions => {
            let exc = match layout {
                // SAFETY: see `walk`: a thread state of this interpreter, not running.
                Some(layout) => unsafe { layout.handled(ts) },
                None => {
                    // SAFETY: GIL held; the calling thread's handled exception, a new
                    // reference (passed to the result) or NULL for none.
                    let handled = NonNull::new(unsafe { ffi::PyErr_GetHandledException() });
                    return Some(match handled {
                        // SAFETY: a new reference to an exception of this interpreter.
                        Some(exc) => unsafe { py.adopt(exc) },
                        None => py.none(),
                    });
                }
            };
            if exc.is_null() {
                Some(py.none())
            } else {
                // SAFETY: a live exception held by the thread's exception stack (stable,
                // see `walk`), of this interpreter.
                unsafe { py.borrowed(exc) }.ok()
            }
        }
    }
}

/// A dict from thread identifiers to the values `walk` found, in its order (a later
/// thread state of the same thread wins, as in CPython).
fn to_dict<'py>(py: Python<'py>, found: Vec<(c_ulong, PyObj<'py>)>) -> Result<PyObj<'py>> {
    let dict = py.dict()?;
    for (id, value) in found {
        // SAFETY: GIL held; a new reference or NULL with an exception.
        let key = unsafe { py.own(ffi::PyLong_FromUnsignedLong(id)) }?;
        dict.set_item(&key, &value)?;
    }
    Ok(dict)
}

/// `sys._current_frames()` for the calling interpreter: `{thread id: topmost frame}` for
/// each of its threads that runs Python code, the calling thread included.
pub(crate) fn current_frames<'py>(py: Python<'py>) -> Result<PyObj<'py>> {
    audit(py, "sys._current_frames")?;
    let found = walk(py, Want::Frames);
    to_dict(py, found)
}

/// `sys._current_exceptions()` for the calling interpreter: `{thread id: exception being
/// handled, or None}` for each of its thread states.
pub(crate) fn current_exceptions<'py>(py: Python<'py>) -> Result<PyObj<'py>> {
    audit(py, "sys._current_exceptions")?;
    let found = walk(py, Want::Exceptions);
    to_dict(py, found)
}

/// How many thread states of the calling interpreter there are besides the caller's: its
/// other threads, those started with `_thread` that have not begun to run included
/// (their thread state is made before the OS thread starts, and no Python module counts
/// them yet), and states other threads hold briefly (an interrupter's).
pub(crate) fn other_thread_states(_py: Python<'_>) -> usize {
    let mut count = 0;
    // SAFETY: as in `walk`: the calling thread holds this interpreter's GIL throughout,
    // nothing here runs Python code or releases it, and only the list's links are read
    // (no field of another thread state), which stay valid while the GIL is held.
    unsafe {
        let current = ffi::PyThreadState_Get();
        let interp = ffi::PyInterpreterState_Get();
        let mut next = ffi::PyInterpreterState_ThreadHead(interp);
        while !next.is_null() {
            if next != current {
                count += 1;
            }
            next = ffi::PyThreadState_Next(next);
        }
    }
    count
}

/// Whether the threads of the calling interpreter other than the caller are reported
/// (the thread-state layout of the running version is known and checked).
pub(crate) fn reports_all_threads(py: Python<'_>) -> bool {
    checked_layout(py).is_some()
}

/// Raises the audit event CPython's functions raise (`PySys_Audit`; `sys.audit` runs the
/// same hooks).
fn audit(py: Python<'_>, event: &str) -> Result<()> {
    let audit = py.import("sys")?.getattr("audit")?;
    audit.call(&[&py.str(event)?])?;
    Ok(())
}

fn no_arguments(py: Python<'_>, name: &str, args: &FastArgs<'_, '_>) -> Result<()> {
    let given = args.positional_len() + args.keyword_len();
    if given == 0 {
        return Ok(());
    }
    Err(py.new_error(
        ExcKind::Type,
        &format!("{name}() takes no arguments ({given} given)"),
    ))
}

fn frames_body<'py>(
    py: Python<'py>,
    _sys: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    no_arguments(py, "_current_frames", args)?;
    Ok(current_frames(py)?)
}

fn exceptions_body<'py>(
    py: Python<'py>,
    _sys: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    no_arguments(py, "_current_exceptions", args)?;
    Ok(current_exceptions(py)?)
}

/// The two method definitions, made once for the process; CPython keeps pointers to them.
fn definitions() -> &'static [(&'static str, MethodDef); 2] {
    static DEFS: OnceLock<[(&'static str, MethodDef); 2]> = OnceLock::new();
    DEFS.get_or_init(|| {
        [
            (
                "_current_frames",
                callback::method_def(
                    c"_current_frames",
                    c"_current_frames()\n--\n\nReturn a dict mapping each thread's identifier \
                      to the topmost stack frame currently active in that thread, for the \
                      threads of this interpreter (subinterp: CPython's own also walks the \
                      threads of other interpreters, which crashes while they run).",
                    frames_body,
                ),
            ),
            (
                "_current_exceptions",
                callback::method_def(
                    c"_current_exceptions",
                    c"_current_exceptions()\n--\n\nReturn a dict mapping each thread's \
                      identifier to the exception it is currently handling (or None), for \
                      the threads of this interpreter (subinterp: CPython's own also walks \
                      the threads of other interpreters).",
                    exceptions_body,
                ),
            ),
        ]
    })
}

/// Replaces `sys._current_frames` and `sys._current_exceptions` of the calling
/// interpreter by [`current_frames`] and [`current_exceptions`]. Returns false, leaving
/// CPython's, in a free-threaded build running without the GIL, where CPython stops every
/// thread while it reads their frames and the functions have no other interpreter's
/// thread to trip on.
pub(crate) fn install(py: Python<'_>) -> Result<bool> {
    let sys = py.import("sys")?;
    // SAFETY: reading an immutable integer CPython exports.
    let version = unsafe { ffi::Py_Version };
    // `sys._is_gil_enabled` exists from 3.13 on; 3.12 has no free-threaded build.
    if version >= 0x030D_0000 && !sys.call_method("_is_gil_enabled", &[])?.is_true()? {
        return Ok(false);
    }
    let module = py.str("sys")?;
    for (name, def) in definitions() {
        // SAFETY: GIL held; the definition is static and only read by CPython; `sys` and
        // `module` are live objects, referenced by the new function. A new reference or
        // NULL with an exception.
        let function = unsafe {
            py.own(ffi::PyCFunction_NewEx(
                ptr::from_ref(&def.0).cast_mut(),
                sys.as_ptr(),
                module.as_ptr(),
            ))
        }?;
        sys.setattr(name, &function)?;
    }
    Ok(true)
}
