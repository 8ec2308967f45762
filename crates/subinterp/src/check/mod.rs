//! Which modules can live in isolated interpreters, and why: the check behind
//! `subinterp check`, as a function a host can call before loading a plugin.
//!
//! ```no_run
//! use subinterp::check::{check_module, CheckOptions, Verdict};
//!
//! let report = check_module("numpy", &CheckOptions::new())?;
//! match report.verdict {
//!     Verdict::Ok => println!("numpy can run in isolated interpreters"),
//!     Verdict::LegacyOnly => println!("numpy needs a legacy interpreter: {}", report.reason()),
//!     Verdict::Broken => println!("numpy cannot be loaded: {}", report.reason()),
//! }
//! # Ok::<(), subinterp::check::CheckError>(())
//! ```
//!
//! # Verdicts
//!
//! - [`Verdict::Ok`]: the module imports in an isolated (own-GIL) interpreter, and again
//!   in a second one in the same process — a module that only one interpreter per
//!   process can load is of little use to a host of many.
//! - [`Verdict::LegacyOnly`]: isolated interpreters refuse it (or it fails there), and it
//!   imports in a legacy (shared-GIL) interpreter.
//! - [`Verdict::Broken`]: it fails even in a legacy interpreter, or importing it (or
//!   ending an interpreter that imported it) crashes the process, or it does not finish
//!   within the timeout. A module that does not exist at all is `broken` with the
//!   detail `No module named '...'` and no kind: to a host, a plugin that cannot be
//!   found cannot be loaded either.
//!
//! # How the facts are found
//!
//! Nothing is loaded into the calling process. The check runs the same Python the
//! library embeds (the one the crate was built with, [`CheckOptions::python`] to choose
//! another) as a child process running a probe script, with the `sys.path` an
//! [`Interpreter`](crate::Interpreter) would have: [`CheckOptions::add_path`]
//! directories first, then the virtual environment's `site-packages`. That process
//! never imports the modules under test; for each module it forks a fresh process per
//! question, so that a crash, or what one import leaves behind, cannot change the next
//! answer (seed 001, 48.46: processes are the unit of crash isolation):
//!
//! 1. *declarations* (extension and builtin modules): the module's `PyInit_<name>` is
//!    called through `ctypes`. A multi-phase module returns its `PyModuleDef`, whose
//!    `m_slots` give `Py_mod_multiple_interpreters` and (3.13+) `Py_mod_gil`; a
//!    single-phase one returns a module object. Only the definition is read, nothing is
//!    executed on it.
//! 2. *isolated*: the module is imported in two own-GIL interpreters (CPython's own
//!    `_interpreters` / `_xxsubinterpreters` with its `isolated` preset, the same
//!    settings as [`InterpreterConfig::isolated`](crate::InterpreterConfig::isolated)),
//!    one after the other, with the import system's extension loaders wrapped to record
//!    every extension module whose creation raised `ImportError` — including refusals
//!    that the importing code caught. Then the interpreters are ended.
//! 3. *pool* (when the isolated imports worked or crashed): the way a
//!    [`Pool`](crate::Pool) uses a module: four isolated interpreters, each created and
//!    used on a thread of its own, all alive at once, then each ended by its thread.
//!    Some crashes only show this way (`_datetime` on CPython 3.13.0 with two workers).
//! 4. *prepared pool* (when one of the above crashed and the runtime prepares extension
//!    modules on this Python, see [`crate::hazards`]): the same after importing the
//!    module in the main interpreter, as the runtime does. When that is clean the module
//!    is `ok`, and the detail says what crashed without the preparation and which
//!    CPython bug it is; [`ModuleReport::culprit`] names the module that bug is about
//!    (e.g. `_datetime` for `pytest` on 3.13.0).
//! 5. *legacy* (when the isolated import failed or crashed): the same as 2 with two
//!    shared-GIL interpreters, after importing in the main interpreter the modules the
//!    runtime prepares for legacy interpreters ([`crate::hazards::prepared_in_legacy`]).
//! 6. *mixed* (when isolated refused it and legacy imported it): an isolated attempt
//!    followed by a legacy import in one process, as a host that tries isolated first and
//!    falls back would do. On CPython 3.12 some single-phase modules (`_decimal`,
//!    `_datetime`) crash the process there, because the refused attempt has already run
//!    their initialisation once; this is reported in the detail.
//! 7. *process* (when neither isolated nor legacy interpreters imported it): the module
//!    is imported in the main interpreter of a process of its own, as a pool's worker
//!    process would. (A module a legacy interpreter imports is taken to import there
//!    too.) With the isolated failure, this gives [`ModuleReport::pool`]: where a
//!    [`Pool`](crate::Pool) would run a task of the module ([`Placement`]).
//!
//! `shared_state` compares `id()` of the module's attributes (leaving out `__dunder__`
//! entries and immortal objects such as small ints, `None` or static builtin types) in
//! the two interpreters of the kind that imported it, while both are alive: the same
//! address in two live interpreters is the same object. It is `true` for single-phase
//! modules whose dict CPython copies from the first import (seeds 000/002), and for
//! multi-phase modules that put static C objects into their dict.
//!
//! Module lookup and extension discovery ([`CheckOptions::all_extensions`]) read only
//! the file system and the finders of `sys.meta_path`; no package's code runs in the
//! checking process.

mod verdict;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Whether `name` is a dotted sequence of Python identifiers, none a keyword.
use crate::names::is_dotted as is_module_name;

/// The probe script run by the child Python process (see the module docs).
const PROBE: &str = include_str!("probe.py");

/// What a check concluded about one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Imports in isolated (own-GIL) interpreters.
    Ok,
    /// Refused by isolated interpreters; imports in a legacy (shared-GIL) one.
    LegacyOnly,
    /// Fails even in a legacy interpreter, crashes, hangs, or does not exist.
    Broken,
}

/// What kind of module it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleKind {
    /// A compiled extension module loaded from a shared library file.
    Extension,
    /// A module compiled into the Python interpreter (`sys.builtin_module_names`).
    Builtin,
    /// A Python module or package (source, bytecode, frozen or namespace).
    Python,
}

/// Where a [`Pool`](crate::Pool) (and so `subinterp map` and the Python package's `Pool`)
/// would run a task of the module, with its default of process fallback on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// In an isolated interpreter of the calling process (the verdict is `ok`).
    Interpreter,
    /// In a worker process: isolated interpreters refuse an extension module it imports
    /// (the report's `culprit`), and it imports in the main interpreter of a process.
    Process,
    /// Nowhere: it does not import even in the main interpreter of a process (or does not
    /// exist), or it fails or crashes in isolated interpreters for another reason than a
    /// refusal, which a pool does not move to a process (unless told to, with
    /// [`PoolConfig::in_processes`](crate::PoolConfig::in_processes)).
    Nowhere,
}

/// How an extension module initialises itself (PEP 489).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitKind {
    /// `PyInit_<name>` builds the module itself: one set of objects per process, refused
    /// by isolated interpreters.
    SinglePhase,
    /// `PyInit_<name>` returns a `PyModuleDef`: CPython creates a module object per
    /// interpreter.
    MultiPhase,
}

/// The value of a multi-phase module's `Py_mod_multiple_interpreters` slot. A module
/// that does not declare it gets CPython's default, [`Supported`](Self::Supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MultipleInterpreters {
    /// `Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED`: refused by every interpreter that
    /// checks extensions.
    NotSupported,
    /// `Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED`: several interpreters, but only ones that
    /// share the main GIL.
    Supported,
    /// `Py_MOD_PER_INTERPRETER_GIL_SUPPORTED`: also interpreters with their own GIL.
    PerInterpreterGil,
}

/// The value of a multi-phase module's `Py_mod_gil` slot (Python 3.13+). A module that
/// does not declare it gets CPython's default, [`Used`](Self::Used).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GilUse {
    /// `Py_MOD_GIL_USED`: needs the GIL (a free-threaded build re-enables it).
    Used,
    /// `Py_MOD_GIL_NOT_USED`: safe without the GIL.
    NotUsed,
}

/// The check's answer for one module.
///
/// Serialises (with serde) to the object `subinterp check --json` prints: every field,
/// `null` where it does not apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModuleReport {
    /// The module's dotted name, as asked or as found.
    pub module: String,
    /// The conclusion.
    pub verdict: Verdict,
    /// What kind of module it is; `None` when it was not found.
    pub kind: Option<ModuleKind>,
    /// Single- or multi-phase initialisation (extension and builtin modules whose
    /// `PyInit_` function could be called).
    pub init: Option<InitKind>,
    /// The `Py_mod_multiple_interpreters` slot of a multi-phase module (its default
    /// when not declared).
    pub multiple_interpreters: Option<MultipleInterpreters>,
    /// The `Py_mod_gil` slot of a multi-phase module on Python 3.13+ (its default when
    /// not declared).
    pub gil: Option<GilUse>,
    /// Whether objects of the module's dict are the very same objects in two
    /// interpreters that imported it (isolated ones when it is `ok`, legacy ones
    /// otherwise). Extension and builtin modules only; `None` when it was not imported
    /// in two interpreters.
    pub shared_state: Option<bool>,
    /// The extension module that isolated interpreters refused while importing this one
    /// (itself, one of its own compiled modules, or a dependency's), whether the
    /// refusal made the import fail or was caught and worked around; failing that, the
    /// extension module a known CPython bug of this version names when interpreters that
    /// imported it crashed (see [`crate::hazards`]).
    pub culprit: Option<String>,
    /// Where a pool would run a task of the module; `None` when the check could not
    /// tell (it timed out, or the probe failed).
    pub pool: Option<Placement>,
    /// What happened, in plain words, when there is more to say than the other fields:
    /// the error of a failed import, the signal of a crash, a caught refusal, the names
    /// of shared objects.
    pub detail: Option<String>,
}

impl ModuleReport {
    /// The reason for the verdict in one line of plain words: what the module is, what
    /// it declares, and the detail.
    pub fn reason(&self) -> String {
        verdict::reason(self)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::LegacyOnly => "legacy-only",
            Verdict::Broken => "broken",
        })
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Interpreter => "interpreter",
            Placement::Process => "process",
            Placement::Nowhere => "nowhere",
        })
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModuleKind::Extension => "extension",
            ModuleKind::Builtin => "builtin",
            ModuleKind::Python => "python",
        })
    }
}

impl fmt::Display for InitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InitKind::SinglePhase => "single-phase",
            InitKind::MultiPhase => "multi-phase",
        })
    }
}

impl fmt::Display for MultipleInterpreters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MultipleInterpreters::NotSupported => "not_supported",
            MultipleInterpreters::Supported => "supported",
            MultipleInterpreters::PerInterpreterGil => "per_interpreter_gil",
        })
    }
}

impl fmt::Display for GilUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GilUse::Used => "used",
            GilUse::NotUsed => "not_used",
        })
    }
}

/// Why a check could not run. (A module that fails or crashes is not an error: it is a
/// [`Verdict::Broken`] report.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// A name that cannot be a Python module name.
    #[error("{0:?} is not a module name (expected dotted Python identifiers, such as json or xml.etree)")]
    InvalidModuleName(String),
    /// The Python to run the probe with does not exist.
    #[error("cannot find the Python interpreter {0}; choose one with CheckOptions::python")]
    PythonNotFound(PathBuf),
    /// A directory given with [`CheckOptions::add_path`] does not exist.
    #[error("{0}: no such directory")]
    NoSuchDirectory(PathBuf),
    /// The environment is unusable, e.g. a virtual environment made for another Python.
    #[error("{0}")]
    Environment(String),
    /// Starting or talking to the probe process failed.
    #[error("cannot run the check with {python}: {source}")]
    Spawn {
        /// The Python executable.
        python: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The probe process ended without finishing (its standard error is included).
    #[error("the checking process failed: {0}")]
    Probe(String),
}

/// Which virtual environment the check uses.
#[derive(Clone, Debug)]
enum Venv {
    FromEnvironment,
    Path(PathBuf),
    Off,
}

/// How to run a check: which Python, which `sys.path`, how many modules at once.
///
/// The defaults match [`RuntimeConfig::new`](crate::RuntimeConfig::new): the Python the
/// crate was built with, the virtual environment named by `VIRTUAL_ENV` (if any), and
/// `PYTHON*` environment variables ignored.
///
/// ```
/// use std::time::Duration;
/// let mut options = subinterp::check::CheckOptions::new();
/// options.add_path("plugins").jobs(4).timeout(Duration::from_secs(30));
/// ```
#[derive(Clone, Debug)]
pub struct CheckOptions {
    python: Option<PathBuf>,
    paths: Vec<PathBuf>,
    venv: Venv,
    jobs: Option<usize>,
    timeout: Duration,
    all_extensions: bool,
    prepare_extensions: Option<bool>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckOptions {
    /// The defaults: build Python, `VIRTUAL_ENV`, one module per CPU at a time, 120 s per
    /// module.
    pub fn new() -> Self {
        CheckOptions {
            python: None,
            paths: Vec::new(),
            venv: Venv::FromEnvironment,
            jobs: None,
            timeout: Duration::from_secs(120),
            all_extensions: false,
            prepare_extensions: None,
        }
    }

    /// Run the probe with this Python executable instead of the one the crate was built
    /// with. It must be the Python the host embeds (same version and installation), or
    /// the answers are about another Python.
    pub fn python(&mut self, executable: impl Into<PathBuf>) -> &mut Self {
        self.python = Some(executable.into());
        self
    }

    /// Put a directory first on `sys.path` (in the order added), like
    /// [`RuntimeConfig::add_path`](crate::RuntimeConfig::add_path).
    pub fn add_path(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.paths.push(dir.into());
        self
    }

    /// Use the packages of this virtual environment instead of `VIRTUAL_ENV`'s. An
    /// environment made for another Python version is an error.
    pub fn virtual_env(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.venv = Venv::Path(dir.into());
        self
    }

    /// Ignore `VIRTUAL_ENV` and any virtual environment set before.
    pub fn no_virtual_env(&mut self) -> &mut Self {
        self.venv = Venv::Off;
        self
    }

    /// Check at most `n` modules at the same time (default: the number of CPUs). Each
    /// one runs in processes of its own.
    pub fn jobs(&mut self, n: usize) -> &mut Self {
        self.jobs = Some(n.max(1));
        self
    }

    /// Give up on a module after this long (default 120 s); it is then `broken`.
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// Also check every extension module found on `sys.path`: the standard library's
    /// `lib-dynload`, every `site-packages`, the added paths, packages' submodules
    /// included (first file found for a name, as import would pick it). Plain shared
    /// libraries that packages ship next to their modules (no `PyInit_` function) are
    /// left out.
    pub fn all_extensions(&mut self, yes: bool) -> &mut Self {
        self.all_extensions = yes;
        self
    }

    /// Predict a runtime whose isolated interpreters do (or do not) have their extension
    /// modules imported in the main interpreter first, as set with
    /// [`RuntimeConfig::prepare_extensions`](crate::RuntimeConfig::prepare_extensions).
    /// By default the check assumes what the runtime does on the Python checked: it
    /// prepares them exactly on the versions with such a hazard ([`crate::hazards`]).
    pub fn prepare_extensions(&mut self, yes: bool) -> &mut Self {
        self.prepare_extensions = Some(yes);
        self
    }

    fn python_executable(&self) -> Result<PathBuf, CheckError> {
        let python = match &self.python {
            Some(p) => p.clone(),
            None => match option_env!("SUBINTERP_BUILD_PYTHON") {
                Some(p) => PathBuf::from(p),
                None => {
                    return Err(CheckError::Environment(
                        "the crate was built without knowing its Python's path; choose one \
                         with CheckOptions::python"
                            .into(),
                    ))
                }
            },
        };
        if !python.exists() {
            return Err(CheckError::PythonNotFound(python));
        }
        Ok(python)
    }

    fn venv_dir(&self) -> Option<(PathBuf, bool)> {
        match &self.venv {
            Venv::Off => None,
            Venv::Path(p) => Some((p.clone(), true)),
            Venv::FromEnvironment => {
                crate::runtime::venv_from_environment().map(|dir| (dir, false))
            }
        }
    }
}

/// Everything one check run produced.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckRun {
    /// The version of the Python that was checked against, e.g. `"3.13.0"`.
    pub python_version: String,
    /// One report per module: the named modules in the order given (duplicates
    /// dropped), then the extension modules found by
    /// [`CheckOptions::all_extensions`], by name.
    pub reports: Vec<ModuleReport>,
    /// Warnings about the environment (e.g. a `VIRTUAL_ENV` that was ignored).
    pub warnings: Vec<String>,
    /// How long the whole run took.
    pub elapsed: Duration,
}

/// Checks one module. See the [module docs](self) for what is done and what the
/// verdicts mean.
pub fn check_module(name: &str, options: &CheckOptions) -> Result<ModuleReport, CheckError> {
    let mut options = options.clone();
    options.all_extensions(false);
    let mut run = run(&[name], &options)?;
    run.reports
        .pop()
        .ok_or_else(|| CheckError::Probe(format!("no report for {name}")))
}

/// Checks the named modules (and every extension module, with
/// [`CheckOptions::all_extensions`]).
pub fn check<S: AsRef<str>>(
    modules: &[S],
    options: &CheckOptions,
) -> Result<Vec<ModuleReport>, CheckError> {
    run(modules, options).map(|run| run.reports)
}

/// Checks every extension module found on `sys.path` (see
/// [`CheckOptions::all_extensions`]).
pub fn check_all(options: &CheckOptions) -> Result<Vec<ModuleReport>, CheckError> {
    let mut options = options.clone();
    options.all_extensions(true);
    run::<&str>(&[], &options).map(|run| run.reports)
}

/// Checks the named modules (and every extension module, with
/// [`CheckOptions::all_extensions`]), returning the reports with the Python version,
/// warnings and timing.
pub fn run<S: AsRef<str>>(modules: &[S], options: &CheckOptions) -> Result<CheckRun, CheckError> {
    let started = Instant::now();
    let mut names: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for name in modules {
        let name = name.as_ref();
        if !is_module_name(name) {
            return Err(CheckError::InvalidModuleName(name.to_owned()));
        }
        if seen.insert(name.to_owned()) {
            names.push(name.to_owned());
        }
    }
    for dir in &options.paths {
        if !dir.is_dir() {
            return Err(CheckError::NoSuchDirectory(dir.clone()));
        }
    }
    if names.is_empty() && !options.all_extensions {
        return Ok(CheckRun {
            python_version: String::new(),
            reports: Vec::new(),
            warnings: Vec::new(),
            elapsed: started.elapsed(),
        });
    }
    let python = options.python_executable()?;
    let tmp = TempDir::new()?;
    let paths: Vec<String> = options
        .paths
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let venv = options.venv_dir();
    let jobs = options.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let request = serde_json::json!({
        "modules": names
            .iter()
            .filter(|name| *name != OWN_MODULE)
            .collect::<Vec<_>>(),
        "all": options.all_extensions,
        "paths": paths,
        "venv": venv.as_ref().map(|(dir, _)| dir.to_string_lossy().into_owned()),
        "venv_required": venv.as_ref().is_some_and(|(_, required)| *required),
        "jobs": jobs,
        "timeout": options.timeout.as_secs_f64(),
        "tmp": tmp.0.to_string_lossy(),
        "prepare": options.prepare_extensions,
        "prepare_rules": crate::hazards::preparation_rules(),
        "legacy_prepare": crate::hazards::legacy_preparation_table(),
    });

    let spawn_error = |source| CheckError::Spawn {
        python: python.clone(),
        source,
    };
    // -E: ignore PYTHON* variables, -s: no user site-packages (as the runtime does),
    // -P: no current directory on sys.path.
    let mut child = Command::new(&python)
        .args(["-E", "-s", "-P", "-c", PROBE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(request.to_string().as_bytes())
            .map_err(spawn_error)?;
    }
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut observations: BTreeMap<String, verdict::Observation> = BTreeMap::new();
    let mut warnings = Vec::new();
    let mut fatal = None;
    let mut python_version = None;
    let mut prepared = false;
    let mut bad_line = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(spawn_error)?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<verdict::Line>(&line) {
            Ok(verdict::Line::Observation(obs)) => {
                observations.insert(obs.module.clone(), *obs);
            }
            Ok(verdict::Line::Warning { message }) => {
                tracing::warn!("{message}");
                warnings.push(message);
            }
            Ok(verdict::Line::Fatal { message }) => fatal = Some(message),
            Ok(verdict::Line::Done {
                python,
                prepared: yes,
            }) => {
                python_version = Some(python);
                prepared = yes;
            }
            Err(e) => {
                bad_line.get_or_insert(format!("unexpected output {line:?}: {e}"));
            }
        }
    }
    let status = child.wait().map_err(spawn_error)?;
    let stderr_text = stderr_reader.join().unwrap_or_default();
    if let Some(message) = fatal {
        return Err(CheckError::Environment(message));
    }
    let Some(python_version) = python_version else {
        let mut message = format!("{} ended with {status}", python.display());
        if let Some(bad) = bad_line {
            message.push_str(&format!("; {bad}"));
        }
        if !stderr_text.trim().is_empty() {
            message.push_str(&format!(":\n{}", stderr_text.trim_end()));
        }
        return Err(CheckError::Probe(message));
    };

    let mut reports = Vec::with_capacity(observations.len());
    for name in &names {
        if let Some(report) = own_module_report(name, &python_version) {
            reports.push(report);
            continue;
        }
        let report = match observations.remove(name) {
            Some(obs) => verdict::derive(&obs, &python_version, prepared),
            None => {
                return Err(CheckError::Probe(format!(
                    "no answer about {name}{}",
                    if stderr_text.is_empty() {
                        String::new()
                    } else {
                        format!(":\n{stderr_text}")
                    }
                )))
            }
        };
        reports.push(report);
    }
    // The rest came from --all; BTreeMap order is by name.
    reports.extend(
        observations
            .values()
            .map(|obs| verdict::derive(obs, &python_version, prepared)),
    );
    Ok(CheckRun {
        python_version,
        reports,
        warnings,
        elapsed: started.elapsed(),
    })
}

/// The module every interpreter of the library has (`raw/pymodule.rs`).
const OWN_MODULE: &str = "subinterp";

/// The report on the module the library itself gives every interpreter it creates,
/// which a plain `python` (the probe) does not have.
fn own_module_report(name: &str, version: &str) -> Option<ModuleReport> {
    let gil_slot =
        crate::hazards::Version::parse(version).is_some_and(|v| (v.major, v.minor) >= (3, 13));
    (name == OWN_MODULE).then(|| ModuleReport {
        module: name.to_owned(),
        verdict: Verdict::Ok,
        kind: Some(ModuleKind::Builtin),
        init: Some(InitKind::MultiPhase),
        multiple_interpreters: Some(MultipleInterpreters::PerInterpreterGil),
        gil: gil_slot.then_some(GilUse::NotUsed),
        shared_state: Some(false),
        culprit: None,
        pool: Some(Placement::Interpreter),
        detail: Some(
            "provided by subinterp to every interpreter it creates (channels, buffers, id()); \
             not importable in a plain python"
                .to_owned(),
        ),
    })
}

/// A private scratch directory for the probe's files, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, CheckError> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "subinterp-check-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        ));
        create_private_dir(&dir).map_err(|e| {
            CheckError::Environment(format!(
                "cannot create a scratch directory {}: {e}",
                dir.display()
            ))
        })?;
        Ok(TempDir(dir))
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(0o700).create(dir)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        for good in ["json", "xml.etree.ElementTree", "_json", "héllo", "a1.b_2"] {
            assert!(is_module_name(good), "{good}");
        }
        for good in ["match", "case", "type", "_", "a.match"] {
            assert!(is_module_name(good), "{good}");
        }
        for bad in [
            "", ".", "a..b", "1abc", "a.", ".a", "a-b", "a b", "a/b", "import", "a.class", "None",
        ] {
            assert!(!is_module_name(bad), "{bad}");
        }
    }

    #[test]
    fn invalid_names_are_refused_before_anything_runs() {
        let mut options = CheckOptions::new();
        options.python("/nonexistent/python");
        let err = check(&["json", "not-a-module"], &options).unwrap_err();
        assert!(matches!(err, CheckError::InvalidModuleName(ref n) if n == "not-a-module"));
        assert!(check::<&str>(&[], &options).unwrap().is_empty());
        let err = check(&["json"], &options).unwrap_err();
        assert!(matches!(err, CheckError::PythonNotFound(_)), "{err}");
    }
}
