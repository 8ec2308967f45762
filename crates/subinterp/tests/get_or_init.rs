//! `Runtime::get_or_init` keeps CPython for the life of the process: tests that each get
//! the runtime, use it and drop every handle run one after the other.

use std::sync::Mutex;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

/// Makes the tests run one after the other, each dropping its handles before the next.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn use_and_drop_the_runtime() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = Runtime::get_or_init(&RuntimeConfig::new()).expect("the runtime, again");
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated()).expect("an interpreter");
    assert_eq!(interp.eval("6 * 7").unwrap(), Value::Int(42));
    drop(interp);
    drop(rt);
    assert!(
        Runtime::current().is_some(),
        "the runtime outlives its handles"
    );
}

#[test]
fn first_test_gets_the_runtime() {
    use_and_drop_the_runtime();
}

#[test]
fn second_test_gets_it_again() {
    use_and_drop_the_runtime();
}
