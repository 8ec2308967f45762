//! Binding the arguments of a call from Python to named parameters, shared by the
//! `subinterp` module and host functions.

use crate::error::{Error, Result};
use crate::raw::callback::FastArgs;
use crate::raw::PyObj;

/// A `TypeError` about a call of `function`, worded as Python words its own.
pub(crate) fn type_error(function: &str, message: impl std::fmt::Display) -> Error {
    Error::python("builtins.TypeError", format!("{function}() {message}"))
}

/// Puts each argument of a call of `function` in the slot of its parameter (`names`, in
/// order, each positional or keyword). Too many positional arguments, an unknown keyword
/// and a parameter given twice are `TypeError`s; slots left `None` were not given.
pub(crate) fn bind<'py, S: AsRef<str>>(
    function: &str,
    names: &[S],
    args: &FastArgs<'_, 'py>,
    slots: &mut [Option<PyObj<'py>>],
) -> Result<()> {
    let arity = slots.len().min(names.len());
    let n = args.positional_len();
    if n > arity {
        return Err(type_error(
            function,
            format_args!(
                "takes {arity} positional argument{} but {n} were given",
                if arity == 1 { "" } else { "s" }
            ),
        ));
    }
    for (i, slot) in slots.iter_mut().enumerate().take(n) {
        *slot = args.positional(i);
    }
    for k in 0..args.keyword_len() {
        let key = args.keyword_name(k).unwrap_or("");
        let Some(index) = names[..arity].iter().position(|p| p.as_ref() == key) else {
            return Err(type_error(
                function,
                format_args!("got an unexpected keyword argument '{key}'"),
            ));
        };
        if slots[index].is_some() {
            return Err(type_error(
                function,
                format_args!("got multiple values for argument '{key}'"),
            ));
        }
        slots[index] = args.keyword_value(k);
    }
    Ok(())
}

/// The error for a required parameter left out.
pub(crate) fn missing(function: &str, name: &str) -> Error {
    type_error(function, format_args!("missing required argument '{name}'"))
}
