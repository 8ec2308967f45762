//! The audited core: the only place in the crate that touches the CPython C API, and the
//! only `unsafe` code (`#![deny(unsafe_code)]` holds everywhere else).
//!
//! It holds generic mechanisms only, no features, and imports nothing of the crate but
//! [`crate::error`] and [`crate::value`]:
//! - [`Python`], a token proving that one particular interpreter's GIL is held by the
//!   current thread, branded with an invariant lifetime so that objects of one
//!   interpreter cannot be used under another's token, and [`PyObj`], an owned reference
//!   tied to that brand ([`object`]);
//! - live exceptions: fetched, kept for the callback that fetched them, raised again
//!   faithfully ([`err`]);
//! - the conversion between [`Value`](crate::value::Value) and Python objects
//!   ([`convert`]), and between Python objects and the wire format ([`wire`]);
//! - the only `extern "C"` functions: one generic trampoline per C slot signature, which
//!   catches panics and raises errors ([`callback`]);
//! - native classes whose instances own a Rust value ([`class`]) and module definitions
//!   with per-interpreter state, static or made at run time ([`module`]);
//! - process start-up and shut-down, and the thread states of subinterpreters
//!   ([`lifecycle`]); the memory behind shared buffers ([`buffer`]); ending the process
//!   with a chosen status on a fatal signal ([`fatal`]); large `bytes` lent across
//!   interpreters until the receiver copied them ([`lent`]);
//! - memory accounting per interpreter, hooks around CPython's allocators ([`alloc`]),
//!   and the CPU clock of a thread ([`cputime`]);
//! - `sys._current_frames()` and `sys._current_exceptions()` limited to the calling
//!   interpreter's threads ([`threads`]).

pub(crate) mod alloc;
pub(crate) mod buffer;
pub(crate) mod callback;
pub(crate) mod class;
pub(crate) mod convert;
pub(crate) mod cputime;
pub(crate) mod err;
pub(crate) mod fatal;
pub(crate) mod lent;
pub(crate) mod lifecycle;
pub(crate) mod module;
mod object;
pub(crate) mod threads;
pub(crate) mod wire;

pub(crate) use object::ExcKind;
pub use object::{PyObj, Python};
