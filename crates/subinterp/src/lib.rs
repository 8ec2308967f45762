//! Run Python code in many isolated CPython subinterpreters inside one process.
//!
//! # Core concepts
//!
//! - [`Runtime`]: CPython itself, started once per process with a [`RuntimeConfig`] and
//!   finalised when the last handle (and the last interpreter) is gone — or, started by
//!   [`Runtime::get_or_init`], kept until the process ends.
//! - [`Interpreter`]: one subinterpreter with its own modules, builtins and `sys`, owned
//!   by a dedicated OS thread. Built from an [`InterpreterConfig`]: the `isolated` preset
//!   (the default) gives it its own GIL, so interpreters run Python in parallel.
//! - [`Value`]: the data that crosses between interpreters and the host — copies, never
//!   shared objects. With serde, typed Rust values convert in and out ([`to_value`],
//!   [`from_value`]).
//! - [`Error`]: one error type; a Python exception arrives as a [`PyException`] snapshot
//!   with its type, message, traceback and chain.
//! - [`HostModule`]: a Python module of native Rust functions (closures taking typed
//!   arguments), exception classes and constants, registered on the [`RuntimeConfig`]
//!   and importable in every interpreter, each with its own module object. A function
//!   gets a [`Caller`]: which interpreter called, its host data
//!   ([`InterpreterConfig::host_data`]), Python code to call back, and
//!   [`Caller::blocking`] to wait with the GIL released and stay interruptible.
//! - [`Python`] and [`PyObj`]: low-level access on an interpreter's own thread
//!   ([`Interpreter::with_gil`]). The token's lifetime brands the objects made under it,
//!   so an object can never be used by another interpreter.
//!
//! # Quick start
//!
//! ```
//! use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};
//!
//! let rt = Runtime::get_or_init(&RuntimeConfig::new())?;
//! let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;
//! interp.exec("def greet(name):\n    return f'hello, {name}'")?;
//! let greeting = interp.call("__main__:greet", ("world",))?;
//! assert_eq!(greeting, Value::from("hello, world"));
//!
//! let err = interp.eval("1 / 0").unwrap_err();
//! assert_eq!(err.as_python().unwrap().type_name, "builtins.ZeroDivisionError");
//! # Ok::<(), subinterp::Error>(())
//! ```
//!
//! # In a crate of your own
//!
//! Add the `subinterp-build` helper to `[build-dependencies]` and call
//! `subinterp_build::link()` from the crate's `build.rs`: its binaries and tests then find
//! `libpython` without `LD_LIBRARY_PATH`. The build links against the Python named by
//! `PYO3_PYTHON` (or the first `python3` on `PATH`), which must be CPython 3.12+ with a
//! shared `libpython`; the README's "Using subinterp from your own crate" has the details
//! and what deploying the binary takes.
//!
//! # What is process-wide
//!
//! Interpreters do not share Python objects, but they share the process: the current
//! directory, environment variables, file descriptors, signals and locale. They are not
//! a security boundary, and a crash in one (a faulty extension module) ends the process.
//! [`Guards`] (on [`InterpreterConfig::guards`]) refuse or count, per interpreter, what
//! Python code does to that shared state — a guard rail against accidents, not a
//! boundary; [`Interpreter::stats`] and [`Pool::stats`] count what ran.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod audit;
mod builtin_module;
mod call;
mod channel;
pub mod check;
mod error;
pub mod guards;
pub mod hazards;
mod host;
mod interpreter;
mod names;
/// The engine of the Python package (`crates/subinterp-py`), built only into it.
#[cfg(feature = "extension-module")]
#[doc(hidden)]
pub mod package;
mod pool;
#[allow(unsafe_code)]
mod raw;
mod runtime;
pub mod seconds;
mod stats;
pub mod value;
mod wait;

pub use audit::{GuardAction, GuardRule, Guards};
pub use call::{parse_target, Args, Target};
pub use channel::buffer::SharedBuffer;
pub use channel::{select, Channel, Encoded, Message, RecvFuture};
pub use error::{Error, ExitStatus, ExternalError, ExternalResult, PyException, Result};
pub use host::{Caller, HostModule, Interrupt, Kwargs, Params};
pub use interpreter::config::{
    Gil, InterpreterConfig, MemoryPressure, SoftLimitAction, DEFAULT_SHUTDOWN_GRACE,
};
pub use interpreter::limits::parse_size;
pub use interpreter::{CallOptions, Interpreter, InterruptHandle, Output, CALL_GRACE};
pub use pool::{MapResults, Pool, PoolConfig, Task, TaskOptions};
pub use raw::{PyObj, Python};
pub use runtime::{Runtime, RuntimeConfig};
pub use stats::{GuardStats, Stats, StatsHandle};
pub use value::{from_value, to_value, Value};
pub use wait::InterruptReason;

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
