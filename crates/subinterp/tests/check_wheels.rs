//! `subinterp::check` on real third-party wheels installed from PyPI into a virtual
//! environment made for the build's Python: numpy, msgpack (Cython), rpds-py (PyO3) and
//! google-re2 (pybind11). Each verdict is compared with what CPython does when the
//! library's own interpreters import the module in a fresh process.
//!
//! The environment is made once under Cargo's target directory (one per Python, since
//! each Python builds into its own target directory) and reused while its requirement
//! list is unchanged. Making it needs `pip` to reach PyPI.

mod check_support;
mod wheel_venv;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use check_support::{assert_all_match, build_python, Setup};
use subinterp::check::{self, InitKind, ModuleKind, Placement, Verdict};

/// Pinned so that every run tests the same builds; each has cp312 and cp313 wheels for
/// manylinux x86_64.
const REQUIREMENTS: [&str; 4] = [
    "numpy==2.5.5",
    "msgpack==1.2.4",
    "rpds-py==2026.9.1",
    "google-re2==1.1.20251105",
];

/// Runs in a fresh process for `check_support::ask`; does nothing otherwise.
#[test]
#[ignore = "helper run by the other tests in a process of its own"]
fn ground_truth_helper() {
    check_support::helper_main();
}

/// The virtual environment with the wheels, made on first use.
fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        wheel_venv::make("check-venv", &REQUIREMENTS).unwrap_or_else(|err| panic!("{err}"))
    })
}

fn setup() -> Setup {
    Setup {
        venv: Some(venv().to_owned()),
        paths: Vec::new(),
    }
}

/// The venv's site-packages directory.
fn site_packages() -> PathBuf {
    let lib = venv().join("lib");
    let python_dir = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python3")
        })
        .expect("lib/python3.X in the venv");
    python_dir.join("site-packages")
}

/// Every file under `dir` whose name ends with `suffix`.
fn files_with_suffix(dir: &Path, suffix: &str, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_with_suffix(&path, suffix, found);
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
}

/// The extension suffix of this Python, e.g. `.cpython-313-x86_64-linux-gnu.so`.
fn extension_suffix() -> String {
    let out = Command::new(build_python())
        .args([
            "-c",
            "import importlib.machinery as m; print(m.EXTENSION_SUFFIXES[0])",
        ])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Whether the shared library of `module` (a dotted path under site-packages) contains
/// `marker`: how the test knows which binding tool built it.
fn built_with(module: &str, marker: &str) -> bool {
    let path = site_packages().join(format!(
        "{}{}",
        module.replace('.', "/"),
        extension_suffix()
    ));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.windows(marker.len()).any(|w| w == marker.as_bytes())
}

#[test]
fn third_party_wheels_get_the_verdicts_cpython_gives() {
    let setup = setup();
    // What each wheel's compiled module was built with, so that the comparison covers
    // Cython, PyO3 and pybind11.
    assert!(built_with("msgpack._cmsgpack", "Cython"));
    assert!(built_with("rpds.rpds", "pyo3"));
    assert!(built_with("re2._re2", "pybind11"));

    let modules = [
        "numpy",
        "numpy._core._multiarray_umath",
        "msgpack",
        "msgpack._cmsgpack",
        "rpds",
        "rpds.rpds",
        "re2",
        "re2._re2",
    ];
    let reports = check::check(&modules, &setup.options()).expect("run the check");
    for r in &reports {
        eprintln!(
            "{:<30} {:<11} {}",
            r.module,
            r.verdict.to_string(),
            r.reason()
        );
    }
    assert_all_match(&reports, &setup);

    let by_name = |name: &str| reports.iter().find(|r| r.module == name).unwrap();
    // A pure-Python package refused because of its compiled core names that core.
    let numpy = by_name("numpy");
    assert_eq!(numpy.kind, Some(ModuleKind::Python));
    if numpy.verdict != Verdict::Ok {
        let culprit = numpy.culprit.as_deref().expect("numpy's refused module");
        assert!(culprit.starts_with("numpy."), "{numpy:?}");
    }
    // Where a pool runs each: in an interpreter exactly when it is ok; numpy and rpds
    // (refused: numpy's single-phase core, rpds's PyO3 module) in a worker process, where
    // they import.
    for r in &reports {
        assert_eq!(
            r.verdict == Verdict::Ok,
            r.pool == Some(Placement::Interpreter),
            "{r:?}"
        );
    }
    for name in [
        "numpy",
        "numpy._core._multiarray_umath",
        "rpds",
        "rpds.rpds",
    ] {
        let r = by_name(name);
        assert_eq!(r.pool, Some(Placement::Process), "{r:?}");
    }
    // numpy's test module is refused by isolated interpreters; on 3.13 a legacy one cannot
    // import it either (it is `broken`: every kind of subinterpreter fails), on 3.12 it is
    // `legacy-only`. Either way it imports in a process of its own: a pool runs it in a
    // worker process.
    let tests = check::check(&["numpy._core._umath_tests"], &setup.options()).expect("check");
    assert_ne!(tests[0].verdict, Verdict::Ok, "{:?}", tests[0]);
    assert_eq!(tests[0].pool, Some(Placement::Process), "{:?}", tests[0]);
    assert!(
        tests[0]
            .reason()
            .contains("a pool runs it in a worker process, where it imports"),
        "{}",
        tests[0].reason()
    );
    // Every compiled module has its init kind.
    for name in [
        "numpy._core._multiarray_umath",
        "msgpack._cmsgpack",
        "rpds.rpds",
        "re2._re2",
    ] {
        let r = by_name(name);
        assert_eq!(r.kind, Some(ModuleKind::Extension), "{r:?}");
        assert!(
            matches!(r.init, Some(InitKind::SinglePhase | InitKind::MultiPhase)),
            "{r:?}"
        );
    }
}

#[test]
fn check_all_reports_every_extension_module_of_the_environment() {
    let setup = setup();
    let mut options = setup.options();
    options.all_extensions(true);
    let started = Instant::now();
    let run = check::run::<&str>(&[], &options).expect("run the check");
    let elapsed = started.elapsed();
    let counts = |v: Verdict| run.reports.iter().filter(|r| r.verdict == v).count();
    eprintln!(
        "--all over the standard library and {}: {} modules in {:.1} s ({:.1} modules/s), \
         Python {}: {} ok, {} legacy-only, {} broken",
        REQUIREMENTS.join(" "),
        run.reports.len(),
        elapsed.as_secs_f64(),
        run.reports.len() as f64 / elapsed.as_secs_f64(),
        run.python_version,
        counts(Verdict::Ok),
        counts(Verdict::LegacyOnly),
        counts(Verdict::Broken),
    );
    let site = site_packages();
    let mut files = Vec::new();
    files_with_suffix(&site, &extension_suffix(), &mut files);
    assert!(files.len() >= 4, "the wheels' extension modules: {files:?}");
    for file in files {
        let relative = file
            .strip_prefix(&site)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let module = relative
            .strip_suffix(&extension_suffix())
            .unwrap()
            .replace('/', ".");
        let row = run.reports.iter().filter(|r| r.module == module).count();
        assert_eq!(row, 1, "one row for {module}");
    }
    let mut names: Vec<&str> = run.reports.iter().map(|r| r.module.as_str()).collect();
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "one row per module");
}
