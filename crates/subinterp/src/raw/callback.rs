//! The only `extern "C"` functions of the crate: one generic trampoline per C slot
//! signature.
//!
//! A trampoline is instantiated for a *body*: a plain Rust function (or a closure that
//! captures nothing) taking the [`Python`] token and the slot's arguments as safe types.
//! The trampoline
//! - catches every panic of the body (a panic becomes `SystemError` with the panic's
//!   message; nothing unwinds into CPython),
//! - turns the body's error into a raised exception ([`super::err::raise`]), keeping the
//!   live exception when the error came from one,
//! - opens an exception frame ([`super::err::Frame`]) for the call.
//!
//! Bodies are zero-sized `Copy` types (function items, closures without captures): the
//! trampoline, a plain function pointer, conjures its body from its type alone. Each
//! constructor checks the size at compile time.
//!
//! Since Rust 1.81 a panic that reaches an `extern "C"` boundary aborts the process
//! instead of unwinding through C; the crate's MSRV is 1.81, so even a bug in this file
//! cannot unwind into CPython.

use std::ffi::{c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use pyo3_ffi as ffi;

use super::buffer::BufferMem;
use super::err::{self, Frame};
use super::{PyObj, Python};
use crate::error::Error;

/// How a callback body fails.
pub(crate) enum Failure {
    /// An error to raise as a Python exception.
    Error(Error),
    /// The body raised the exception itself; it is left as it is.
    Raised,
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        Failure::Error(err)
    }
}

/// The result of a callback body.
pub(crate) type Outcome<T> = std::result::Result<T, Failure>;

/// A copy of the zero-sized body `F`.
fn conjure<F: Copy>() -> F {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a callback body captures nothing"
        )
    };
    // SAFETY: `F` is zero-sized (checked above), so a dangling, aligned pointer is valid
    // for reading one. `F` is `Copy` and every constructor below received a value of it,
    // so making another is a copy of that value.
    unsafe { ptr::NonNull::<F>::dangling().as_ptr().read() }
}

/// Checks at compile time that `F` can be conjured.
fn accept<F: Copy>(_body: F) {
    const {
        assert!(
            std::mem::size_of::<F>() == 0,
            "a callback body captures nothing"
        )
    };
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Runs a body with the token, an exception frame and a panic guard. `failed` is what the
/// slot returns on error; the exception is set then.
///
/// # Safety
/// The calling thread holds the GIL of an interpreter for the whole call (CPython calls
/// slots so).
unsafe fn guard<R: Copy>(failed: R, body: impl for<'py> FnOnce(Python<'py>) -> Outcome<R>) -> R {
    // SAFETY: guaranteed by the caller.
    unsafe {
        Python::assume_attached(|py| {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let frame = Frame::enter(py);
                let result = body(py);
                let value = match result {
                    Ok(value) => value,
                    Err(Failure::Error(e)) => {
                        err::raise(py, e);
                        failed
                    }
                    Err(Failure::Raised) => {
                        if !err::occurred(py) {
                            err::raise_system_error(
                                py,
                                "a native function failed without an exception",
                            );
                        }
                        failed
                    }
                };
                drop(frame);
                value
            }));
            outcome.unwrap_or_else(|payload| {
                let message = panic_message(&*payload);
                err::raise_system_error(py, &format!("Rust code panicked: {message}"));
                failed
            })
        })
    }
}

fn into_raw(obj: PyObj<'_>) -> *mut ffi::PyObject {
    let ptr = obj.as_ptr();
    std::mem::forget(obj);
    ptr
}

// ---------------------------------------------------------------- arguments

/// The arguments of a `METH_FASTCALL | METH_KEYWORDS` call, borrowed for the call.
pub(crate) struct FastArgs<'a, 'py> {
    py: Python<'py>,
    /// Positional values, then keyword values.
    items: &'a [*mut ffi::PyObject],
    nargs: usize,
    /// The tuple of keyword names, or NULL.
    kwnames: *mut ffi::PyObject,
}

impl<'a, 'py> FastArgs<'a, 'py> {
    /// # Safety
    /// `args` points to `nargs` objects followed by one per entry of `kwnames` (a tuple or
    /// NULL), all alive for `'a`, as CPython passes them to a fast call.
    unsafe fn from_raw(
        py: Python<'py>,
        args: *const *mut ffi::PyObject,
        nargs: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> FastArgs<'a, 'py> {
        let nargs = usize::try_from(nargs).unwrap_or(0);
        let nkw = if kwnames.is_null() {
            0
        } else {
            // SAFETY: `kwnames` is a tuple (guaranteed by the caller).
            usize::try_from(unsafe { ffi::PyTuple_GET_SIZE(kwnames) }).unwrap_or(0)
        };
        let total = nargs + nkw;
        let items = if total == 0 || args.is_null() {
            &[][..]
        } else {
            // SAFETY: `total` valid pointers at `args` for `'a` (guaranteed by the caller).
            unsafe { std::slice::from_raw_parts(args, total) }
        };
        FastArgs {
            py,
            items,
            nargs,
            kwnames,
        }
    }

    /// How many positional arguments were passed.
    pub(crate) fn positional_len(&self) -> usize {
        self.nargs
    }

    /// How many keyword arguments were passed.
    pub(crate) fn keyword_len(&self) -> usize {
        self.items.len() - self.nargs
    }

    /// Positional argument `i`, borrowed from the call: no reference is taken.
    pub(crate) fn positional_ref(&self, i: usize) -> Option<&PyObj<'py>> {
        let item = self.items[..self.nargs].get(i)?;
        if item.is_null() {
            return None;
        }
        // SAFETY: `PyObj` is `repr(transparent)` over a non-NULL object pointer (its token
        // is zero-sized); the item is a live, non-NULL object of this interpreter, held by
        // the caller for `'a`, which the returned reference cannot outlive. Nothing drops
        // it through the reference.
        Some(unsafe { &*std::ptr::from_ref(item).cast::<PyObj<'py>>() })
    }

    /// Positional argument `i`.
    pub(crate) fn positional(&self, i: usize) -> Option<PyObj<'py>> {
        let ptr = *self.items[..self.nargs].get(i)?;
        // SAFETY: the arguments are live objects of this interpreter for the call.
        unsafe { self.py.borrowed(ptr) }.ok()
    }

    /// The value of keyword argument `i`.
    pub(crate) fn keyword_value(&self, i: usize) -> Option<PyObj<'py>> {
        let ptr = *self.items[self.nargs..].get(i)?;
        // SAFETY: the arguments are live objects of this interpreter for the call.
        unsafe { self.py.borrowed(ptr) }.ok()
    }

    /// The name of keyword argument `i`; `None` for a name that is not UTF-8 (a lone
    /// surrogate), which matches no parameter.
    pub(crate) fn keyword_name(&self, i: usize) -> Option<&'a str> {
        if i >= self.keyword_len() {
            return None;
        }
        // SAFETY: `kwnames` is a tuple of `keyword_len()` str objects, alive for `'a`;
        // `i` is in range. The UTF-8 form is cached in the str object, so it lives as
        // long as the str does.
        unsafe {
            let name = ffi::PyTuple_GET_ITEM(self.kwnames, i as ffi::Py_ssize_t);
            let mut size: ffi::Py_ssize_t = 0;
            let data = ffi::PyUnicode_AsUTF8AndSize(name, &mut size);
            if data.is_null() {
                ffi::PyErr_Clear();
                return None;
            }
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), usize::try_from(size).ok()?);
            std::str::from_utf8(bytes).ok()
        }
    }
}

// ---------------------------------------------------------------- slot signatures

/// A function or method body: `(self, *args, **kwargs) -> object`.
pub(crate) trait MethodBody:
    for<'a, 'py> Fn(Python<'py>, &PyObj<'py>, &FastArgs<'a, 'py>) -> Outcome<PyObj<'py>>
    + Copy
    + 'static
{
}
impl<F> MethodBody for F where
    F: for<'a, 'py> Fn(Python<'py>, &PyObj<'py>, &FastArgs<'a, 'py>) -> Outcome<PyObj<'py>>
        + Copy
        + 'static
{
}

/// A method definition made by [`method_def`].
#[derive(Clone, Copy)]
pub(crate) struct MethodDef(pub(in crate::raw) ffi::PyMethodDef);

// SAFETY: a method definition points only to static data (its name and doc, and a
// trampoline), which CPython only reads.
unsafe impl Send for MethodDef {}
// SAFETY: see `Send`.
unsafe impl Sync for MethodDef {}

/// An attribute definition made by [`getset_def`].
pub(crate) struct GetSetDef(pub(in crate::raw) ffi::PyGetSetDef);

/// A type slot made by one of the `*_slot` constructors below.
pub(crate) struct TypeSlot(pub(in crate::raw) ffi::PyType_Slot);

/// A module exec slot made by [`exec_slot`].
pub(crate) struct ExecSlot(pub(in crate::raw) *mut c_void);

/// A `METH_FASTCALL | METH_KEYWORDS` method definition running `body`. `slf` is the
/// module for module functions, the instance for methods.
pub(crate) fn method_def<F: MethodBody>(
    name: &'static CStr,
    doc: &'static CStr,
    body: F,
) -> MethodDef {
    accept(body);
    MethodDef(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: fastcall::<F>,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    })
}

unsafe extern "C" fn fastcall<F: MethodBody>(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls fast methods with the GIL held, a live `slf`, and the
    // arguments laid out as `FastArgs::from_raw` requires, alive for the call.
    unsafe {
        guard(ptr::null_mut(), |py| {
            let slf = py.borrowed(slf)?;
            let args = FastArgs::from_raw(py, args, nargs, kwnames);
            conjure::<F>()(py, &slf, &args).map(into_raw)
        })
    }
}

/// A body of one object: `repr(self)`, `iter(self)`, a getter.
pub(crate) trait UnaryBody:
    for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<PyObj<'py>> + Copy + 'static
{
}
impl<F> UnaryBody for F where
    F: for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<PyObj<'py>> + Copy + 'static
{
}

/// A `tp_repr` slot running `body`.
pub(crate) fn repr_slot<F: UnaryBody>(body: F) -> TypeSlot {
    accept(body);
    TypeSlot(ffi::PyType_Slot {
        slot: ffi::Py_tp_repr,
        pfunc: unary::<F> as ffi::unaryfunc as *mut c_void,
    })
}

/// A `tp_iter` slot running `body`.
pub(crate) fn iter_slot<F: UnaryBody>(body: F) -> TypeSlot {
    accept(body);
    TypeSlot(ffi::PyType_Slot {
        slot: ffi::Py_tp_iter,
        pfunc: unary::<F> as ffi::unaryfunc as *mut c_void,
    })
}

unsafe extern "C" fn unary<F: UnaryBody>(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls the slot with the GIL held and a live `slf`.
    unsafe {
        guard(ptr::null_mut(), |py| {
            let slf = py.borrowed(slf)?;
            conjure::<F>()(py, &slf).map(into_raw)
        })
    }
}

/// A read-only attribute running `body`.
pub(crate) fn getset_def<F: UnaryBody>(
    name: &'static CStr,
    doc: &'static CStr,
    body: F,
) -> GetSetDef {
    accept(body);
    GetSetDef(ffi::PyGetSetDef {
        name: name.as_ptr(),
        get: Some(getter::<F>),
        set: None,
        doc: doc.as_ptr(),
        closure: ptr::null_mut(),
    })
}

unsafe extern "C" fn getter<F: UnaryBody>(
    slf: *mut ffi::PyObject,
    _closure: *mut c_void,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls getters with the GIL held and a live `slf`, which is all the
    // unary trampoline asks.
    unsafe { unary::<F>(slf) }
}

/// A `tp_iternext` body: `Ok(None)` ends the iteration (no exception).
pub(crate) trait IterNextBody:
    for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<Option<PyObj<'py>>> + Copy + 'static
{
}
impl<F> IterNextBody for F where
    F: for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<Option<PyObj<'py>>> + Copy + 'static
{
}

/// A `tp_iternext` slot running `body`.
pub(crate) fn iternext_slot<F: IterNextBody>(body: F) -> TypeSlot {
    accept(body);
    TypeSlot(ffi::PyType_Slot {
        slot: ffi::Py_tp_iternext,
        pfunc: iternext::<F> as ffi::iternextfunc as *mut c_void,
    })
}

unsafe extern "C" fn iternext<F: IterNextBody>(slf: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: CPython calls the slot with the GIL held and a live `slf`.
    unsafe {
        guard(ptr::null_mut(), |py| {
            let slf = py.borrowed(slf)?;
            Ok(conjure::<F>()(py, &slf)?.map_or(ptr::null_mut(), into_raw))
        })
    }
}

/// A `len(self)` body.
pub(crate) trait LenBody:
    for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<usize> + Copy + 'static
{
}
impl<F> LenBody for F where
    F: for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<usize> + Copy + 'static
{
}

/// A `mp_length` slot (`len(self)`) running `body`.
pub(crate) fn len_slot<F: LenBody>(body: F) -> TypeSlot {
    accept(body);
    TypeSlot(ffi::PyType_Slot {
        slot: ffi::Py_mp_length,
        pfunc: length::<F> as ffi::lenfunc as *mut c_void,
    })
}

unsafe extern "C" fn length<F: LenBody>(slf: *mut ffi::PyObject) -> ffi::Py_ssize_t {
    // SAFETY: CPython calls the slot with the GIL held and a live `slf`.
    unsafe {
        guard(-1, |py| {
            let slf = py.borrowed(slf)?;
            let n = conjure::<F>()(py, &slf)?;
            ffi::Py_ssize_t::try_from(n).map_err(|_| {
                Failure::Error(Error::InvalidArgument(format!("length {n} is too large")))
            })
        })
    }
}

/// Memory exported through the buffer protocol: borrowed from the exporting object, which
/// owns it for as long as it lives.
pub(crate) struct Export<'a> {
    /// The memory.
    pub(crate) mem: &'a BufferMem,
    /// The part of it exported: `len` bytes from `start`.
    pub(crate) start: usize,
    pub(crate) len: usize,
    /// Whether views may write to it.
    pub(crate) writable: bool,
}

/// A `bf_getbuffer` body: the memory the object exports. The memory must be owned by the
/// object (views keep the object alive, so the memory outlives them).
pub(crate) trait GetBufferBody:
    for<'a, 'py> Fn(Python<'py>, &'a PyObj<'py>) -> Outcome<Export<'a>> + Copy + 'static
{
}
impl<F> GetBufferBody for F where
    F: for<'a, 'py> Fn(Python<'py>, &'a PyObj<'py>) -> Outcome<Export<'a>> + Copy + 'static
{
}

/// A `bf_getbuffer` slot running `body`.
pub(crate) fn getbuffer_slot<F: GetBufferBody>(body: F) -> TypeSlot {
    accept(body);
    TypeSlot(ffi::PyType_Slot {
        slot: ffi::Py_bf_getbuffer,
        pfunc: getbuffer::<F> as ffi::getbufferproc as *mut c_void,
    })
}

unsafe extern "C" fn getbuffer<F: GetBufferBody>(
    slf: *mut ffi::PyObject,
    view: *mut ffi::Py_buffer,
    flags: c_int,
) -> c_int {
    // SAFETY: CPython calls the slot with the GIL held, a live `slf` and a view to fill.
    unsafe {
        guard(-1, |py| {
            let obj = py.borrowed(slf)?;
            let export = conjure::<F>()(py, &obj)?;
            let buf = export
                .mem
                .range_ptr(export.start, export.len)
                .ok_or_else(|| {
                    Failure::Error(Error::InvalidArgument(
                        "the exported range runs past the end of the buffer".into(),
                    ))
                })?;
            let len = ffi::Py_ssize_t::try_from(export.len).unwrap_or(ffi::Py_ssize_t::MAX);
            // The memory is owned by `slf` (the body's contract) and the view holds a
            // reference to `slf` (PyBuffer_FillInfo sets view->obj), so the memory
            // outlives the view. A writable request on read-only memory is a
            // BufferError.
            let status = ffi::PyBuffer_FillInfo(
                view,
                slf,
                buf.cast::<c_void>(),
                len,
                c_int::from(!export.writable),
                flags,
            );
            if status < 0 {
                Err(Failure::Raised)
            } else {
                Ok(0)
            }
        })
    }
}

/// A `tp_dealloc` body: releases what the instance holds, given its address. It must not
/// make Python references to the object (its reference count is zero).
pub(crate) trait DeallocBody: Fn(*mut ffi::PyObject) + Copy + 'static {}
impl<F> DeallocBody for F where F: Fn(*mut ffi::PyObject) + Copy + 'static {}

/// A `tp_dealloc` slot: runs `body` (a panic is reported as unraisable), then frees the
/// object through its type's `tp_free` and drops the instance's reference to its
/// (heap) type.
pub(in crate::raw) fn dealloc_slot<F: DeallocBody>(body: F) -> *mut c_void {
    accept(body);
    dealloc::<F> as ffi::destructor as *mut c_void
}

unsafe extern "C" fn dealloc<F: DeallocBody>(obj: *mut ffi::PyObject) {
    let released = catch_unwind(AssertUnwindSafe(|| conjure::<F>()(obj)));
    // SAFETY: CPython calls tp_dealloc once, with the GIL held, for an instance of a heap
    // type whose fields the body released; heap-type instances own a reference to their
    // type, dropped after the memory is freed.
    unsafe {
        if released.is_err() {
            ffi::PyErr_WriteUnraisable(ptr::null_mut());
        }
        let ty = ffi::Py_TYPE(obj);
        let free = ffi::PyType_GetSlot(ty, ffi::Py_tp_free);
        if !free.is_null() {
            let free: ffi::freefunc = std::mem::transmute(free);
            free(obj.cast());
        }
        ffi::Py_DecRef(ty.cast());
    }
}

/// A `Py_mod_exec` body: fills in a new module object.
pub(crate) trait ExecBody:
    for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<()> + Copy + 'static
{
}
impl<F> ExecBody for F where F: for<'py> Fn(Python<'py>, &PyObj<'py>) -> Outcome<()> + Copy + 'static
{}

/// A `Py_mod_exec` slot running `body`. A failure always leaves an exception set.
pub(crate) fn exec_slot<F: ExecBody>(body: F) -> ExecSlot {
    accept(body);
    ExecSlot(exec::<F> as unsafe extern "C" fn(*mut ffi::PyObject) -> c_int as *mut c_void)
}

unsafe extern "C" fn exec<F: ExecBody>(module: *mut ffi::PyObject) -> c_int {
    // SAFETY: CPython runs module exec slots with the GIL held and a live module.
    unsafe {
        guard(-1, |py| {
            let module = py.borrowed(module)?;
            conjure::<F>()(py, &module).map(|()| 0)
        })
    }
}

/// A GC or free body of a module or instance, on its address (no Python references may be
/// made to it). Returns what the slot returns.
pub(crate) trait RawBody<A, R>: Fn(*mut ffi::PyObject, A) -> R + Copy + 'static {}
impl<F, A, R> RawBody<A, R> for F where F: Fn(*mut ffi::PyObject, A) -> R + Copy + 'static {}

/// What a traverse body gets: the visitor CPython passed.
#[derive(Clone, Copy)]
pub(crate) struct Visit {
    visit: ffi::visitproc,
    arg: *mut c_void,
}

impl Visit {
    /// Visits `obj` (non-NULL, a reference the visited object holds); a non-zero result
    /// must be returned by the traverse body at once.
    pub(crate) fn call(&self, obj: ptr::NonNull<ffi::PyObject>) -> c_int {
        // SAFETY: CPython's visitor, called during its traversal with a live object.
        unsafe { (self.visit)(obj.as_ptr(), self.arg) }
    }
}

/// A `m_traverse` slot running `body`; a panic reports "nothing to visit".
pub(in crate::raw) fn traverse_slot<F: RawBody<Visit, c_int>>(body: F) -> ffi::traverseproc {
    accept(body);
    traverse::<F>
}

unsafe extern "C" fn traverse<F: RawBody<Visit, c_int>>(
    obj: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    catch_unwind(AssertUnwindSafe(|| {
        conjure::<F>()(obj, Visit { visit, arg })
    }))
    .unwrap_or(0)
}

/// A `m_clear` slot running `body`.
pub(in crate::raw) fn clear_slot<F: RawBody<(), c_int>>(body: F) -> ffi::inquiry {
    accept(body);
    clear::<F>
}

unsafe extern "C" fn clear<F: RawBody<(), c_int>>(obj: *mut ffi::PyObject) -> c_int {
    catch_unwind(AssertUnwindSafe(|| conjure::<F>()(obj, ()))).unwrap_or(0)
}

/// A `m_free` slot running `body`.
pub(in crate::raw) fn free_slot<F: RawBody<(), ()>>(body: F) -> ffi::freefunc {
    accept(body);
    free::<F>
}

unsafe extern "C" fn free<F: RawBody<(), ()>>(obj: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| conjure::<F>()(obj.cast(), ())));
}

/// How many module init functions [`indexed_init_fns`] makes: the most modules defined
/// at run time, the built-in `subinterp` module and the host modules. The runtime's limit
/// on host modules is derived from it (`raw/` imports no feature, so the limit lives
/// here); the table below must list exactly this many indices, which the array's type
/// checks at compile time.
pub(crate) const MAX_INDEXED_INITS: usize = 33;

/// Module init functions that know their index: the `i`th calls `body(i)` for the module
/// definition to initialise (for modules defined at run time, which need one init
/// function each).
pub(crate) fn indexed_init_fns<F: Fn(usize) -> *mut ffi::PyModuleDef + Copy + 'static>(
    body: F,
) -> [unsafe extern "C" fn() -> *mut ffi::PyObject; MAX_INDEXED_INITS] {
    accept(body);
    macro_rules! table {
        ($($i:literal)*) => { [$(indexed_init::<F, $i>),*] };
    }
    table!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32)
}

unsafe extern "C" fn indexed_init<
    F: Fn(usize) -> *mut ffi::PyModuleDef + Copy + 'static,
    const I: usize,
>() -> *mut ffi::PyObject {
    match catch_unwind(AssertUnwindSafe(|| conjure::<F>()(I))) {
        // SAFETY: the body returns a complete, static module definition; PyModuleDef_Init
        // only initialises its object header.
        Ok(def) if !def.is_null() => unsafe { ffi::PyModuleDef_Init(def) },
        _ => {
            // SAFETY: CPython calls init functions with the GIL held; static message.
            unsafe {
                ffi::PyErr_SetString(
                    ffi::PyExc_SystemError,
                    c"a module definition could not be made".as_ptr(),
                )
            };
            ptr::null_mut()
        }
    }
}

// ---------------------------------------------------------------- capsules

/// The name of every capsule this crate makes. Capsules are recognised by the address of
/// the name, so it is a `static` (one address); a `const` may have one per use.
static CAPSULE: &CStr = c"subinterp.value";

/// What a capsule of this crate points to: the type of the value, then the value.
#[repr(C)]
struct Boxed<T> {
    type_id: std::any::TypeId,
    value: T,
}

/// A new capsule owning `value`, dropped when the capsule is (by a generic destructor).
pub(crate) fn capsule<'py, T: Send + Sync + 'static>(
    py: Python<'py>,
    value: T,
) -> crate::error::Result<PyObj<'py>> {
    let boxed = Box::into_raw(Box::new(Boxed {
        type_id: std::any::TypeId::of::<T>(),
        value,
    }));
    // SAFETY: GIL held (the token); the pointer is non-NULL and owned by the capsule from
    // here on, freed by `capsule_drop::<T>`; the name is static.
    let made = unsafe {
        ffi::PyCapsule_New(
            boxed.cast::<c_void>(),
            CAPSULE.as_ptr(),
            Some(capsule_drop::<T>),
        )
    };
    if made.is_null() {
        // SAFETY: the capsule was not made, so the box is still ours.
        drop(unsafe { Box::from_raw(boxed) });
    }
    // SAFETY: a new reference or NULL with an exception, from PyCapsule_New.
    let capsule = unsafe { py.own(made) }?;
    // The context holds the pointer too, for `capsule_value` to read it without comparing
    // names.
    // SAFETY: GIL held; `capsule` is the capsule just made.
    py.check(unsafe { ffi::PyCapsule_SetContext(capsule.as_ptr(), boxed.cast::<c_void>()) })?;
    Ok(capsule)
}

/// The value of a capsule made by [`capsule`] with a value of type `T`; `None` for any
/// other object.
pub(crate) fn capsule_value<'a, T: Send + Sync + 'static>(obj: &'a PyObj<'_>) -> Option<&'a T> {
    // SAFETY: GIL held (the object carries the token). A capsule whose name is the very
    // `CAPSULE` pointer was made by `capsule`, whose context points to a `Boxed<_>` whose
    // first field is the `TypeId` of its value; the value is read only when that is `T`'s.
    // It lives as long as the capsule, which `obj` keeps alive.
    unsafe {
        if ffi::PyCapsule_CheckExact(obj.as_ptr()) == 0
            || ffi::PyCapsule_GetName(obj.as_ptr()) != CAPSULE.as_ptr()
        {
            return None;
        }
        let ptr = ffi::PyCapsule_GetContext(obj.as_ptr());
        if ptr.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        let type_id = *ptr.cast::<std::any::TypeId>();
        if type_id != std::any::TypeId::of::<T>() {
            return None;
        }
        Some(&(*ptr.cast::<Boxed<T>>()).value)
    }
}

unsafe extern "C" fn capsule_drop<T: Send + Sync + 'static>(capsule: *mut ffi::PyObject) {
    // SAFETY: CPython calls the destructor once, with the capsule this crate made with a
    // `Boxed<T>` (the destructor is only ever given to such capsules).
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe {
        let ptr = ffi::PyCapsule_GetPointer(capsule, CAPSULE.as_ptr());
        if ptr.is_null() {
            ffi::PyErr_Clear();
        } else {
            drop(Box::from_raw(ptr.cast::<Boxed<T>>()));
        }
    }));
}

// ---------------------------------------------------------------- extension modules

/// Defines `PyInit_<name>`, the init function of a Python extension module, as a call of
/// `$entry: fn() -> *mut c_void` (which must catch every panic and set a Python error when
/// it returns null). The `subinterp` Python package makes its init function with this.
#[doc(hidden)]
#[macro_export]
macro_rules! extension_entry {
    ($init:ident, $entry:path) => {
        #[no_mangle]
        pub extern "C" fn $init() -> *mut ::std::ffi::c_void {
            $entry()
        }
    };
}
