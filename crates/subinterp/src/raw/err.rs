//! Live exceptions: raising an [`Error`] in Python, faithfully.
//!
//! Inside a callback from Python into Rust ([`super::callback`]), an exception that Rust
//! code fetched (a failed call, a failed conversion) is kept alive in a *frame* of the
//! callback, next to the snapshot made of it. When the same snapshot comes back as the
//! callback's error, the very exception object is raised again: its type, traceback,
//! cause, context and attributes are the ones Python code raised. Errors that never were
//! a live exception of this interpreter (say, an exception of another interpreter
//! returned through the public API) are rebuilt: the class named by the snapshot when it
//! is loaded in this interpreter, `RuntimeError` otherwise, with the message and the
//! cause chain. Raising never prints anything.

use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use pyo3_ffi as ffi;

use super::{PyObj, Python};
use crate::error::{Error, ExceptionClass, PyException};

/// A fetched exception kept by a frame, with the snapshot made of it and the interpreter
/// it belongs to.
struct Live {
    exc: NonNull<ffi::PyObject>,
    interp: *mut ffi::PyInterpreterState,
    snapshot: PyException,
}

thread_local! {
    /// How many callbacks are in progress on this thread.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// The exceptions kept by frames, each with the depth of its frame, innermost last;
    /// at most one per frame. Most frames keep none, so opening and closing one only
    /// counts.
    static KEPT: RefCell<Vec<(usize, Live)>> = const { RefCell::new(Vec::new()) };
    /// The depth of the innermost frame that keeps an exception; 0 for none.
    static KEPT_TOP: Cell<usize> = const { Cell::new(0) };
}

/// A callback in progress: fetched exceptions are kept until it ends.
pub(crate) struct Frame<'py> {
    py: Python<'py>,
    depth: usize,
}

impl<'py> Frame<'py> {
    /// Opens a frame for the callback running under `py`.
    pub(crate) fn enter(py: Python<'py>) -> Frame<'py> {
        let depth = DEPTH.with(|d| {
            let depth = d.get() + 1;
            d.set(depth);
            depth
        });
        Frame { py, depth }
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(self.depth - 1));
        if KEPT_TOP.with(Cell::get) == self.depth {
            if let Some(live) = pop_kept() {
                release(self.py, live);
            }
        }
    }
}

/// Removes the innermost kept exception.
fn pop_kept() -> Option<Live> {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let live = kept.pop().map(|(_, live)| live);
        KEPT_TOP.with(|top| top.set(kept.last().map_or(0, |(depth, _)| *depth)));
        live
    })
}

fn current_interp(_py: Python<'_>) -> *mut ffi::PyInterpreterState {
    // SAFETY: the token proves a thread state is attached.
    unsafe { ffi::PyInterpreterState_Get() }
}

/// Drops a kept exception. One of another interpreter than the current one (which the
/// thread cannot reach safely) is leaked rather than released under the wrong GIL.
fn release(py: Python<'_>, live: Live) {
    if live.interp == current_interp(py) {
        // SAFETY: the token proves the GIL of the interpreter that owns `exc` is held; we
        // own one reference.
        unsafe { ffi::Py_DecRef(live.exc.as_ptr()) };
    }
}

/// Keeps `exc`, just fetched and snapshotted, in the innermost frame of this thread (if
/// one is open in this interpreter), replacing the one kept before.
pub(crate) fn remember(exc: &PyObj<'_>, snapshot: &PyException) {
    let depth = DEPTH.with(Cell::get);
    if depth == 0 {
        return;
    }
    let py = exc.py();
    // SAFETY: GIL held; the frame takes a strong reference of its own.
    unsafe { ffi::Py_IncRef(exc.as_ptr()) };
    let live = Live {
        exc: NonNull::new(exc.as_ptr()).expect("a live object is never NULL"),
        interp: current_interp(py),
        snapshot: snapshot.clone(),
    };
    let replaced = KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        match kept.last_mut() {
            Some((d, top)) if *d == depth => Some(std::mem::replace(top, live)),
            _ => {
                kept.push((depth, live));
                KEPT_TOP.with(|top| top.set(depth));
                None
            }
        }
    });
    if let Some(old) = replaced {
        release(py, old);
    }
}

/// The exception the innermost frame kept, if its snapshot is `snapshot`.
fn take_live<'py>(py: Python<'py>, snapshot: &PyException) -> Option<PyObj<'py>> {
    let depth = DEPTH.with(Cell::get);
    if depth == 0 || KEPT_TOP.with(Cell::get) != depth {
        return None;
    }
    let interp = current_interp(py);
    let matches = KEPT.with(|kept| {
        kept.borrow()
            .last()
            .is_some_and(|(_, live)| live.interp == interp && live.snapshot == *snapshot)
    });
    if !matches {
        return None;
    }
    let live = pop_kept()?;
    // SAFETY: the kept exception belongs to this interpreter (checked above) and the
    // frame held a strong reference, which passes to the returned object.
    Some(unsafe { py.adopt(live.exc) })
}

/// Raises `err` as a Python exception in the interpreter of `py`.
pub(crate) fn raise(py: Python<'_>, err: Error) {
    let exc = match &err {
        Error::Python(snapshot)
        | Error::Timeout {
            exception: Some(snapshot),
            ..
        } => match take_live(py, snapshot) {
            Some(live) => Some(live),
            None => rebuild(py, snapshot, 0),
        },
        other => plain(py, other),
    };
    match exc {
        Some(exc) => set_raised(exc),
        None => {
            // Building the exception failed (no memory): raise what that failure left, or
            // a MemoryError.
            // SAFETY: GIL held (the token); static type and message.
            unsafe {
                if ffi::PyErr_Occurred().is_null() {
                    ffi::PyErr_SetString(
                        ffi::PyExc_MemoryError,
                        c"could not build the exception to raise".as_ptr(),
                    );
                }
            }
        }
    }
}

/// Raises `SystemError(message)`, for failures of the bridge itself (a panic).
pub(crate) fn raise_system_error(_py: Python<'_>, message: &str) {
    let text = super::object::cstring(message);
    // SAFETY: GIL held (the token); a static type and a NUL-terminated message.
    unsafe { ffi::PyErr_SetString(ffi::PyExc_SystemError, text.as_ptr()) };
}

/// True if an exception is set in this thread.
pub(crate) fn occurred(_py: Python<'_>) -> bool {
    // SAFETY: GIL held (the token).
    !unsafe { ffi::PyErr_Occurred() }.is_null()
}

/// Raises the exception instance `exc`.
pub(crate) fn raise_instance(exc: PyObj<'_>) {
    set_raised(exc);
}

fn set_raised(exc: PyObj<'_>) {
    let ptr = exc.as_ptr();
    std::mem::forget(exc);
    // SAFETY: GIL held (the object carries the token); `ptr` is an exception instance and
    // the call steals the reference handed over by `forget`.
    unsafe { ffi::PyErr_SetRaisedException(ptr) };
}

/// The exception for an error that is not a Python exception, of the class the error
/// names ([`Error::python_class`]).
fn plain<'py>(py: Python<'py>, err: &Error) -> Option<PyObj<'py>> {
    let (class, message) = err.python_class();
    let class = match class {
        ExceptionClass::Builtin(name) => builtin_class(py, name),
        ExceptionClass::Subinterp(name) => subinterp_class(py, name),
    };
    let class = class.or_else(|| builtin_class(py, "RuntimeError"))?;
    instantiate(py, &class, &message)
}

/// Rebuilds an exception from its snapshot: its class if this interpreter has it loaded
/// and it takes a message, else `RuntimeError("type: message")`; the cause likewise.
fn rebuild<'py>(py: Python<'py>, snapshot: &PyException, depth: usize) -> Option<PyObj<'py>> {
    let exc = find_class(py, &snapshot.type_name)
        .and_then(|class| instantiate(py, &class, &snapshot.message))
        .or_else(|| {
            let class = builtin_class(py, "RuntimeError")?;
            instantiate(py, &class, &snapshot.to_string())
        })?;
    if let Some(cause) = snapshot.cause.as_deref().filter(|_| depth < 16) {
        if let Some(cause) = rebuild(py, cause, depth + 1) {
            if exc.setattr("__cause__", &cause).is_err() {
                clear(py);
            }
        }
    }
    Some(exc)
}

/// `class(message)`, if that makes an exception instance; `None` (nothing raised) if not.
fn instantiate<'py>(py: Python<'py>, class: &PyObj<'py>, message: &str) -> Option<PyObj<'py>> {
    let made = py.str(message).and_then(|m| class.call(&[&m]));
    match made {
        // SAFETY: GIL held; a type check of a live object.
        Ok(exc) if unsafe { ffi::PyExceptionInstance_Check(exc.as_ptr()) } != 0 => Some(exc),
        Ok(_) => None,
        Err(_) => {
            clear(py);
            None
        }
    }
}

fn clear(_py: Python<'_>) {
    // SAFETY: GIL held (the token).
    unsafe { ffi::PyErr_Clear() };
}

fn is_exception_class(obj: &PyObj<'_>) -> bool {
    // SAFETY: GIL held (the object carries the token); a type check of a live object.
    unsafe { ffi::PyExceptionClass_Check(obj.as_ptr()) != 0 }
}

/// A built-in exception class by name (`"KeyError"`).
fn builtin_class<'py>(py: Python<'py>, name: &str) -> Option<PyObj<'py>> {
    let class = py.builtins().and_then(|b| b.getattr(name));
    match class {
        Ok(class) if is_exception_class(&class) => Some(class),
        Ok(_) => None,
        Err(_) => {
            clear(py);
            None
        }
    }
}

/// An exception class of this interpreter's `subinterp` module.
fn subinterp_class<'py>(py: Python<'py>, name: &str) -> Option<PyObj<'py>> {
    let class = py.import("subinterp").and_then(|m| m.getattr(name));
    match class {
        Ok(class) if is_exception_class(&class) => Some(class),
        Ok(_) => None,
        Err(_) => {
            clear(py);
            None
        }
    }
}

/// The exception class with qualified name `module.QualName`, if its module is loaded
/// in this interpreter. Nothing is imported.
fn find_class<'py>(py: Python<'py>, type_name: &str) -> Option<PyObj<'py>> {
    if let Some(short) = type_name.strip_prefix("builtins.") {
        return builtin_class(py, short);
    }
    let mut split = type_name.len();
    while let Some(dot) = type_name[..split].rfind('.') {
        split = dot;
        let (module, path) = (&type_name[..dot], &type_name[dot + 1..]);
        let Ok(Some(mut obj)) = py.loaded_module(module) else {
            clear(py);
            continue;
        };
        for part in path.split('.') {
            match obj.getattr(part) {
                Ok(next) => obj = next,
                Err(_) => {
                    clear(py);
                    return None;
                }
            }
        }
        return is_exception_class(&obj).then_some(obj);
    }
    None
}
