//! `subinterp map` over modules that import numpy, orjson, pydantic-core, lxml and regex
//! (real wheels from PyPI, installed into a virtual environment made by this test):
//! isolated interpreters refuse each, so the records run in worker processes, with no
//! option, and the summary says how many.
//! Making the environment needs `pip` to reach PyPI: without it, the test says so and
//! passes.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
#[path = "../../subinterp/tests/wheel_venv/mod.rs"]
mod wheel_venv;
use common::{code, stderr, TempDir};

/// The virtual environment with the refused wheels, or `None` if PyPI could not be reached.
fn venv() -> Option<&'static Path> {
    wheel_venv::refused("map-process-venv")
}

const MODULE: &str = r#"
import numpy as np

def norm(record):
    return {"n": record, "norm": float(np.linalg.norm(np.arange(record, dtype=np.float64)))}
"#;

fn map_in_venv(dir: &Path, venv: &Path, target: &str) -> Output {
    map_in_venv_with(dir, venv, target, &[])
}

fn map_in_venv_with(dir: &Path, venv: &Path, target: &str, options: &[&str]) -> Output {
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
        .args(options)
        .output()
        .expect("run subinterp")
}

/// The records `subinterp map` wrote to `out.jsonl` in `dir`.
fn results(dir: &TempDir) -> Vec<Value> {
    std::fs::read_to_string(dir.path().join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
    let results = results(&dir);
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

/// Each record returns the child processes that `subinterp map` (the process running the
/// record's interpreter) has at that moment.
const CHILDREN_MODULE: &str = r#"
import glob
import os

def children(record):
    found = []
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with open(path) as f:
            found += f.read().split()
    return {"n": record, "children": found}
"#;

#[test]
fn a_pure_module_runs_no_worker_process() {
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("map-pure");
    dir.write("purefuncs.py", CHILDREN_MODULE);
    let input: String = (0..200).map(|n| format!("{n}\n")).collect();
    dir.write("in.jsonl", &input);
    let out = map_in_venv(dir.path(), venv, "purefuncs:children");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("0 records in worker processes"),
        "{}",
        stderr(&out)
    );
    // No process was started while the records ran.
    let results = results(&dir);
    assert_eq!(results.len(), 200);
    for result in &results {
        assert_eq!(result["ok"]["children"], serde_json::json!([]), "{result}");
    }
}

/// Each record goes through orjson, pydantic-core, lxml and regex.
const WHEELS_MODULE: &str = r#"
import orjson
import regex
from lxml import etree
from pydantic_core import SchemaValidator, core_schema

ITEM = SchemaValidator(
    core_schema.typed_dict_schema(
        {"name": core_schema.typed_dict_field(core_schema.str_schema()),
         "qty": core_schema.typed_dict_field(core_schema.int_schema())}
    )
)

def handle(record):
    item = ITEM.validate_python(record)
    xml = f'<item qty="{item["qty"]}"><name>{item["name"]}</name></item>'
    qty = int(etree.fromstring(xml).xpath("number(@qty)"))
    caps = regex.findall(r"\p{Lu}", item["name"])
    return orjson.loads(orjson.dumps({"name": item["name"], "qty": qty, "caps": caps}))
"#;

#[test]
fn orjson_pydantic_core_lxml_and_regex_records_run_in_worker_processes() {
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("map-wheels");
    dir.write("wheelfuncs.py", WHEELS_MODULE);
    // "qty" as a string: pydantic-core's lax mode makes it an int.
    let input: String = (0..20)
        .map(|n| format!("{{\"name\": \"Ünit{n}X\", \"qty\": \"{n}\"}}\n"))
        .collect();
    dir.write("in.jsonl", &input);
    let out = map_in_venv(dir.path(), venv, "wheelfuncs:handle");
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let results = results(&dir);
    assert_eq!(results.len(), 20);
    for (n, result) in results.iter().enumerate() {
        assert_eq!(
            result["ok"],
            serde_json::json!({"name": format!("Ünit{n}X"), "qty": n, "caps": ["Ü", "X"]}),
            "{result}"
        );
    }
    let summary = stderr(&out);
    assert!(summary.contains("20 records, 0 errors"), "{summary}");
    assert!(
        summary.contains("20 records in worker processes"),
        "{summary}"
    );
}

#[test]
fn the_fallback_can_be_turned_off_and_a_module_sent_to_processes_from_the_start() {
    let Some(venv) = venv() else { return };
    let dir = TempDir::new("map-options");
    dir.write("npfuncs.py", MODULE);
    dir.write("purefuncs.py", CHILDREN_MODULE);
    dir.write("in.jsonl", "1\n2\n3\n");
    // Off: the refusal, met importing the module, is a set-up error naming it.
    let out = map_in_venv_with(dir.path(), venv, "npfuncs:norm", &["--no-process-fallback"]);
    assert_eq!(code(&out), 2, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("does not support loading in subinterpreters"),
        "{}",
        stderr(&out)
    );
    // A pure module in processes from the start: the records see their own process.
    let out = map_in_venv_with(dir.path(), venv, "purefuncs:children", &["--in-processes"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("3 records in worker processes"),
        "{}",
        stderr(&out)
    );
}
