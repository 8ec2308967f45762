//! [`Value`]: the data that crosses interpreters.
//!
//! Python objects never leave the interpreter that made them. What crosses is a copy of
//! their data in the [wire format](wire), one flat buffer rebuilt as fresh objects on the
//! other side; a Rust host reads and writes it as a `Value`, plain Rust data.

pub(crate) mod de;
mod ser;
pub mod wire;

use std::fmt;

pub use num_bigint::BigInt;

pub use de::from_value;
pub use ser::to_value;

/// Data that can cross between interpreters and the host.
///
/// | Python | `Value` |
/// |---|---|
/// | `None` | [`Value::None`] |
/// | `bool` | [`Value::Bool`] |
/// | `int` in the `i64` range | [`Value::Int`] |
/// | any other `int` | [`Value::BigInt`] (exact, any size) |
/// | `float` | [`Value::Float`] |
/// | `str` | [`Value::Str`] |
/// | `bytes`, `bytearray` | [`Value::Bytes`] |
/// | `list` | [`Value::List`] |
/// | `tuple` | [`Value::Tuple`] |
/// | `dict` | [`Value::Dict`] (insertion order kept) |
///
/// Subclasses convert as their base type (an `IntEnum` member becomes an `int`, an
/// `OrderedDict` a `dict`). Anything else is refused with [`Error::Unshareable`]
/// naming the type. Channels are stricter: they send natively only objects of exactly
/// these types (and `bytearray`, which a Python receiver gets as a `bytearray`), and
/// pickle anything else, subclasses included, so that Python receivers get what was sent
/// ([`Message::Pickled`] for a Rust receiver).
///
/// Values cross in the [wire format](wire), which [`wire::encode`] and [`wire::decode`]
/// write and read.
///
/// [`Message::Pickled`]: crate::Message::Pickled
///
/// An integer is [`Value::Int`] whenever it fits in `i64`; [`Value::BigInt`] holds only
/// integers outside that range. The constructors in this crate keep that rule;
/// [`Value::normalize_int`] restores it for values built by hand.
///
/// With serde, typed Rust data converts in and out: see [`to_value`] and [`from_value`].
///
/// [`Error::Unshareable`]: crate::Error::Unshareable
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// `None`.
    #[default]
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An `int` that fits in `i64`.
    Int(i64),
    /// An `int` outside the `i64` range.
    BigInt(BigInt),
    /// A `float`.
    Float(f64),
    /// A `str`.
    Str(String),
    /// `bytes` (or `bytearray`, which arrives as `bytes`).
    Bytes(Vec<u8>),
    /// A `list`.
    List(Vec<Value>),
    /// A `tuple`.
    Tuple(Vec<Value>),
    /// A `dict`, as key/value pairs in insertion order.
    Dict(Vec<(Value, Value)>),
}

impl Value {
    /// The Python type this value becomes: `"int"`, `"str"`, `"dict"`, ...
    pub fn python_type(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
        }
    }

    /// An integer value, [`Value::Int`] when it fits in `i64`.
    pub fn from_bigint(n: BigInt) -> Value {
        match i64::try_from(&n) {
            Ok(small) => Value::Int(small),
            Err(_) => Value::BigInt(n),
        }
    }

    /// Turns a [`Value::BigInt`] that fits in `i64` into [`Value::Int`], recursively.
    pub fn normalize_int(self) -> Value {
        match self {
            Value::BigInt(n) => Value::from_bigint(n),
            Value::List(items) => {
                Value::List(items.into_iter().map(Value::normalize_int).collect())
            }
            Value::Tuple(items) => {
                Value::Tuple(items.into_iter().map(Value::normalize_int).collect())
            }
            Value::Dict(items) => Value::Dict(
                items
                    .into_iter()
                    .map(|(k, v)| (k.normalize_int(), v.normalize_int()))
                    .collect(),
            ),
            other => other,
        }
    }

    /// True for [`Value::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// The integer, if this is an `int` that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(n) => Some(*n),
            Value::BigInt(n) => i64::try_from(n).ok(),
            _ => None,
        }
    }

    /// The float; integers convert.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(n) => Some(*n as f64),
            _ => None,
        }
    }

    /// The string, if this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is a `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of a `list` or `tuple`.
    pub fn as_slice(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) | Value::Tuple(items) => Some(items),
            _ => None,
        }
    }

    /// Looks a key up in a `dict` whose keys are strings.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts into a typed Rust value with serde; shorthand for [`from_value`].
    pub fn deserialize_into<T: serde::de::DeserializeOwned>(self) -> crate::error::Result<T> {
        from_value(self)
    }
}

/// Python's `repr` of the value, so it reads the way Python prints it.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(f: &mut fmt::Formatter<'_>, items: &[Value]) -> fmt::Result {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{item}")?;
            }
            Ok(())
        }
        match self {
            Value::None => f.write_str("None"),
            Value::Bool(true) => f.write_str("True"),
            Value::Bool(false) => f.write_str("False"),
            Value::Int(n) => write!(f, "{n}"),
            Value::BigInt(n) => write!(f, "{n}"),
            Value::Float(x) if x.is_nan() => f.write_str("nan"),
            Value::Float(x) if x.is_infinite() => {
                f.write_str(if *x > 0.0 { "inf" } else { "-inf" })
            }
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 1e16 => write!(f, "{x:.1}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) => {
                f.write_str("b'")?;
                for &byte in b {
                    match byte {
                        b'\\' => f.write_str("\\\\")?,
                        b'\'' => f.write_str("\\'")?,
                        b'\n' => f.write_str("\\n")?,
                        b'\r' => f.write_str("\\r")?,
                        b'\t' => f.write_str("\\t")?,
                        0x20..=0x7e => write!(f, "{}", byte as char)?,
                        _ => write!(f, "\\x{byte:02x}")?,
                    }
                }
                f.write_str("'")
            }
            Value::List(items) => {
                f.write_str("[")?;
                seq(f, items)?;
                f.write_str("]")
            }
            Value::Tuple(items) => {
                f.write_str("(")?;
                seq(f, items)?;
                if items.len() == 1 {
                    f.write_str(",")?;
                }
                f.write_str(")")
            }
            Value::Dict(items) => {
                f.write_str("{")?;
                for (i, (k, v)) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

macro_rules! from_small_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                Value::Int(i64::from(n))
            }
        }
    )*};
}
from_small_int!(i8, i16, i32, i64, u8, u16, u32);

macro_rules! from_wide_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(n: $t) -> Self {
                match i64::try_from(n) {
                    Ok(small) => Value::Int(small),
                    Err(_) => Value::BigInt(BigInt::from(n)),
                }
            }
        }
    )*};
}
from_wide_int!(u64, i128, u128, usize, isize);

impl From<BigInt> for Value {
    fn from(n: BigInt) -> Self {
        Value::from_bigint(n)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<f32> for Value {
    fn from(x: f32) -> Self {
        Value::Float(f64::from(x))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value::Bytes(b.to_vec())
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(items: Vec<T>) -> Self {
        Value::List(items.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::None, Into::into)
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Self {
        Value::None
    }
}
