//! The interpreter pool: order, errors, deadlines, cancellation, recycling, shutdown.

mod common;

use std::time::{Duration, Instant};

use subinterp::{Error, Pool, PoolConfig, TaskOptions, Value};

const FUNCS: &str = r#"
import subinterp, time

def double(x):
    time.sleep((x % 7) / 2000)   # finish out of order
    return 2 * x

def fail_on_odd(x):
    if x % 2:
        raise ValueError(f"odd input: {x}")
    return x

def spin():
    while True:
        pass

def sleep(seconds):
    time.sleep(seconds)
    return 'slept'

def whoami():
    return subinterp.id()

def whoami_after(seconds):
    time.sleep(seconds)
    return subinterp.id()

def exec_and_wait(name, count):
    # Each of `count` such tasks tells every one (itself included) that it runs, then
    # waits to hear from all: they finish only if they all run at once.
    prefix = name.rsplit("-", 1)[0]
    for i in range(count):
        subinterp.channel(f"{prefix}-{i}").send(name)
    ch = subinterp.channel(name)
    for _ in range(count):
        ch.recv(timeout=60)
    return count

def record(tag):
    subinterp.channel('pool-record').send(tag)
    return tag
"#;

fn pool(workers: usize, tweak: impl FnOnce(&mut PoolConfig)) -> Pool {
    let mut config = PoolConfig::new();
    config.workers(workers).init(FUNCS);
    tweak(&mut config);
    Pool::new(&common::runtime(), &config).expect("start the pool")
}

fn py_type(err: &Error) -> String {
    match err.as_python() {
        Some(exc) => exc.type_name.clone(),
        None => format!("{err:?}"),
    }
}

#[test]
fn map_keeps_input_order_and_answers_every_record() {
    let pool = pool(2, |_| {});
    let results: Vec<Value> = pool
        .map("__main__:double", (0..300).map(|i| (i,)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<Value> = (0..300).map(|i| Value::Int(2 * i)).collect();
    assert_eq!(results, expected);
}

#[test]
fn failing_records_are_errors_and_the_rest_succeed() {
    let pool = pool(2, |_| {});
    let results: Vec<_> = pool
        .map("__main__:fail_on_odd", (0..10).map(|i| (i,)))
        .unwrap()
        .collect();
    for (i, result) in results.into_iter().enumerate() {
        if i % 2 == 1 {
            let err = result.unwrap_err();
            let exc = err.as_python().unwrap();
            assert_eq!(exc.type_name, "builtins.ValueError");
            assert_eq!(exc.message, format!("odd input: {i}"));
            assert!(exc.traceback.contains("fail_on_odd"));
        } else {
            assert_eq!(result.unwrap(), Value::Int(i as i64));
        }
    }
    let err = pool
        .submit("no_such_module:f", ())
        .unwrap()
        .wait()
        .unwrap_err();
    assert_eq!(py_type(&err), "builtins.ModuleNotFoundError");
}

#[test]
fn an_infinite_loop_is_stopped_at_its_deadline_and_the_interpreter_is_reused() {
    let pool = pool(1, |_| {});
    let before = pool.submit("__main__:whoami", ()).unwrap().wait().unwrap();
    let start = Instant::now();
    let err = pool
        .submit_with(
            "__main__:spin",
            (),
            TaskOptions {
                timeout: Some(Duration::from_millis(200)),
                ..TaskOptions::default()
            },
        )
        .unwrap()
        .wait()
        .unwrap_err();
    let took = start.elapsed();
    let exc = err.as_python().expect("a Python exception");
    assert_eq!(exc.type_name, "builtins.TimeoutError");
    assert!(
        exc.message.contains("deadline of 0.200 s"),
        "{}",
        exc.message
    );
    assert!(
        exc.traceback.contains("spin"),
        "raised inside the task: {}",
        exc.traceback
    );
    // Stopped by the interrupt, not by giving up on the worker (that takes the grace).
    assert!(took < Duration::from_millis(1100), "took {took:?}");
    let after = pool.submit("__main__:whoami", ()).unwrap().wait().unwrap();
    assert_eq!(before, after, "the same interpreter keeps working");
}

#[test]
fn a_task_stuck_in_c_code_times_out_and_its_worker_is_replaced() {
    let pool = pool(1, |c| {
        c.grace(Duration::from_millis(300));
    });
    let before = pool.submit("__main__:whoami", ()).unwrap().wait().unwrap();
    let err = pool
        .submit_with(
            "__main__:sleep",
            (30,),
            TaskOptions {
                timeout: Some(Duration::from_millis(200)),
                ..TaskOptions::default()
            },
        )
        .unwrap()
        .wait()
        .unwrap_err();
    // Past its deadline with no Python code to stop: a timeout holding no exception.
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
        err.to_string().contains("interpreter was replaced"),
        "{err}"
    );
    // The pool keeps its size: the next task runs, in a fresh interpreter.
    let after = pool.submit("__main__:whoami", ()).unwrap().wait().unwrap();
    assert_ne!(before, after);
    assert_eq!(
        pool.submit("__main__:double", (4,))
            .unwrap()
            .wait()
            .unwrap(),
        Value::Int(8)
    );
}

#[test]
fn queued_and_running_tasks_can_be_cancelled() {
    let pool = pool(1, |_| {});
    let running = pool.submit("__main__:spin", ()).unwrap();
    let queued = pool.submit("__main__:record", ("never",)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(queued.cancel());
    assert!(running.cancel());
    assert!(!running.cancel(), "already finished");
    assert!(matches!(running.wait(), Err(Error::Cancelled)));
    assert!(matches!(queued.wait(), Err(Error::Cancelled)));
    // The worker survives and the cancelled task never ran.
    assert_eq!(
        pool.submit("__main__:record", ("ran",))
            .unwrap()
            .wait()
            .unwrap(),
        Value::from("ran")
    );
    let ch = subinterp::Channel::named("pool-record");
    let mut seen = Vec::new();
    while let Ok(m) = ch.try_recv() {
        seen.push(m.into_value().unwrap());
    }
    assert!(!seen.contains(&Value::from("never")), "{seen:?}");
}

#[test]
fn immediate_shutdown_with_infinite_loops_returns_promptly() {
    // Three workers: two spin in Python, one is stuck in C code (a 30 s sleep, which an
    // interrupt does not end); a fourth task waits in the queue.
    let pool = pool(3, |c| {
        c.grace(Duration::from_millis(500));
    });
    let spinning: Vec<_> = (0..2)
        .map(|_| pool.submit("__main__:spin", ()).unwrap())
        .collect();
    let stuck = pool.submit("__main__:sleep", (30,)).unwrap();
    let queued = pool.submit("__main__:double", (1,)).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !(stuck.is_started() && spinning.iter().all(|task| task.is_started())) {
        assert!(Instant::now() < until, "the tasks never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Instant::now();
    pool.shutdown_now();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    for task in spinning {
        assert!(task.wait().is_err());
    }
    assert!(matches!(queued.wait(), Err(Error::Cancelled)));
    // The sleeping task had started (checked above): the prompt return covered an
    // interpreter stuck in C code, abandoned after the grace period, not only a queued
    // task cancelled.
}

#[test]
fn graceful_shutdown_finishes_queued_work_and_then_escalates() {
    let pool = pool(2, |_| {});
    let tasks: Vec<_> = (0..20)
        .map(|i| pool.submit("__main__:double", (i,)).unwrap())
        .collect();
    pool.shutdown(Duration::from_secs(30));
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.wait().unwrap(), Value::Int(2 * i as i64));
    }

    let pool = self::pool(1, |_| {});
    let forever = pool.submit("__main__:spin", ()).unwrap();
    let start = Instant::now();
    pool.shutdown(Duration::from_millis(200));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(forever.wait().is_err());
}

#[test]
fn a_pool_can_start_on_its_first_worker() {
    // One token: the worker whose set-up takes it is ready at once, the others wait at a
    // gate that opens only after new() returned. Waiting for every worker, new() would
    // fail when their wait ends (60 s) instead.
    subinterp::Channel::named("pool-first-token")
        .send(Value::from("go"))
        .unwrap();
    let gate = "import subinterp\n\
                try:\n    \
                    subinterp.channel('pool-first-token').try_recv()\n\
                except subinterp.ChannelEmpty:\n    \
                    subinterp.channel('pool-first-gate').recv(timeout=60)\n";
    let mut config = PoolConfig::new();
    config
        .workers(3)
        .start_on_first_worker(true)
        .init(FUNCS)
        .init(gate);
    let pool = Pool::new(&common::runtime(), &config).expect("start the pool");
    let tasks: Vec<_> = (0..30)
        .map(|_| pool.submit("__main__:whoami", ()).unwrap())
        .collect();
    let ids: Vec<Value> = tasks.into_iter().map(|task| task.wait().unwrap()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "only the first worker is ready: {ids:?}"
    );
    assert!(matches!(ids[0], Value::Int(id) if id > 0), "{ids:?}");
    let gate = subinterp::Channel::named("pool-first-gate");
    for _ in 0..2 {
        gate.send(Value::from("open")).unwrap();
    }
    let two = pool.submit("__main__:double", (1,)).unwrap();
    assert_eq!(two.wait().unwrap(), Value::Int(2));
    // A set-up error of the first worker is still new()'s.
    let mut config = PoolConfig::new();
    config
        .workers(2)
        .start_on_first_worker(true)
        .init("raise ValueError('no set-up')");
    let err = Pool::new(&common::runtime(), &config).unwrap_err();
    assert!(err.to_string().contains("no set-up"), "{err}");
}

#[test]
fn cancel_queued_leaves_a_started_task_alone() {
    let pool = pool(1, |_| {});
    let running = pool.submit("__main__:sleep", (0.5,)).unwrap();
    let queued = pool.submit("__main__:double", (4,)).unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while !running.is_started() {
        assert!(Instant::now() < until, "the first task never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!queued.is_started());
    assert!(!running.cancel_queued(), "it runs already");
    assert!(queued.cancel_queued());
    assert_eq!(running.wait().unwrap(), Value::from("slept"));
    assert!(matches!(queued.wait(), Err(Error::Cancelled)));
}

#[test]
fn dropping_the_pool_cancels_what_is_queued_and_interrupts_what_runs() {
    let pool = pool(1, |_| {});
    let running = pool.submit("__main__:spin", ()).unwrap();
    let queued: Vec<_> = (0..5)
        .map(|i| pool.submit("__main__:double", (i,)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    drop(pool);
    let err = running.wait().unwrap_err();
    assert_eq!(py_type(&err), "builtins.KeyboardInterrupt");
    for task in queued {
        assert!(matches!(task.wait(), Err(Error::Cancelled)));
    }
}

#[test]
fn workers_are_recycled_after_max_tasks() {
    let pool = pool(1, |c| {
        c.max_tasks_per_worker(3);
    });
    let ids: Vec<Value> = (0..7)
        .map(|_| pool.submit("__main__:whoami", ()).unwrap().wait().unwrap())
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[1], ids[2]);
    assert_ne!(ids[2], ids[3], "a fresh interpreter after 3 tasks: {ids:?}");
    assert_eq!(ids[3], ids[5]);
    assert_ne!(ids[5], ids[6]);
}

#[test]
fn initializer_errors_fail_pool_creation() {
    let mut config = PoolConfig::new();
    config.workers(2).init("import no_such_module_anywhere");
    let err = Pool::new(&common::runtime(), &config).unwrap_err();
    assert_eq!(py_type(&err), "builtins.ModuleNotFoundError");
    let mut config = PoolConfig::new();
    config.workers(0);
    assert!(matches!(
        Pool::new(&common::runtime(), &config),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn tasks_can_be_awaited_and_waited_with_a_timeout() {
    let pool = pool(1, |_| {});
    let slow = pool.submit("__main__:sleep", (0.3,)).unwrap();
    let slow = slow.wait_timeout(Duration::from_millis(10)).unwrap_err();
    assert_eq!(
        slow.wait_timeout(Duration::from_secs(5)).unwrap().unwrap(),
        Value::from("slept")
    );
    let task = pool.submit("__main__:double", (21,)).unwrap();
    assert_eq!(common::block_on(task).unwrap(), Value::Int(42));
}

#[test]
fn a_pool_whose_workers_cannot_be_replaced_fails_its_tasks_instead_of_hanging() {
    // The initializer succeeds for the first worker only; the worker is replaced after a
    // task stuck in C code, and every replacement's initializer raises.
    let marker = common::scratch_dir("replace").join("initialised");
    let init = format!(
        "import os\n\
         if os.path.exists({marker:?}):\n    \
             raise RuntimeError('the initializer refuses to run twice')\n\
         open({marker:?}, 'w').close()\n"
    );
    let pool = pool(1, |c| {
        c.init(init)
            .timeout(Duration::from_millis(100))
            .grace(Duration::from_millis(100));
    });
    let started = Instant::now();
    let results: Vec<_> = pool
        .map("__main__:sleep", [3.0, 0.0, 0.0, 0.0].map(|s| (s,)))
        .unwrap()
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let first = results[0].as_ref().unwrap_err();
    assert!(first.is_timeout(), "{first:?}");
    for result in &results[1..] {
        let err = result.as_ref().unwrap_err();
        assert!(matches!(err, Error::Setup(_)), "{err:?}");
        let exc = err.as_python().expect("the initializer's exception");
        assert_eq!(exc.type_name, "builtins.RuntimeError");
        assert_eq!(exc.message, "the initializer refuses to run twice");
        assert!(err.to_string().contains("no workers left"), "{err}");
    }
    // Later submissions fail at once, with the same cause.
    let err = pool.submit("__main__:double", (1,)).unwrap_err();
    assert!(matches!(err, Error::Setup(_)), "{err:?}");
    pool.shutdown(Duration::from_secs(1));
}

#[test]
fn an_initializer_that_never_ends_fails_at_the_set_up_deadline() {
    let dir = common::scratch_dir("hang-import");
    std::fs::write(dir.join("hangs_at_import.py"), "while True:\n    pass\n").unwrap();
    for init in ["while True:\n    pass", "import hangs_at_import"] {
        let mut config = PoolConfig::new();
        config
            .workers(2)
            .init(format!("import sys\nsys.path.insert(0, {:?})", dir))
            .init(init)
            .setup_timeout(Duration::from_millis(300));
        let started = Instant::now();
        let err = Pool::new(&common::runtime(), &config).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{init}");
        let exc = err.as_python().unwrap_or_else(|| panic!("{err:?}"));
        assert_eq!(exc.type_name, "builtins.TimeoutError", "{init}");
        assert_eq!(
            exc.message,
            "the pool's initializer ran past its set-up deadline of 0.300 s"
        );
    }
}

#[test]
fn the_set_up_deadline_defaults_to_the_task_deadline_or_30_seconds() {
    let mut config = PoolConfig::new();
    assert_eq!(config.setup_deadline(), None);
    config.timeout(Duration::from_secs(2));
    assert_eq!(config.setup_deadline(), Some(Duration::from_secs(30)));
    config.timeout(Duration::from_secs(90));
    assert_eq!(config.setup_deadline(), Some(Duration::from_secs(90)));
    config.setup_timeout(Duration::from_secs(1));
    assert_eq!(config.setup_deadline(), Some(Duration::from_secs(1)));
}

#[test]
fn a_task_that_catches_its_timeout_and_returns_is_still_timed_out() {
    let pool = pool(1, |c| {
        c.init(
            "def stubborn():\n    \
                 try:\n        \
                     while True:\n            \
                         time.sleep(0.005)\n    \
                 except TimeoutError:\n        \
                     return 'finished anyway'\n",
        );
    });
    let options = TaskOptions {
        timeout: Some(Duration::from_millis(100)),
        ..TaskOptions::default()
    };
    let err = pool
        .submit_with("__main__:stubborn", (), options)
        .unwrap()
        .wait()
        .unwrap_err();
    let exc = err.as_python().unwrap();
    assert_eq!(exc.type_name, "builtins.TimeoutError");
    assert!(
        exc.message
            .starts_with("the task ran past its deadline of 0.100 s"),
        "{}",
        exc.message
    );
    assert!(exc.message.contains("returned a result"), "{}", exc.message);
    // The worker goes on with the next task.
    assert_eq!(
        pool.submit("__main__:double", (4,))
            .unwrap()
            .wait()
            .unwrap(),
        Value::Int(8)
    );
}

#[test]
fn workers_started_on_demand_grow_with_the_work_up_to_the_limit() {
    let pool = pool(4, |c| {
        c.start_on_demand(true);
    });
    // One task at a time: the one worker started by new() runs them all.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(
            pool.submit("__main__:whoami", ())
                .unwrap()
                .wait()
                .unwrap()
                .as_i64(),
        );
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    // Tasks that wait for one another need a worker each: 4 run at once.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            pool.submit(
                "__main__:exec_and_wait",
                (format!("pool-demand-{i}"), 4_i64),
            )
            .unwrap()
        })
        .collect();
    for task in tasks {
        assert_eq!(task.wait().unwrap(), Value::Int(4));
    }
    // Never more than the limit: 12 sleeping tasks keep the 4 workers.
    let tasks: Vec<_> = (0..12)
        .map(|_| pool.submit("__main__:whoami_after", (0.05,)).unwrap())
        .collect();
    let ids: std::collections::HashSet<_> = tasks
        .into_iter()
        .map(|t| t.wait().unwrap().as_i64())
        .collect();
    assert!(ids.len() <= 4, "{ids:?}");
    pool.shutdown(Duration::from_secs(10));
}
