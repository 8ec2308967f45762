//! `Interpreter::prestart`: an interpreter made ahead, taken by the next one of its kind,
//! whose own configuration then applies. One test: it counts the process's interpreter
//! threads, which other tests running beside it would change.

mod common;

use std::time::{Duration, Instant};

use subinterp::{Interpreter, InterpreterConfig, Value};

/// Threads of this process running (or waiting to run) an interpreter: named
/// "subinterp".
fn interpreter_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "subinterp")
        .count()
}

/// `interpreter_threads()` once it is `count`, or after 30 s.
fn wait_for(count: usize) -> usize {
    let end = Instant::now() + Duration::from_secs(30);
    while interpreter_threads() != count && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    interpreter_threads()
}

#[test]
fn a_prestarted_interpreter_is_taken_by_the_next_of_its_kind_with_its_config() {
    let rt = common::runtime();
    assert_eq!(wait_for(0), 0);
    std::env::set_var("SUBINTERP_SPARE_TEST_GONE", "gone");
    std::env::set_var("TZ", "XYZ-2");
    Interpreter::prestart(&rt, &InterpreterConfig::isolated()).unwrap();
    assert_eq!(wait_for(1), 1, "the spare's thread");
    // The environment changes after the spare read it.
    std::thread::sleep(Duration::from_millis(200));
    std::env::set_var("SUBINTERP_SPARE_TEST_LATE", "late");
    std::env::remove_var("SUBINTERP_SPARE_TEST_GONE");
    std::env::set_var("TZ", "ABC+3");
    // While one waits, another prestart does nothing.
    Interpreter::prestart(&rt, &InterpreterConfig::isolated()).unwrap();
    assert_eq!(interpreter_threads(), 1);

    // Another kind does not take it.
    let legacy = Interpreter::new(&rt, &InterpreterConfig::legacy()).unwrap();
    assert_eq!(interpreter_threads(), 2);

    // The same kind does, and its own settings apply.
    let dir = std::env::temp_dir().join("subinterp-spare-path");
    let mut config = InterpreterConfig::isolated();
    config.add_path(&dir).memory_limit(512 << 20);
    let taken = Interpreter::new(&rt, &config).unwrap();
    assert_eq!(interpreter_threads(), 2, "no thread beside the spare's");
    taken.exec("import sys").unwrap();
    assert_eq!(
        taken.eval("sys.path[0]").unwrap(),
        Value::from(dir.to_string_lossy().into_owned())
    );
    assert_eq!(taken.memory_limit(), Some(512 << 20));
    // Its os.environ is the process's as it is now.
    taken.exec("import os").unwrap();
    let environ = taken
        .eval("(os.environ.get('SUBINTERP_SPARE_TEST_LATE'), os.environ.get('SUBINTERP_SPARE_TEST_GONE'))")
        .unwrap();
    assert_eq!(
        environ,
        Value::Tuple(vec![Value::from("late".to_owned()), Value::None])
    );
    // And its time module the time zone TZ now names.
    taken.exec("import time").unwrap();
    assert_eq!(
        taken.eval("(time.tzname[0], time.timezone)").unwrap(),
        Value::Tuple(vec![Value::from("ABC".to_owned()), Value::Int(3 * 3600)])
    );
    assert!(taken.memory_in_use().is_some());
    // Isolated: its own GIL, and extensions that refuse isolation are refused.
    let refused = taken
        .exec("import _testsinglephase")
        .unwrap_err()
        .to_string();
    assert!(refused.contains("subinterpreter"), "{refused}");

    taken.close().unwrap();
    legacy.close().unwrap();
    assert_eq!(wait_for(0), 0);

    // The next one is made as usual.
    let fresh = common::isolated();
    assert_eq!(fresh.eval("1 + 1").unwrap(), Value::Int(2));
    fresh.close().unwrap();
}
