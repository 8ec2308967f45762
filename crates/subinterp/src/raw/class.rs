//! Native classes: Python types whose instances each own a Rust value.
//!
//! Every instance starts with the same header — the object head, the `TypeId` of its
//! value and the function that drops it — and one deallocator serves every class: it
//! drops the value, frees the object and releases its (heap) type. A value is only read
//! back as the type it was stored as ([`value`] checks the `TypeId`), so safe code cannot
//! confuse two classes.

use std::any::TypeId;
use std::ffi::{c_int, c_void, CStr};
use std::mem::ManuallyDrop;
use std::ptr;

use pyo3_ffi as ffi;

use super::callback::{self, GetSetDef, MethodDef, TypeSlot};
use super::{PyObj, Python};
use crate::error::{Error, Result};

#[repr(C)]
struct Header {
    ob_base: ffi::PyObject,
    type_id: TypeId,
    /// Drops the value of the instance this header starts.
    drop: unsafe fn(*mut Header),
}

#[repr(C)]
struct Instance<T> {
    header: Header,
    value: ManuallyDrop<T>,
}

/// # Safety
/// `header` starts a live `Instance<T>` whose value was not dropped yet.
unsafe fn drop_value<T>(header: *mut Header) {
    // SAFETY: guaranteed by the caller; the value is dropped once, here.
    unsafe { ManuallyDrop::drop(&mut (*header.cast::<Instance<T>>()).value) };
}

/// The definition of a native class whose instances hold a `T`: leaked, shared by every
/// interpreter, each of which makes its own type object from it ([`ClassDef::create`]).
pub(crate) struct ClassDef {
    spec: *mut ffi::PyType_Spec,
    type_id: TypeId,
    size: usize,
}

// SAFETY: the spec and everything it points to are leaked and never mutated; CPython only
// reads them.
unsafe impl Send for ClassDef {}
// SAFETY: see `Send`.
unsafe impl Sync for ClassDef {}

fn leak<T>(items: Vec<T>) -> *mut T {
    Box::leak(items.into_boxed_slice()).as_mut_ptr()
}

impl ClassDef {
    /// A class `name` (qualified: `"subinterp.Channel"`) with the given methods, read-only
    /// attributes and slots. Python code cannot instantiate it; Rust makes instances with
    /// [`new_instance`].
    pub(crate) fn new<T: Send + 'static>(
        name: &'static CStr,
        doc: &'static CStr,
        methods: Vec<MethodDef>,
        getsets: Vec<GetSetDef>,
        slots: Vec<TypeSlot>,
    ) -> ClassDef {
        const {
            assert!(
                std::mem::align_of::<Instance<T>>() <= 16,
                "CPython aligns objects to 16 bytes"
            )
        };
        let mut methods: Vec<ffi::PyMethodDef> = methods.into_iter().map(|m| m.0).collect();
        methods.push(ffi::PyMethodDef::zeroed());
        let mut getsets: Vec<ffi::PyGetSetDef> = getsets.into_iter().map(|g| g.0).collect();
        getsets.push(ffi::PyGetSetDef {
            name: ptr::null(),
            get: None,
            set: None,
            doc: ptr::null(),
            closure: ptr::null_mut(),
        });
        let mut all: Vec<ffi::PyType_Slot> = slots.into_iter().map(|s| s.0).collect();
        all.extend([
            ffi::PyType_Slot {
                slot: ffi::Py_tp_dealloc,
                pfunc: native_dealloc(),
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_methods,
                pfunc: leak(methods).cast::<c_void>(),
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_getset,
                pfunc: leak(getsets).cast::<c_void>(),
            },
            ffi::PyType_Slot {
                slot: ffi::Py_tp_doc,
                pfunc: doc.as_ptr() as *mut c_void,
            },
            ffi::PyType_Slot {
                slot: 0,
                pfunc: ptr::null_mut(),
            },
        ]);
        let size = std::mem::size_of::<Instance<T>>();
        let spec = Box::into_raw(Box::new(ffi::PyType_Spec {
            name: name.as_ptr(),
            basicsize: c_int::try_from(size).expect("an instance fits in a C int"),
            itemsize: 0,
            flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION) as _,
            slots: leak(all),
        }));
        ClassDef {
            spec,
            type_id: TypeId::of::<T>(),
            size,
        }
    }

    /// Makes this interpreter's type object of the class, belonging to `module` (whose
    /// state its instances can reach, [`defining_module`]).
    pub(crate) fn create<'py>(&'static self, module: &PyObj<'py>) -> Result<PyObj<'py>> {
        let py = module.py();
        // SAFETY: GIL held; the spec is complete and static; `module` is a live module.
        unsafe {
            py.own(ffi::PyType_FromModuleAndSpec(
                module.as_ptr(),
                self.spec,
                ptr::null_mut(),
            ))
        }
    }
}

/// The body of the one deallocator of native classes.
///
/// # Safety
///
/// `obj` is an instance of a native class (made by [`new_instance`]) whose reference
/// count reached zero, given once: its value is dropped here.
unsafe fn dealloc_instance(obj: *mut ffi::PyObject) {
    // SAFETY: `obj` is an instance of a native class being deallocated (the caller's
    // contract), which starts with a header whose `drop` matches its value (written by
    // `new_instance`).
    unsafe {
        let header = obj.cast::<Header>();
        ((*header).drop)(header);
    }
}

/// The one deallocator of native classes (one address, taken once).
fn native_dealloc() -> *mut c_void {
    static DEALLOC: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *DEALLOC.get_or_init(|| {
        // SAFETY: this slot is the `tp_dealloc` of native classes only (`ClassDef::new`), and
        // CPython calls it once per instance, whose reference count is zero.
        callback::dealloc_slot(|obj| unsafe { dealloc_instance(obj) }) as usize
    }) as *mut c_void
}

/// True if `class` is a type made by [`ClassDef::create`] (its deallocator is ours).
///
/// # Safety
///
/// The GIL is held and `class` is a live type object.
unsafe fn is_native_class(class: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: `class` is a live type object (the caller's contract); reading a slot of it.
    let dealloc = unsafe { ffi::PyType_GetSlot(class, ffi::Py_tp_dealloc) };
    dealloc == native_dealloc()
}

/// A new instance of `class` — this interpreter's type object of `def` — holding `value`.
pub(crate) fn new_instance<'py, T: Send + 'static>(
    def: &'static ClassDef,
    class: &PyObj<'py>,
    value: T,
) -> Result<PyObj<'py>> {
    let py = class.py();
    let ty = class.as_ptr().cast::<ffi::PyTypeObject>();
    // SAFETY: GIL held; type check of a live object, then a field read of a type.
    let fits = unsafe { ffi::PyType_Check(class.as_ptr()) } != 0
        // SAFETY: GIL held; `ty` is the live type object `class` (checked just before).
        && unsafe { is_native_class(ty) }
        // SAFETY: `ty` is a type object (checked above).
        && usize::try_from(unsafe { (*ty).tp_basicsize }).ok() == Some(def.size)
        && def.type_id == TypeId::of::<T>();
    if !fits {
        return Err(Error::InvalidArgument(
            "an instance of a native class made with another definition".into(),
        ));
    }
    // SAFETY: GIL held; `ty` is a native class whose instances are `Instance<T>`-sized
    // (checked above); GenericAlloc zero-fills and returns a new reference or NULL.
    let obj = unsafe { py.own(ffi::PyType_GenericAlloc(ty, 0)) }?;
    // SAFETY: `obj` is a fresh, zeroed instance of size `Instance<T>`: write its header
    // and value before anything can read them.
    unsafe {
        let instance = obj.as_ptr().cast::<Instance<T>>();
        ptr::addr_of_mut!((*instance).header.type_id).write(TypeId::of::<T>());
        ptr::addr_of_mut!((*instance).header.drop).write(drop_value::<T>);
        ptr::addr_of_mut!((*instance).value).write(ManuallyDrop::new(value));
    }
    Ok(obj)
}

/// The value of `obj` if it is an instance of a native class holding a `T`.
pub(crate) fn value<'a, T: Send + 'static>(obj: &'a PyObj<'_>) -> Option<&'a T> {
    // SAFETY: GIL held (the object carries the token); `obj` is live, so its type is.
    let ty = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
    // SAFETY: GIL held; `ty` is the type of the live `obj`, so live too.
    if !unsafe { is_native_class(ty) } {
        return None;
    }
    // SAFETY: instances of native classes start with a header; the value is read only as
    // the type it was stored as, and lives (never mutated) until the object is freed, which
    // `obj` prevents for `'a`.
    unsafe {
        let header = obj.as_ptr().cast::<Header>();
        if (*header).type_id != TypeId::of::<T>() {
            return None;
        }
        Some(&(*obj.as_ptr().cast::<Instance<T>>()).value)
    }
}

/// The module whose state the type of `obj` was made with ([`ClassDef::create`]).
pub(crate) fn defining_module<'py>(obj: &PyObj<'py>) -> Option<PyObj<'py>> {
    let py: Python<'py> = obj.py();
    // SAFETY: GIL held; `obj` is live. PyType_GetModule returns a borrowed reference, or
    // NULL with TypeError for a type made without a module.
    let module = unsafe { ffi::PyType_GetModule(ffi::Py_TYPE(obj.as_ptr())) };
    if module.is_null() {
        // SAFETY: GIL held.
        unsafe { ffi::PyErr_Clear() };
        return None;
    }
    // SAFETY: a live module, borrowed from the type, which `obj` keeps alive.
    unsafe { py.borrowed(module) }.ok()
}
