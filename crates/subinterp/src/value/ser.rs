//! Serde serialization: typed Rust data into a [`Value`], and a [`Value`] into any format.

use num_bigint::BigInt;
use serde::ser::{self, Serialize};

use super::de::Error;
use super::Value;

/// Newtype name under which an integer wider than 128 bits is serialized as its decimal
/// string; [`to_value`] recognizes it and rebuilds the integer exactly.
const BIG_INT_TOKEN: &str = "$subinterp::private::BigInt";

/// Converts any [`Serialize`] value into a [`Value`].
///
/// Structs become dicts with `str` keys in field order, sequences become lists, tuples
/// become tuples, maps become dicts (keys of any kind, order kept), `Option::None` and
/// `()` become `None`. Enum variants follow serde's externally tagged form: a unit variant
/// is its name as a `str`, any other variant a one-entry dict `{name: content}`. Integers
/// outside the `i64` range become [`Value::BigInt`].
///
/// # Errors
///
/// [`Error::Conversion`](crate::error::Error::Conversion) when the value's `Serialize`
/// implementation reports an error.
///
/// # Example
///
/// ```
/// use serde::Serialize;
/// use subinterp::{to_value, Value};
///
/// #[derive(Serialize)]
/// struct Job {
///     name: String,
///     retries: u8,
///     tags: Vec<String>,
/// }
///
/// let job = Job { name: "resize".into(), retries: 3, tags: vec!["img".into()] };
/// let value = to_value(&job)?;
/// assert_eq!(value.get("retries"), Some(&Value::Int(3)));
/// assert_eq!(value.to_string(), r#"{"name": "resize", "retries": 3, "tags": ["img"]}"#);
/// # Ok::<(), subinterp::Error>(())
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> crate::error::Result<Value> {
    value.serialize(ValueSerializer).map_err(Into::into)
}

/// Serializes into a [`Value`] the way Python would hold the data.
///
/// `None` is unit, a tuple is a serde tuple (a sequence in most formats), a dict is a map
/// with keys of any kind. An integer outside the 128-bit range, which most formats cannot
/// represent, is serialized as a newtype struct wrapping its decimal string: formats such
/// as JSON write the string.
impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeSeq, SerializeTuple};

        match self {
            Value::None => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(n) => serializer.serialize_i64(*n),
            Value::BigInt(n) => serialize_big_int(n, serializer),
            Value::Float(x) => serializer.serialize_f64(*x),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Tuple(items) => {
                let mut tuple = serializer.serialize_tuple(items.len())?;
                for item in items {
                    tuple.serialize_element(item)?;
                }
                tuple.end()
            }
            Value::Dict(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// The narrowest integer type that holds `n`, or its decimal string beyond 128 bits.
fn serialize_big_int<S: ser::Serializer>(n: &BigInt, serializer: S) -> Result<S::Ok, S::Error> {
    if let Ok(small) = i64::try_from(n) {
        serializer.serialize_i64(small)
    } else if let Ok(unsigned) = u64::try_from(n) {
        serializer.serialize_u64(unsigned)
    } else if let Ok(wide) = i128::try_from(n) {
        serializer.serialize_i128(wide)
    } else if let Ok(wide) = u128::try_from(n) {
        serializer.serialize_u128(wide)
    } else {
        serializer.serialize_newtype_struct(BIG_INT_TOKEN, &n.to_string())
    }
}

/// The serializer behind [`to_value`]: every serde data type to its [`Value`].
struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = DictBuilder;
    type SerializeStruct = DictBuilder;
    type SerializeStructVariant = DictBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }

    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }

    fn serialize_i128(self, v: i128) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_u128(self, v: u128) -> Result<Value, Error> {
        Ok(Value::from(v))
    }

    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        Ok(Value::Float(f64::from(v)))
    }

    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        Ok(Value::Float(v))
    }

    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::Str(v.to_string()))
    }

    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::Str(v.to_owned()))
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::Bytes(v.to_vec()))
    }

    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::None)
    }

    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::None)
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, Error> {
        Ok(Value::None)
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
    ) -> Result<Value, Error> {
        Ok(Value::Str(variant.to_owned()))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        let inner = value.serialize(self)?;
        if name == BIG_INT_TOKEN {
            if let Value::Str(digits) = &inner {
                if let Ok(n) = digits.parse::<BigInt>() {
                    return Ok(Value::from_bigint(n));
                }
            }
        }
        Ok(inner)
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        Ok(tagged(variant, value.serialize(self)?))
    }

    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder::new(len.unwrap_or(0), SeqKind::List))
    }

    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder::new(len, SeqKind::Tuple))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder::new(len, SeqKind::Tuple))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, Error> {
        Ok(SeqBuilder::new(len, SeqKind::Variant(variant)))
    }

    fn serialize_map(self, len: Option<usize>) -> Result<DictBuilder, Error> {
        Ok(DictBuilder::new(len.unwrap_or(0), None))
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<DictBuilder, Error> {
        Ok(DictBuilder::new(len, None))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _variant_index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<DictBuilder, Error> {
        Ok(DictBuilder::new(len, Some(variant)))
    }
}

/// The one-entry dict `{variant: content}` of an externally tagged enum variant.
fn tagged(variant: &str, content: Value) -> Value {
    Value::Dict(vec![(Value::Str(variant.to_owned()), content)])
}

/// What a [`SeqBuilder`] becomes when it ends.
enum SeqKind {
    List,
    Tuple,
    /// A tuple inside `{variant: (...)}`.
    Variant(&'static str),
}

/// Collects the items of a sequence, tuple, tuple struct or tuple variant.
struct SeqBuilder {
    items: Vec<Value>,
    kind: SeqKind,
}

impl SeqBuilder {
    fn new(len: usize, kind: SeqKind) -> Self {
        SeqBuilder {
            items: Vec::with_capacity(len),
            kind,
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.items.push(value.serialize(ValueSerializer)?);
        Ok(())
    }

    fn finish(self) -> Value {
        match self.kind {
            SeqKind::List => Value::List(self.items),
            SeqKind::Tuple => Value::Tuple(self.items),
            SeqKind::Variant(variant) => tagged(variant, Value::Tuple(self.items)),
        }
    }
}

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

/// Collects the entries of a map, struct or struct variant.
struct DictBuilder {
    entries: Vec<(Value, Value)>,
    /// The key given to `serialize_key`, waiting for its value.
    pending_key: Option<Value>,
    /// For a struct variant, the variant name to wrap the dict in.
    variant: Option<&'static str>,
}

impl DictBuilder {
    fn new(len: usize, variant: Option<&'static str>) -> Self {
        DictBuilder {
            entries: Vec::with_capacity(len),
            pending_key: None,
            variant,
        }
    }

    fn push_field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), Error> {
        let value = value.serialize(ValueSerializer)?;
        self.entries.push((Value::Str(key.to_owned()), value));
        Ok(())
    }

    fn finish(self) -> Value {
        let dict = Value::Dict(self.entries);
        match self.variant {
            Some(variant) => tagged(variant, dict),
            None => dict,
        }
    }
}

impl ser::SerializeMap for DictBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        self.pending_key = Some(key.serialize(ValueSerializer)?);
        Ok(())
    }

    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self.pending_key.take().ok_or_else(|| {
            <Error as ser::Error>::custom("a map value was serialized before its key")
        })?;
        let value = value.serialize(ValueSerializer)?;
        self.entries.push((key, value));
        Ok(())
    }

    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), Error> {
        let key = key.serialize(ValueSerializer)?;
        let value = value.serialize(ValueSerializer)?;
        self.entries.push((key, value));
        Ok(())
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeStruct for DictBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push_field(key, value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

impl ser::SerializeStructVariant for DictBuilder {
    type Ok = Value;
    type Error = Error;

    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Error> {
        self.push_field(key, value)
    }

    fn end(self) -> Result<Value, Error> {
        Ok(self.finish())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Serialize;

    use super::*;

    fn s(text: &str) -> Value {
        Value::from(text)
    }

    fn dict(entries: Vec<(Value, Value)>) -> Value {
        Value::Dict(entries)
    }

    #[test]
    fn scalars() {
        assert_eq!(to_value(&true).unwrap(), Value::Bool(true));
        assert_eq!(to_value(&-7i8).unwrap(), Value::Int(-7));
        assert_eq!(
            to_value(&u32::MAX).unwrap(),
            Value::Int(i64::from(u32::MAX))
        );
        assert_eq!(to_value(&i64::MIN).unwrap(), Value::Int(i64::MIN));
        assert_eq!(to_value(&1.5f32).unwrap(), Value::Float(1.5));
        assert_eq!(to_value(&2.25f64).unwrap(), Value::Float(2.25));
        assert_eq!(to_value(&'é').unwrap(), s("é"));
        assert_eq!(to_value("text").unwrap(), s("text"));
        assert_eq!(to_value(&String::from("owned")).unwrap(), s("owned"));
        assert_eq!(to_value(&()).unwrap(), Value::None);
        assert_eq!(to_value(&None::<i32>).unwrap(), Value::None);
        assert_eq!(to_value(&Some(4)).unwrap(), Value::Int(4));
    }

    #[test]
    fn wide_integers_become_int_when_they_fit() {
        assert_eq!(to_value(&42u64).unwrap(), Value::Int(42));
        assert_eq!(to_value(&-42i128).unwrap(), Value::Int(-42));
        assert_eq!(to_value(&42u128).unwrap(), Value::Int(42));
        assert_eq!(
            to_value(&u64::MAX).unwrap(),
            Value::BigInt(BigInt::from(u64::MAX))
        );
        assert_eq!(
            to_value(&i128::MIN).unwrap(),
            Value::BigInt(BigInt::from(i128::MIN))
        );
        assert_eq!(
            to_value(&u128::MAX).unwrap(),
            Value::BigInt(BigInt::from(u128::MAX))
        );
    }

    #[derive(Serialize)]
    struct Unit;

    #[derive(Serialize)]
    struct Meters(f64);

    #[derive(Serialize)]
    struct Pair(i32, &'static str);

    #[derive(Serialize)]
    enum Shape {
        Empty,
        Circle(f64),
        Segment(i32, i32),
        Rect { w: u8, h: u8 },
    }

    #[test]
    fn structs_and_enums() {
        assert_eq!(to_value(&Unit).unwrap(), Value::None);
        assert_eq!(to_value(&Meters(2.5)).unwrap(), Value::Float(2.5));
        assert_eq!(
            to_value(&Pair(1, "a")).unwrap(),
            Value::Tuple(vec![Value::Int(1), s("a")])
        );
        assert_eq!(to_value(&Shape::Empty).unwrap(), s("Empty"));
        assert_eq!(
            to_value(&Shape::Circle(1.0)).unwrap(),
            dict(vec![(s("Circle"), Value::Float(1.0))])
        );
        assert_eq!(
            to_value(&Shape::Segment(3, 4)).unwrap(),
            dict(vec![(
                s("Segment"),
                Value::Tuple(vec![Value::Int(3), Value::Int(4)])
            )])
        );
        assert_eq!(
            to_value(&Shape::Rect { w: 2, h: 3 }).unwrap(),
            dict(vec![(
                s("Rect"),
                dict(vec![(s("w"), Value::Int(2)), (s("h"), Value::Int(3))])
            )])
        );
    }

    #[test]
    fn sequences_tuples_and_maps() {
        assert_eq!(
            to_value(&vec![1, 2]).unwrap(),
            Value::List(vec![Value::Int(1), Value::Int(2)])
        );
        assert_eq!(
            to_value(&[true; 2]).unwrap(),
            Value::Tuple(vec![Value::Bool(true), Value::Bool(true)])
        );
        assert_eq!(
            to_value(&(1, "x", None::<u8>)).unwrap(),
            Value::Tuple(vec![Value::Int(1), s("x"), Value::None])
        );
        let map: BTreeMap<(i32, i32), &str> = [((0, 1), "a"), ((2, 3), "b")].into();
        assert_eq!(
            to_value(&map).unwrap(),
            dict(vec![
                (Value::Tuple(vec![Value::Int(0), Value::Int(1)]), s("a")),
                (Value::Tuple(vec![Value::Int(2), Value::Int(3)]), s("b")),
            ])
        );
    }

    #[derive(Serialize)]
    struct Record {
        zeta: i32,
        alpha: i32,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        #[serde(skip)]
        _cache: u8,
        middle: i32,
    }

    #[test]
    fn struct_fields_keep_their_order_and_skipped_fields_are_absent() {
        let record = Record {
            zeta: 1,
            alpha: 2,
            note: None,
            _cache: 9,
            middle: 3,
        };
        assert_eq!(
            to_value(&record).unwrap(),
            dict(vec![
                (s("zeta"), Value::Int(1)),
                (s("alpha"), Value::Int(2)),
                (s("middle"), Value::Int(3)),
            ])
        );
        let noted = Record {
            note: Some("hi".into()),
            ..record
        };
        let keys: Vec<_> = match to_value(&noted).unwrap() {
            Value::Dict(entries) => entries.into_iter().map(|(k, _)| k).collect(),
            other => panic!("not a dict: {other}"),
        };
        assert_eq!(keys, vec![s("zeta"), s("alpha"), s("note"), s("middle")]);
    }

    #[test]
    fn serializing_a_value_into_a_value_is_the_identity() {
        let huge = BigInt::from(u128::MAX) * BigInt::from(u128::MAX);
        let value = dict(vec![
            (
                Value::Tuple(vec![Value::Int(1), s("k")]),
                Value::List(vec![
                    Value::None,
                    Value::Bool(false),
                    Value::Float(-0.5),
                    Value::Bytes(vec![0, 255]),
                ]),
            ),
            (s("big"), Value::BigInt(huge.clone())),
            (s("neg"), Value::BigInt(-huge)),
            (s("wide"), Value::BigInt(BigInt::from(i128::MIN))),
            (Value::Int(3), Value::Tuple(vec![])),
        ]);
        assert_eq!(to_value(&value).unwrap(), value);
        assert_eq!(
            to_value(&Value::BigInt(BigInt::from(7))).unwrap(),
            Value::Int(7)
        );
    }

    #[test]
    fn a_value_serializes_into_json() {
        let huge = BigInt::from(u128::MAX) * BigInt::from(2);
        let value = dict(vec![
            (s("none"), Value::None),
            (
                s("tuple"),
                Value::Tuple(vec![Value::Int(1), Value::Float(2.5)]),
            ),
            (s("bytes"), Value::Bytes(vec![1, 2])),
            (s("u64"), Value::BigInt(BigInt::from(u64::MAX))),
            (s("huge"), Value::BigInt(huge.clone())),
        ]);
        let json = serde_json::to_value(&value).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "none": null,
                "tuple": [1, 2.5],
                "bytes": [1, 2],
                "u64": u64::MAX,
                "huge": huge.to_string(),
            })
        );
    }

    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: ser::Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("the lock is poisoned"))
        }
    }

    #[test]
    fn serialize_errors_become_conversion_errors() {
        let err = to_value(&vec![Failing]).unwrap_err();
        assert!(matches!(err, crate::error::Error::Conversion(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "value conversion failed: the lock is poisoned"
        );
    }
}
