//! Conversion between [`Value`] and Python objects.

use std::ffi::c_char;

use num_bigint::BigInt;
use num_traits::Num;
use pyo3_ffi as ffi;

use super::object::{len, ExcKind};
use super::{PyObj, Python};
use crate::error::{Error, Result};
use crate::value::de::Scalar;
use crate::value::Value;

impl<'py> Python<'py> {
    /// Builds Python objects from a [`Value`] (a deep copy).
    pub fn to_object(self, value: &Value) -> Result<PyObj<'py>> {
        to_object(self, value, 0)
    }
}

impl PyObj<'_> {
    /// Copies the object out as a [`Value`], or fails with
    /// [`Error::Unshareable`] naming the first object that is
    /// not plain data.
    pub fn to_value(&self) -> Result<Value> {
        to_value::<false>(self, 0)
    }
}

/// Deeper nesting than this is refused (it is almost always a self-referencing container).
pub(crate) const MAX_DEPTH: usize = 512;

pub(crate) fn to_object<'py>(py: Python<'py>, value: &Value, depth: usize) -> Result<PyObj<'py>> {
    if depth > MAX_DEPTH {
        return Err(py.new_error(ExcKind::Recursion, "value nested more than 512 levels deep"));
    }
    // In every block below the token proves the GIL is held, and constructors return a
    // new reference or NULL with an exception set, which `own` turns into an error.
    match value {
        Value::None => Ok(py.none()),
        // SAFETY: GIL held; plain value argument.
        Value::Bool(b) => unsafe { py.own(ffi::PyBool_FromLong(i64::from(*b) as _)) },
        // SAFETY: GIL held; plain value argument.
        Value::Int(n) => unsafe { py.own(ffi::PyLong_FromLongLong(*n)) },
        Value::BigInt(n) => bigint_object(py, n),
        // SAFETY: GIL held; plain value argument.
        Value::Float(x) => unsafe { py.own(ffi::PyFloat_FromDouble(*x)) },
        Value::Str(s) => py.str(s),
        // SAFETY: GIL held; pointer and length describe `b`, alive across the call.
        Value::Bytes(b) => unsafe {
            py.own(ffi::PyBytes_FromStringAndSize(
                b.as_ptr().cast::<c_char>(),
                len(b.len()),
            ))
        },
        Value::List(items) => {
            // SAFETY: GIL held.
            let list = unsafe { py.own(ffi::PyList_New(len(items.len()))) }?;
            for (i, item) in items.iter().enumerate() {
                let obj = to_object(py, item, depth + 1)?;
                // SAFETY: fresh list of the right size; SET_ITEM steals the reference,
                // which we hand over with `into_raw`.
                unsafe { ffi::PyList_SET_ITEM(list.as_ptr(), len(i), into_raw(obj)) };
            }
            Ok(list)
        }
        Value::Tuple(items) => {
            // SAFETY: GIL held.
            let tuple = unsafe { py.own(ffi::PyTuple_New(len(items.len()))) }?;
            for (i, item) in items.iter().enumerate() {
                let obj = to_object(py, item, depth + 1)?;
                // SAFETY: fresh tuple of the right size; SET_ITEM steals the reference.
                unsafe { ffi::PyTuple_SET_ITEM(tuple.as_ptr(), len(i), into_raw(obj)) };
            }
            Ok(tuple)
        }
        Value::Dict(items) => {
            let dict = py.dict()?;
            for (k, v) in items {
                let key = to_object(py, k, depth + 1)?;
                let val = to_object(py, v, depth + 1)?;
                // SAFETY: GIL held; `dict` is a dict and key/value are live objects.
                py.check(unsafe {
                    ffi::PyDict_SetItem(dict.as_ptr(), key.as_ptr(), val.as_ptr())
                })?;
            }
            Ok(dict)
        }
    }
}

/// A Python `int` of the value of `n` (any size).
pub(crate) fn bigint_object<'py>(py: Python<'py>, n: &BigInt) -> Result<PyObj<'py>> {
    let text = super::object::cstring(&n.to_str_radix(16));
    // SAFETY: GIL held; `text` is a NUL-terminated string alive across the call.
    unsafe {
        py.own(ffi::PyLong_FromString(
            text.as_ptr(),
            std::ptr::null_mut(),
            16,
        ))
    }
}

/// The value of `obj`, an `int` (or a subclass), at any size. No Python code runs.
pub(crate) fn bigint_of(obj: &PyObj<'_>) -> Result<BigInt> {
    let py = obj.py();
    // SAFETY: GIL held (the token); `obj` is a live int, for which PyNumber_ToBase calls
    // no Python code; a new reference or NULL with an exception set.
    let hex = unsafe { py.own(ffi::PyNumber_ToBase(obj.as_ptr(), 16)) }?.extract_str()?;
    let (negative, digits) = match hex.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, hex.as_str()),
    };
    let digits = digits.trim_start_matches("0x");
    let magnitude = BigInt::from_str_radix(digits, 16)
        .map_err(|e| py.new_error(ExcKind::Value, &format!("bad int text: {e}")))?;
    Ok(if negative { -magnitude } else { magnitude })
}

/// Gives up ownership of the reference (for functions that steal one).
pub(crate) fn into_raw(obj: PyObj<'_>) -> *mut ffi::PyObject {
    let ptr = obj.as_ptr();
    std::mem::forget(obj);
    ptr
}

/// The contents of a `str` that is valid UTF-8 (no lone surrogates); `None` for anything
/// else, without leaving or reporting an exception (no traceback is formatted).
pub(crate) fn utf8_str(obj: &PyObj<'_>) -> Option<String> {
    // SAFETY: GIL held; live object.
    if unsafe { ffi::PyUnicode_Check(obj.as_ptr()) } == 0 {
        return None;
    }
    let mut size: ffi::Py_ssize_t = 0;
    // SAFETY: `obj` is a str; see `str_contents`.
    let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(obj.as_ptr(), &mut size) };
    if data.is_null() {
        // SAFETY: GIL held; drops the UnicodeEncodeError just raised.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    let size = usize::try_from(size).unwrap_or(0);
    // SAFETY: `size` valid bytes at `data`, alive while `obj` is.
    let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) };
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

/// A copy of the `size` bytes at `data`: the buffer of `obj`.
///
/// # Safety
///
/// `data` is NULL or points to `size` readable bytes owned by `obj` (its buffer, as
/// `PyBytes_AsString` or `PyByteArray_AsString` return it), with the GIL held.
unsafe fn bytes_of(obj: &PyObj<'_>, data: *const c_char, size: ffi::Py_ssize_t) -> Vec<u8> {
    let _ = obj;
    let size = usize::try_from(size).unwrap_or(0);
    if data.is_null() || size == 0 {
        return Vec::new();
    }
    // SAFETY: `size` bytes at `data`, owned by `obj`, which is alive for this call (the
    // caller's contract).
    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) }.to_vec()
}

/// Copies the contents of an exact `bytes` object into `out` (replacing what it held);
/// false, leaving `out` alone, for any other object.
pub(crate) fn copy_bytes(obj: &PyObj<'_>, out: &mut Vec<u8>) -> bool {
    let p = obj.as_ptr();
    // SAFETY: the token in `obj` proves the GIL is held and `p` is live; for an exact
    // bytes object, its buffer holds `size` bytes while `obj` lives.
    unsafe {
        if ffi::PyBytes_CheckExact(p) == 0 {
            return false;
        }
        let size = usize::try_from(ffi::PyBytes_Size(p)).unwrap_or(0);
        let data = ffi::PyBytes_AsString(p);
        out.clear();
        if size > 0 && !data.is_null() {
            out.extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), size));
        }
    }
    true
}

/// The conversion behind [`PyObj::to_value`] (subclasses convert as their base type); with
/// `EXACT`, only the exact plain types convert.
fn to_value<const EXACT: bool>(obj: &PyObj<'_>, depth: usize) -> Result<Value> {
    let py = obj.py();
    let p = obj.as_ptr();
    if depth > MAX_DEPTH {
        return Err(Error::Unshareable {
            type_name: obj.type_name(),
            detail: "nested more than 512 levels deep (is it a recursive structure?)".into(),
        });
    }
    // SAFETY: the token proves the GIL is held and `p` is a live object; each
    // type-specific call is guarded by its type check, and every result is checked.
    unsafe {
        if p == ffi::Py_None() {
            return Ok(Value::None);
        }
        if ffi::PyBool_Check(p) != 0 {
            return Ok(Value::Bool(p == ffi::Py_True()));
        }
        if is(p, ffi::PyLong_CheckExact, ffi::PyLong_Check, EXACT) {
            let mut overflow = 0;
            let n = ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow);
            if overflow == 0 {
                if n == -1 && !ffi::PyErr_Occurred().is_null() {
                    return Err(py.fetch_error());
                }
                return Ok(Value::Int(n));
            }
            return Ok(Value::from_bigint(bigint_of(obj)?));
        }
        if is(p, ffi::PyFloat_CheckExact, ffi::PyFloat_Check, EXACT) {
            return Ok(Value::Float(ffi::PyFloat_AsDouble(p)));
        }
        if is(p, ffi::PyUnicode_CheckExact, ffi::PyUnicode_Check, EXACT) {
            return obj.extract_str().map(Value::Str);
        }
        if is(p, ffi::PyBytes_CheckExact, ffi::PyBytes_Check, EXACT) {
            // SAFETY: `p` is a bytes object: its buffer and size, alive with `obj`.
            return Ok(Value::Bytes(bytes_of(
                obj,
                ffi::PyBytes_AsString(p),
                ffi::PyBytes_Size(p),
            )));
        }
        if !EXACT && ffi::PyByteArray_Check(p) != 0 {
            // SAFETY: `p` is a bytearray: its buffer and size, alive with `obj` (no code
            // runs in between that could resize it).
            return Ok(Value::Bytes(bytes_of(
                obj,
                ffi::PyByteArray_AsString(p),
                ffi::PyByteArray_Size(p),
            )));
        }
        if is(p, ffi::PyList_CheckExact, ffi::PyList_Check, EXACT) {
            // Index each time: user code cannot run in between, but be exact anyway.
            let mut items = Vec::with_capacity(usize::try_from(ffi::PyList_Size(p)).unwrap_or(0));
            let mut i = 0;
            while i < ffi::PyList_Size(p) {
                let item = py.borrowed(ffi::PyList_GetItem(p, i))?;
                items.push(
                    to_value::<EXACT>(&item, depth + 1).map_err(|e| in_container(e, "list"))?,
                );
                i += 1;
            }
            return Ok(Value::List(items));
        }
        if is(p, ffi::PyTuple_CheckExact, ffi::PyTuple_Check, EXACT) {
            let n = ffi::PyTuple_Size(p);
            let mut items = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for i in 0..n {
                let item = py.borrowed(ffi::PyTuple_GetItem(p, i))?;
                items.push(
                    to_value::<EXACT>(&item, depth + 1).map_err(|e| in_container(e, "tuple"))?,
                );
            }
            return Ok(Value::Tuple(items));
        }
        if is(p, ffi::PyDict_CheckExact, ffi::PyDict_Check, EXACT) {
            let mut items = Vec::with_capacity(usize::try_from(ffi::PyDict_Size(p)).unwrap_or(0));
            let mut pos: ffi::Py_ssize_t = 0;
            let mut key: *mut ffi::PyObject = std::ptr::null_mut();
            let mut val: *mut ffi::PyObject = std::ptr::null_mut();
            while ffi::PyDict_Next(p, &mut pos, &mut key, &mut val) != 0 {
                let k = py.borrowed(key)?;
                let v = py.borrowed(val)?;
                let kv =
                    to_value::<EXACT>(&k, depth + 1).map_err(|e| in_container(e, "dict key"))?;
                let vv =
                    to_value::<EXACT>(&v, depth + 1).map_err(|e| in_container(e, "dict value"))?;
                items.push((kv, vv));
            }
            return Ok(Value::Dict(items));
        }
    }
    Err(Error::Unshareable {
        type_name: obj.type_name(),
        detail: String::new(),
    })
}

/// Whether `p` is of the type `exact` checks for (with `EXACT`) or of it or a subclass
/// (`any`).
///
/// # Safety
/// The GIL is held and `p` is a live object.
unsafe fn is(
    p: *mut ffi::PyObject,
    exact: unsafe fn(*mut ffi::PyObject) -> std::ffi::c_int,
    any: unsafe fn(*mut ffi::PyObject) -> std::ffi::c_int,
    exact_only: bool,
) -> bool {
    // SAFETY: the caller's contract; both checks only read the object's type.
    unsafe { (if exact_only { exact(p) } else { any(p) }) != 0 }
}

pub(crate) fn in_container(err: Error, place: &str) -> Error {
    match err {
        Error::Unshareable { type_name, detail } if detail.is_empty() => Error::Unshareable {
            type_name,
            detail: format!("found inside a {place}"),
        },
        other => other,
    }
}

/// `obj` as an `i64` when it is exactly an `int` (not a `bool` or another subclass)
/// that fits; `None` otherwise, with no exception left set.
pub(crate) fn exact_int(obj: &PyObj<'_>) -> Option<i64> {
    let p = obj.as_ptr();
    // SAFETY: the token in `obj` proves the GIL is held and `p` is live; the value is read
    // only after the exact type check.
    unsafe {
        if ffi::PyLong_CheckExact(p) == 0 {
            return None;
        }
        let mut overflow = 0;
        let n = ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow);
        if overflow != 0 || (n == -1 && !ffi::PyErr_Occurred().is_null()) {
            ffi::PyErr_Clear();
            return None;
        }
        Some(n)
    }
}

/// `obj` as an `f64` when it is exactly a `float`.
pub(crate) fn exact_float(obj: &PyObj<'_>) -> Option<f64> {
    let p = obj.as_ptr();
    // SAFETY: the token proves the GIL is held and `p` is live; read after the type check.
    unsafe { (ffi::PyFloat_CheckExact(p) != 0).then(|| ffi::PyFloat_AS_DOUBLE(p)) }
}

/// `obj` as a `bool` when it is `True` or `False`.
pub(crate) fn exact_bool(obj: &PyObj<'_>) -> Option<bool> {
    let p = obj.as_ptr();
    // SAFETY: comparing pointers with CPython's two static bools.
    unsafe {
        if p == ffi::Py_True() {
            Some(true)
        } else if p == ffi::Py_False() {
            Some(false)
        } else {
            None
        }
    }
}

/// The object as a plain scalar (`None`, `bool`, an `int` that fits `i64`, `float`, a
/// UTF-8 `str`), read in place; `None` for anything else, leaving no exception.
pub(crate) fn scalar<'a>(obj: &'a PyObj<'_>) -> Option<Scalar<'a>> {
    let p = obj.as_ptr();
    // SAFETY: the token in `obj` proves the GIL is held and `p` is live; each read is
    // guarded by its type check; a str's UTF-8 buffer lives as long as the str, which
    // `obj` keeps alive for `'a`.
    unsafe {
        if p == ffi::Py_None() {
            return Some(Scalar::None);
        }
        if ffi::PyBool_Check(p) != 0 {
            return Some(Scalar::Bool(p == ffi::Py_True()));
        }
        if ffi::PyLong_Check(p) != 0 {
            let mut overflow = 0;
            let n = ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow);
            if overflow != 0 || (n == -1 && !ffi::PyErr_Occurred().is_null()) {
                ffi::PyErr_Clear();
                return None;
            }
            return Some(Scalar::Int(n));
        }
        if ffi::PyFloat_Check(p) != 0 {
            return Some(Scalar::Float(ffi::PyFloat_AS_DOUBLE(p)));
        }
        if ffi::PyUnicode_Check(p) != 0 {
            let mut size: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(p, &mut size);
            if data.is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(size).ok()?);
            return std::str::from_utf8(bytes).ok().map(Scalar::Str);
        }
    }
    None
}

/// Builds the Python object for `value` straight from its serde form when it is a scalar
/// (`None`, `()`, a bool, an integer that fits `i64`, a float, a `str`), as
/// [`Python::to_object`] builds it from the equal [`Value`]; `None` for any other data,
/// which is to go through a [`Value`] (also for a `Serialize` error, reported there).
pub(crate) fn scalar_object<'py, T: serde::Serialize + ?Sized>(
    py: Python<'py>,
    value: &T,
) -> Option<Result<PyObj<'py>>> {
    match value.serialize(ScalarObject(py)) {
        Ok(obj) => Some(Ok(obj)),
        Err(Direct::Failed(err)) => Some(Err(err)),
        Err(Direct::NotScalar) => None,
    }
}

/// Why [`ScalarObject`] made no object.
#[derive(Debug)]
enum Direct {
    /// The data is not a scalar.
    NotScalar,
    /// Making the object failed.
    Failed(Error),
}

impl std::fmt::Display for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Direct::NotScalar => f.write_str("not a scalar"),
            Direct::Failed(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for Direct {}

impl serde::ser::Error for Direct {
    fn custom<M: std::fmt::Display>(_msg: M) -> Self {
        Direct::NotScalar
    }
}

/// The serializer behind [`scalar_object`].
struct ScalarObject<'py>(Python<'py>);

impl ScalarObject<'_> {
    fn int<'py>(py: Python<'py>, n: i64) -> std::result::Result<PyObj<'py>, Direct> {
        // SAFETY: GIL held (the token); a new reference or NULL with an exception set.
        unsafe { py.own(ffi::PyLong_FromLongLong(n)) }.map_err(Direct::Failed)
    }

    fn float<'py>(py: Python<'py>, x: f64) -> std::result::Result<PyObj<'py>, Direct> {
        // SAFETY: GIL held (the token); a new reference or NULL with an exception set.
        unsafe { py.own(ffi::PyFloat_FromDouble(x)) }.map_err(Direct::Failed)
    }
}

macro_rules! not_scalar {
    ($($method:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            fn $method(self, $($arg: $ty),*) -> std::result::Result<$ret, Direct> {
                let _ = ($($arg,)*);
                Err(Direct::NotScalar)
            }
        )*
    };
}

impl<'py> serde::Serializer for ScalarObject<'py> {
    type Ok = PyObj<'py>;
    type Error = Direct;
    type SerializeSeq = serde::ser::Impossible<PyObj<'py>, Direct>;
    type SerializeTuple = serde::ser::Impossible<PyObj<'py>, Direct>;
    type SerializeTupleStruct = serde::ser::Impossible<PyObj<'py>, Direct>;
    type SerializeTupleVariant = serde::ser::Impossible<PyObj<'py>, Direct>;
    type SerializeMap = serde::ser::Impossible<PyObj<'py>, Direct>;
    type SerializeStruct = serde::ser::Impossible<PyObj<'py>, Direct>;
    type SerializeStructVariant = serde::ser::Impossible<PyObj<'py>, Direct>;

    fn serialize_bool(self, v: bool) -> std::result::Result<PyObj<'py>, Direct> {
        // SAFETY: GIL held (the token); a new reference or NULL with an exception set.
        unsafe { self.0.own(ffi::PyBool_FromLong(i64::from(v) as _)) }.map_err(Direct::Failed)
    }
    fn serialize_i8(self, v: i8) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, v)
    }
    fn serialize_u8(self, v: u8) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, i64::from(v))
    }
    fn serialize_u16(self, v: u16) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, i64::from(v))
    }
    fn serialize_u32(self, v: u32) -> std::result::Result<PyObj<'py>, Direct> {
        Self::int(self.0, i64::from(v))
    }
    fn serialize_u64(self, v: u64) -> std::result::Result<PyObj<'py>, Direct> {
        let n = i64::try_from(v).map_err(|_| Direct::NotScalar)?;
        Self::int(self.0, n)
    }
    fn serialize_f32(self, v: f32) -> std::result::Result<PyObj<'py>, Direct> {
        Self::float(self.0, f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> std::result::Result<PyObj<'py>, Direct> {
        Self::float(self.0, v)
    }
    fn serialize_str(self, v: &str) -> std::result::Result<PyObj<'py>, Direct> {
        self.0.str(v).map_err(Direct::Failed)
    }
    fn serialize_none(self) -> std::result::Result<PyObj<'py>, Direct> {
        Ok(self.0.none())
    }
    fn serialize_some<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
    ) -> std::result::Result<PyObj<'py>, Direct> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> std::result::Result<PyObj<'py>, Direct> {
        Ok(self.0.none())
    }
    fn serialize_unit_struct(self, _name: &'static str) -> std::result::Result<PyObj<'py>, Direct> {
        Ok(self.0.none())
    }
    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        _value: &T,
    ) -> std::result::Result<PyObj<'py>, Direct> {
        Err(Direct::NotScalar)
    }
    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> std::result::Result<PyObj<'py>, Direct> {
        Err(Direct::NotScalar)
    }
    not_scalar! {
        serialize_i128(v: i128) -> PyObj<'py>;
        serialize_u128(v: u128) -> PyObj<'py>;
        serialize_char(v: char) -> PyObj<'py>;
        serialize_bytes(v: &[u8]) -> PyObj<'py>;
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str) -> PyObj<'py>;
        serialize_seq(len: Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(len: usize) -> Self::SerializeTuple;
        serialize_tuple_struct(name: &'static str, len: usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(name: &'static str, index: u32, variant: &'static str, len: usize) -> Self::SerializeTupleVariant;
        serialize_map(len: Option<usize>) -> Self::SerializeMap;
        serialize_struct(name: &'static str, len: usize) -> Self::SerializeStruct;
        serialize_struct_variant(name: &'static str, index: u32, variant: &'static str, len: usize) -> Self::SerializeStructVariant;
    }
}
