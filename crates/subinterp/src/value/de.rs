//! Serde deserialization: a [`Value`] into typed Rust data, and a [`Value`] from any format.

use std::fmt;

use num_traits::ToPrimitive;
use serde::de::{
    self, Deserialize, DeserializeSeed, Deserializer, EnumAccess, Expected, IntoDeserializer,
    MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor,
};

use super::{BigInt, Value};

/// Converts a [`Value`] into any type that implements [`Deserialize`].
///
/// This is the reverse of [`to_value`](crate::to_value): structs read dicts with `str`
/// keys (unknown keys are ignored unless the struct says `deny_unknown_fields`), sequences
/// and tuples read lists or tuples, maps read dicts, and `Option` reads `None` as `None`.
/// An enum reads a `str` naming a unit variant, or a one-entry dict `{variant: content}`
/// for the other variant kinds. Where a float is expected an `int` is accepted too, and
/// where bytes are expected a list of ints in `0..=255` is accepted.
///
/// # Errors
///
/// [`Error::Conversion`](crate::error::Error::Conversion) when the value does not have the shape
/// of `T`. The message says what was expected, where, and what was found instead.
///
/// # Example
///
/// ```
/// use serde::Deserialize;
/// use subinterp::{from_value, Value};
///
/// #[derive(Deserialize, Debug, PartialEq)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// let value = Value::Dict(vec![
///     (Value::from("x"), Value::Float(0.5)),
///     (Value::from("y"), Value::Int(2)),
/// ]);
/// let point: Point = from_value(value)?;
/// assert_eq!(point, Point { x: 0.5, y: 2.0 });
///
/// let wrong = Value::Dict(vec![
///     (Value::from("x"), Value::from("left")),
///     (Value::from("y"), Value::Int(2)),
/// ]);
/// let err = from_value::<Point>(wrong).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     r#"value conversion failed: expected f64 for field `x`, found str "left""#,
/// );
/// # Ok::<(), subinterp::Error>(())
/// ```
pub fn from_value<T: de::DeserializeOwned>(value: Value) -> crate::error::Result<T> {
    T::deserialize(ValueDeserializer(value)).map_err(Into::into)
}

/// Reads any self-describing format into a [`Value`].
///
/// Integers outside the `i64` range become [`Value::BigInt`], sequences become
/// [`Value::List`], maps become [`Value::Dict`] with their order kept, unit and absent
/// options become [`Value::None`].
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// Builds a [`Value`] from whatever a self-describing deserializer finds.
struct ValueVisitor;

/// Upper bound on the capacity reserved from a size hint, so a lying hint costs little.
const MAX_PREALLOCATED: usize = 4096;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value that Python can represent")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }

    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value, D::Error> {
        Value::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOCATED));
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Value::Dict(entries))
    }
}

/// The error of the serde conversions, turned into
/// [`Error::Conversion`](crate::error::Error::Conversion) by [`to_value`](crate::to_value) and
/// [`from_value`].
///
/// It records where in the value it happened, as the path from the root, so the message
/// can say "expected u32 for field `people[2].age`".
#[derive(Debug)]
pub(super) struct Error {
    kind: ErrorKind,
    /// Innermost segment first: segments are added while the error travels outwards.
    path: Vec<Segment>,
}

#[derive(Debug)]
enum ErrorKind {
    /// A value of the wrong type or shape.
    Mismatch { expected: String, found: String },
    /// Anything else: missing or unknown fields, unknown variants, custom messages.
    Message(String),
}

/// One step of the path to the place an error happened.
#[derive(Debug)]
enum Segment {
    /// The value under this dict key (a struct field when the key is a `str`).
    Key(Value),
    /// The item at this position of a list or tuple.
    Index(usize),
}

impl Error {
    fn new(kind: ErrorKind) -> Self {
        Error {
            kind,
            path: Vec::new(),
        }
    }

    fn mismatch(expected: impl fmt::Display, found: String) -> Self {
        Error::new(ErrorKind::Mismatch {
            expected: expected.to_string(),
            found,
        })
    }

    /// The same error, one level further out: it happened inside `segment`.
    fn within(mut self, segment: Segment) -> Self {
        self.path.push(segment);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Mismatch { expected, found } => {
                write!(f, "expected {expected}")?;
                if let Some(outermost) = self.path.last() {
                    let place = match outermost {
                        Segment::Key(Value::Str(_)) => "field",
                        _ => "item",
                    };
                    write!(f, " for {place} `{}`", Path(&self.path))?;
                }
                write!(f, ", found {found}")
            }
            ErrorKind::Message(message) => {
                f.write_str(message)?;
                if !self.path.is_empty() {
                    write!(f, " (at `{}`)", Path(&self.path))?;
                }
                Ok(())
            }
        }
    }
}

/// Displays a path the way Rust and Python spell access to it: `jobs[2].args`.
struct Path<'a>(&'a [Segment]);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (depth, segment) in self.0.iter().rev().enumerate() {
            match segment {
                Segment::Key(Value::Str(name)) if crate::names::is_identifier(name) => {
                    if depth > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(name)?;
                }
                Segment::Key(key) => write!(f, "[{key}]")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<Error> for crate::error::Error {
    fn from(err: Error) -> Self {
        crate::error::Error::Conversion(err.to_string())
    }
}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(ErrorKind::Message(msg.to_string()))
    }
}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(ErrorKind::Message(msg.to_string()))
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Error::mismatch(expected, describe(unexpected))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Error::mismatch(expected, describe(unexpected))
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Self {
        Error::mismatch(expected, count(len, "item", "items"))
    }
}

/// `1 item`, `3 items`.
fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// How serde's description of an unexpected value reads in Python terms.
fn describe(unexpected: Unexpected<'_>) -> String {
    match unexpected {
        Unexpected::Bool(b) => format!("bool {}", Value::Bool(b)),
        Unexpected::Unsigned(n) => format!("int {n}"),
        Unexpected::Signed(n) => format!("int {n}"),
        Unexpected::Float(x) => format!("float {}", Value::Float(x)),
        Unexpected::Char(c) => format!("str {}", short_repr(c.encode_utf8(&mut [0; 4]))),
        Unexpected::Str(s) => format!("str {}", short_repr(s)),
        Unexpected::Bytes(_) => "bytes".to_owned(),
        Unexpected::Unit => "None".to_owned(),
        Unexpected::Seq => "list".to_owned(),
        Unexpected::Map => "dict".to_owned(),
        Unexpected::Other(other) => other.to_owned(),
        other => other.to_string(),
    }
}

/// The quoted string, shortened when long so messages stay readable.
fn short_repr(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    match s.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
        None => format!("{s:?}"),
    }
}

/// What serde should report when `value` is not what a visitor wanted.
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::None => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Int(n) => Unexpected::Signed(*n),
        Value::BigInt(_) => Unexpected::Other("int"),
        Value::Float(x) => Unexpected::Float(*x),
        Value::Str(s) => Unexpected::Str(s),
        Value::Bytes(b) => Unexpected::Bytes(b),
        Value::List(_) => Unexpected::Seq,
        Value::Tuple(_) => Unexpected::Other("tuple"),
        Value::Dict(_) => Unexpected::Map,
    }
}

/// The deserializer behind [`from_value`]: reads a [`Value`], consuming it.
struct ValueDeserializer(Value);

/// Hands an integer wider than `i64` to the narrowest visitor method that holds it.
fn visit_big_int<'de, V: Visitor<'de>>(n: &BigInt, visitor: V) -> Result<V::Value, Error> {
    if let Ok(small) = i64::try_from(n) {
        visitor.visit_i64(small)
    } else if let Ok(unsigned) = u64::try_from(n) {
        visitor.visit_u64(unsigned)
    } else if let Ok(wide) = i128::try_from(n) {
        visitor.visit_i128(wide)
    } else if let Ok(wide) = u128::try_from(n) {
        visitor.visit_u128(wide)
    } else {
        Err(de::Error::custom(format_args!(
            "the int {n} does not fit in any Rust integer type (at most 128 bits)"
        )))
    }
}

/// Visits the items of a list or tuple, and checks the visitor took them all.
fn visit_seq<'de, I, V>(items: I, visitor: V) -> Result<V::Value, Error>
where
    I: ExactSizeIterator<Item = Value>,
    V: Visitor<'de>,
{
    let total = items.len();
    let mut seq = SeqDeserializer { items, index: 0 };
    let out = visitor.visit_seq(&mut seq)?;
    if seq.items.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(total, &ItemCount(seq.index)))
    }
}

/// Visits the entries of a dict, and checks the visitor took them all.
fn visit_map<'de, V: Visitor<'de>>(
    entries: Vec<(Value, Value)>,
    visitor: V,
) -> Result<V::Value, Error> {
    let total = entries.len();
    let mut map = MapDeserializer {
        entries: entries.into_iter(),
        pending: None,
    };
    let out = visitor.visit_map(&mut map)?;
    let left = map.entries.len();
    if left == 0 {
        Ok(out)
    } else {
        Err(Error::mismatch(
            count(total - left, "dict entry", "dict entries"),
            count(total, "dict entry", "dict entries"),
        ))
    }
}

/// A sequence of exactly this many items, for length errors.
struct ItemCount(usize);

impl Expected for ItemCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&count(self.0, "item", "items"))
    }
}

/// The bytes, when `items` are all ints in `0..=255`.
fn small_ints_as_bytes(items: &[Value]) -> Option<Vec<u8>> {
    items
        .iter()
        .map(|item| match item {
            Value::Int(n) => u8::try_from(*n).ok(),
            _ => None,
        })
        .collect()
}

/// The error for a value that cannot be the enum `name`; `found` describes the value.
fn not_an_enum(name: &str, found: String) -> Error {
    Error::mismatch(
        format_args!(
            "enum {name} as a variant name (str) or a dict with one entry {{variant: content}}"
        ),
        found,
    )
}

impl<'de> Deserializer<'de> for ValueDeserializer {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::None => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(n) => visitor.visit_i64(n),
            Value::BigInt(n) => visit_big_int(&n, visitor),
            Value::Float(x) => visitor.visit_f64(x),
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::List(items) | Value::Tuple(items) => visit_seq(items.into_iter(), visitor),
            Value::Dict(entries) => visit_map(entries, visitor),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Int(n) => visitor.visit_f64(n as f64),
            Value::BigInt(n) => match n.to_f64() {
                Some(x) => visitor.visit_f64(x),
                None => Err(de::Error::invalid_type(Unexpected::Other("int"), &visitor)),
            },
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::None => visitor.visit_none(),
            other => visitor.visit_some(ValueDeserializer(other)),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::None => visitor.visit_unit(),
            other => Err(de::Error::invalid_type(unexpected(&other), &visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Bytes(b) => visitor.visit_byte_buf(b),
            Value::List(items) | Value::Tuple(items) => match small_ints_as_bytes(&items) {
                Some(bytes) => visitor.visit_byte_buf(bytes),
                None => visit_seq(items.into_iter(), visitor),
            },
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    /// Text is a `str`: `bytes` are refused, as Python keeps the two apart (serde's
    /// `String` would otherwise take any UTF-8 bytes).
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Bytes(b) => Err(de::Error::invalid_type(Unexpected::Bytes(&b), &visitor)),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_string(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Bytes(b) => visit_seq(b.into_iter().map(Value::from), visitor),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Str(variant) => visitor.visit_enum(EnumDeserializer {
                variant,
                content: None,
            }),
            Value::Dict(entries) => match <[(Value, Value); 1]>::try_from(entries) {
                Ok([(Value::Str(variant), content)]) => visitor.visit_enum(EnumDeserializer {
                    variant,
                    content: Some(content),
                }),
                Ok([(key, _)]) => Err(not_an_enum(
                    name,
                    format!("dict whose key is {}", key.python_type()),
                )),
                Err(entries) => Err(not_an_enum(
                    name,
                    format!("dict with {}", count(entries.len(), "entry", "entries")),
                )),
            },
            other => Err(not_an_enum(name, describe(unexpected(&other)))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        drop(self);
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 char map struct identifier
    }
}

/// The items of a list or tuple, handed to a visitor one by one.
struct SeqDeserializer<I> {
    items: I,
    /// Position of the next item, for error paths.
    index: usize,
}

impl<'de, I: ExactSizeIterator<Item = Value>> SeqAccess<'de> for SeqDeserializer<I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        seed.deserialize(ValueDeserializer(item))
            .map(Some)
            .map_err(|err| err.within(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a dict, handed to a visitor one by one.
struct MapDeserializer {
    entries: std::vec::IntoIter<(Value, Value)>,
    /// The value of the key just visited, with that key kept for error paths.
    pending: Option<(Value, Value)>,
}

impl<'de> MapAccess<'de> for MapDeserializer {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let visited = seed.deserialize(ValueDeserializer(key.clone()))?;
        self.pending = Some((key, value));
        Ok(Some(visited))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a dict value was requested before its key"))?;
        seed.deserialize(ValueDeserializer(value))
            .map_err(|err| err.within(Segment::Key(key)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An enum variant: its name, and its content unless it is a unit variant given as a `str`.
struct EnumDeserializer {
    variant: String,
    content: Option<Value>,
}

impl<'de> EnumAccess<'de> for EnumDeserializer {
    type Error = Error;
    type Variant = VariantDeserializer;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantDeserializer), Error> {
        let name: de::value::StrDeserializer<'_, Error> = self.variant.as_str().into_deserializer();
        let visited = seed.deserialize(name)?;
        Ok((
            visited,
            VariantDeserializer {
                variant: self.variant,
                content: self.content,
            },
        ))
    }
}

/// The content of an enum variant.
struct VariantDeserializer {
    variant: String,
    content: Option<Value>,
}

impl VariantDeserializer {
    /// Reads the content with `read`, or reports that a `kind` variant needs content.
    fn read<T>(
        self,
        kind: &str,
        read: impl FnOnce(ValueDeserializer) -> Result<T, Error>,
    ) -> Result<T, Error> {
        match self.content {
            Some(content) => read(ValueDeserializer(content))
                .map_err(|err| err.within(Segment::Key(Value::Str(self.variant)))),
            None => Err(Error::mismatch(
                format_args!(
                    "{kind} variant `{}` as a dict {{variant: content}}",
                    self.variant
                ),
                format!("str {}", short_repr(&self.variant)),
            )),
        }
    }
}

impl<'de> VariantAccess<'de> for VariantDeserializer {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.content {
            None | Some(Value::None) => Ok(()),
            Some(other) => Err(Error::mismatch(
                format_args!("unit variant `{}` with content None", self.variant),
                describe(unexpected(&other)),
            )
            .within(Segment::Key(Value::Str(self.variant)))),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.read("newtype", |content| seed.deserialize(content))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.read("tuple", |content| content.deserialize_tuple(len, visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.read("struct", |content| content.deserialize_any(visitor))
    }
}

/// A plain scalar read straight from a Python object, without building a [`Value`]: the
/// fast path of argument conversion. It deserializes exactly as the same [`Value`] would.
pub(crate) enum Scalar<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Scalar<'_> {
    fn into_value(self) -> Value {
        match self {
            Scalar::None => Value::None,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(n) => Value::Int(n),
            Scalar::Float(x) => Value::Float(x),
            Scalar::Str(s) => Value::Str(s.to_owned()),
        }
    }
}

/// Converts a scalar to `T`, as [`from_value`] converts the equal [`Value`].
pub(crate) fn from_scalar<T: de::DeserializeOwned>(scalar: Scalar<'_>) -> crate::error::Result<T> {
    T::deserialize(ScalarDeserializer(scalar)).map_err(Into::into)
}

struct ScalarDeserializer<'a>(Scalar<'a>);

impl ScalarDeserializer<'_> {
    fn value(self) -> ValueDeserializer {
        ValueDeserializer(self.0.into_value())
    }
}

macro_rules! through_value {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Error> {
                self.value().$method($($arg,)* visitor)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for ScalarDeserializer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Scalar::None => visitor.visit_unit(),
            Scalar::Bool(b) => visitor.visit_bool(b),
            Scalar::Int(n) => visitor.visit_i64(n),
            Scalar::Float(x) => visitor.visit_f64(x),
            Scalar::Str(s) => visitor.visit_str(s),
        }
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Scalar::Int(n) => visitor.visit_f64(n as f64),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Scalar::None => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value().deserialize_enum(name, variants, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value().deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value().deserialize_struct(name, fields, visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value().deserialize_unit_struct(name, visitor)
    }

    through_value! {
        deserialize_unit(),
        deserialize_bytes(),
        deserialize_byte_buf(),
        deserialize_seq(),
        deserialize_tuple(len: usize),
        deserialize_map(),
        deserialize_ignored_any(),
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 char str string identifier
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::value::to_value;

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    fn dict(entries: Vec<(Value, Value)>) -> Value {
        Value::Dict(entries)
    }

    fn message<T: de::DeserializeOwned + fmt::Debug>(value: Value) -> String {
        match from_value::<T>(value).unwrap_err() {
            crate::error::Error::Conversion(message) => message,
            other => panic!("not a conversion error: {other:?}"),
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Shape {
        Empty,
        Circle(f64),
        Segment(i32, i32),
        Rect { w: u32, h: u32 },
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Inner {
        label: String,
        weight: Option<f32>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Everything {
        id: u64,
        name: String,
        flag: bool,
        ratio: f64,
        tags: Vec<String>,
        nested: Vec<Vec<i16>>,
        maybe: Option<Inner>,
        nothing: Option<Inner>,
        counts: HashMap<String, u32>,
        by_id: BTreeMap<i64, Inner>,
        shapes: Vec<Shape>,
        pair: (u8, String, char),
        payload: Value,
        unit: (),
    }

    fn everything() -> Everything {
        Everything {
            id: u64::MAX,
            name: "job".into(),
            flag: true,
            ratio: 0.25,
            tags: vec!["a".into(), "b".into()],
            nested: vec![vec![1, -2], vec![]],
            maybe: Some(Inner {
                label: "x".into(),
                weight: Some(0.5),
            }),
            nothing: None,
            counts: [("one".to_owned(), 1), ("two".to_owned(), 2)].into(),
            by_id: [(
                -4,
                Inner {
                    label: "neg".into(),
                    weight: None,
                },
            )]
            .into(),
            shapes: vec![
                Shape::Empty,
                Shape::Circle(1.5),
                Shape::Segment(-1, 1),
                Shape::Rect { w: 3, h: 4 },
            ],
            pair: (7, "seven".into(), 'λ'),
            payload: Value::Bytes(vec![0, 1, 254, 255]),
            unit: (),
        }
    }

    #[test]
    fn a_nested_struct_round_trips() {
        let original = everything();
        let value = to_value(&original).unwrap();
        assert_eq!(
            value.get("id"),
            Some(&Value::BigInt(BigInt::from(u64::MAX)))
        );
        assert_eq!(
            value.get("pair"),
            Some(&Value::Tuple(vec![Value::Int(7), s("seven"), s("λ")]))
        );
        assert_eq!(
            value.get("payload"),
            Some(&Value::Bytes(vec![0, 1, 254, 255]))
        );
        let back: Everything = from_value(value).unwrap();
        assert_eq!(back, original);
    }

    #[test]
    fn integer_extremes_round_trip_through_big_int() {
        for n in [i128::MIN, i128::MAX, i128::from(i64::MIN) - 1] {
            let value = to_value(&n).unwrap();
            assert_eq!(value, Value::BigInt(BigInt::from(n)));
            assert_eq!(from_value::<i128>(value).unwrap(), n);
        }
        for n in [u128::MAX, u128::from(u64::MAX)] {
            let value = to_value(&n).unwrap();
            assert_eq!(value, Value::BigInt(BigInt::from(n)));
            assert_eq!(from_value::<u128>(value).unwrap(), n);
        }
        let value = to_value(&u64::MAX).unwrap();
        assert_eq!(value, Value::BigInt(BigInt::from(u64::MAX)));
        assert_eq!(from_value::<u64>(value.clone()).unwrap(), u64::MAX);
        assert_eq!(from_value::<Value>(value.clone()).unwrap(), value);
        assert_eq!(
            from_value::<i64>(Value::BigInt(BigInt::from(-3))).unwrap(),
            -3
        );
    }

    #[test]
    fn an_int_too_wide_for_rust_is_named_in_the_error() {
        let huge = BigInt::from(u128::MAX) + 1u8;
        let err = message::<u128>(Value::BigInt(huge.clone()));
        assert_eq!(
            err,
            format!("the int {huge} does not fit in any Rust integer type (at most 128 bits)")
        );
        let as_float: f64 = from_value(Value::BigInt(huge)).unwrap();
        assert_eq!(as_float, 2f64.powi(128));
    }

    #[test]
    fn an_int_out_of_the_target_range_is_refused() {
        assert_eq!(message::<u8>(Value::Int(300)), "expected u8, found int 300");
        assert_eq!(message::<u32>(Value::Int(-1)), "expected u32, found int -1");
    }

    #[test]
    fn field_order_is_kept() {
        #[derive(Serialize, Deserialize)]
        struct Ordered {
            zulu: u8,
            alpha: u8,
            mike: u8,
        }
        let value = to_value(&Ordered {
            zulu: 1,
            alpha: 2,
            mike: 3,
        })
        .unwrap();
        assert_eq!(value.to_string(), r#"{"zulu": 1, "alpha": 2, "mike": 3}"#);

        let from_json: Value =
            serde_json::from_str(r#"{"b": 1, "a": [2, {"z": 0, "y": 1}]}"#).unwrap();
        assert_eq!(
            from_json.to_string(),
            r#"{"b": 1, "a": [2, {"z": 0, "y": 1}]}"#
        );
    }

    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Person {
        name: String,
        age: u32,
    }

    #[test]
    fn a_type_mismatch_names_the_field_and_both_types() {
        let value = dict(vec![(s("name"), s("Ada")), (s("age"), s("thirty"))]);
        assert_eq!(
            message::<Person>(value),
            r#"expected u32 for field `age`, found str "thirty""#
        );
        assert_eq!(
            message::<Person>(s("Ada")),
            r#"expected struct Person, found str "Ada""#
        );
        let err = from_value::<Person>(Value::Int(3)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "value conversion failed: expected struct Person, found int 3"
        );
    }

    #[test]
    fn errors_give_the_path_through_lists_and_dicts() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Team {
            people: Vec<Person>,
        }
        let people = Value::List(vec![
            dict(vec![(s("name"), s("Ada")), (s("age"), Value::Int(36))]),
            dict(vec![(s("name"), s("Alan")), (s("age"), Value::Float(41.5))]),
        ]);
        let team = dict(vec![(s("people"), people.clone())]);
        assert_eq!(
            message::<Team>(team),
            "expected u32 for field `people[1].age`, found float 41.5"
        );
        assert_eq!(
            message::<Vec<Person>>(people),
            "expected u32 for item `[1].age`, found float 41.5"
        );
        let keyed = dict(vec![(
            Value::Int(5),
            dict(vec![(s("odd key"), Value::Bool(true))]),
        )]);
        assert_eq!(
            message::<HashMap<i32, HashMap<String, String>>>(keyed),
            r#"expected a string for item `[5]["odd key"]`, found bool True"#
        );
        let missing = dict(vec![(s("people"), Value::List(vec![dict(vec![])]))]);
        assert_eq!(
            message::<Team>(missing),
            "missing field `name` (at `people[0]`)"
        );
    }

    #[test]
    fn long_strings_are_shortened_in_messages() {
        let long = "x".repeat(100);
        assert_eq!(
            message::<i32>(s(&long)),
            format!("expected i32, found str {:?}...", "x".repeat(40))
        );
    }

    #[test]
    fn unknown_keys_follow_serde_rules() {
        let value = dict(vec![
            (s("name"), s("Ada")),
            (s("extra"), Value::List(vec![])),
            (s("age"), Value::Int(36)),
        ]);
        let person: Person = from_value(value.clone()).unwrap();
        assert_eq!((person.name.as_str(), person.age), ("Ada", 36));

        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Strict {
            name: String,
            age: u32,
        }
        assert_eq!(
            message::<Strict>(value),
            "unknown field `extra`, expected `name` or `age`"
        );
    }

    #[test]
    fn enums_read_names_and_one_entry_dicts() {
        assert_eq!(from_value::<Shape>(s("Empty")).unwrap(), Shape::Empty);
        assert_eq!(
            from_value::<Shape>(dict(vec![(s("Empty"), Value::None)])).unwrap(),
            Shape::Empty
        );
        assert_eq!(
            from_value::<Shape>(dict(vec![(s("Circle"), Value::Int(2))])).unwrap(),
            Shape::Circle(2.0)
        );
        assert_eq!(
            from_value::<Shape>(dict(vec![(
                s("Segment"),
                Value::List(vec![Value::Int(1), Value::Int(2)])
            )]))
            .unwrap(),
            Shape::Segment(1, 2)
        );
        assert_eq!(
            from_value::<Shape>(dict(vec![(
                s("Rect"),
                dict(vec![(s("h"), Value::Int(1)), (s("w"), Value::Int(2))])
            )]))
            .unwrap(),
            Shape::Rect { w: 2, h: 1 }
        );
    }

    #[test]
    fn malformed_enums_are_refused_clearly() {
        let expected = "expected enum Shape as a variant name (str) or a dict with one entry \
                        {variant: content}";
        assert_eq!(
            message::<Shape>(Value::Int(1)),
            format!("{expected}, found int 1")
        );
        assert_eq!(
            message::<Shape>(dict(vec![
                (s("Circle"), Value::Int(1)),
                (s("Empty"), Value::None)
            ])),
            format!("{expected}, found dict with 2 entries")
        );
        assert_eq!(
            message::<Shape>(dict(vec![(Value::Int(0), Value::None)])),
            format!("{expected}, found dict whose key is int")
        );
        assert_eq!(
            message::<Shape>(s("Square")),
            "unknown variant `Square`, expected one of `Empty`, `Circle`, `Segment`, `Rect`"
        );
        assert_eq!(
            message::<Shape>(s("Circle")),
            r#"expected newtype variant `Circle` as a dict {variant: content}, found str "Circle""#
        );
        assert_eq!(
            message::<Shape>(dict(vec![(
                s("Rect"),
                dict(vec![(s("w"), Value::Int(1)), (s("h"), s("tall"))])
            )])),
            r#"expected u32 for field `Rect.h`, found str "tall""#
        );
        assert_eq!(
            message::<Shape>(dict(vec![(s("Empty"), Value::Int(1))])),
            "expected unit variant `Empty` with content None for field `Empty`, found int 1"
        );
    }

    #[test]
    fn other_enum_representations_work() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(tag = "kind")]
        enum Tagged {
            Move { x: i32 },
            Stop,
        }
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        #[serde(untagged)]
        enum Loose {
            Number(i64),
            Text(String),
            Many(Vec<Loose>),
        }
        let moved = Tagged::Move { x: 3 };
        let value = to_value(&moved).unwrap();
        assert_eq!(value.to_string(), r#"{"kind": "Move", "x": 3}"#);
        assert_eq!(from_value::<Tagged>(value).unwrap(), moved);
        assert_eq!(
            from_value::<Tagged>(dict(vec![(s("kind"), s("Stop"))])).unwrap(),
            Tagged::Stop
        );
        let loose = Value::List(vec![Value::Int(1), s("two"), Value::Tuple(vec![])]);
        assert_eq!(
            from_value::<Loose>(loose).unwrap(),
            Loose::Many(vec![
                Loose::Number(1),
                Loose::Text("two".into()),
                Loose::Many(vec![])
            ])
        );
    }

    #[test]
    fn flattened_fields_work() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Outer {
            id: i32,
            #[serde(flatten)]
            rest: BTreeMap<String, Value>,
        }
        let value = dict(vec![
            (s("id"), Value::Int(1)),
            (s("a"), Value::Tuple(vec![Value::None])),
        ]);
        let outer: Outer = from_value(value.clone()).unwrap();
        assert_eq!(outer.rest.get("a"), Some(&Value::List(vec![Value::None])));
        assert_eq!(outer.id, 1);
    }

    /// Bytes read through `deserialize_bytes`, as `serde_bytes::ByteBuf` does.
    #[derive(Debug, PartialEq)]
    struct Blob(Vec<u8>);

    impl<'de> Deserialize<'de> for Blob {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
            struct BlobVisitor;
            impl Visitor<'_> for BlobVisitor {
                type Value = Blob;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                    Ok(Blob(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                    Ok(Blob(v))
                }
            }
            deserializer.deserialize_byte_buf(BlobVisitor)
        }
    }

    #[test]
    fn bytes_read_from_bytes_or_lists_of_small_ints() {
        assert_eq!(
            from_value::<Blob>(Value::Bytes(vec![0, 255])).unwrap(),
            Blob(vec![0, 255])
        );
        let small = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(255)]);
        assert_eq!(
            from_value::<Blob>(small.clone()).unwrap(),
            Blob(vec![1, 2, 255])
        );
        assert_eq!(
            message::<Blob>(Value::List(vec![Value::Int(256)])),
            "expected bytes, found list"
        );
        assert_eq!(
            message::<Blob>(s("abc")),
            r#"expected bytes, found str "abc""#
        );
        // Text is a str: bytes do not become a String, even valid UTF-8 ones.
        assert_eq!(
            message::<String>(Value::Bytes(b"abc".to_vec())),
            "expected a string, found bytes"
        );

        assert_eq!(from_value::<Vec<u8>>(small).unwrap(), vec![1, 2, 255]);
        assert_eq!(
            from_value::<Vec<u8>>(Value::Bytes(b"hi".to_vec())).unwrap(),
            b"hi".to_vec()
        );
        assert_eq!(
            from_value::<[u8; 2]>(Value::Bytes(vec![3, 4])).unwrap(),
            [3, 4]
        );
        assert_eq!(
            from_value::<Value>(Value::Bytes(vec![9])).unwrap(),
            Value::Bytes(vec![9])
        );
    }

    #[test]
    fn floats_accept_ints() {
        assert_eq!(from_value::<f64>(Value::Int(1)).unwrap(), 1.0);
        assert_eq!(from_value::<f32>(Value::Int(-2)).unwrap(), -2.0);
        assert_eq!(from_value::<f64>(Value::Float(0.5)).unwrap(), 0.5);
        assert_eq!(message::<f64>(s("1.0")), r#"expected f64, found str "1.0""#);
        assert_eq!(
            message::<i64>(Value::Float(1.0)),
            "expected i64, found float 1.0"
        );
    }

    #[test]
    fn none_unit_and_options() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Marker;
        assert_eq!(from_value::<()>(Value::None).unwrap(), ());
        assert_eq!(from_value::<Marker>(Value::None).unwrap(), Marker);
        assert_eq!(message::<()>(Value::Int(0)), "expected unit, found int 0");
        assert_eq!(from_value::<Option<u8>>(Value::None).unwrap(), None);
        assert_eq!(from_value::<Option<u8>>(Value::Int(4)).unwrap(), Some(4));
        assert_eq!(
            from_value::<Option<Option<u8>>>(Value::Int(4)).unwrap(),
            Some(Some(4))
        );
    }

    #[test]
    fn sequence_lengths_must_match() {
        let three = Value::Tuple(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
        assert_eq!(
            from_value::<(i32, i32, i32)>(three.clone()).unwrap(),
            (1, 2, 3)
        );
        assert_eq!(
            message::<(i32, i32)>(three),
            "expected 2 items, found 3 items"
        );
        assert_eq!(
            message::<(i32, i32)>(Value::List(vec![Value::Int(1)])),
            "expected a tuple of size 2, found 1 item"
        );
    }

    #[test]
    fn newtype_structs_read_their_content() {
        #[derive(Deserialize, Debug, PartialEq, Eq, Hash)]
        struct UserId(String);
        let value = dict(vec![(s("u1"), Value::Int(10))]);
        let map: HashMap<UserId, i32> = from_value(value).unwrap();
        assert_eq!(map.get(&UserId("u1".into())), Some(&10));
    }

    #[test]
    fn any_value_deserializes_into_a_value() {
        let value = dict(vec![
            (s("none"), Value::None),
            (
                s("list"),
                Value::List(vec![Value::Bool(true), Value::Float(1.5)]),
            ),
            (Value::Int(-1), Value::Bytes(vec![7])),
            (s("big"), Value::BigInt(BigInt::from(i128::MIN))),
        ]);
        assert_eq!(from_value::<Value>(value.clone()).unwrap(), value);
        assert_eq!(
            from_value::<Value>(Value::Tuple(vec![Value::Int(1)])).unwrap(),
            Value::List(vec![Value::Int(1)])
        );
        let from_json: Value = serde_json::from_str("[18446744073709551615, -1, null]").unwrap();
        assert_eq!(
            from_json,
            Value::List(vec![
                Value::BigInt(BigInt::from(u64::MAX)),
                Value::Int(-1),
                Value::None
            ])
        );
    }

    #[test]
    fn json_values_round_trip() {
        let json = serde_json::json!({
            "name": "run",
            "zeta": [1, -2, 3.5, true, null, "s", {"deep": []}],
            "alpha": {"b": 1, "a": 2},
            "max": u64::MAX,
            "min": i64::MIN,
            "empty": {},
        });
        let value = to_value(&json).unwrap();
        assert_eq!(
            value.get("max"),
            Some(&Value::BigInt(BigInt::from(u64::MAX)))
        );
        assert_eq!(
            value.to_string(),
            "{\"name\": \"run\", \"zeta\": [1, -2, 3.5, True, None, \"s\", {\"deep\": []}], \
             \"alpha\": {\"b\": 1, \"a\": 2}, \"max\": 18446744073709551615, \
             \"min\": -9223372036854775808, \"empty\": {}}"
        );
        let back: serde_json::Value = from_value(value.clone()).unwrap();
        assert_eq!(back, json);
        assert_eq!(
            serde_json::to_string(&back).unwrap(),
            serde_json::to_string(&json).unwrap()
        );
        assert_eq!(serde_json::to_value(&value).unwrap(), json);
    }

    #[test]
    fn error_display_marks_keys_that_are_not_identifiers() {
        let err = Error::mismatch("i32", "None".to_owned())
            .within(Segment::Key(s("0abc")))
            .within(Segment::Index(2))
            .within(Segment::Key(s("_ok1")));
        assert_eq!(
            err.to_string(),
            r#"expected i32 for field `_ok1[2]["0abc"]`, found None"#
        );
    }

    #[test]
    fn scalars_convert_exactly_as_the_equal_values_do() {
        use super::{from_scalar, Scalar};
        fn same<T: serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
            make: impl Fn() -> Scalar<'static>,
        ) {
            let by_value = from_value::<T>(make().into_value()).map_err(|e| e.to_string());
            let by_scalar = from_scalar::<T>(make()).map_err(|e| e.to_string());
            assert_eq!(by_scalar, by_value);
        }
        same::<i64>(|| Scalar::Int(-3));
        same::<u8>(|| Scalar::Int(300));
        same::<f64>(|| Scalar::Int(2));
        same::<f32>(|| Scalar::Float(0.5));
        same::<i64>(|| Scalar::Float(0.5));
        same::<bool>(|| Scalar::Bool(true));
        same::<String>(|| Scalar::Str("abc"));
        same::<char>(|| Scalar::Str("é"));
        same::<Option<i64>>(|| Scalar::None);
        same::<Option<i64>>(|| Scalar::Int(4));
        same::<()>(|| Scalar::None);
        same::<()>(|| Scalar::Int(1));
        same::<Vec<u8>>(|| Scalar::Str("x"));
        same::<Value>(|| Scalar::Str("v"));
        #[derive(serde::Deserialize, PartialEq, Debug)]
        enum Mode {
            Fast,
            Slow,
        }
        same::<Mode>(|| Scalar::Str("Fast"));
        same::<Mode>(|| Scalar::Str("Medium"));
        #[derive(serde::Deserialize, PartialEq, Debug)]
        struct Meters(f64);
        same::<Meters>(|| Scalar::Int(3));
    }
}
