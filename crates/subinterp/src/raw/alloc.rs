//! Memory accounting per interpreter: hooks around CPython's allocators that charge
//! memory to the interpreter whose thread asks for it, and refuse it past that
//! interpreter's limit.
//!
//! What is hooked, and why not the `MEM` and `OBJ` domains themselves: knowing a block's
//! size when it is freed takes a header in front of every block, and 16 bytes more on
//! every small object cost allocation-heavy code 20-30% of its time (measured with
//! `benches/limits.rs`). CPython's own allocator (pymalloc) serves both domains, and gets
//! its memory from two places that say the size at free:
//! - **arenas** of 1 MiB (256 KiB without the radix tree) for blocks up to 512 bytes,
//!   through the arena allocator (`PyObject_SetArenaAllocator`), whose `free` is given
//!   the size; an isolated interpreter has arenas of its own, allocated and freed on its
//!   threads;
//! - the **raw domain** (`PyMem_RawMalloc`, plain `malloc`) for larger blocks, whose size
//!   at free is `malloc_usable_size`.
//!
//! So small objects are counted by the arenas holding them (memory pymalloc holds, as
//! RSS sees it, not the bytes of live objects), and large blocks and everything else of
//! the raw domain block by block. Both hooks are called far less often than the object
//! allocator. The hooks are installed after `Py_PreInitialize`, before
//! `Py_InitializeFromConfig` ([`install`]), and only when the raw domain is plain
//! `malloc` (not a debug build's hooks).
//!
//! The calling interpreter: the interpreter's own thread says so in a thread-local
//! ([`Account::enter_thread`]); any other thread is looked up from its current thread
//! state (`PyThreadState_GetUnchecked`, a thread-local read, and its `interp`), so the
//! threads Python code starts with `threading` are charged to their interpreter too. A
//! per-thread cache maps the interpreter to an account slot, rechecked against a
//! registry generation bumped at each registration and release. Accounts are slots of a
//! static table, never freed.
//!
//! A block is credited at free to the interpreter freeing it. The rare block freed by
//! another interpreter than the one it was charged to (possible for interpreters that
//! share the main allocator, `use_main_obmalloc`), or by a thread with no thread state,
//! leaves its charge where it was; figures read below zero are read as zero.
//!
//! **Enforcing a limit.** CPython handles a failed allocation of a large block well (the
//! paths that make big strings, bytes, lists' and dicts' tables raise `MemoryError` and
//! leave everything as it was), but not every failed small allocation: CPython 3.13.0
//! crashed (`SIGSEGV` in `dictresize`) after small allocations of an interpreter's
//! internals (its interned-string table, exception objects) had been refused again and
//! again at the limit. So only a request of at least [`LARGE_BLOCK`] bytes is refused
//! at once; smaller blocks and arenas are granted past the limit, and the hook wakes the
//! watcher ([`set_watcher`]), which raises `MemoryError` in the interpreter
//! asynchronously, as a deadline raises `TimeoutError` — at its next bytecode boundary,
//! in Python code, never inside an allocation. Past the limit plus its slack
//! ([`ceiling`]), where the asynchronous error has not stopped code that allocates
//! without returning to Python (a C function building a huge structure), every
//! growth is refused.
//!
//! The hooks take no lock, never panic and never call back into Python; they read the
//! allocators they wrap from statics, not from their `ctx`, so that installing them in a
//! running Python ([`install_running`]), where another thread may read the allocator
//! while it is replaced, is safe with any mix of old and new fields.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use pyo3_ffi as ffi;

use super::lifecycle::SubInterpreter;

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
    /// Allocations refused because of the limit, and `MemoryError`s raised for it.
    refused: AtomicU64,
    /// Set by a hook that granted memory past the limit, until the watcher takes it.
    over: AtomicBool,
    /// The soft limit (0: none): passing it wakes the watcher once, until the account
    /// falls back under it.
    soft: AtomicUsize,
    /// [`SOFT_ARMED`], [`SOFT_PASSED`] or [`SOFT_TOLD`].
    soft_state: AtomicU8,
}

/// Under the soft limit, or not told yet.
const SOFT_ARMED: u8 = 0;
/// A hook saw the soft limit passed; the watcher has not taken the notice.
const SOFT_PASSED: u8 = 1;
/// The watcher took the notice; armed again once under the soft limit.
const SOFT_TOLD: u8 = 2;

impl Slot {
    const fn new() -> Self {
        Slot {
            interp: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            in_use: AtomicIsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            over: AtomicBool::new(false),
            soft: AtomicUsize::new(0),
            soft_state: AtomicU8::new(SOFT_ARMED),
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

/// Requests of at least this many bytes past the limit are refused at once; smaller
/// ones are granted and the interpreter gets an asynchronous `MemoryError`.
pub(crate) const LARGE_BLOCK: usize = 1 << 20;

/// How far past its limit an interpreter may go before every growth is refused: a
/// quarter of the limit, at least 16 MiB.
pub(crate) fn ceiling(limit: usize) -> usize {
    limit.saturating_add((limit / 4).max(16 << 20))
}

/// The raw allocator the hooks wrap.
struct RawInner(ffi::PyMemAllocatorEx);
/// The arena allocator the hooks wrap.
struct ArenaInner(ffi::PyObjectArenaAllocator);
// SAFETY: the wrapped allocators are plain function pointers with a context pointer
// that CPython's own allocators accept from any thread.
unsafe impl Sync for RawInner {}
// SAFETY: as above.
unsafe impl Send for RawInner {}
// SAFETY: as above.
unsafe impl Sync for ArenaInner {}
// SAFETY: as above.
unsafe impl Send for ArenaInner {}

static RAW: OnceLock<RawInner> = OnceLock::new();
static ARENA: OnceLock<ArenaInner> = OnceLock::new();
/// The thread that raises `MemoryError` in interpreters past their limit.
static WATCHER: OnceLock<Thread> = OnceLock::new();

/// Registers the thread woken (`unpark`) when an interpreter goes past its limit: it
/// looks at [`Account::take_over_limit`] of each account.
pub(crate) fn set_watcher(thread: Thread) {
    let _ = WATCHER.set(thread);
}

/// Whether the hooks are installed in this process.
pub(crate) fn installed() -> bool {
    INSTALLED.load(Ordering::Acquire)
}

/// Wraps the raw-domain and arena allocators with the accounting hooks. Must be called
/// after `Py_PreInitialize` and before `Py_InitializeFromConfig`, once per process (a
/// second call does nothing). Returns false, installing nothing, when the raw domain is
/// not plain `malloc` (a debug build's hooks, another allocator), whose blocks'
/// sizes `malloc_usable_size` cannot tell.
pub(crate) fn install() -> bool {
    // SAFETY: the caller's contract: CPython is pre-initialised, not initialised, and no
    // other thread allocates.
    unsafe { install_hooks() }
}

/// [`install`] in a Python that is running (the package's borrowed one), with its main
/// GIL held. CPython lets hooks that call the allocators they replace be installed at
/// any time (as `tracemalloc` does); the hooks read what they wrap from statics, so a
/// thread reading the allocator while it is replaced gets either one, and both work.
/// Blocks allocated before are freed through the hooks, which credit them to no
/// account (the interpreters that have accounts are created after).
pub(crate) fn install_running(_py: super::Python<'_>) -> bool {
    // SAFETY: the token proves the main GIL is held; see above for other threads.
    unsafe { install_hooks() }
}

/// # Safety
/// CPython is pre-initialised; either not yet initialised, or running with the calling
/// thread holding the main interpreter's GIL.
unsafe fn install_hooks() -> bool {
    if INSTALLED.load(Ordering::Acquire) {
        return true;
    }
    let mut raw = no_allocator();
    // SAFETY: the caller's contract; `raw` is a valid out-parameter.
    unsafe { ffi::PyMem_GetAllocator(ffi::PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, &mut raw) };
    // CPython's default raw allocator (`malloc`) has no context; its debug hooks, which
    // put a header before each block, and tracemalloc's have one.
    let (Some(malloc), Some(free)) = (raw.malloc, raw.free) else {
        return false;
    };
    if !raw.ctx.is_null() || raw.calloc.is_none() || raw.realloc.is_none() {
        return false;
    }
    let probe = malloc(raw.ctx, 1000);
    if probe.is_null() {
        return false;
    }
    // SAFETY: `probe` is a live block of the raw allocator, which is `malloc` when the
    // sizes read back fit; it is freed just after.
    let usable = unsafe { libc::malloc_usable_size(probe) };
    free(raw.ctx, probe);
    if !(1000..1100).contains(&usable) {
        return false;
    }
    let mut arena = ffi::PyObjectArenaAllocator {
        ctx: std::ptr::null_mut(),
        alloc: None,
        free: None,
    };
    // SAFETY: as above; a valid out-parameter.
    unsafe { ffi::PyObject_GetArenaAllocator(&mut arena) };
    if arena.alloc.is_none() || arena.free.is_none() {
        return false;
    }
    if RAW.set(RawInner(raw)).is_err() || ARENA.set(ArenaInner(arena)).is_err() {
        return false;
    }
    let mut raw_hooks = raw_hooks();
    let mut arena_hooks = ffi::PyObjectArenaAllocator {
        ctx: std::ptr::null_mut(),
        alloc: Some(arena_alloc),
        free: Some(arena_free),
    };
    // SAFETY: the caller's contract; CPython copies the structs. Raw blocks allocated
    // before are plain `malloc` blocks, which the hooks free like any other; arenas
    // allocated before are freed by the allocator the hooks wrap.
    unsafe {
        ffi::PyMem_SetAllocator(ffi::PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, &mut raw_hooks);
        ffi::PyObject_SetArenaAllocator(&mut arena_hooks);
    }
    INSTALLED.store(true, Ordering::Release);
    true
}

/// An allocator struct to be filled in by `PyMem_GetAllocator`.
fn no_allocator() -> ffi::PyMemAllocatorEx {
    ffi::PyMemAllocatorEx {
        ctx: std::ptr::null_mut(),
        malloc: None,
        calloc: None,
        realloc: None,
        free: None,
    }
}

/// The raw domain's hooks, as given to `PyMem_SetAllocator` (no context: they read what
/// they wrap from [`RAW`]).
fn raw_hooks() -> ffi::PyMemAllocatorEx {
    ffi::PyMemAllocatorEx {
        ctx: std::ptr::null_mut(),
        malloc: Some(raw_malloc),
        calloc: Some(raw_calloc),
        realloc: Some(raw_realloc),
        free: Some(raw_free),
    }
}

/// Puts the raw-domain hook back if the allocator it wraps was put in its place.
///
/// CPython saves and restores the raw allocator around some of its own work
/// (`_PyMem_SetDefaultAllocator` ... `PyMem_SetAllocator(old)`, in its path and
/// configuration code): a restore whose save came before the hooks went in takes the
/// hook out again, and large blocks are no longer counted nor refused. Seen on CPython
/// 3.12.1 with the package's borrowed Python. Called whenever an account opens; cheap.
/// Returns true if the hook had to be put back. An allocator that is neither (a
/// `tracemalloc` hook wrapping ours, say) is left alone.
pub(crate) fn restore_raw_hook() -> bool {
    let Some(inner) = raw_inner() else {
        return false;
    };
    let mut now = no_allocator();
    // SAFETY: a valid out-parameter; reading the allocator is allowed at any time.
    unsafe { ffi::PyMem_GetAllocator(ffi::PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, &mut now) };
    let addr = |f: Option<extern "C" fn(*mut c_void, usize) -> *mut c_void>| f.map(|f| f as usize);
    if addr(now.malloc) != addr(inner.malloc) || now.ctx != inner.ctx {
        return false;
    }
    let mut hooks = raw_hooks();
    // SAFETY: as in `install_running`: the hooks call the allocator they replace, read
    // it from a static, and accept any context; CPython copies the struct.
    unsafe { ffi::PyMem_SetAllocator(ffi::PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, &mut hooks) };
    true
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

/// How a growth past the limit is met.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Growth {
    /// A block of at least [`LARGE_BLOCK`] bytes: refused past the limit.
    Large,
    /// An arena or a smaller block: granted up to the [`ceiling`], and the interpreter
    /// gets an asynchronous `MemoryError`.
    Small,
    /// A correction of what was already granted: never refused.
    Settle,
}

impl Growth {
    fn of(size: usize) -> Growth {
        if size >= LARGE_BLOCK {
            Growth::Large
        } else {
            Growth::Small
        }
    }
}

fn wake_watcher() {
    if let Some(watcher) = WATCHER.get() {
        watcher.unpark();
    }
}

/// Adds `delta` bytes to `tag`'s account. A growth past the limit is refused (false, and
/// nothing charged) or granted with a notice to the watcher, as `growth` says.
fn charge(tag: usize, delta: isize, growth: Growth) -> bool {
    let Some(slot) = slot_of(tag) else {
        return true;
    };
    let now = slot
        .in_use
        .fetch_add(delta, Ordering::Relaxed)
        .wrapping_add(delta);
    let soft = slot.soft.load(Ordering::Relaxed);
    if delta > 0
        && soft != 0
        && now > soft.min(isize::MAX as usize) as isize
        && slot
            .soft_state
            .compare_exchange(SOFT_ARMED, SOFT_PASSED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        wake_watcher();
    }
    let limit = slot.limit.load(Ordering::Relaxed);
    if delta > 0 && limit != 0 && growth != Growth::Settle {
        let limit = limit.min(isize::MAX as usize);
        let refuse = match growth {
            Growth::Large => now > limit as isize,
            _ => now > ceiling(limit).min(isize::MAX as usize) as isize,
        };
        if refuse {
            slot.in_use.fetch_sub(delta, Ordering::Relaxed);
            slot.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if now > limit as isize
            && slot
                .over
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            wake_watcher();
        }
    }
    let now = now.max(0) as usize;
    if now > slot.peak.load(Ordering::Relaxed) {
        slot.peak.fetch_max(now, Ordering::Relaxed);
    }
    true
}

fn signed(size: usize) -> isize {
    size.min(isize::MAX as usize) as isize
}

/// The size `malloc` gave a live block (0 for NULL).
fn usable(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: `ptr` is a live block of the raw allocator, which is `malloc` (checked by
    // `install`).
    unsafe { libc::malloc_usable_size(ptr) }
}

/// The raw allocator the hooks wrap (set before they are installed).
fn raw_inner() -> Option<&'static ffi::PyMemAllocatorEx> {
    RAW.get().map(|inner| &inner.0)
}

/// Allocates through `alloc` once `size` bytes are granted, then charges what `malloc`
/// really gave.
fn reserved(size: usize, alloc: impl FnOnce() -> *mut c_void) -> *mut c_void {
    let tag = current_tag();
    if !charge(tag, signed(size), Growth::of(size)) {
        return std::ptr::null_mut();
    }
    let ptr = alloc();
    if ptr.is_null() {
        charge(tag, -signed(size), Growth::Settle);
    } else {
        charge(tag, signed(usable(ptr)) - signed(size), Growth::Settle);
    }
    ptr
}

extern "C" fn raw_malloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    match raw_inner() {
        Some(&ffi::PyMemAllocatorEx {
            ctx,
            malloc: Some(malloc),
            ..
        }) => reserved(size, || malloc(ctx, size)),
        _ => std::ptr::null_mut(),
    }
}

extern "C" fn raw_calloc(_ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    match (raw_inner(), nelem.checked_mul(elsize)) {
        (
            Some(&ffi::PyMemAllocatorEx {
                ctx,
                calloc: Some(calloc),
                ..
            }),
            Some(size),
        ) => reserved(size, || calloc(ctx, nelem, elsize)),
        _ => std::ptr::null_mut(),
    }
}

extern "C" fn raw_realloc(_ctx: *mut c_void, ptr: *mut c_void, size: usize) -> *mut c_void {
    let Some(&ffi::PyMemAllocatorEx {
        ctx,
        realloc: Some(realloc),
        ..
    }) = raw_inner()
    else {
        return std::ptr::null_mut();
    };
    let old = signed(usable(ptr));
    let tag = current_tag();
    // The growth is granted first, so that a refused growth leaves the block as it was
    // (realloc's contract).
    let growth = signed(size) - old;
    if !charge(tag, growth, Growth::of(size)) {
        return std::ptr::null_mut();
    }
    let moved = realloc(ctx, ptr, size);
    if moved.is_null() {
        charge(tag, -growth, Growth::Settle);
    } else {
        charge(tag, signed(usable(moved)) - signed(size), Growth::Settle);
    }
    moved
}

extern "C" fn raw_free(_ctx: *mut c_void, ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    if let Some(&ffi::PyMemAllocatorEx {
        ctx,
        free: Some(free),
        ..
    }) = raw_inner()
    {
        charge(current_tag(), -signed(usable(ptr)), Growth::Settle);
        free(ctx, ptr);
    }
}

/// The arena allocator the hooks wrap (set before they are installed).
fn arena_inner() -> Option<&'static ffi::PyObjectArenaAllocator> {
    ARENA.get().map(|inner| &inner.0)
}

extern "C" fn arena_alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    let Some(&ffi::PyObjectArenaAllocator {
        ctx,
        alloc: Some(alloc),
        ..
    }) = arena_inner()
    else {
        return std::ptr::null_mut();
    };
    let tag = current_tag();
    if !charge(tag, signed(size), Growth::Small) {
        // Past the ceiling: pymalloc then asks the raw domain for the block, which is
        // refused too.
        return std::ptr::null_mut();
    }
    let ptr = alloc(ctx, size);
    if ptr.is_null() {
        charge(tag, -signed(size), Growth::Settle);
    }
    ptr
}

extern "C" fn arena_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    if let Some(&ffi::PyObjectArenaAllocator {
        ctx,
        free: Some(free),
        ..
    }) = arena_inner()
    {
        if !ptr.is_null() {
            charge(current_tag(), -signed(size), Growth::Settle);
        }
        free(ctx, ptr, size);
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
    pub(crate) fn open(sub: &SubInterpreter, limit: usize, soft: usize) -> Option<Account> {
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
                slot.over.store(false, Ordering::Relaxed);
                slot.soft.store(soft, Ordering::Relaxed);
                slot.soft_state.store(SOFT_ARMED, Ordering::Relaxed);
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

    /// Takes the notice a hook left when it granted memory past the limit: true once
    /// per notice.
    pub(crate) fn take_over_limit(&self) -> bool {
        self.slot()
            .is_some_and(|slot| slot.over.swap(false, Ordering::AcqRel))
    }

    /// Takes the notice a hook left when the account passed its soft limit: true once
    /// per passing (armed again by [`rearm_soft`](Self::rearm_soft)).
    pub(crate) fn take_soft_notice(&self) -> bool {
        self.slot().is_some_and(|slot| {
            slot.soft_state
                .compare_exchange(SOFT_PASSED, SOFT_TOLD, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Arms the soft limit again if the account is back under it.
    pub(crate) fn rearm_soft(&self) {
        if let Some(slot) = self.slot() {
            let soft = slot.soft.load(Ordering::Relaxed);
            if slot.in_use.load(Ordering::Relaxed) <= soft.min(isize::MAX as usize) as isize {
                let _ = slot.soft_state.compare_exchange(
                    SOFT_TOLD,
                    SOFT_ARMED,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Whether the account holds more than its limit now.
    pub(crate) fn over_limit(&self) -> bool {
        self.slot().is_some_and(|slot| {
            let limit = slot.limit.load(Ordering::Relaxed);
            limit != 0
                && slot.in_use.load(Ordering::Relaxed) > limit.min(isize::MAX as usize) as isize
        })
    }

    /// Counts a `MemoryError` raised because the account went past its limit.
    pub(crate) fn note_enforced(&self) {
        if let Some(slot) = self.slot() {
            slot.refused.fetch_add(1, Ordering::Relaxed);
        }
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
            slot.soft.store(0, Ordering::Relaxed);
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
