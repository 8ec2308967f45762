//! The built-in `subinterp` Python module, importable in every interpreter of the process.
//!
//! It is a multi-phase-init module (PEP 489) with per-module state, declaring support for
//! a per-interpreter GIL: every interpreter that imports it gets its own module object,
//! its own `Channel` and `Buffer` types and its own exception classes; only the Rust
//! channels and buffers behind them are shared, and those are thread-safe.
//!
//! Every C entry point is made by [`super::callback`]; the functions here are plain Rust.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;
use std::time::Duration;

use pyo3_ffi as ffi;

use super::callback::{self, Export, Failure, FastArgs, Outcome, Visit};
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

fn slot(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

fn getset_end() -> ffi::PyGetSetDef {
    ffi::PyGetSetDef {
        name: ptr::null(),
        get: None,
        set: None,
        doc: ptr::null(),
        closure: ptr::null_mut(),
    }
}

fn defs() -> &'static Defs {
    DEFS.get_or_init(|| {
        let module_methods = leak(vec![
            callback::method_def(c"id", c"id()\n--\n\nThis interpreter's id.", module_id),
            callback::method_def(
                c"channel",
                c"channel(name, capacity=None)\n--\n\nThe channel called name, shared by every \
                  interpreter and the host; created on first use, unbounded unless capacity is \
                  given.",
                module_channel,
            ),
            callback::method_def(
                c"buffer",
                c"buffer(size_or_bytes, writable=False)\n--\n\nA buffer of shared memory: send it \
                  through a channel and receivers get a memoryview over the same bytes, read-only \
                  unless writable=True. This handle's own views are always writable.",
                module_buffer,
            ),
            callback::method_def(
                c"_prepare_in_main",
                c"_prepare_in_main(name, path)\n--\n\nImports the module name in the main \
                  interpreter (with the str entries of path appended to its sys.path) unless \
                  that was done before; called by the module loaders of subinterpreters \
                  on CPython versions where loading an extension module there first crashes \
                  the process later. Never raises for the import itself.",
                module_prepare_in_main,
            ),
            ffi::PyMethodDef::zeroed(),
        ]);
        let module_slots = leak(vec![
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_exec,
                value: callback::exec_slot(module_exec),
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
            m_traverse: Some(callback::traverse_slot(module_traverse)),
            m_clear: Some(callback::clear_slot(module_clear)),
            m_free: Some(callback::free_slot(module_free)),
        }));

        let channel_methods = leak(vec![
            callback::method_def(
                c"send",
                c"send(obj, timeout=None)\n--\n\nSend obj; wait while the channel is full.",
                channel_send,
            ),
            callback::method_def(
                c"try_send",
                c"try_send(obj)\n--\n\nSend obj without waiting; ChannelFull if full.",
                channel_try_send,
            ),
            callback::method_def(
                c"recv",
                c"recv(timeout=None)\n--\n\nReceive the next message, waiting for one.",
                channel_recv,
            ),
            callback::method_def(
                c"try_recv",
                c"try_recv()\n--\n\nReceive without waiting; ChannelEmpty if empty.",
                channel_try_recv,
            ),
            callback::method_def(
                c"close",
                c"close()\n--\n\nClose the channel for every interpreter.",
                channel_close,
            ),
            ffi::PyMethodDef::zeroed(),
        ]);
        let channel_getset = leak(vec![
            callback::getset_def(c"name", c"The channel's name.", channel_name),
            callback::getset_def(c"capacity", c"The capacity, or None.", channel_capacity),
            callback::getset_def(c"closed", c"True once closed.", channel_closed),
            getset_end(),
        ]);
        let channel_slots = leak(vec![
            slot(ffi::Py_tp_dealloc, callback::dealloc_slot(channel_dealloc)),
            slot(ffi::Py_tp_methods, channel_methods.cast()),
            slot(ffi::Py_tp_getset, channel_getset.cast()),
            slot(ffi::Py_tp_repr, callback::unary_slot(channel_repr)),
            slot(ffi::Py_tp_iter, callback::unary_slot(channel_iter)),
            slot(
                ffi::Py_tp_iternext,
                callback::iternext_slot(channel_iternext),
            ),
            slot(ffi::Py_mp_length, callback::len_slot(channel_len)),
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
            callback::getset_def(
                c"writable",
                c"Whether views of this handle are writable.",
                buffer_writable,
            ),
            getset_end(),
        ]);
        let buffer_slots = leak(vec![
            slot(ffi::Py_tp_dealloc, callback::dealloc_slot(buffer_dealloc)),
            slot(
                ffi::Py_bf_getbuffer,
                callback::getbuffer_slot(buffer_getbuffer),
            ),
            slot(ffi::Py_mp_length, callback::len_slot(buffer_len)),
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

/// Makes `subinterp` a built-in module of every interpreter. Must run before CPython is
/// initialised.
pub(crate) fn register_builtin() -> std::result::Result<(), String> {
    defs();
    let init = callback::init_fn(|| defs().module);
    // SAFETY: called once, before Py_Initialize, with a static name and init function.
    let status = unsafe { ffi::PyImport_AppendInittab(c"subinterp".as_ptr(), Some(init)) };
    if status == 0 {
        Ok(())
    } else {
        Err("could not register the subinterp module".into())
    }
}

/// The module state of the module that defined `obj`'s type.
fn state_of_type(obj: &PyObj<'_>) -> *mut ModuleState {
    // SAFETY: `obj` is an instance of one of our heap types, made by PyType_FromModuleAndSpec.
    unsafe { ffi::PyType_GetModuleState(ffi::Py_TYPE(obj.as_ptr())).cast() }
}

fn state_of_module(module: *mut ffi::PyObject) -> *mut ModuleState {
    // SAFETY: `module` is our module object.
    unsafe { ffi::PyModule_GetState(module).cast() }
}

// ---------------------------------------------------------------- module lifecycle

fn module_exec(py: Python<'_>, module: &PyObj<'_>) -> Outcome<()> {
    let module = module.as_ptr();
    let state = state_of_module(module);
    if state.is_null() {
        return Err(Failure::Error(Error::InvalidArgument(
            "the subinterp module has no state".into(),
        )));
    }
    let defs = defs();
    let fail = || Err(Failure::Error(py.fetch_error()));
    // SAFETY: GIL held during module execution; `state` is this module's zeroed state;
    // every object created is stored with its own strong reference and also added to the
    // module (PyModule_AddObjectRef does not steal). Each failure leaves an exception set,
    // fetched into the error.
    unsafe {
        let channel_type =
            ffi::PyType_FromModuleAndSpec(module, defs.channel_spec, ptr::null_mut());
        if channel_type.is_null() {
            return fail();
        }
        (*state).channel_type = channel_type;
        let buffer_type = ffi::PyType_FromModuleAndSpec(module, defs.buffer_spec, ptr::null_mut());
        if buffer_type.is_null() {
            return fail();
        }
        (*state).buffer_type = buffer_type;
        for (name, obj) in [(c"Channel", channel_type), (c"Buffer", buffer_type)] {
            if ffi::PyModule_AddObjectRef(module, name.as_ptr(), obj) < 0 {
                return fail();
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
                return fail();
            }
            *slot = exc;
            if ffi::PyModule_AddObjectRef(module, short.as_ptr(), exc) < 0 {
                return fail();
            }
        }
    }
    Ok(())
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

fn module_traverse(module: *mut ffi::PyObject, visit: Visit) -> c_int {
    // SAFETY: called by the GC with a valid module; the state may be NULL before exec.
    let Some(state) = (unsafe { state_of_module(module).as_mut() }) else {
        return 0;
    };
    for field in state_fields(state) {
        if let Some(obj) = ptr::NonNull::new(*field) {
            let r = visit.call(obj);
            if r != 0 {
                return r;
            }
        }
    }
    0
}

fn module_clear(module: *mut ffi::PyObject, (): ()) -> c_int {
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

fn module_free(module: *mut ffi::PyObject, (): ()) {
    module_clear(module, ());
}

// ---------------------------------------------------------------- argument parsing

/// Parses the arguments of a call against parameter `names`, the first `required` of
/// which are required. Returns one slot per name.
fn parse<'py, const N: usize>(
    args: &FastArgs<'_, 'py>,
    fname: &str,
    names: [&str; N],
    required: usize,
) -> Result<[Option<PyObj<'py>>; N]> {
    let py = args.py();
    let mut out: [Option<PyObj<'py>>; N] = std::array::from_fn(|_| None);
    let n = args.positional_len();
    if n > N {
        return Err(py.new_error(
            ExcKind::Type,
            &format!("{fname}() takes at most {N} arguments ({n} given)"),
        ));
    }
    for (i, slot) in out.iter_mut().enumerate().take(n) {
        *slot = args.positional(i);
    }
    for k in 0..args.keyword_len() {
        let key = args.keyword_name(k).unwrap_or("");
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
        out[index] = args.keyword_value(k);
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

/// A required argument, checked present by [`parse`].
fn required<'a, 'py>(arg: &'a Option<PyObj<'py>>) -> &'a PyObj<'py> {
    arg.as_ref().expect("parse checks required arguments")
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

fn module_id<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "id", [], 0)?;
    Ok(py.to_object(&Value::Int(py.interpreter_id()))?)
}

fn module_prepare_in_main<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let a = parse(args, "_prepare_in_main", ["name", "path"], 2)?;
    let name = required(&a[0]).extract_str()?;
    let list = required(&a[1]);
    // SAFETY: GIL held; checks the type of a live object.
    if unsafe { ffi::PyList_Check(list.as_ptr()) } == 0 {
        return Err(py
            .new_error(ExcKind::Type, "path must be a list of str")
            .into());
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
}

fn module_channel<'py>(
    py: Python<'py>,
    module: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let state = state_of_module(module.as_ptr());
    let a = parse(args, "channel", ["name", "capacity"], 1)?;
    let name = required(&a[0]).extract_str()?;
    let capacity = match a[1].as_ref().filter(|c| !c.is_none()).map(|c| c.to_value()) {
        None => None,
        Some(Ok(Value::Int(n))) if n >= 1 => Some(n as usize),
        Some(_) => {
            return Err(py
                .new_error(ExcKind::Value, "capacity must be an int >= 1 or None")
                .into())
        }
    };
    let channel = Channel::named_with(&name, capacity)?;
    Ok(new_channel_object(py, state, channel)?)
}

fn module_buffer<'py>(
    py: Python<'py>,
    module: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let state = state_of_module(module.as_ptr());
    let a = parse(args, "buffer", ["size_or_bytes", "writable"], 1)?;
    let source = required(&a[0]);
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
                    return Err(py
                        .new_error(
                            ExcKind::Type,
                            "buffer() takes a size or a bytes-like object",
                        )
                        .into())
                }
            }
        }
    };
    Ok(new_buffer_object(py, state, buffer, true)?)
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
fn channel_of(obj: &PyObj<'_>) -> Channel {
    // SAFETY: `obj` is an instance of our Channel type, whose field is set at creation
    // and only freed at deallocation.
    unsafe { (*(*obj.as_ptr().cast::<ChannelObject>()).channel).clone() }
}

fn channel_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called once by the dealloc trampoline for an instance of our Channel type,
    // which owns the boxed handle (or NULL if allocation of the handle never happened).
    unsafe {
        let handle = (*obj.cast::<ChannelObject>()).channel;
        if !handle.is_null() {
            drop(Box::from_raw(handle));
        }
    }
}

fn channel_send<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let state = state_of_type(slf);
    let a = parse(args, "send", ["obj", "timeout"], 1)?;
    let timeout = timeout_arg(py, a[1].as_ref())?;
    let channel = channel_of(slf);
    let message = to_message(py, state, &channel, required(&a[0]))?;
    let message = match channel.try_send_message(message) {
        Ok(()) => return Ok(py.none()),
        Err((Stop::Full, message)) => message,
        Err((stop, _)) => return Err(stop_error(stop).into()),
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
}

fn channel_try_send<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let state = state_of_type(slf);
    let a = parse(args, "try_send", ["obj"], 1)?;
    let channel = channel_of(slf);
    let message = to_message(py, state, &channel, required(&a[0]))?;
    channel
        .try_send_message(message)
        .map_err(|(stop, _)| stop_error(stop))?;
    Ok(py.none())
}

fn channel_recv<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let state = state_of_type(slf);
    let a = parse(args, "recv", ["timeout"], 0)?;
    let timeout = timeout_arg(py, a[0].as_ref())?;
    let channel = channel_of(slf);
    let message = blocking_recv(py, &channel, timeout)?;
    from_message(py, state, &channel, message)
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

fn channel_try_recv<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let state = state_of_type(slf);
    parse(args, "try_recv", [], 0)?;
    let channel = channel_of(slf);
    let message = channel.try_recv_message().map_err(stop_error)?;
    from_message(py, state, &channel, message)
}

fn channel_close<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    parse(args, "close", [], 0)?;
    channel_of(slf).close();
    Ok(py.none())
}

fn channel_name<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(match channel_of(slf).name() {
        Some(name) => py.str(name)?,
        None => py.none(),
    })
}

fn channel_capacity<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(py.to_object(&channel_of(slf).capacity().map_or(Value::None, Value::from))?)
}

fn channel_closed<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(py.to_object(&Value::Bool(channel_of(slf).is_closed()))?)
}

fn channel_repr<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    let channel = channel_of(slf);
    let name = channel
        .name()
        .map_or("<anonymous>".to_owned(), |n| format!("{n:?}"));
    Ok(py.str(&format!(
        "<subinterp.Channel {name} len={}{}>",
        channel.len(),
        if channel.is_closed() { " closed" } else { "" }
    ))?)
}

fn channel_len(_py: Python<'_>, slf: &PyObj<'_>) -> Outcome<usize> {
    Ok(channel_of(slf).len())
}

fn channel_iter<'py>(_py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(slf.clone())
}

fn channel_iternext<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<Option<PyObj<'py>>> {
    let state = state_of_type(slf);
    let channel = channel_of(slf);
    match blocking_recv(py, &channel, None) {
        Ok(message) => from_message(py, state, &channel, message).map(Some),
        // End of iteration: a closed channel stops the loop without an exception.
        Err(Error::ChannelClosed) => Ok(None),
        Err(err) => Err(err.into()),
    }
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

/// The shared buffer behind a Buffer object, borrowed from it, and whether its views are
/// writable.
fn buffer_ref<'a>(obj: &'a PyObj<'_>) -> (&'a SharedBuffer, bool) {
    // SAFETY: `obj` is an instance of our Buffer type; its fields are set at creation and
    // the handle is only freed at deallocation, after every borrow of `obj` ended.
    unsafe {
        let fields = obj.as_ptr().cast::<BufferObject>();
        (&*(*fields).buffer, (*fields).writable)
    }
}

fn buffer_of(obj: &PyObj<'_>) -> (SharedBuffer, bool) {
    let (buffer, writable) = buffer_ref(obj);
    (buffer.clone(), writable)
}

fn buffer_dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: called once by the dealloc trampoline; no view exists any more (each holds
    // a reference).
    unsafe {
        let handle = (*obj.cast::<BufferObject>()).buffer;
        if !handle.is_null() {
            drop(Box::from_raw(handle));
        }
    }
}

fn buffer_getbuffer<'a>(_py: Python<'_>, obj: &'a PyObj<'_>) -> Outcome<Export<'a>> {
    let (buffer, writable) = buffer_ref(obj);
    Ok(Export {
        mem: buffer.mem(),
        writable,
    })
}

fn buffer_len(_py: Python<'_>, obj: &PyObj<'_>) -> Outcome<usize> {
    Ok(buffer_ref(obj).0.len())
}

fn buffer_writable<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(py.to_object(&Value::Bool(buffer_ref(slf).1))?)
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
        let (buffer, _) = buffer_of(obj);
        return Ok(Message::Buffer(buffer));
    }
    // SAFETY: GIL held; type check of a live object.
    if unsafe { ffi::PyMemoryView_Check(obj.as_ptr()) } != 0 {
        if let Ok(base) = obj.getattr("obj") {
            if is_instance(&base, buffer_type) {
                let (buffer, _) = buffer_of(&base);
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
) -> Outcome<PyObj<'py>> {
    match message {
        Message::Value(Value::Bytes(data)) => {
            let obj = py.to_object_bytes(&data);
            channel.recycle_buffer(data);
            Ok(obj?)
        }
        Message::Value(value) => Ok(py.to_object(&value)?),
        Message::Buffer(buffer) => {
            let writable = buffer.is_writable();
            let handle = new_buffer_object(py, state, buffer, writable)?;
            // SAFETY: GIL held; the memoryview takes its own reference to `handle`.
            Ok(py.own(unsafe { ffi::PyMemoryView_FromObject(handle.as_ptr()) })?)
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

/// Raises `ReceiveError` carrying the pickled bytes and the type name.
fn raise_receive_error<'py>(
    py: Python<'py>,
    state: *mut ModuleState,
    type_name: &str,
    reason: &str,
    pickled: &PyObj<'py>,
) -> Failure {
    match build_receive_error(py, state, type_name, reason, pickled) {
        Ok(()) => Failure::Raised,
        Err(err) => Failure::Error(err),
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
