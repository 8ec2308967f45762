//! Every wait on an interpreter is bounded and interruptible: interrupts never wait for
//! the target's GIL, calls have deadlines, `close` ends past a grace period, and cycles
//! of host functions evaluating in each other's interpreters are refused.
//!
//! Times asserted here are wide margins around what is expected (CI is noisy): code
//! holding its GIL for 5 s, an interrupt expected at once, asserted under 2 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use subinterp::{
    CallOptions, Caller, Error, HostModule, Interpreter, InterpreterConfig, InterruptReason,
    Runtime, RuntimeConfig, Value,
};

/// Interpreters by name, for `relay.eval_in`.
static NAMED: Mutex<Option<HashMap<String, Arc<Interpreter>>>> = Mutex::new(None);

fn relay() -> HostModule {
    HostModule::new("relay")
        // Holds the calling interpreter's GIL (no `caller.blocking`): as C code does.
        .function("hold", ["seconds"], |_: &Caller, (seconds,): (f64,)| {
            std::thread::sleep(Duration::from_secs_f64(seconds));
            Ok(())
        })
        // Evaluates `expr` in the interpreter called `name`.
        .function(
            "eval_in",
            ["name", "expr"],
            |_: &Caller, (name, expr): (String, String)| {
                let interp = NAMED
                    .lock()
                    .unwrap()
                    .as_ref()
                    .and_then(|named| named.get(&name).cloned())
                    .ok_or_else(|| Error::python("KeyError", name))?;
                Ok(match interp.eval(&expr) {
                    Ok(value) => value,
                    Err(Error::WouldDeadlock) => Value::from("WouldDeadlock"),
                    Err(err) => return Err(err),
                })
            },
        )
}

fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let mut config = RuntimeConfig::new();
        config.host_module(relay());
        Runtime::get_or_init(&config).expect("start Python")
    })
    .clone()
}

fn interpreter(grace: Duration) -> Arc<Interpreter> {
    let mut config = InterpreterConfig::isolated();
    config.shutdown_grace(grace);
    Arc::new(Interpreter::new(&runtime(), &config).expect("create interpreter"))
}

fn in_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> crossbeam_channel::Receiver<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

fn is_timeout_error(err: &Error) -> bool {
    err.as_python().is_some_and(|e| e.is("TimeoutError"))
}

#[test]
fn interrupting_does_not_wait_for_code_holding_the_gil() {
    let interp = interpreter(Duration::from_secs(5));
    let handle = interp.interrupt_handle();
    let started = Instant::now();
    let busy = {
        let interp = Arc::clone(&interp);
        in_thread(move || interp.exec("import relay\nrelay.hold(5.0)\nwhile True:\n    pass\n"))
    };
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    assert!(handle.interrupt(InterruptReason::Timeout).unwrap());
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "interrupt() waited {:?} for the GIL",
        asked.elapsed()
    );
    // Delivered once the host function returns: the loop after it stops.
    let err = busy
        .recv_timeout(Duration::from_secs(60))
        .unwrap()
        .unwrap_err();
    assert!(is_timeout_error(&err), "{err:?}");
    assert!(started.elapsed() >= Duration::from_secs(4));
    assert_eq!(interp.eval("1 + 1").unwrap(), Value::Int(2));
}

#[test]
fn a_late_interrupt_never_reaches_a_later_operation() {
    let interp = interpreter(Duration::from_secs(5));
    let handle = interp.interrupt_handle();
    let busy = {
        let interp = Arc::clone(&interp);
        in_thread(move || interp.exec("import relay\nrelay.hold(1.5)\n"))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(handle.interrupt(InterruptReason::Timeout).unwrap());
    // The operation ends right after the host function returns: the interrupt is raised
    // in its last bytecode (as on 3.12) or, once it ended, dropped (as on 3.13).
    if let Err(err) = busy.recv_timeout(Duration::from_secs(60)).unwrap() {
        assert!(is_timeout_error(&err), "{err:?}");
    }
    // The next operations run Python code for a while: the interrupt must not hit them.
    for _ in 0..3 {
        interp
            .exec("import time\nend = time.monotonic() + 0.3\nwhile time.monotonic() < end:\n    pass\n")
            .unwrap();
    }
}

#[test]
fn a_call_past_its_deadline_raises_timeout_error() {
    let interp = interpreter(Duration::from_secs(5));
    interp
        .exec("def spin():\n    while True:\n        pass\n")
        .unwrap();
    let options = CallOptions::new().timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = interp.call_with("__main__:spin", (), options).unwrap_err();
    assert!(is_timeout_error(&err), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // One shape for a deadline: Error::Timeout, holding the TimeoutError that stopped the
    // code, with the traceback of where it was.
    let Error::Timeout {
        message,
        exception: Some(exc),
    } = &err
    else {
        panic!("expected Error::Timeout holding the TimeoutError, got {err:?}");
    };
    assert_eq!(message, "the call ran past its deadline of 0.300 s");
    assert!(exc.traceback.contains("in spin"), "{}", exc.traceback);
    assert!(err.is_timeout());
    let err = interp.exec_with("spin()", options).unwrap_err();
    assert!(is_timeout_error(&err), "{err:?}");
    // Within its deadline, a call returns as usual.
    assert_eq!(
        interp.call_with("math:factorial", (5,), options).unwrap(),
        Value::Int(120)
    );
}

#[test]
fn a_plugin_that_catches_every_exception_does_not_outlive_its_deadline() {
    let interp = interpreter(Duration::from_secs(2));
    interp
        .exec(
            "def stubborn():\n    \
                 while True:\n        \
                     try:\n            \
                         while True:\n                \
                             pass\n        \
                     except Exception:\n            \
                         pass\n",
        )
        .unwrap();
    let options = CallOptions::new().timeout(Duration::from_millis(300));
    let started = Instant::now();
    let call = {
        let interp = Arc::clone(&interp);
        in_thread(move || interp.call_with("__main__:stubborn", (), options))
    };
    let err = call
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                exception: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    // `close` stops it (KeyboardInterrupt is not an Exception) and ends the interpreter.
    let closing = Instant::now();
    interp.close().unwrap();
    assert!(closing.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_call_stuck_in_c_returns_at_its_deadline_and_the_interpreter_stays_busy_until_it_ends() {
    let interp = interpreter(Duration::from_secs(5));
    let options = CallOptions::new().timeout(Duration::from_millis(300));
    let started = Instant::now();
    let stuck = {
        let interp = Arc::clone(&interp);
        in_thread(move || interp.call_with("relay:hold", (4.0,), options))
    };
    let err = stuck
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                exception: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "returned after {:?}",
        started.elapsed()
    );
    // Still busy: a call with a deadline is withdrawn at it, before it starts, without
    // waiting for a grace period.
    let queued = Instant::now();
    let short = CallOptions::new().timeout(Duration::from_millis(50));
    let err = interp.call_with("math:sqrt", (4.0,), short).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                exception: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        queued.elapsed() < Duration::from_millis(800),
        "{:?}",
        queued.elapsed()
    );
    // A call without one waits for the stuck code to return, then runs.
    assert_eq!(interp.eval("2 * 21").unwrap(), Value::Int(42));
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[test]
fn close_leaves_an_interpreter_blocked_in_c_behind_after_its_grace_period() {
    for code in [
        "import time\ntime.sleep(3600)\n",
        "import threading\nthreading.Event().wait()\n",
    ] {
        let interp = interpreter(Duration::from_millis(500));
        let blocked = {
            let interp = Arc::clone(&interp);
            in_thread(move || interp.exec(code))
        };
        std::thread::sleep(Duration::from_millis(300));
        let closing = Instant::now();
        interp.close().unwrap();
        assert!(
            closing.elapsed() < Duration::from_secs(10),
            "close took {:?}",
            closing.elapsed()
        );
        assert!(interp.is_closed());
        assert!(matches!(interp.eval("1"), Err(Error::Closed)));
        // The blocked call is still blocked; the test leaves it behind.
        assert!(blocked.try_recv().is_err());
    }
}

#[test]
fn a_cycle_of_host_functions_across_interpreters_is_would_deadlock() {
    let a = interpreter(Duration::from_secs(5));
    let b = interpreter(Duration::from_secs(5));
    NAMED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .extend([
            ("a".to_owned(), Arc::clone(&a)),
            ("b".to_owned(), Arc::clone(&b)),
        ]);
    // A evaluates in B, which evaluates in A: A waits for B, so B cannot wait for A.
    let cycle = {
        let a = Arc::clone(&a);
        in_thread(move || {
            a.eval("__import__('relay').eval_in('b', \"__import__('relay').eval_in('a', '1')\")")
        })
    };
    let got = cycle
        .recv_timeout(Duration::from_secs(30))
        .expect("the cycle deadlocked");
    assert_eq!(got.unwrap(), Value::from("WouldDeadlock"));
    // Without a cycle, evaluating across interpreters works.
    assert_eq!(
        a.eval("__import__('relay').eval_in('b', '6 * 7')").unwrap(),
        Value::Int(42)
    );
    let interrupt = a.interrupt_handle();
    let asked = Instant::now();
    assert!(!interrupt.interrupt(InterruptReason::Cancelled).unwrap());
    assert!(asked.elapsed() < Duration::from_secs(2));
    NAMED.lock().unwrap().take();
}

#[test]
fn close_cancels_operations_queued_or_catching_the_interrupt_after_its_grace_period() {
    for (first, second) in [
        // Queued behind the running operation when `close` is called.
        ("while True:\n    pass\n", "while True:\n    pass\n"),
        // Catches the interrupt of `close` and goes on.
        (
            "try:\n    while True:\n        pass\nexcept BaseException:\n    pass\nwhile True:\n    pass\n",
            "1",
        ),
    ] {
        let interp = interpreter(Duration::from_millis(500));
        let running = {
            let interp = Arc::clone(&interp);
            in_thread(move || interp.exec(first))
        };
        std::thread::sleep(Duration::from_millis(300));
        let queued = {
            let interp = Arc::clone(&interp);
            in_thread(move || interp.exec(second))
        };
        std::thread::sleep(Duration::from_millis(300));
        let closing = Instant::now();
        interp.close().unwrap();
        assert!(
            closing.elapsed() < Duration::from_secs(20),
            "close took {:?}",
            closing.elapsed()
        );
        // Both calls end: nothing is left running in the interpreter.
        for call in [running, queued] {
            let result = call
                .recv_timeout(Duration::from_secs(30))
                .expect("an operation still runs after close");
            if let Err(err) = result {
                assert!(
                    matches!(err, Error::Closed)
                        || err.as_python().is_some_and(|e| e.is("KeyboardInterrupt")),
                    "{err:?}"
                );
            }
        }
    }
}
