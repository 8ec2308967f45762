//! [`SharedBuffer`]: bytes shared by every interpreter that holds a view, without copies.

use std::ops::Range;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::raw::buffer::BufferMem;

/// A block of memory that crosses interpreters without being copied.
///
/// Send it through a [`Channel`](crate::Channel) and every receiving interpreter gets a
/// `memoryview` over the same memory — read-only unless the buffer was made writable
/// (then the users synchronise themselves). The memory lives until the last view in any
/// interpreter and the last Rust handle are gone, whichever interpreter created it.
///
/// A handle may cover only part of the memory ([`slice`](Self::slice)): a `memoryview`
/// slice sent from Python arrives as a handle on exactly the bytes it shows, and
/// receivers cannot reach the rest.
///
/// In Python: `subinterp.buffer(size_or_bytes, writable=False)`.
#[derive(Clone)]
pub struct SharedBuffer {
    mem: Arc<BufferMem>,
    /// The bytes of `mem` this handle covers.
    start: usize,
    len: usize,
    writable: bool,
    /// The format and shape of the Python view this handle was sent as, when it is not
    /// one dimension of unsigned bytes; receivers get a view of the same layout.
    layout: Option<Arc<Layout>>,
}

/// The `struct` format and the shape of a Python view.
#[derive(Debug, PartialEq)]
pub(crate) struct Layout {
    pub(crate) format: String,
    pub(crate) shape: Vec<usize>,
}

impl SharedBuffer {
    /// `len` zeroed bytes; views in receiving interpreters are writable if `writable`.
    pub fn new(len: usize, writable: bool) -> Result<SharedBuffer> {
        let mem = BufferMem::zeroed(len).ok_or_else(|| {
            Error::OutOfMemory(format!("cannot allocate a buffer of {len} bytes"))
        })?;
        Ok(SharedBuffer {
            mem: Arc::new(mem),
            start: 0,
            len,
            writable,
            layout: None,
        })
    }

    /// A buffer holding a copy of `data`.
    pub fn from_bytes(data: &[u8], writable: bool) -> Result<SharedBuffer> {
        let buffer = SharedBuffer::new(data.len(), writable)?;
        buffer.mem.write(0, data);
        Ok(buffer)
    }

    /// Size in bytes (of the part this handle covers).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a buffer of zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether receivers get writable views.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// A handle on the bytes `range` of this one (offsets relative to this handle), over
    /// the same memory: nothing is copied.
    pub fn slice(&self, range: Range<usize>) -> Result<SharedBuffer> {
        if range.start > range.end || range.end > self.len {
            return Err(Error::InvalidArgument(format!(
                "the range {range:?} is not inside a {}-byte buffer",
                self.len
            )));
        }
        Ok(SharedBuffer {
            mem: Arc::clone(&self.mem),
            start: self.start + range.start,
            len: range.end - range.start,
            writable: self.writable,
            layout: None,
        })
    }

    /// A copy of the current contents. Bytes written concurrently by Python code may or
    /// may not be seen.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        self.mem.read(self.start, &mut out);
        out
    }

    /// Writes `data` at `offset`. Fails if it would run past the end.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        match offset.checked_add(data.len()) {
            Some(end) if end <= self.len => {
                self.mem.write(self.start + offset, data);
                Ok(())
            }
            _ => Err(Error::InvalidArgument(format!(
                "writing {} bytes at offset {offset} runs past the end of a {}-byte buffer",
                data.len(),
                self.len
            ))),
        }
    }

    /// True if both handles share the same memory (whichever parts of it they cover).
    pub fn same_memory(&self, other: &SharedBuffer) -> bool {
        Arc::ptr_eq(&self.mem, &other.mem)
    }

    /// Number of handles (Rust handles and Python buffer objects) keeping the memory alive.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.mem)
    }

    pub(crate) fn mem(&self) -> &Arc<BufferMem> {
        &self.mem
    }

    /// Where the bytes of this handle start in [`mem`](Self::mem).
    pub(crate) fn start(&self) -> usize {
        self.start
    }

    /// A handle on `len` bytes at `start` of the same memory (absolute offsets, checked
    /// by the caller), with the given writability and Python layout.
    pub(crate) fn window(
        &self,
        start: usize,
        len: usize,
        writable: bool,
        layout: Option<Layout>,
    ) -> SharedBuffer {
        SharedBuffer {
            mem: Arc::clone(&self.mem),
            start,
            len,
            writable,
            layout: layout.map(Arc::new),
        }
    }

    pub(crate) fn layout(&self) -> Option<&Layout> {
        self.layout.as_deref()
    }
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuffer")
            .field("len", &self.len())
            .field("writable", &self.writable)
            .finish()
    }
}
