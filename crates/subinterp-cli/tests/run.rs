//! End-to-end tests of `subinterp run`, running the built binary on scripts written to a
//! fresh temporary directory.

use std::collections::BTreeSet;
use std::process::Output;

use serde_json::Value;

mod common;
use common::{code, stderr, stdout, subinterp, TempDir};

fn report(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON document ({err}):\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

/// The report's `interpreters` list.
fn entries(report: &Value) -> &Vec<Value> {
    report["interpreters"]
        .as_array()
        .expect("`interpreters` is an array")
}

/// The field `key` of `entry` as a string.
fn text<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {entry}"))
}

#[test]
fn script_output_passes_through() {
    let dir = TempDir::new("print");
    dir.write("hello.py", "print('hello from', __name__)\n");
    let out = subinterp(dir.path(), &["run", "hello.py"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "hello from __main__\n");
    assert_eq!(stderr(&out), "");
}

#[test]
fn memory_limit_gives_each_interpreter_its_own_memory_error() {
    let dir = TempDir::new("memory_limit");
    let grab = "try:\n    b = bytearray(100 * 2**20)\n    print('allocated')\n\
                except MemoryError:\n    print('MemoryError')";
    let out = subinterp(
        dir.path(),
        &["run", "--memory-limit", "64M", "-n", "2", "-c", grab],
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "MemoryError\nMemoryError\n");
    let out = subinterp(dir.path(), &["run", "--memory-limit", "256M", "-c", grab]);
    assert_eq!(stdout(&out), "allocated\n", "stderr: {}", stderr(&out));
}

#[test]
fn code_runs_with_dash_c_argv() {
    let dir = TempDir::new("code");
    let out = subinterp(
        dir.path(),
        &["run", "-c", "import sys\nprint(sys.argv, __name__)"],
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "['-c'] __main__\n");
}

#[test]
fn copies_get_distinct_interpreters_and_argv() {
    let dir = TempDir::new("copies");
    dir.write("argv.py", "import sys\nprint(sys.argv)\n");
    let out = subinterp(dir.path(), &["run", "--copies", "3", "--json", "argv.py"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let report = report(&out);
    let entries = entries(&report);
    assert_eq!(entries.len(), 3);
    let ids: BTreeSet<i64> = entries
        .iter()
        .map(|e| e["id"].as_i64().expect("id is an integer"))
        .collect();
    assert_eq!(ids.len(), 3, "ids are not distinct: {ids:?}");
    assert!(!ids.contains(&0), "a copy ran in the main interpreter");
    for entry in entries {
        assert_eq!(text(entry, "script"), "argv.py");
        assert_eq!(text(entry, "status"), "ok");
        assert_eq!(text(entry, "stdout"), "['argv.py']\n");
    }
}

#[test]
fn copies_run_at_the_same_time() {
    let dir = TempDir::new("parallel");
    dir.write("sleep.py", "import time\ntime.sleep(0.8)\n");
    let out = subinterp(dir.path(), &["run", "-n", "4", "--json", "sleep.py"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let report = report(&out);
    let wall = report["wall_ms"].as_f64().expect("wall_ms is a number");
    // One after another they would take at least 3200 ms.
    assert!(wall < 3000.0, "4 copies of a 0.8 s sleep took {wall} ms");
    for entry in entries(&report) {
        let duration = entry["duration_ms"].as_f64().expect("a number");
        assert!(duration >= 790.0, "a 0.8 s sleep took {duration} ms");
    }
}

#[test]
fn json_report_has_every_field() {
    let dir = TempDir::new("shape");
    dir.write(
        "both.py",
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\n",
    );
    let out = subinterp(dir.path(), &["run", "--json", "both.py"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    // Output is captured: nothing but the report on stdout, nothing on stderr.
    assert_eq!(stderr(&out), "");
    let report = report(&out);
    let top: BTreeSet<&str> = report
        .as_object()
        .expect("the report is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(top, BTreeSet::from(["wall_ms", "interpreters"]));
    let wall = report["wall_ms"].as_f64().expect("wall_ms is a number");
    assert!(wall > 0.0);

    let entries = entries(&report);
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    let keys: BTreeSet<&str> = entry
        .as_object()
        .expect("an entry is an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "script",
            "exit_code",
            "status",
            "duration_ms",
            "stdout",
            "stderr",
            "stats",
            "error"
        ])
    );
    assert!(entry["id"].as_i64().expect("id is an integer") > 0);
    assert_eq!(text(entry, "script"), "both.py");
    assert_eq!(text(entry, "status"), "ok");
    let duration = entry["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!(duration >= 0.0 && duration <= wall, "{duration} vs {wall}");
    assert_eq!(text(entry, "stdout"), "out\n");
    assert_eq!(text(entry, "stderr"), "err\n");
    assert!(entry["error"].is_null());
}

#[test]
fn failing_script_reports_the_exception() {
    let dir = TempDir::new("fail");
    dir.write(
        "fail.py",
        "print('before')\n\ndef go():\n    raise ValueError('bad value 7')\n\ngo()\n",
    );
    let out = subinterp(dir.path(), &["run", "--json", "fail.py"]);
    assert_eq!(code(&out), 1);
    let report = report(&out);
    let entry = &entries(&report)[0];
    assert_eq!(text(entry, "status"), "error");
    assert!(entry["id"].is_i64(), "the interpreter was created: {entry}");
    assert_eq!(
        text(entry, "stdout"),
        "before\n",
        "output before the failure"
    );
    let error = &entry["error"];
    assert_eq!(text(error, "type"), "builtins.ValueError");
    assert_eq!(text(error, "message"), "bad value 7");
    let traceback = text(error, "traceback");
    assert!(
        traceback.starts_with("Traceback (most recent call last):"),
        "{traceback}"
    );
    assert!(
        traceback.contains("File \"fail.py\", line 6"),
        "{traceback}"
    );
    assert!(
        traceback.contains("File \"fail.py\", line 4, in go"),
        "{traceback}"
    );
    assert!(
        traceback.trim_end().ends_with("ValueError: bad value 7"),
        "{traceback}"
    );
}

#[test]
fn failing_script_prints_its_traceback_without_json() {
    let dir = TempDir::new("fail-text");
    dir.write("fail.py", "x = 1\nraise KeyError('k')\n");
    let out = subinterp(dir.path(), &["run", "fail.py"]);
    assert_eq!(code(&out), 1);
    let err = stderr(&out);
    assert!(err.contains("Traceback (most recent call last):"), "{err}");
    assert!(err.contains("File \"fail.py\", line 2"), "{err}");
    assert!(err.contains("KeyError: 'k'"), "{err}");
    // A single interpreter gets no heading, like `python fail.py`.
    assert!(!err.contains("interpreter"), "{err}");
}

#[test]
fn several_interpreters_name_the_one_that_failed() {
    let dir = TempDir::new("fail-many");
    dir.write("ok.py", "print('fine')\n");
    dir.write("fail.py", "raise RuntimeError('nope')\n");
    let out = subinterp(dir.path(), &["run", "ok.py", "fail.py"]);
    assert_eq!(code(&out), 1);
    assert_eq!(stdout(&out), "fine\n");
    let err = stderr(&out);
    let heading = err
        .lines()
        .find(|line| line.contains("fail.py") && line.contains("(interpreter "))
        .unwrap_or_else(|| panic!("no heading naming fail.py and its interpreter: {err}"));
    assert!(heading.starts_with("subinterp: fail.py"), "{heading}");
    assert!(err.contains("RuntimeError: nope"), "{err}");
    assert!(!err.contains("ok.py"), "{err}");
}

#[test]
fn syntax_error_is_reported() {
    let dir = TempDir::new("syntax");
    dir.write("syntax.py", "x = 1\ndef f(:\n    pass\n");
    let out = subinterp(dir.path(), &["run", "--json", "syntax.py"]);
    assert_eq!(code(&out), 1);
    let report = report(&out);
    let error = &entries(&report)[0]["error"];
    assert_eq!(text(error, "type"), "builtins.SyntaxError");
    assert!(text(error, "message").contains("line 2"), "{error}");
    let traceback = text(error, "traceback");
    assert!(traceback.contains("syntax.py"), "{traceback}");
    assert!(traceback.contains("def f(:"), "{traceback}");
}

#[test]
fn missing_file_fails_alone() {
    let dir = TempDir::new("missing");
    dir.write("ok.py", "print('still ran')\n");
    let out = subinterp(
        dir.path(),
        &["run", "--json", "missing.py", "ok.py", "-c", "print(2)"],
    );
    assert_eq!(code(&out), 2, "python's status for a script it cannot open");
    let report = report(&out);
    let entries = entries(&report);
    assert_eq!(entries.len(), 3);

    let missing = &entries[0];
    assert_eq!(text(missing, "script"), "missing.py");
    assert_eq!(text(missing, "status"), "error");
    let error = &missing["error"];
    assert_eq!(text(error, "type"), "builtins.FileNotFoundError");
    assert!(text(error, "message").contains("missing.py"), "{error}");
    assert!(
        text(error, "message").contains("No such file or directory"),
        "{error}"
    );
    assert_eq!(text(error, "traceback"), "");

    assert_eq!(text(&entries[1], "status"), "ok");
    assert_eq!(text(&entries[1], "stdout"), "still ran\n");
    assert_eq!(text(&entries[2], "status"), "ok");
    assert_eq!(text(&entries[2], "stdout"), "2\n");
}

#[test]
fn missing_file_without_json_says_so() {
    let dir = TempDir::new("missing-text");
    let out = subinterp(dir.path(), &["run", "nowhere.py"]);
    assert_eq!(code(&out), 2, "as python exits");
    let err = stderr(&out);
    assert!(err.contains("nowhere.py"), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = TempDir::new("usage");
    dir.write("ok.py", "print('must not run')\n");
    let cases: [(&[&str], &str); 5] = [
        (&["run"], "nothing to run"),
        (&["run", "--json"], "nothing to run"),
        (&["run", "--copies", "0", "ok.py"], "at least 1"),
        (&["run", "--config", "bogus", "ok.py"], "bogus"),
        (&["run", "--no-such-option", "ok.py"], "--no-such-option"),
    ];
    for (args, needle) in cases {
        let out = subinterp(dir.path(), args);
        assert_eq!(code(&out), 2, "{args:?}");
        assert_eq!(stdout(&out), "", "{args:?} ran something");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(err.contains("Usage:") || err.contains("--help"), "{err}");
    }
}

#[test]
fn config_legacy_loads_single_phase_extensions_and_isolated_refuses_them() {
    // `_curses` is a single-phase-init extension: CPython refuses it in interpreters with
    // their own GIL and loads it in legacy (shared-GIL) ones.
    let dir = TempDir::new("legacy");
    let probe = "import _curses\nprint('loaded')";
    let out = subinterp(dir.path(), &["run", "--config", "legacy", "-c", probe]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "loaded\n");

    for args in [
        &["run", "--config", "isolated", "-c", probe][..],
        &["run", "-c", probe][..],
    ] {
        let out = subinterp(dir.path(), args);
        assert_eq!(code(&out), 1, "{args:?}");
        assert!(
            stderr(&out).contains("does not support loading in subinterpreters"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn path_option_makes_a_module_importable() {
    let dir = TempDir::new("path");
    dir.write("lib/helper_mod.py", "ANSWER = 42\n");
    dir.write("lib2/other_mod.py", "NAME = 'other'\n");
    dir.write(
        "app/main.py",
        "import helper_mod, other_mod\nprint(helper_mod.ANSWER, other_mod.NAME)\n",
    );
    let lib = dir.path().join("lib");
    let lib2 = dir.path().join("lib2");
    let args = [
        "run",
        "--path",
        lib.to_str().unwrap(),
        "--path",
        lib2.to_str().unwrap(),
        "app/main.py",
        "-c",
        "import helper_mod; print(helper_mod.ANSWER)",
    ];
    let out = subinterp(dir.path(), &args);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let printed = stdout(&out);
    let mut lines: Vec<&str> = printed.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["42", "42 other"]);

    let out = subinterp(dir.path(), &["run", "app/main.py"]);
    assert_eq!(code(&out), 1, "importable without --path?");
    assert!(stderr(&out).contains("ModuleNotFoundError"));
}

#[test]
fn scripts_directory_is_importable() {
    let dir = TempDir::new("sibling");
    dir.write("pkg/sibling_mod.py", "WHERE = 'next door'\n");
    dir.write(
        "pkg/main.py",
        "import sys, os, sibling_mod\n\
         print(sibling_mod.WHERE)\n\
         print(sys.path[0] == os.path.dirname(os.path.realpath(__file__)))\n",
    );
    // Run from the parent directory, so only the script's own directory can help.
    let out = subinterp(dir.path(), &["run", "pkg/main.py"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "next door\nTrue\n");
}

#[test]
fn system_exit_is_an_error_and_the_report_is_written() {
    let dir = TempDir::new("exit");
    dir.write("exit.py", "print('leaving')\nraise SystemExit(3)\n");
    let out = subinterp(
        dir.path(),
        &["run", "--json", "exit.py", "-c", "print('other')"],
    );
    assert_eq!(code(&out), 3, "the first failing interpreter's status");
    let report = report(&out);
    let entries = entries(&report);
    assert_eq!(entries.len(), 2);
    let entry = &entries[0];
    assert_eq!(text(entry, "status"), "error");
    assert_eq!(entry["exit_code"], 3);
    assert_eq!(entries[1]["exit_code"], 0);
    assert_eq!(text(entry, "stdout"), "leaving\n");
    let error = &entry["error"];
    assert_eq!(text(error, "type"), "builtins.SystemExit");
    assert_eq!(text(error, "message"), "3");
    assert!(text(error, "traceback").contains("exit.py"), "{error}");
    assert_eq!(text(&entries[1], "status"), "ok");
    assert_eq!(text(&entries[1], "stdout"), "other\n");
}

#[test]
fn system_exit_without_json_does_not_end_the_host() {
    let dir = TempDir::new("exit-text");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "-c",
            "import sys; sys.exit(5)",
            "-c",
            "print('after')",
        ],
    );
    assert_eq!(code(&out), 5);
    assert_eq!(stdout(&out), "after\n");
    assert!(
        stderr(&out).contains("exited with status 5"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn report_keeps_command_line_order_with_copies_adjacent() {
    let dir = TempDir::new("order");
    dir.write("a.py", "print('a')\n");
    dir.write("b.py", "print('b')\n");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "-c",
            "print('c1')",
            "b.py",
            "--json",
            "-c",
            "print('c2')",
            "a.py",
            "-n",
            "2",
        ],
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let report = report(&out);
    let got: Vec<(&str, &str)> = entries(&report)
        .iter()
        .map(|e| (text(e, "script"), text(e, "stdout")))
        .collect();
    assert_eq!(
        got,
        [
            ("-c", "c1\n"),
            ("-c", "c1\n"),
            ("b.py", "b\n"),
            ("b.py", "b\n"),
            ("-c", "c2\n"),
            ("-c", "c2\n"),
            ("a.py", "a\n"),
            ("a.py", "a\n"),
        ]
    );
}

#[test]
fn interpreters_are_isolated_from_each_other() {
    let dir = TempDir::new("isolation");
    dir.write(
        "count.py",
        "import sys\n\
         sys.shared_counter = getattr(sys, 'shared_counter', 0) + 1\n\
         print(sys.shared_counter)\n",
    );
    let out = subinterp(dir.path(), &["run", "--json", "-n", "3", "count.py"]);
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let report = report(&out);
    for entry in entries(&report) {
        assert_eq!(
            text(entry, "stdout"),
            "1\n",
            "state leaked between interpreters"
        );
    }
}

#[test]
fn help_and_version() {
    let dir = TempDir::new("help");
    let out = subinterp(dir.path(), &["--version"]);
    assert_eq!(code(&out), 0);
    assert_eq!(
        stdout(&out).trim(),
        format!("subinterp {}", env!("CARGO_PKG_VERSION"))
    );

    let out = subinterp(dir.path(), &["run", "--help"]);
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for needle in [
        "--code",
        "--copies",
        "--config",
        "isolated",
        "legacy",
        "--path",
        "--json",
        "Exit status",
        "its own status",
        "pytest's 1, 2, 4, 5",
        "usage error",
        "130  interrupted by Ctrl-C",
        "the first one, in command-line order",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn a_clean_sys_exit_is_success() {
    let dir = TempDir::new("clean-exit");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "--json",
            "-c",
            "import sys; print('a'); sys.exit()",
            "-c",
            "import sys; sys.exit(0)",
            "-c",
            "raise SystemExit(None)",
        ],
    );
    assert_eq!(code(&out), 0, "stdout: {}", stdout(&out));
    let report = report(&out);
    for entry in entries(&report) {
        assert_eq!(text(entry, "status"), "ok", "{entry}");
        assert!(entry["error"].is_null());
    }
    assert_eq!(text(&entries(&report)[0], "stdout"), "a\n");
}

#[test]
fn json_output_includes_what_threads_and_atexit_print() {
    let dir = TempDir::new("late-output");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "--json",
            "-c",
            "import atexit, threading, time\n\
             atexit.register(print, 'at exit')\n\
             threading.Thread(target=lambda: (time.sleep(0.05), print('late thread'))).start()\n\
             print('main')",
        ],
    );
    assert_eq!(code(&out), 0, "stdout: {}", stdout(&out));
    let report = report(&out);
    assert_eq!(
        text(&entries(&report)[0], "stdout"),
        "main\nlate thread\nat exit\n"
    );
}

#[test]
fn non_ascii_output_works_in_the_c_locale() {
    let dir = TempDir::new("utf8");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["run", "-c", "print('José ✓')"])
        .current_dir(dir.path())
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .output()
        .expect("run the subinterp binary");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "José ✓\n");
}

#[test]
fn one_script_exits_with_its_own_status() {
    let dir = TempDir::new("own-status");
    for (code_text, status, printed) in [
        ("import sys; sys.exit(4)", 4, ""),
        ("import sys; sys.exit(5)", 5, ""),
        ("import sys; sys.exit(2)", 2, ""),
        ("import sys; sys.exit(False)", 0, ""),
        ("import sys; sys.exit(True)", 1, ""),
        ("import sys; sys.exit('bye now')", 1, "bye now\n"),
        ("raise SystemExit(256 + 7)", 7, ""),
        ("import sys; sys.exit('0')", 1, "0\n"),
        ("import sys; sys.exit(None)", 0, ""),
        ("raise ValueError('no')", 1, "ValueError: no"),
    ] {
        let out = subinterp(dir.path(), &["run", "-c", code_text]);
        assert_eq!(code(&out), status, "{code_text}: {}", stderr(&out));
        let err = stderr(&out);
        if printed.is_empty() {
            assert_eq!(err, "", "{code_text}");
        } else {
            assert!(err.contains(printed), "{code_text}: {err}");
            assert!(!err.contains("SystemExit"), "{code_text}: {err}");
        }
    }
}

#[test]
fn sys_exit_with_an_empty_string_fails_as_in_python() {
    let dir = TempDir::new("empty-exit");
    let out = subinterp(dir.path(), &["run", "-c", "import sys; sys.exit('')"]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(!stderr(&out).contains("SystemExit"), "{}", stderr(&out));
    let out = subinterp(
        dir.path(),
        &["run", "--json", "-c", "import sys; sys.exit('')"],
    );
    assert_eq!(code(&out), 1);
    assert_eq!(entries(&report(&out))[0]["exit_code"], 1);
}

#[test]
fn several_scripts_exit_with_the_first_failing_status_and_report_each() {
    let dir = TempDir::new("first-status");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "--json",
            "-c",
            "pass",
            "-c",
            "import sys; sys.exit(5)",
            "-c",
            "import sys; sys.exit(4)",
        ],
    );
    assert_eq!(code(&out), 5);
    let report = report(&out);
    let codes: Vec<i64> = entries(&report)
        .iter()
        .map(|e| e["exit_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [0, 5, 4]);
}

#[test]
fn the_json_report_survives_scripts_that_write_to_fd_1() {
    let dir = TempDir::new("fd1");
    // What pytest's --capture=fd does, in two interpreters at once: fd 1 pointed at a
    // temporary file and back, plus raw writes and a child process writing to fd 1.
    dir.write(
        "juggle.py",
        "import os, sys, tempfile, time\n\
         saved = os.dup(1)\n\
         with tempfile.TemporaryFile() as tmp:\n\
         \x20   os.dup2(tmp.fileno(), 1)\n\
         \x20   os.write(1, b'captured\\n')\n\
         \x20   time.sleep(0.05)\n\
         \x20   os.dup2(saved, 1)\n\
         os.close(saved)\n\
         print('printed')\n",
    );
    for _ in 0..3 {
        let out = subinterp(dir.path(), &["run", "--json", "-n", "2", "juggle.py"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let report = report(&out);
        for entry in entries(&report) {
            assert_eq!(text(entry, "stdout"), "printed\n");
        }
    }
    dir.write(
        "raw.py",
        "import os, subprocess, sys\n\
         os.write(1, b'RAW ON FD 1\\n')\n\
         subprocess.run([sys.executable, '-c', 'print(\"FROM A CHILD\")'])\n\
         print('printed')\n",
    );
    let out = subinterp(dir.path(), &["run", "--json", "raw.py"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(text(&entries(&report(&out))[0], "stdout"), "printed\n");
    let err = stderr(&out);
    assert!(err.contains("RAW ON FD 1"), "{err}");
    assert!(err.contains("FROM A CHILD"), "{err}");
}

#[test]
fn a_stdout_that_cannot_be_written_fails_as_in_python() {
    let dir = TempDir::new("full");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["run", "-c", "print(1)"])
        .current_dir(dir.path())
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("cannot write the output"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("No space left"), "{}", stderr(&out));
}

#[test]
fn a_stdout_set_to_none_or_closed_is_not_a_write_failure() {
    let dir = TempDir::new("stdout-none");
    for code_text in [
        "import sys; sys.stdout = None; print('lost')",
        "import sys; sys.stdout.close()",
        "import sys; sys.stderr = None",
    ] {
        let out = subinterp(dir.path(), &["run", "-c", code_text]);
        assert_eq!(code(&out), 0, "{code_text}: {}", stderr(&out));
    }
}

#[test]
fn ctrl_c_raises_keyboard_interrupt_so_finally_and_atexit_run() {
    let dir = TempDir::new("sigint");
    dir.write(
        "loop.py",
        "import atexit, time\n\
         atexit.register(print, 'atexit ran', flush=True)\n\
         print('started', flush=True)\n\
         try:\n\
         \x20   while True:\n\
         \x20       time.sleep(0.01)\n\
         finally:\n\
         \x20   print('finally ran', flush=True)\n",
    );
    let child = common::command_with_sigint(&["run", "-n", "2", "loop.py"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Both interpreters have started once each printed its first line; give them
    // ample time on a loaded machine.
    std::thread::sleep(std::time::Duration::from_secs(3));
    common::kill(pid, "INT");
    let out = common::wait_at_most(child, std::time::Duration::from_secs(30))
        .expect("the run ends after Ctrl-C");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("started").count(), 2, "{text}");
    assert_eq!(text.matches("finally ran").count(), 2, "{text}");
    assert_eq!(text.matches("atexit ran").count(), 2, "{text}");
    assert!(
        stderr(&out).contains("KeyboardInterrupt"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn too_many_interpreters_is_a_usage_error() {
    let dir = TempDir::new("too-many");
    for args in [
        &["run", "-n", "1000000000", "-c", "pass"][..],
        &["run", "-n", "100000", "-c", "pass"][..],
        &["run", "-n", "600", "-c", "pass", "-c", "pass"][..],
    ] {
        let out = subinterp(dir.path(), args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("at most 1024"), "{}", stderr(&out));
    }
}

#[test]
fn path_and_virtual_env_follow_one_rule_in_every_command() {
    let dir = TempDir::new("one-rule");
    dir.write("m.py", "def f(x):\n    return x\n");
    let missing = "/no/such/dir/for/subinterp";
    for args in [
        &["run", "--path", missing, "-c", "pass"][..],
        &["map", "m:f", "--path", missing][..],
        &["check", "json", "--path", missing][..],
    ] {
        let out = common::subinterp_with_stdin(dir.path(), args, "1\n");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("no such directory"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    for args in [
        &["run", "-c", "print('ran')"][..],
        &["map", "m:f"][..],
        &["check", "json"][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
            .args(args)
            .current_dir(dir.path())
            .env("VIRTUAL_ENV", missing)
            .env_remove("SUBINTERP_LOG")
            .stdin(std::fs::File::open(dir.path().join("m.py")).unwrap())
            .output()
            .unwrap();
        let err = stderr(&out);
        // Warned once: one lookup of the variable, one warning about it.
        assert_eq!(
            err.matches("ignoring VIRTUAL_ENV").count(),
            1,
            "{args:?}: {err}"
        );
        assert_ne!(code(&out), 2, "{args:?}: {err}");
    }
}

#[test]
fn a_script_name_that_is_not_utf8_keeps_its_bytes_in_argv() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new("odd-name");
    let name = std::ffi::OsStr::from_bytes(b"odd\xffname.py");
    std::fs::write(
        dir.path().join(name),
        "import os, sys\nprint(os.fsencode(sys.argv[0]) == b'odd\\xffname.py', os.path.exists(sys.argv[0]))\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .arg("run")
        .arg(name)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "True True\n");
}

#[test]
fn os_exit_ends_only_its_interpreter_when_others_or_a_report_depend_on_it() {
    let dir = TempDir::new("os-exit");
    let out = subinterp(
        dir.path(),
        &[
            "run",
            "--json",
            "-c",
            "import os; print('before'); os._exit(3)",
            "-c",
            "import time; time.sleep(0.2); print('other finished')",
        ],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report = report(&out);
    let entries = entries(&report);
    assert_eq!(entries[0]["exit_code"], 3);
    assert_eq!(text(&entries[0], "stdout"), "before\n");
    assert_eq!(text(&entries[1], "stdout"), "other finished\n");

    // One script without --json: the process ends with it, as in python.
    let out = subinterp(dir.path(), &["run", "-c", "import os; os._exit(4)"]);
    assert_eq!(code(&out), 4);
}

#[test]
fn a_report_reader_that_goes_away_ends_the_command_quietly() {
    use std::io::Read;
    let dir = TempDir::new("report-pipe");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["run", "--json", "-n", "100", "-c", "print('x' * 10000)"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe is closed here, long before the megabyte of report is written.
    let out = common::wait_at_most(child, std::time::Duration::from_secs(60)).unwrap();
    assert_eq!(first, *b"{");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("cannot write"), "{}", stderr(&out));
}
