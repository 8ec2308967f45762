//! A virtual environment for the build's Python holding pinned wheels from PyPI, for the
//! tests that need real third-party packages (of this crate, and of the CLI, which
//! includes this file by path).
//!
//! It is made once under Cargo's target directory (one per Python, since each Python
//! builds into its own target directory) and reused while its requirement list is
//! unchanged. Making it needs `pip` to reach PyPI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Wheels the worker-process tests use: each has wheels for CPython 3.12 and 3.13
/// (manylinux x86_64), and CPython refuses each in an isolated interpreter ("module X
/// does not support loading in subinterpreters": numpy's and lxml's Cython modules and
/// regex's C module are single-phase, orjson's and pydantic-core's are PyO3 modules).
#[allow(dead_code)]
pub const REFUSED: [&str; 5] = [
    "numpy==2.5.5",
    "orjson==3.13.0",
    "pydantic-core==2.50.4",
    "lxml==6.1.3",
    "regex==2026.11.15",
];

/// The environment `name` with [`REFUSED`] installed, made once per test binary; `None`
/// (said on stderr) if PyPI could not be reached, and the tests that need it pass.
#[allow(dead_code)]
pub fn refused(name: &str) -> Option<&'static Path> {
    static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();
    VENV.get_or_init(|| {
        make(name, &REFUSED)
            .map_err(|err| eprintln!("SKIPPED: cannot install {REFUSED:?}: {err}"))
            .ok()
    })
    .as_deref()
}

/// The environment `name` with `requirements` installed (binary wheels only), made if it
/// is missing or was made for another list; the error is what failed, with its output
/// (PyPI unreachable, say). Callers make it once per test binary (a `OnceLock`), so that
/// tests running at the same time do not make it twice.
pub fn make(name: &str, requirements: &[&str]) -> Result<PathBuf, String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let marker = dir.join("subinterp-requirements.txt");
    let wanted = requirements.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    run(Command::new(env!("SUBINTERP_BUILD_PYTHON"))
        .args(["-m", "venv"])
        .arg(&dir))?;
    run(Command::new(dir.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--only-binary=:all:",
        ])
        .args(requirements))?;
    std::fs::write(&marker, wanted).map_err(|e| format!("cannot write {marker:?}: {e}"))?;
    Ok(dir)
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
