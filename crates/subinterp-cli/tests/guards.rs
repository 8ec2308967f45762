//! `--guard`, `--allow-write` and `--stats` of `subinterp map`, and the per-interpreter
//! stats of `run --json`.

use serde_json::Value;

mod common;
use common::{code, stderr, stdout, subinterp, subinterp_with_stdin, TempDir};

const MODULE: &str = r#"
import os

def meddle(record):
    if record == 1:
        os.chdir("/")
    if record == 2:
        os.environ["SUBINTERP_CLI_GUARD"] = "1"
    if record == 3:
        raise ValueError("three")
    return os.getcwd() == os.environ["START_DIR"]

def write(path):
    with open(path, "w") as f:
        f.write("written")
    return path
"#;

fn setup(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    dir.write("lib/guarded.py", MODULE);
    dir
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn map_refuses_guarded_actions_and_prints_its_stats() {
    let dir = setup("map-guard");
    let start = dir.path().canonicalize().unwrap();
    let init = "import os; os.environ.setdefault('START_DIR', os.getcwd())";
    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "guarded:meddle",
            "--path",
            "lib",
            "-w",
            "1",
            "--guard",
            "chdir,env=count",
            "--init",
            init,
            "--stats",
        ],
        "0\n1\n2\n3\n4\n",
    );
    // env is counted, not refused: the worker set START_DIR, record 2 succeeds.
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[1]["error"]["type"], "builtins.PermissionError");
    let message = results[1]["error"]["message"].as_str().unwrap();
    assert!(message.contains("'chdir' guard rail"), "{message}");
    assert_eq!(results[2]["ok"], true, "{results:?}");
    assert_eq!(results[3]["error"]["type"], "builtins.ValueError");
    assert_eq!(
        results[4]["ok"], true,
        "the directory did not change: {results:?}"
    );
    let err = stderr(&out);
    let stats: Value = serde_json::from_str(err.lines().last().unwrap()).expect("stats JSON");
    assert_eq!(stats["tasks_ok"], 3, "{stats}");
    assert_eq!(stats["tasks_failed"], 2, "{stats}");
    assert_eq!(stats["guard_refused"], 1, "{stats}");
    assert_eq!(stats["guards"]["chdir"]["refused"], 1, "{stats}");
    // The --init and record 2 both set the variable: counted twice.
    assert_eq!(stats["guards"]["env"]["counted"], 2, "{stats}");
    assert_eq!(stats["interpreters_created"], 1, "{stats}");
    assert_eq!(stats["interpreters_ended"], 1, "{stats}");
    assert!(stats["cpu_seconds"].is_null() || stats["cpu_seconds"].is_number());
    assert!(start.is_dir());
}

#[test]
fn map_allows_writes_only_under_the_given_directories() {
    let dir = setup("map-write");
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let input = "\"out/a.txt\"\n\"b.txt\"\n";
    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "guarded:write",
            "--path",
            "lib",
            "--allow-write",
            "out",
        ],
        input,
    );
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results[0]["ok"], "out/a.txt", "{results:?}");
    assert_eq!(results[1]["error"]["type"], "builtins.PermissionError");
    assert!(dir.path().join("out/a.txt").exists());
    assert!(!dir.path().join("b.txt").exists());
}

#[test]
fn run_json_reports_each_interpreters_stats() {
    let dir = TempDir::new("run-stats");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "--json",
            "--guard",
            "env=count",
            "-c",
            "import os\nos.environ['SUBINTERP_RUN_STATS'] = '1'",
            "-c",
            "import os\nos.chdir('/')",
        ],
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &report["interpreters"][0]["stats"];
    assert_eq!(first["guards"]["env"]["counted"], 1, "{first}");
    // The script and the command's own set-up and flush, each an operation.
    assert_eq!(first["tasks_failed"], 0, "{first}");
    assert!(first["tasks_ok"].as_u64().unwrap() >= 1, "{first}");
    assert_eq!(first["interpreters_ended"], 1, "{first}");
    for field in ["memory_bytes", "memory_peak_bytes", "cpu_seconds"] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
    let second = &report["interpreters"][1]["stats"];
    assert_eq!(
        second["guard_counted"], 0,
        "chdir was not guarded: {second}"
    );
}

#[test]
fn run_refuses_with_the_rule_named() {
    let dir = TempDir::new("run-guard");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "--guard",
            "process",
            "-c",
            "import os\nos.chdir('/')",
        ],
    );
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("PermissionError"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("'chdir' guard rail"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_rules_are_usage_errors_and_help_explains_the_options() {
    let dir = TempDir::new("guard-usage");
    let out = subinterp(dir.path(), &["map", "m:f", "--guard", "chdir,cwd"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("unknown guard rule \"cwd\""),
        "{}",
        stderr(&out)
    );
    for command in ["map", "run"] {
        let help = stdout(&subinterp(dir.path(), &[command, "--help"]));
        for text in [
            "--guard <RULES>",
            "--allow-write <DIR>",
            "not a security boundary",
        ] {
            assert!(
                help.contains(text),
                "{command} --help lacks {text:?}:\n{help}"
            );
        }
    }
    let help = stdout(&subinterp(dir.path(), &["map", "--help"]));
    assert!(help.contains("--stats"), "{help}");
}
