//! The only place in the crate that touches the CPython C API.
//!
//! Everything outside this module is safe Rust. The module offers:
//! - [`Python`], a token proving that one particular interpreter's GIL is held by the
//!   current thread, branded with an invariant lifetime so that objects of one
//!   interpreter cannot be used under another's token;
//! - [`PyObj`], an owned reference to a Python object tied to that brand;
//! - process start-up and shut-down ([`lifecycle`]) and the thread states of
//!   subinterpreters ([`lifecycle::SubInterpreter`]);
//! - the conversion between [`Value`](crate::Value) and Python objects ([`convert`]).

pub(crate) mod buffer;
pub(crate) mod convert;
pub(crate) mod fatal;
pub(crate) mod lifecycle;
mod object;
pub(crate) mod pymodule;

pub use object::{PyObj, Python};
