//! `subinterp map` keeps its streams to itself: Python output, stdin readers, closed or
//! full descriptors, `os._exit`, pipes that close and signals cannot corrupt, steal or
//! silently lose results.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{
    code, kill, spawn_subinterp, stderr, stdout, subinterp_with_stdin, wait_at_most, TempDir,
};

const MODULE: &str = r#"
import os, sys, subprocess, time

def ident(record):
    return record

def printer(record):
    print("PRINTED", record)
    sys.stdout.flush()
    os.write(1, b"RAW WRITE\n")
    subprocess.run([sys.executable, "-c", "print('FROM A CHILD')"])
    return record

def reader(record):
    return sys.stdin.readline()

def closer(record):
    try:
        os.close(1)
    except OSError:
        pass
    return record

def exiter(record):
    os._exit(0)

def slow(record):
    time.sleep(0.01)
    return record

def stuck(record):
    time.sleep(60)
    return record
"#;

fn setup(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    dir.write("lib/hostile.py", MODULE);
    dir
}

fn lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn numbers(n: usize) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

#[test]
fn what_python_prints_goes_to_stderr_never_into_the_results() {
    let dir = setup("print");
    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "hostile:printer",
            "--path",
            "lib",
            "--init",
            "print('FROM INIT'); import os; os.write(1, b'INIT RAW\\n')",
        ],
        &numbers(20),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results.len(), 20);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["ok"], i + 1);
    }
    let err = stderr(&out);
    for needle in [
        "PRINTED 7",
        "RAW WRITE",
        "FROM A CHILD",
        "FROM INIT",
        "INIT RAW",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_function_reading_stdin_steals_no_record() {
    let dir = setup("stdin");
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "hostile:reader", "--path", "lib"],
        &numbers(2000),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results.len(), 2000, "every record is answered");
    assert!(
        results.iter().all(|r| r["ok"] == ""),
        "stdin reads as empty"
    );
}

#[test]
fn invalid_utf8_is_an_invalid_input_and_the_run_goes_on() {
    let dir = setup("utf8");
    let mut input = b"1\n2\n".to_vec();
    input.extend_from_slice(b"\"caf\xe9\"\n");
    input.extend_from_slice(numbers(20).as_bytes());
    let mut child = spawn_subinterp(dir.path(), &["map", "hostile:ident", "--path", "lib"]);
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results.len(), 23);
    assert_eq!(results[1]["ok"], 2);
    assert_eq!(results[2]["error"]["type"], "InvalidInput");
    assert_eq!(results[2]["error"]["line"], 3);
    assert!(results[2]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid UTF-8"));
    assert_eq!(results[22]["ok"], 20);
    assert!(
        stderr(&out).contains("23 records, 1 errors"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_input_file_is_never_the_output() {
    let dir = setup("same");
    dir.write("data.jsonl", &numbers(5));
    std::os::unix::fs::symlink("data.jsonl", dir.path().join("link.jsonl")).unwrap();
    for output in ["data.jsonl", "link.jsonl", "./data.jsonl"] {
        let out = subinterp_with_stdin(
            dir.path(),
            &[
                "map",
                "hostile:ident",
                "--path",
                "lib",
                "-i",
                "data.jsonl",
                "-o",
                output,
            ],
            "",
        );
        assert_eq!(code(&out), 2, "{output}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is the input file"),
            "{}",
            stderr(&out)
        );
    }
    // Through the shell's redirections as well: stdin and stdout the same file.
    let data = std::fs::File::open(dir.path().join("data.jsonl")).unwrap();
    let append = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("data.jsonl"))
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["map", "hostile:ident", "--path", "lib"])
        .current_dir(dir.path())
        .stdin(data)
        .stdout(append)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data.jsonl")).unwrap(),
        numbers(5),
        "the input is untouched"
    );
}

#[test]
fn a_failing_set_up_leaves_the_output_file_alone() {
    let dir = setup("keep");
    dir.write("keep.jsonl", "precious\n");
    for args in [
        &["map", "nosuchmod:f", "-o", "keep.jsonl"][..],
        &[
            "map",
            "hostile:ident",
            "--path",
            "lib",
            "--init",
            "1/0",
            "-o",
            "keep.jsonl",
        ][..],
    ] {
        let out = subinterp_with_stdin(dir.path(), args, "1\n");
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.jsonl")).unwrap(),
            "precious\n"
        );
    }
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "hostile:ident", "--path", "lib", "-o", "new.jsonl"],
        "1\n",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new.jsonl")).unwrap(),
        "{\"ok\": 1}\n"
    );
}

#[test]
fn closing_fd_1_cannot_hide_the_results() {
    let dir = setup("close");
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "hostile:closer", "--path", "lib", "-w", "1"],
        &numbers(10),
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(lines(&stdout(&out)).len(), 10);
}

#[test]
fn an_output_that_cannot_be_written_is_an_error() {
    let dir = setup("full");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["map", "hostile:ident", "--path", "lib"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"1\n2\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot write the output"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn os_exit_cannot_end_the_run_as_a_success() {
    let dir = setup("exit");
    let out = subinterp_with_stdin(
        dir.path(),
        &["map", "hostile:exiter", "--path", "lib"],
        "1\n2\n",
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["error"]["type"], "builtins.RuntimeError");
    assert!(results[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("os._exit(0)"));

    let out = subinterp_with_stdin(
        dir.path(),
        &[
            "map",
            "hostile:ident",
            "--path",
            "lib",
            "--init",
            "import os; os._exit(0)",
        ],
        "1\n",
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("os._exit(0)"), "{}", stderr(&out));
}

#[test]
fn results_stream_while_the_input_is_idle() {
    let dir = setup("stream");
    let mut child = spawn_subinterp(dir.path(), &["map", "hostile:ident", "--path", "lib"]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(numbers(20).as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Read the results on a thread while the input stays open: they must come because
    // they are ready, not because the input ended.
    let results = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut results = BufReader::new(results);
        for _ in 0..20 {
            let mut line = String::new();
            if results.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let _ = tx.send(line);
        }
    });
    for n in 1..=20 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["ok"], n),
            Err(_) => {
                let _ = child.kill();
                panic!("result {n} did not come while the input was open");
            }
        }
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn a_closed_pipe_stops_the_run_quietly() {
    let dir = setup("pipe");
    let mut child = spawn_subinterp(dir.path(), &["map", "hostile:ident", "--path", "lib"]);
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let chunk = "1\n".repeat(4096);
        let mut sent = 0usize;
        while stdin.write_all(chunk.as_bytes()).is_ok() {
            sent += 4096;
            if sent > 50_000_000 {
                break;
            }
        }
        sent
    });
    let mut results = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    results.read_line(&mut first).unwrap();
    assert_eq!(first, "{\"ok\": 1}\n");
    drop(results);
    let out = wait_at_most(child, Duration::from_secs(30)).expect("the run stops");
    let sent = feeder.join().unwrap();
    assert!(sent < 50_000_000, "reading stopped ({sent} lines sent)");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "quietly");
}

#[test]
fn sigint_and_sigterm_write_what_is_finished_and_exit_130_or_143() {
    let dir = setup("signal");
    for (signal, status) in [("INT", 130), ("TERM", 143)] {
        let mut child = spawn_subinterp(dir.path(), &["map", "hostile:slow", "--path", "lib"]);
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            for i in 1..=1_000_000 {
                if writeln!(stdin, "{i}").is_err() {
                    break;
                }
            }
        });
        let mut results = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        results.read_line(&mut line).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        kill(child.id(), signal);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut results, &mut rest).unwrap();
        let out = wait_at_most(child, Duration::from_secs(30)).expect("the run stops");
        drop(feeder);
        assert_eq!(out.status.code(), Some(status), "{}", stderr(&out));
        let all = lines(&format!("{line}{rest}"));
        assert!(all.len() >= 2, "{}", all.len());
        for (i, result) in all.iter().enumerate() {
            assert_eq!(result["ok"], i + 1, "a prefix of the input, in order");
        }
        let err = stderr(&out);
        assert!(err.contains(&format!("stopped by SIG{signal}")), "{err}");
        assert!(err.contains(&format!("{} records", all.len())), "{err}");
    }
}

#[test]
fn a_second_sigint_ends_at_once() {
    let dir = setup("twice");
    let mut child = spawn_subinterp(
        dir.path(),
        &["map", "hostile:stuck", "--path", "lib", "-w", "1"],
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kill(child.id(), "INT");
    std::thread::sleep(Duration::from_millis(200));
    let second = Instant::now();
    kill(child.id(), "INT");
    let out = wait_at_most(child, Duration::from_secs(30)).expect("the run stops");
    assert_eq!(out.status.code(), Some(130));
    // Without the second signal the stuck record is given a second, then the pool its
    // grace period, and the summary is printed; the second one ends the process at once,
    // before any of that.
    assert!(
        !stderr(&out).contains("stopped by SIGINT"),
        "{}",
        stderr(&out)
    );
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "{:?}",
        second.elapsed()
    );
    drop(stdin);
}

#[test]
fn a_thread_left_running_delays_the_end_only_by_the_grace_period() {
    let dir = setup("thread");
    dir.write(
        "lib/threads.py",
        "import threading, time\n\n\
         def f(record):\n\
         \x20   threading.Thread(target=time.sleep, args=(1000,)).start()\n\
         \x20   return record\n",
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["map", "threads:f", "--path", "lib", "-w", "1"])
        .current_dir(dir.path())
        .stdin(std::fs::File::open(dir.write("in.jsonl", &numbers(5))).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_at_most(child, Duration::from_secs(60)).expect("the command ends");
    assert!(stderr(&out).contains("WARN"), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not end"), "{}", stderr(&out));
    assert_eq!(lines(&stdout(&out)).len(), 5, "every record answered");
}

#[test]
fn a_pool_that_cannot_replace_its_workers_stops_the_run_instead_of_hanging() {
    let dir = setup("no-workers");
    let flag = dir.path().join("flag");
    dir.write(
        "lib/stuck_once.py",
        "import time\n\n\
         def f(record):\n\
         \x20   if record == 3:\n\
         \x20       open(FLAG, 'w').close()\n\
         \x20       time.sleep(10)\n\
         \x20   return record\n",
    );
    let init = format!(
        "import os, stuck_once; stuck_once.FLAG = {flag:?}\n\
         assert not os.path.exists({flag:?}), 'set-up fails once the flag exists'"
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args([
            "map",
            "stuck_once:f",
            "--path",
            "lib",
            "-w",
            "1",
            "--timeout",
            "0.5",
            "--init",
            &init,
        ])
        .current_dir(dir.path())
        .stdin(std::fs::File::open(dir.write("in.jsonl", &numbers(50))).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_at_most(child, Duration::from_secs(60)).expect("the run ends");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let results = lines(&stdout(&out));
    assert_eq!(results[0]["ok"], 1);
    assert_eq!(results[1]["ok"], 2);
    assert_eq!(results[2]["error"]["type"], "builtins.TimeoutError");
    assert!(results.len() < 50, "the run stopped");
    assert!(stderr(&out).contains("no workers left"), "{}", stderr(&out));
}

#[test]
fn a_sigint_ignored_at_start_stays_ignored() {
    let dir = setup("ignored");
    let bin = env!("CARGO_BIN_EXE_subinterp");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' INT; exec \"$0\" map hostile:slow --path lib")
        .arg(bin)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(numbers(100).as_bytes()).unwrap();
    let mut results = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    results.read_line(&mut first).unwrap();
    kill(child.id(), "INT");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut results, &mut rest).unwrap();
    let out = wait_at_most(child, Duration::from_secs(60)).expect("the run ends");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines(&format!("{first}{rest}")).len(), 100, "every record");
}
