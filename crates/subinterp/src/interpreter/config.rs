//! Interpreter configuration: presets and a builder over every field of
//! `PyInterpreterConfig`, validated when an interpreter is built.

use std::any::Any;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::Guards;
use crate::error::{Error, Result};
use crate::raw::lifecycle::RawConfig;

/// Which GIL an interpreter runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gil {
    /// Its own GIL: runs Python bytecode in parallel with every other interpreter.
    Own,
    /// The main interpreter's GIL, shared with every other `Shared` interpreter.
    Shared,
}

/// How to build an [`Interpreter`](crate::Interpreter).
///
/// Start from a preset — [`isolated`](Self::isolated) (the default) or
/// [`legacy`](Self::legacy) — and adjust fields with the setters, which chain:
///
/// ```
/// use subinterp::{Gil, InterpreterConfig};
/// let mut config = InterpreterConfig::isolated();
/// config.allow_threads(false).capture_output(true);
/// assert_eq!(config.gil(), Gil::Own);
/// ```
///
/// Combinations CPython refuses are reported by [`validate`](Self::validate) (called
/// when an interpreter is built), before CPython sees them:
/// - an own GIL needs its own object allocator (`use_main_obmalloc(false)`);
/// - its own allocator needs single-phase-init extensions refused
///   (`check_multi_interp_extensions(true)`), because such modules keep objects in
///   process-wide storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterpreterConfig {
    use_main_obmalloc: bool,
    allow_fork: bool,
    allow_exec: bool,
    allow_threads: bool,
    allow_daemon_threads: bool,
    check_multi_interp_extensions: bool,
    gil: Gil,
    capture_output: bool,
    paths: Vec<PathBuf>,
    shutdown_grace: Duration,
    host_data: Option<HostData>,
    guards: Guards,
    memory_limit: Option<u64>,
    soft_limit: Option<SoftLimit>,
}

/// What a host's soft memory limit callback is told
/// ([`InterpreterConfig::memory_soft_limit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryPressure {
    /// The interpreter that passed its soft limit.
    pub interpreter: i64,
    /// Bytes it holds now.
    pub in_use: u64,
    /// Its soft limit.
    pub soft_limit: u64,
    /// Its hard limit, if it has one.
    pub limit: Option<u64>,
}

/// What the host decides when an interpreter passes its soft memory limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SoftLimitAction {
    /// Let the code go on (a hard limit still applies).
    Continue,
    /// Raise `MemoryError` in the code running in the interpreter, asynchronously, as
    /// past a hard limit.
    RaiseMemoryError,
    /// Cancel the code running in the interpreter (`KeyboardInterrupt`, as
    /// [`InterruptReason::Cancelled`](crate::InterruptReason::Cancelled)).
    Cancel,
    /// For a pool worker: let its task finish, then replace it by a fresh interpreter
    /// (a lone interpreter goes on, as with `Continue`).
    ReplaceWorker,
}

/// The host's callback for an interpreter past its soft limit.
pub(crate) type SoftLimitCallback = dyn Fn(&MemoryPressure) -> SoftLimitAction + Send + Sync;

/// A soft limit and its callback (compared by identity).
#[derive(Clone)]
pub(crate) struct SoftLimit {
    pub(crate) bytes: u64,
    pub(crate) callback: Arc<SoftLimitCallback>,
}

impl PartialEq for SoftLimit {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes && Arc::ptr_eq(&self.callback, &other.callback)
    }
}

impl Eq for SoftLimit {}

impl std::fmt::Debug for SoftLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftLimit")
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A value of the host's choosing attached to an interpreter (compared by identity).
#[derive(Clone)]
pub(crate) struct HostData(pub(crate) Arc<dyn Any + Send + Sync>);

impl PartialEq for HostData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for HostData {}

impl std::fmt::Debug for HostData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostData(..)")
    }
}

/// How long ending an interpreter waits for the threads its code started, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

impl Default for InterpreterConfig {
    fn default() -> Self {
        Self::isolated()
    }
}

impl InterpreterConfig {
    /// Own GIL, own allocator, single-phase extensions refused, no `fork`, no `exec`,
    /// no daemon threads; ordinary threads allowed. Runs in parallel with the others.
    pub fn isolated() -> Self {
        InterpreterConfig {
            use_main_obmalloc: false,
            allow_fork: false,
            allow_exec: false,
            allow_threads: true,
            allow_daemon_threads: false,
            check_multi_interp_extensions: true,
            gil: Gil::Own,
            capture_output: false,
            paths: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            host_data: None,
            guards: Guards::new(),
            memory_limit: None,
            soft_limit: None,
        }
    }

    /// What `Py_NewInterpreter` gives: the main GIL and allocator are shared, every
    /// extension module loads (single-phase ones share their module dict's objects), and
    /// `exec` and daemon threads are allowed. Runs one at a time with the others.
    ///
    /// Unlike `Py_NewInterpreter`, `os.fork()` is refused (see
    /// [`allow_fork`](Self::allow_fork)).
    pub fn legacy() -> Self {
        InterpreterConfig {
            use_main_obmalloc: true,
            allow_fork: false,
            allow_exec: true,
            allow_threads: true,
            allow_daemon_threads: true,
            check_multi_interp_extensions: false,
            gil: Gil::Shared,
            capture_output: false,
            paths: Vec::new(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            host_data: None,
            guards: Guards::new(),
            memory_limit: None,
            soft_limit: None,
        }
    }

    /// The preset called `name`: `"isolated"` or `"legacy"`.
    pub fn preset(name: &str) -> Result<Self> {
        name.parse()
    }

    /// Share the main interpreter's object allocator (required by a shared GIL with
    /// single-phase extensions; refused with an own GIL).
    pub fn use_main_obmalloc(&mut self, yes: bool) -> &mut Self {
        self.use_main_obmalloc = yes;
        self
    }

    /// Allow `os.fork()` in this interpreter: refused by [`validate`](Self::validate).
    ///
    /// CPython 3.12 and 3.13 cannot run a child process forked from a subinterpreter: the
    /// child aborts at once (`Fatal Python error: _PyInterpreterState_DeleteExceptMain:
    /// not main interpreter`). With fork off, `os.fork()` and `os.forkpty()` raise
    /// `RuntimeError`, while `subprocess` (and `multiprocessing`'s `spawn` and
    /// `forkserver` start methods), which fork and exec in C, keep working.
    pub fn allow_fork(&mut self, yes: bool) -> &mut Self {
        self.allow_fork = yes;
        self
    }

    /// Allow `os.execv()` and friends in this interpreter.
    pub fn allow_exec(&mut self, yes: bool) -> &mut Self {
        self.allow_exec = yes;
        self
    }

    /// Allow the `threading` module to start threads.
    pub fn allow_threads(&mut self, yes: bool) -> &mut Self {
        self.allow_threads = yes;
        self
    }

    /// Allow daemon threads (which would outlive the interpreter's end).
    pub fn allow_daemon_threads(&mut self, yes: bool) -> &mut Self {
        self.allow_daemon_threads = yes;
        self
    }

    /// Refuse to import extension modules that do not support several interpreters
    /// (single-phase init).
    pub fn check_multi_interp_extensions(&mut self, yes: bool) -> &mut Self {
        self.check_multi_interp_extensions = yes;
        self
    }

    /// Own or shared GIL.
    pub fn set_gil(&mut self, gil: Gil) -> &mut Self {
        self.gil = gil;
        self
    }

    /// Capture `sys.stdout` and `sys.stderr` in memory, to be collected with
    /// [`Interpreter::take_output`](crate::Interpreter::take_output), instead of writing
    /// to the process's streams.
    pub fn capture_output(&mut self, yes: bool) -> &mut Self {
        self.capture_output = yes;
        self
    }

    /// Prepend a directory to this interpreter's `sys.path` (in the order added).
    pub fn add_path(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.paths.push(dir.into());
        self
    }

    /// How long ending the interpreter ([`Interpreter::close`](crate::Interpreter::close),
    /// or dropping it) waits for the non-daemon Python threads its code started, as
    /// `python` waits for them at exit (default: [`DEFAULT_SHUTDOWN_GRACE`], 5 s;
    /// `Duration::MAX` waits without limit).
    ///
    /// Threads still running after that keep running: CPython cannot end an interpreter
    /// under them. The interpreter is then left in memory, a warning names it and its
    /// threads, the close returns, and the process can exit; the Python runtime is no
    /// longer finalised when the last handle goes.
    pub fn shutdown_grace(&mut self, grace: Duration) -> &mut Self {
        self.shutdown_grace = grace;
        self
    }

    /// The grace period for Python threads when the interpreter ends.
    pub fn shutdown_grace_period(&self) -> Duration {
        self.shutdown_grace
    }

    /// At most `bytes` held at once by CPython for the interpreter's threads: the
    /// allocator arenas of its small objects and its larger blocks
    /// ([`Interpreter::memory_in_use`](crate::Interpreter::memory_in_use)). Past it, the
    /// interpreter's code gets a `MemoryError` it can catch, and the host and the other
    /// interpreters go on: a block of 1 MiB or more is refused at the limit, smaller
    /// blocks are granted and the code gets `MemoryError` asynchronously within
    /// milliseconds, and past the limit plus a quarter (at least 16 MiB) every growth is
    /// refused (why: see the README's "Limits", which also says what is counted).
    /// Needs memory accounting
    /// ([`RuntimeConfig::memory_accounting`](crate::RuntimeConfig::memory_accounting)):
    /// building the interpreter fails with [`Error::InvalidConfig`] without it. 0 is
    /// refused by [`validate`](Self::validate). Sizes written by people:
    /// [`parse_size`](crate::parse_size).
    pub fn memory_limit(&mut self, bytes: u64) -> &mut Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// The memory limit, if any ([`memory_limit`](Self::memory_limit)).
    pub fn memory_limit_bytes(&self) -> Option<u64> {
        self.memory_limit
    }

    /// A soft memory limit: when the interpreter first holds more than `bytes`, the
    /// host's `callback` is told (on a thread of the library's, never inside an
    /// allocation nor with a GIL held) and decides what happens: go on, raise
    /// `MemoryError`, cancel the running code, or replace the pool worker after its task
    /// (compare V8's near-heap-limit callback). Told again only after the interpreter
    /// fell back under it. Usually below [`memory_limit`](Self::memory_limit), which
    /// still applies. Needs memory accounting, as a hard limit does. A callback that
    /// panics counts as `Continue`.
    ///
    /// ```no_run
    /// use subinterp::{InterpreterConfig, SoftLimitAction};
    /// let mut config = InterpreterConfig::isolated();
    /// config.memory_limit(512 << 20).memory_soft_limit(384 << 20, |pressure| {
    ///     eprintln!("interpreter {} holds {} bytes", pressure.interpreter, pressure.in_use);
    ///     SoftLimitAction::ReplaceWorker
    /// });
    /// ```
    pub fn memory_soft_limit(
        &mut self,
        bytes: u64,
        callback: impl Fn(&MemoryPressure) -> SoftLimitAction + Send + Sync + 'static,
    ) -> &mut Self {
        self.soft_limit = Some(SoftLimit {
            bytes,
            callback: Arc::new(callback),
        });
        self
    }

    /// The soft limit and its callback, if any.
    pub(crate) fn soft_limit(&self) -> Option<&SoftLimit> {
        self.soft_limit.as_ref()
    }

    /// The GIL setting.
    pub fn gil(&self) -> Gil {
        self.gil
    }

    /// Whether output is captured.
    pub fn captures_output(&self) -> bool {
        self.capture_output
    }

    /// The directories prepended to `sys.path`.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Attaches `data` to the interpreter: the host functions it calls get it from
    /// [`Caller::data`](crate::Caller::data) — per tenant, per plugin. Interpreters built
    /// from clones of this configuration share the value.
    pub fn host_data<T: Any + Send + Sync>(&mut self, data: T) -> &mut Self {
        self.host_data = Some(HostData(Arc::new(data)));
        self
    }

    /// The guard rails of the interpreter on process-wide state (by default none): each
    /// [`GuardRule`](crate::GuardRule) allowed, counted in its
    /// [`stats`](crate::Interpreter::stats), or refused with `PermissionError`. A guard
    /// rail against accidents, not a security boundary (see [`crate::audit`]).
    ///
    /// ```
    /// use subinterp::{Guards, InterpreterConfig};
    /// let mut config = InterpreterConfig::isolated();
    /// config.guards(Guards::process_state());
    /// ```
    pub fn guards(&mut self, guards: Guards) -> &mut Self {
        self.guards = guards;
        self
    }

    /// The guard rails.
    pub fn guard_rails(&self) -> &Guards {
        &self.guards
    }

    /// The host data to attach, if any.
    pub(crate) fn host_data_value(&self) -> Option<Arc<dyn Any + Send + Sync>> {
        self.host_data.as_ref().map(|d| Arc::clone(&d.0))
    }

    /// Checks the combination; the error says which setting to change.
    pub fn validate(&self) -> Result<()> {
        if self.gil == Gil::Own && self.use_main_obmalloc {
            return Err(Error::InvalidConfig(
                "an interpreter with its own GIL needs its own allocator: \
                 set use_main_obmalloc(false) or use a shared GIL"
                    .into(),
            ));
        }
        if !self.use_main_obmalloc && !self.check_multi_interp_extensions {
            return Err(Error::InvalidConfig(
                "an interpreter with its own allocator must refuse single-phase-init \
                 extension modules: set check_multi_interp_extensions(true) or \
                 use_main_obmalloc(true)"
                    .into(),
            ));
        }
        if self.allow_fork {
            return Err(Error::InvalidConfig(
                "allow_fork(true): a child process forked from a subinterpreter cannot run \
                 (CPython aborts it with \"_PyInterpreterState_DeleteExceptMain: not main \
                 interpreter\"); use subprocess, which works without it"
                    .into(),
            ));
        }
        if self.soft_limit.as_ref().is_some_and(|soft| soft.bytes == 0) {
            return Err(Error::InvalidConfig(
                "a soft memory limit of 0 bytes: give a positive size".into(),
            ));
        }
        if self.memory_limit == Some(0) {
            return Err(Error::InvalidConfig(
                "memory_limit(0): a memory limit must be at least one byte".into(),
            ));
        }
        if self.allow_daemon_threads && !self.allow_threads {
            return Err(Error::InvalidConfig(
                "allow_daemon_threads(true) needs allow_threads(true)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn to_raw(&self) -> Result<RawConfig> {
        self.validate()?;
        Ok(RawConfig {
            use_main_obmalloc: self.use_main_obmalloc,
            allow_fork: self.allow_fork,
            allow_exec: self.allow_exec,
            allow_threads: self.allow_threads,
            allow_daemon_threads: self.allow_daemon_threads,
            check_multi_interp_extensions: self.check_multi_interp_extensions,
            own_gil: self.gil == Gil::Own,
        })
    }
}

impl FromStr for InterpreterConfig {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "isolated" => Ok(Self::isolated()),
            "legacy" => Ok(Self::legacy()),
            other => Err(Error::InvalidConfig(format!(
                "unknown preset {other:?}: expected \"isolated\" or \"legacy\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        InterpreterConfig::isolated().validate().unwrap();
        InterpreterConfig::legacy().validate().unwrap();
        assert_eq!(InterpreterConfig::default(), InterpreterConfig::isolated());
    }

    #[test]
    fn own_gil_with_main_allocator_is_refused() {
        let mut c = InterpreterConfig::isolated();
        c.use_main_obmalloc(true);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("own GIL needs its own allocator"), "{err}");
    }

    #[test]
    fn own_allocator_with_single_phase_extensions_is_refused() {
        let mut c = InterpreterConfig::legacy();
        c.use_main_obmalloc(false);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("check_multi_interp_extensions(true)"), "{err}");
    }

    #[test]
    fn fork_is_refused() {
        assert!(!InterpreterConfig::legacy().allow_fork);
        let mut c = InterpreterConfig::legacy();
        c.allow_fork(true);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("cannot run"), "{err}");
    }

    #[test]
    fn daemon_threads_need_threads() {
        let mut c = InterpreterConfig::legacy();
        c.allow_threads(false);
        assert!(c.validate().is_err());
        c.allow_daemon_threads(false);
        c.validate().unwrap();
    }

    #[test]
    fn preset_names() {
        assert_eq!(
            InterpreterConfig::preset("legacy").unwrap(),
            InterpreterConfig::legacy()
        );
        let err = InterpreterConfig::preset("sandbox")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown preset \"sandbox\""), "{err}");
    }
}
