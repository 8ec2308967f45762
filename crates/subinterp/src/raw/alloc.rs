//! Memory accounting per interpreter: hooks around CPython's `PYMEM_DOMAIN_MEM` and
//! `PYMEM_DOMAIN_OBJ` allocators that charge each block to the interpreter whose thread
//! allocates it, and refuse an allocation past that interpreter's limit.
//!
//! How it works:
//! - [`install`] wraps the allocators in place (`PyMem_GetAllocator` /
//!   `PyMem_SetAllocator`): after `Py_PreInitialize`, before `Py_InitializeFromConfig`, so
//!   every block of those domains freed later was allocated through the hooks. (Installed
//!   later, a block allocated before could not be told from one allocated after; so the
//!   hooks are not available to a Python that is already running.)
//! - Every block carries a 16-byte header (16 keeps CPython's alignment) holding its size
//!   and the account it was charged to. A free credits that account, whichever thread or
//!   interpreter frees it; a realloc moves the charge to the current one.
//! - The calling interpreter is found from the current thread state
//!   (`PyThreadState_GetUnchecked`, a thread-local read, and its `interp`), so the
//!   threads Python code starts with `threading` are charged to their interpreter too.
//!   A per-thread cache maps it to an account slot; the cache is checked against a
//!   registry generation bumped at each registration and release.
//! - Accounts are slots of a static table, never freed: a stale header or cache can at
//!   worst name a slot whose generation no longer matches, which is then ignored.
//!
//! The hooks are called by CPython with the GIL of some interpreter held (or during
//! start-up and finalisation); they take no lock, never panic and never call back into
//! Python.
//!
//! Not counted: the raw domain (`PyMem_RawMalloc`: a few internal structures, thread
//! states, and what extensions allocate with it), memory extensions get from `malloc`
//! themselves (numpy's arrays, for one), and the allocator's own overhead (arena slack,
//! the headers).

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};

use pyo3_ffi as ffi;

use super::lifecycle::SubInterpreter;

/// Bytes in front of every block: its size, and the account tag. 16 keeps the 16-byte
/// alignment CPython's allocators give.
const HEADER: usize = 16;

/// Account slots: at most this many interpreters are accounted at once.
const SLOTS: usize = 4096;
/// A tag's slot bits (slot index + 1; 0 is "not charged").
const SLOT_BITS: u32 = 13;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
/// The sentinel for "no account" in the per-thread cache.
const NONE: usize = 0;

#[repr(align(64))]
struct Slot {
    /// The `PyInterpreterState` address this slot accounts for (0: free).
    interp: AtomicUsize,
    /// Bumped at each registration; part of every tag.
    generation: AtomicUsize,
    /// Bytes charged now. Signed: a free racing a release and a new registration may
    /// briefly take it below zero; readers clamp.
    in_use: AtomicIsize,
    peak: AtomicUsize,
    /// 0: no limit.
    limit: AtomicUsize,
    /// Allocations refused because of the limit.
    refused: AtomicU64,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            interp: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            in_use: AtomicIsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

static TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
/// One past the highest slot ever used: lookups scan no further.
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Bumped at each registration and release, so that per-thread caches are rechecked.
static REGISTRY: AtomicUsize = AtomicUsize::new(1);
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The tag of the interpreter this thread is the owner of: set by the interpreter's
    /// own thread, which attaches no other interpreter's thread state while it is set.
    static OWN: Cell<usize> = const { Cell::new(NONE) };
    /// (interpreter address, tag or NONE, registry generation) of the last lookup, for
    /// the other threads (those Python code starts, interrupt deliverers, the host's).
    static CACHE: Cell<(usize, usize, usize)> = const { Cell::new((0, NONE, 0)) };
}

/// The allocator a hook wraps: the hooks' `ctx`, leaked, never freed.
struct Inner(ffi::PyMemAllocatorEx);

/// Whether the hooks are installed in this process.
pub(crate) fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Wraps the `MEM` and `OBJ` domain allocators with the accounting hooks. Must be called
/// after `Py_PreInitialize` and before `Py_InitializeFromConfig`, once per process (a
/// second call does nothing).
pub(crate) fn install() {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return;
    }
    for domain in [
        ffi::PyMemAllocatorDomain::PYMEM_DOMAIN_MEM,
        ffi::PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ,
    ] {
        let mut old = ffi::PyMemAllocatorEx {
            ctx: std::ptr::null_mut(),
            malloc: None,
            calloc: None,
            realloc: None,
            free: None,
        };
        // SAFETY: CPython is pre-initialised and not yet initialised (the caller's
        // contract): no other thread allocates, and no block of these domains exists
        // that will be freed later. `old` is a valid out-parameter.
        unsafe { ffi::PyMem_GetAllocator(domain, &mut old) };
        let ctx: *mut Inner = Box::into_raw(Box::new(Inner(old)));
        let mut hooks = ffi::PyMemAllocatorEx {
            ctx: ctx.cast(),
            malloc: Some(hook_malloc),
            calloc: Some(hook_calloc),
            realloc: Some(hook_realloc),
            free: Some(hook_free),
        };
        // SAFETY: as above; CPython copies the struct; `ctx` is leaked and lives forever.
        unsafe { ffi::PyMem_SetAllocator(domain, &mut hooks) };
    }
}

/// The account tag of the calling thread's interpreter, or NONE.
#[inline]
fn current_tag() -> usize {
    let own = OWN.try_with(Cell::get).unwrap_or(NONE);
    if own != NONE {
        return own;
    }
    tag_from_thread_state()
}

#[inline(never)]
fn tag_from_thread_state() -> usize {
    // SAFETY: a read of CPython's thread-local current thread state; never fails.
    let tstate = unsafe { ffi::compat::PyThreadState_GetUnchecked() };
    if tstate.is_null() {
        return NONE;
    }
    // SAFETY: `tstate` is this thread's live thread state (it cannot be freed while it is
    // current); the call only reads its `interp` field.
    let interp = unsafe { ffi::PyThreadState_GetInterpreter(tstate) } as usize;
    let registry = REGISTRY.load(Ordering::Acquire);
    CACHE
        .try_with(|cache| {
            let (cached, tag, generation) = cache.get();
            if cached == interp && generation == registry {
                return tag;
            }
            let tag = lookup(interp);
            cache.set((interp, tag, registry));
            tag
        })
        .unwrap_or_else(|_| lookup(interp))
}

fn lookup(interp: usize) -> usize {
    let high = HIGH.load(Ordering::Acquire).min(SLOTS);
    for (index, slot) in TABLE[..high].iter().enumerate() {
        if slot.interp.load(Ordering::Acquire) == interp {
            let generation = slot.generation.load(Ordering::Acquire);
            return (index + 1) | (generation << SLOT_BITS);
        }
    }
    NONE
}

/// The slot a tag names, if its generation is still current.
#[inline]
fn slot_of(tag: usize) -> Option<&'static Slot> {
    let index = (tag & SLOT_MASK).checked_sub(1)?;
    let slot = TABLE.get(index)?;
    (slot.generation.load(Ordering::Relaxed) == tag >> SLOT_BITS).then_some(slot)
}

/// Charges `size` bytes to `tag`'s account; false (and nothing charged) past its limit.
#[inline]
fn charge(tag: usize, size: usize) -> bool {
    let Some(slot) = slot_of(tag) else {
        return true;
    };
    // A load and a store, not a locked read-modify-write: every charge to an account
    // is made with its interpreter's GIL held, so charges never race each other (a
    // credit from another interpreter's thread, which CPython's isolation rules out
    // for an own allocator, could at worst be lost: the figure drifts, nothing breaks).
    let now = slot
        .in_use
        .load(Ordering::Relaxed)
        .wrapping_add(size as isize);
    let limit = slot.limit.load(Ordering::Relaxed);
    if limit != 0 && now > limit.min(isize::MAX as usize) as isize {
        slot.refused.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    slot.in_use.store(now, Ordering::Relaxed);
    let now = now.max(0) as usize;
    if now > slot.peak.load(Ordering::Relaxed) {
        slot.peak.fetch_max(now, Ordering::Relaxed);
    }
    true
}

#[inline]
fn credit(tag: usize, size: usize) {
    if let Some(slot) = slot_of(tag) {
        let now = slot.in_use.load(Ordering::Relaxed);
        slot.in_use
            .store(now.wrapping_sub(size as isize), Ordering::Relaxed);
    }
}

/// Writes the header at `base` and returns the block the caller sees.
///
/// # Safety
/// `base` is a live block of at least `HEADER` bytes, 16-byte aligned.
#[inline]
unsafe fn finish(base: *mut c_void, size: usize, tag: usize) -> *mut c_void {
    let words = base.cast::<usize>();
    // SAFETY: the caller's contract: two words fit at `base`, aligned.
    unsafe {
        words.write(size);
        words.add(1).write(tag);
        base.cast::<u8>().add(HEADER).cast()
    }
}

/// The start of the block behind `ptr`, with its size and tag.
///
/// # Safety
/// `ptr` was returned by one of these hooks and not freed.
#[inline]
unsafe fn header(ptr: *mut c_void) -> (*mut c_void, usize, usize) {
    // SAFETY: the caller's contract: a header precedes `ptr`.
    unsafe {
        let base = ptr.cast::<u8>().sub(HEADER);
        let words = base.cast::<usize>();
        (base.cast(), words.read(), words.add(1).read())
    }
}

/// # Safety
/// `ctx` is the `Inner` leaked by [`install`].
#[inline]
unsafe fn inner<'a>(ctx: *mut c_void) -> &'a ffi::PyMemAllocatorEx {
    // SAFETY: the caller's contract; the `Inner` is never freed.
    unsafe { &(*ctx.cast::<Inner>()).0 }
}

extern "C" fn hook_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: CPython passes back the ctx given in `install`.
    let inner = unsafe { inner(ctx) };
    let (Some(malloc), Some(total)) = (inner.malloc, size.checked_add(HEADER)) else {
        return std::ptr::null_mut();
    };
    let tag = current_tag();
    if !charge(tag, size) {
        return std::ptr::null_mut();
    }
    let base = malloc(inner.ctx, total);
    if base.is_null() {
        credit(tag, size);
        return base;
    }
    // SAFETY: a fresh block of `total` bytes from CPython's allocator (16-byte aligned).
    unsafe { finish(base, size, tag) }
}

extern "C" fn hook_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    // SAFETY: CPython passes back the ctx given in `install`.
    let inner = unsafe { inner(ctx) };
    let Some(size) = nelem.checked_mul(elsize) else {
        return std::ptr::null_mut();
    };
    let (Some(calloc), Some(total)) = (inner.calloc, size.checked_add(HEADER)) else {
        return std::ptr::null_mut();
    };
    let tag = current_tag();
    if !charge(tag, size) {
        return std::ptr::null_mut();
    }
    let base = calloc(inner.ctx, 1, total);
    if base.is_null() {
        credit(tag, size);
        return base;
    }
    // SAFETY: a fresh zeroed block of `total` bytes (16-byte aligned).
    unsafe { finish(base, size, tag) }
}

extern "C" fn hook_realloc(ctx: *mut c_void, ptr: *mut c_void, size: usize) -> *mut c_void {
    if ptr.is_null() {
        return hook_malloc(ctx, size);
    }
    // SAFETY: CPython passes back the ctx given in `install`.
    let inner = unsafe { inner(ctx) };
    let (Some(realloc), Some(total)) = (inner.realloc, size.checked_add(HEADER)) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a block of this domain, allocated through the hooks (installed before any).
    let (base, old_size, old_tag) = unsafe { header(ptr) };
    let tag = current_tag();
    // The new size is charged before the old one is credited, so growing in place past
    // the limit fails and leaves the block as it was (realloc's contract).
    if !charge(tag, size) {
        return std::ptr::null_mut();
    }
    let moved = realloc(inner.ctx, base, total);
    if moved.is_null() {
        credit(tag, size);
        return moved;
    }
    credit(old_tag, old_size);
    // SAFETY: the reallocated block of `total` bytes.
    unsafe { finish(moved, size, tag) }
}

extern "C" fn hook_free(ctx: *mut c_void, ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: CPython passes back the ctx given in `install`.
    let inner = unsafe { inner(ctx) };
    // SAFETY: a block of this domain, allocated through the hooks.
    let (base, size, tag) = unsafe { header(ptr) };
    credit(tag, size);
    if let Some(free) = inner.free {
        free(inner.ctx, base);
    }
}

/// The memory account of one interpreter: a slot of the static table, valid until
/// [`release`](Self::release).
#[derive(Debug)]
pub(crate) struct Account {
    index: usize,
    generation: usize,
}

/// Memory figures of an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub in_use: usize,
    pub peak: usize,
    pub refused: u64,
}

impl Account {
    /// Opens an account for `sub`, charged from now on for every block its threads
    /// allocate, with `limit` bytes at most (0: no limit). None when the hooks are not
    /// installed or every slot is taken.
    pub(crate) fn open(sub: &SubInterpreter, limit: usize) -> Option<Account> {
        if !installed() {
            return None;
        }
        let interp = sub.interp_address();
        for (index, slot) in TABLE.iter().enumerate() {
            if slot
                .interp
                .compare_exchange(0, interp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.in_use.store(0, Ordering::Relaxed);
                slot.peak.store(0, Ordering::Relaxed);
                slot.refused.store(0, Ordering::Relaxed);
                slot.limit.store(limit, Ordering::Relaxed);
                let generation =
                    (slot.generation.load(Ordering::Relaxed) + 1) & (usize::MAX >> SLOT_BITS);
                slot.generation.store(generation, Ordering::Release);
                HIGH.fetch_max(index + 1, Ordering::AcqRel);
                REGISTRY.fetch_add(1, Ordering::AcqRel);
                return Some(Account { index, generation });
            }
        }
        None
    }

    /// Charges what the calling thread allocates to this account without looking up its
    /// thread state, until [`leave_thread`](Self::leave_thread): for the interpreter's
    /// own thread, which must attach no other interpreter's thread state meanwhile.
    pub(crate) fn enter_thread(&self) {
        let tag = (self.index + 1) | (self.generation << SLOT_BITS);
        let _ = OWN.try_with(|own| own.set(tag));
    }

    /// Ends [`enter_thread`](Self::enter_thread) on the calling thread.
    pub(crate) fn leave_thread() {
        let _ = OWN.try_with(|own| own.set(NONE));
    }

    fn slot(&self) -> Option<&'static Slot> {
        let slot = TABLE.get(self.index)?;
        (slot.generation.load(Ordering::Acquire) == self.generation).then_some(slot)
    }

    /// The account's figures now.
    pub(crate) fn usage(&self) -> Usage {
        self.slot().map_or(Usage::default(), |slot| Usage {
            in_use: slot.in_use.load(Ordering::Relaxed).max(0) as usize,
            peak: slot.peak.load(Ordering::Relaxed),
            refused: slot.refused.load(Ordering::Relaxed),
        })
    }

    /// Closes the account (its interpreter has ended): returns its last figures. Blocks
    /// charged to it and freed later are no longer credited anywhere.
    pub(crate) fn release(self) -> Usage {
        let usage = self.usage();
        if let Some(slot) = self.slot() {
            slot.limit.store(0, Ordering::Relaxed);
            // A generation no tag holds, until the slot is opened again.
            slot.generation.store(
                (self.generation + 1) & (usize::MAX >> SLOT_BITS),
                Ordering::Release,
            );
            slot.interp.store(0, Ordering::Release);
            REGISTRY.fetch_add(1, Ordering::AcqRel);
        }
        usage
    }
}
