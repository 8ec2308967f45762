//! Without memory accounting (`RuntimeConfig::memory_accounting(false)`), memory figures are absent and a memory limit
//! is refused with a message saying how to turn it on; CPU time is counted all the same.

use std::time::Duration;

use subinterp::{Error, Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

fn runtime() -> Runtime {
    Runtime::get_or_init(RuntimeConfig::new().memory_accounting(false)).expect("start Python")
}

#[test]
fn a_memory_limit_without_accounting_is_refused_and_says_why() {
    let runtime = runtime();
    assert!(!runtime.memory_accounting());
    let mut config = InterpreterConfig::isolated();
    config.memory_limit(64 << 20);
    match Interpreter::new(&runtime, &config) {
        Err(Error::InvalidConfig(message)) => {
            assert!(message.contains("memory_accounting(true)"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn without_accounting_memory_is_none_and_cpu_time_is_counted() {
    let interp = Interpreter::new(&runtime(), &InterpreterConfig::isolated()).unwrap();
    assert_eq!(interp.memory_in_use(), None);
    assert_eq!(interp.memory_peak(), None);
    interp
        .exec(
            "import time\nt0 = time.thread_time()\nwhile time.thread_time() - t0 < 0.2:\n    pass",
        )
        .unwrap();
    assert!(interp.cpu_time() >= Duration::from_millis(190));
}
