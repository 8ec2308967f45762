//! The one owner of the prepare-in-main workaround ([`super::DATETIME_STATIC_TYPES`],
//! [`super::SINGLE_PHASE_STATE`]; the module documentation of [`super`] explains it): the
//! runtime starts it ([`start`]), each new interpreter installs its loader wrapper
//! ([`Preparation::install`]), the wrapper calls the built-in module's
//! `_prepare_in_main`, which calls [`prepare`], which imports the module in the main
//! interpreter ([`import_in_main`]) once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{for_version, prepared_in_legacy, Workaround};
use crate::error::Result;
use crate::raw::Python;
use crate::value::Value;

/// Python run in a new subinterpreter to wrap its extension module loader.
const PREPARE_IN_MAIN: &str = include_str!("prepare_in_main.py");

/// Python run in the main interpreter to import one module there.
const IMPORT_IN_MAIN: &str = include_str!("import_in_main.py");

/// Which extension modules a new interpreter has imported in the main interpreter first.
pub(crate) enum Preparation {
    Off,
    All,
    Only(Vec<&'static str>),
}

impl Preparation {
    /// What a new interpreter prepares: nothing when the runtime does not prepare
    /// (`enabled`); every extension module for an isolated interpreter; for a legacy one
    /// (`shares_obmalloc`), only those a hazard of `version` names — preparing numpy,
    /// Cython or PyO3 modules in the main interpreter would take the one interpreter they
    /// allow.
    pub(crate) fn of(enabled: bool, shares_obmalloc: bool, version: &str) -> Preparation {
        match (enabled, shares_obmalloc) {
            (false, _) => Preparation::Off,
            (true, false) => Preparation::All,
            (true, true) => Preparation::Only(prepared_in_legacy(version)),
        }
    }

    /// Wraps the extension module loader of the interpreter of `py` as prepared.
    pub(crate) fn install(self, py: Python<'_>) -> Result<()> {
        let only = match self {
            Preparation::Off => return Ok(()),
            Preparation::Only(names) if names.is_empty() => return Ok(()),
            Preparation::All => Value::None,
            Preparation::Only(names) => Value::List(names.into_iter().map(Value::from).collect()),
        };
        let scope = py.dict()?;
        scope.set_item(&py.str("only")?, &py.to_object(&only)?)?;
        py.run_compiled_once(PREPARE_IN_MAIN, PREPARE_FILE, &scope)
    }

    /// Compiles the loader wrapper ahead of the interpreters that install it.
    #[cfg(feature = "extension-module")]
    pub(crate) fn compile_ahead(py: Python<'_>) -> Result<()> {
        py.compile_once(PREPARE_IN_MAIN, PREPARE_FILE)
    }
}

/// The file name of [`PREPARE_IN_MAIN`] in tracebacks.
const PREPARE_FILE: &str = "<subinterp prepare>";

/// Starts preparing for the runtime of `version`: `run_in_main` hands a job to the thread
/// of the main interpreter (an error if it no longer takes any).
pub(crate) fn start<F>(version: &str, run_in_main: F)
where
    F: Fn(Box<dyn for<'py> FnOnce(Python<'py>) + Send>) -> std::result::Result<(), String>
        + Send
        + Sync
        + 'static,
{
    let preparer = move |module: &str, path: &[String]| {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let (module, path) = (module.to_owned(), path.to_vec());
        run_in_main(Box::new(move |py: Python<'_>| {
            let _ = done_tx.send(import_in_main(py, &module, &path));
        }))?;
        done_rx
            .recv()
            .map_err(|_| "the main interpreter's thread ended".to_owned())?
    };
    set_preparer(Some(Arc::new(preparer)), version);
    tracing::debug!(
        python = %version,
        "extension modules are imported in the main interpreter before isolated ones load them"
    );
}

/// Stops preparing: the runtime of `version` is ending.
pub(crate) fn stop(version: &str) {
    set_preparer(None, version);
}

/// `SUBINTERP_PREPARE_EXTENSIONS=0` (or `1`) overrides the default of
/// [`RuntimeConfig::prepare_extensions`](crate::RuntimeConfig::prepare_extensions) when the host did not set it.
pub(crate) fn from_environment() -> Option<bool> {
    match std::env::var("SUBINTERP_PREPARE_EXTENSIONS").ok()?.trim() {
        "0" | "false" | "no" | "off" => Some(false),
        "1" | "true" | "yes" | "on" => Some(true),
        other => {
            tracing::warn!("ignoring SUBINTERP_PREPARE_EXTENSIONS={other:?} (want 0 or 1)");
            None
        }
    }
}

/// Imports `module` in the main interpreter, with the entries of the loading
/// interpreter's `sys.path` that the main one lacks appended to its own.
fn import_in_main(
    py: Python<'_>,
    module: &str,
    path: &[String],
) -> std::result::Result<(), String> {
    let run = || -> Result<()> {
        let globals = py.dict()?;
        globals.set_item(&py.str("name")?, &py.str(module)?)?;
        let entries = Value::List(path.iter().map(|p| Value::from(p.as_str())).collect());
        globals.set_item(&py.str("path")?, &py.to_object(&entries)?)?;
        py.run(IMPORT_IN_MAIN, "<subinterp prepare>", &globals)
    };
    run().map_err(|err| err.to_string())
}

/// Runs the preparation of one module in the main interpreter: given the module's name and
/// the `sys.path` of the interpreter about to load it; returns the Python error text if
/// the main interpreter could not import it.
type Preparer = dyn Fn(&str, &[String]) -> std::result::Result<(), String> + Send + Sync;

struct State {
    preparer: Option<Arc<Preparer>>,
    version: String,
    done: BTreeSet<String>,
}

static STATE: Mutex<State> = Mutex::new(State {
    preparer: None,
    version: String::new(),
    done: BTreeSet::new(),
});

static PREPARING: Mutex<()> = Mutex::new(());

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Installs (or, with `None`, removes) the runtime's way of preparing modules.
fn set_preparer(preparer: Option<Arc<Preparer>>, version: &str) {
    let mut state = state();
    state.preparer = preparer;
    state.version = version.to_owned();
    state.done.clear();
}

/// Makes sure `module` was imported in the main interpreter before a subinterpreter
/// loads it. Called by the wrapped module loaders of subinterpreters, with their
/// GIL released. Never fails: a module the main interpreter cannot import is loaded by
/// the subinterpreter anyway, after a warning that names the hazard.
pub(crate) fn prepare(module: &str, sys_path: &[String]) {
    let is_done = |state: &State| state.preparer.is_none() || state.done.contains(module);
    if is_done(&state()) {
        return;
    }
    // One preparation at a time: a second loader of the same module waits here until the
    // main interpreter has imported it, instead of loading it first.
    let _one_at_a_time = PREPARING.lock().unwrap_or_else(|e| e.into_inner());
    let (preparer, version) = {
        let state = state();
        if is_done(&state) {
            return;
        }
        let Some(preparer) = state.preparer.clone() else {
            return;
        };
        (preparer, state.version.clone())
    };
    let outcome = preparer(module, sys_path);
    state().done.insert(module.to_owned());
    match outcome {
        Ok(()) => tracing::debug!(
            target: "subinterp::hazards",
            module,
            "imported in the main interpreter before a subinterpreter loads it"
        ),
        Err(error) => {
            let hazards = for_version(&version);
            let named: Vec<String> = hazards
                .iter()
                .filter(|h| h.workaround == Workaround::PrepareInMain)
                .map(|h| format!("{} ({}; {})", h.id, h.issues_text(), h.fixed_text()))
                .collect();
            tracing::warn!(
                target: "subinterp::hazards",
                "{module} could not be imported in the main interpreter first ({error}); \
                 on CPython {version}, subinterpreters that load it may crash the \
                 process when they end: {}",
                named.join("; ")
            );
        }
    }
}
