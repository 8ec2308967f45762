//! End-to-end tests of `subinterp map`.

use serde_json::Value;

mod common;
use common::{code, stderr, stdout, subinterp, subinterp_with_stdin, TempDir};

const MODULE: &str = r#"
import time

def double(record):
    time.sleep((record["n"] % 5) / 1000)   # finish out of order
    return {"n": record["n"], "double": 2 * record["n"]}

def picky(record):
    if record % 3 == 0:
        raise ValueError(f"no multiples of three: {record}")
    return record

def spin_on_seven(record):
    while record == 7:
        pass
    return record

def not_json(record):
    return {1, 2, 3}

def uses_init(record):
    return PREFIX + str(record)

def big(record):
    return record * 10**30

def grow_on_three(record):
    import subinterp
    data = []
    if record == 3:
        # 1 MiB blocks: the one past the limit is refused (bounded: a limit that does
        # not work fails the test rather than fill the machine).
        for _ in range(2000):
            data.append(bytearray(1 << 20))
    if record == 5:
        # Small objects: granted past the limit, then an asynchronous MemoryError.
        for _ in range(20_000_000):
            data.append(str(len(data)) * 4)
    return subinterp.id()
"#;

fn setup(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    dir.write("lib/mapfuncs.py", MODULE);
    dir
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn every_record_is_answered_in_input_order() {
    let dir = setup("order");
    let input: String = (0..200).map(|n| format!("{{\"n\": {n}}}\n")).collect();
    dir.write("in.jsonl", &input);
    let out = subinterp(
        dir.path(),
        &[
            "map",
            "mapfuncs:double",
            "-i",
            "in.jsonl",
            "-o",
            "out.jsonl",
            "--path",
            "lib",
            "-w",
            "2",
        ],
    );
    assert_eq!(code(&out), 0, "stderr: {}", stderr(&out));
    let written = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let results = lines(&written);
    assert_eq!(results.len(), 200);
    for (n, result) in results.iter().enumerate() {
        assert_eq!(result["ok"]["n"], n);
        assert_eq!(result["ok"]["double"], 2 * n);
    }
    let summary = stderr(&out);
    assert!(summary.contains("200 records, 0 errors"), "{summary}");
    assert!(summary.contains("records/s"), "{summary}");
}

#[test]
fn failures_and_invalid_lines_are_reported_in_place_and_the_run_goes_on() {
    let dir = setup("errors");
    let input = "1\n2\n3\n{not json\n\n4\n6\n";
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "mapfuncs:picky", "--path", "lib"],
        input,
    );
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(
        results.len(),
        6,
        "one line per record; the blank line is skipped"
    );
    assert_eq!(results[0]["ok"], 1);
    assert_eq!(results[1]["ok"], 2);
    let error = &results[2]["error"];
    assert_eq!(error["type"], "builtins.ValueError");
    assert_eq!(error["message"], "no multiples of three: 3");
    assert!(error["traceback"].as_str().unwrap().contains("picky"));
    let invalid = &results[3]["error"];
    assert_eq!(invalid["type"], "InvalidInput");
    assert_eq!(invalid["line"], 4);
    assert!(invalid["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(results[4]["ok"], 4);
    assert_eq!(results[5]["error"]["type"], "builtins.ValueError");
    assert!(
        stderr(&out).contains("6 records, 3 errors"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_record_in_an_infinite_loop_times_out_and_the_others_finish() {
    let dir = setup("timeout");
    let input: String = (0..20).map(|n| format!("{n}\n")).collect();
    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "mapfuncs:spin_on_seven",
            "--path",
            "lib",
            "--timeout",
            "0.3",
            "-w",
            "1",
        ],
        &input,
    );
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results.len(), 20);
    for (n, result) in results.iter().enumerate() {
        if n == 7 {
            assert_eq!(result["error"]["type"], "builtins.TimeoutError");
            assert!(result["error"]["message"]
                .as_str()
                .unwrap()
                .contains("deadline"));
        } else {
            assert_eq!(result["ok"], n, "the single interpreter kept working");
        }
    }
}

#[test]
fn a_record_past_the_memory_limit_fails_its_worker_is_replaced_and_the_others_succeed() {
    let dir = setup("memory_limit");
    let input: String = (0..8).map(|n| format!("{n}\n")).collect();
    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "mapfuncs:grow_on_three",
            "--path",
            "lib",
            "--memory-limit",
            "64M",
            "-w",
            "1",
        ],
        &input,
    );
    assert_eq!(code(&out), 1, "stderr: {}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results.len(), 8);
    assert_eq!(results[3]["error"]["type"], "builtins.MemoryError");
    assert_eq!(results[5]["error"]["type"], "builtins.MemoryError");
    let id = |n: usize| {
        results[n]["ok"]
            .as_i64()
            .unwrap_or_else(|| panic!("record {n}: {}", results[n]))
    };
    assert!((0..3).all(|n| id(n) == id(0)), "{results:?}");
    assert!((6..8).all(|n| id(n) == id(6)), "{results:?}");
    assert!(
        id(0) != id(4) && id(4) != id(6),
        "a worker that hit the limit was not replaced: {results:?}"
    );
}

#[test]
fn results_json_cannot_encode_are_errors_and_big_ints_stay_exact() {
    let dir = setup("encode");
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "mapfuncs:not_json", "--path", "lib"],
        "1\n",
    );
    assert_eq!(code(&out), 1);
    let results = lines(&stdout(&out));
    assert_eq!(results[0]["error"]["type"], "builtins.TypeError");
    assert!(results[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not JSON serializable"));

    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "mapfuncs:big", "--path", "lib"],
        "123456789012345678901234567890\n",
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    let expected = format!(
        "{{\"ok\": 123456789012345678901234567890{}}}",
        "0".repeat(30)
    );
    assert_eq!(stdout(&out).trim(), expected);
}

#[test]
fn init_code_and_the_current_directory_are_available() {
    let dir = setup("init");
    dir.write(
        "here.py",
        "def shout(record):\n    return str(record).upper()\n",
    );
    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "mapfuncs:uses_init",
            "--path",
            "lib",
            "--init",
            "import mapfuncs; mapfuncs.PREFIX = 'n='",
        ],
        "5\n",
    );
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(lines(&stdout(&out))[0]["ok"], "n=5");
    let out = subinterp_with_stdin(dir.path(), &["map", "here:shout"], "\"abc\"\n");
    assert_eq!(code(&out), 0, "{}{}", stdout(&out), stderr(&out));
    assert_eq!(lines(&stdout(&out))[0]["ok"], "ABC");
}

#[test]
fn set_up_errors_exit_2_with_a_clear_message() {
    let dir = setup("setup");
    for (args, needle) in [
        (&["map", "nosuchmodule:f"][..], "cannot find nosuchmodule:f"),
        (
            &["map", "mapfuncs:nosuchfunc", "--path", "lib"][..],
            "nosuchfunc",
        ),
        (&["map", "not a target"][..], "is not MODULE:FUNC"),
        (
            &["map", "mapfuncs:double", "-w", "0"][..],
            "--workers must be at least 1",
        ),
        (
            &["map", "mapfuncs:double", "--timeout", "0"][..],
            "--timeout",
        ),
        (
            &["map", "mapfuncs:double", "-i", "missing.jsonl"][..],
            "cannot read missing.jsonl",
        ),
        (
            &["map", "mapfuncs:double", "--path", "lib", "--init", "1/0"][..],
            "ZeroDivisionError",
        ),
    ] {
        let out = subinterp_with_stdin(dir.path(), args, "1\n");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn help_explains_the_output_and_exit_statuses() {
    let dir = TempDir::new("map-help");
    let out = subinterp(dir.path(), &["map", "--help"]);
    assert_eq!(code(&out), 0);
    let help = stdout(&out);
    for needle in [
        "--timeout",
        "--init",
        "InvalidInput",
        "builtins.TimeoutError",
        "Exit status",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn set_up_errors_name_what_failed_with_its_traceback() {
    let dir = setup("blame");
    dir.write("lib/badimport.py", "import nonexistent_mod\n");
    dir.write("lib/badattr.py", "import os\nX = os.no_such_attr\n");
    for (args, needles) in [
        (
            &["map", "badimport:f", "--path", "lib"][..],
            &[
                "importing badimport raised",
                "badimport.py\", line 1",
                "No module named 'nonexistent_mod'",
            ][..],
        ),
        (
            &["map", "badattr:f", "--path", "lib"][..],
            &["importing badattr raised", "line 2", "no_such_attr"][..],
        ),
        (
            &[
                "map",
                "mapfuncs:double",
                "--path",
                "lib",
                "--init",
                "import nonexistent_x",
            ][..],
            &["--init", "No module named 'nonexistent_x'"][..],
        ),
    ] {
        let out = subinterp_with_stdin(dir.path(), args, "1\n");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        for needle in needles {
            assert!(err.contains(needle), "{args:?} {needle}: {err}");
        }
        assert!(!err.contains("cannot find"), "{args:?}: {err}");
    }
}

#[test]
fn a_user_json_module_does_not_break_the_wrapper() {
    let dir = setup("json-shadow");
    dir.write("json.py", "MINE = True\n");
    dir.write(
        "usejson.py",
        "import json\n\ndef f(record):\n    return json.MINE\n",
    );
    let out = subinterp_with_stdin(dir.path(), &["map", "usejson:f"], "{\"a\": 1}\n");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"ok\": true}\n",
        "the user's json is the user's"
    );
}

#[test]
fn error_lines_are_spaced_like_ok_lines_without_the_wrapper_frame() {
    let dir = setup("format");
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "mapfuncs:picky", "--path", "lib"],
        "3\n",
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("{\"error\": {\"type\": \"builtins.ValueError\", \"message\": "),
        "{text}"
    );
    let traceback = lines(&text)[0]["error"]["traceback"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(traceback.starts_with("Traceback (most recent call last):\n  File \""));
    assert!(traceback.contains("in picky"), "{traceback}");
    assert!(!traceback.contains("_subinterp_map_record"), "{traceback}");
    assert!(!traceback.contains("<string>"), "{traceback}");
}

#[test]
fn inputs_json_loads_accepts_are_written_as_json_dumps_would() {
    let dir = setup("surrogate");
    dir.write("lib/ident.py", "def ident(record):\n    return record\n");
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "ident:ident", "--path", "lib"],
        "\"\\ud800\"\n\"caf\u{e9}\"\n1e400\n[1, 2.5]\n",
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows[0], "{\"ok\": \"\\ud800\"}");
    assert_eq!(rows[1], "{\"ok\": \"caf\u{e9}\"}");
    let bad = &lines(rows[2])[0]["error"];
    assert_eq!(bad["type"], "InvalidInput", "{}", rows[2]);
    assert_eq!(bad["line"], 3);
    assert!(bad["message"].as_str().unwrap().contains("too large"));
    assert_eq!(rows[3], "{\"ok\": [1, 2.5]}");
}

#[test]
fn out_of_range_timeouts_and_worker_counts_are_usage_errors() {
    let dir = setup("limits");
    for timeout in ["1e20", "1.5e19", "--timeout=-1", "nan", "inf", "0", "soon"] {
        let arg = if timeout.starts_with("--") {
            timeout.to_owned()
        } else {
            format!("--timeout={timeout}")
        };
        let out = subinterp_with_stdin(
            dir.path(),
            &["map", "mapfuncs:double", "--path", "lib", &arg],
            "{\"n\": 1}\n",
        );
        assert_eq!(code(&out), 2, "{arg}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--timeout"),
            "{arg}: {}",
            stderr(&out)
        );
        assert_eq!(stdout(&out), "", "{arg}");
    }
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "mapfuncs:double", "--path", "lib", "-w", "100000"],
        "{\"n\": 1}\n",
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("at most 1024"), "{}", stderr(&out));

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let many = (4 * cores + 1).to_string();
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "mapfuncs:double", "--path", "lib", "-w", &many],
        "{\"n\": 1}\n",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
}

#[test]
fn a_set_up_that_hangs_ends_at_its_deadline() {
    let dir = setup("setup-deadline");
    dir.write("lib/hangs.py", "while True:\n    pass\n");
    for (args, needle) in [
        (
            &["map", "hangs:f", "--path", "lib", "--setup-timeout", "1"][..],
            "importing hangs",
        ),
        (
            &[
                "map",
                "mapfuncs:double",
                "--path",
                "lib",
                "--init",
                "while True: pass",
                "--setup-timeout",
                "1",
            ][..],
            "--init",
        ),
    ] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
            .args(args)
            .current_dir(dir.path())
            .stdin(std::fs::File::open(dir.write("in.jsonl", "1\n")).unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = common::wait_at_most(child, std::time::Duration::from_secs(60))
            .expect("the set-up ends at its deadline instead of hanging");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("timed out"), "{err}");
        assert!(err.contains(needle), "{needle}: {err}");
    }
}
