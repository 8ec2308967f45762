//! `subinterp map` over a module that imports numpy (a real wheel from PyPI, installed
//! into a virtual environment made by this test): isolated interpreters refuse numpy, so
//! the records run in worker processes, with no option, and the summary says how many.
//! Making the environment needs `pip` to reach PyPI: without it, the test says so and
//! passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

mod common;
use common::{code, stderr, TempDir};

const REQUIREMENTS: [&str; 1] = ["numpy==2.5.5"];

fn venv() -> Option<&'static Path> {
    static VENV: OnceLock<Option<PathBuf>> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("map-process-venv");
        let marker = dir.join("subinterp-requirements.txt");
        let wanted = REQUIREMENTS.join("\n");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
            return Some(dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
        let made = Command::new(env!("SUBINTERP_BUILD_PYTHON"))
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("run python -m venv");
        assert!(made.success(), "python -m venv failed");
        let out = Command::new(dir.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--no-input", "--only-binary=:all:"])
            .args(REQUIREMENTS)
            .output()
            .expect("run pip");
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot install {REQUIREMENTS:?} from PyPI (unreachable?):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        std::fs::write(&marker, wanted).unwrap();
        Some(dir)
    })
    .as_deref()
}

const MODULE: &str = r#"
import numpy as np

def norm(record):
    return {"n": record, "norm": float(np.linalg.norm(np.arange(record, dtype=np.float64)))}
"#;

fn map_in_venv(dir: &Path, venv: &Path, target: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .current_dir(dir)
        .env("VIRTUAL_ENV", venv)
        .args([
            "map",
            target,
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "-w",
            "2",
        ])
        .output()
        .expect("run subinterp")
}

#[test]
fn a_module_that_imports_numpy_runs_in_worker_processes_with_no_option() {
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("map-numpy");
    dir.write("npfuncs.py", MODULE);
    let input: String = (0..50).map(|n| format!("{n}\n")).collect();
    dir.write("in.jsonl", &input);
    let out = map_in_venv(dir.path(), venv, "npfuncs:norm");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let results: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 50);
    for (n, result) in results.iter().enumerate() {
        let expected = (0..n).map(|i| (i * i) as f64).sum::<f64>().sqrt();
        assert_eq!(result["ok"]["n"], n);
        let got = result["ok"]["norm"].as_f64().unwrap();
        assert!(
            (got - expected).abs() <= 1e-9 * expected.max(1.0),
            "{n}: {got}"
        );
    }
    let summary = stderr(&out);
    assert!(summary.contains("50 records, 0 errors"), "{summary}");
    assert!(
        summary.contains("50 records in worker processes"),
        "{summary}"
    );
}

#[test]
fn a_pure_module_runs_no_worker_process() {
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("map-pure");
    dir.write("purefuncs.py", "def inc(record):\n    return record + 1\n");
    dir.write("in.jsonl", "1\n2\n");
    let out = map_in_venv(dir.path(), venv, "purefuncs:inc");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("0 records in worker processes"),
        "{}",
        stderr(&out)
    );
}
