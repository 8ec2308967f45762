//! Modules defined at run time, before CPython starts: built-in modules of every
//! interpreter, made of native functions, native classes, exception classes and
//! constants. The library's own `subinterp` module and the host's modules are all made
//! here, from one [`ModuleSpec`] each.
//!
//! Each is a multi-phase-init module (PEP 489) declaring support for a per-interpreter
//! GIL (and, on 3.13, for running without the GIL): every interpreter that imports it
//! gets its own module object, functions, types and exception classes, the types and
//! exception classes also held in the module's per-interpreter state (classes first,
//! then exceptions, in the order of the spec: [`state_get`]). What is shared is only the
//! Rust side of each function, which is `Send + Sync`.

use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::{Arc, OnceLock};

use pyo3_ffi as ffi;

use super::callback::{self, Failure, FastArgs, MethodDef, Outcome};
use super::class::ClassDef;
use super::{PyObj, Python};
use crate::error::Error;
use crate::value::Value;

/// The Rust side of a native function: called with the id of the calling interpreter and
/// the arguments of each call.
pub(crate) type NativeFn = Arc<
    dyn for<'a, 'py> Fn(Python<'py>, i64, &FastArgs<'a, 'py>) -> Outcome<PyObj<'py>> + Send + Sync,
>;

/// What a native function object of one interpreter holds: its Rust side, and the id of
/// the interpreter it belongs to (known without asking CPython at each call).
struct Bound {
    call: NativeFn,
    interp: i64,
}

/// A native function of a module.
#[derive(Clone)]
pub(crate) struct FunctionSpec {
    pub(crate) name: String,
    /// The docstring; a first line `name(a, b)\n--\n\n` gives `inspect.signature`.
    pub(crate) doc: String,
    pub(crate) call: NativeFn,
}

/// An exception class of a module.
#[derive(Clone)]
pub(crate) struct ExceptionSpec {
    pub(crate) name: String,
    /// The built-in exception class it derives from (`"Exception"`, `"LookupError"`).
    pub(crate) base: String,
    pub(crate) doc: String,
}

/// A native class of a module, made in each interpreter from one static definition.
#[derive(Clone, Copy)]
pub(crate) struct ClassSpec {
    /// The module attribute naming it.
    pub(crate) name: &'static str,
    pub(crate) def: &'static ClassDef,
}

/// A module to define.
#[derive(Clone)]
pub(crate) struct ModuleSpec {
    pub(crate) name: String,
    pub(crate) doc: String,
    /// Functions written against the C calling convention, whose `self` is the module.
    pub(crate) methods: Vec<MethodDef>,
    /// Functions with a Rust side shared by every interpreter ([`NativeFn`]).
    pub(crate) functions: Vec<FunctionSpec>,
    pub(crate) classes: Vec<ClassSpec>,
    pub(crate) exceptions: Vec<ExceptionSpec>,
    pub(crate) constants: Vec<(String, Value)>,
}

impl ModuleSpec {
    /// How many entries the module's state holds: its classes, then its exceptions.
    fn state_entries(&self) -> usize {
        self.classes.len() + self.exceptions.len()
    }
}

struct Registered {
    def: *mut ffi::PyModuleDef,
    spec: ModuleSpec,
    /// One method definition per function, in the order of `spec.functions`.
    methods: Vec<*mut ffi::PyMethodDef>,
}

struct Table(Vec<Registered>);

// SAFETY: the definitions are leaked and never mutated after registration; CPython only
// reads them. The specs are `Send + Sync` data.
unsafe impl Send for Table {}
// SAFETY: see `Send`.
unsafe impl Sync for Table {}

static MODULES: OnceLock<Table> = OnceLock::new();

fn leak_cstr(text: &str, what: &str) -> Result<&'static CStr, String> {
    let text = CString::new(text).map_err(|_| format!("{what} {text:?} contains a NUL byte"))?;
    Ok(Box::leak(text.into_boxed_c_str()))
}

/// Registers `specs` as built-in modules of every interpreter. Must run once, before
/// CPython is initialised.
pub(crate) fn register(specs: Vec<ModuleSpec>) -> Result<(), String> {
    if specs.is_empty() {
        return Ok(());
    }
    let names = define(specs)?;
    let inits = callback::indexed_init_fns(definition);
    for (i, name) in names.into_iter().enumerate() {
        // SAFETY: called before Py_Initialize, with a static name and init function.
        let status = unsafe { ffi::PyImport_AppendInittab(name.as_ptr(), Some(inits[i])) };
        if status != 0 {
            return Err(format!("could not register the module {name:?}"));
        }
    }
    Ok(())
}

/// The names of the modules built into CPython (`sys.builtin_module_names`): its table
/// of built-in modules, less the modules [`register`] added. The caller makes sure no
/// registration runs meanwhile (the runtime's start-up lock).
pub(crate) fn builtin_module_names() -> Vec<String> {
    let ours: Vec<&str> = MODULES
        .get()
        .map(|table| table.0.iter().map(|r| r.spec.name.as_str()).collect())
        .unwrap_or_default();
    let mut names = Vec::new();
    // SAFETY: `PyImport_Inittab` points to CPython's static table of built-in modules (or
    // to the copy `PyImport_AppendInittab` made of it, which only `register` calls, never
    // concurrently with this), an array ended by an entry whose name is NULL; every name
    // is a NUL-terminated string that lives as long as the table.
    unsafe {
        let mut entry = ffi::PyImport_Inittab;
        while !entry.is_null() && !(*entry).name.is_null() {
            let name = CStr::from_ptr((*entry).name).to_string_lossy();
            if !ours.contains(&name.as_ref()) {
                names.push(name.into_owned());
            }
            entry = entry.add(1);
        }
    }
    names
}

/// Whether the module definitions of the process are made ([`register`] or
/// [`extension_init`] ran).
pub(crate) fn defined() -> bool {
    MODULES.get().is_some()
}

#[cfg(feature = "extension-module")]
/// The body of an extension module's `PyInit_*` function, for a process whose CPython
/// this crate did not start: makes the definitions of the process from `specs` the
/// first time (its first module is the extension's), then returns the first one,
/// initialised. On failure an exception is set and NULL returned.
pub(crate) fn extension_init(specs: fn() -> Vec<ModuleSpec>) -> *mut ffi::PyObject {
    let made = std::panic::catch_unwind(|| {
        if !defined() {
            // Two interpreters importing the extension at once: one defines, the other
            // finds the definitions made.
            if let Err(err) = define(specs()) {
                if !defined() {
                    return Err(err);
                }
            }
        }
        Ok(definition(0))
    });
    match made {
        // SAFETY: a complete, static module definition; PyModuleDef_Init only
        // initialises its object header.
        Ok(Ok(def)) if !def.is_null() => unsafe { ffi::PyModuleDef_Init(def) },
        _ => {
            // SAFETY: CPython calls init functions with the GIL held; static message.
            unsafe {
                ffi::PyErr_SetString(
                    ffi::PyExc_SystemError,
                    c"the subinterp module definitions could not be made".as_ptr(),
                )
            };
            ptr::null_mut()
        }
    }
}

/// Makes a new module object from the `i`th definition, named `name`, executed, in the
/// interpreter of `py` (which then holds its own copy, as an import would give it).
pub(crate) fn instantiate<'py>(py: Python<'py>, i: usize, name: &str) -> Result<PyObj<'py>, Error> {
    let def = definition(i);
    if def.is_null() {
        return Err(Error::InvalidArgument(format!("no module definition {i}")));
    }
    // `importlib.machinery.ModuleSpec` is this class: taken from the import system's own
    // module, always loaded, since importing `importlib` costs a fresh interpreter time.
    let spec = py
        .import("_frozen_importlib")?
        .getattr("ModuleSpec")?
        .call(&[&py.str(name)?, &py.none()])?;
    // SAFETY: GIL held (the token); `def` is a complete, static definition and `spec` a
    // live module spec; the new reference passes to the result.
    let module = unsafe { py.own(ffi::PyModule_FromDefAndSpec(def, spec.as_ptr()))? };
    // SAFETY: GIL held; the module was made from `def` just above.
    py.check(unsafe { ffi::PyModule_ExecDef(module.as_ptr(), def) })?;
    Ok(module)
}

/// Builds the definitions of `specs` and makes them the process's; returns their names.
fn define(specs: Vec<ModuleSpec>) -> Result<Vec<&'static CStr>, String> {
    if specs.len() > callback::MAX_INDEXED_INITS {
        return Err(format!(
            "at most {} modules can be registered, not {}",
            callback::MAX_INDEXED_INITS,
            specs.len()
        ));
    }
    let mut table = Vec::with_capacity(specs.len());
    for spec in specs {
        let name = leak_cstr(&spec.name, "the module name")?;
        let doc = leak_cstr(&spec.doc, "the docstring of module")?;
        let mut methods = Vec::with_capacity(spec.functions.len());
        for function in &spec.functions {
            let fname = leak_cstr(&function.name, "the function name")?;
            let fdoc = leak_cstr(&function.doc, "the docstring of function")?;
            let def = callback::method_def(fname, fdoc, call_native);
            methods.push(Box::into_raw(Box::new(def.0)));
        }
        let mut module_methods: Vec<ffi::PyMethodDef> = spec.methods.iter().map(|m| m.0).collect();
        module_methods.push(ffi::PyMethodDef::zeroed());
        let slots = module_slots(callback::exec_slot(exec_module).0);
        let def = Box::into_raw(Box::new(ffi::PyModuleDef {
            m_base: ffi::PyModuleDef_HEAD_INIT,
            m_name: name.as_ptr(),
            m_doc: doc.as_ptr(),
            m_size: ffi::Py_ssize_t::try_from(spec.state_entries() * SLOT)
                .map_err(|_| format!("module {:?} has too many classes", spec.name))?,
            m_methods: Box::leak(module_methods.into_boxed_slice()).as_mut_ptr(),
            m_slots: slots.as_mut_ptr(),
            m_traverse: Some(state_traverse_fn()),
            // SAFETY: CPython calls the clear and free slots of a module of this
            // definition with that live module and the GIL held.
            m_clear: Some(callback::clear_slot(|m, ()| unsafe { state_clear(m) })),
            // SAFETY: as above.
            m_free: Some(callback::free_slot(|m, ()| unsafe { state_free(m) })),
        }));
        table.push(Registered { def, spec, methods });
    }
    let names: Vec<&'static CStr> = table
        .iter()
        // SAFETY: `m_name` was set above from a leaked C string.
        .map(|r| unsafe { CStr::from_ptr((*r.def).m_name) })
        .collect();
    if MODULES.set(Table(table)).is_err() {
        return Err("host modules were registered before".into());
    }
    Ok(names)
}

/// The definition of the `i`th registered module.
fn definition(i: usize) -> *mut ffi::PyModuleDef {
    MODULES
        .get()
        .and_then(|t| t.0.get(i))
        .map_or(ptr::null_mut(), |r| r.def)
}

fn registered_for(module: &PyObj<'_>) -> Option<&'static Registered> {
    // SAFETY: GIL held (the object carries the token); `module` is a module object made
    // from a definition (exec slots only run for those).
    let def = unsafe { ffi::PyModule_GetDef(module.as_ptr()) };
    MODULES.get()?.0.iter().find(|r| r.def == def)
}

fn exec_module<'py>(py: Python<'py>, module: &PyObj<'py>) -> Outcome<()> {
    let registered = registered_for(module).ok_or_else(|| {
        Failure::Error(Error::InvalidArgument(
            "a module without a registered definition".into(),
        ))
    })?;
    let spec = &registered.spec;
    let module_name = py.str(&spec.name)?;
    for (function, def) in spec.functions.iter().zip(&registered.methods) {
        let bound = Bound {
            call: Arc::clone(&function.call),
            interp: py.interpreter_id(),
        };
        let data = callback::capsule(py, bound)?;
        // SAFETY: GIL held; `def` is a leaked, static method definition; the capsule is
        // the function's `self` (a new reference is taken by the function object), and the
        // module name a live str.
        let func = unsafe {
            py.own(ffi::PyCFunction_NewEx(
                *def,
                data.as_ptr(),
                module_name.as_ptr(),
            ))
        }?;
        module.setattr(&function.name, &func)?;
    }
    for (i, class) in spec.classes.iter().enumerate() {
        let type_object = class.def.create(module)?;
        state_set(module, i, &type_object)?;
        module.setattr(class.name, &type_object)?;
    }
    let builtins = py.builtins()?;
    for (i, exc) in spec.exceptions.iter().enumerate() {
        let base = builtins.getattr(&exc.base)?;
        let full = format!("{}.{}", spec.name, exc.name);
        let class = new_exception(py, &full, &exc.doc, Some(&base))?;
        state_set(module, spec.classes.len() + i, &class)?;
        module.setattr(&exc.name, &class)?;
    }
    for (name, value) in &spec.constants {
        module.setattr(name, &py.to_object(value)?)?;
    }
    Ok(())
}

/// The body of every native function: its `self` is a capsule holding the Rust side.
fn call_native<'py>(
    py: Python<'py>,
    slf: &PyObj<'py>,
    args: &FastArgs<'_, 'py>,
) -> Outcome<PyObj<'py>> {
    let bound = callback::capsule_value::<Bound>(slf).ok_or_else(|| {
        Failure::Error(Error::InvalidArgument(
            "a native function lost its definition".into(),
        ))
    })?;
    (bound.call)(py, bound.interp, args)
}

// ---------------------------------------------------------------- module state

const SLOT: usize = std::mem::size_of::<*mut ffi::PyObject>();

/// The state of a module made from a [`ModuleSpec`]: where its entries start and how
/// many there are; `None` for any other module, or before its state exists.
///
/// The entries are read and written one at a time, under the GIL, through the pointer;
/// no reference to them outlives a statement.
///
/// # Safety
///
/// The GIL is held and `module` is a live object; the pointer returned is valid while
/// the module lives.
unsafe fn state_of(module: *mut ffi::PyObject) -> Option<(*mut *mut ffi::PyObject, usize)> {
    // SAFETY: `module` is a live object (the caller's contract). Its definition is ours
    // when its traverse slot is `state_traverse`'s
    // trampoline; the state then holds `m_size / SLOT` pointers, zeroed at creation, and
    // lives as long as the module.
    unsafe {
        if ffi::PyModule_Check(module) == 0 {
            return None;
        }
        let def = ffi::PyModule_GetDef(module);
        if def.is_null() {
            ffi::PyErr_Clear();
            return None;
        }
        if (*def).m_traverse.map(|f| f as usize) != Some(state_traverse_fn() as usize) {
            return None;
        }
        let state = ffi::PyModule_GetState(module).cast::<*mut ffi::PyObject>();
        if state.is_null() {
            return None;
        }
        Some((state, usize::try_from((*def).m_size).unwrap_or(0) / SLOT))
    }
}

/// Entry `i` of the state of `module` (made from a [`ModuleSpec`]): its `i`th class, or
/// for `i` past its classes, its exceptions.
pub(crate) fn state_get<'py>(module: &PyObj<'py>, i: usize) -> Option<PyObj<'py>> {
    // SAFETY: GIL held (the object carries the token); `module` is live.
    let (state, n) = unsafe { state_of(module.as_ptr()) }?;
    if i >= n {
        return None;
    }
    // SAFETY: `i` is within the state (checked above), which is live with the module.
    let entry = unsafe { *state.add(i) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: the state holds a strong reference to a live object of this interpreter.
    unsafe { module.py().borrowed(entry) }.ok()
}

/// Stores `obj` as entry `i` of the state of `module`, replacing what was there.
fn state_set(module: &PyObj<'_>, i: usize, obj: &PyObj<'_>) -> Result<(), Error> {
    // SAFETY: GIL held (the object carries the token); `module` is live.
    let (state, n) = unsafe { state_of(module.as_ptr()) }
        .ok_or_else(|| Error::InvalidArgument("not a module with state".into()))?;
    if i >= n {
        return Err(Error::InvalidArgument(format!("no state entry {i}")));
    }
    // SAFETY: GIL held (the objects carry the token); `i` is within the state. The state
    // takes a strong reference and releases the one it held.
    unsafe {
        ffi::Py_IncRef(obj.as_ptr());
        let old = std::mem::replace(&mut *state.add(i), obj.as_ptr());
        if !old.is_null() {
            ffi::Py_DecRef(old);
        }
    }
    Ok(())
}

/// The traverse slot of the modules made here, which also marks them as such (one
/// address, taken once).
fn state_traverse_fn() -> ffi::traverseproc {
    static TRAVERSE: OnceLock<ffi::traverseproc> = OnceLock::new();
    *TRAVERSE.get_or_init(|| {
        // SAFETY: CPython calls the traverse slot of a module of our definitions with that
        // live module, during a collection (GIL held).
        callback::traverse_slot(|m, visit| unsafe { state_traverse(m, visit) })
    })
}

/// The traverse slot's body: visits the entries of the state of `module`.
///
/// # Safety
///
/// The GIL is held and `module` is a live object.
unsafe fn state_traverse(module: *mut ffi::PyObject, visit: callback::Visit) -> std::ffi::c_int {
    // SAFETY: GIL held; `module` is live (the caller's contract).
    let Some((state, n)) = (unsafe { state_of(module) }) else {
        return 0;
    };
    for i in 0..n {
        // SAFETY: `i` is within the live state; a read of one entry.
        let entry = unsafe { *state.add(i) };
        if let Some(obj) = ptr::NonNull::new(entry) {
            let r = visit.call(obj);
            if r != 0 {
                return r;
            }
        }
    }
    0
}

/// The clear slot's body: empties the state of `module`, releasing its entries.
///
/// # Safety
///
/// The GIL is held and `module` is a live object.
unsafe fn state_clear(module: *mut ffi::PyObject) -> std::ffi::c_int {
    // SAFETY: GIL held; `module` is live (the caller's contract).
    let Some((state, n)) = (unsafe { state_of(module) }) else {
        return 0;
    };
    for i in 0..n {
        // SAFETY: `i` is within the live state; the entry is emptied before the
        // reference it held is released (CPython clears modules with the GIL held), so
        // code run by that release sees it empty.
        unsafe {
            let obj = std::mem::replace(&mut *state.add(i), ptr::null_mut());
            if !obj.is_null() {
                ffi::Py_DecRef(obj);
            }
        }
    }
    0
}

/// The free slot's body: releases the entries of the state of `module`.
///
/// # Safety
///
/// The GIL is held and `module` is a live object, being freed.
unsafe fn state_free(module: *mut ffi::PyObject) {
    // SAFETY: the same contract as ours.
    unsafe { state_clear(module) };
}

/// A new exception class `name` (qualified: `"module.Name"`) deriving from `base`
/// (`Exception` when `None`).
pub(crate) fn new_exception<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    base: Option<&PyObj<'py>>,
) -> Result<PyObj<'py>, Error> {
    if let Some(base) = base {
        // SAFETY: GIL held; a type check of a live object.
        if unsafe { ffi::PyExceptionClass_Check(base.as_ptr()) } == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} is not an exception class",
                base.repr().unwrap_or_default()
            )));
        }
    }
    let name = CString::new(name)
        .map_err(|_| Error::InvalidArgument("a NUL byte in an exception name".into()))?;
    let doc = CString::new(doc)
        .map_err(|_| Error::InvalidArgument("a NUL byte in an exception's docstring".into()))?;
    // SAFETY: GIL held; NUL-terminated name and doc alive across the call; `base` is NULL
    // or an exception class; no extra attributes.
    unsafe {
        py.own({
            ffi::PyErr_NewExceptionWithDoc(
                name.as_ptr(),
                doc.as_ptr(),
                base.map_or(ptr::null_mut(), |b| b.as_ptr()),
                ptr::null_mut::<ffi::PyObject>(),
            )
        })
    }
}

/// The slots of every module the library defines: `exec`, then own-GIL interpreters
/// supported and (3.13+) no GIL needed. Leaked: module definitions live for the process.
fn module_slots(exec: *mut std::ffi::c_void) -> &'static mut [ffi::PyModuleDef_Slot] {
    Box::leak(
        vec![
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_exec,
                value: exec,
            },
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_multiple_interpreters,
                value: ffi::Py_MOD_PER_INTERPRETER_GIL_SUPPORTED,
            },
            #[cfg(Py_3_13)]
            ffi::PyModuleDef_Slot {
                slot: ffi::Py_mod_gil,
                value: ffi::Py_MOD_GIL_NOT_USED,
            },
            ffi::PyModuleDef_Slot {
                slot: 0,
                value: ptr::null_mut(),
            },
        ]
        .into_boxed_slice(),
    )
}
