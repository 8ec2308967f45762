//! Modules defined at run time, before CPython starts: built-in modules of every
//! interpreter, made of native functions, exception classes and constants.
//!
//! Each is a multi-phase-init module (PEP 489) declaring support for a per-interpreter
//! GIL (and, on 3.13, for running without the GIL): every interpreter that imports it
//! gets its own module object, functions and exception classes. What is shared is only
//! the Rust side of each function, which is `Send + Sync`.

use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::{Arc, OnceLock};

use pyo3_ffi as ffi;

use super::callback::{self, Failure, FastArgs, Outcome};
use super::{PyObj, Python};
use crate::error::Error;
use crate::value::Value;

/// The Rust side of a native function: called with the arguments of each call.
pub(crate) type NativeFn =
    Arc<dyn for<'a, 'py> Fn(Python<'py>, &FastArgs<'a, 'py>) -> Outcome<PyObj<'py>> + Send + Sync>;

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

/// A module to define.
#[derive(Clone)]
pub(crate) struct ModuleSpec {
    pub(crate) name: String,
    pub(crate) doc: String,
    pub(crate) functions: Vec<FunctionSpec>,
    pub(crate) exceptions: Vec<ExceptionSpec>,
    pub(crate) constants: Vec<(String, Value)>,
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
    if specs.len() > callback::MAX_INDEXED_INITS {
        return Err(format!(
            "at most {} host modules can be registered, not {}",
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
            methods.push(Box::into_raw(Box::new(def)));
        }
        let slots = Box::leak(
            vec![
                ffi::PyModuleDef_Slot {
                    slot: ffi::Py_mod_exec,
                    value: callback::exec_slot(exec_module),
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
        );
        let def = Box::into_raw(Box::new(ffi::PyModuleDef {
            m_base: ffi::PyModuleDef_HEAD_INIT,
            m_name: name.as_ptr(),
            m_doc: doc.as_ptr(),
            m_size: 0,
            m_methods: ptr::null_mut(),
            m_slots: slots.as_mut_ptr(),
            m_traverse: None,
            m_clear: None,
            m_free: None,
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
        let data = callback::capsule(py, Arc::clone(&function.call))?;
        // SAFETY: GIL held; `def` is a leaked, static method definition; the capsule is
        // the function's `self` (a new reference is taken by the function object), and the
        // module name a live str.
        let func =
            py.own(unsafe { ffi::PyCFunction_NewEx(*def, data.as_ptr(), module_name.as_ptr()) })?;
        module.setattr(&function.name, &func)?;
    }
    let builtins = py.builtins()?;
    for exc in &spec.exceptions {
        let base = builtins.getattr(&exc.base)?;
        // SAFETY: GIL held; a type check of a live object.
        if unsafe { ffi::PyExceptionClass_Check(base.as_ptr()) } == 0 {
            return Err(Failure::Error(Error::InvalidArgument(format!(
                "{} is not a built-in exception class",
                exc.base
            ))));
        }
        let full = CString::new(format!("{}.{}", spec.name, exc.name))
            .map_err(|_| Error::InvalidArgument("a NUL byte in an exception name".into()))?;
        let doc = CString::new(exc.doc.as_str())
            .map_err(|_| Error::InvalidArgument("a NUL byte in an exception's docstring".into()))?;
        // SAFETY: GIL held; NUL-terminated name and doc alive across the call; `base` is an
        // exception class; no extra attributes.
        let class = py.own(unsafe {
            ffi::PyErr_NewExceptionWithDoc(
                full.as_ptr(),
                doc.as_ptr(),
                base.as_ptr(),
                ptr::null_mut::<ffi::PyObject>(),
            )
        })?;
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
    let call = callback::capsule_value::<NativeFn>(slf).ok_or_else(|| {
        Failure::Error(Error::InvalidArgument(
            "a native function lost its definition".into(),
        ))
    })?;
    call(py, args)
}
