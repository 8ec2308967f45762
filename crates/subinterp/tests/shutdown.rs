//! How interpreters end: threads left running by user code, and what ends print.
//!
//! Each test runs its scenario in a child process (this test binary, running only that
//! test), because what is checked is process-wide: that the process exits, and what
//! reaches its standard error.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use subinterp::{Interpreter, InterpreterConfig, Pool, PoolConfig, Runtime, RuntimeConfig};

const CHILD: &str = "SUBINTERP_SHUTDOWN_TEST";

/// True in the child process running `test`'s scenario.
fn in_child(test: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|t| t == test)
}

struct Finished {
    success: bool,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `test` in a child process; fails if it does not exit within a minute.
fn run_child(test: &str) -> Finished {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the child process running {test} did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Finished {
        success: status.success(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        elapsed: started.elapsed(),
    }
}

fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

const SLEEPER: &str = "\
import threading, time
threading.Thread(target=time.sleep, args=(1000,), name='sleeper-1000s').start()
";

#[test]
fn a_thread_that_never_ends_delays_the_close_by_the_grace_period_only() {
    const TEST: &str = "a_thread_that_never_ends_delays_the_close_by_the_grace_period_only";
    if in_child(TEST) {
        log_to_stderr();
        let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
        let mut config = InterpreterConfig::isolated();
        config.shutdown_grace(Duration::from_millis(500));
        let interp = Interpreter::new(&rt, &config).unwrap();
        interp.exec(SLEEPER).unwrap();
        let started = Instant::now();
        interp.close().unwrap();
        println!("closed after {:.3} s", started.elapsed().as_secs_f64());
        drop(rt);
        return;
    }
    let child = run_child(TEST);
    assert!(child.success, "{}\n{}", child.stdout, child.stderr);
    let closed: f64 = child
        .stdout
        .split("closed after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or_else(|| panic!("no close reported: {}", child.stdout));
    assert!(
        closed >= 0.5,
        "closed after {closed} s, before the grace period"
    );
    assert!(
        child.elapsed < Duration::from_secs(30),
        "{:?}",
        child.elapsed
    );
    assert!(child.stderr.contains("WARN"), "{}", child.stderr);
    assert!(child.stderr.contains("left running"), "{}", child.stderr);
    assert!(child.stderr.contains("sleeper-1000s"), "{}", child.stderr);
}

#[test]
fn a_pool_whose_task_left_a_thread_running_still_shuts_down() {
    const TEST: &str = "a_pool_whose_task_left_a_thread_running_still_shuts_down";
    if in_child(TEST) {
        log_to_stderr();
        let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
        let mut interp = InterpreterConfig::isolated();
        interp.shutdown_grace(Duration::from_millis(300));
        let mut config = PoolConfig::new();
        config.workers(2).interpreter(interp).init(format!(
            "def start():\n    exec({SLEEPER:?})\n    return 'started'"
        ));
        let pool = Pool::new(&rt, &config).unwrap();
        let results: Vec<_> = pool
            .map("__main__:start", (0..4).map(|_| ()))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        println!("results: {}", results.len());
        pool.shutdown(Duration::from_secs(10));
        println!("shut down");
        drop(rt);
        return;
    }
    let child = run_child(TEST);
    assert!(child.success, "{}\n{}", child.stdout, child.stderr);
    assert!(child.stdout.contains("results: 4"), "{}", child.stdout);
    assert!(child.stdout.contains("shut down"), "{}", child.stdout);
    assert!(child.stderr.contains("sleeper-1000s"), "{}", child.stderr);
}

/// Starts a thread with `_thread` alone (no `threading` in the interpreter) that sleeps
/// for ever, closes the interpreter once the thread has begun to run, and prints what it
/// saw.
fn close_beside_a_bare_thread() {
    log_to_stderr();
    let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
    let mut config = InterpreterConfig::isolated();
    config.shutdown_grace(Duration::from_millis(300));
    let interp = Interpreter::new(&rt, &config).unwrap();
    interp
        .exec(
            "import _thread, sys, time\n\
             began = []\n\
             def sleep():\n    began.append(1)\n    time.sleep(1000)\n\
             _thread.start_new_thread(sleep, ())\n",
        )
        .unwrap();
    interp
        .exec("while not began:\n    time.sleep(0.001)\n")
        .unwrap();
    let threading = interp.eval("'threading' in sys.modules").unwrap();
    println!("threading loaded: {threading:?}");
    interp.close().unwrap();
    println!("closed");
    drop(rt);
}

#[test]
fn a_thread_started_with_the_thread_module_alone_is_seen_at_close() {
    // Found, and the interpreter left running, not ended under it.
    const TEST: &str = "a_thread_started_with_the_thread_module_alone_is_seen_at_close";
    if in_child(TEST) {
        close_beside_a_bare_thread();
        return;
    }
    let child = run_child(TEST);
    assert!(child.success, "{}\n{}", child.stdout, child.stderr);
    assert!(
        child.stdout.contains("threading loaded: Bool(false)"),
        "{}",
        child.stdout
    );
    assert!(child.stdout.contains("closed"), "{}", child.stdout);
    assert!(child.stderr.contains("left running"), "{}", child.stderr);
    assert!(
        child.stderr.contains("started with _thread"),
        "{}",
        child.stderr
    );
}

#[test]
fn a_thread_an_atexit_function_starts_does_not_abort_the_process() {
    // Started while the interpreter ends, after its threads were joined: its thread state
    // exists before it runs, and no module counts it yet. CPython would end the
    // interpreter under it and abort ("not the last thread").
    const TEST: &str = "a_thread_an_atexit_function_starts_does_not_abort_the_process";
    if in_child(TEST) {
        log_to_stderr();
        let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
        let mut config = InterpreterConfig::isolated();
        config.shutdown_grace(Duration::from_millis(300));
        for join in [false, true] {
            let interp = Interpreter::new(&rt, &config).unwrap();
            interp
                .exec(&format!(
                    "import _thread, atexit, time\n\
                     def late():\n    _thread.start_new_thread(time.sleep, ({},))\n\
                     atexit.register(late)\n",
                    if join { "0.05" } else { "1000" }
                ))
                .unwrap();
            interp.close().unwrap();
            println!("closed, {}", if join { "joined" } else { "left" });
        }
        drop(rt);
        return;
    }
    let child = run_child(TEST);
    assert!(child.success, "{}\n{}", child.stdout, child.stderr);
    assert!(child.stdout.contains("closed, left"), "{}", child.stdout);
    assert!(child.stdout.contains("closed, joined"), "{}", child.stdout);
    // The one that never ends is left running, named; the other was waited for.
    assert_eq!(
        child.stderr.matches("left running").count(),
        1,
        "{}",
        child.stderr
    );
    assert!(
        child.stderr.contains("not begun or not ended"),
        "{}",
        child.stderr
    );
}

#[test]
fn threads_that_end_within_the_grace_period_are_waited_for() {
    let marker = common::scratch_dir("grace").join("done");
    let interp = common::isolated();
    interp
        .exec(&format!(
            "import threading, time\n\
             def work():\n    time.sleep(0.3)\n    open({marker:?}, 'w').close()\n\
             threading.Thread(target=work).start()\n"
        ))
        .unwrap();
    interp.close().unwrap();
    assert!(marker.exists(), "the thread was not waited for");
}

#[test]
fn ending_an_interpreter_that_used_logging_prints_nothing() {
    const TEST: &str = "ending_an_interpreter_that_used_logging_prints_nothing";
    if in_child(TEST) {
        let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
        for config in [InterpreterConfig::isolated(), InterpreterConfig::legacy()] {
            let interp = Interpreter::new(&rt, &config).unwrap();
            interp
                .exec(
                    "import logging, threading\n\
                     logging.getLogger('app').warning('logged')\n\
                     name = threading.current_thread().name\n",
                )
                .unwrap();
            interp.close().unwrap();
        }
        println!("ended");
        drop(rt);
        return;
    }
    let child = run_child(TEST);
    assert!(child.success, "{}\n{}", child.stdout, child.stderr);
    assert!(child.stdout.contains("ended"), "{}", child.stdout);
    assert_eq!(
        child.stderr.matches("logged").count(),
        2,
        "{}",
        child.stderr
    );
    assert!(
        !child.stderr.contains("Exception ignored"),
        "{}",
        child.stderr
    );
}

/// `Py_EndInterpreter` aborts the process ("not the last thread") when another thread of
/// the interpreter still runs; a daemon thread is not waited for, so the interpreter is
/// left running instead.
#[test]
fn a_daemon_thread_still_running_does_not_crash_the_close() {
    const TEST: &str = "a_daemon_thread_still_running_does_not_crash_the_close";
    if in_child(TEST) {
        log_to_stderr();
        let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
        let mut config = InterpreterConfig::legacy();
        config.shutdown_grace(Duration::from_millis(200));
        let interp = Interpreter::new(&rt, &config).unwrap();
        interp
            .exec(
                "import threading, time\n\
                 threading.Thread(target=time.sleep, args=(1000,), name='daemon-1000s', \
                 daemon=True).start()\n",
            )
            .unwrap();
        interp.close().unwrap();
        println!("closed");
        drop(rt);
        return;
    }
    let child = run_child(TEST);
    assert!(child.success, "{}\n{}", child.stdout, child.stderr);
    assert!(child.stdout.contains("closed"), "{}", child.stdout);
    assert!(child.stderr.contains("daemon-1000s"), "{}", child.stderr);
}
