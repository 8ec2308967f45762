//! Guard rails on the state every interpreter of a process shares — the current
//! directory, the environment, signal handlers, forks, child processes, files written
//! outside given directories, network connections — through CPython's audit hooks
//! (PEP 578).
//!
//! A Python audit hook (`sys.addaudithook`) belongs to the interpreter that adds it:
//! CPython keeps it in that interpreter's own list (`interp->audit_hooks`, 3.12 and 3.13),
//! so each interpreter gets the rules of its own [`Guards`]. The few actions CPython
//! raises no audit event for before it acts (setting a signal handler or a process-wide
//! timer, `os.fork`) are wrapped in the interpreter's own module objects instead.
//!
//! **A guard rail against accidents, not a security boundary**: native code (an
//! extension module, `ctypes`) calls the C functions directly and passes it, and Python
//! code that looks for a way around it will find one. It keeps a plugin's
//! `os.chdir(...)` or `os.environ[...] = ...` from silently changing every other
//! interpreter of the process.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::raw::Python;
use crate::value::Value;

/// The Python code that installs the guard rails in an interpreter.
pub(crate) const HOOK: &str = include_str!("hook.py");

/// A kind of change to process-wide state that [`Guards`] can allow, count or refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GuardRule {
    /// Changing the current directory: `os.chdir`, `os.fchdir` (audit event `os.chdir`).
    Chdir,
    /// Writing the environment: `os.putenv`, `os.unsetenv`, and so `os.environ[k] = v`,
    /// `del os.environ[k]` (audit events `os.putenv`, `os.unsetenv`). Reading is free.
    Env,
    /// Signal handlers and process-wide timers: `signal.signal`, `set_wakeup_fd`,
    /// `siginterrupt`, `alarm`, `setitimer`, `raise_signal` (wrapped: CPython raises no
    /// audit event for them), and signals sent to this process with `os.kill`,
    /// `os.killpg` or `signal.pthread_kill`. CPython itself already refuses
    /// `signal.signal` outside the main interpreter (`ValueError`); the timers and
    /// signals it lets through.
    Signals,
    /// `os.fork`, `os.forkpty` (wrapped: CPython refuses them in isolated interpreters
    /// with `RuntimeError` before its audit event; the rule names the cause and counts).
    Fork,
    /// Starting a program: `subprocess.Popen` (so `subprocess.run` and friends),
    /// `os.system`, `os.posix_spawn`, `os.exec*`.
    Subprocess,
    /// Writing files outside the directories given to [`Guards::allow_write`]: `open`
    /// for writing (the flags decide: `O_WRONLY`, `O_RDWR`, `O_APPEND`, `O_CREAT`,
    /// `O_TRUNC`; reads are free), `os.remove`, `os.rmdir`, `os.mkdir`, `os.rename`,
    /// `os.truncate`, `os.symlink`, `os.link`, `shutil.rmtree`. Paths are resolved
    /// (symbolic links followed) before the check; a write through a bare file
    /// descriptor is not seen. Python's bytecode cache (a `__pycache__` directory,
    /// written by imports) is exempt.
    Write,
    /// Network: `socket.connect` (and `connect_ex`), `socket.sendto`.
    Connect,
}

impl GuardRule {
    /// Every rule, in a fixed order.
    pub const ALL: [GuardRule; 7] = [
        GuardRule::Chdir,
        GuardRule::Env,
        GuardRule::Signals,
        GuardRule::Fork,
        GuardRule::Subprocess,
        GuardRule::Write,
        GuardRule::Connect,
    ];

    /// The rules that keep one interpreter from changing state the others depend on:
    /// chdir, env, signals, fork, subprocess (not write or connect).
    pub const PROCESS_STATE: [GuardRule; 5] = [
        GuardRule::Chdir,
        GuardRule::Env,
        GuardRule::Signals,
        GuardRule::Fork,
        GuardRule::Subprocess,
    ];

    /// The rule's name: `chdir`, `env`, `signals`, `fork`, `subprocess`, `write`,
    /// `connect`.
    pub fn name(self) -> &'static str {
        match self {
            GuardRule::Chdir => "chdir",
            GuardRule::Env => "env",
            GuardRule::Signals => "signals",
            GuardRule::Fork => "fork",
            GuardRule::Subprocess => "subprocess",
            GuardRule::Write => "write",
            GuardRule::Connect => "connect",
        }
    }

    /// The rule's position in [`ALL`](Self::ALL).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The rule at `index` in [`ALL`](Self::ALL).
    pub(crate) fn from_index(index: usize) -> Option<GuardRule> {
        GuardRule::ALL.get(index).copied()
    }
}

impl std::fmt::Display for GuardRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GuardRule {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        GuardRule::ALL
            .into_iter()
            .find(|rule| rule.name() == name)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "unknown guard rule {name:?}: expected one of {}",
                    rule_names()
                ))
            })
    }
}

fn rule_names() -> String {
    let names: Vec<&str> = GuardRule::ALL.iter().map(|r| r.name()).collect();
    names.join(", ")
}

/// What an interpreter does when its code attempts what a [`GuardRule`] covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GuardAction {
    /// Let it happen, unseen (the default).
    #[default]
    Allow,
    /// Let it happen and count it in the interpreter's [`Stats`](crate::Stats).
    Count,
    /// Raise `PermissionError` naming the rule and how to allow it, before anything
    /// changes; counted as a refusal.
    Refuse,
}

impl FromStr for GuardAction {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "allow" => Ok(GuardAction::Allow),
            "count" => Ok(GuardAction::Count),
            "refuse" => Ok(GuardAction::Refuse),
            other => Err(Error::InvalidConfig(format!(
                "unknown guard action {other:?}: expected allow, count or refuse"
            ))),
        }
    }
}

/// Per interpreter, what to do about each [`GuardRule`]: allow (the default), count or
/// refuse. Set on [`InterpreterConfig::guards`](crate::InterpreterConfig::guards).
///
/// ```
/// use subinterp::{GuardAction, GuardRule, Guards};
/// let mut guards = Guards::process_state(); // refuse chdir, env, signals, fork, subprocess
/// guards.count(GuardRule::Connect).allow_write("/tmp/out");
/// assert_eq!(guards.action(GuardRule::Env), GuardAction::Refuse);
/// assert_eq!(guards.action(GuardRule::Write), GuardAction::Refuse);
/// let parsed: Guards = "chdir,env=count".parse()?;
/// assert_eq!(parsed.action(GuardRule::Env), GuardAction::Count);
/// # Ok::<(), subinterp::Error>(())
/// ```
///
/// A guard rail against accidents, not a security boundary: see the [module
/// docs](crate::audit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guards {
    actions: [GuardAction; 7],
    write_dirs: Vec<PathBuf>,
}

impl Guards {
    /// Every rule allowed: no hook is installed.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`GuardRule::PROCESS_STATE`] refused: chdir, env, signals, fork, subprocess.
    pub fn process_state() -> Self {
        let mut guards = Self::new();
        for rule in GuardRule::PROCESS_STATE {
            guards.refuse(rule);
        }
        guards
    }

    /// Sets what to do about `rule`.
    pub fn set(&mut self, rule: GuardRule, action: GuardAction) -> &mut Self {
        self.actions[rule.index()] = action;
        self
    }

    /// Refuses `rule` with `PermissionError`.
    pub fn refuse(&mut self, rule: GuardRule) -> &mut Self {
        self.set(rule, GuardAction::Refuse)
    }

    /// Counts `rule` and lets it happen.
    pub fn count(&mut self, rule: GuardRule) -> &mut Self {
        self.set(rule, GuardAction::Count)
    }

    /// Allows `rule`, unseen.
    pub fn allow(&mut self, rule: GuardRule) -> &mut Self {
        self.set(rule, GuardAction::Allow)
    }

    /// What is done about `rule`.
    pub fn action(&self, rule: GuardRule) -> GuardAction {
        self.actions[rule.index()]
    }

    /// Lets the interpreter write files under `dir` (and its subdirectories), and turns
    /// on [`GuardRule::Write`] (refusing writes anywhere else) unless it is counted.
    /// `dir` is resolved when the interpreter starts (symbolic links followed, relative
    /// to the current directory then).
    pub fn allow_write(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.write_dirs.push(dir.into());
        if self.action(GuardRule::Write) == GuardAction::Allow {
            self.refuse(GuardRule::Write);
        }
        self
    }

    /// The directories given to [`allow_write`](Self::allow_write).
    pub fn write_dirs(&self) -> &[PathBuf] {
        &self.write_dirs
    }

    /// True if every rule is allowed (no hook is installed).
    pub fn is_empty(&self) -> bool {
        self.actions.iter().all(|a| *a == GuardAction::Allow)
    }

    /// The actions as numbers, in the order of [`GuardRule::ALL`], for the hook.
    pub(crate) fn action_codes(&self) -> Vec<i64> {
        self.actions
            .iter()
            .map(|a| match a {
                GuardAction::Allow => 0,
                GuardAction::Count => 1,
                GuardAction::Refuse => 2,
            })
            .collect()
    }

    /// The write directories resolved as the hook compares them.
    pub(crate) fn resolved_write_dirs(&self) -> Vec<PathBuf> {
        self.write_dirs.iter().map(|d| resolve(d)).collect()
    }

    /// Applies a list like `chdir,env=count,write=refuse` (or `all`, `process`): each
    /// item a rule name, refused, or `rule=allow|count|refuse`; `all` stands for every
    /// rule and `process` for [`GuardRule::PROCESS_STATE`].
    pub fn apply(&mut self, spec: &str) -> Result<&mut Self> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (names, action) = match item.split_once('=') {
                Some((name, action)) => (name.trim(), action.trim().parse()?),
                None => (item, GuardAction::Refuse),
            };
            let rules: Vec<GuardRule> = match names {
                "all" => GuardRule::ALL.to_vec(),
                "process" => GuardRule::PROCESS_STATE.to_vec(),
                name => vec![name.parse()?],
            };
            for rule in rules {
                self.set(rule, action);
            }
        }
        Ok(self)
    }
}

impl FromStr for Guards {
    type Err = Error;

    /// See [`Guards::apply`].
    fn from_str(spec: &str) -> Result<Self> {
        let mut guards = Guards::new();
        guards.apply(spec)?;
        Ok(guards)
    }
}

/// Installs `guards` in the interpreter `py` runs (nothing if every rule is allowed).
pub(crate) fn install(py: Python<'_>, guards: &Guards) -> Result<()> {
    if guards.is_empty() {
        return Ok(());
    }
    let scope = py.dict()?;
    let actions = Value::List(guards.action_codes().into_iter().map(Value::Int).collect());
    scope.set_item(&py.str("actions")?, &py.to_object(&actions)?)?;
    let dirs = py.to_object(&Value::List(Vec::new()))?;
    for dir in guards.resolved_write_dirs() {
        dirs.call_method("append", &[&py.path(&dir)?])?;
    }
    scope.set_item(&py.str("write_dirs")?, &dirs)?;
    py.run(HOOK, "<subinterp guards>", &scope)
}

fn resolve(dir: &Path) -> PathBuf {
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir().unwrap_or_default().join(dir)
    };
    std::fs::canonicalize(&absolute).unwrap_or(absolute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let guards: Guards = "chdir, env=count,all=allow,signals".parse().unwrap();
        assert_eq!(guards.action(GuardRule::Chdir), GuardAction::Allow);
        assert_eq!(guards.action(GuardRule::Signals), GuardAction::Refuse);
        let process: Guards = "process".parse().unwrap();
        assert_eq!(process, Guards::process_state());
        let err = "chdr".parse::<Guards>().unwrap_err().to_string();
        assert!(err.contains("unknown guard rule \"chdr\""), "{err}");
        let err = "env=maybe".parse::<Guards>().unwrap_err().to_string();
        assert!(err.contains("allow, count or refuse"), "{err}");
        assert!(Guards::new().is_empty());
    }

    #[test]
    fn allow_write_turns_the_rule_on_unless_counted() {
        let mut guards = Guards::new();
        guards.allow_write("/tmp");
        assert_eq!(guards.action(GuardRule::Write), GuardAction::Refuse);
        let mut counted = Guards::new();
        counted.count(GuardRule::Write).allow_write("/tmp");
        assert_eq!(counted.action(GuardRule::Write), GuardAction::Count);
    }

    #[test]
    fn rule_indices_match_the_hook() {
        for (i, rule) in GuardRule::ALL.iter().enumerate() {
            assert_eq!(rule.index(), i);
            assert_eq!(GuardRule::from_index(i), Some(*rule));
            assert!(HOOK.contains(&format!("\"{}\"", rule.name())), "{rule}");
        }
    }
}
