//! The built-in `subinterp` Python module, importable in every interpreter of the process:
//! channels, shared buffers, `id()`.
//!
//! It is the first module the runtime registers, from a [`ModuleSpec`] like every host
//! module's, in safe code over the generic trampolines ([`crate::raw::callback`]) and
//! native classes ([`crate::raw::class`]): a multi-phase-init module with per-interpreter
//! state, declaring support for a per-interpreter GIL. Every
//! interpreter that imports it gets its own module object, its own `Channel` and `Buffer`
//! types and its own exception classes; only the Rust channels and buffers behind them
//! are shared, and those are thread-safe.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::audit::GuardRule;
use crate::channel::buffer::{Layout, SharedBuffer};
use crate::channel::{Channel, Encoded, Lent, Message, Stop};
use crate::error::{Error, Result};
use crate::host::params::{self, Timeout, Truth};
use crate::raw::buffer::view_info;
use crate::raw::callback::{self, Export, Failure, FastArgs, Outcome};
use crate::raw::class::{self, ClassDef};
use crate::raw::convert::{copy_bytes, exact_bool, exact_float, exact_int};
use crate::raw::lent::{self, LentBytes};
use crate::raw::lifecycle::raise_soon;
use crate::raw::module::{self, ClassSpec, ExceptionSpec, ModuleSpec};
use crate::raw::wire::{self, Mode};
use crate::raw::{ExcKind, PyObj, Python};
use crate::stats;
use crate::value::Value;
use crate::wait::{self, InterruptReason};

/// The entries of the module's per-interpreter state: its classes, then its exceptions,
/// in the order of [`spec`].
const CHANNEL_TYPE: usize = 0;
const BUFFER_TYPE: usize = 1;
const CLOSED_ERROR: usize = 2;
const EMPTY_ERROR: usize = 3;
const FULL_ERROR: usize = 4;
const RECEIVE_ERROR: usize = 5;

/// From this size on, a `bytes` sent on a channel is lent to the receiver, which copies
/// it straight from the sender's object (one copy instead of two). Measured (send + recv
/// in one interpreter): 16 KiB cost the same either way (the copy goes to a recycled
/// buffer), 64 KiB 1.7-2.8 µs lent against 2.7, and from there on, where the copy needs
/// a fresh buffer each time, lending wins by far (256 KiB: 5-9 µs against 229-232).
const LEND_MIN_BYTES: usize = 64 * 1024;

/// What a `Buffer` object holds.
struct BufferHandle {
    buffer: SharedBuffer,
    /// Whether views made from this handle are writable (always for the creator's handle).
    writable: bool,
}

/// The module's native classes, made once for the process.
struct Classes {
    channel: ClassDef,
    buffer: ClassDef,
}

static CLASSES: OnceLock<Classes> = OnceLock::new();

fn classes() -> &'static Classes {
    CLASSES.get_or_init(|| Classes {
        channel: ClassDef::new::<Channel>(
            c"subinterp.Channel",
            c"A channel shared by every interpreter; get one with subinterp.channel(name).",
            vec![
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
            ],
            vec![
                callback::getset_def(c"name", c"The channel's name.", channel_name),
                callback::getset_def(c"capacity", c"The capacity, or None.", channel_capacity),
                callback::getset_def(c"closed", c"True once closed.", channel_closed),
            ],
            vec![
                callback::repr_slot(channel_repr),
                callback::iter_slot(channel_iter),
                callback::iternext_slot(channel_iternext),
                callback::len_slot(channel_len),
            ],
        ),
        buffer: ClassDef::new::<BufferHandle>(
            c"subinterp.Buffer",
            c"Shared memory; memoryview(buf) gives a view of it.",
            Vec::new(),
            vec![callback::getset_def(
                c"writable",
                c"Whether views of this handle are writable.",
                buffer_writable,
            )],
            vec![
                callback::getbuffer_slot(buffer_getbuffer),
                callback::len_slot(buffer_len),
            ],
        ),
    })
}

/// The definition of the `subinterp` module, registered like a host module: its state
/// holds its classes, then its exceptions, at the indices named above.
pub(crate) fn spec() -> ModuleSpec {
    let classes = classes();
    let exception = |name: &str, doc: &str| ExceptionSpec {
        name: name.into(),
        base: "Exception".into(),
        doc: doc.into(),
    };
    ModuleSpec {
        name: "subinterp".into(),
        doc: "Channels and shared buffers between the interpreters of this process.".into(),
        methods: vec![
            callback::method_def(c"id", c"id()\n--\n\nThis interpreter's id.", module_id),
            callback::method_def(
                c"channel",
                c"channel(name, capacity=None)\n--\n\nThe channel called name, shared by \
                  every interpreter and the host; created, unbounded unless capacity is \
                  given, if none of that name exists. A channel that is closed, drained \
                  and without handles anywhere is freed: its name then makes a new one.",
                module_channel,
            ),
            callback::method_def(
                c"buffer",
                c"buffer(size_or_bytes, writable=False)\n--\n\nA buffer of shared memory: \
                  send it through a channel and receivers get a memoryview over the same \
                  bytes, read-only unless writable=True. This handle's own views are always \
                  writable.",
                module_buffer,
            ),
            callback::method_def(
                c"_prepare_in_main",
                c"_prepare_in_main(name, path)\n--\n\nImports the module name in the main \
                  interpreter (with the str entries of path appended to its sys.path) \
                  unless that was done before; called by the module loaders of \
                  subinterpreters on CPython versions where loading an extension module \
                  there first crashes the process later. Never raises for the import \
                  itself.",
                module_prepare_in_main,
            ),
            callback::method_def(
                c"_guard_event",
                c"_guard_event(rule, refused)\n--\n\nCounts an event of guard rule number \
                  rule (refused or let through) in this interpreter's stats; called by \
                  its guard rails.",
                module_guard_event,
            ),
        ],
        functions: Vec::new(),
        classes: vec![
            ClassSpec {
                name: "Channel",
                def: &classes.channel,
            },
            ClassSpec {
                name: "Buffer",
                def: &classes.buffer,
            },
        ],
        exceptions: vec![
            exception(
                "ChannelClosed",
                "The channel is closed (and, for receives, drained).",
            ),
            exception("ChannelEmpty", "try_recv() found no message."),
            exception("ChannelFull", "try_send() found the channel full."),
            exception(
                "ReceiveError",
                "A message could not be rebuilt in this interpreter (e.g. its class is not \
                 importable here). The pickled bytes are in .pickled, the sender's type name \
                 in .type_name: the message is not lost.",
            ),
        ],
        constants: Vec::new(),
    }
}

// ---------------------------------------------------------------- module state

/// Entry `i` of the state of the `subinterp` module `module`.
fn entry<'py>(module: &PyObj<'py>, i: usize) -> Result<PyObj<'py>> {
    module::state_get(module, i)
        .ok_or_else(|| Error::InvalidArgument("the subinterp module is not initialised".into()))
}

/// Entry `i` of the state of the module that made the type of `obj`.
fn entry_of<'py>(obj: &PyObj<'py>, i: usize) -> Result<PyObj<'py>> {
    let module = class::defining_module(obj)
        .ok_or_else(|| Error::InvalidArgument("an object without its module".into()))?;
    entry(&module, i)
}

// ---------------------------------------------------------------- module functions

fn module_id<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "id", [])?;
    Ok(py.to_object(&Value::Int(py.interpreter_id()))?)
}

fn module_prepare_in_main<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    // The caller passes only the entries of `sys.path` that are UTF-8 text.
    let (name, path): (String, Vec<String>) =
        params::args(args, "_prepare_in_main", ["name", "path"])?;
    py.allow_threads(move || crate::hazards::prepare::prepare(&name, &path));
    Ok(py.none())
}

fn module_guard_event<'py>(
    py: Python<'py>,
    _: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (rule, Truth(refused)): (PyObj, Truth) =
        params::args(args, "_guard_event", ["rule", "refused"])?;
    let rule = rule
        .to_value()?
        .as_i64()
        .and_then(|i| usize::try_from(i).ok())
        .and_then(GuardRule::from_index)
        .ok_or_else(|| py.new_error(ExcKind::Value, "no such guard rule"))?;
    stats::with_current(py, |counters| counters.guard(rule, refused));
    let interpreter = py.interpreter_id();
    if refused {
        tracing::info!(
            interpreter,
            rule = rule.name(),
            "guard rail refused an action"
        );
    } else {
        tracing::debug!(
            interpreter,
            rule = rule.name(),
            "guard rail counted an action"
        );
    }
    Ok(py.none())
}

/// Counts a message sent by the code of the interpreter `py` runs.
fn count_sent(py: Python<'_>, bytes: u64) {
    stats::with_current(py, |counters| counters.sent(bytes));
}

/// Counts a message received by the code of the interpreter `py` runs, and rebuilds it.
fn received<'py>(slf: &PyObj<'py>, channel: &Channel, message: Message) -> Outcome<PyObj<'py>> {
    // What this interpreter lent and others have copied since is released here.
    lent::release_returned(slf.py());
    let bytes = message.payload_len();
    stats::with_current(slf.py(), |counters| counters.received(bytes));
    from_message(slf, channel, message)
}

fn module_channel<'py>(
    py: Python<'py>,
    module: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (name, capacity): (String, Option<PyObj>) =
        params::args(args, "channel", ["name", "capacity"])?;
    let capacity = match capacity.map(|c| c.to_value()) {
        None => None,
        Some(Ok(Value::Int(n))) if n >= 1 => Some(n as usize),
        Some(_) => {
            return Err(py
                .new_error(ExcKind::Value, "capacity must be an int >= 1 or None")
                .into())
        }
    };
    let channel = Channel::named_with(&name, capacity)?;
    let class = entry(module, CHANNEL_TYPE)?;
    Ok(class::new_instance(&classes().channel, &class, channel)?)
}

fn module_buffer<'py>(
    py: Python<'py>,
    module: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (source, Truth(writable)): (PyObj, Truth) =
        params::args(args, "buffer", ["size_or_bytes", "writable"])?;
    let source = &source;
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
    let class = entry(module, BUFFER_TYPE)?;
    Ok(new_buffer_object(&class, buffer, true)?)
}

// ---------------------------------------------------------------- Channel

/// The channel behind a Channel object.
fn channel_of(obj: &PyObj<'_>) -> Result<Channel> {
    class::value::<Channel>(obj)
        .cloned()
        .ok_or_else(|| Error::InvalidArgument("not a subinterp.Channel".into()))
}

/// Raises a channel's stop condition in Python: the module's own exception classes for
/// closed, empty and full channels.
fn stop_failure(slf: &PyObj<'_>, stop: Stop) -> Failure {
    let index = match stop {
        Stop::Closed => CLOSED_ERROR,
        Stop::Empty => EMPTY_ERROR,
        Stop::Full => FULL_ERROR,
        other => return Failure::Error(other.into_error()),
    };
    let message = stop.into_error().to_string();
    match entry_of(slf, index).and_then(|class| class.call(&[&slf.py().str(&message)?])) {
        Ok(exc) => {
            crate::raw::err::raise_instance(exc);
            Failure::Raised
        }
        Err(err) => Failure::Error(err),
    }
}

fn channel_send<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (obj, timeout): (PyObj, Option<Timeout>) = params::args(args, "send", ["obj", "timeout"])?;
    let timeout = timeout.map(|t| t.0);
    let channel = channel_of(slf)?;
    let message = to_message(slf, &channel, &obj)?;
    let bytes = message.payload_len();
    let message = match channel.try_send_message(message) {
        Ok(()) => {
            count_sent(py, bytes);
            return Ok(py.none());
        }
        Err((Stop::Full, message)) => message,
        Err((stop, _)) => return Err(stop_failure(slf, stop)),
    };
    let interrupt = wait::lookup(py);
    let deadline = wait::deadline_after(timeout);
    let mut message = message;
    loop {
        let until = wait_until(deadline, interrupt.is_some());
        let (result, late) = py.allow_threads(|| {
            let mut late = None;
            let result = channel.send_with(message, until, interrupt.as_deref(), &mut late);
            (result, late)
        });
        match result {
            Ok(()) => {
                count_sent(py, bytes);
                deliver_late_interrupt(py, late);
                break;
            }
            Err((Stop::TimedOut, back)) if until != deadline => {
                // A slice of the wait ended: Ctrl-C is raised now, else the wait goes on.
                py.check_signals()?;
                message = back;
            }
            Err((stop, _)) => return Err(stop_failure(slf, stop)),
        }
    }
    Ok(py.none())
}

/// How long a wait without interrupt state sleeps before it runs the pending signal
/// handlers.
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// Where one stretch of a blocking wait ends. In an interpreter of this crate, interrupts
/// wake the wait ([`wait::InterruptState`]): it sleeps until `deadline`. Anywhere else —
/// the main interpreter, where Ctrl-C arrives — a signal handler cannot wake it, so it
/// sleeps in slices of [`SIGNAL_SLICE`] and runs the handlers
/// ([`Python::check_signals`]) between them, as `queue.Queue.get()` reacts to Ctrl-C.
fn wait_until(deadline: Option<Instant>, interruptible: bool) -> Option<Instant> {
    if interruptible {
        return deadline;
    }
    let slice = Instant::now() + SIGNAL_SLICE;
    Some(deadline.map_or(slice, |d| d.min(slice)))
}

fn channel_try_send<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (obj,): (PyObj,) = params::args(args, "try_send", ["obj"])?;
    let channel = channel_of(slf)?;
    let message = to_message(slf, &channel, &obj)?;
    let bytes = message.payload_len();
    channel
        .try_send_message(message)
        .map_err(|(stop, _)| stop_failure(slf, stop))?;
    count_sent(py, bytes);
    Ok(py.none())
}

fn channel_recv<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let (timeout,): (Option<Timeout>,) = params::args(args, "recv", ["timeout"])?;
    let timeout = timeout.map(|t| t.0);
    let channel = channel_of(slf)?;
    let message = blocking_recv(py, &channel, timeout)?.map_err(|stop| stop_failure(slf, stop))?;
    received(slf, &channel, message)
}

/// Receives with the GIL released, interruptible by the interpreter's interrupts and, in
/// the main interpreter, by Ctrl-C (the outer error: what a signal handler raised).
fn blocking_recv(
    py: Python<'_>,
    channel: &Channel,
    timeout: Option<Duration>,
) -> Result<std::result::Result<Message, Stop>> {
    match channel.try_recv_message() {
        Ok(message) => return Ok(Ok(message)),
        Err(Stop::Empty) => {}
        Err(stop) => return Ok(Err(stop)),
    }
    let interrupt = wait::lookup(py);
    let deadline = wait::deadline_after(timeout);
    loop {
        let until = wait_until(deadline, interrupt.is_some());
        let (result, late) = py.allow_threads(|| {
            let mut late = None;
            let result = channel.recv_with(until, interrupt.as_deref(), &mut late);
            (result, late)
        });
        match result {
            Ok(message) => {
                deliver_late_interrupt(py, late);
                return Ok(Ok(message));
            }
            // A slice of the wait ended: Ctrl-C is raised now, else the wait goes on.
            Err(Stop::TimedOut) if until != deadline => py.check_signals()?,
            Err(stop) => return Ok(Err(stop)),
        }
    }
}

/// An interrupt that reached a wait just as it succeeded is not dropped: the message is
/// delivered and the interrupt raised at the next bytecode boundary.
fn deliver_late_interrupt(py: Python<'_>, late: Option<InterruptReason>) {
    if let Some(reason) = late {
        raise_soon(py, reason);
    }
}

fn channel_try_recv<'py>(
    _py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "try_recv", [])?;
    let channel = channel_of(slf)?;
    let message = channel
        .try_recv_message()
        .map_err(|stop| stop_failure(slf, stop))?;
    received(slf, &channel, message)
}

fn channel_close<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    params::args::<(), 0>(args, "close", [])?;
    channel_of(slf)?.close();
    Ok(py.none())
}

fn channel_name<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(match channel_of(slf)?.name() {
        Some(name) => py.str(name)?,
        None => py.none(),
    })
}

fn channel_capacity<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(py.to_object(&channel_of(slf)?.capacity().map_or(Value::None, Value::from))?)
}

fn channel_closed<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(py.to_object(&Value::Bool(channel_of(slf)?.is_closed()))?)
}

fn channel_repr<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    let channel = channel_of(slf)?;
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
    Ok(channel_of(slf)?.len())
}

fn channel_iter<'py>(_py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(slf.clone())
}

fn channel_iternext<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<Option<PyObj<'py>>> {
    let channel = channel_of(slf)?;
    match blocking_recv(py, &channel, None)? {
        Ok(message) => received(slf, &channel, message).map(Some),
        // End of iteration: a closed channel stops the loop without an exception.
        Err(Stop::Closed) => Ok(None),
        Err(stop) => Err(stop_failure(slf, stop)),
    }
}

// ---------------------------------------------------------------- Buffer

fn new_buffer_object<'py>(
    class: &PyObj<'py>,
    buffer: SharedBuffer,
    writable: bool,
) -> Result<PyObj<'py>> {
    class::new_instance(&classes().buffer, class, BufferHandle { buffer, writable })
}

fn buffer_handle<'a>(obj: &'a PyObj<'_>) -> Result<&'a BufferHandle> {
    class::value::<BufferHandle>(obj)
        .ok_or_else(|| Error::InvalidArgument("not a subinterp.Buffer".into()))
}

fn buffer_getbuffer<'a>(_py: Python<'_>, obj: &'a PyObj<'_>) -> Outcome<Export<'a>> {
    let handle = buffer_handle(obj)?;
    Ok(Export {
        mem: handle.buffer.mem(),
        start: handle.buffer.start(),
        len: handle.buffer.len(),
        writable: handle.writable,
    })
}

fn buffer_len(_py: Python<'_>, obj: &PyObj<'_>) -> Outcome<usize> {
    Ok(buffer_handle(obj)?.buffer.len())
}

fn buffer_writable<'py>(py: Python<'py>, slf: &PyObj<'py>) -> Outcome<PyObj<'py>> {
    Ok(py.to_object(&Value::Bool(buffer_handle(slf)?.writable))?)
}

// ---------------------------------------------------------------- messages

/// Turns a Python object into a message: a shared buffer as is, plain data as a Value,
/// anything else pickled. `slf` is the channel, whose module's types are used.
fn to_message<'py>(slf: &PyObj<'py>, channel: &Channel, obj: &PyObj<'py>) -> Result<Message> {
    let py = slf.py();
    // What this interpreter lent and others have copied since is released here.
    lent::release_returned(py);
    // Exact scalars cross as they are: one number is cheaper to copy than to encode.
    if let Some(value) = exact_scalar(obj) {
        return Ok(Message::Value(value));
    }
    if let Some(buffer) = shared_buffer(obj)? {
        return Ok(Message::Buffer(buffer));
    }
    // A large bytes is lent: the receiver copies it straight from the sender's object.
    if let Some(lent) = LentBytes::lend(obj, LEND_MIN_BYTES) {
        return Ok(Message::Lent(Lent(lent)));
    }
    // Bytes reuse a buffer the receiving side gave back, so that a steady stream of
    // messages does not allocate in one thread and free in another.
    let mut buffer = channel.reuse_buffer();
    if copy_bytes(obj, &mut buffer) {
        return Ok(Message::Value(Value::Bytes(buffer)));
    }
    // Only the exact plain types cross natively, in the wire format: a subclass (an
    // IntEnum member, an OrderedDict, a namedtuple) or any other object anywhere in it,
    // and a structure that contains itself, are pickled with it, so that it arrives as
    // what was sent.
    // Shared buffers inside go beside the data, in its out-of-band table.
    let mut outside = SendBuffers(Vec::new());
    match wire::encode_with(obj, Mode::Exact, buffer, Some(&mut outside)) {
        Ok(bytes) => Ok(Message::Encoded(Encoded::with_buffers(bytes, outside.0))),
        Err(err @ Error::Python(_)) => Err(err),
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

/// `obj` as a [`Value`] when it is `None`, or exactly a `bool`, an `int` that fits 64 bits
/// or a `float` (a subclass is not: it is pickled, to arrive as what was sent).
fn exact_scalar(obj: &PyObj<'_>) -> Option<Value> {
    if obj.is_none() {
        return Some(Value::None);
    }
    if let Some(b) = exact_bool(obj) {
        return Some(Value::Bool(b));
    }
    if let Some(n) = exact_int(obj) {
        return Some(Value::Int(n));
    }
    exact_float(obj).map(Value::Float)
}

/// The shared memory `obj` is, for a `subinterp.buffer` or a memoryview of one; `None`
/// for any other object but a memoryview, which is refused (its memory is not shared).
fn shared_buffer(obj: &PyObj<'_>) -> Result<Option<SharedBuffer>> {
    if let Some(handle) = class::value::<BufferHandle>(obj) {
        return Ok(Some(handle.buffer.clone()));
    }
    if !obj.is_memoryview() {
        return Ok(None);
    }
    if let Ok(base) = obj.getattr("obj") {
        if let Some(handle) = class::value::<BufferHandle>(&base) {
            return view_message(obj, &handle.buffer).map(Some);
        }
    }
    Err(obj.py().new_error(
        ExcKind::Type,
        "cannot send a memoryview of anything but a subinterp.buffer (shared memory): \
         send bytes(view) to send a copy of what it shows",
    ))
}

/// The out-of-band table of a message being written: the shared buffers met in it.
struct SendBuffers(Vec<SharedBuffer>);

impl<'py> wire::OutOfBand<'py> for SendBuffers {
    fn write(&mut self, obj: &PyObj<'py>) -> Result<Option<u64>> {
        Ok(shared_buffer(obj)?.map(|buffer| {
            self.0.push(buffer);
            self.0.len() as u64 - 1
        }))
    }

    fn read(&mut self, _index: u64) -> Result<PyObj<'py>> {
        Err(Error::Conversion("a message being sent is not read".into()))
    }
}

/// The out-of-band table of a message being read: each entry becomes a view.
struct ReceiveBuffers<'a, 'py> {
    slf: &'a PyObj<'py>,
    buffers: &'a [SharedBuffer],
}

impl<'py> wire::OutOfBand<'py> for ReceiveBuffers<'_, 'py> {
    fn write(&mut self, _obj: &PyObj<'py>) -> Result<Option<u64>> {
        Ok(None)
    }

    fn read(&mut self, index: u64) -> Result<PyObj<'py>> {
        let buffer = usize::try_from(index)
            .ok()
            .and_then(|i| self.buffers.get(i))
            .ok_or_else(|| {
                Error::Conversion("malformed wire data: no such shared buffer".into())
            })?;
        buffer_view(self.slf, buffer.clone())
    }
}

/// The part of a shared buffer that the memoryview `view` of it shows: the same memory,
/// not a copy, read-only if the view is. A view whose bytes are not one contiguous block
/// (a strided slice such as `[::2]`) is refused: sharing its bytes would need a copy,
/// which would silently stop sharing the memory.
fn view_message(view: &PyObj<'_>, buffer: &SharedBuffer) -> Result<SharedBuffer> {
    let py = view.py();
    let info = view_info(view)?;
    if !info.contiguous {
        return Err(py.new_error(
            ExcKind::Type,
            "cannot send a non-contiguous view of a shared buffer (a strided slice): only \
             a contiguous slice crosses as shared memory; send bytes(view) to send a copy \
             of what it shows",
        ));
    }
    let start = buffer
        .mem()
        .offset_of(info.addr, info.len)
        .filter(|start| {
            *start >= buffer.start() && start + info.len <= buffer.start() + buffer.len()
        })
        .ok_or_else(|| {
            py.new_error(
                ExcKind::Value,
                "the memoryview shows memory outside its shared buffer",
            )
        })?;
    let plain = info.format == "B" && info.shape.len() == 1;
    let layout = (!plain).then_some(Layout {
        format: info.format,
        shape: info.shape,
    });
    Ok(buffer.window(
        start,
        info.len,
        buffer.is_writable() && !info.readonly,
        layout,
    ))
}

/// Rebuilds a message as a Python object of this interpreter.
fn from_message<'py>(slf: &PyObj<'py>, channel: &Channel, message: Message) -> Outcome<PyObj<'py>> {
    let py = slf.py();
    match message {
        Message::Value(Value::Bytes(data)) => {
            let obj = py.to_object_bytes(&data);
            channel.recycle_buffer(data);
            Ok(obj?)
        }
        Message::Value(value) => Ok(py.to_object(&value)?),
        Message::Encoded(encoded) => {
            let mut outside = ReceiveBuffers {
                slf,
                buffers: encoded.buffers(),
            };
            let obj = wire::decode_with(py, encoded.as_bytes(), Some(&mut outside));
            channel.recycle_buffer(encoded.into_bytes());
            Ok(obj?)
        }
        Message::Buffer(buffer) => Ok(buffer_view(slf, buffer)?),
        Message::Lent(lent) => Ok(lent.0.into_object(py)?),
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
                    Err(receive_error(slf, &type_name, &reason, &pickled))
                }
            }
        }
    }
}

/// A memoryview of a shared buffer, in this interpreter, with the layout the sender's
/// view had.
fn buffer_view<'py>(slf: &PyObj<'py>, buffer: SharedBuffer) -> Result<PyObj<'py>> {
    let py = slf.py();
    let writable = buffer.is_writable();
    let layout = buffer.layout().map(|l| (l.format.clone(), l.shape.clone()));
    let handle = new_buffer_object(&entry_of(slf, BUFFER_TYPE)?, buffer, writable)?;
    let view = handle.memoryview()?;
    match layout {
        // The layout the sender's view had (a cast, several dimensions).
        Some((format, shape)) => {
            let format = py.str(&format)?;
            // `cast` takes no shape with a zero in it; one dimension needs none.
            if shape.len() == 1 || shape.contains(&0) {
                view.call_method("cast", &[&format])
            } else {
                let shape = Value::List(shape.into_iter().map(Value::from).collect());
                view.call_method("cast", &[&format, &py.to_object(&shape)?])
            }
        }
        None => Ok(view),
    }
}

/// Raises `ReceiveError` carrying the pickled bytes and the type name.
fn receive_error<'py>(
    slf: &PyObj<'py>,
    type_name: &str,
    reason: &str,
    pickled: &PyObj<'py>,
) -> Failure {
    let build = || -> Result<PyObj<'py>> {
        let py = slf.py();
        let class = entry_of(slf, RECEIVE_ERROR)?;
        let message = py.str(&format!(
            "cannot rebuild a received {type_name} object in this interpreter ({reason}); \
             the pickled message is kept in this exception's .pickled attribute"
        ))?;
        let exc = class.call(&[&message])?;
        exc.setattr("pickled", pickled)?;
        exc.setattr("type_name", &py.str(type_name)?)?;
        Ok(exc)
    };
    match build() {
        Ok(exc) => {
            crate::raw::err::raise_instance(exc);
            Failure::Raised
        }
        Err(err) => Failure::Error(err),
    }
}
