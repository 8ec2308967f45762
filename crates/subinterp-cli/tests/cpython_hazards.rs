//! Real code that crashes CPython 3.12.1 and 3.13.0 when it runs in several
//! interpreters at once, run through the real binary: the host survives each case
//! because the runtime imports extension modules in the main interpreter first (see
//! `subinterp::hazards`). Each case ran into SIGABRT or SIGSEGV in most runs before.
//!
//! The third-party packages come from PyPI into a virtual environment made once under
//! Cargo's target directory (one per Python); making it needs `pip` to reach PyPI.

mod common;
#[path = "../../subinterp/tests/wheel_venv/mod.rs"]
mod wheel_venv;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{code, stderr, stdout, subinterp, TempDir};

/// Pinned, with cp312 and cp313 wheels: msgpack and PyYAML (Cython speed-ups that
/// isolated interpreters refuse, both importing `datetime`), psutil (a single-phase
/// module), pytest and a package whose wheel ships its own test suite (toolz).
const REQUIREMENTS: [&str; 5] = [
    "msgpack==1.2.4",
    "PyYAML==6.0.4",
    "psutil==7.2.2",
    "pytest==9.2.0",
    "toolz==1.0.0",
];

fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        wheel_venv::make("hazards-venv", &REQUIREMENTS).unwrap_or_else(|err| panic!("{err}"))
    })
}

/// Runs `subinterp ARGS` with the virtual environment active.
fn in_venv(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(args)
        .current_dir(cwd)
        .env("VIRTUAL_ENV", venv())
        .output()
        .expect("run the subinterp binary")
}

/// `run ARGS` `times` times; each must end normally with status 0.
fn survives(args: &[&str], times: usize, venv: bool) {
    let dir = TempDir::new("hazards");
    for n in 0..times {
        let out = if venv {
            in_venv(dir.path(), args)
        } else {
            subinterp(dir.path(), args)
        };
        // `code` panics with the output when a signal killed the process.
        assert_eq!(code(&out), 0, "run {n} of {args:?}:\n{}", stderr(&out));
    }
}

// python/cpython#136423 (3.13.0: `_datetime`'s static types are freed by the first
// interpreter to end) and #116510 (3.12.1: `_datetime` is single-phase).
#[test]
fn datetime_in_four_interpreters() {
    survives(
        &[
            "run",
            "-n",
            "4",
            "-c",
            "import datetime; datetime.datetime.now()",
        ],
        5,
        false,
    );
}

// python/cpython#136423 again: `zoneinfo`'s C part loads `_datetime` (3.13). On 3.12
// isolated interpreters cannot import `zoneinfo` at all (its C part needs `_datetime`'s C
// API, which they refuse): each of the four fails with an exception, and the process
// must still end normally (without the runtime's workaround it aborted on both versions).
#[test]
fn zoneinfo_in_four_interpreters() {
    let refused = env!("SUBINTERP_BUILD_PYTHON_VERSION") == "3.12";
    let dir = TempDir::new("hazards-zoneinfo");
    for n in 0..5 {
        let out = subinterp(
            dir.path(),
            &[
                "run",
                "-n",
                "4",
                "--json",
                "-c",
                "import zoneinfo, _zoneinfo, datetime; datetime.datetime.now(datetime.UTC)",
            ],
        );
        // `code` panics with the output when a signal killed the process.
        let status = code(&out);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("run {n}: not a JSON report ({e}):\n{}", stderr(&out)));
        let failed = report["interpreters"]
            .as_array()
            .expect("a list of interpreters")
            .iter()
            .filter(|entry| entry["status"] == "error")
            .count();
        if refused {
            assert_eq!((status, failed), (1, 4), "run {n}:\n{}", stdout(&out));
        } else {
            assert_eq!((status, failed), (0, 0), "run {n}:\n{}", stdout(&out));
        }
    }
}

// 3.12.1: `_decimal` is single-phase; refused, it has already run its initialisation.
#[test]
fn decimal_in_four_interpreters() {
    survives(
        &[
            "run",
            "-n",
            "4",
            "-c",
            "import decimal; decimal.Decimal(1) / 3",
        ],
        5,
        false,
    );
}

/// `map TARGET -w WORKERS` over the numbers 1..=count, 3 times: each run must end with
/// status 0 and one result per line.
fn map_survives(dir: &TempDir, target: &str, workers: &str, count: usize, venv: bool) {
    use std::io::Write;
    use std::process::Stdio;
    let input: String = (1..=count).map(|i| format!("{i}\n")).collect();
    for n in 0..3 {
        let mut command = Command::new(env!("CARGO_BIN_EXE_subinterp"));
        command
            .args(["map", target, "-w", workers])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if venv {
            command.env("VIRTUAL_ENV", self::venv());
        }
        let mut child = command.spawn().expect("run subinterp map");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.clone();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        assert_eq!(code(&out), 0, "run {n}:\n{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), count, "{}", stderr(&out));
    }
}

#[test]
fn map_with_workers_using_datetime() {
    let dir = TempDir::new("hazards-map");
    dir.write(
        "dtf.py",
        "import datetime\n\ndef f(x):\n    return datetime.date.fromordinal(x).isoformat()\n",
    );
    map_survives(&dir, "dtf:f", "4", 1000, false);
}

// The compiled modules of msgpack and PyYAML are refused; the packages fall back to
// pure Python, and the process used to abort at the end through `_datetime`.
#[test]
fn msgpack_and_yaml_in_two_interpreters() {
    let code = "import msgpack, yaml\n\
                assert msgpack.unpackb(msgpack.packb([1, 'a'])) == [1, 'a']\n\
                assert yaml.safe_load('a: [1, 2]') == {'a': [1, 2]}";
    survives(&["run", "-n", "2", "-c", code], 3, true);
}

#[test]
fn map_with_workers_using_msgpack() {
    let dir = TempDir::new("hazards-mpk");
    dir.write(
        "mpk.py",
        "import msgpack\n\ndef f(x):\n    return msgpack.unpackb(msgpack.packb([x, str(x)]))\n",
    );
    map_survives(&dir, "mpk:f", "2", 100, true);
}

// psutil's `_psutil_linux` is single-phase: isolated interpreters refuse it cleanly, and
// two legacy interpreters that load it crashed 3.12.1 at their end.
#[test]
fn psutil_refused_in_isolated_and_working_in_legacy() {
    let dir = TempDir::new("hazards-psutil");
    let out = in_venv(dir.path(), &["run", "-n", "2", "-c", "import psutil"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not support loading in subinterpreters"),
        "{}",
        stderr(&out)
    );
    survives(
        &[
            "run",
            "--config",
            "legacy",
            "-n",
            "2",
            "-c",
            "import psutil; assert psutil.cpu_count() >= 1",
        ],
        4,
        true,
    );
}

/// A real test suite in one, two and four interpreters at once gives the same result as
/// in one. pytest imports `datetime`, which is what crashed 3.13.0, and `hashlib`, whose
/// keyword tuples crashed 3.12.1 when the main interpreter was finalised
/// (python/cpython#119213). `faulthandler` is a
/// single-phase built-in module that isolated interpreters refuse, hence `-p
/// no:faulthandler`.
#[test]
fn a_real_test_suite_in_several_interpreters() {
    let dir = TempDir::new("hazards-pytest");
    let suite = "import sys, pytest\n\
                 code = pytest.main(['-q', '-p', 'no:cacheprovider', '--capture=sys', \
                 '-p', 'no:faulthandler', '--pyargs', 'toolz', '-W', 'ignore'])\n\
                 print('pytest exit', int(code))\n\
                 sys.exit(int(code))\n";
    let mut one = None;
    for copies in ["1", "2", "4", "2", "4"] {
        let out = in_venv(dir.path(), &["run", "-n", copies, "-c", suite]);
        let text = stdout(&out);
        assert_eq!(code(&out), 0, "{copies} copies:\n{text}\n{}", stderr(&out));
        let n: usize = copies.parse().unwrap();
        let summaries: Vec<&str> = text.lines().filter(|l| l.contains(" passed")).collect();
        assert_eq!(summaries.len(), n, "{copies} copies:\n{text}");
        assert_eq!(text.matches("pytest exit 0").count(), n, "{text}");
        // The same counts as one copy gives ("180 passed in 0.52s": drop the time).
        let counts: Vec<&str> = summaries
            .iter()
            .map(|l| l.split(" in ").next().unwrap().trim())
            .collect();
        let first = one.get_or_insert_with(|| counts[0].to_owned()).clone();
        assert!(counts.iter().all(|c| *c == first), "{counts:?} vs {first}");
    }
}

/// With the preparation turned off, CPython crashes while the workers end (the cases
/// above); the results and the summary are out by then and the exit status is settled:
/// the command exits 0 and says what happened, instead of dying of SIGABRT. (On 3.12.1,
/// without the preparation, the second interpreter to import `_decimal` already crashes
/// while importing it: there is no result to keep.)
#[test]
fn a_crash_after_every_result_is_written_keeps_the_run_s_status() {
    if env!("SUBINTERP_BUILD_PYTHON_VERSION") != "3.13" {
        return;
    }
    let dir = TempDir::new("hazards-settled");
    dir.write(
        "dtd.py",
        "import datetime, decimal\n\ndef f(x):\n    return str(datetime.date.fromordinal(x) + datetime.timedelta(days=1)) + str(decimal.Decimal(x) / 3)\n",
    );
    let input: String = (1..=400).map(|i| format!("{i}\n")).collect();
    let mut crashed = 0;
    for n in 0..6 {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_subinterp"))
            .args(["map", "dtd:f", "-w", "4"])
            .current_dir(dir.path())
            .env("SUBINTERP_PREPARE_EXTENSIONS", "0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run subinterp map");
        let mut stdin = child.stdin.take().unwrap();
        let text = input.clone();
        let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let out = child.wait_with_output().unwrap();
        let _ = writer.join();
        let err = stderr(&out);
        assert_eq!(code(&out), 0, "run {n}:\n{err}");
        assert_eq!(stdout(&out).lines().count(), 400, "run {n}:\n{err}");
        assert!(err.contains("400 records"), "run {n}: no summary:\n{err}");
        if err.contains("CPython crashed while the interpreters ended") {
            crashed += 1;
        }
    }
    eprintln!("{crashed} of 6 runs crashed at the end and kept their status");
}
