//! Checks the Python the crate links against and tells the crates that depend on it
//! where its `libpython` is.
//!
//! The interpreter is chosen by `pyo3-ffi`, which compiles the bindings before this script
//! runs: `PYO3_PYTHON` (or `PYO3_CONFIG_FILE`) if set — the repository's
//! `.cargo/config.toml` points it at `tools/python3` — otherwise an active virtual
//! environment, otherwise the first `python`/`python3` on `PATH`. This script refuses
//! anything older than 3.12 or without a shared `libpython`: it then looks for a suitable
//! interpreter itself (`python3`, `python3.13`, `python3.12`, `python3.14` on `PATH`,
//! pyenv's, uv's) and ends with a plain message naming what it found and how to choose it
//! (`PYO3_PYTHON`). It cannot switch by itself: the bindings were already compiled for
//! the interpreter chosen.
//!
//! On success it exposes the `Py_3_13` style cfgs, adds an rpath to `libpython` for the
//! crate's own tests and examples, bakes the interpreter's path in
//! (`SUBINTERP_BUILD_PYTHON`: the runtime finds its home, the standard library, from it),
//! and publishes `libdir`, `python` and `version` to the build scripts of dependent crates
//! (`links = "subinterp"`: `DEP_SUBINTERP_LIBDIR`...), which `subinterp_build::link()`
//! turns into their own rpath.

use std::path::{Path, PathBuf};
use std::process::Command;

use pyo3_build_config::{InterpreterConfig, PythonVersion};

const MINIMUM: PythonVersion = PythonVersion {
    major: 3,
    minor: 12,
};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let config = pyo3_build_config::get();
    if config.version() < MINIMUM || !config.shared() {
        refuse(config);
    }
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    if let Some(exe) = config.executable() {
        println!("cargo:rustc-env=SUBINTERP_BUILD_PYTHON={exe}");
        println!("cargo:python={exe}");
    }
    println!(
        "cargo:rustc-env=SUBINTERP_BUILD_PYTHON_VERSION={}",
        config.version()
    );
    println!("cargo:version={}", config.version());
    if let Some(dir) = config.lib_dir() {
        println!("cargo:libdir={dir}");
    }
}

/// Ends the build with a message saying what is wrong with the Python chosen, which
/// suitable ones exist, and how to choose one. No panic: a backtrace would only hide it.
fn refuse(config: &InterpreterConfig) -> ! {
    let chosen = config.executable().unwrap_or("<unknown interpreter>");
    let mut problem = Vec::new();
    if config.version() < MINIMUM {
        problem.push(format!(
            "it is Python {}, and subinterp needs 3.12 or newer (per-interpreter GIL)",
            config.version()
        ));
    }
    if !config.shared() {
        problem.push(
            "it has no shared libpython (CPython must be built with --enable-shared)".to_owned(),
        );
    }
    let mut text = format!(
        "subinterp cannot build against {chosen}: {}.\nThat interpreter was chosen by {}.\n",
        problem.join("; "),
        how_chosen()
    );
    let found = search();
    text.push_str("\nLooked for a CPython 3.12+ with a shared libpython:\n");
    for candidate in &found {
        text.push_str(&format!("  {}: {}\n", candidate.source, candidate.verdict));
    }
    match found.iter().find_map(|c| c.suitable.as_ref()) {
        Some(python) => text.push_str(&format!(
            "\nChoose it with PYO3_PYTHON, which both pyo3 and subinterp read:\n\
             \x20   PYO3_PYTHON={python} cargo build\n\
             or, for every build of your project, in its .cargo/config.toml:\n\
             \x20   [env]\n\
             \x20   PYO3_PYTHON = \"{python}\"\n",
            python = python.display()
        )),
        None => text.push_str(
            "\nNone is suitable. Install one, for example\n\
             \x20   PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install 3.13\n\
             or  uv python install 3.13\n\
             then choose it with PYO3_PYTHON=/path/to/bin/python3.13 (an environment \
             variable, or [env] in .cargo/config.toml).\n",
        ),
    }
    println!(
        "cargo:warning=subinterp needs CPython 3.12+ with a shared libpython; see the error below"
    );
    eprintln!("\n{text}");
    std::process::exit(1);
}

/// How pyo3 came to the interpreter it uses, from the same environment variables.
fn how_chosen() -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let Some(file) = var("PYO3_CONFIG_FILE") {
        format!("PYO3_CONFIG_FILE={file}")
    } else if let Some(python) = var("PYO3_PYTHON") {
        format!("PYO3_PYTHON={python}")
    } else if let Some(venv) = var("VIRTUAL_ENV") {
        format!("the active virtual environment (VIRTUAL_ENV={venv}); PYO3_PYTHON is not set")
    } else if let Some(conda) = var("CONDA_PREFIX") {
        format!("the active conda environment (CONDA_PREFIX={conda}); PYO3_PYTHON is not set")
    } else {
        "pyo3 as the first `python` or `python3` on PATH, as PYO3_PYTHON is not set".to_owned()
    }
}

/// One place a Python was looked for.
struct Candidate {
    source: String,
    verdict: String,
    suitable: Option<PathBuf>,
}

/// Every interpreter worth suggesting, in order of preference, with what each is.
fn search() -> Vec<Candidate> {
    let mut places: Vec<(String, Option<PathBuf>)> = Vec::new();
    for name in ["python3", "python3.13", "python3.12", "python3.14"] {
        places.push((format!("{name} on PATH"), on_path(name)));
    }
    let pyenv = on_path("pyenv");
    for version in ["3.13", "3.12"] {
        let found = pyenv.as_ref().and_then(|pyenv| {
            let out = Command::new(pyenv)
                .args(["prefix", version])
                .output()
                .ok()?;
            let prefix = String::from_utf8(out.stdout).ok()?;
            let prefix = prefix.lines().next()?.trim();
            (out.status.success() && !prefix.is_empty())
                .then(|| Path::new(prefix).join("bin").join("python3"))
        });
        if pyenv.is_some() {
            places.push((format!("`pyenv prefix {version}`"), found));
        }
    }
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")));
    if let Some(versions) = pyenv_root.map(|root| root.join("versions")) {
        let mut dirs: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(&versions)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let numbers: Vec<u32> = name
                    .split('.')
                    .map_while(|part| part.parse().ok())
                    .collect();
                (numbers.len() >= 2 && numbers[0] == 3 && numbers[1] >= 12)
                    .then(|| (numbers, entry.path()))
            })
            .collect();
        dirs.sort();
        for (_, dir) in dirs.into_iter().rev() {
            let python = dir.join("bin").join("python3");
            places.push(("pyenv's versions directory".to_owned(), Some(python)));
        }
    }
    if let Some(uv) = on_path("uv") {
        for version in ["3.13", "3.12"] {
            let found = Command::new(&uv)
                .args(["python", "find", "--no-project", version])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .and_then(|out| String::from_utf8(out.stdout).ok())
                .map(|path| PathBuf::from(path.trim()))
                .filter(|path| !path.as_os_str().is_empty());
            places.push((format!("`uv python find {version}`"), found));
        }
    }
    places
        .into_iter()
        .map(|(source, path)| {
            let Some(path) = path else {
                return Candidate {
                    source,
                    verdict: "not found".to_owned(),
                    suitable: None,
                };
            };
            let (verdict, suitable) = match probe(&path) {
                Ok(probe) => {
                    let cpython = probe.implementation == "CPython";
                    let ok = cpython && probe.version >= (3, 12) && probe.shared;
                    let verdict = format!(
                        "{} — {} {}.{}: {}",
                        probe.executable.display(),
                        probe.implementation,
                        probe.version.0,
                        probe.version.1,
                        if ok {
                            "suitable"
                        } else if !cpython {
                            "not CPython"
                        } else if probe.version < (3, 12) {
                            "too old"
                        } else {
                            "no shared libpython"
                        }
                    );
                    (verdict, ok.then_some(probe.executable))
                }
                Err(why) => (format!("{} — {why}", path.display()), None),
            };
            Candidate {
                source,
                verdict,
                suitable,
            }
        })
        .collect()
}

/// The first executable file `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| {
            path.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// What an interpreter says it is.
struct Probe {
    executable: PathBuf,
    implementation: String,
    version: (u32, u32),
    shared: bool,
}

const PROBE: &str = "import sys, sysconfig, platform; \
    print(platform.python_implementation()); \
    print(sys.version_info[0], sys.version_info[1]); \
    print(sysconfig.get_config_var('Py_ENABLE_SHARED') or 0); \
    print(sys.executable)";

fn probe(python: &Path) -> Result<Probe, String> {
    let out = Command::new(python)
        .args(["-I", "-c", PROBE])
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "does not run: {}",
            stderr.lines().next().unwrap_or("no output").trim()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let (Some(implementation), Some(version), Some(shared), Some(executable)) =
        (lines.next(), lines.next(), lines.next(), lines.next())
    else {
        return Err("not a Python 3 interpreter".to_owned());
    };
    let mut numbers = version.split_whitespace().map(|n| n.parse().unwrap_or(0));
    Ok(Probe {
        executable: PathBuf::from(executable),
        implementation: implementation.to_owned(),
        version: (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)),
        shared: shared.trim() == "1",
    })
}
