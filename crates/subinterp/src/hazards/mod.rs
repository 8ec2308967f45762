//! CPython's own subinterpreter bugs in the versions people run, and what the host does
//! about them.
//!
//! Some CPython releases crash or leak when isolated interpreters are used the way a
//! host uses them: several alive at once on their own threads, each importing modules,
//! then all ended. The host cannot upgrade the user's Python, so it knows these hazards
//! by version ([`for_version`], [`Runtime::hazards`](crate::Runtime::hazards)) and works
//! around the ones it can.
//!
//! # Preparing extension modules in the main interpreter
//!
//! The crashes of [`DATETIME_STATIC_TYPES`] and [`SINGLE_PHASE_STATE`] have one cause in
//! common: an extension module's initialisation leaves objects in C globals or in
//! CPython's runtime-wide caches, and when the first interpreter to run it is a
//! subinterpreter, those objects belong to that interpreter and are freed when it ends,
//! while the globals still point at them. The next interpreter to end frees them again
//! ("double free or corruption", "free(): invalid pointer", SIGSEGV).
//!
//! - `_datetime` on 3.13 is a multi-phase module whose types are static C structures
//!   (`Modules/_datetimemodule.c`). The first interpreter that imports it readies them
//!   (`_PyStaticType_InitForExtension`), with their dicts and cached objects allocated
//!   by that interpreter, and tears them down when it ends. 3.14 readies them while the
//!   main interpreter starts (python/cpython#136421), which is what preparing does.
//! - A single-phase module (`PyInit_` returns the module itself) runs its whole
//!   initialisation in whichever interpreter loads it first (`Python/import.c`,
//!   `_PyImport_LoadDynamicModuleWithSpec`); only then does an isolated interpreter
//!   refuse it, too late. CPython keeps a copy of its dict for later imports in the
//!   runtime-wide extension cache, and the objects the module keeps in C globals came
//!   from that first interpreter. Once the main interpreter has loaded it, the cache
//!   holds the main interpreter's objects: `import_find_extension` finds the module
//!   there, an isolated interpreter refuses it before anything runs, and a legacy one
//!   gets a copy of the main interpreter's dict, both of which are safe.
//!
//! Measured with plain CPython (4 isolated interpreters on 4 threads, each importing the
//! module, then ended): 5 of 5 runs crashed without, 0 of 5 with the module imported in
//! the main interpreter first, for `_datetime` on 3.13.0, `msgpack` on 3.13.0 and
//! `_decimal` on 3.12.1; `psutil` in two legacy interpreters on 3.12.1 crashed 2 of
//! 4 runs without, 0 of 6 with. Importing the module in the main interpreter *after* the
//! subinterpreters have does not help (5 of 5 still crash): the damage is done by the
//! first initialisation. `msgpack` and `PyYAML` crash through `_datetime`, which they
//! import: their own compiled modules are multi-phase Cython modules that declare no
//! support for own-GIL interpreters, which refuse them before any of their code runs.
//!
//! So, on the versions these hazards affect, every subinterpreter the library creates
//! wraps CPython's extension module loader: before an interpreter loads an extension
//! module for the first time in the process, the runtime imports that module in the main
//! interpreter (with the interpreter's `sys.path` entries appended to the main
//! interpreter's), then the interpreter loads it as usual. Each module is prepared once
//! per process; later loads cost one lookup in a set. The runtime logs each preparation
//! (`tracing`, target `subinterp::hazards`), and warns, naming the module, the version
//! and the CPython issue, when the main interpreter could not import it.
//! [`RuntimeConfig::prepare_extensions`](crate::RuntimeConfig::prepare_extensions)
//! turns this on or off whatever the version.
//!
//! # Samplers of every thread
//!
//! `sys._current_frames()` and `sys._current_exceptions()` crash the process while
//! other interpreters run Python, on every version known ([`CURRENT_FRAMES`]); the
//! runtime replaces them in each interpreter it sets up and in the main interpreter by
//! functions that report the calling interpreter's threads only.

pub(crate) mod prepare;

use std::fmt;

/// One known CPython bug that affects hosts of subinterpreters.
#[derive(Debug)]
#[non_exhaustive]
pub struct Hazard {
    /// A short stable name, e.g. `"datetime-static-types"`.
    pub id: &'static str,
    /// What goes wrong, in a sentence.
    pub summary: &'static str,
    /// The python/cpython issues that describe it.
    pub cpython_issues: &'static [u32],
    /// The CPython minor versions (`(3, 13)`) it affects, every patch release of them
    /// unless [`fixed_in`](Hazard::fixed_in) names one.
    pub affects: &'static [(u32, u32)],
    /// The first release known to be fixed, if any.
    pub fixed_in: Option<&'static str>,
    /// Extension modules known to trigger it (the standard library's and third-party
    /// ones), each with the minor versions on which it does (empty: every version the
    /// hazard affects).
    pub modules: &'static [(&'static str, &'static [(u32, u32)])],
    /// What the host does about it.
    pub workaround: Workaround,
}

/// What the host does about a [`Hazard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Workaround {
    /// Every extension module is imported in the main interpreter before a
    /// subinterpreter loads it (see the module docs).
    PrepareInMain,
    /// The main interpreter is not finalised when the runtime ends: every
    /// subinterpreter is ended as always, then the main interpreter's buffered output
    /// is flushed and its memory is left to the process's exit.
    SkipMainFinalization,
    /// `sys._current_frames()` and `sys._current_exceptions()` of every interpreter the
    /// runtime makes, and of the main interpreter once the runtime has started, report
    /// the threads of the calling interpreter only (see [`CURRENT_FRAMES`]).
    CurrentInterpreterThreads,
    /// Nothing the host can do; documented with figures.
    None,
}

/// `_datetime` (3.13) keeps its types in static C memory, set up by the first
/// interpreter that imports it and torn down when that interpreter ends.
pub const DATETIME_STATIC_TYPES: Hazard = Hazard {
    id: "datetime-static-types",
    summary: "_datetime's static types are set up by the first interpreter that imports it \
              and freed when that interpreter ends while others still use them: isolated \
              interpreters that imported datetime crash the process when they end",
    cpython_issues: &[136421, 136423],
    affects: &[(3, 13)],
    fixed_in: Some("3.14.0"),
    modules: &[("_datetime", &[]), ("_zoneinfo", &[])],
    workaround: Workaround::PrepareInMain,
};

/// A single-phase extension module first loaded by a subinterpreter keeps that
/// interpreter's objects after it ends.
pub const SINGLE_PHASE_STATE: Hazard = Hazard {
    id: "single-phase-state",
    summary: "a single-phase-init extension module first loaded by a subinterpreter runs its \
              initialisation there (an isolated interpreter refuses it only afterwards); \
              what it keeps in C globals and in CPython's extension cache is freed when that \
              interpreter ends and again by the next: the process aborts when interpreters \
              end, even when the importing code fell back to pure Python",
    cpython_issues: &[116510, 119450],
    affects: &[(3, 12), (3, 13)],
    fixed_in: None,
    // On 3.13 `_decimal` and `_datetime` are multi-phase modules.
    modules: &[
        ("_decimal", &[(3, 12)]),
        ("_datetime", &[(3, 12)]),
        ("psutil._psutil_linux", &[]),
    ],
    workaround: Workaround::PrepareInMain,
};

/// Keyword-argument tables of extension functions are allocated by whichever
/// interpreter calls the function first.
pub const ARG_PARSER_KWTUPLE: Hazard = Hazard {
    id: "arg-parser-kwtuple",
    summary: "the tuple of keyword names that Argument Clinic caches in a static \
              _PyArg_Parser of an extension function is allocated by the first interpreter \
              to call the function with keywords; freed with it, it is freed again when \
              the main interpreter is finalised (hashlib's openssl_md5(usedforsecurity=False), \
              so pytest: free(): invalid pointer in _PyTuple_Fini at exit)",
    cpython_issues: &[119213],
    affects: &[(3, 12)],
    fixed_in: Some("3.12.4"),
    modules: &[("_hashlib", &[])],
    workaround: Workaround::SkipMainFinalization,
};

/// Ending an isolated interpreter does not give back all of its memory.
pub const INTERPRETER_MEMORY: Hazard = Hazard {
    id: "interpreter-memory",
    summary: "CPython keeps the memory of every isolated interpreter created and ended: \
              about 1.7 MB for an empty one and 2.5 MB after importing json and re, on \
              3.12.1 and 3.13.0 alike (legacy interpreters: 0.15-0.26 MB), because blocks \
              it leaks keep the interpreter's whole allocator alive (3.13 frees the arenas \
              only when no block is left, python/cpython#113055; 3.12 never, #110411): \
              hosts that churn interpreters grow without bound; a Pool reuses its workers \
              and recycles them only as configured",
    cpython_issues: &[110411, 113055, 140067],
    affects: &[(3, 12), (3, 13)],
    fixed_in: None,
    modules: &[],
    workaround: Workaround::None,
};

/// `sys._current_frames()` and `sys._current_exceptions()` make objects for the threads
/// of every interpreter, with the caller's allocator.
///
/// CPython's implementation (`_PyThread_CurrentFrames` and `_PyThread_CurrentExceptions`
/// in `Python/pystate.c`) walks the thread states of *all* interpreters and makes a frame
/// object for each thread running Python, including threads that run at that very moment
/// under another interpreter's GIL: the frame object comes from the caller's allocator, is
/// linked into the other thread's frame and later freed by the other interpreter's. A
/// sampler thread calling it every 1-10 ms (Dask's worker profiler, APM profilers,
/// pytest-timeout's thread method) aborts the process within milliseconds while other
/// interpreters run Python (`free(): invalid pointer`, double free, SIGSEGV); CPython's
/// own `_interpreters` crashes the same way, and a public report has 3.14.7 and
/// 3.15.0rc1 (default builds) crash on the first call from a subinterpreter.
///
/// The runtime replaces both `sys` functions in every interpreter it makes, and in the
/// main interpreter when it starts (embedded or borrowed by the Python package), by
/// functions that walk only the calling interpreter's threads while holding its GIL
/// (`PyInterpreterState_ThreadHead`, `PyThreadState_GetFrame`): the same dicts, keyed by
/// `threading.get_ident()`, without other interpreters' threads. On a version whose
/// thread-state layout the library does not know (the key is a field the C API does not
/// expose), they report the calling thread alone. C code that calls
/// `_PyThread_CurrentFrames` directly, and code that kept a reference to the original
/// `sys._current_frames` from before the runtime started, are not covered.
pub const CURRENT_FRAMES: Hazard = Hazard {
    id: "current-frames",
    summary: "sys._current_frames() and sys._current_exceptions() walk the threads of every \
              interpreter and make frame objects for threads running under other \
              interpreters' GILs with the caller's allocator: a sampler (Dask's worker \
              profiler, APM profilers, pytest-timeout) aborts the process within \
              milliseconds while other interpreters run Python",
    cpython_issues: &[],
    affects: &[(3, 12), (3, 13), (3, 14), (3, 15)],
    fixed_in: None,
    modules: &[],
    workaround: Workaround::CurrentInterpreterThreads,
};

/// Every hazard this library knows, for any version.
pub const ALL: &[&Hazard] = &[
    &DATETIME_STATIC_TYPES,
    &SINGLE_PHASE_STATE,
    &ARG_PARSER_KWTUPLE,
    &INTERPRETER_MEMORY,
    &CURRENT_FRAMES,
];

/// A CPython version, as `sys.version` starts: `3.13.0`, `3.14.0rc1`, `3.12.1+`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// 3
    pub major: u32,
    /// 13
    pub minor: u32,
    /// 0
    pub patch: u32,
}

impl Version {
    /// Reads `"3.13.0"`, `"3.14.0rc1"` or `"3.12.1+"`; `None` when there is no
    /// `major.minor` at the start.
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().splitn(3, '.');
        let number = |part: Option<&str>| -> Option<u32> {
            let digits: String = part?.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let major = number(parts.next())?;
        let minor = number(parts.next())?;
        let patch = number(parts.next()).unwrap_or(0);
        Some(Version {
            major,
            minor,
            patch,
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Hazard {
    /// Whether this hazard affects `version`.
    pub fn affects(&self, version: Version) -> bool {
        let minor_hit = self
            .affects
            .iter()
            .any(|&(major, minor)| major == version.major && minor == version.minor);
        let fixed = self
            .fixed_in
            .and_then(Version::parse)
            .is_some_and(|fixed| fixed <= version);
        minor_hit && !fixed
    }

    /// Whether `module` triggers this hazard on `version`.
    pub fn names(&self, module: &str, version: &str) -> bool {
        let Some(v) = Version::parse(version) else {
            return false;
        };
        self.modules.iter().any(|(name, on)| {
            *name == module
                && (on.is_empty() || on.iter().any(|&(ma, mi)| ma == v.major && mi == v.minor))
        })
    }

    /// [`affects`](Hazard::affects) for a version as `sys.version` starts; false when it
    /// cannot be read.
    pub fn affects_text(&self, version: &str) -> bool {
        Version::parse(version).is_some_and(|v| self.affects(v))
    }

    /// `python/cpython#136421, #136423`, or `no python/cpython issue known`.
    pub fn issues_text(&self) -> String {
        if self.cpython_issues.is_empty() {
            return "no python/cpython issue known".to_owned();
        }
        let list: Vec<String> = self
            .cpython_issues
            .iter()
            .map(|n| format!("#{n}"))
            .collect();
        format!("python/cpython{}", list.join(", "))
    }

    /// "fixed in 3.14.0" or "no fixed release known".
    pub fn fixed_text(&self) -> String {
        match self.fixed_in {
            Some(version) => format!("fixed in {version}"),
            None => "no fixed release known".to_owned(),
        }
    }
}

impl fmt::Display for Hazard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}; {})",
            self.id,
            self.summary,
            self.issues_text(),
            self.fixed_text()
        )
    }
}

/// The hazards that affect the CPython `version` (as `sys.version` starts); none when it
/// cannot be read.
pub fn for_version(version: &str) -> Vec<&'static Hazard> {
    match Version::parse(version) {
        Some(v) => ALL.iter().copied().filter(|h| h.affects(v)).collect(),
        None => Vec::new(),
    }
}

/// Whether the host prepares extension modules in the main interpreter on `version`.
pub fn needs_preparation(version: &str) -> bool {
    for_version(version)
        .iter()
        .any(|h| h.workaround == Workaround::PrepareInMain)
}

/// The extension modules the runtime prepares for legacy interpreters on `version`: the
/// ones a hazard with the preparation workaround names. (Isolated interpreters have every
/// extension module prepared; legacy ones cannot: numpy, Cython and PyO3 modules load
/// in one interpreter per process, and the main interpreter would take it.)
pub fn prepared_in_legacy(version: &str) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for hazard in for_version(version) {
        if hazard.workaround != Workaround::PrepareInMain {
            continue;
        }
        for (name, _) in hazard.modules {
            if hazard.names(name, version) && !names.contains(name) {
                names.push(name);
            }
        }
    }
    names
}

/// [`prepared_in_legacy`] for every minor version a hazard with the preparation
/// workaround affects, keyed `"3.12"`, for the probe of [`crate::check`].
pub(crate) fn legacy_preparation_table() -> std::collections::BTreeMap<String, Vec<&'static str>> {
    preparation_rules()
        .into_iter()
        .map(|(major, minor, _)| {
            let key = format!("{major}.{minor}");
            let names = prepared_in_legacy(&format!("{key}.0"));
            (key, names)
        })
        .collect()
}

/// Counts isolated interpreters ended in this process and, on the versions with
/// [`INTERPRETER_MEMORY`], warns when the count reaches 256 and each power of two after,
/// so that a host churning interpreters learns why its memory grows.
pub(crate) fn isolated_interpreter_ended(version: &str) {
    static ENDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = ENDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n >= 256 && n.is_power_of_two() && INTERPRETER_MEMORY.affects_text(version) {
        let message = format!(
            "{n} isolated interpreters have ended in this process; CPython {version} keeps \
             about 2 MB of each one ({}, {}): reuse interpreters (a Pool recycles its \
             workers only when max_tasks_per_worker says so) or use legacy interpreters, \
             which keep about 0.2 MB, for short-lived work",
            INTERPRETER_MEMORY.id,
            INTERPRETER_MEMORY.issues_text()
        );
        tracing::warn!(target: "subinterp::hazards", "{message}");
        *MEMORY_WARNING.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }
}

/// The latest warning of [`isolated_interpreter_ended`] not taken yet.
static MEMORY_WARNING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

#[cfg(feature = "extension-module")]
/// Takes the latest warning about the memory of ended interpreters, if one was given
/// since the last call: for a host that shows warnings its own way (the Python package
/// raises it as a `RuntimeWarning`).
pub(crate) fn take_memory_warning() -> Option<String> {
    MEMORY_WARNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
}

/// Settles the process's outcome before interpreters end: from now on, if CPython
/// crashes (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) — as the versions this module
/// describes can while interpreters end — `message` is written to stderr and the process
/// exits with `status` instead of dying of the signal. For hosts whose results are all
/// written before they end their interpreters, e.g. a command-line tool after its
/// summary line; call it again to change the status. It does not make a crash safe to
/// continue from: the process ends.
pub fn settle_exit(status: u8, message: &str) {
    crate::raw::fatal::exit_on_fatal_signal(status, message);
}

/// Limits `sys._current_frames()` and `sys._current_exceptions()` of the calling
/// interpreter to its own threads ([`CURRENT_FRAMES`]): called when every interpreter is
/// set up and when the runtime starts, for the main interpreter. On every version, since
/// no fixed release is known and the replacement reads only what is safe to read.
pub(crate) fn limit_thread_walks(py: crate::raw::Python<'_>) -> crate::error::Result<()> {
    let replaced = crate::raw::threads::install(py)?;
    tracing::trace!(
        target: "subinterp::hazards",
        interpreter = py.interpreter_id(),
        replaced,
        all_threads = crate::raw::threads::reports_all_threads(py),
        "sys._current_frames limited to the interpreter's own threads ({})",
        CURRENT_FRAMES.id
    );
    Ok(())
}

/// Whether the runtime leaves the main interpreter unfinalised on `version`
/// ([`Workaround::SkipMainFinalization`]).
pub fn skips_main_finalization(version: &str) -> bool {
    for_version(version)
        .iter()
        .any(|h| h.workaround == Workaround::SkipMainFinalization)
}

/// The versions on which the runtime prepares extension modules, as
/// `[major, minor, first fixed release or null]` for the probe of [`crate::check`].
pub(crate) fn preparation_rules() -> Vec<(u32, u32, Option<&'static str>)> {
    ALL.iter()
        .filter(|h| h.workaround == Workaround::PrepareInMain)
        .flat_map(|h| {
            h.affects
                .iter()
                .map(|&(major, minor)| (major, minor, h.fixed_in))
        })
        .collect()
}

/// The hazards that name `module` and affect `version`.
pub fn naming(module: &str, version: &str) -> Vec<&'static Hazard> {
    for_version(version)
        .into_iter()
        .filter(|h| h.names(module, version))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            Version::parse("3.14.0rc1"),
            Some(Version {
                major: 3,
                minor: 14,
                patch: 0
            })
        );
        assert_eq!(Version::parse("3.12.1+").map(|v| v.patch), Some(1));
        assert_eq!(Version::parse("3.13").map(|v| v.patch), Some(0));
        assert_eq!(Version::parse("three"), None);
    }

    #[test]
    fn table_by_version() {
        let ids = |v| -> Vec<&str> { for_version(v).iter().map(|h| h.id).collect() };
        assert_eq!(
            ids("3.12.1"),
            [
                "single-phase-state",
                "arg-parser-kwtuple",
                "interpreter-memory",
                "current-frames"
            ]
        );
        assert_eq!(
            ids("3.12.4"),
            ["single-phase-state", "interpreter-memory", "current-frames"]
        );
        assert!(skips_main_finalization("3.12.3"));
        assert!(!skips_main_finalization("3.12.4"));
        assert!(!skips_main_finalization("3.13.0"));
        assert_eq!(
            ids("3.13.0"),
            [
                "datetime-static-types",
                "single-phase-state",
                "interpreter-memory",
                "current-frames"
            ]
        );
        assert_eq!(ids("3.14.7"), ["current-frames"]);
        assert_eq!(ids("3.15.0rc1"), ["current-frames"]);
        assert!(CURRENT_FRAMES
            .to_string()
            .contains("no python/cpython issue known; no fixed release known"));
        assert!(ids("3.14.0")
            .iter()
            .all(|id| *id != "datetime-static-types"));
        assert!(needs_preparation("3.12.9"));
        assert!(needs_preparation("3.13.0"));
        assert!(!needs_preparation("3.14.1"));
        assert!(!needs_preparation("3.11.7"));
        assert_eq!(naming("_datetime", "3.13.0").len(), 1);
        assert_eq!(naming("_datetime", "3.12.1").len(), 1);
        assert_eq!(naming("_decimal", "3.13.0").len(), 0);
        assert_eq!(naming("_decimal", "3.12.1")[0].id, "single-phase-state");
        assert_eq!(naming("psutil._psutil_linux", "3.13.0").len(), 1);
        assert_eq!(naming("msgpack._cmsgpack", "3.13.0").len(), 0);
        assert!(DATETIME_STATIC_TYPES
            .to_string()
            .contains("python/cpython#136421, #136423; fixed in 3.14.0"));
    }
}
