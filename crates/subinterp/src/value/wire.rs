//! The wire format: one flat buffer that carries plain data between interpreters, and
//! between processes (see `docs/wire-format.md` for the byte-level description).
//!
//! This module holds the format itself (tags, the writer and the reader primitives) and
//! its [`Value`] side: [`encode`] and [`decode`], for Rust hosts. The Python side, which
//! writes straight from objects and reads straight into them, is `raw::wire`.
//!
//! ```
//! use subinterp::value::wire;
//! use subinterp::Value;
//! let value = Value::Dict(vec![(Value::from("k"), Value::List(vec![Value::Int(1)]))]);
//! let bytes = wire::encode(&value)?;
//! assert_eq!(wire::decode(&bytes)?, value);
//! # Ok::<(), subinterp::Error>(())
//! ```

use std::collections::HashMap;

use num_bigint::BigInt;

use super::Value;
use crate::error::{Error, Result};

/// The first two bytes of every buffer.
pub const MAGIC: [u8; 2] = *b"SW";
/// The version of the format this crate writes and reads (the byte after [`MAGIC`]).
pub const VERSION: u8 = 1;
/// The header: [`MAGIC`] then [`VERSION`].
pub(crate) const HEADER: [u8; 3] = [MAGIC[0], MAGIC[1], VERSION];

/// Containers nested deeper than this are refused, by writers and readers alike.
pub const MAX_DEPTH: usize = 512;

/// The tags: the low seven bits of a value's first byte.
pub(crate) mod tag {
    pub(crate) const NONE: u8 = 0x00;
    pub(crate) const FALSE: u8 = 0x01;
    pub(crate) const TRUE: u8 = 0x02;
    pub(crate) const INT: u8 = 0x03;
    pub(crate) const BIGINT: u8 = 0x04;
    pub(crate) const FLOAT: u8 = 0x05;
    pub(crate) const STR: u8 = 0x06;
    pub(crate) const STR_SURROGATES: u8 = 0x07;
    pub(crate) const BYTES: u8 = 0x08;
    pub(crate) const BYTEARRAY: u8 = 0x09;
    pub(crate) const LIST: u8 = 0x0A;
    pub(crate) const TUPLE: u8 = 0x0B;
    pub(crate) const DICT: u8 = 0x0C;
    pub(crate) const REF: u8 = 0x0D;
    pub(crate) const PICKLE: u8 = 0x0E;
    pub(crate) const BUFFER: u8 = 0x0F;
    /// The high bit: the object is recorded in the memo, at the next index.
    pub(crate) const MEMO: u8 = 0x80;
}

/// Whether a tag may carry the memo bit (everything but the constants, small ints and
/// references).
pub(crate) fn memoizable(kind: u8) -> bool {
    !matches!(
        kind,
        tag::NONE | tag::FALSE | tag::TRUE | tag::INT | tag::REF
    )
}

/// An error for input that is not a well-formed buffer.
pub(crate) fn malformed(what: &str) -> Error {
    Error::Conversion(format!("malformed wire data: {what}"))
}

/// Appends the parts of the format to a byte buffer.
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    /// A writer into `out` (cleared), the header already written.
    pub(crate) fn new(mut out: Vec<u8>) -> Writer {
        out.clear();
        out.extend_from_slice(&HEADER);
        Writer { out }
    }

    #[inline]
    pub(crate) fn byte(&mut self, b: u8) {
        self.out.push(b);
    }

    #[inline]
    pub(crate) fn varint(&mut self, mut n: u64) {
        while n >= 0x80 {
            self.out.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
    }

    #[inline]
    pub(crate) fn tag_len(&mut self, tag: u8, n: usize) {
        self.byte(tag);
        self.varint(n as u64);
    }

    #[inline]
    pub(crate) fn int(&mut self, n: i64) {
        self.byte(tag::INT);
        self.varint(((n << 1) ^ (n >> 63)) as u64);
    }

    #[inline]
    pub(crate) fn float(&mut self, x: f64) {
        self.byte(tag::FLOAT);
        self.out.extend_from_slice(&x.to_bits().to_le_bytes());
    }

    /// A tag, a length and the bytes.
    #[inline]
    pub(crate) fn blob(&mut self, tag: u8, data: &[u8]) {
        self.tag_len(tag, data.len());
        self.out.extend_from_slice(data);
    }

    /// An integer outside `i64`, as little-endian two's complement bytes.
    pub(crate) fn bigint(&mut self, n: &BigInt) {
        self.blob(tag::BIGINT, &n.to_signed_bytes_le());
    }
}

#[cfg(feature = "extension-module")]
/// The first item of `data` when it is a tuple or a list whose first item is a small
/// `int`: how a runner that returns `(kind, ...)` says what it returned, read without
/// decoding the rest.
pub(crate) fn leading_int(data: &[u8]) -> Option<i64> {
    let mut r = Reader::new(data).ok()?;
    let kind = r.byte().ok()? & !tag::MEMO;
    if kind != tag::TUPLE && kind != tag::LIST {
        return None;
    }
    if r.varint().ok()? == 0 {
        return None;
    }
    match r.byte().ok()? & !tag::MEMO {
        tag::INT => r.int().ok(),
        _ => None,
    }
}

/// Reads the parts of the format from a byte slice, checking everything.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `data`, past its header (an error if the header is not this format's).
    pub(crate) fn new(data: &'a [u8]) -> Result<Reader<'a>> {
        match data {
            [a, b, v, ..] if [*a, *b] == MAGIC => {
                if *v != VERSION {
                    return Err(Error::Conversion(format!(
                        "wire data of version {v}, but this build reads version {VERSION}"
                    )));
                }
                Ok(Reader { data, pos: 3 })
            }
            _ => Err(malformed("no header")),
        }
    }

    /// Bytes not read yet.
    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(malformed("trailing bytes after the value"))
        }
    }

    #[inline]
    pub(crate) fn byte(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| malformed("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64> {
        let mut n: u64 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(malformed("varint overflows 64 bits"));
            }
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
            shift += 7;
            if shift > 63 {
                return Err(malformed("varint longer than 10 bytes"));
            }
        }
    }

    /// A count of items, each at least `min_bytes` long in what is left: a larger count
    /// is malformed (so that no allocation follows a corrupt length).
    #[inline]
    pub(crate) fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n)
                if n.checked_mul(min_bytes)
                    .is_some_and(|b| b <= self.remaining()) =>
            {
                Ok(n)
            }
            _ => Err(malformed("a count larger than the data left")),
        }
    }

    /// A length-prefixed run of bytes, borrowed from the input.
    #[inline]
    pub(crate) fn blob(&mut self) -> Result<&'a [u8]> {
        let n = self.count(1)?;
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    #[inline]
    pub(crate) fn int(&mut self) -> Result<i64> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    #[inline]
    pub(crate) fn float(&mut self) -> Result<f64> {
        let bytes = self
            .data
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| malformed("truncated"))?;
        self.pos += 8;
        Ok(f64::from_bits(u64::from_le_bytes(
            bytes.try_into().expect("eight bytes"),
        )))
    }

    /// The bytes of a big integer (not empty).
    pub(crate) fn bigint(&mut self) -> Result<BigInt> {
        let bytes = self.blob()?;
        if bytes.is_empty() {
            return Err(malformed("an integer of no bytes"));
        }
        Ok(BigInt::from_signed_bytes_le(bytes))
    }

    /// A memo index.
    #[inline]
    pub(crate) fn index(&mut self) -> Result<usize> {
        usize::try_from(self.varint()?).map_err(|_| malformed("index out of range"))
    }
}

/// Writes `value` in the wire format.
///
/// Strings used as dict keys are written once and referred to after. A [`Value`] has no
/// sharing, so nothing else is.
pub fn encode(value: &Value) -> Result<Vec<u8>> {
    let mut enc = ValueWriter {
        w: Writer::new(Vec::new()),
        keys: HashMap::new(),
        next: 0,
    };
    enc.value(value, 0)?;
    Ok(enc.w.out)
}

/// Writes the arguments of a call: a tuple of two, the positional arguments (a tuple)
/// and the keyword arguments (a dict of str keys).
pub(crate) fn encode_call(positional: &[Value], keywords: &[(String, Value)]) -> Result<Vec<u8>> {
    let mut enc = ValueWriter {
        w: Writer::new(Vec::new()),
        keys: HashMap::new(),
        next: 0,
    };
    enc.w.tag_len(tag::TUPLE, 2);
    enc.w.tag_len(tag::TUPLE, positional.len());
    for value in positional {
        enc.value(value, 2)?;
    }
    enc.w.tag_len(tag::DICT, keywords.len());
    for (name, value) in keywords {
        enc.key(name);
        enc.value(value, 2)?;
    }
    Ok(enc.w.out)
}

/// Keys at most this long are written once.
const KEY_MEMO_MAX: usize = 64;

struct ValueWriter<'v> {
    w: Writer,
    keys: HashMap<&'v str, u64>,
    next: u64,
}

impl<'v> ValueWriter<'v> {
    fn value(&mut self, value: &'v Value, depth: usize) -> Result<()> {
        match value {
            Value::None => self.w.byte(tag::NONE),
            Value::Bool(false) => self.w.byte(tag::FALSE),
            Value::Bool(true) => self.w.byte(tag::TRUE),
            Value::Int(n) => self.w.int(*n),
            Value::BigInt(n) => match i64::try_from(n) {
                Ok(n) => self.w.int(n),
                Err(_) => self.w.bigint(n),
            },
            Value::Float(x) => self.w.float(*x),
            Value::Str(s) => self.w.blob(tag::STR, s.as_bytes()),
            Value::Bytes(b) => self.w.blob(tag::BYTES, b),
            Value::List(items) | Value::Tuple(items) => {
                let kind = if matches!(value, Value::List(_)) {
                    tag::LIST
                } else {
                    tag::TUPLE
                };
                self.enter(depth)?;
                self.w.tag_len(kind, items.len());
                for item in items {
                    self.value(item, depth + 1)?;
                }
            }
            Value::Dict(items) => {
                self.enter(depth)?;
                self.w.tag_len(tag::DICT, items.len());
                for (k, v) in items {
                    match k {
                        Value::Str(s) => self.key(s),
                        _ => self.value(k, depth + 1)?,
                    }
                    self.value(v, depth + 1)?;
                }
            }
        }
        Ok(())
    }

    fn enter(&self, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            return Err(Error::Conversion(format!(
                "value nested more than {MAX_DEPTH} levels deep"
            )));
        }
        Ok(())
    }

    fn key(&mut self, s: &'v str) {
        if s.len() > KEY_MEMO_MAX {
            self.w.blob(tag::STR, s.as_bytes());
            return;
        }
        if let Some(&index) = self.keys.get(s) {
            self.w.byte(tag::REF);
            self.w.varint(index);
        } else {
            self.keys.insert(s, self.next);
            self.next += 1;
            self.w.blob(tag::STR | tag::MEMO, s.as_bytes());
        }
    }
}

/// Reads a [`Value`] from the wire format; an error for anything malformed, truncated or
/// that a `Value` cannot hold (a `str` with lone surrogates, a pickled object, a shared
/// buffer). `bytearray` reads as [`Value::Bytes`].
///
/// A `Value` has no sharing: an object the data refers to several times is copied each
/// time. So that a small input cannot make a huge tree, the copies are limited: the tree
/// may hold at most about 64 times the input's size, or 256 MiB, whichever is more.
pub fn decode(data: &[u8]) -> Result<Value> {
    let mut r = Reader::new(data)?;
    // A first pass finds the recorded values that are referred to: only those are kept.
    // It also adds up the size of the tree (references counted in full), so that a small
    // input that would copy into a huge tree is refused before any copy.
    let mut scan = Scan::default();
    let size = scan.value(&mut r.clone(), 0)?;
    let budget = (data.len() as u64).saturating_mul(64).max(BUDGET_FLOOR);
    if size > budget {
        return Err(Error::Conversion(format!(
            "the data shares substructure that copies into too large a Value tree (about \
             {size} bytes; a Value has no sharing)"
        )));
    }
    let referenced = scan.referenced;
    let mut dec = ValueReader {
        memo: Vec::new(),
        referenced,
    };
    let value = dec.value(&mut r, 0)?;
    r.finish()?;
    Ok(value)
}

const BUDGET_FLOOR: u64 = 256 << 20;
/// What a node counts for in the size of a tree, besides its bytes.
const NODE_COST: u64 = 32;

struct ValueReader {
    /// Recorded values that a reference names; `None` while a container is being read.
    memo: Vec<Option<Value>>,
    /// Which recorded values are referred to.
    referenced: Vec<bool>,
}

impl ValueReader {
    /// Reads one value.
    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Result<Value> {
        let first = r.byte()?;
        let kind = first & !tag::MEMO;
        let memo = first & tag::MEMO != 0;
        if memo && !memoizable(kind) {
            return Err(malformed("memo flag on a tag that takes none"));
        }
        let slot = if memo {
            self.memo.push(None);
            Some(self.memo.len() - 1)
        } else {
            None
        };
        let out =
            match kind {
                tag::NONE => Value::None,
                tag::FALSE => Value::Bool(false),
                tag::TRUE => Value::Bool(true),
                tag::INT => Value::Int(r.int()?),
                tag::BIGINT => Value::from_bigint(r.bigint()?),
                tag::FLOAT => Value::Float(r.float()?),
                tag::STR => {
                    let s = std::str::from_utf8(r.blob()?)
                        .map_err(|_| malformed("a str that is not UTF-8"))?;
                    Value::Str(s.to_owned())
                }
                tag::STR_SURROGATES => return Err(Error::Conversion(
                    "the data holds a str with lone surrogates, which a Rust String cannot hold"
                        .into(),
                )),
                tag::BYTES | tag::BYTEARRAY => Value::Bytes(r.blob()?.to_vec()),
                tag::LIST | tag::TUPLE => {
                    check_depth(depth)?;
                    let n = r.count(1)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.value(r, depth + 1)?);
                    }
                    if kind == tag::LIST {
                        Value::List(items)
                    } else {
                        Value::Tuple(items)
                    }
                }
                tag::DICT => {
                    check_depth(depth)?;
                    let n = r.count(2)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = self.value(r, depth + 1)?;
                        let v = self.value(r, depth + 1)?;
                        items.push((k, v));
                    }
                    Value::Dict(items)
                }
                tag::REF => match self.memo.get(r.index()?) {
                    Some(Some(value)) => value.clone(),
                    Some(None) => return Err(malformed("a reference to a value that contains it")),
                    None => return Err(malformed("a reference to no recorded value")),
                },
                tag::PICKLE => {
                    let name = r.blob()?;
                    let _data = r.blob()?;
                    return Err(Error::Conversion(format!(
                        "the data holds a pickled {} object, which only Python can unpickle",
                        String::from_utf8_lossy(name)
                    )));
                }
                tag::BUFFER => {
                    return Err(Error::Conversion(
                        "the data holds a shared buffer, which a Value cannot hold".into(),
                    ))
                }
                _ => return Err(malformed("unknown tag")),
            };
        if let Some(slot) = slot {
            if self.referenced.get(slot).copied().unwrap_or(false) {
                self.memo[slot] = Some(out.clone());
            }
        }
        Ok(out)
    }
}

/// The first pass over the data.
#[derive(Default)]
struct Scan {
    /// One entry per recorded value: whether a reference names it.
    referenced: Vec<bool>,
    /// The size of each recorded value as a tree (0 while it is being read).
    sizes: Vec<u64>,
}

impl Scan {
    /// Walks one value without building it; returns its size as a `Value` tree.
    fn value(&mut self, r: &mut Reader<'_>, depth: usize) -> Result<u64> {
        let first = r.byte()?;
        let kind = first & !tag::MEMO;
        let slot = if first & tag::MEMO != 0 {
            if !memoizable(kind) {
                return Err(malformed("memo flag on a tag that takes none"));
            }
            self.referenced.push(false);
            self.sizes.push(0);
            Some(self.sizes.len() - 1)
        } else {
            None
        };
        let size = match kind {
            tag::NONE | tag::FALSE | tag::TRUE => NODE_COST,
            tag::INT | tag::BUFFER => {
                r.varint()?;
                NODE_COST
            }
            tag::FLOAT => {
                r.float()?;
                NODE_COST
            }
            tag::BIGINT | tag::STR | tag::STR_SURROGATES | tag::BYTES | tag::BYTEARRAY => {
                NODE_COST + r.blob()?.len() as u64
            }
            tag::PICKLE => {
                r.blob()?;
                NODE_COST + r.blob()?.len() as u64
            }
            tag::LIST | tag::TUPLE | tag::DICT => {
                check_depth(depth)?;
                let per = if kind == tag::DICT { 2 } else { 1 };
                let n = r.count(per)?;
                let mut size = NODE_COST;
                for _ in 0..n * per {
                    size = size.saturating_add(self.value(r, depth + 1)?);
                }
                size
            }
            tag::REF => {
                let index = r.index()?;
                match self.referenced.get_mut(index) {
                    Some(seen) => *seen = true,
                    None => return Err(malformed("a reference to no recorded value")),
                }
                self.sizes[index]
            }
            _ => return Err(malformed("unknown tag")),
        };
        if let Some(slot) = slot {
            self.sizes[slot] = size;
        }
        Ok(size)
    }
}

/// Fails if a container at `depth` is nested too deep.
pub(crate) fn check_depth(depth: usize) -> Result<()> {
    if depth >= MAX_DEPTH {
        return Err(malformed("nested more than 512 levels deep"));
    }
    Ok(())
}
