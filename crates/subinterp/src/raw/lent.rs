//! Large `bytes` lent across interpreters: the sender's object is referenced in place
//! until the receiver has copied it, so a large `bytes` crosses with one copy (the
//! receiver's own object), not two.
//!
//! As CPython's own cross-interpreter data does for `bytes` (`_PyBytes_GetXIData`, whose
//! reference is released in the owning interpreter), the object is only ever touched by
//! its own interpreter: it is referenced there when lent, and released there, with that
//! interpreter's GIL. Other threads only read its bytes, which never change (a `bytes` is
//! immutable, and a referenced one is never resized).
//!
//! Each interpreter that may lend has an [`Owner`]: the table of its objects on loan and
//! of those to release. A receiver copies under the owner's lock; a loan that ends is
//! queued for release, and the owner releases its queue whenever it next sends or
//! receives on a channel ([`release_returned`]) and when it ends. When an interpreter ends
//! ([`interpreter_ending`], called with its GIL before CPython finalises it), every loan
//! still out is copied into memory of its own and the object released: a message sent by
//! an interpreter that is gone is still received, whole. Interpreters that never called
//! [`register`] (made by someone else, without that hook) do not lend: their
//! `bytes` are copied at once, as before.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pyo3_ffi as ffi;

use super::{PyObj, Python};
use crate::error::Result;

/// An object of one interpreter, held by Rust code while other threads may run.
struct Held(NonNull<ffi::PyObject>);

// SAFETY: the pointer is only dereferenced (its reference released) by the owning
// interpreter with its GIL held; other threads only move it around.
unsafe impl Send for Held {}

/// A loan: the lent object and where its bytes are, or its bytes copied out once the
/// interpreter that owns it ended.
enum Loan {
    InPlace {
        obj: Held,
        data: *const u8,
        len: usize,
    },
    Copied(Vec<u8>),
}

// SAFETY: `data` points into the lent object, which is immutable and kept alive by the
// loan; it is only read.
unsafe impl Send for Loan {}

#[derive(Default)]
struct OwnerState {
    ending: bool,
    next: u64,
    loans: HashMap<u64, Loan>,
    /// Objects whose loans ended, to be released by the owner.
    returned: Vec<Held>,
}

/// The loans of one interpreter.
struct Owner {
    id: i64,
    /// How many objects wait in `returned`: the fast path of [`release_returned`] reads
    /// only this.
    waiting: AtomicUsize,
    state: Mutex<OwnerState>,
}

impl Owner {
    fn lock(&self) -> MutexGuard<'_, OwnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The interpreters that lend, by CPython's interpreter id (never reused).
static OWNERS: Mutex<Option<HashMap<i64, Arc<Owner>>>> = Mutex::new(None);

/// Counts registrations, so that a thread knows when what it cached may be stale.
static REGISTERED: AtomicUsize = AtomicUsize::new(0);

/// What a thread last looked up: the registrations counted then, an interpreter id and
/// its owner (`None`: it does not lend).
type Lookup = (usize, i64, Option<Arc<Owner>>);

thread_local! {
    /// The owner this thread last looked up, so that sending and receiving take no
    /// process-wide lock (in an interpreter that does not lend either).
    static LAST: std::cell::RefCell<Option<Lookup>> = const { std::cell::RefCell::new(None) };
}

fn owners() -> MutexGuard<'static, Option<HashMap<i64, Arc<Owner>>>> {
    OWNERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn owner_of(id: i64) -> Option<Arc<Owner>> {
    owners().as_ref().and_then(|map| map.get(&id).cloned())
}

/// Runs `f` on the owner of interpreter `id`, if it lends (an owner that ended stays
/// cached here: it only copies from then on).
fn with_owner<R>(id: i64, f: impl FnOnce(&Arc<Owner>) -> R) -> Option<R> {
    let registered = REGISTERED.load(Ordering::Acquire);
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let fresh = matches!(&*last, Some((n, cached, _)) if *n == registered && *cached == id);
        if !fresh {
            *last = Some((registered, id, owner_of(id)));
        }
        last.as_ref()
            .and_then(|(_, _, owner)| owner.as_ref())
            .map(f)
    })
}

/// Lets the current interpreter lend: call it once it exists, from code that will call
/// [`interpreter_ending`] before it ends.
pub(crate) fn register(id: i64) {
    owners()
        .get_or_insert_with(HashMap::new)
        .entry(id)
        .or_insert_with(|| {
            Arc::new(Owner {
                id,
                waiting: AtomicUsize::new(0),
                state: Mutex::new(OwnerState::default()),
            })
        });
    REGISTERED.fetch_add(1, Ordering::Release);
}

/// The bytes of a `bytes` object lent by its interpreter, or copied out of it once that
/// interpreter ended. Clones share the loan; it ends when the last one is dropped.
#[derive(Clone)]
pub(crate) struct LentBytes(Arc<Handle>);

struct Handle {
    owner: Arc<Owner>,
    key: u64,
    len: usize,
}

impl LentBytes {
    /// Lends `obj` if it is exactly a `bytes` of at least `min_len` bytes and this
    /// interpreter lends; `None` otherwise (the caller copies it).
    pub(crate) fn lend(obj: &PyObj<'_>, min_len: usize) -> Option<LentBytes> {
        let py = obj.py();
        let p = obj.as_ptr();
        // SAFETY: the token proves the GIL is held and `p` is live; the size is read
        // after the type check.
        let size = unsafe {
            if ffi::PyBytes_CheckExact(p) == 0 {
                return None;
            }
            usize::try_from(ffi::PyBytes_Size(p)).unwrap_or(0)
        };
        if size < min_len || size == 0 {
            return None;
        }
        let owner = with_owner(py.interpreter_id(), Arc::clone)?;
        // SAFETY: an exact bytes object: its buffer holds `size` bytes and lives as long
        // as the object, which the reference taken below keeps alive.
        let data = unsafe { ffi::PyBytes_AsString(p).cast::<u8>().cast_const() };
        let mut state = owner.lock();
        let loan = if state.ending {
            // Ending: nothing may stay referenced; copy now.
            // SAFETY: `size` bytes at `data`, owned by the live object.
            Loan::Copied(unsafe { std::slice::from_raw_parts(data, size) }.to_vec())
        } else {
            // SAFETY: GIL held, `p` live: the new reference is the loan's.
            unsafe { ffi::Py_INCREF(p) };
            Loan::InPlace {
                obj: Held(NonNull::new(p)?),
                data,
                len: size,
            }
        };
        let key = state.next;
        state.next += 1;
        state.loans.insert(key, loan);
        drop(state);
        Some(LentBytes(Arc::new(Handle {
            owner,
            key,
            len: size,
        })))
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len
    }

    /// Runs `f` on the bytes, under the owner's lock (so the owner cannot end meanwhile).
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let state = self.0.owner.lock();
        match state.loans.get(&self.0.key) {
            Some(Loan::InPlace { data, len, .. }) => {
                // SAFETY: the loan keeps the immutable object alive, and the owner's lock
                // keeps the loan in place.
                f(unsafe { std::slice::from_raw_parts(*data, *len) })
            }
            Some(Loan::Copied(bytes)) => f(bytes),
            None => f(&[]), // unreachable: a handle's loan lives as long as the handle
        }
    }

    /// A copy of the bytes.
    pub(crate) fn to_vec(&self) -> Vec<u8> {
        self.with_bytes(<[u8]>::to_vec)
    }

    /// A new `bytes` object of this interpreter holding a copy of the bytes; the loan
    /// ends, and is released at once when this interpreter is the owner and this handle
    /// the last one.
    pub(crate) fn into_object<'py>(self, py: Python<'py>) -> Result<PyObj<'py>> {
        let obj = self.with_bytes(|data| py.to_object_bytes(data));
        let owner = Arc::clone(&self.0.owner);
        drop(self);
        if owner.id == py.interpreter_id() {
            release_returned(py);
        }
        obj
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut state = self.owner.lock();
        if let Some(Loan::InPlace { obj, .. }) = state.loans.remove(&self.key) {
            // Only while the owner lives: an ending owner copied every loan out.
            state.returned.push(obj);
            self.owner.waiting.fetch_add(1, Ordering::Release);
        }
    }
}

/// Releases the objects of the current interpreter whose loans ended. Cheap when there
/// are none anywhere.
pub(crate) fn release_returned(py: Python<'_>) {
    let returned = with_owner(py.interpreter_id(), |owner| {
        if owner.waiting.load(Ordering::Acquire) == 0 {
            return Vec::new();
        }
        let returned = std::mem::take(&mut owner.lock().returned);
        owner.waiting.fetch_sub(returned.len(), Ordering::Release);
        returned
    });
    if let Some(returned) = returned {
        release(py, returned);
    }
}

fn release(_py: Python<'_>, objects: Vec<Held>) {
    for obj in objects {
        // SAFETY: the token proves the owning interpreter's GIL is held (callers pass
        // only their own interpreter's objects); the reference was taken in `lend`.
        unsafe { ffi::Py_DECREF(obj.0.as_ptr()) };
    }
}

/// Called in an interpreter that is about to end, with its GIL held: every loan still
/// out is copied into memory of its own (the message stays whole), every lent object is
/// released, and later `bytes` sent from it (by `atexit` code) are copied at once.
pub(crate) fn interpreter_ending(py: Python<'_>) {
    let id = py.interpreter_id();
    let Some(owner) = owners().as_mut().and_then(|map| map.remove(&id)) else {
        return;
    };
    let mut state = owner.lock();
    state.ending = true;
    let mut objects = std::mem::take(&mut state.returned);
    owner.waiting.store(0, Ordering::Release);
    for loan in state.loans.values_mut() {
        if let Loan::InPlace { data, len, .. } = loan {
            // SAFETY: the loan keeps the immutable object alive while the lock is held.
            let copy = unsafe { std::slice::from_raw_parts(*data, *len) }.to_vec();
            if let Loan::InPlace { obj, .. } = std::mem::replace(loan, Loan::Copied(copy)) {
                objects.push(obj);
            }
        }
    }
    drop(state);
    release(py, objects);
}
