//! Memory shared between interpreters: the storage behind [`SharedBuffer`](crate::SharedBuffer).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, Ordering};

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

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The start of the memory, for Python's buffer protocol.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
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
