//! Python objects to and from the wire format ([`crate::value::wire`]), with no
//! intermediate tree: the writer reads objects in place and appends to one buffer, the
//! reader makes objects straight from the buffer.
//!
//! An object with more than one reference may be met again: the writer records it in
//! its memo (by address) and writes a reference the next time, and the reader hands out
//! the same object for that reference, so sharing survives and costs nothing. An object
//! with a single reference (its container's) cannot be met twice, and is not recorded.
//!
//! No Python code runs while either side works: only exact built-in types are read or
//! made, and since CPython 3.12 the garbage collector runs only at the eval breaker, never
//! inside an allocation. So the borrowed items of a container stay alive while the writer
//! uses them.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::c_char;
use std::hash::{BuildHasherDefault, Hasher};
use std::ptr::addr_of_mut;

use pyo3_ffi as ffi;

use super::convert::{bigint_object, bigint_of, in_container, into_raw};
use super::object::len;
use super::{PyObj, Python};
use crate::error::{Error, Result};
use crate::value::wire::{check_depth, malformed, memoizable, tag, Reader, Writer, MAX_DEPTH};

/// Which objects the writer takes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// Only objects of exactly the plain types (`None`, `bool`, `int`, `float`, `str`,
    /// `bytes`, `bytearray`, `list`, `tuple`, `dict`): anything else, a subclass
    /// included, is [`Error::Unshareable`], so that the caller can pickle the object and
    /// keep its types.
    Exact,
    /// Subclasses of those types too, written as their base type, and a `bytearray` as
    /// `bytes`, as [`PyObj::to_value`] converts them; a `str` with lone surrogates, which
    /// a `Value` cannot hold, is the `UnicodeEncodeError` it raises.
    Lenient,
}

/// Objects that travel beside the buffer, in its out-of-band table (the `BUFFER` tag):
/// shared memory, which crosses without a copy.
pub(crate) trait OutOfBand<'py> {
    /// Called for an object that is not plain data: its index in the table if it goes
    /// there, `None` if it does not (it is then refused as not plain data).
    fn write(&mut self, obj: &PyObj<'py>) -> Result<Option<u64>>;
    /// The object for entry `index` of the table.
    fn read(&mut self, index: u64) -> Result<PyObj<'py>>;
}

/// Writes `obj` in the wire format into `out` (its contents replaced, its allocation
/// reused). A structure that contains itself or is nested more than
/// [`MAX_DEPTH`] levels deep is [`Error::Unshareable`], as is an object the mode refuses.
pub(crate) fn encode(obj: &PyObj<'_>, mode: Mode, out: Vec<u8>) -> Result<Vec<u8>> {
    encode_with(obj, mode, out, None)
}

/// As [`encode`], with objects that `outside` takes written to its table.
pub(crate) fn encode_with<'py>(
    obj: &PyObj<'py>,
    mode: Mode,
    out: Vec<u8>,
    outside: Option<&mut dyn OutOfBand<'py>>,
) -> Result<Vec<u8>> {
    let mut enc = Encoder {
        py: obj.py(),
        w: Writer::new(out),
        memo: HashMap::default(),
        next: 0,
        lenient: mode == Mode::Lenient,
        outside,
    };
    // SAFETY: the token in `obj` proves the GIL is held and `obj` is live.
    unsafe { enc.value(obj.as_ptr(), 0) }?;
    Ok(enc.w.out)
}

/// Reads one object from `data` (all of it) in this interpreter. Malformed, truncated or
/// oversized input is an error; so is a shared buffer (the format's out-of-band table is
/// not handled here) and a pickled object anywhere but at the top.
pub(crate) fn decode<'py>(py: Python<'py>, data: &[u8]) -> Result<PyObj<'py>> {
    decode_with(py, data, None)
}

/// As [`decode`], with the entries of the out-of-band table made by `outside`.
pub(crate) fn decode_with<'py>(
    py: Python<'py>,
    data: &[u8],
    outside: Option<&mut dyn OutOfBand<'py>>,
) -> Result<PyObj<'py>> {
    let mut r = Reader::new(data)?;
    let mut dec = Decoder {
        py,
        memo: Vec::new(),
        outside,
    };
    let obj = dec.value(&mut r, 0)?;
    r.finish()?;
    Ok(obj)
}

/// Calls `callable` with arguments in the wire format as
/// [`encode_call`](crate::value::wire) writes them: a tuple of the positional tuple and
/// the keyword dict.
pub(crate) fn call_encoded<'py>(callable: &PyObj<'py>, args: &[u8]) -> Result<PyObj<'py>> {
    let py = callable.py();
    let both = decode(py, args)?;
    let b = both.as_ptr();
    // SAFETY: GIL held (the token); `b` is live; each item is read after the type and
    // size checks, borrowed from `both`, which lives across the call; PyObject_Call
    // returns a new reference or NULL with an exception set.
    unsafe {
        if ffi::PyTuple_CheckExact(b) == 0 || ffi::PyTuple_GET_SIZE(b) != 2 {
            return Err(malformed("call arguments that are not a pair"));
        }
        let positional = ffi::PyTuple_GET_ITEM(b, 0);
        let keywords = ffi::PyTuple_GET_ITEM(b, 1);
        if ffi::PyTuple_CheckExact(positional) == 0 || ffi::PyDict_CheckExact(keywords) == 0 {
            return Err(malformed("call arguments that are not a tuple and a dict"));
        }
        let keywords = if ffi::PyDict_Size(keywords) == 0 {
            std::ptr::null_mut()
        } else {
            keywords
        };
        py.own(ffi::PyObject_Call(callable.as_ptr(), positional, keywords))
    }
}

/// Hashes object addresses (already well spread in their middle bits).
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = ((n as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A memo entry: the index shifted left once, and the low bit set once the object is
/// completely written (a container met again before that contains itself).
type Memo = HashMap<usize, u64, BuildHasherDefault<AddrHasher>>;
const DONE: u64 = 1;
/// The index of the top object, which is never referred to (only a cycle could).
const TOP: u64 = u64::MAX << 1;

struct Encoder<'py, 'o> {
    py: Python<'py>,
    w: Writer,
    memo: Memo,
    next: u64,
    lenient: bool,
    outside: Option<&'o mut dyn OutOfBand<'py>>,
}

impl<'py> Encoder<'py, '_> {
    /// Writes the object at `p`.
    ///
    /// # Safety
    /// The GIL is held and `p` is a live object of this interpreter.
    unsafe fn value(&mut self, p: *mut ffi::PyObject, depth: usize) -> Result<()> {
        // SAFETY: the caller's contract; every read is guarded by its type check (exact,
        // or of the base type in lenient mode, whose layout subclasses share).
        unsafe {
            if p == ffi::Py_None() {
                self.w.byte(tag::NONE);
                return Ok(());
            }
            let ty = ffi::Py_TYPE(p);
            let lenient = self.lenient;
            if ty == addr_of_mut!(ffi::PyBool_Type) {
                self.w.byte(if p == ffi::Py_True() {
                    tag::TRUE
                } else {
                    tag::FALSE
                });
                return Ok(());
            }
            if ty == addr_of_mut!(ffi::PyLong_Type) || (lenient && ffi::PyLong_Check(p) != 0) {
                let mut overflow = 0;
                let n = ffi::PyLong_AsLongLongAndOverflow(p, &mut overflow);
                if overflow == 0 {
                    if n == -1 && !ffi::PyErr_Occurred().is_null() {
                        return Err(self.py.fetch_error());
                    }
                    self.w.int(n);
                } else {
                    let big = bigint_of(&self.py.borrowed(p)?)?;
                    self.w.bigint(&big);
                }
                return Ok(());
            }
            if ty == addr_of_mut!(ffi::PyFloat_Type) || (lenient && ffi::PyFloat_Check(p) != 0) {
                self.w.float(ffi::PyFloat_AS_DOUBLE(p));
                return Ok(());
            }
            if ty == addr_of_mut!(ffi::PyUnicode_Type) || (lenient && ffi::PyUnicode_Check(p) != 0)
            {
                let Some(flag) = self.start_leaf(p, depth) else {
                    return Ok(());
                };
                return self.str(p, flag);
            }
            if ty == addr_of_mut!(ffi::PyBytes_Type) || (lenient && ffi::PyBytes_Check(p) != 0) {
                let Some(flag) = self.start_leaf(p, depth) else {
                    return Ok(());
                };
                let data = ffi::PyBytes_AsString(p);
                let size = usize::try_from(ffi::PyBytes_Size(p)).unwrap_or(0);
                self.w.blob(tag::BYTES | flag, raw_slice(data, size));
                return Ok(());
            }
            if ty == addr_of_mut!(ffi::PyByteArray_Type)
                || (lenient && ffi::PyByteArray_Check(p) != 0)
            {
                let Some(flag) = self.start_leaf(p, depth) else {
                    return Ok(());
                };
                let data = ffi::PyByteArray_AsString(p);
                let size = usize::try_from(ffi::PyByteArray_Size(p)).unwrap_or(0);
                // Lenient writing gives what `to_value` gives: bytes.
                let kind = if lenient { tag::BYTES } else { tag::BYTEARRAY };
                self.w.blob(kind | flag, raw_slice(data, size));
                return Ok(());
            }
            if is_pickle_buffer(ty) {
                // Pickle protocol 5's out-of-band buffers: their bytes, as a bytearray
                // (bytes when lenient), beside the pickle that names them.
                let Some(flag) = self.start_leaf(p, depth) else {
                    return Ok(());
                };
                let kind = if lenient { tag::BYTES } else { tag::BYTEARRAY };
                return self.pickle_buffer(p, kind | flag);
            }
            let kind = if ty == addr_of_mut!(ffi::PyList_Type)
                || (lenient && ffi::PyList_Check(p) != 0)
            {
                tag::LIST
            } else if ty == addr_of_mut!(ffi::PyTuple_Type)
                || (lenient && ffi::PyTuple_Check(p) != 0)
            {
                tag::TUPLE
            } else if ty == addr_of_mut!(ffi::PyDict_Type) || (lenient && ffi::PyDict_Check(p) != 0)
            {
                tag::DICT
            } else {
                if let Some(outside) = self.outside.as_deref_mut() {
                    if let Some(index) = outside.write(&self.py.borrowed(p)?)? {
                        self.w.byte(tag::BUFFER);
                        self.w.varint(index);
                        return Ok(());
                    }
                }
                return Err(self.unshareable(p, String::new()));
            };
            if depth >= MAX_DEPTH {
                return Err(
                    self.unshareable(p, format!("nested more than {MAX_DEPTH} levels deep"))
                );
            }
            let Some(flag) = self.start_container(p, depth)? else {
                return Ok(());
            };
            match kind {
                tag::LIST => {
                    // Read the size each time: cheap, and exact whatever happens.
                    let n = ffi::PyList_Size(p);
                    self.w.tag_len(tag::LIST | flag, n as usize);
                    for i in 0..n {
                        let item = ffi::PyList_GetItem(p, i);
                        if item.is_null() {
                            return Err(self.py.fetch_error());
                        }
                        self.value(item, depth + 1)
                            .map_err(|e| in_container(e, "list"))?;
                    }
                }
                tag::TUPLE => {
                    let n = ffi::PyTuple_Size(p);
                    self.w.tag_len(tag::TUPLE | flag, n as usize);
                    for i in 0..n {
                        let item = ffi::PyTuple_GET_ITEM(p, i);
                        self.value(item, depth + 1)
                            .map_err(|e| in_container(e, "tuple"))?;
                    }
                }
                _ => {
                    let n = ffi::PyDict_Size(p);
                    self.w.tag_len(tag::DICT | flag, n as usize);
                    let mut pos: ffi::Py_ssize_t = 0;
                    let mut key: *mut ffi::PyObject = std::ptr::null_mut();
                    let mut val: *mut ffi::PyObject = std::ptr::null_mut();
                    let mut seen = 0;
                    while ffi::PyDict_Next(p, &mut pos, &mut key, &mut val) != 0 {
                        self.value(key, depth + 1)
                            .map_err(|e| in_container(e, "dict key"))?;
                        self.value(val, depth + 1)
                            .map_err(|e| in_container(e, "dict value"))?;
                        seen += 1;
                    }
                    if seen != n {
                        return Err(self.unshareable(p, "changed size while sent".into()));
                    }
                }
            }
            if flag != 0 || depth == 0 {
                if let Some(entry) = self.memo.get_mut(&(p as usize)) {
                    *entry |= DONE;
                }
            }
            Ok(())
        }
    }

    /// Writes a `str`: UTF-8, or with "surrogatepass" when it holds lone surrogates.
    ///
    /// # Safety
    /// The GIL is held and `p` is a live `str` (or subclass).
    unsafe fn str(&mut self, p: *mut ffi::PyObject, flag: u8) -> Result<()> {
        let mut size: ffi::Py_ssize_t = 0;
        // SAFETY: the caller's contract; the UTF-8 form is cached in the str, alive with it.
        let data = unsafe { ffi::PyUnicode_AsUTF8AndSize(p, &mut size) };
        if !data.is_null() {
            let size = usize::try_from(size).unwrap_or(0);
            // SAFETY: `size` bytes at `data`, owned by the live str.
            self.w
                .blob(tag::STR | flag, unsafe { raw_slice(data, size) });
            return Ok(());
        }
        if self.lenient {
            // As `to_value`: a Rust String cannot hold lone surrogates.
            return Err(self.py.fetch_error());
        }
        // SAFETY: GIL held: drops the UnicodeEncodeError of the lone surrogates, then
        // encodes them as themselves; a new bytes object or NULL with an exception set.
        let bytes = unsafe {
            ffi::PyErr_Clear();
            self.py.own(ffi::PyUnicode_AsEncodedString(
                p,
                c"utf-8".as_ptr(),
                c"surrogatepass".as_ptr(),
            ))
        }?;
        let b = bytes.as_ptr();
        // SAFETY: `b` is the bytes object just made, alive while `bytes` is.
        let data = unsafe {
            raw_slice(
                ffi::PyBytes_AsString(b),
                usize::try_from(ffi::PyBytes_Size(b)).unwrap_or(0),
            )
        };
        self.w.blob(tag::STR_SURROGATES | flag, data);
        Ok(())
    }

    /// Writes the bytes a `pickle.PickleBuffer` shows, as a blob of `kind`; one that is
    /// not contiguous is [`Error::Unshareable`].
    ///
    /// # Safety
    /// The GIL is held and `p` is a live `PickleBuffer`.
    unsafe fn pickle_buffer(&mut self, p: *mut ffi::PyObject, kind: u8) -> Result<()> {
        // SAFETY: the caller's contract.
        let obj = unsafe { self.py.borrowed(p) }?;
        // `raw()` (C code) gives a one-dimensional view of unsigned bytes, or fails for
        // a buffer that is not contiguous.
        let raw = match obj.call_method("raw", &[]) {
            Ok(raw) => raw,
            Err(Error::Python(_)) => {
                return Err(self.unshareable(p, "a buffer that is not contiguous".into()))
            }
            Err(other) => return Err(other),
        };
        let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
        // SAFETY: GIL held; `raw` is a live memoryview; `view` is storage for one
        // Py_buffer, filled on success (status 0).
        let status =
            unsafe { ffi::PyObject_GetBuffer(raw.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) };
        self.py.check(status)?;
        // SAFETY: filled by the successful call above: `len` contiguous bytes at `buf`,
        // valid until the view is released just below, once.
        unsafe {
            let v = &*view.as_ptr();
            let size = usize::try_from(v.len).unwrap_or(0);
            self.w
                .blob(kind, raw_slice(v.buf.cast::<c_char>().cast_const(), size));
            ffi::PyBuffer_Release(view.as_mut_ptr());
        }
        Ok(())
    }

    /// Before a `str`, `bytes` or `bytearray`: `None` when it was written before (a
    /// reference was written), else the memo flag to write it with.
    ///
    /// # Safety
    /// The GIL is held and `p` is a live object.
    unsafe fn start_leaf(&mut self, p: *mut ffi::PyObject, depth: usize) -> Option<u8> {
        // SAFETY: the caller's contract.
        if depth == 0 || unsafe { ffi::Py_REFCNT(p) } <= 1 {
            return Some(0);
        }
        match self.memo.entry(p as usize) {
            Entry::Occupied(e) => {
                let index = *e.get() >> 1;
                self.w.byte(tag::REF);
                self.w.varint(index);
                None
            }
            Entry::Vacant(e) => {
                e.insert(self.next << 1 | DONE);
                self.next += 1;
                Some(tag::MEMO)
            }
        }
    }

    /// Before a container: `None` when it was written before (a reference was written),
    /// else the memo flag to write it with; an error if it is being written (it contains
    /// itself).
    ///
    /// # Safety
    /// The GIL is held and `p` is a live object.
    unsafe fn start_container(
        &mut self,
        p: *mut ffi::PyObject,
        depth: usize,
    ) -> Result<Option<u8>> {
        // SAFETY: the caller's contract.
        if unsafe { ffi::Py_REFCNT(p) } <= 1 {
            return Ok(Some(0));
        }
        match self.memo.entry(p as usize) {
            Entry::Occupied(e) => {
                let entry = *e.get();
                if entry & DONE == 0 {
                    return Err(self.unshareable(p, "it contains itself".into()));
                }
                self.w.byte(tag::REF);
                self.w.varint(entry >> 1);
                Ok(None)
            }
            Entry::Vacant(e) if depth == 0 => {
                // Never referred to, but watched for cycles.
                e.insert(TOP);
                Ok(Some(0))
            }
            Entry::Vacant(e) => {
                e.insert(self.next << 1);
                self.next += 1;
                Ok(Some(tag::MEMO))
            }
        }
    }

    fn unshareable(&self, p: *mut ffi::PyObject, detail: String) -> Error {
        // SAFETY: GIL held (the token) and `p` is live (the callers' contract).
        let type_name = match unsafe { self.py.borrowed(p) } {
            Ok(obj) => obj.type_name(),
            Err(err) => return err,
        };
        Error::Unshareable { type_name, detail }
    }
}

/// Whether `ty` is `pickle.PickleBuffer` (a static type that cannot be subclassed; `pyo3_ffi`
/// does not declare it, so it is known by its name).
///
/// # Safety
/// `ty` is a live type object.
unsafe fn is_pickle_buffer(ty: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: the caller's contract; a type's `tp_name` is a NUL-terminated string.
    unsafe {
        let name = (*ty).tp_name;
        !name.is_null() && std::ffi::CStr::from_ptr(name) == c"pickle.PickleBuffer"
    }
}

/// The `size` bytes at `data` (an empty slice for NULL or 0).
///
/// # Safety
/// `data` is NULL or points to `size` readable bytes that outlive the slice's use.
unsafe fn raw_slice<'a>(data: *const c_char, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(data.cast::<u8>(), size) }
}

struct Decoder<'py, 'o> {
    py: Python<'py>,
    /// Recorded objects; `None` while a container is being read.
    memo: Vec<Option<PyObj<'py>>>,
    outside: Option<&'o mut dyn OutOfBand<'py>>,
}

impl<'py> Decoder<'py, '_> {
    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Result<PyObj<'py>> {
        let py = self.py;
        let first = r.byte()?;
        let kind = first & !tag::MEMO;
        let slot = if first & tag::MEMO != 0 {
            if !memoizable(kind) {
                return Err(malformed("memo flag on a tag that takes none"));
            }
            self.memo.push(None);
            Some(self.memo.len() - 1)
        } else {
            None
        };
        // In every block below the token proves the GIL is held, and constructors return
        // a new reference or NULL with an exception set, which `own` turns into an error.
        let obj = match kind {
            tag::NONE => return Ok(py.none()),
            // SAFETY: see above; static objects.
            tag::FALSE => return unsafe { py.borrowed(ffi::Py_False()) },
            // SAFETY: see above; static objects.
            tag::TRUE => return unsafe { py.borrowed(ffi::Py_True()) },
            // SAFETY: see above.
            tag::INT => return unsafe { py.own(ffi::PyLong_FromLongLong(r.int()?)) },
            tag::BIGINT => bigint_object(py, &r.bigint()?)?,
            // SAFETY: see above.
            tag::FLOAT => unsafe { py.own(ffi::PyFloat_FromDouble(r.float()?)) }?,
            tag::STR | tag::STR_SURROGATES => {
                let data = r.blob()?;
                let errors = if kind == tag::STR {
                    std::ptr::null()
                } else {
                    c"surrogatepass".as_ptr()
                };
                // SAFETY: see above; pointer and length describe `data`, alive across the
                // call, which checks that it is UTF-8.
                unsafe {
                    py.own(ffi::PyUnicode_DecodeUTF8(
                        data.as_ptr().cast::<c_char>(),
                        len(data.len()),
                        errors,
                    ))
                }?
            }
            tag::BYTES => py.to_object_bytes(r.blob()?)?,
            tag::BYTEARRAY => {
                let data = r.blob()?;
                // SAFETY: see above; pointer and length describe `data`.
                unsafe {
                    py.own(ffi::PyByteArray_FromStringAndSize(
                        data.as_ptr().cast::<c_char>(),
                        len(data.len()),
                    ))
                }?
            }
            tag::LIST | tag::TUPLE => {
                check_depth(depth)?;
                let n = r.count(1)?;
                let list = kind == tag::LIST;
                // SAFETY: see above. `n` is at most the bytes left, so the allocation is
                // bounded by the input.
                let seq = unsafe {
                    py.own(if list {
                        ffi::PyList_New(len(n))
                    } else {
                        ffi::PyTuple_New(len(n))
                    })
                }?;
                // Until filled, the slots are NULL, which deallocation tolerates; the
                // object is reachable from nowhere else meanwhile.
                for i in 0..n {
                    let item = into_raw(self.value(r, depth + 1)?);
                    // SAFETY: a fresh list or tuple of `n` slots, `i` in range; SET_ITEM
                    // steals the reference `into_raw` handed over.
                    unsafe {
                        if list {
                            ffi::PyList_SET_ITEM(seq.as_ptr(), len(i), item);
                        } else {
                            ffi::PyTuple_SET_ITEM(seq.as_ptr(), len(i), item);
                        }
                    }
                }
                seq
            }
            tag::DICT => {
                check_depth(depth)?;
                let n = r.count(2)?;
                let dict = py.dict()?;
                for _ in 0..n {
                    let k = self.value(r, depth + 1)?;
                    let v = self.value(r, depth + 1)?;
                    // SAFETY: see above; `dict` is a dict, key and value live objects.
                    py.check(unsafe {
                        ffi::PyDict_SetItem(dict.as_ptr(), k.as_ptr(), v.as_ptr())
                    })?;
                }
                dict
            }
            tag::REF => {
                let index = r.index()?;
                return match self.memo.get(index) {
                    Some(Some(obj)) => Ok(obj.clone()),
                    Some(None) => Err(malformed("a reference to a value that contains it")),
                    None => Err(malformed("a reference to no recorded value")),
                };
            }
            tag::PICKLE => {
                let _type_name = r.blob()?;
                let data = r.blob()?;
                if depth != 0 {
                    return Err(malformed("a pickled object inside a container"));
                }
                let pickled = py.to_object_bytes(data)?;
                py.import("pickle")?.call_method("loads", &[&pickled])?
            }
            tag::BUFFER => {
                let index = r.varint()?;
                match self.outside.as_deref_mut() {
                    Some(outside) => outside.read(index)?,
                    None => return Err(malformed("a shared buffer outside a channel")),
                }
            }
            _ => return Err(malformed("unknown tag")),
        };
        if let Some(slot) = slot {
            self.memo[slot] = Some(obj.clone());
        }
        Ok(obj)
    }
}
