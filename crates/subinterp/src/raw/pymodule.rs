//! The built-in `subinterp` Python module, importable in every interpreter of the process.
//!
//! It is a multi-phase-init module (PEP 489) with per-module state, declaring support for
//! a per-interpreter GIL: every interpreter that imports it gets its own module object,
//! its own `Channel` and `Buffer` types and its own exception classes; only the Rust
//! channels and buffers behind them are shared, and those are thread-safe.

use std::ffi::{c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3_ffi as ffi;

use super::object::{len, ExcKind};
use super::{PyObj, Python};
use crate::buffer::SharedBuffer;
use crate::channel::{Channel, Message, Stop};
use crate::error::{Error, Result};
use crate::wait::{self, InterruptReason};
use crate::Value;

/// Per-interpreter state of the module: strong references to its types and exceptions.
#[repr(C)]
struct ModuleState {
    channel_type: *mut ffi::PyObject,
    buffer_type: *mut ffi::PyObject,
    closed_error: *mut ffi::PyObject,
    empty_error: *mut ffi::PyObject,
    full_error: *mut ffi::PyObject,
    receive_error: *mut ffi::PyObject,
}

#[repr(C)]
struct ChannelObject {
    ob_base: ffi::PyObject,
    channel: *mut Channel,
}

#[repr(C)]
struct BufferObject {
    ob_base: ffi::PyObject,
    buffer: *mut SharedBuffer,
    /// Whether views made from this handle are writable (always for the creator's handle).
    writable: bool,
}

struct Defs {
    module: *mut ffi::PyModuleDef,
    channel_spec: *mut ffi::PyType_Spec,
    buffer_spec: *mut ffi::PyType_Spec,
}

// SAFETY: the definitions are leaked, never mutated after creation, and only read by
// CPython (which serialises module creation per interpreter).
unsafe impl Send for Defs {}
// SAFETY: see `Send`.
unsafe impl Sync for Defs {}

static DEFS: OnceLock<Defs> = OnceLock::new();

fn leak<T>(items: Vec<T>) -> *mut T {
    Box::leak(items.into_boxed_slice()).as_mut_ptr()
}

fn method(
    name: &'static CStr,
    meth: ffi::PyCFunctionWithKeywords,
    doc: &'static CStr,
) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionWithKeywords: meth,
        },
        ml_flags: ffi::METH_VARARGS | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    }
}

fn slot(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

fn defs() -> &'static Defs {
    DEFS.get_or_init(|| {
        let module_methods = leak(vec![
            method(c"id", module_id, c"id()\n--\n\nThis interpreter's id."),
            method(
                c"channel",
                module_channel,
                c"channel(name, capacity=None)\n--\n\nThe channel called name, shared by every \
                  interpreter and the host; created on first use, unbounded unless capacity is \
                  given.",
            ),
            method(
                c"buffer",
                module_buffer,
                c"buffer(size_or_bytes, writable=False)\n--\n\nA buffer of shared memory: send it \
                  through a channel and receivers get a memoryview over the same bytes, read-only \
                  unless writable=True. This handle's own views are always writable.",
            ),
            method(
                c"_prepare_in_main",
                module_prepare_in_main,
                c"_prepare_in_main(name, path)\n--\n\nImports the module name in the main \
                  interpreter (with the str entries of path appended to its sys.path) unless \
                  that was done before; called by the module loaders of subinterpreters \
                  on CPython versions where loading an extension module there first crashes \
                  the process later. Never raises for the import itself.",
            ),
            ffi::PyMethodDef::zeroed(),
        ]);
        let module_slots = leak(vec![
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_exec,
                value: module_exec as *mut c_void,
            },
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_multiple_interpreters,
                value: ffi::Py_MOD_PER_INTERPRETER_GIL_SUPPORTED,
            },
            #[cfg(Py_3_13)]
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_gil,
                value: ffi::Py_MOD_GIL_NOT_USED,
            },
            ffi::PyModuleDef_Slot {
                slot: 0,
                value: ptr::null_mut(),
            },
        ]);
        let module = Box::leak(Box::new(ffi::PyModuleDef {
            m_base: ffi::PyModuleDef_HEAD_INIT,
            m_name: c"subinterp".as_ptr(),
            m_doc: c"Channels and shared buffers between the interpreters of this process."
                .as_ptr(),
            m_size: len(std::mem::size_of::<ModuleState>()),
            m_methods: module_methods,
            m_slots: module_slots,
            m_traverse: Some(module_traverse),
            m_clear: Some(module_clear),
            m_free: Some(module_free),
        }));

        let channel_methods = leak(vec![
            method(
                c"send",
                channel_send,
                c"send(obj, timeout=None)\n--\n\nSend obj; wait while the channel is full.",
            ),
            method(
                c"try_send",
                channel_try_send,
                c"try_send(obj)\n--\n\nSend obj without waiting; ChannelFull if full.",
            ),
            method(
                c"recv",
                channel_recv,
                c"recv(timeout=None)\n--\n\nReceive the next message, waiting for one.",
            ),
            method(
                c"try_recv",
                channel_try_recv,
                c"try_recv()\n--\n\nReceive without waiting; ChannelEmpty if empty.",
            ),
            method(
                c"close",
                channel_close,
                c"close()\n--\n\nClose the channel for every interpreter.",
            ),
            ffi::PyMethodDef::zeroed(),
        ]);
        let channel_getset = leak(vec![
            getset(c"name", channel_name, c"The channel's name."),
            getset(c"capacity", channel_capacity, c"The capacity, or None."),
            getset(c"closed", channel_closed, c"True once closed."),
            ffi::PyGetSetDef {
                name: ptr::null(),
                get: None,
                set: None,
                doc: ptr::null(),
                closure: ptr::null_mut(),
            },
        ]);
        let channel_slots = leak(vec![
            slot(ffi::Py_tp_dealloc, channel_dealloc as *mut c_void),
            slot(ffi::Py_tp_methods, channel_methods.cast()),
            slot(ffi::Py_tp_getset, channel_getset.cast()),
            slot(ffi::Py_tp_repr, channel_repr as *mut c_void),
            slot(ffi::Py_tp_iter, channel_iter as *mut c_void),
            slot(ffi::Py_tp_iternext, channel_iternext as *mut c_void),
            slot(ffi::Py_mp_length, channel_len as *mut c_void),
            slot(
                ffi::Py_tp_doc,
                c"A channel shared by every interpreter; get one with subinterp.channel(name)."
                    .as_ptr() as *mut c_void,
            ),
            slot(0, ptr::null_mut()),
        ]);
        let channel_spec = Box::leak(Box::new(ffi::PyType_Spec {
            name: c"subinterp.Channel".as_ptr(),
            basicsize: std::mem::size_of::<ChannelObject>() as c_int,
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as _,
            slots: channel_slots,
        }));

        let buffer_getset = leak(vec![
            getset(
                c"writable",
                buffer_writable,
                c"Whether views of this handle are writable.",
            ),
            ffi::PyGetSetDef {
                name: ptr::null(),
                get: None,
                set: None,
                doc: ptr::null(),
                closure: ptr::null_mut(),
            },
        ]);
        let buffer_slots = leak(vec![
            slot(ffi::Py_tp_dealloc, buffer_dealloc as *mut c_void),
            slot(ffi::Py_bf_getbuffer, buffer_getbuffer as *mut c_void),
            slot(ffi::Py_mp_length, buffer_len as *mut c_void),
            slot(ffi::Py_tp_getset, buffer_getset.cast()),
            slot(
                ffi::Py_tp_doc,
                c"Shared memory; memoryview(buf) gives a view of it.".as_ptr() as *mut c_void,
            ),
            slot(0, ptr::null_mut()),
        ]);
        let buffer_spec = Box::leak(Box::new(ffi::PyType_Spec {
            name: c"subinterp.Buffer".as_ptr(),
            basicsize: std::mem::size_of::<BufferObject>() as c_int,
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as _,
            slots: buffer_slots,
        }));
        Defs {
            module,
            channel_spec,
            buffer_spec,
        }
    })
}

fn getset(name: &'static CStr, get: ffi::getter, doc: &'static CStr) -> ffi::PyGetSetDef {
    ffi::PyGetSetDef {
        name: name.as_ptr(),
        get: Some(get),
        set: None,
        doc: doc.as_ptr(),
        closure: ptr::null_mut(),
    }
}

/// Makes `subinterp` a built-in module of every interpreter. Must run before CPython is
/// initialised.
pub(crate) fn register_builtin() -> std::result::Result<(), String> {
    defs();
    // SAFETY: called once, before Py_Initialize, with a static name and init function.
    let status = unsafe { ffi::PyImport_AppendInittab(c"subinterp".as_ptr(), Some(module_init)) };
    if status == 0 {
        Ok(())
    } else {
        Err("could not register the subinterp module".into())
    }
}

extern "C" fn module_init() -> *mut ffi::PyObject {
    // SAFETY: the definition is static and complete; PyModuleDef_Init only initialises
    // its object header. Cannot panic: `defs()` was initialised before registration.
    unsafe { ffi::PyModuleDef_Init(defs().module) }
}

/// Runs a callback body with the GIL token, turning errors into Python exceptions and
/// panics into `SystemError`, so neither crosses into CPython.
fn trampoline<F>(state: *mut ModuleState, f: F) -> *mut ffi::PyObject
where
    F: for<'py> FnOnce(Python<'py>) -> Result<PyObj<'py>>,
{
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: CPython calls module functions and methods with the GIL held.
        unsafe {
            Python::assume_attached(|py| match f(py) {
                Ok(obj) => {
                    let ptr = obj.as_ptr();
                    std::mem::forget(obj);
                    ptr
                }
                Err(err) => {
                    // An exception raised on purpose (and not fetched) is kept as it is.
                    if ffi::PyErr_Occurred().is_null() {
                        raise(py, state, err);
                    }
                    ptr::null_mut()
                }
            })
        }
    }));
    outcome.unwrap_or_else(|_| {
        // SAFETY: GIL held (we are inside a CPython callback); static message.
        unsafe {
            ffi::PyErr_SetString(
                ffi::PyExc_SystemError,
                c"a Rust panic was caught in the subinterp module".as_ptr(),
            )
        };
        ptr::null_mut()
    })
}

/// Raises `err` as a Python exception in the current interpreter.
fn raise(py: Python<'_>, state: *mut ModuleState, err: Error) {
    let message = match &err {
        Error::Python(exc) => exc.message.clone(),
        // The exception's type says it is about conversion; the prefix would repeat it.
        Error::Conversion(message) => message.clone(),
        other => other.to_string(),
    };
    // SAFETY: `state` is NULL or the live state of this interpreter's module.
    let state = unsafe { state.as_ref() };
    let module_exc = |pick: fn(&ModuleState) -> *mut ffi::PyObject| -> *mut ffi::PyObject {
        state.map_or(ptr::null_mut(), pick)
    };
    // SAFETY: reading CPython's static exception types.
    let exc_type = unsafe {
        match &err {
            Error::ChannelClosed => module_exc(|s| s.closed_error),
            Error::ChannelEmpty => module_exc(|s| s.empty_error),
            Error::ChannelFull => module_exc(|s| s.full_error),
            Error::Timeout | Error::Interrupted(InterruptReason::Timeout) => {
                ffi::PyExc_TimeoutError
            }
            Error::Interrupted(InterruptReason::Cancelled) => ffi::PyExc_KeyboardInterrupt,
            Error::Unshareable { .. } => ffi::PyExc_TypeError,
            Error::Conversion(_) | Error::InvalidArgument(_) => ffi::PyExc_ValueError,
            Error::OutOfMemory(_) => ffi::PyExc_MemoryError,
            Error::Python(exc) => builtin_exception(py, &exc.type_name),
            _ => ffi::PyExc_RuntimeError,
        }
    };
    let exc_type = if exc_type.is_null() {
        // SAFETY: reading a static exception type.
        unsafe { ffi::PyExc_RuntimeError }
    } else {
        exc_type
    };
    let text = super::object::cstring(&message);
    // SAFETY: GIL held; `exc_type` is an exception class; `text` is NUL-terminated.
    unsafe { ffi::PyErr_SetString(exc_type, text.as_ptr()) };
}

/// The built-in exception class named `builtins.X`, or `RuntimeError` for anything else.
fn builtin_exception(py: Python<'_>, type_name: &str) -> *mut ffi::PyObject {
    let fallback = || {
        // SAFETY: reading a static exception type.
        unsafe { ffi::PyExc_RuntimeError }
    };
    let Some(short) = type_name.strip_prefix("builtins.") else {
        return fallback();
    };
    match py.builtins().and_then(|b| b.getattr(short)) {
        // SAFETY: GIL held; checks whether a live object is an exception class. Built-in
        // exception classes are immortal statics, so the borrowed pointer stays valid.
        Ok(cls) if unsafe { ffi::PyExceptionClass_Check(cls.as_ptr()) } != 0 => cls.as_ptr(),
        _ => {
            // SAFETY: GIL held.
            unsafe { ffi::PyErr_Clear() };
            fallback()
        }
    }
}

/// The module state of the module that defined `obj`'s type.
fn state_of_type(obj: *mut ffi::PyObject) -> *mut ModuleState {
    // SAFETY: `obj` is an instance of one of our heap types, made by PyType_FromModuleAndSpec.
    unsafe { ffi::PyType_GetModuleState(ffi::Py_TYPE(obj)).cast() }
}

fn state_of_module(module: *mut ffi::PyObject) -> *mut ModuleState {
    // SAFETY: `module` is our module object.
    unsafe { ffi::PyModule_GetState(module).cast() }
}

// ---------------------------------------------------------------- module lifecycle

unsafe extern "C" fn module_exec(module: *mut ffi::PyObject) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let state = state_of_module(module);
        let defs = defs();
        // SAFETY: GIL held during module execution; `state` is this module's zeroed state;
        // every object created is stored with its own strong reference and also added to the
        // module (PyModule_AddObjectRef does not steal).
        unsafe {
            let channel_type =
                ffi::PyType_FromModuleAndSpec(module, defs.channel_spec, ptr::null_mut());
            if channel_type.is_null() {
                return -1;
            }
            (*state).channel_type = channel_type;
            let buffer_type =
                ffi::PyType_FromModuleAndSpec(module, defs.buffer_spec, ptr::null_mut());
            if buffer_type.is_null() {
                return -1;
            }
            (*state).buffer_type = buffer_type;
            for (name, obj) in [(c"Channel", channel_type), (c"Buffer", buffer_type)] {
                if ffi::PyModule_AddObjectRef(module, name.as_ptr(), obj) < 0 {
                    return -1;
                }
            }
            let exceptions: [(&CStr, &CStr, &CStr, *mut *mut ffi::PyObject); 4] = [
                (
                    c"ChannelClosed",
                    c"subinterp.ChannelClosed",
                    c"The channel is closed (and, for receives, drained).",
                    ptr::addr_of_mut!((*state).closed_error),
                ),
                (
                    c"ChannelEmpty",
                    c"subinterp.ChannelEmpty",
                    c"try_recv() found no message.",
                    ptr::addr_of_mut!((*state).empty_error),
                ),
                (
                    c"ChannelFull",
                    c"subinterp.ChannelFull",
                    c"try_send() found the channel full.",
                    ptr::addr_of_mut!((*state).full_error),
                ),
                (
                    c"ReceiveError",
                    c"subinterp.ReceiveError",
                    c"A message could not be rebuilt in this interpreter (e.g. its class is not \
                      importable here). The pickled bytes are in .pickled, the sender's type \
                      name in .type_name: the message is not lost.",
                    ptr::addr_of_mut!((*state).receive_error),
                ),
            ];
            for (short, full, doc, slot) in exceptions {
                let exc = ffi::PyErr_NewExceptionWithDoc(
                    full.as_ptr(),
                    doc.as_ptr(),
                    ptr::null_mut(),
                    ptr::null_mut(),
                );
                if exc.is_null() {
                    return -1;
                }
                *slot = exc;
                if ffi::PyModule_AddObjectRef(module, short.as_ptr(), exc) < 0 {
                    return -1;
                }
            }
            0
        }
    }));
    result.unwrap_or(-1)
}

fn state_fields(state: &mut ModuleState) -> [&mut *mut ffi::PyObject; 6] {
    [
        &mut state.channel_type,
        &mut state.buffer_type,
        &mut state.closed_error,
        &mut state.empty_error,
        &mut state.full_error,
        &mut state.receive_error,
    ]
}

unsafe extern "C" fn module_traverse(
    module: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: called by the GC with a valid module; the state may be NULL before exec.
    let Some(state) = (unsafe { state_of_module(module).as_mut() }) else {
        return 0;
    };
    for field in state_fields(state) {
        if !field.is_null() {
            // SAFETY: visiting an object we hold a strong reference to.
            let r = unsafe { visit(*field, arg) };
            if r != 0 {
                return r;
            }
        }
    }
    0
}

unsafe extern "C" fn module_clear(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: called by CPython with a valid module; the state may be NULL.
    if let Some(state) = unsafe { state_of_module(module).as_mut() } {
        for field in state_fields(state) {
            let obj = std::mem::replace(field, ptr::null_mut());
            if !obj.is_null() {
                // SAFETY: releasing the strong reference this state held.
                unsafe { ffi::Py_DecRef(obj) };
            }
        }
    }
    0
}

unsafe extern "C" fn module_free(module: *mut c_void) {
    // SAFETY: CPython passes the module object being freed.
    unsafe { module_clear(module.cast()) };
}

// ---------------------------------------------------------------- argument parsing

/// Parses `(args, kwargs)` against parameter `names`, the first `required` of which are
/// required. Returns one slot per name.
fn parse<'py>(
    py: Python<'py>,
    fname: &str,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
    names: &[&str],
    required: usize,
) -> Result<Vec<Option<PyObj<'py>>>> {
    let mut out: Vec<Option<PyObj<'py>>> = (0..names.len()).map(|_| None).collect();
    let n = if args.is_null() {
        0
    } else {
        // SAFETY: `args` is the argument tuple CPython passed.
        unsafe { ffi::PyTuple_Size(args) }
    };
    let n = usize::try_from(n).unwrap_or(0);
    if n > names.len() {
        return Err(py.new_error(
            ExcKind::Type,
            &format!(
                "{fname}() takes at most {} arguments ({n} given)",
                names.len()
            ),
        ));
    }
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        // SAFETY: index within the tuple's size; borrowed item.
        *slot = Some(py.borrowed(unsafe { ffi::PyTuple_GetItem(args, len(i)) })?);
    }
    if !kwargs.is_null() {
        let kwargs = py.borrowed(kwargs)?;
        let keys = kwargs.call_method("keys", &[])?;
        let keys = py.call(&py.builtins()?.getattr("list")?, &[&keys])?;
        for key in keys.to_value()?.as_slice().unwrap_or(&[]) {
            let key = key.as_str().unwrap_or_default().to_owned();
            let Some(index) = names.iter().position(|n| *n == key) else {
                return Err(py.new_error(
                    ExcKind::Type,
                    &format!("{fname}() got an unexpected keyword argument '{key}'"),
                ));
            };
            if out[index].is_some() {
                return Err(py.new_error(
                    ExcKind::Type,
                    &format!("{fname}() got multiple values for argument '{key}'"),
                ));
            }
            out[index] = Some(kwargs.get_item(&py.str(&key)?)?);
        }
    }
    for (i, name) in names.iter().enumerate().take(required) {
        if out[i].is_none() {
            return Err(py.new_error(
                ExcKind::Type,
                &format!("{fname}() missing required argument '{name}'"),
            ));
        }
    }
    Ok(out)
}

/// The longest timeout accepted, in seconds: `threading.TIMEOUT_MAX` on Linux.
const TIMEOUT_MAX: f64 = 9_223_372_036.0;

/// A timeout in seconds: `None` (wait forever) or a non-negative number (an `int` or a
/// `float`), as `queue.Queue.get` and `threading.Lock.acquire` take it: negative is a
/// `ValueError`, beyond `threading.TIMEOUT_MAX` an `OverflowError`.
fn timeout_arg(py: Python<'_>, arg: Option<&PyObj<'_>>) -> Result<Option<Duration>> {
    let Some(arg) = arg.filter(|a| !a.is_none()) else {
        return Ok(None);
    };
    // SAFETY: GIL held; type checks of a live object.
    let is_int = unsafe { ffi::PyLong_Check(arg.as_ptr()) } != 0;
    // SAFETY: as above.
    let is_float = unsafe { ffi::PyFloat_Check(arg.as_ptr()) } != 0;
    if !is_int && !is_float {
        return Err(py.new_error(
            ExcKind::Type,
            &format!(
                "timeout must be a number of seconds or None, not {}",
                arg.type_name()
            ),
        ));
    }
    // SAFETY: GIL held; `arg` is an int or a float. Fails (-1.0 with an exception set)
    // only for an int too large for a float.
    let seconds = unsafe { ffi::PyFloat_AsDouble(arg.as_ptr()) };
    // SAFETY: GIL held.
    if seconds == -1.0 && !unsafe { ffi::PyErr_Occurred() }.is_null() {
        // SAFETY: GIL held; replaced by the error below.
        unsafe { ffi::PyErr_Clear() };
        return Err(too_large(py));
    }
    if seconds.is_nan() || seconds < 0.0 {
        return Err(py.new_error(ExcKind::Value, "timeout must be a non-negative number"));
    }
    if seconds > TIMEOUT_MAX {
        return Err(too_large(py));
    }
    Ok(Some(Duration::from_secs_f64(seconds)))
}

fn too_large(py: Python<'_>) -> Error {
    py.new_error(
        ExcKind::Overflow,
        &format!("timeout value is too large (the longest is {TIMEOUT_MAX} s)"),
    )
}

// ---------------------------------------------------------------- module functions

unsafe extern "C" fn module_id(
    module: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    trampoline(state_of_module(module), |py| {
        parse(py, "id", args, kwargs, &[], 0)?;
        py.to_object(&Value::Int(py.interpreter_id()))
    })
}

unsafe extern "C" fn module_prepare_in_main(
    module: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    trampoline(state_of_module(module), |py| {
        let a = parse(py, "_prepare_in_main", args, kwargs, &["name", "path"], 2)?;
        let name = a[0].as_ref().expect("required").extract_str()?;
        let list = a[1].as_ref().expect("required");
        // SAFETY: GIL held; checks the type of a live object.
        if unsafe { ffi::PyList_Check(list.as_ptr()) } == 0 {
            return Err(py.new_error(ExcKind::Type, "path must be a list of str"));
        }
        // Entries that are not str, or not UTF-8 (a directory name with surrogate
        // escapes), are left out: the main interpreter cannot be given them as text.
        let mut path = Vec::new();
        for i in 0..list
            .call_method("__len__", &[])?
            .to_value()?
            .as_i64()
            .unwrap_or(0)
        {
            let item = list.get_item(&py.to_object(&Value::Int(i))?)?;
            if let Some(entry) = super::convert::utf8_str(&item) {
                path.push(entry);
            }
        }
        py.allow_threads(move || crate::hazards::prepare(&name, &path));
        Ok(py.none())
    })
}

unsafe extern "C" fn module_channel(
    module: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let state = state_of_module(module);
    trampoline(state, |py| {
        let a = parse(py, "channel", args, kwargs, &["name", "capacity"], 1)?;
        let name = a[0].as_ref().expect("required").extract_str()?;
        let capacity = match a[1].as_ref().filter(|c| !c.is_none()).map(|c| c.to_value()) {
            None => None,
            Some(Ok(Value::Int(n))) if n >= 1 => Some(n as usize),
            Some(_) => {
                return Err(py.new_error(ExcKind::Value, "capacity must be an int >= 1 or None"))
            }
        };
        let channel = Channel::named_with(&name, capacity)?;
        new_channel_object(py, state, channel)
    })
}

unsafe extern "C" fn module_buffer(
    module: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let state = state_of_module(module);
    trampoline(state, |py| {
        let a = parse(
            py,
            "buffer",
            args,
            kwargs,
            &["size_or_bytes", "writable"],
            1,
        )?;
        let source = a[0].as_ref().expect("required");
        let writable = match &a[1] {
            Some(flag) => {
                // SAFETY: GIL held; truth test of a live object.
                let truth = unsafe { ffi::PyObject_IsTrue(flag.as_ptr()) };
                py.check(truth)?;
                truth == 1
            }
            None => false,
        };
        let buffer = match source.to_value() {
            Ok(Value::Int(n)) if n >= 0 => SharedBuffer::new(n as usize, writable)?,
            Ok(Value::Bytes(data)) => SharedBuffer::from_bytes(&data, writable)?,
            _ => {
                // Any other object exporting the buffer protocol (memoryview, array, ...).
                let data = py.call(&py.builtins()?.getattr("bytes")?, &[source])?;
                match data.to_value()? {
                    Value::Bytes(data) => SharedBuffer::from_bytes(&data, writable)?,
                    _ => {
                        return Err(py.new_error(
                            ExcKind::Type,
                            "buffer() takes a size or a bytes-like object",
                        ))
                    }
                }
            }
        };
        new_buffer_object(py, state, buffer, true)
    })
}

// ---------------------------------------------------------------- Channel

fn new_channel_object<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    channel: Channel,
) -> Result<PyObj<'py>> {
    // SAFETY: `state` is the live state of this interpreter's module; its channel type
    // is a heap type whose instances have the ChannelObject layout.
    let obj = py.own(unsafe {
        let ty = (*state).channel_type.cast::<ffi::PyTypeObject>();
        ffi::PyType_GenericAlloc(ty, 0)
    })?;
    // SAFETY: `obj` is a fresh ChannelObject; the field takes ownership of a boxed handle,
    // freed in `channel_dealloc`.
    unsafe { (*obj.as_ptr().cast::<ChannelObject>()).channel = Box::into_raw(Box::new(channel)) };
    Ok(obj)
}

/// The channel behind a Channel object.
fn channel_of(obj: *mut ffi::PyObject) -> Channel {
    // SAFETY: `obj` is an instance of our Channel type, whose field is set at creation
    // and only freed at deallocation.
    unsafe { (*(*obj.cast::<ChannelObject>()).channel).clone() }
}

unsafe extern "C" fn channel_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called once by CPython for an instance of our heap type: free our field,
    // then the object through its type's tp_free, then drop the instance's type reference.
    unsafe {
        let handle = (*obj.cast::<ChannelObject>()).channel;
        if !handle.is_null() {
            drop(Box::from_raw(handle));
        }
        free_instance(obj);
    }
}

/// Frees an instance of one of our heap types.
///
/// # Safety
/// `obj` is an instance being deallocated whose own fields are already released.
unsafe fn free_instance(obj: *mut ffi::PyObject) {
    // SAFETY: guaranteed by the caller; heap-type instances own a reference to their type.
    unsafe {
        let ty = ffi::Py_TYPE(obj);
        let free = ffi::PyType_GetSlot(ty, ffi::Py_tp_free);
        if !free.is_null() {
            let free: ffi::freefunc = std::mem::transmute(free);
            free(obj.cast());
        }
        ffi::Py_DecRef(ty.cast());
    }
}

unsafe extern "C" fn channel_send(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let state = state_of_type(slf);
    trampoline(state, |py| {
        let a = parse(py, "send", args, kwargs, &["obj", "timeout"], 1)?;
        let timeout = timeout_arg(py, a[1].as_ref())?;
        let channel = channel_of(slf);
        let message = to_message(py, state, &channel, a[0].as_ref().expect("required"))?;
        let message = match channel.try_send_message(message) {
            Ok(()) => return Ok(py.none()),
            Err((Stop::Full, message)) => message,
            Err((stop, _)) => return Err(stop_error(stop)),
        };
        let interrupt = wait::lookup(py.interpreter_id());
        let deadline = wait::deadline_after(timeout);
        let (result, late) = py.allow_threads(move || {
            let mut late = None;
            let result = channel
                .send_with(message, deadline, interrupt.as_deref(), &mut late)
                .map_err(|(stop, _)| stop);
            (result, late)
        });
        result.map_err(stop_error)?;
        deliver_late_interrupt(py, late);
        Ok(py.none())
    })
}

unsafe extern "C" fn channel_try_send(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let state = state_of_type(slf);
    trampoline(state, |py| {
        let a = parse(py, "try_send", args, kwargs, &["obj"], 1)?;
        let channel = channel_of(slf);
        let message = to_message(py, state, &channel, a[0].as_ref().expect("required"))?;
        channel
            .try_send_message(message)
            .map_err(|(stop, _)| stop_error(stop))?;
        Ok(py.none())
    })
}

unsafe extern "C" fn channel_recv(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let state = state_of_type(slf);
    trampoline(state, |py| {
        let a = parse(py, "recv", args, kwargs, &["timeout"], 0)?;
        let timeout = timeout_arg(py, a[0].as_ref())?;
        let channel = channel_of(slf);
        let message = blocking_recv(py, &channel, timeout)?;
        from_message(py, state, &channel, message)
    })
}

fn blocking_recv(py: Python<'_>, channel: &Channel, timeout: Option<Duration>) -> Result<Message> {
    match channel.try_recv_message() {
        Ok(message) => return Ok(message),
        Err(Stop::Empty) => {}
        Err(stop) => return Err(stop_error(stop)),
    }
    let channel = channel.clone();
    let interrupt = wait::lookup(py.interpreter_id());
    let deadline = wait::deadline_after(timeout);
    let (result, late) = py.allow_threads(move || {
        let mut late = None;
        let result = channel.recv_with(deadline, interrupt.as_deref(), &mut late);
        (result, late)
    });
    let message = result.map_err(stop_error)?;
    deliver_late_interrupt(py, late);
    Ok(message)
}

/// An interrupt that reached a wait just as it succeeded is not dropped: the message is
/// delivered and the interrupt raised at the next bytecode boundary.
fn deliver_late_interrupt(py: Python<'_>, late: Option<InterruptReason>) {
    if let Some(reason) = late {
        super::lifecycle::raise_soon(py, reason);
    }
}

fn stop_error(stop: Stop) -> Error {
    match stop {
        Stop::Closed => Error::ChannelClosed,
        Stop::TimedOut => Error::Timeout,
        Stop::Empty => Error::ChannelEmpty,
        Stop::Full => Error::ChannelFull,
        Stop::Interrupted(reason) => Error::Interrupted(reason),
    }
}

unsafe extern "C" fn channel_try_recv(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let state = state_of_type(slf);
    trampoline(state, |py| {
        parse(py, "try_recv", args, kwargs, &[], 0)?;
        let channel = channel_of(slf);
        let message = channel.try_recv_message().map_err(stop_error)?;
        from_message(py, state, &channel, message)
    })
}

unsafe extern "C" fn channel_close(
    slf: *mut ffi::PyObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    trampoline(state_of_type(slf), |py| {
        parse(py, "close", args, kwargs, &[], 0)?;
        channel_of(slf).close();
        Ok(py.none())
    })
}

unsafe extern "C" fn channel_name(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    trampoline(state_of_type(slf), |py| match channel_of(slf).name() {
        Some(name) => py.str(name),
        None => Ok(py.none()),
    })
}

unsafe extern "C" fn channel_capacity(
    slf: *mut ffi::PyObject,
    _: *mut c_void,
) -> *mut ffi::PyObject {
    trampoline(state_of_type(slf), |py| {
        py.to_object(&channel_of(slf).capacity().map_or(Value::None, Value::from))
    })
}

unsafe extern "C" fn channel_closed(slf: *mut ffi::PyObject, _: *mut c_void) -> *mut ffi::PyObject {
    trampoline(state_of_type(slf), |py| {
        py.to_object(&Value::Bool(channel_of(slf).is_closed()))
    })
}

unsafe extern "C" fn channel_repr(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    trampoline(state_of_type(slf), |py| {
        let channel = channel_of(slf);
        let name = channel
            .name()
            .map_or("<anonymous>".to_owned(), |n| format!("{n:?}"));
        py.str(&format!(
            "<subinterp.Channel {name} len={}{}>",
            channel.len(),
            if channel.is_closed() { " closed" } else { "" }
        ))
    })
}

unsafe extern "C" fn channel_len(slf: *mut ffi::PyObject) -> ffi::Py_ssize_t {
    len(channel_of(slf).len())
}

unsafe extern "C" fn channel_iter(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: returning a new reference to self.
    unsafe { ffi::Py_IncRef(slf) };
    slf
}

unsafe extern "C" fn channel_iternext(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    let state = state_of_type(slf);
    let result = trampoline(state, |py| {
        let channel = channel_of(slf);
        let message = blocking_recv(py, &channel, None)?;
        from_message(py, state, &channel, message)
    });
    if result.is_null() {
        // End of iteration: a closed channel stops the loop without an exception.
        // SAFETY: GIL held; `state` is live; checks and clears the exception just raised.
        unsafe {
            let closed = state.as_ref().map_or(ptr::null_mut(), |s| s.closed_error);
            if !closed.is_null() && ffi::PyErr_ExceptionMatches(closed) != 0 {
                ffi::PyErr_Clear();
            }
        }
    }
    result
}

// ---------------------------------------------------------------- Buffer

fn new_buffer_object<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    buffer: SharedBuffer,
    writable: bool,
) -> Result<PyObj<'py>> {
    // SAFETY: `state` is the live state of this interpreter's module; its buffer type is a
    // heap type whose instances have the BufferObject layout.
    let obj = py.own(unsafe {
        let ty = (*state).buffer_type.cast::<ffi::PyTypeObject>();
        ffi::PyType_GenericAlloc(ty, 0)
    })?;
    // SAFETY: `obj` is a fresh BufferObject; it takes ownership of a boxed handle, freed in
    // `buffer_dealloc`, which keeps the memory alive for every view of this object.
    unsafe {
        let fields = obj.as_ptr().cast::<BufferObject>();
        (*fields).buffer = Box::into_raw(Box::new(buffer));
        (*fields).writable = writable;
    }
    Ok(obj)
}

/// The shared buffer behind a Buffer object, and whether its views are writable.
fn buffer_of(obj: *mut ffi::PyObject) -> (SharedBuffer, bool) {
    // SAFETY: `obj` is an instance of our Buffer type; fields set at creation.
    unsafe {
        let fields = obj.cast::<BufferObject>();
        ((*(*fields).buffer).clone(), (*fields).writable)
    }
}

unsafe extern "C" fn buffer_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called once by CPython; no view exists any more (each holds a reference).
    unsafe {
        let handle = (*obj.cast::<BufferObject>()).buffer;
        if !handle.is_null() {
            drop(Box::from_raw(handle));
        }
        free_instance(obj);
    }
}

unsafe extern "C" fn buffer_getbuffer(
    obj: *mut ffi::PyObject,
    view: *mut ffi::Py_buffer,
    flags: c_int,
) -> c_int {
    let (buffer, writable) = buffer_of(obj);
    let mem = buffer.mem();
    // SAFETY: GIL held; the memory stays alive while `obj` does, and the view keeps a
    // reference to `obj` (PyBuffer_FillInfo sets view->obj). A writable request on a
    // read-only handle fails with BufferError.
    unsafe {
        ffi::PyBuffer_FillInfo(
            view,
            obj,
            mem.as_ptr().cast::<c_void>(),
            len(mem.len()),
            c_int::from(!writable),
            flags,
        )
    }
}

unsafe extern "C" fn buffer_len(obj: *mut ffi::PyObject) -> ffi::Py_ssize_t {
    len(buffer_of(obj).0.len())
}

unsafe extern "C" fn buffer_writable(
    slf: *mut ffi::PyObject,
    _: *mut c_void,
) -> *mut ffi::PyObject {
    trampoline(state_of_type(slf), |py| {
        py.to_object(&Value::Bool(buffer_of(slf).1))
    })
}

// ---------------------------------------------------------------- messages

fn is_instance(obj: &PyObj<'_>, ty: *mut ffi::PyObject) -> bool {
    // SAFETY: GIL held; `ty` is a live type object of this interpreter's module.
    !ty.is_null() && unsafe { ffi::PyObject_TypeCheck(obj.as_ptr(), ty.cast()) } != 0
}

/// Turns a Python object into a message: a shared buffer as is, plain data as a Value,
/// anything else pickled.
fn to_message<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    channel: &Channel,
    obj: &PyObj<'py>,
) -> Result<Message> {
    // SAFETY: `state` is the live state of this interpreter's module.
    let buffer_type = unsafe { (*state).buffer_type };
    if is_instance(obj, buffer_type) {
        let (buffer, _) = buffer_of(obj.as_ptr());
        return Ok(Message::Buffer(buffer));
    }
    // SAFETY: GIL held; type check of a live object.
    if unsafe { ffi::PyMemoryView_Check(obj.as_ptr()) } != 0 {
        if let Ok(base) = obj.getattr("obj") {
            if is_instance(&base, buffer_type) {
                let (buffer, _) = buffer_of(base.as_ptr());
                return Ok(Message::Buffer(buffer));
            }
        }
    }
    // Bytes reuse a buffer the receiving side gave back, so that a steady stream of
    // messages does not allocate in one thread and free in another.
    let mut buffer = channel.reuse_buffer();
    if super::convert::copy_bytes(obj, &mut buffer) {
        return Ok(Message::Value(Value::Bytes(buffer)));
    }
    match obj.to_value() {
        Ok(value) => Ok(Message::Value(value)),
        Err(_) => {
            let type_name = obj.type_name();
            let pickle = py.import("pickle")?;
            let protocol = py.to_object(&Value::Int(5))?;
            match pickle.call_method("dumps", &[obj, &protocol]) {
                Ok(data) => match data.to_value()? {
                    Value::Bytes(data) => Ok(Message::Pickled { type_name, data }),
                    _ => Err(py.new_error(ExcKind::Type, "pickle.dumps did not return bytes")),
                },
                Err(Error::Python(exc)) => Err(py.new_error(
                    ExcKind::Type,
                    &format!(
                        "cannot send a {type_name} object: it is not plain data and cannot be \
                         pickled ({}: {})",
                        exc.short_type_name(),
                        exc.message
                    ),
                )),
                Err(other) => Err(other),
            }
        }
    }
}

/// Rebuilds a message as a Python object of this interpreter.
fn from_message<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    channel: &Channel,
    message: Message,
) -> Result<PyObj<'py>> {
    match message {
        Message::Value(Value::Bytes(data)) => {
            let obj = py.to_object_bytes(&data);
            channel.recycle_buffer(data);
            obj
        }
        Message::Value(value) => py.to_object(&value),
        Message::Buffer(buffer) => {
            let writable = buffer.is_writable();
            let handle = new_buffer_object(py, state, buffer, writable)?;
            // SAFETY: GIL held; the memoryview takes its own reference to `handle`.
            py.own(unsafe { ffi::PyMemoryView_FromObject(handle.as_ptr()) })
        }
        Message::Pickled { type_name, data } => {
            let pickled = py.to_object(&Value::Bytes(data))?;
            let loaded = py
                .import("pickle")
                .and_then(|p| p.call_method("loads", &[&pickled]));
            match loaded {
                Ok(obj) => Ok(obj),
                Err(err) => {
                    let reason = match &err {
                        Error::Python(exc) => format!("{}: {}", exc.short_type_name(), exc.message),
                        other => other.to_string(),
                    };
                    Err(raise_receive_error(
                        py, state, &type_name, &reason, &pickled,
                    ))
                }
            }
        }
    }
}

/// Raises `ReceiveError` carrying the pickled bytes and the type name, and returns the
/// error that tells the trampoline an exception is already set.
fn raise_receive_error<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    type_name: &str,
    reason: &str,
    pickled: &PyObj<'py>,
) -> Error {
    match build_receive_error(py, state, type_name, reason, pickled) {
        Ok(()) => Error::Conversion(format!("cannot rebuild a received {type_name} object")),
        Err(err) => err,
    }
}

fn build_receive_error<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    type_name: &str,
    reason: &str,
    pickled: &PyObj<'py>,
) -> Result<()> {
    // SAFETY: `state` is the live state of this interpreter's module.
    let cls = py.borrowed(unsafe { (*state).receive_error })?;
    let message = py.str(&format!(
        "cannot rebuild a received {type_name} object in this interpreter ({reason}); \
         the pickled message is kept in this exception's .pickled attribute"
    ))?;
    let exc = cls.call(&[&message])?;
    exc.setattr("pickled", pickled)?;
    exc.setattr("type_name", &py.str(type_name)?)?;
    // SAFETY: GIL held; raising a live exception instance (PyErr_SetObject increfs it).
    unsafe { ffi::PyErr_SetObject(cls.as_ptr(), exc.as_ptr()) };
    Ok(())
}
