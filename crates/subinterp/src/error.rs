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
    /// A blocking operation's timeout passed.
    #[error("timed out")]
    Timeout,
    /// The work was cancelled: a task, or a blocking operation inside one. This is the
    /// one way the library says "cancelled"; [`Error::interrupted`] makes it from an
    /// [`InterruptReason`].
    #[error("the task was cancelled")]
    Cancelled,
    /// A blocking operation was interrupted by a deadline (always
    /// [`InterruptReason::Timeout`]: a cancellation is [`Error::Cancelled`]).
    #[error("interrupted ({0:?})")]
    Interrupted(InterruptReason),
    /// A pool worker could not be set up — its interpreter could not be created, its
    /// initializer raised, or set-up ran past its deadline — and the pool has no worker
    /// left to run tasks. Every queued and later task fails with this error, which holds
    /// the last set-up failure (for an initializer, its Python exception).
    #[error("the pool has no workers left: setting one up failed: {0}")]
    Setup(#[source] Arc<Error>),
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
            Error::Timeout => f.write_str("Timeout"),
            Error::Cancelled => f.write_str("Cancelled"),
            Error::Interrupted(reason) => f.debug_tuple("Interrupted").field(reason).finish(),
            Error::Setup(cause) => match cause.as_python() {
                // The set-up failure's own exception, as Python prints it.
                Some(exc) => {
                    f.write_str("a pool worker could not be set up:\n")?;
                    write_python(exc, f)
                }
                None => f.debug_tuple("Setup").field(cause).finish(),
            },
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
    /// The error for a wait ended by `reason`: [`Error::Cancelled`] for a cancellation,
    /// [`Error::Interrupted`] for a deadline.
    pub fn interrupted(reason: InterruptReason) -> Error {
        match reason {
            InterruptReason::Cancelled => Error::Cancelled,
            InterruptReason::Timeout => Error::Interrupted(InterruptReason::Timeout),
        }
    }

    /// The Python exception, if this error is one.
    ///
    /// For [`Error::Setup`], the exception of the set-up failure it holds.
    pub fn as_python(&self) -> Option<&PyException> {
        match self {
            Error::Python(exc) => Some(exc),
            Error::Setup(cause) => cause.as_python(),
            _ => None,
        }
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
            Error::Interrupted(InterruptReason::Timeout)
        ));
    }
}
