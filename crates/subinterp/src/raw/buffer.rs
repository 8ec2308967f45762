//! Memory shared between interpreters: the storage behind [`SharedBuffer`](crate::SharedBuffer).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

use pyo3_ffi as ffi;

use super::PyObj;
use crate::error::Result;

/// A fixed-size, zero-initialised block of bytes, freed when dropped.
///
/// Python code may write to it through writable views while other threads read it, so
/// Rust only touches it through atomic byte operations, which are defined under races.
pub(crate) struct BufferMem {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is plain bytes owned by this value; every Rust access goes through
// atomic operations, and Python views are only created while an owner keeps it alive.
unsafe impl Send for BufferMem {}
// SAFETY: see `Send`.
unsafe impl Sync for BufferMem {}

impl BufferMem {
    /// Allocates `len` zeroed bytes; `None` if the allocation fails.
    pub(crate) fn zeroed(len: usize) -> Option<BufferMem> {
        if len == 0 {
            return Some(BufferMem {
                ptr: NonNull::dangling(),
                len,
            });
        }
        let layout = Layout::array::<u8>(len).ok()?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        NonNull::new(ptr).map(|ptr| BufferMem { ptr, len })
    }

    /// The address of byte `start` of the `len` bytes starting there, for Python's
    /// buffer protocol; `None` if they run past the end.
    pub(crate) fn range_ptr(&self, start: usize, len: usize) -> Option<*mut u8> {
        let end = start.checked_add(len)?;
        // `wrapping_add` stays inside the allocation (or at its end) after the check.
        (end <= self.len).then(|| self.ptr.as_ptr().wrapping_add(start))
    }

    /// The offset of the address `addr` from the start of the memory, if `len` bytes
    /// from there lie inside it.
    pub(crate) fn offset_of(&self, addr: usize, len: usize) -> Option<usize> {
        let start = addr.checked_sub(self.ptr.as_ptr() as usize)?;
        (start.checked_add(len)? <= self.len).then_some(start)
    }

    fn atomics(&self) -> &[AtomicU8] {
        // SAFETY: `AtomicU8` has the size and alignment of `u8`; the memory is valid for
        // `len` bytes for as long as `self` lives (dangling but unused when `len` is 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU8>(), self.len) }
    }

    /// Copies bytes out, starting at `offset`, into `out`.
    pub(crate) fn read(&self, offset: usize, out: &mut [u8]) {
        for (dst, src) in out.iter_mut().zip(&self.atomics()[offset..]) {
            *dst = src.load(Ordering::Relaxed);
        }
    }

    /// Copies `data` in, starting at `offset`.
    pub(crate) fn write(&self, offset: usize, data: &[u8]) {
        for (dst, src) in self.atomics()[offset..].iter().zip(data) {
            dst.store(*src, Ordering::Relaxed);
        }
    }
}

impl Drop for BufferMem {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = Layout::array::<u8>(self.len).expect("layout was valid at allocation");
            // SAFETY: allocated in `zeroed` with this very layout, freed once.
            unsafe { dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

/// What a buffer view (a `memoryview`) shows of the memory it was made from.
pub(crate) struct ViewInfo {
    /// The address of its first byte.
    pub(crate) addr: usize,
    /// Its size in bytes.
    pub(crate) len: usize,
    pub(crate) readonly: bool,
    /// True when its bytes are one C-contiguous block (strided views are not).
    pub(crate) contiguous: bool,
    /// Its `struct` format (`"B"` for plain bytes).
    pub(crate) format: String,
    /// Its shape (one entry per dimension).
    pub(crate) shape: Vec<usize>,
}

/// The layout of the buffer `obj` exports, read through the buffer protocol; an error
/// (the exception raised) if it exports none, or a released `memoryview`.
pub(crate) fn view_info(obj: &PyObj<'_>) -> Result<ViewInfo> {
    let py = obj.py();
    let mut storage = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed();
    // The view stays where the exporter filled it: some exporters point its `shape` at
    // its own `len` field.
    let view = storage.as_mut_ptr();
    // SAFETY: GIL held (the token in `obj`), `obj` is live and `view` is writable
    // storage for one Py_buffer, filled on success (status 0).
    let status = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view, ffi::PyBUF_FULL_RO) };
    py.check(status)?;
    // SAFETY: the view was filled by the successful call above, with PyBUF_FULL_RO: a
    // NUL-terminated format (or NULL for "B") and `ndim` shape entries (or NULL for one
    // dimension of `len` bytes), valid until it is released below; PyBuffer_IsContiguous
    // reads only the view.
    let info = unsafe {
        let v = &*view;
        let ndim = usize::try_from(v.ndim).unwrap_or(0);
        let format = if v.format.is_null() {
            "B".to_owned()
        } else {
            std::ffi::CStr::from_ptr(v.format)
                .to_string_lossy()
                .into_owned()
        };
        let len = usize::try_from(v.len).unwrap_or(0);
        let shape = if ndim == 0 {
            // A scalar view (`cast(fmt, shape=[])`): no dimensions, whatever `shape` is.
            Vec::new()
        } else if v.shape.is_null() {
            vec![len]
        } else {
            std::slice::from_raw_parts(v.shape, ndim)
                .iter()
                .map(|&n| usize::try_from(n).unwrap_or(0))
                .collect()
        };
        ViewInfo {
            addr: v.buf as usize,
            len,
            readonly: v.readonly != 0,
            contiguous: ffi::PyBuffer_IsContiguous(view, b'C' as std::ffi::c_char) != 0,
            format,
            shape,
        }
    };
    // SAFETY: releases the view obtained above, once, where it was filled.
    unsafe { ffi::PyBuffer_Release(view) };
    Ok(info)
}
