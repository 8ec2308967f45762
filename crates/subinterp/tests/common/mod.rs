//! Shared set-up: one runtime per test process (CPython starts once per process).
#![allow(dead_code)]

use std::sync::OnceLock;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

pub fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::get_or_init(&RuntimeConfig::new()).expect("start Python"))
        .clone()
}

pub fn isolated() -> Interpreter {
    Interpreter::new(&runtime(), &InterpreterConfig::isolated()).expect("create interpreter")
}

pub fn legacy() -> Interpreter {
    Interpreter::new(&runtime(), &InterpreterConfig::legacy()).expect("create interpreter")
}

pub fn capturing() -> Interpreter {
    let mut config = InterpreterConfig::isolated();
    config.capture_output(true);
    Interpreter::new(&runtime(), &config).expect("create interpreter")
}
