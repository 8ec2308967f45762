//! Binding the arguments of a call from Python to named, typed parameters: one
//! mechanism for host functions and the crate's own native functions (the built-in
//! `subinterp` module's, the package engine's).

use std::any::Any;
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::raw::callback::FastArgs;
use crate::raw::convert::{exact_bool, exact_float, exact_int, scalar, utf8_str};
use crate::raw::{ExcKind, PyObj, Python};
use crate::seconds;
use crate::value::de::{from_scalar, Scalar};
use crate::value::{from_value, Value};

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

// ---------------------------------------------------------------- typed parameters

/// How the argument of one parameter is read: the parameter types of native functions,
/// the crate's own (the built-in module's, the package engine's) as host functions'
/// ([`Plain`]).
pub(crate) trait Param<'py>: Sized {
    /// Reads the argument of parameter `name` of `function`; `arg` is `None` when the
    /// call left it out.
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self>;
}

/// Any object; required.
impl<'py> Param<'py> for PyObj<'py> {
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        arg.ok_or_else(|| missing(function, name))
    }
}

/// Optional: left out or `None` gives `None`.
impl<'py, T: Param<'py>> Param<'py> for Option<T> {
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        match arg.filter(|obj| !obj.is_none()) {
            None => Ok(None),
            Some(obj) => T::read(function, name, Some(obj)).map(Some),
        }
    }
}

/// A `str`; required.
impl<'py> Param<'py> for String {
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        let obj = PyObj::read(function, name, arg)?;
        if let Some(text) = utf8_str(&obj) {
            return Ok(text);
        }
        if obj.is_instance(&obj.py().builtins()?.getattr("str")?)? {
            // Not UTF-8 (a lone surrogate): Python's own UnicodeEncodeError.
            return obj.extract_str();
        }
        Err(type_error(
            function,
            format_args!("argument '{name}' must be str, not {}", short_type(&obj)),
        ))
    }
}

/// A list of `str`, each UTF-8; required.
impl<'py> Param<'py> for Vec<String> {
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        let obj = PyObj::read(function, name, arg)?;
        let wrong = || {
            type_error(
                function,
                format_args!("argument '{name}' must be a list of str"),
            )
        };
        match obj.to_value() {
            Ok(Value::List(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::Str(text) => Ok(text),
                    _ => Err(wrong()),
                })
                .collect(),
            _ => Err(wrong()),
        }
    }
}

/// The name of `obj`'s type as Python's own messages give it: `int`, `mod.Class`.
fn short_type(obj: &PyObj<'_>) -> String {
    let name = obj.type_name();
    match name.strip_prefix("builtins.") {
        Some(short) => short.to_owned(),
        None => name,
    }
}

/// Truth, as `if arg:` tests it; left out is false.
pub(crate) struct Truth(pub bool);

impl<'py> Param<'py> for Truth {
    fn read(_: &str, _: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        match arg {
            Some(obj) => obj.is_true().map(Truth),
            None => Ok(Truth(false)),
        }
    }
}

/// A timeout in seconds, as `queue.Queue.get` and `threading.Lock.acquire` take it: a
/// non-negative `int` or `float` by the one rule of [`crate::seconds`], refused as
/// [`refuse_seconds`] words it. Optional as `Option<Timeout>`, where `None` means no
/// limit.
pub(crate) struct Timeout(pub Duration);

impl<'py> Param<'py> for Timeout {
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        let obj = PyObj::read(function, name, arg)?;
        match seconds_arg(obj.py(), Some(&obj), name, Secs::NonNegative)? {
            Some(duration) => Ok(Timeout(duration)),
            None => Err(missing(function, name)),
        }
    }
}

/// Which numbers of seconds a setting or an argument takes.
#[derive(Clone, Copy)]
pub(crate) enum Secs {
    /// Zero or more: a wait or a deadline that may be over at once.
    NonNegative,
    // Taken by the package's settings and `check()` only.
    #[cfg_attr(not(feature = "extension-module"), allow(dead_code))]
    /// More than zero.
    Positive,
}

/// Why a number of seconds from Python is refused, by the one rule ([`crate::seconds`]).
pub(crate) enum BadSeconds {
    /// Not an `int` or a `float` (a `bool` neither).
    Type,
    Value(seconds::SecondsError),
}

/// A number of seconds from Python: `None` is `None`.
pub(crate) fn seconds_value(
    value: &Value,
    rule: Secs,
) -> std::result::Result<Option<Duration>, BadSeconds> {
    let secs = match value {
        Value::None => return Ok(None),
        Value::Int(n) => *n as f64,
        Value::BigInt(n) if n.sign() == num_bigint::Sign::Minus => f64::NEG_INFINITY,
        Value::BigInt(_) => f64::INFINITY,
        Value::Float(f) => *f,
        _ => return Err(BadSeconds::Type),
    };
    let checked = match rule {
        Secs::NonNegative => seconds::non_negative(secs),
        Secs::Positive => seconds::positive(secs),
    };
    checked.map(Some).map_err(BadSeconds::Value)
}

/// The refusal of a number of seconds `what` (of type `type_name`), worded as
/// `threading.Lock.acquire` words its timeout's: not a number is a `TypeError`, negative
/// or NaN (with [`Secs::Positive`], zero too) a `ValueError`, past `threading.TIMEOUT_MAX`
/// an `OverflowError`.
pub(crate) fn refuse_seconds(
    py: Python<'_>,
    bad: BadSeconds,
    what: &str,
    rule: Secs,
    type_name: &str,
) -> Error {
    match bad {
        BadSeconds::Type => py.new_error(
            ExcKind::Type,
            &format!("{what} must be a number of seconds, not {type_name}"),
        ),
        BadSeconds::Value(seconds::SecondsError::TooLarge) => too_large(py, what),
        BadSeconds::Value(_) => py.new_error(
            ExcKind::Value,
            &match rule {
                Secs::NonNegative => format!("{what} must be a non-negative number"),
                Secs::Positive => format!("{what} must be more than 0 seconds"),
            },
        ),
    }
}

/// An argument in seconds ([`refuse_seconds`] says how it is refused).
pub(crate) fn seconds_arg(
    py: Python<'_>,
    obj: Option<&PyObj<'_>>,
    what: &str,
    rule: Secs,
) -> Result<Option<Duration>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    let parsed = match obj.to_value() {
        Ok(value) => seconds_value(&value, rule),
        Err(_) => Err(BadSeconds::Type), // not plain data: not a number either
    };
    parsed.map_err(|bad| {
        let type_name = obj.type_name();
        let type_name = type_name.strip_prefix("builtins.").unwrap_or(&type_name);
        refuse_seconds(py, bad, what, rule, type_name)
    })
}

/// The error of a timeout past [`seconds::MAX_SECONDS`].
pub(crate) fn too_large(py: Python<'_>, name: &str) -> Error {
    py.new_error(
        ExcKind::Overflow,
        &format!(
            "{name} value is too large (the longest is {} s)",
            seconds::MAX_SECONDS
        ),
    )
}

/// Plain data converted to `T` with serde: the parameters of host functions. A scalar is
/// read in place, anything else through a [`Value`]; left out is accepted where `None`
/// is (an `Option<T>`).
pub(crate) struct Plain<T>(pub T);

impl<'py, T: DeserializeOwned + 'static> Param<'py> for Plain<T> {
    fn read(function: &str, name: &str, arg: Option<PyObj<'py>>) -> Result<Self> {
        if let Some(value) = arg.as_ref().and_then(direct::<T>) {
            return Ok(Plain(value));
        }
        let Some(obj) = arg else {
            return from_value(Value::None)
                .map(Plain)
                .map_err(|_| missing(function, name));
        };
        let mismatch = |shown: &str, err: Error| {
            type_error(
                function,
                format_args!("argument '{name}': {shown} is not accepted ({err})"),
            )
        };
        if let Some(scalar) = scalar(&obj) {
            let shown = describe_scalar(&scalar);
            return from_scalar(scalar)
                .map(Plain)
                .map_err(|err| mismatch(shown, err));
        }
        let value = plain_value(function, name, &obj)?;
        let shown = describe(&value);
        from_value(value)
            .map(Plain)
            .map_err(|err| mismatch(shown, err))
    }
}

/// The argument of parameter `name` as a [`Value`]; an object that is not plain data is
/// a `TypeError` naming the parameter.
pub(crate) fn plain_value(function: &str, name: &str, obj: &PyObj<'_>) -> Result<Value> {
    obj.to_value().map_err(|err| match err {
        Error::Unshareable { type_name, .. } => type_error(
            function,
            format_args!(
                "argument '{name}' must be plain data (None, bool, int, float, str, bytes, \
                 list, tuple, dict), not {type_name}"
            ),
        ),
        other => other,
    })
}

/// `obj` as a `T` read straight from the object, for the commonest parameter types
/// (`i64` from an exact `int`, `f64` from an exact `float`, `bool`); `None` for any other
/// type or object, which then goes through serde with the same result. The type tests
/// are resolved at compile time.
#[inline(always)]
pub(crate) fn direct<T: 'static>(obj: &PyObj<'_>) -> Option<T> {
    let mut out: Option<T> = None;
    let slot: &mut dyn Any = &mut out;
    if let Some(slot) = slot.downcast_mut::<Option<i64>>() {
        *slot = exact_int(obj);
    } else if let Some(slot) = slot.downcast_mut::<Option<f64>>() {
        *slot = exact_float(obj);
    } else if let Some(slot) = slot.downcast_mut::<Option<bool>>() {
        *slot = exact_bool(obj);
    }
    out
}

fn describe_scalar(scalar: &Scalar<'_>) -> &'static str {
    match scalar {
        Scalar::None => "None",
        Scalar::Bool(_) => "a bool",
        Scalar::Int(_) => "an int",
        Scalar::Float(_) => "a float",
        Scalar::Str(_) => "a str",
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::BigInt(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a str",
        Value::Bytes(_) => "bytes",
        Value::List(_) => "a list",
        Value::Tuple(_) => "a tuple",
        Value::Dict(_) => "a dict",
    }
}

/// The arguments of a call bound to a tuple of parameter types, one per name.
pub(crate) trait Params<'py>: Sized {
    /// How many parameters.
    const ARITY: usize;
    /// Binds `args` to the parameters `names` of `function`.
    fn bind<S: AsRef<str>>(function: &str, names: &[S], args: &FastArgs<'_, 'py>) -> Result<Self>;
}

impl<'py> Params<'py> for () {
    const ARITY: usize = 0;
    fn bind<S: AsRef<str>>(function: &str, names: &[S], args: &FastArgs<'_, 'py>) -> Result<()> {
        bind(function, names, args, &mut [])
    }
}

macro_rules! params_tuple {
    ($n:literal: $($t:ident $v:ident $i:tt),+) => {
        impl<'py, $($t: Param<'py>),+> Params<'py> for ($($t,)+) {
            const ARITY: usize = $n;
            fn bind<S: AsRef<str>>(
                function: &str,
                names: &[S],
                args: &FastArgs<'_, 'py>,
            ) -> Result<Self> {
                let mut slots: [Option<PyObj<'py>>; $n] = std::array::from_fn(|_| None);
                bind(function, names, args, &mut slots)?;
                let [$($v),+] = slots;
                Ok(($(<$t as Param<'py>>::read(function, names[$i].as_ref(), $v)?,)+))
            }
        }
    };
}
params_tuple!(1: A a 0);
params_tuple!(2: A a 0, B b 1);
params_tuple!(3: A a 0, B b 1, C c 2);
params_tuple!(4: A a 0, B b 1, C c 2, D d 3);
params_tuple!(5: A a 0, B b 1, C c 2, D d 3, E e 4);
params_tuple!(6: A a 0, B b 1, C c 2, D d 3, E e 4, G g 5);
params_tuple!(7: A a 0, B b 1, C c 2, D d 3, E e 4, G g 5, H h 6);
params_tuple!(8: A a 0, B b 1, C c 2, D d 3, E e 4, G g 5, H h 6, I i 7);

/// The arguments of a call of `function` with parameters `names`, typed `P`.
pub(crate) fn args<'py, P: Params<'py>, const N: usize>(
    args: &FastArgs<'_, 'py>,
    function: &str,
    names: [&str; N],
) -> Result<P> {
    debug_assert_eq!(P::ARITY, N, "{function}: one name per parameter");
    P::bind(function, &names, args)
}
