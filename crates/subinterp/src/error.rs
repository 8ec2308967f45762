//! The one error type of the crate, and the snapshot of a Python exception.

use std::fmt;
use std::sync::Arc;

/// Everything that can go wrong in `subinterp`.
///
/// Python exceptions raised by user code arrive as [`Error::Python`], with a
/// [`PyException`] snapshot that owns plain data only, so it can be sent between threads
/// and outlive the interpreter it came from.
///
/// `Debug` prints a Python exception as Python does — its traceback, then its type and
/// message — so `fn main() -> subinterp::Result<()>` reports an uncaught one readably;
/// the other variants print as derived.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Python code raised an exception.
    #[error("{0}")]
    Python(Box<PyException>),
    /// The interpreter was closed (explicitly, by drop, or because its thread ended).
    #[error("the interpreter is closed")]
    Closed,
    /// An interpreter configuration that CPython would refuse.
    #[error("invalid interpreter configuration: {0}")]
    InvalidConfig(String),
    /// CPython could not create the interpreter.
    #[error("could not create the interpreter: {0}")]
    CreateFailed(String),
    /// The Python runtime is already initialised in this process.
    #[error("the Python runtime is already initialised in this process; use Runtime::current()")]
    AlreadyInitialized,
    /// The Python runtime was finalised; CPython cannot be initialised again in this process.
    #[error("the Python runtime was finalised and cannot be initialised again in this process")]
    Finalized,
    /// CPython failed to initialise.
    #[error("could not initialise Python: {0}")]
    InitFailed(String),
    /// A Python object that cannot cross interpreters as a [`Value`](crate::Value).
    #[error("{type_name} objects cannot cross interpreters as values{}", detail_suffix(.detail))]
    Unshareable {
        /// Qualified name of the object's type, e.g. `builtins.set`.
        type_name: String,
        /// Where in the value it was found, or why it was refused.
        detail: String,
    },
    /// A Rust value could not be converted to or from a [`Value`](crate::Value) (serde).
    #[error("value conversion failed: {0}")]
    Conversion(String),
    /// An argument out of range or inconsistent with the object it applies to (a write
    /// past the end of a buffer, a channel opened with another capacity). Raised in
    /// Python as `ValueError`.
    #[error("{0}")]
    InvalidArgument(String),
    /// Memory could not be allocated (say, for a very large shared buffer). Raised in
    /// Python as `MemoryError`.
    #[error("{0}")]
    OutOfMemory(String),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A target such as `module:function` could not be parsed.
    #[error("invalid call target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An interpreter operation was called from that interpreter's own thread (inside
    /// [`Interpreter::with_gil`](crate::Interpreter::with_gil)), or from a host function
    /// of another interpreter that the first is itself waiting for (A calls into B, whose
    /// host function calls back into A): it would wait for itself forever.
    #[error("an interpreter cannot wait for itself: this operation was called from inside one of its own operations, directly or through a host function of another interpreter that it is waiting for")]
    WouldDeadlock,
    /// The channel is closed (and, for receives, drained).
    #[error("the channel is closed")]
    ChannelClosed,
    /// `try_recv` found no message.
    #[error("the channel is empty")]
    ChannelEmpty,
    /// `try_send` found the channel full.
    #[error("the channel is full")]
    ChannelFull,
    /// A deadline passed: a call's or a task's, a pool's set-up deadline, or the timeout
    /// of a blocking operation (a channel's `recv`, say). This is the one way the library
    /// says "timed out".
    ///
    /// When Python code was running at the deadline and was stopped by the `TimeoutError`
    /// the library raised in it, `exception` is that exception, with the traceback of
    /// where the code was ([`Error::as_python`] returns it); `None` when no Python code was
    /// stopped (the work never started, or was blocked in C code).
    #[error("{message}")]
    Timeout {
        /// What ran past which deadline.
        message: String,
        /// The `TimeoutError` that stopped the Python code, if it did.
        exception: Option<Box<PyException>>,
    },
    /// The work was cancelled: a task, or a blocking operation inside one. This is the
    /// one way the library says "cancelled"; [`Error::interrupted`] makes it or
    /// [`Error::Timeout`] from an [`InterruptReason`].
    #[error("the task was cancelled")]
    Cancelled,
    /// An error of the host's own code, kept as it is (its `Display` is the message, and
    /// [`std::error::Error::source`] gives it back). Host functions return their own
    /// error types with `?` through [`ExternalError`] and [`ExternalResult`]; raised in
    /// Python as `RuntimeError`. To raise a chosen Python class, use [`Error::python`].
    #[error("{0}")]
    External(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A pool worker could not be set up — its interpreter could not be created, its
    /// initializer raised, or set-up ran past its deadline — and the pool has no worker
    /// left to run tasks. Every queued and later task fails with this error, which holds
    /// the last set-up failure (for an initializer, its Python exception).
    #[error("the pool has no workers left: setting one up failed: {0}")]
    Setup(#[source] Arc<Error>),
    /// The worker process running a task died (a crash, an abort, killed for memory) or
    /// could not be started: the message names the signal or the exit status. Only the
    /// task it ran fails; the pool replaces the process. Raised in Python as
    /// `RuntimeError`.
    #[error("{0}")]
    WorkerDied(String),
    /// Rust code running on an interpreter's thread panicked; the interpreter survives.
    #[error("a Rust closure panicked on the interpreter's thread: {0}")]
    Panic(String),
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Python(exc) => write_python(exc, f),
            Error::Closed => f.write_str("Closed"),
            Error::InvalidConfig(s) => f.debug_tuple("InvalidConfig").field(s).finish(),
            Error::CreateFailed(s) => f.debug_tuple("CreateFailed").field(s).finish(),
            Error::AlreadyInitialized => f.write_str("AlreadyInitialized"),
            Error::Finalized => f.write_str("Finalized"),
            Error::InitFailed(s) => f.debug_tuple("InitFailed").field(s).finish(),
            Error::Unshareable { type_name, detail } => f
                .debug_struct("Unshareable")
                .field("type_name", type_name)
                .field("detail", detail)
                .finish(),
            Error::Conversion(s) => f.debug_tuple("Conversion").field(s).finish(),
            Error::InvalidArgument(s) => f.debug_tuple("InvalidArgument").field(s).finish(),
            Error::OutOfMemory(s) => f.debug_tuple("OutOfMemory").field(s).finish(),
            Error::Io { path, source } => f
                .debug_struct("Io")
                .field("path", path)
                .field("source", source)
                .finish(),
            Error::InvalidTarget { target, reason } => f
                .debug_struct("InvalidTarget")
                .field("target", target)
                .field("reason", reason)
                .finish(),
            Error::WouldDeadlock => f.write_str("WouldDeadlock"),
            Error::ChannelClosed => f.write_str("ChannelClosed"),
            Error::ChannelEmpty => f.write_str("ChannelEmpty"),
            Error::ChannelFull => f.write_str("ChannelFull"),
            Error::Timeout {
                message,
                exception: Some(exc),
            } => {
                writeln!(f, "{message}:")?;
                write_python(exc, f)
            }
            Error::Timeout { message, .. } => f.debug_tuple("Timeout").field(message).finish(),
            Error::Cancelled => f.write_str("Cancelled"),
            Error::External(err) => f.debug_tuple("External").field(err).finish(),
            Error::Setup(cause) => match cause.as_python() {
                // The set-up failure's own exception, as Python prints it.
                Some(exc) => {
                    f.write_str("a pool worker could not be set up:\n")?;
                    write_python(exc, f)
                }
                None => f.debug_tuple("Setup").field(cause).finish(),
            },
            Error::WorkerDied(s) => f.debug_tuple("WorkerDied").field(s).finish(),
            Error::Panic(s) => f.debug_tuple("Panic").field(s).finish(),
        }
    }
}

/// An exception as Python prints it uncaught: the traceback (chained exceptions
/// included), or the type and message of one that has none.
fn write_python(exc: &PyException, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let text = exc.traceback.trim_end_matches('\n');
    if text.is_empty() {
        write!(f, "{exc}")
    } else {
        f.write_str(text)
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

/// Short for `std::result::Result<T, subinterp::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error for work ended by `reason`: [`Error::Cancelled`] for a cancellation,
    /// [`Error::Timeout`] (with a generic message) for a deadline.
    pub fn interrupted(reason: InterruptReason) -> Error {
        match reason {
            InterruptReason::Cancelled => Error::Cancelled,
            InterruptReason::Timeout => Error::timeout("timed out"),
        }
    }

    /// [`Error::Timeout`] saying what ran past which deadline, no Python code stopped.
    pub fn timeout(message: impl Into<String>) -> Error {
        Error::Timeout {
            message: message.into(),
            exception: None,
        }
    }

    /// [`Error::Timeout`] for Python code stopped at its deadline by `exception`, the
    /// `TimeoutError` raised in it; an exception without a message is given `message`.
    pub(crate) fn timeout_in_python(message: String, mut exception: Box<PyException>) -> Error {
        if exception.message.is_empty() {
            exception.message.clone_from(&message);
        }
        Error::Timeout {
            message,
            exception: Some(exception),
        }
    }

    /// An error raised in Python as an exception of the class `type_name`: a built-in one
    /// (`"builtins.KeyError"`, or just `"KeyError"`) or any class loaded in the
    /// interpreter, such as a [`HostModule::exception`](crate::HostModule::exception)
    /// (`"game.NotFound"`). A class that is not found there (or does not take a message)
    /// is raised as `RuntimeError` naming it.
    pub fn python(type_name: impl Into<String>, message: impl Into<String>) -> Error {
        let type_name = type_name.into();
        let type_name = if type_name.contains('.') {
            type_name
        } else {
            format!("builtins.{type_name}")
        };
        Error::Python(Box::new(PyException::new(type_name, message.into())))
    }

    /// [`Error::External`] holding `err`, an error of the host's own code.
    ///
    /// ```
    /// let err = subinterp::Error::external(std::io::Error::other("disk full"));
    /// assert_eq!(err.to_string(), "disk full");
    /// ```
    pub fn external(err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Error {
        Error::External(err.into())
    }

    /// The Python exception, if this error is one.
    ///
    /// For [`Error::Timeout`], the `TimeoutError` that stopped Python code at its deadline;
    /// for [`Error::Setup`], the exception of the set-up failure it holds.
    pub fn as_python(&self) -> Option<&PyException> {
        match self {
            Error::Python(exc) => Some(exc),
            Error::Timeout {
                exception: Some(exc),
                ..
            } => Some(exc),
            Error::Setup(cause) => cause.as_python(),
            _ => None,
        }
    }

    /// True for [`Error::Timeout`], or an [`Error::Setup`] that failed on its deadline.
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Setup(cause) => cause.is_timeout(),
            _ => false,
        }
    }

    /// The Python exception class an error that is not a Python exception is raised as,
    /// and its message. (A [`Error::Python`], and a [`Error::Timeout`] holding the
    /// exception that stopped Python code, are raised as themselves.)
    pub(crate) fn python_class(&self) -> (ExceptionClass, String) {
        use ExceptionClass::{Builtin, Subinterp};
        match self {
            Error::ChannelClosed => (Subinterp("ChannelClosed"), self.to_string()),
            Error::ChannelEmpty => (Subinterp("ChannelEmpty"), self.to_string()),
            Error::ChannelFull => (Subinterp("ChannelFull"), self.to_string()),
            Error::Timeout { .. } => (Builtin("TimeoutError"), self.to_string()),
            Error::Cancelled => (Builtin("KeyboardInterrupt"), self.to_string()),
            Error::Unshareable { .. } => (Builtin("TypeError"), self.to_string()),
            // The exception's type says it is about conversion; the prefix would repeat it.
            Error::Conversion(message) | Error::InvalidArgument(message) => {
                (Builtin("ValueError"), message.clone())
            }
            Error::OutOfMemory(message) => (Builtin("MemoryError"), message.clone()),
            other => (Builtin("RuntimeError"), other.to_string()),
        }
    }
}

/// The one wording of a deadline that passed: `"the task ran past its deadline of 0.300
/// s"` for `what` = `"the task"`.
pub(crate) fn past_deadline(what: &str, limit: Option<std::time::Duration>) -> String {
    match limit {
        Some(limit) => format!(
            "{what} ran past its deadline of {:.3} s",
            limit.as_secs_f64()
        ),
        None => format!("{what} ran past its deadline"),
    }
}

/// Where the class of a raised [`Error`] lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExceptionClass {
    /// A built-in exception, by name.
    Builtin(&'static str),
    /// An exception class of the `subinterp` module, by name.
    Subinterp(&'static str),
}

/// Turns errors of the host's own code into [`Error::External`], so a host function can
/// use `?` on them: `do_io().map_err(|e| e.into_error())?`, or shorter, through
/// [`ExternalResult::into_error`].
pub trait ExternalError {
    /// This error as an [`Error::External`].
    fn into_error(self) -> Error;
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> ExternalError for E {
    fn into_error(self) -> Error {
        Error::External(self.into())
    }
}

/// [`ExternalError`] for a `Result`: `std::fs::read(path).into_error()?`.
///
/// ```
/// use subinterp::ExternalResult;
/// fn first_line(path: &str) -> subinterp::Result<String> {
///     let text = std::fs::read_to_string(path).into_error()?;
///     Ok(text.lines().next().unwrap_or("").to_owned())
/// }
/// let err = first_line("/no/such/file").unwrap_err();
/// assert!(matches!(err, subinterp::Error::External(_)));
/// ```
pub trait ExternalResult<T> {
    /// The error, if any, as an [`Error::External`].
    fn into_error(self) -> Result<T>;
}

impl<T, E: ExternalError> ExternalResult<T> for std::result::Result<T, E> {
    fn into_error(self) -> Result<T> {
        self.map_err(ExternalError::into_error)
    }
}

impl Error {
    /// For a `SystemExit` raised by Python code, the exit status `python` would give
    /// ([`ExitStatus`]): `sys.exit()` → 0, `sys.exit(3)` → 3, `sys.exit("bye")` → 1.
    pub fn exit_code(&self) -> Option<i32> {
        self.as_python().and_then(PyException::exit_code)
    }
}

impl From<PyException> for Error {
    fn from(exc: PyException) -> Self {
        Error::Python(Box::new(exc))
    }
}

/// A Python exception, copied out of the interpreter that raised it.
///
/// Holds the qualified type name (`builtins.ValueError`, `json.decoder.JSONDecodeError`),
/// the message (`str(exc)`), the traceback formatted exactly as Python prints it (chained
/// exceptions included), and the explicit (`__cause__`) and implicit (`__context__`)
/// chain as snapshots of their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyException {
    /// Qualified type name: `module.QualName` (`builtins.` for built-in exceptions).
    pub type_name: String,
    /// `str(exception)`.
    pub message: String,
    /// The full traceback text as `traceback.format_exception` renders it.
    pub traceback: String,
    /// `__cause__` (`raise ... from cause`).
    pub cause: Option<Box<PyException>>,
    /// `__context__` (the exception being handled when this one was raised).
    pub context: Option<Box<PyException>>,
    /// For a `SystemExit` (or a subclass): how `python` would end on it, uncaught. `None`
    /// for every other exception.
    pub exit: Option<ExitStatus>,
}

/// How `python` ends on an uncaught `SystemExit`, following its `code` attribute, as
/// `sys.exit(code)` does:
///
/// | `code`                              | status | printed to stderr |
/// |-------------------------------------|--------|-------------------|
/// | `None` (`sys.exit()`), `False`, `0` | 0      | nothing           |
/// | another integer (`3`, `True`)       | itself | nothing           |
/// | anything else (`"0"`, `""`, `"bye"`)| 1      | `str(code)`       |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// The process exit status `python` would give. An integer that does not fit a C
    /// `long` gives -1, as in CPython; like `exit(3)`, the operating system keeps only
    /// the low 8 bits.
    pub code: i32,
    /// For a code that is neither `None` nor an integer: its `str()`, which `python`
    /// prints to standard error (without a traceback) before exiting with status 1.
    pub message: Option<String>,
}

impl PyException {
    /// A snapshot of an exception that was never raised: no traceback beyond its own
    /// line, no chain.
    pub fn new(type_name: impl Into<String>, message: impl Into<String>) -> PyException {
        let type_name = type_name.into();
        let message = message.into();
        let traceback = if message.is_empty() {
            format!("{type_name}\n")
        } else {
            format!("{type_name}: {message}\n")
        };
        PyException {
            type_name,
            message,
            traceback,
            cause: None,
            context: None,
            exit: None,
        }
    }

    /// True when the exception's type name is `name` or `builtins.name`.
    pub fn is(&self, name: &str) -> bool {
        self.type_name == name
            || self
                .type_name
                .strip_prefix("builtins.")
                .is_some_and(|short| short == name)
    }

    /// For a `SystemExit`, the exit status `python` would give ([`ExitStatus::code`]).
    pub fn exit_code(&self) -> Option<i32> {
        self.exit.as_ref().map(|exit| exit.code)
    }

    /// The type name without the `builtins.` prefix for built-in exceptions.
    pub fn short_type_name(&self) -> &str {
        self.type_name
            .strip_prefix("builtins.")
            .unwrap_or(&self.type_name)
    }
}

impl fmt::Display for PyException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.type_name)
        } else {
            write!(f, "{}: {}", self.type_name, self.message)
        }
    }
}

impl std::error::Error for PyException {}

/// The `code` attribute of a `SystemExit`, as read from the exception.
pub(crate) enum SystemExitCode {
    /// The attribute could not be read.
    Missing,
    /// `None` (`sys.exit()`).
    None,
    /// An integer, as a C `long` (-1 for one that does not fit, as in CPython).
    Int(std::os::raw::c_long),
    /// Anything else, by its `str()`.
    Other(String),
}

impl ExitStatus {
    /// How `python` ends on an uncaught `SystemExit` with this `code` (see
    /// `_Py_HandleSystemExit` in CPython's `pythonrun.c`).
    pub(crate) fn of(code: SystemExitCode) -> ExitStatus {
        let (code, message) = match code {
            SystemExitCode::Missing => (1, None),
            SystemExitCode::None => (0, None),
            // C's `(int)` conversion, as CPython does.
            SystemExitCode::Int(value) => (value as i32, None),
            SystemExitCode::Other(text) => (1, Some(text)),
        };
        ExitStatus { code, message }
    }
}

/// Why a wait was interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptReason {
    /// A deadline passed: Python code sees `TimeoutError`.
    Timeout,
    /// The work was cancelled: Python code sees `KeyboardInterrupt` (a `BaseException`, so
    /// `except Exception` blocks do not swallow it).
    Cancelled,
}

impl InterruptReason {
    pub(crate) fn code(self) -> u8 {
        match self {
            InterruptReason::Timeout => 1,
            InterruptReason::Cancelled => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(InterruptReason::Timeout),
            2 => Some(InterruptReason::Cancelled),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_has_one_error() {
        assert!(matches!(
            Error::interrupted(InterruptReason::Cancelled),
            Error::Cancelled
        ));
        assert!(matches!(
            Error::interrupted(InterruptReason::Timeout),
            Error::Timeout {
                exception: None,
                ..
            }
        ));
    }
}
