//! End-to-end tests of `subinterp check`, running the built binary.

use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{stderr, stdout, TempDir};

/// Runs `subinterp check` with `args`, outside any virtual environment.
fn check(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .arg("check")
        .args(args)
        .env_remove("VIRTUAL_ENV")
        .output()
        .expect("run the subinterp binary")
}

#[test]
fn json_output_has_the_documented_keys_and_exit_status() {
    let out = check(&["_json", "readline", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "readline is not ok: {}",
        stderr(&out)
    );
    let reports: Value = serde_json::from_str(&stdout(&out)).expect("one JSON document");
    let reports = reports.as_array().expect("an array");
    assert_eq!(reports.len(), 2);
    for report in reports {
        let keys: Vec<&str> = report
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "module",
                "verdict",
                "kind",
                "init",
                "multiple_interpreters",
                "gil",
                "shared_state",
                "culprit",
                "pool",
                "detail"
            ]
        );
    }
    let json = &reports[0];
    assert_eq!(json["module"], "_json");
    assert_eq!(json["verdict"], "ok");
    assert_eq!(json["kind"], "extension");
    assert_eq!(json["init"], "multi-phase");
    assert_eq!(json["multiple_interpreters"], "per_interpreter_gil");
    assert_eq!(json["culprit"], Value::Null);
    let readline = &reports[1];
    assert_eq!(readline["verdict"], "legacy-only");
    assert_eq!(readline["init"], "single-phase");
    assert_eq!(readline["multiple_interpreters"], Value::Null);
    assert_eq!(readline["gil"], Value::Null);
    assert_eq!(readline["culprit"], "readline");
    assert!(readline["detail"]
        .as_str()
        .unwrap()
        .contains("does not support loading in subinterpreters"));
}

#[test]
fn a_table_row_per_module_and_a_summary_line() {
    let out = check(&["_json", "math", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("MODULE"), "{text}");
    assert!(lines[0].contains("VERDICT") && lines[0].contains("REASON"));
    for (line, module) in lines[1..4].iter().zip(["_json", "math", "json"]) {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(module), "{text}");
        assert_eq!(words.next(), Some("ok"), "{text}");
    }
    assert!(lines[3].contains("pure Python"), "{text}");
    let summary = lines.last().unwrap();
    assert!(summary.starts_with("3 modules checked in "), "{text}");
    assert!(
        summary.ends_with(": 3 ok, 0 legacy-only, 0 broken"),
        "{text}"
    );
}

#[test]
fn modules_are_found_on_path_and_missing_ones_are_broken() {
    let dir = TempDir::new("path");
    std::fs::write(dir.path().join("cli_check_plain.py"), "VALUE = 1\n").unwrap();
    std::fs::create_dir(dir.path().join("cli_check_pkg")).unwrap();
    std::fs::write(
        dir.path().join("cli_check_pkg/__init__.py"),
        "try:\n    import _curses\nexcept ImportError:\n    _curses = None\n",
    )
    .unwrap();
    let path = dir.path().to_str().unwrap();
    let out = check(&["--path", path, "cli_check_plain", "cli_check_pkg", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(reports[0]["verdict"], "ok");
    assert_eq!(reports[0]["kind"], "python");
    assert_eq!(reports[1]["verdict"], "ok");
    assert_eq!(
        reports[1]["culprit"], "_curses",
        "the caught refusal is named"
    );

    let out = check(&["cli_check_no_such_module"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("broken"), "{text}");
    assert!(
        text.contains("No module named 'cli_check_no_such_module'"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_with_status_2() {
    for (args, said) in [
        (&[][..], "MODULE"),
        (&["not-a-module"][..], "not a module name"),
        (
            &["json", "--path", "/no/such/dir/for/subinterp"][..],
            "no such directory",
        ),
        (&["json", "--jobs", "0"][..], "--jobs"),
        (&["json", "--timeout", "0"][..], "--timeout"),
        (&["json", "--timeout", "1e20"][..], "at most"),
        (&["json", "--timeout", "1.5e19"][..], "at most"),
        (&["json", "--timeout=-1"][..], "--timeout"),
        (&["json", "--timeout", "nan"][..], "--timeout"),
    ] {
        let out = check(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(said), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn help_explains_verdicts_and_exit_statuses() {
    let out = check(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for word in [
        "legacy-only",
        "broken",
        "--all",
        "--json",
        "--path",
        "Exit status",
        "per_interpreter_gil",
        "shared_state",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
}

#[test]
fn an_output_that_cannot_be_written_is_an_error() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["check", "json"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write the output"),
        "{}",
        stderr(&out)
    );
}

/// Fails to import in any subinterpreter (not a refusal), imports in a process.
const NOT_IN_SUBINTERPRETERS: &str = r#"
try:
    import _interpreters as _i
except ImportError:
    import _xxsubinterpreters as _i
if _i.get_current() != _i.get_main():
    raise RuntimeError("this module runs only in a main interpreter")
"#;

#[test]
fn the_pool_column_and_key_say_where_a_pool_runs_each_module() {
    let dir = TempDir::new("pool");
    dir.write("cli_check_main_only.py", NOT_IN_SUBINTERPRETERS);
    dir.write("cli_check_fails.py", "raise ValueError('never imports')\n");
    let path = dir.path().to_str().unwrap();
    let modules = [
        "json",
        "readline",
        "cli_check_main_only",
        "cli_check_fails",
        "cli_check_no_such_module",
    ];
    let args = |json: bool| {
        let mut args = vec!["--path", path];
        args.extend(modules);
        if json {
            args.push("--json");
        }
        args
    };
    let out = check(&args(true));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let reports: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let pools: Vec<&str> = (0..modules.len())
        .map(|i| reports[i]["pool"].as_str().unwrap())
        .collect();
    // json: an isolated interpreter; readline (single-phase, refused): a worker process;
    // the rest: nowhere.
    assert_eq!(
        pools,
        ["interpreter", "process", "nowhere", "nowhere", "nowhere"],
        "{reports:#}"
    );
    let detail = |i: usize| reports[i]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(
        detail(1).contains("a pool runs it in a worker process"),
        "{}",
        detail(1)
    );
    assert_eq!(reports[1]["culprit"], "readline");
    assert!(detail(2).contains("not a refusal"), "{}", detail(2));
    assert!(detail(2).contains("imports in a process"), "{}", detail(2));

    let out = check(&args(false));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("VERDICT  ") && lines[0].contains("POOL"),
        "{text}"
    );
    for (line, (module, pool)) in lines[1..].iter().zip(modules.iter().zip(pools)) {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], *module, "{text}");
        assert_eq!(words[2], pool, "{text}");
    }
}
