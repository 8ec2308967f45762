//! What CPython really does with a module, found through the library's own
//! [`Interpreter`]s, to compare `subinterp::check` with.
//!
//! Each question runs in a fresh process (this test binary, re-run with
//! `--exact ground_truth_helper --ignored`), like each question of the checker: one import
//! can change what the next does (on 3.12 a refused single-phase module has already run
//! its initialisation once), and a crash must end only the helper.
#![allow(dead_code)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use subinterp::check::{CheckOptions, ModuleKind, ModuleReport, Verdict};
use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

/// CPython's message when an interpreter refuses an extension module.
pub const REFUSAL: &str = "does not support loading in subinterpreters";

/// The version of the Python the crate was built with, e.g. `3.13.0`.
pub fn python_version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let out = Command::new(build_python())
            .args(["-c", "import platform; print(platform.python_version())"])
            .output()
            .expect("run the build Python");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// The Python the crate was built with (and embeds).
pub fn build_python() -> PathBuf {
    PathBuf::from(env!("SUBINTERP_BUILD_PYTHON"))
}

/// Where one question is asked: a module name, the kind of interpreter, the environment.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub venv: Option<PathBuf>,
    pub paths: Vec<PathBuf>,
}

impl Setup {
    /// The checker options for the same environment.
    pub fn options(&self) -> CheckOptions {
        let mut options = CheckOptions::new();
        match &self.venv {
            Some(venv) => options.virtual_env(venv),
            None => options.no_virtual_env(),
        };
        for dir in &self.paths {
            options.add_path(dir);
        }
        options.timeout(Duration::from_secs(120));
        options
    }
}

/// How one import went in one interpreter.
#[derive(Clone, Debug, PartialEq)]
pub enum Import {
    /// It imported; the module's kind, its attributes' ids (as the checker defines them)
    /// and the names in that interpreter's `sys.modules` afterwards.
    Ok {
        kind: ModuleKind,
        ids: Vec<(String, i64)>,
        loaded: Vec<String>,
    },
    /// It raised.
    Raised { type_name: String, message: String },
}

/// What a fresh process did when importing a module in two new interpreters of a kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Truth {
    /// The process survived; one entry per interpreter tried (a second is only tried
    /// after a first that imported).
    Imports(Vec<Import>),
    /// The process was killed by this signal (or exited with this status: negative).
    Crashed(i32),
}

impl Truth {
    /// Whether both interpreters imported it.
    pub fn both_ok(&self) -> bool {
        matches!(self, Truth::Imports(v) if v.len() == 2 && v.iter().all(|i| matches!(i, Import::Ok { .. })))
    }

    /// Whether the first interpreter imported it.
    pub fn first_ok(&self) -> bool {
        matches!(self, Truth::Imports(v) if matches!(v.first(), Some(Import::Ok { .. })))
    }

    /// The first import, if the process survived it.
    pub fn first(&self) -> Option<&Import> {
        match self {
            Truth::Imports(v) => v.first(),
            Truth::Crashed(_) => None,
        }
    }

    /// Whether objects of the module dict were the same in both interpreters.
    pub fn shared_state(&self) -> Option<bool> {
        let Truth::Imports(v) = self else { return None };
        match (v.first(), v.get(1)) {
            (Some(Import::Ok { ids: a, .. }), Some(Import::Ok { ids: b, .. })) => {
                Some(a.iter().any(|entry| b.contains(entry)))
            }
            _ => None,
        }
    }
}

/// Imports `module` in two new interpreters (isolated or legacy) of a fresh process.
pub fn ask(module: &str, isolated: bool, setup: &Setup) -> Truth {
    let exe = std::env::current_exe().expect("the test binary's path");
    let paths = std::env::join_paths(&setup.paths).expect("paths without ':'");
    let out = Command::new(exe)
        .args([
            "--exact",
            "ground_truth_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SUBINTERP_TRUTH_MODULE", module)
        .env("SUBINTERP_TRUTH_ISOLATED", if isolated { "1" } else { "0" })
        .env(
            "SUBINTERP_TRUTH_VENV",
            setup.venv.as_deref().unwrap_or(Path::new("")),
        )
        .env("SUBINTERP_TRUTH_PATHS", paths)
        .env_remove("VIRTUAL_ENV")
        .output()
        .expect("run the ground-truth helper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(signal) = out.status.signal() {
        return Truth::Crashed(signal);
    }
    let mut imports = Vec::new();
    for line in stdout.lines() {
        // libtest may print its "test ... " prefix on the same line.
        if let Some((_, json)) = line.split_once("TRUTH:") {
            let v: serde_json::Value = serde_json::from_str(json).expect("helper JSON");
            imports.push(if v["ok"] == true {
                Import::Ok {
                    kind: match v["kind"].as_str() {
                        Some("extension") => ModuleKind::Extension,
                        Some("builtin") => ModuleKind::Builtin,
                        _ => ModuleKind::Python,
                    },
                    ids: v["ids"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, id)| (k.clone(), id.as_i64().unwrap()))
                        .collect(),
                    loaded: v["loaded"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect(),
                }
            } else {
                Import::Raised {
                    type_name: v["type"].as_str().unwrap().to_owned(),
                    message: v["message"].as_str().unwrap().to_owned(),
                }
            });
        }
    }
    match out.status.code() {
        Some(0) => {}
        // libtest's status for a failed test: the helper itself went wrong.
        Some(101) | None => panic!(
            "the ground-truth helper failed for {module}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        // The module ended the process (exit() from C).
        Some(code) => return Truth::Crashed(-code),
    }
    assert!(
        !imports.is_empty(),
        "the helper said nothing about {module}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Truth::Imports(imports)
}

/// The body of each test binary's `ground_truth_helper` test (ignored unless asked for).
pub fn helper_main() {
    let Ok(module) = std::env::var("SUBINTERP_TRUTH_MODULE") else {
        return;
    };
    let isolated = std::env::var("SUBINTERP_TRUTH_ISOLATED").as_deref() == Ok("1");
    let mut config = RuntimeConfig::new();
    match std::env::var_os("SUBINTERP_TRUTH_VENV").filter(|v| !v.is_empty()) {
        Some(venv) => config.virtual_env(venv),
        None => config.no_virtual_env(),
    };
    if let Some(paths) = std::env::var_os("SUBINTERP_TRUTH_PATHS") {
        for dir in std::env::split_paths(&paths).filter(|p| !p.as_os_str().is_empty()) {
            config.add_path(dir);
        }
    }
    let rt = Runtime::init(&config).expect("start Python");
    let preset = if isolated {
        InterpreterConfig::isolated()
    } else {
        InterpreterConfig::legacy()
    };
    let mut interps = Vec::new();
    for _ in 0..2 {
        let interp = Interpreter::new(&rt, &preset).expect("create an interpreter");
        let result = interp.exec(&format!(
            "{DESCRIBE}\n_m = importlib.import_module({module:?})"
        ));
        let line = match result {
            Ok(()) => {
                let facts = interp.eval("_describe(_m)").expect("describe the module");
                let mut json = serde_json::to_value(&facts).expect("facts as JSON");
                json["ok"] = serde_json::Value::Bool(true);
                json
            }
            Err(err) => {
                let exc = err.as_python().expect("a Python exception");
                serde_json::json!({
                    "ok": false,
                    "type": exc.short_type_name(),
                    "message": exc.message,
                })
            }
        };
        println!("TRUTH:{line}");
        let ok = line["ok"] == true;
        interps.push(interp);
        if !ok {
            break;
        }
    }
    // Ending the interpreters is part of the question: the checker ends them too.
    for interp in interps {
        interp.close().expect("close the interpreter");
    }
    // Finalising the whole runtime is not: the checker's probes never finalise either.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::mem::forget(rt);
    std::process::exit(0);
}

/// Defines `_describe(module)`: its kind, the ids of its attributes (leaving out
/// `__dunder__` names and immortal objects, as the checker does) and `sys.modules`.
const DESCRIBE: &str = "\
import importlib, importlib.machinery as _machinery, sys as _sys
def _describe(m):
    loader = getattr(getattr(m, '__spec__', None), 'loader', None)
    if isinstance(loader, _machinery.ExtensionFileLoader):
        kind = 'extension'
    elif loader is _machinery.BuiltinImporter:
        kind = 'builtin'
    else:
        kind = 'python'
    ids = {k: id(v) for k, v in vars(m).items()
           if isinstance(k, str) and not (k.startswith('__') and k.endswith('__'))
           and _sys.getrefcount(v) < 1 << 30}
    return {'kind': kind, 'ids': ids, 'loaded': sorted(_sys.modules)}
";

/// The verdict CPython's behaviour implies: `ok` when two isolated interpreters import
/// it; otherwise `legacy-only` when a legacy one does; `broken` otherwise or on a crash.
/// Returns the isolated and (when asked) legacy truths too.
pub fn expected(module: &str, setup: &Setup) -> (Verdict, Truth, Option<Truth>) {
    let isolated = ask(module, true, setup);
    if isolated.both_ok() {
        return (Verdict::Ok, isolated, None);
    }
    let legacy = ask(module, false, setup);
    let verdict = if matches!(isolated, Truth::Crashed(_)) || matches!(legacy, Truth::Crashed(_)) {
        Verdict::Broken
    } else if legacy.first_ok() {
        Verdict::LegacyOnly
    } else {
        Verdict::Broken
    };
    (verdict, isolated, Some(legacy))
}

/// How many times CPython's behaviour is asked before a verdict counts as a mismatch.
const TRUTH_ATTEMPTS: usize = 3;

/// Compares a report with what CPython does, and checks the facts against CPython's
/// rules for extension modules. Returns a description of every mismatch.
pub fn compare(report: &ModuleReport, setup: &Setup) -> Vec<String> {
    let module = report.module.as_str();
    // Some extensions crash CPython at interpreter end only now and then (rpds-py in two
    // legacy interpreters on 3.12.1, for one); CPython's behaviour is asked up to three
    // times, and the report should match one of the answers.
    let mut attempt = expected(module, setup);
    for _ in 1..TRUTH_ATTEMPTS {
        if attempt.0 == report.verdict {
            break;
        }
        attempt = expected(module, setup);
    }
    let (verdict, isolated, legacy) = attempt;
    let mut problems = Vec::new();
    let mut problem = |text: String| {
        problems.push(format!("{module}: {text}\n  report: {report:?}\n  isolated: {isolated:?}\n  legacy: {legacy:?}"))
    };
    // A crash when an interpreter ends is not deterministic either way (google-re2 on
    // 3.12.1 crashes the checker's probe in some runs and not the library's, rpds-py the
    // other way round): legacy-only and broken agree when a crash was seen on one side.
    let crash_seen = report
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("crashed"))
        || matches!(legacy, Some(Truth::Crashed(_)))
        || matches!(isolated, Truth::Crashed(_));
    let legacy_or_broken = |v: Verdict| matches!(v, Verdict::LegacyOnly | Verdict::Broken);
    let crash_tolerated =
        crash_seen && legacy_or_broken(report.verdict) && legacy_or_broken(verdict);
    if report.verdict != verdict && !crash_tolerated {
        problem(format!(
            "verdict {} but CPython says {verdict}",
            report.verdict
        ));
    }
    if report.verdict != verdict && crash_tolerated {
        // The two runs saw different things (one crashed): the facts cannot be compared.
        return problems;
    }
    // Kind, where an interpreter imported it.
    let imported = [Some(&isolated), legacy.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|t| match t.first() {
            Some(Import::Ok { kind, .. }) => Some(*kind),
            _ => None,
        });
    if let Some(kind) = imported {
        if report.kind != Some(kind) {
            problem(format!(
                "kind {:?} but the import used {kind:?}",
                report.kind
            ));
        }
    }
    // shared_state: the same comparison of ids, in the interpreters that imported it.
    if matches!(
        report.kind,
        Some(ModuleKind::Extension | ModuleKind::Builtin)
    ) {
        let truth = match verdict {
            Verdict::Ok => isolated.shared_state(),
            _ => legacy.as_ref().and_then(Truth::shared_state),
        };
        if report.shared_state != truth {
            problem(format!(
                "shared_state {:?} but CPython's objects say {truth:?}",
                report.shared_state
            ));
        }
    }
    // The culprit: CPython refuses it in an isolated interpreter, and it is what the
    // failing import was about (or, for a fallback, it is not loaded afterwards).
    if let Some(culprit) = &report.culprit {
        let refused = matches!(
            ask(culprit, true, setup).first(),
            Some(Import::Raised { type_name, message })
                if type_name == "ImportError" && message.contains(REFUSAL)
        );
        let hazard_named = !subinterp::hazards::naming(culprit, python_version()).is_empty();
        if refused {
            let short = culprit.rsplit('.').next().unwrap();
            match isolated.first() {
                Some(Import::Raised { message, .. }) if !message.contains(short) => {
                    problem(format!(
                        "the isolated import's error does not mention the culprit {culprit}: \
                         {message}"
                    ))
                }
                Some(Import::Ok { loaded, .. }) if loaded.contains(culprit) => problem(format!(
                    "the isolated import worked, yet the culprit {culprit} is loaded"
                )),
                _ => {}
            }
        } else if hazard_named {
            // A module a known CPython bug of this version names, blamed for a crash when
            // interpreters end: the report says which bug, and the import loaded it.
            let detail = report.detail.as_deref().unwrap_or_default();
            if !detail.contains("python/cpython#") {
                problem(format!(
                    "culprit {culprit} without the CPython bug named: {detail}"
                ));
            }
            let loaded = |t: &Truth| match t.first() {
                Some(Import::Ok { loaded, .. }) => loaded.contains(culprit),
                _ => false,
            };
            if !loaded(&isolated) && !legacy.as_ref().is_some_and(loaded) {
                problem(format!("culprit {culprit} is not loaded by the import"));
            }
        } else {
            problem(format!(
                "culprit {culprit} is neither refused by an isolated interpreter nor named by \
                 a CPython bug of this version"
            ));
        }
    } else if let Some(Import::Raised { message, .. }) = isolated.first() {
        if message.contains(REFUSAL) {
            problem("CPython refused an extension module, but no culprit is named".into());
        }
    }
    // CPython's rules: an extension that imports in own-GIL interpreters is multi-phase
    // and declares per-interpreter GIL support; one refused for itself is not.
    if report.kind == Some(ModuleKind::Extension) {
        use subinterp::check::{InitKind, MultipleInterpreters};
        let per_gil = report.init == Some(InitKind::MultiPhase)
            && report.multiple_interpreters == Some(MultipleInterpreters::PerInterpreterGil);
        if report.verdict == Verdict::Ok && !per_gil {
            problem("ok, but not multi-phase with per_interpreter_gil".into());
        }
        if report.culprit.as_deref() == Some(module) && per_gil {
            problem("refused for itself, yet declares per_interpreter_gil".into());
        }
        if report.init.is_none() {
            problem("no init kind for an extension module".into());
        }
    }
    problems
}

/// Compares every report (a few at a time) and panics with all mismatches.
pub fn assert_all_match(reports: &[ModuleReport], setup: &Setup) {
    let problems: Vec<String> = std::thread::scope(|scope| {
        let chunks: Vec<_> = reports.chunks(reports.len().div_ceil(2).max(1)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .flat_map(|r| compare(r, setup))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("comparison thread"))
            .collect()
    });
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
