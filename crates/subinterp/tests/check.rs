//! `subinterp::check` on the standard library and on fixtures (a crashing extension built
//! here, pure-Python packages), each verdict compared with what CPython does when the
//! library's own interpreters import the module in a fresh process.

mod check_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use check_support::{assert_all_match, build_python, Setup};
use subinterp::check::{self, CheckOptions, ModuleKind, Verdict};

/// Runs in a fresh process for `check_support::ask`; does nothing otherwise.
#[test]
#[ignore = "helper run by the other tests in a process of its own"]
fn ground_truth_helper() {
    check_support::helper_main();
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check")
}

fn stdlib() -> Setup {
    Setup::default()
}

/// Runs `python -c code` with the build's Python and returns its stdout, trimmed.
fn python(code: &str) -> String {
    let out = Command::new(build_python())
        .args(["-E", "-s", "-c", code])
        .output()
        .expect("run the build's Python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Builds the crashing extension twice (abort, NULL write) against the build Python's
/// headers, into a directory of its own; returns that directory.
fn crashing_extensions() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("check-crashing-ext");
        std::fs::create_dir_all(&dir).unwrap();
        let include = python("import sysconfig; print(sysconfig.get_paths()['include'])");
        let suffix = python("import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        for (name, defines) in [
            ("check_crash_abort", vec![]),
            ("check_crash_segv", vec!["-DCRASH_WITH_NULL"]),
        ] {
            let status = Command::new(&cc)
                .args(["-shared", "-fPIC", "-O0", "-I", &include])
                .arg(format!("-DMODULE_NAME={name}"))
                .args(defines)
                .arg(fixtures().join("crashing_ext.c"))
                .arg("-o")
                .arg(dir.join(format!("{name}{suffix}")))
                .status()
                .unwrap_or_else(|e| panic!("run the C compiler {cc:?} (set CC to another): {e}"));
            assert!(status.success(), "compiling the crashing extension failed");
        }
        dir
    })
}

#[test]
fn stdlib_modules_get_the_verdicts_cpython_gives() {
    // The modules the issue names, plus pure-Python and builtin ones. The expectations
    // come from importing each module in the library's interpreters (see check_support),
    // not from this list.
    let modules = [
        "readline", "_curses", "_tkinter", "_json", "_decimal", "_sqlite3", "array", "math",
        "decimal", "datetime", "json", "sys", "_io",
    ];
    let setup = stdlib();
    let reports = check::check(&modules, &setup.options()).expect("run the check");
    assert_eq!(
        reports
            .iter()
            .map(|r| r.module.as_str())
            .collect::<Vec<_>>(),
        modules,
        "one report per module, in the order asked"
    );
    for r in &reports {
        eprintln!(
            "{:<10} {:<11} {}",
            r.module,
            r.verdict.to_string(),
            r.reason()
        );
    }
    assert_all_match(&reports, &setup);

    let by_name = |name: &str| reports.iter().find(|r| r.module == name).unwrap();
    // Facts that do not depend on the Python version.
    let json = by_name("_json");
    assert_eq!(json.kind, Some(ModuleKind::Extension));
    assert_eq!(by_name("json").kind, Some(ModuleKind::Python));
    assert_eq!(by_name("json").init, None);
    assert_eq!(by_name("sys").kind, Some(ModuleKind::Builtin));
    let curses = by_name("_curses");
    assert_eq!(curses.init, Some(check::InitKind::SinglePhase));
    assert_eq!(curses.multiple_interpreters, None);
    assert_eq!(curses.culprit.as_deref(), Some("_curses"));
    // Something ok and something not, so the comparison above had both to compare.
    assert!(reports.iter().any(|r| r.verdict == Verdict::Ok));
    assert!(reports.iter().any(|r| r.verdict != Verdict::Ok));
}

#[test]
fn crashing_extensions_are_broken_with_the_signal_named() {
    let dir = crashing_extensions();
    let setup = Setup {
        venv: None,
        paths: vec![dir.to_owned()],
    };
    let modules = ["check_crash_abort", "_json", "check_crash_segv"];
    let reports = check::check(&modules, &setup.options()).expect("run the check");
    for (report, signal) in reports.iter().zip(["SIGABRT", "", "SIGSEGV"]) {
        eprintln!("{report:?}");
        if signal.is_empty() {
            // The checker survived the crashes before it.
            assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
            continue;
        }
        assert_eq!(report.verdict, Verdict::Broken, "{report:?}");
        assert_eq!(report.kind, Some(ModuleKind::Extension));
        let detail = report.detail.as_deref().unwrap();
        assert!(
            detail.contains(&format!(
                "crashed with {signal} while importing it in the first isolated interpreter"
            )),
            "{detail}"
        );
        assert!(report.reason().contains(signal));
    }
    // CPython agrees: importing them kills the process with the same signals.
    for (module, signal) in [("check_crash_abort", 6), ("check_crash_segv", 11)] {
        assert_eq!(
            check_support::ask(module, true, &setup),
            check_support::Truth::Crashed(signal)
        );
    }
}

#[test]
fn pure_python_packages_name_the_refused_extension() {
    let setup = Setup {
        venv: None,
        paths: vec![fixtures().join("pure")],
    };
    let modules = ["fallback_pkg", "needs_curses_pkg", "check_plain"];
    let reports = check::check(&modules, &setup.options()).expect("run the check");
    for r in &reports {
        eprintln!("{r:?}");
    }
    assert_all_match(&reports, &setup);

    // Caught the refusal of readline and went on: ok, with readline as the culprit.
    let fallback = &reports[0];
    assert_eq!(fallback.verdict, Verdict::Ok);
    assert_eq!(fallback.kind, Some(ModuleKind::Python));
    assert_eq!(fallback.culprit.as_deref(), Some("readline"));
    assert!(
        fallback
            .detail
            .as_deref()
            .unwrap()
            .contains("caught the refusal of readline"),
        "{fallback:?}"
    );
    // Needs _curses: refused, and _curses named.
    let needs = &reports[1];
    assert_eq!(needs.verdict, Verdict::LegacyOnly);
    assert_eq!(needs.culprit.as_deref(), Some("_curses"));
    assert_eq!(needs.shared_state, None, "facts of extension modules only");
    // Nothing compiled, nothing refused.
    assert_eq!(reports[2].verdict, Verdict::Ok);
    assert_eq!(reports[2].culprit, None);
    assert_eq!(reports[2].detail, None);
}

#[test]
fn a_missing_module_is_broken_and_says_so() {
    let report = check::check_module("subinterp_no_such_module", &stdlib().options()).unwrap();
    assert_eq!(report.verdict, Verdict::Broken);
    assert_eq!(report.kind, None);
    assert_eq!(
        report.detail.as_deref(),
        Some("No module named 'subinterp_no_such_module'")
    );
    // A package that exists with a submodule that does not.
    let report = check::check_module("json.no_such_submodule", &stdlib().options()).unwrap();
    assert_eq!(report.verdict, Verdict::Broken);
    assert_eq!(
        report.detail.as_deref(),
        Some("No module named 'json.no_such_submodule'")
    );
}

#[test]
fn an_import_that_does_not_finish_is_broken_after_the_timeout() {
    let mut options = CheckOptions::new();
    options
        .no_virtual_env()
        .add_path(fixtures().join("pure"))
        .timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let reports = check::check(&["check_hangs", "check_plain"], &options).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the hung import was given up"
    );
    assert_eq!(reports[0].verdict, Verdict::Broken);
    let detail = reports[0].detail.as_deref().unwrap();
    assert!(
        detail.starts_with("did not finish within 1.5 s"),
        "{detail}"
    );
    assert!(
        detail.contains("importing it in the first isolated interpreter"),
        "{detail}"
    );
    assert_eq!(reports[1].verdict, Verdict::Ok);
}

#[test]
fn check_all_reports_every_extension_module_of_the_standard_library() {
    let setup = stdlib();
    let mut options = setup.options();
    options.all_extensions(true);
    let started = Instant::now();
    let run = check::run::<&str>(&[], &options).expect("run the check");
    let elapsed = started.elapsed();
    eprintln!(
        "--all over the standard library: {} modules in {:.1} s ({:.1} modules/s), Python {}",
        run.reports.len(),
        elapsed.as_secs_f64(),
        run.reports.len() as f64 / elapsed.as_secs_f64(),
        run.python_version
    );
    // Every extension module file in lib-dynload, listed by the Python itself.
    let listed = python(
        "import sys, os, importlib.machinery as m\n\
         d = [p for p in sys.path if p.endswith('lib-dynload')][0]\n\
         names = set()\n\
         for f in os.listdir(d):\n\
         \x20   for s in m.EXTENSION_SUFFIXES:\n\
         \x20       if f.endswith(s):\n\
         \x20           names.add(f[:-len(s)]); break\n\
         print('\\n'.join(sorted(names)))",
    );
    let names: Vec<&str> = run.reports.iter().map(|r| r.module.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "one row per module");
    for module in listed.lines() {
        let report = run
            .reports
            .iter()
            .find(|r| r.module == module)
            .unwrap_or_else(|| panic!("no row for {module}"));
        assert_eq!(report.kind, Some(ModuleKind::Extension), "{report:?}");
        assert!(report.init.is_some(), "{report:?}");
    }
    assert!(run
        .reports
        .iter()
        .all(|r| r.kind == Some(ModuleKind::Extension)));
    // The examples among them, with the verdicts the named check gives.
    let named = check::check(&["_json", "readline"], &setup.options()).unwrap();
    for report in named {
        let row = run.reports.iter().find(|r| r.module == report.module);
        assert_eq!(row.map(|r| r.verdict), Some(report.verdict));
    }
}

#[test]
fn the_library_s_own_module_is_ok_and_keywords_are_not_module_names() {
    let reports = check::check(&["subinterp", "json"], &stdlib().options()).expect("check");
    let own = &reports[0];
    assert_eq!(own.module, "subinterp");
    assert_eq!(own.verdict, Verdict::Ok, "{own:?}");
    assert!(
        own.reason().contains("provided by subinterp"),
        "{}",
        own.reason()
    );
    assert_eq!(reports.len(), 2);
    // Every interpreter the library makes can really import it.
    let rt = subinterp::Runtime::get_or_init(&subinterp::RuntimeConfig::new()).unwrap();
    let interp =
        subinterp::Interpreter::new(&rt, &subinterp::InterpreterConfig::isolated()).unwrap();
    interp.exec("import subinterp").unwrap();
    interp.close().unwrap();
    for keyword in ["import", "class", "a.for"] {
        let err = check::check(&[keyword], &stdlib().options()).unwrap_err();
        assert!(
            matches!(err, check::CheckError::InvalidModuleName(ref n) if n == keyword),
            "{err}"
        );
    }
}

/// On CPython 3.13.0, `datetime` in several isolated interpreters crashes plain CPython
/// when they end (python/cpython#136423); the library prepares `_datetime` in the main
/// interpreter, so the check says `ok` and, when its unprepared probe crashed (most
/// runs), explains that and names `_datetime`.
#[test]
fn datetime_is_ok_with_the_crash_it_avoids_explained() {
    let version = check_support::python_version();
    if !subinterp::hazards::needs_preparation(version) {
        return;
    }
    let mut explained = false;
    for _ in 0..3 {
        let report = check::check_module("datetime", &stdlib().options()).expect("check");
        assert_eq!(report.verdict, Verdict::Ok, "{report:?}");
        let detail = report.detail.clone().unwrap_or_default();
        if detail.contains("works because subinterp imports extension modules") {
            assert_eq!(report.culprit.as_deref(), Some("_datetime"), "{report:?}");
            assert!(detail.contains("python/cpython#"), "{detail}");
            explained = true;
            break;
        }
    }
    if version.starts_with("3.13") {
        assert!(explained, "the unprepared probe never crashed in 3 checks");
    }
}
