//! Process-wide CPython start-up and shut-down.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use crate::error::{Error, Result};
use crate::hazards::prepare;
use crate::hazards::{self, Hazard};
use crate::host::HostModule;
use crate::raw::lifecycle::{self, InitOptions, MainInterpreter, RawConfig};
use crate::raw::module::ModuleSpec;
use crate::raw::Python;

pub(crate) mod spare;
use spare::Spare;

/// How CPython is started in this process.
///
/// ```
/// let mut config = subinterp::RuntimeConfig::new();
/// config.add_path("plugins").site_import(true);
/// ```
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    home: Option<PathBuf>,
    paths: Vec<PathBuf>,
    venv: Venv,
    site_import: bool,
    use_environment: bool,
    prepare_extensions: Option<bool>,
    host_modules: Vec<HostModule>,
    borrow: bool,
    memory_accounting: bool,
}

#[derive(Clone, Debug)]
enum Venv {
    /// `VIRTUAL_ENV` from the environment, when set.
    FromEnvironment,
    Path(PathBuf),
    Off,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeConfig {
    /// Defaults: Python's home found from the build's interpreter, the virtual
    /// environment named by `VIRTUAL_ENV` (if any) on `sys.path`, `site` imported,
    /// `PYTHON*` environment variables ignored.
    pub fn new() -> Self {
        RuntimeConfig {
            home: None,
            paths: Vec::new(),
            venv: Venv::FromEnvironment,
            site_import: true,
            use_environment: false,
            prepare_extensions: None,
            host_modules: Vec::new(),
            borrow: false,
            memory_accounting: true,
        }
    }

    /// Registers a module of native Rust functions that every interpreter of the runtime
    /// can import ([`HostModule`]). Host modules are built into CPython when it starts:
    /// they are registered by the configuration that starts the runtime
    /// ([`Runtime::init`]), and at most 32 can be. Each must have a name of its own: a
    /// second module of a name already registered, the name `subinterp` (the library's
    /// own module) and, unless the module says [`HostModule::shadow_stdlib`], the name of a
    /// standard-library module are refused by [`Runtime::init`] with
    /// [`Error::InvalidConfig`].
    pub fn host_module(&mut self, module: HostModule) -> &mut Self {
        self.host_modules.push(module);
        self
    }

    /// Refuses host modules CPython could not import, or whose names clash.
    fn validate_host_modules(&self) -> Result<()> {
        if self.borrow && !self.host_modules.is_empty() {
            return Err(Error::InvalidConfig(
                "host modules cannot be added to a running Python (borrow_running)".into(),
            ));
        }
        let builtin = if self.host_modules.is_empty() {
            Vec::new()
        } else {
            crate::raw::module::builtin_module_names()
        };
        for (i, module) in self.host_modules.iter().enumerate() {
            module.validate(&builtin)?;
            if self.host_modules[..i]
                .iter()
                .any(|m| m.name() == module.name())
            {
                return Err(Error::InvalidConfig(format!(
                    "host module {:?} is registered twice: each host module needs a name of \
                     its own",
                    module.name()
                )));
            }
        }
        if self.host_modules.len() > MAX_HOST_MODULES {
            return Err(Error::InvalidConfig(format!(
                "at most {MAX_HOST_MODULES} host modules can be registered, not {}",
                self.host_modules.len()
            )));
        }
        Ok(())
    }

    /// The Python installation to use (`PYTHONHOME`): the prefix holding `lib/python3.X`.
    pub fn home(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.home = Some(dir.into());
        self
    }

    /// Prepend a directory to `sys.path` in every interpreter (in the order added).
    pub fn add_path(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.paths.push(dir.into());
        self
    }

    /// Use this virtual environment in every interpreter. Replaces the `VIRTUAL_ENV`
    /// default.
    ///
    /// For an environment made from the Python this crate is built against, CPython is
    /// started as the environment's own `bin/python`: `sys.prefix`, `sys.exec_prefix`,
    /// `sys.executable` and `sys.path` are then what that `python` has (its
    /// `site-packages` first, the base one only with `include-system-site-packages =
    /// true`), and code that runs `sys.executable -m ...` runs the environment's Python.
    /// For any other directory, its `lib/python3.X/site-packages` (with `.pth` files) is
    /// added to `sys.path`.
    pub fn virtual_env(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.venv = Venv::Path(dir.into());
        self
    }

    /// Ignore `VIRTUAL_ENV` and any virtual environment set before.
    pub fn no_virtual_env(&mut self) -> &mut Self {
        self.venv = Venv::Off;
        self
    }

    /// Import `site` in each interpreter (the default). Turning it off makes interpreters
    /// start about twice as fast, without `site-packages` (a configured virtual
    /// environment's packages are still added to `sys.path`, without `.pth` processing).
    pub fn site_import(&mut self, yes: bool) -> &mut Self {
        self.site_import = yes;
        self
    }

    /// Honour `PYTHONPATH`, `PYTHONHOME` and the other `PYTHON*` variables (off by
    /// default, so a host behaves the same whatever the shell exports).
    pub fn use_environment(&mut self, yes: bool) -> &mut Self {
        self.use_environment = yes;
        self
    }

    /// Import every extension module in the main interpreter before a subinterpreter
    /// loads it for the first time, which avoids crashes of CPython 3.12 and
    /// 3.13 when interpreters end (see [`hazards`](crate::hazards)). By default this is on
    /// exactly for the Python versions with such a hazard ([`Runtime::hazards`]); when
    /// this is not called, the environment variable `SUBINTERP_PREPARE_EXTENSIONS=0` or
    /// `=1` overrides that default.
    pub fn prepare_extensions(&mut self, yes: bool) -> &mut Self {
        self.prepare_extensions = Some(yes);
        self
    }

    /// Uses the CPython already running in this process instead of starting one: for
    /// this crate loaded as a Python extension module (the `subinterp` Python package).
    /// The main interpreter stays the running program's; the runtime never finalises
    /// it. Home, virtual environment and `site` settings are the running Python's own
    /// (paths added here are still put first on the `sys.path` of new interpreters), and
    /// host modules cannot be added to a running CPython. Callers on a thread of that
    /// Python must not hold its GIL while starting the runtime or creating interpreters,
    /// which need it.
    pub fn borrow_running(&mut self) -> &mut Self {
        self.borrow = true;
        self
    }

    /// Count the memory each interpreter allocates through CPython's object and `PyMem`
    /// allocators, so that [`Interpreter::memory_in_use`](crate::Interpreter::memory_in_use)
    /// and the rest report it and
    /// [`InterpreterConfig::memory_limit`](crate::InterpreterConfig::memory_limit) can be
    /// enforced. On by default. The hooks are installed when CPython starts, around the
    /// arena allocator and the raw domain (see the README's "Limits": what is counted,
    /// and the cost, a few percent on allocation-heavy code). Off, memory figures are
    /// `None` and limits are refused with [`Error::InvalidConfig`].
    /// In a borrowed Python ([`borrow_running`](Self::borrow_running)) they are put
    /// around its allocators when the runtime starts (hooks that call the allocators
    /// they wrap may be added at any time, as `tracemalloc` does): interpreters created
    /// from then on are counted in full. Not where the running Python's raw domain is
    /// not plain `malloc` (a debug build, `tracemalloc` tracing).
    pub fn memory_accounting(&mut self, yes: bool) -> &mut Self {
        self.memory_accounting = yes;
        self
    }

    fn venv_dir(&self) -> Option<PathBuf> {
        match &self.venv {
            Venv::Off => None,
            Venv::Path(p) => Some(p.clone()),
            Venv::FromEnvironment => venv_from_environment(),
        }
    }
}

/// The virtual environment named by `VIRTUAL_ENV`, when it is set and not empty: the one
/// lookup of the variable, for the runtime and the checker. Whether the environment fits
/// this Python is decided (and a misfit warned about, once) where it is used.
pub(crate) fn venv_from_environment() -> Option<PathBuf> {
    std::env::var_os("VIRTUAL_ENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

enum State {
    Uninit,
    Running(Weak<RuntimeInner>),
    Finalized,
}

static STATE: Mutex<State> = Mutex::new(State::Uninit);

/// Set once the runtime has ended: its last handle and interpreter gone, the thread of
/// the main interpreter finished.
static ENDED: (Mutex<bool>, std::sync::Condvar) = (Mutex::new(false), std::sync::Condvar::new());

#[cfg(feature = "extension-module")]
/// Waits up to `timeout` for the runtime to end; true once it has, or if it never started.
/// An interpreter stuck in C code keeps the runtime alive until the call returns.
pub(crate) fn wait_ended(timeout: std::time::Duration) -> bool {
    if matches!(
        *STATE.lock().unwrap_or_else(|e| e.into_inner()),
        State::Uninit
    ) {
        return true;
    }
    let (ended, changed) = &ENDED;
    let guard = ended.lock().unwrap_or_else(|e| e.into_inner());
    let (guard, _) = changed
        .wait_timeout_while(guard, timeout, |ended| !*ended)
        .unwrap_or_else(|e| e.into_inner());
    *guard
}

/// The embedded CPython runtime of this process.
///
/// There is at most one per process. [`Runtime::init`] starts it; every [`Runtime`]
/// handle and every [`Interpreter`](crate::Interpreter) keeps it alive, and when the
/// last of them is dropped CPython is finalised — after every interpreter has ended.
/// CPython cannot be started again in the same process after that. A runtime obtained
/// with [`Runtime::get_or_init`] is kept for the life of the process instead.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

/// What interpreters need of the runtime, read through its methods.
pub(crate) struct RuntimeInner {
    main: MainInterpreter,
    /// Whether subinterpreters have extension modules prepared in the main one.
    prepare_extensions: bool,
    /// Python code run in every new interpreter to set up `sys.path`, if any is needed.
    bootstrap: Option<String>,
    version: String,
    /// Whether the Python is borrowed ([`RuntimeConfig::borrow_running`]): interpreters
    /// then make their `subinterp` module from its definition, as no built-in one exists.
    borrowed: bool,
    /// An interpreter made ahead, for the next one of its kind ([`spare`]).
    spare: Mutex<Option<Spare>>,
    shutdown: Mutex<Option<(Sender<MainMsg>, JoinHandle<()>)>>,
}

impl RuntimeInner {
    /// The main interpreter, which new interpreters are made from.
    pub(crate) fn main(&self) -> MainInterpreter {
        self.main
    }

    /// Whether subinterpreters have extension modules prepared in the main one.
    pub(crate) fn prepares_extensions(&self) -> bool {
        self.prepare_extensions
    }

    /// Python code run in every new interpreter to set up `sys.path`, if any is needed.
    pub(crate) fn bootstrap(&self) -> Option<&str> {
        self.bootstrap.as_deref()
    }

    /// The running CPython's version, `3.13.0`.
    pub(crate) fn version(&self) -> &str {
        &self.version
    }

    /// Whether the Python is borrowed from the program that runs it.
    pub(crate) fn is_borrowed(&self) -> bool {
        self.borrowed
    }

    /// The spare interpreter, if there is one of `raw`'s kind.
    pub(crate) fn take_spare(&self, raw: RawConfig) -> Option<Spare> {
        let mut held = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_ref() {
            Some(spare) if spare.is(raw) => held.take(),
            _ => None,
        }
    }

    /// Keeps the spare `start` makes, unless there already is one (then `start` is not
    /// called).
    pub(crate) fn keep_spare(&self, start: impl FnOnce() -> Result<Spare>) -> Result<()> {
        let mut held = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none() {
            *held = Some(start()?);
        }
        Ok(())
    }

    /// Ends the spare interpreter, if there is one, and waits for its thread.
    pub(crate) fn end_spare(&self) {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(spare) = spare {
            spare.end();
        }
    }
}

/// Work for the thread that owns the main interpreter.
pub(crate) enum MainMsg {
    /// Run with the main interpreter's GIL held.
    Job(Box<dyn for<'py> FnOnce(Python<'py>) + Send>),
    /// Finalise CPython (unless a hazard of this version says not to) and end the
    /// thread.
    Stop { finalize: bool },
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("python", &self.inner.version)
            .finish()
    }
}

impl Runtime {
    /// Starts CPython for this process.
    ///
    /// Fails with [`Error::AlreadyInitialized`] if a runtime is running (get it with
    /// [`Runtime::current`]) and [`Error::Finalized`] if one ran and was finalised.
    ///
    /// A configuration CPython would refuse, such as host modules with clashing names, is
    /// [`Error::InvalidConfig`] whether or not a runtime is running.
    pub fn init(config: &RuntimeConfig) -> Result<Runtime> {
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        // Under the lock: no other start-up is adding modules to CPython's table meanwhile.
        config.validate_host_modules()?;
        match &*state {
            State::Running(weak) if weak.strong_count() > 0 => {
                return Err(Error::AlreadyInitialized)
            }
            State::Running(_) | State::Finalized => return Err(Error::Finalized),
            State::Uninit => {}
        }
        let inner = Arc::new(start(config)?);
        *state = State::Running(Arc::downgrade(&inner));
        Ok(Runtime { inner })
    }

    /// The running runtime, if there is one.
    pub fn current() -> Option<Runtime> {
        let state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        match &*state {
            State::Running(weak) => weak.upgrade().map(|inner| Runtime { inner }),
            _ => None,
        }
    }

    /// The running runtime, or a new one started with `config`; kept for the life of the
    /// process.
    ///
    /// A runtime this returns is never finalised: CPython stays up until the process ends,
    /// whatever handles are dropped (as a `static` would keep it), so code that calls
    /// `get_or_init` again later — the next `#[test]` of a test binary, a function called
    /// twice — gets it again instead of [`Error::Finalized`]. Interpreters still end when
    /// they are closed or dropped; only the main interpreter is never finalised (its own
    /// `atexit` callbacks do not run). Use [`Runtime::init`] for a runtime finalised when
    /// its last handle and interpreter are gone. `config` only applies when this call
    /// starts the runtime.
    pub fn get_or_init(config: &RuntimeConfig) -> Result<Runtime> {
        /// The runtime kept for the life of the process.
        static KEPT: OnceLock<Runtime> = OnceLock::new();
        let runtime = match Runtime::current() {
            Some(rt) => rt,
            None => match Runtime::init(config) {
                Err(Error::AlreadyInitialized) => Runtime::current().ok_or(Error::Finalized)?,
                other => other?,
            },
        };
        // At most one runtime runs per process, and a kept one never ends: the first kept
        // is this one.
        Ok(KEPT.get_or_init(|| runtime.clone()).clone())
    }

    /// The embedded Python's version, e.g. `"3.13.0"`.
    pub fn python_version(&self) -> &str {
        &self.inner.version
    }

    /// Whether memory is counted per interpreter ([`RuntimeConfig::memory_accounting`];
    /// never in a borrowed Python).
    pub fn memory_accounting(&self) -> bool {
        crate::raw::alloc::installed()
    }

    /// The known CPython bugs that affect this Python (see [`hazards`](crate::hazards)).
    pub fn hazards(&self) -> Vec<&'static Hazard> {
        hazards::for_version(&self.inner.version)
    }

    /// Whether subinterpreters have their extension modules imported in the main
    /// interpreter first ([`RuntimeConfig::prepare_extensions`]).
    pub fn prepares_extensions(&self) -> bool {
        self.inner.prepare_extensions
    }
}

/// The most host modules a runtime can have: one module init function each, and one more
/// for its own `subinterp` module.
const MAX_HOST_MODULES: usize = crate::raw::callback::MAX_INDEXED_INITS - 1;

fn start(config: &RuntimeConfig) -> Result<RuntimeInner> {
    if config.borrow && config.home.is_some() {
        return Err(Error::InvalidConfig(
            "a borrowed Python has its own home (borrow_running)".into(),
        ));
    }
    let build_python = option_env!("SUBINTERP_BUILD_PYTHON").filter(|p| Path::new(p).exists());
    let home = config
        .home
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    // Started as the virtual environment's own `python`, CPython finds the environment
    // itself (its `pyvenv.cfg`) and gives every interpreter the prefixes, executable and
    // `sys.path` that `python` has there, `include-system-site-packages` honoured.
    let venv_python = venv_python(config, build_python);
    let executable = if home.is_some() {
        None
    } else if let Some(python) = &venv_python {
        Some(python.to_string_lossy().into_owned())
    } else {
        build_python.map(str::to_owned)
    };
    let modules: Vec<ModuleSpec> = std::iter::once(crate::builtin_module::spec())
        .chain(config.host_modules.iter().map(HostModule::to_spec))
        .collect();
    let borrow = config.borrow;
    let memory_accounting = config.memory_accounting;
    let opts = (home, executable, config.use_environment, config.site_import);
    let (ready_tx, ready_rx) = bounded::<Result<(MainInterpreter, String), String>>(1);
    let (main_tx, main_rx) = crossbeam_channel::unbounded::<MainMsg>();
    let thread = std::thread::Builder::new()
        .name("subinterp-main".into())
        .spawn(move || {
            let (home, executable, use_environment, site_import) = opts;
            let init = InitOptions {
                home: home.as_deref(),
                executable: executable.as_deref(),
                use_environment,
                site_import,
                modules: &modules,
                memory_accounting,
            };
            let started = if borrow {
                lifecycle::borrow_running()
            } else {
                lifecycle::initialize(&init)
            };
            match started {
                Ok((main_ts, main)) => {
                    if borrow && memory_accounting {
                        // A running Python: the hooks wrap its allocators from now on.
                        main_ts.with_gil(crate::raw::alloc::install_running);
                    }
                    if let Err(err) = main_ts.with_gil(hazards::limit_thread_walks) {
                        tracing::warn!("sys._current_frames of the main interpreter: {err}");
                    }
                    let version = main_ts.with_gil(|py| {
                        py.import("sys")
                            .and_then(|sys| sys.getattr("version"))
                            .and_then(|v| v.extract_str())
                            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
                            .unwrap_or_default()
                    });
                    let _ = ready_tx.send(Ok((main, version)));
                    // Serve jobs for the main interpreter until the last handle goes (or the
                    // sender vanishes), then finalise.
                    let mut finalize = true;
                    while let Ok(message) = main_rx.recv() {
                        match message {
                            MainMsg::Job(job) => {
                                let ran = main_ts.with_gil(|py| {
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        job(py)
                                    }))
                                });
                                if ran.is_err() {
                                    tracing::error!("a job of the main interpreter panicked");
                                }
                            }
                            MainMsg::Stop { finalize: yes } => {
                                finalize = yes;
                                break;
                            }
                        }
                    }
                    let abandoned = lifecycle::abandoned_interpreters();
                    if borrow {
                        // The running program's Python goes on; only our thread state goes.
                        main_ts.release();
                        tracing::debug!("the borrowed Python runtime is given back");
                    } else if abandoned > 0 {
                        // Finalising would wait for their threads forever.
                        tracing::warn!(
                            interpreters = abandoned,
                            "Python is not finalised: threads started by Python code are \
                             still running in interpreters that could not end"
                        );
                    } else if !finalize {
                        let _ = main_ts.with_gil(|py| -> Result<()> {
                            py.run(FLUSH_MAIN, "<subinterp flush>", &py.dict()?)
                        });
                        tracing::debug!(
                            target: "subinterp::hazards",
                            "the main interpreter is left unfinalised: arg-parser-kwtuple \
                             (python/cpython#119213; fixed in 3.12.4)"
                        );
                    } else if !main_ts.finalize() {
                        tracing::warn!("Python reported an error while finalising");
                    } else {
                        tracing::debug!("Python runtime finalised");
                    }
                }
                Err(msg) => {
                    let _ = ready_tx.send(Err(msg));
                }
            }
        })
        .map_err(|e| Error::InitFailed(format!("cannot start the runtime thread: {e}")))?;
    let (main, version) = match ready_rx.recv() {
        Ok(Ok(ready)) => ready,
        Ok(Err(msg)) => {
            let _ = thread.join();
            return Err(Error::InitFailed(msg));
        }
        Err(_) => {
            let _ = thread.join();
            return Err(Error::InitFailed("the runtime thread ended early".into()));
        }
    };
    let bootstrap = bootstrap_code(config, &version, venv_python.is_some())?;
    let prepare_extensions = config
        .prepare_extensions
        .or_else(prepare::from_environment)
        .unwrap_or_else(|| hazards::needs_preparation(&version));
    if prepare_extensions {
        let jobs = main_tx.clone();
        prepare::start(&version, move |job| {
            jobs.send(MainMsg::Job(job))
                .map_err(|_| "the runtime is shutting down".to_owned())
        });
    }
    tracing::debug!(python = %version, "Python runtime initialised");
    Ok(RuntimeInner {
        main,
        prepare_extensions,
        bootstrap,
        version,
        borrowed: config.borrow,
        spare: Mutex::new(None),
        shutdown: Mutex::new(Some((main_tx, thread))),
    })
}

/// Flushes the main interpreter's streams when it is not finalised.
const FLUSH_MAIN: &str = include_str!("flush_main.py");

/// The `python` of the configured virtual environment, when CPython can be started as
/// it: the environment is a real one (`pyvenv.cfg`, `bin/python`) made from the Python
/// this crate was built against (its `home` is that Python's directory), and no explicit
/// home overrides it. Otherwise the environment's `site-packages` is added to `sys.path`
/// by [`bootstrap_code`].
fn venv_python(config: &RuntimeConfig, build_python: Option<&str>) -> Option<PathBuf> {
    if config.home.is_some() || config.borrow {
        return None;
    }
    let venv = config.venv_dir()?;
    let python = ["python", "python3"]
        .iter()
        .map(|name| venv.join("bin").join(name))
        .find(|p| p.exists())?;
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).ok()?;
    let home = cfg.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| PathBuf::from(value.trim()))
    })?;
    let build_dir = Path::new(build_python?).parent()?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&home, build_dir) {
        Some(python)
    } else {
        tracing::debug!(
            venv = %venv.display(),
            home = %home.display(),
            "the virtual environment was made from another Python: only its site-packages is used"
        );
        None
    }
}

/// Python source run in each new interpreter: extra paths first on `sys.path`, then the
/// virtual environment's `site-packages` unless CPython was started as the environment's
/// own `python` (`venv_started`) and imports `site`, which then adds it.
fn bootstrap_code(
    config: &RuntimeConfig,
    version: &str,
    venv_started: bool,
) -> Result<Option<String>> {
    let mut code = String::from("import sys\n");
    let plain = code.len();
    if !config.paths.is_empty() {
        let dirs: Vec<String> = config.paths.iter().map(|p| py_str(p)).collect();
        code.push_str(&format!("sys.path[0:0] = [{}]\n", dirs.join(", ")));
    }
    if let Some(venv) = config.venv_dir().filter(|_| !config.borrow) {
        let minor: Vec<&str> = version.split('.').take(2).collect();
        let lib = venv
            .join("lib")
            .join(format!("python{}", minor.join(".")))
            .join("site-packages");
        if lib.is_dir() {
            if venv_started && config.site_import {
                // `site` finds the environment by itself.
            } else if config.site_import {
                code.push_str(&format!("import site\nsite.addsitedir({})\n", py_str(&lib)));
            } else {
                code.push_str(&format!("sys.path.append({})\n", py_str(&lib)));
            }
        } else {
            let message = format!(
                "virtual environment {} has no {} (is it made for another Python than {version}?)",
                venv.display(),
                lib.display()
            );
            if matches!(config.venv, Venv::Path(_)) {
                return Err(Error::InitFailed(message));
            }
            tracing::warn!("{message}; ignoring VIRTUAL_ENV");
        }
    }
    Ok((code.len() > plain).then_some(code))
}

/// A Python expression for a path: a string literal, or for a path that is not UTF-8 its
/// bytes decoded as Python decodes file names (UTF-8 with `surrogateescape`), so the
/// bytes survive.
fn py_str(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut out = String::from("'");
            for c in text.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\'' => out.push_str("\\'"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('\'');
            out
        }
        Err(_) => {
            let escaped: String = bytes.iter().map(|b| format!("\\x{b:02x}")).collect();
            format!("b'{escaped}'.decode('utf-8', 'surrogateescape')")
        }
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        // No interpreter may outlive the runtime: a spare never taken ends first.
        self.end_spare();
        let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
        *state = State::Finalized;
        if self.prepare_extensions {
            prepare::stop(&self.version);
        }
        let taken = self.shutdown.lock().ok().and_then(|mut s| s.take());
        if let Some((stop, thread)) = taken {
            let finalize = !hazards::skips_main_finalization(&self.version);
            let _ = stop.send(MainMsg::Stop { finalize });
            let _ = thread.join();
        }
        let (ended, changed) = &ENDED;
        *ended.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::py_str;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    #[test]
    fn paths_become_python_expressions_that_keep_their_bytes() {
        assert_eq!(py_str(Path::new("/opt/it's")), r"'/opt/it\'s'");
        assert_eq!(py_str(Path::new("/opt/é")), "'/opt/é'");
        assert_eq!(
            py_str(Path::new(OsStr::from_bytes(b"/a\xff"))),
            r"b'\x2f\x61\xff'.decode('utf-8', 'surrogateescape')"
        );
    }
}
