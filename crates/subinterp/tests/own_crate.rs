//! A crate of one's own that depends on `subinterp`, made as the README's "Using
//! subinterp from your own crate" says: built out of this repository (so its
//! `.cargo/config.toml` does not apply), it starts without `LD_LIBRARY_PATH` or
//! `PYTHONHOME`, its two `#[test]`s each get the runtime with `Runtime::get_or_init`, and
//! an error its `main` returns is printed as Python prints it. Before that, the same crate
//! built with an unsuitable `python3` first on `PATH` fails with a plain message naming a
//! suitable interpreter.
//!
//! The inner builds use the Python this test was built with (`PYO3_PYTHON` of the outer
//! build, e.g. the one CI chooses per version) and target directories of their own under
//! this build's target directory, so later runs rebuild only what changed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The Python the outer build (this test) links against.
const PYTHON: &str = env!("SUBINTERP_BUILD_PYTHON");
const VERSION: &str = env!("SUBINTERP_BUILD_PYTHON_VERSION");

const CARGO_TOML: &str = r#"[package]
name = "own-crate"
version = "0.1.0"
edition = "2021"

[dependencies]
subinterp = { path = "@REPO@/crates/subinterp" }

[build-dependencies]
subinterp-build = { path = "@REPO@/crates/subinterp-build" }

[workspace]
"#;

const BUILD_RS: &str = "fn main() {\n    subinterp_build::link();\n}\n";

const MAIN_RS: &str = r#"use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

fn main() -> subinterp::Result<()> {
    let rt = Runtime::get_or_init(&RuntimeConfig::new())?;
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;
    if std::env::args().nth(1).as_deref() == Some("fail") {
        interp.exec("def parse(text):\n    return int(text)\n\nparse('twelve')\n")?;
    }
    let found = interp.eval("__import__('platform').python_version() + ' ' + __import__('json').dumps([1, 2])")?;
    if let Value::Str(text) = found {
        println!("{text}");
    }
    Ok(())
}
"#;

const TEST_RS: &str = r#"use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

fn square(x: i64) -> i64 {
    let rt = Runtime::get_or_init(&RuntimeConfig::new()).expect("the runtime");
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated()).expect("an interpreter");
    match interp.eval(&format!("{x} * {x}")).expect("eval") {
        Value::Int(n) => n,
        other => panic!("{other:?}"),
    }
}

#[test]
fn first() {
    assert_eq!(square(3), 9);
}

#[test]
fn second() {
    assert_eq!(square(4), 16);
}
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository")
}

/// Writes the crate into a directory outside the repository.
fn write_crate() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("subinterp-own-crate-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    let repo = repo();
    let toml = CARGO_TOML.replace("@REPO@", repo.to_str().expect("a UTF-8 path"));
    std::fs::write(dir.join("Cargo.toml"), toml).unwrap();
    std::fs::write(dir.join("build.rs"), BUILD_RS).unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN_RS).unwrap();
    std::fs::write(dir.join("tests/two.rs"), TEST_RS).unwrap();
    // The repository's lock file: the crate's dependencies resolve to the versions already
    // built and downloaded, without the network.
    std::fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    dir
}

/// `cargo` in the crate's directory, with an environment of its own: no Python chosen
/// (the caller sets `PYO3_PYTHON` when it wants one), `path` first on `PATH`.
fn cargo(dir: &Path, target: &Path, path_first: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env("PATH", path_with(path_first))
        .env("RUST_BACKTRACE", "1");
    for var in [
        "PYO3_PYTHON",
        "PYO3_CONFIG_FILE",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "PYTHONHOME",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn path_with(first: &Path) -> std::ffi::OsString {
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(first.to_owned()).chain(std::env::split_paths(&rest)))
        .unwrap()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// [`run`], showing standard error only.
fn run_quietly(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A program started as a user starts it: no library path, no Python home or path.
fn bare(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "LD_LIBRARY_PATH",
        "PYTHONHOME",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "PYO3_PYTHON",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// An interpreter subinterp cannot build against (older than 3.12), if this machine has
/// one.
fn unsuitable_python() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = ["/usr/bin/python3", "/usr/bin/python3.11"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Ok(out) = Command::new("pyenv").args(["prefix", "3.11"]).output() {
        let prefix = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !prefix.is_empty() {
            candidates.push(Path::new(&prefix).join("bin/python3"));
        }
    }
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args([
                "-c",
                "import sys; sys.exit(0 if (3, 9) <= sys.version_info < (3, 12) else 1)",
            ])
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A directory of `python`, `python3` (the unsuitable interpreter) and `python3.X` (the
/// outer build's), put first on `PATH`.
fn shims(dir: &Path, unsuitable: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let shims = dir.join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let minor: Vec<&str> = VERSION.split('.').take(2).collect();
    for (name, target) in [
        ("python".to_owned(), unsuitable),
        ("python3".to_owned(), unsuitable),
        (format!("python{}", minor.join(".")), Path::new(PYTHON)),
    ] {
        let path = shims.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\nexec '{}' \"$@\"\n", target.display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    shims
}

#[test]
fn a_crate_of_ones_own_builds_finds_python_and_starts_without_environment_variables() {
    let dir = write_crate();
    let targets = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("own-crate");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();

    // 1. An unsuitable python3 first on PATH and no PYO3_PYTHON: a plain error that names
    //    the interpreter to choose, and how.
    match unsuitable_python() {
        Some(old) => {
            let shims = shims(&dir, &old);
            let out = run(cargo(&dir, &targets.join("unsuitable"), &shims).args([
                "build",
                "--offline",
                "--quiet",
            ]));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "the build must fail");
            assert!(
                stderr.contains("subinterp cannot build against")
                    && stderr.contains("subinterp needs 3.12 or newer"),
                "{stderr}"
            );
            assert!(
                !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
                "no panic: {stderr}"
            );
            let minor: Vec<&str> = VERSION.split('.').take(2).collect();
            let line = stderr
                .lines()
                .find(|l| l.contains(&format!("python{} on PATH: ", minor.join("."))))
                .unwrap_or_else(|| panic!("the search looked on PATH: {stderr}"));
            assert!(
                line.contains(PYTHON) && line.ends_with("suitable"),
                "{line}"
            );
            assert!(stderr.contains("PYO3_PYTHON="), "{stderr}");
        }
        None => eprintln!("no Python older than 3.12 on this machine: the refusal is not tried"),
    }

    // 2. As the README says: PYO3_PYTHON names the interpreter, build.rs calls
    //    subinterp_build::link().
    let target = targets.join("target");
    let out = run(cargo(&dir, &target, &empty)
        .env("PYO3_PYTHON", PYTHON)
        .args(["build", "--offline", "--quiet"]));
    assert!(out.status.success(), "the crate builds");
    let binary = target.join("debug/own-crate");

    let out = run(bare(&binary).current_dir(&dir));
    assert!(
        out.status.success(),
        "the binary starts with no LD_LIBRARY_PATH or PYTHONHOME"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), format!("{} [1, 2]", full_version()));

    // 3. `fn main() -> subinterp::Result<()>` reports a Python exception as Python does.
    let out = run(bare(&binary).arg("fail").current_dir(&dir));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("Error: Traceback (most recent call last):\n"),
        "{stderr}"
    );
    assert!(stderr.contains(", in parse\n"), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("ValueError: invalid literal for int() with base 10: 'twelve'"),
        "{stderr}"
    );
    assert!(!stderr.contains("PyException"), "{stderr}");

    // 4. Two tests, each getting the runtime, one after the other: through `cargo test`,
    //    and the test binary run by itself (cargo adds libpython's directory to the
    //    library path of what it runs).
    let out = run(cargo(&dir, &target, &empty)
        .env("PYO3_PYTHON", PYTHON)
        .args(["test", "--offline", "--quiet", "--", "--test-threads=1"]));
    assert!(out.status.success(), "cargo test");
    let out = run_quietly(
        cargo(&dir, &target, &empty)
            .env("PYO3_PYTHON", PYTHON)
            .args([
                "test",
                "--offline",
                "--no-run",
                "--message-format=json",
                "--test",
                "two",
            ]),
    );
    assert!(out.status.success());
    let executable = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["target"]["kind"][0] == "test")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("the test executable");
    let out = run(bare(&executable).arg("--test-threads=1").current_dir(&dir));
    assert!(out.status.success(), "the tests run one after the other");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 passed"),
        "both tests ran"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The full version of the outer build's Python (`3.13.0`), which the binary prints.
fn full_version() -> String {
    let out = Command::new(PYTHON)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .expect("run the build's Python");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
