//! Memory accounting, memory limits and CPU time per interpreter, and CPU budgets of pool
//! tasks.
//!
//! The tests that allocate a lot run one at a time (a lock), so that the process's peak
//! RSS can be compared with the limit: it must stay within the limit plus a slack of
//! 100 MB (the runtime, the other interpreter, the allocator's arenas).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use subinterp::{
    parse_size, Error, Interpreter, InterpreterConfig, MemoryPressure, Pool, PoolConfig, Runtime,
    RuntimeConfig, SoftLimitAction, TaskOptions, Value,
};

const MB: u64 = 1 << 20;
/// How far the process's peak RSS may grow past the limit of the interpreter that
/// allocates.
const RSS_SLACK: u64 = 100 * MB;

/// The runtime of these tests, with memory accounting (the default, said explicitly).
fn runtime() -> Runtime {
    Runtime::get_or_init(RuntimeConfig::new().memory_accounting(true)).expect("start Python")
}

fn isolated() -> Interpreter {
    Interpreter::new(&runtime(), &InterpreterConfig::isolated()).expect("create interpreter")
}

static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The process's peak resident set size (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kb * 1024
}

fn limited(bytes: u64) -> Interpreter {
    let mut config = InterpreterConfig::isolated();
    config.memory_limit(bytes);
    Interpreter::new(&runtime(), &config).expect("create interpreter")
}

/// Grows a list of ints until MemoryError, and returns how many it held; bounded (60 M
/// ints, well past any limit of these tests), so that a limit that does not work fails
/// the test instead of filling the machine. The asynchronous MemoryError may also land
/// in the handler, before it let the list go: the outer handler takes that one.
const GROW_INTS: &str = r#"
def grow():
    items = []
    try:
        try:
            for _ in range(60_000_000):
                items.append(len(items) * 7 + 1000)
            return -1
        except MemoryError:
            n = len(items)
            items = None
            return n
    except MemoryError:
        n = len(items) if items is not None else 0
        items = None
        return n
"#;

#[test]
fn an_interpreter_past_its_limit_gets_memory_error_while_another_goes_on() {
    let _heavy = heavy();
    let rss_before = peak_rss();
    let greedy = limited(100 * MB);
    let other = isolated();
    greedy.exec(GROW_INTS).unwrap();
    other
        .exec("def work():\n    return sum(len(str(i)) for i in range(3_000_000))")
        .unwrap();
    std::thread::scope(|scope| {
        let busy = scope.spawn(|| other.call("__main__:work", ()).unwrap());
        let grown = greedy.call("__main__:grow", ()).unwrap();
        let Value::Int(n) = grown else {
            panic!("{grown:?}")
        };
        // 100 MB of small ints and list slots: millions of them.
        assert!(n > 1_000_000, "only {n} ints before the MemoryError");
        assert_eq!(busy.join().unwrap(), Value::Int(19_888_890));
    });
    // The limited interpreter goes on once it freed its memory.
    assert_eq!(greedy.eval("sum(range(10))").unwrap(), Value::Int(45));
    assert!(greedy.memory_refusals() >= 1);
    let peak = greedy.memory_peak().unwrap();
    // Small objects past the limit are granted until the asynchronous MemoryError stops
    // the code (a few milliseconds later); the ceiling, a quarter more, is never passed.
    assert!(peak <= 125 * MB, "peak {peak} past the ceiling");
    // The list grows by steps of an eighth: its last step may be refused well before
    // the limit.
    assert!(
        peak > 75 * MB,
        "peak {peak}: the list did not reach the limit"
    );
    assert_eq!(other.memory_refusals(), 0);
    let grown_rss = peak_rss().saturating_sub(rss_before);
    assert!(
        grown_rss <= 100 * MB + RSS_SLACK,
        "peak RSS grew by {} MB",
        grown_rss / MB
    );
}

/// CPython 3.13.0 crashed (SIGSEGV in dictresize) after small allocations of its
/// internals had been refused again and again at the limit: code that keeps catching
/// the MemoryError and allocating more must never bring the process down.
#[test]
fn allocating_again_and_again_at_the_limit_never_crashes() {
    let _heavy = heavy();
    let interp = limited(64 * MB);
    interp
        .exec(
            r#"
def blocks(rounds):
    refused = 0
    keep = []
    for i in range(rounds):
        try:
            keep.append(bytearray(1 << 20))
            names = {f"name_{i}_{j}": j for j in range(50)}
        except MemoryError:
            refused += 1
    return refused

def small(rounds):
    # The asynchronous MemoryError may also land in the handler, before it freed the
    # memory: the outer handler takes that one.
    refused = 0
    keep = []
    while refused < rounds:
        try:
            try:
                for _ in range(20_000_000):
                    keep.append(str(len(keep)) * 3)
                return -1
            except MemoryError:
                keep.clear()
                refused += 1
        except MemoryError:
            keep.clear()
            refused += 1
    return refused
"#,
        )
        .unwrap();
    let Value::Int(refused) = interp.call("__main__:blocks", (400,)).unwrap() else {
        panic!()
    };
    assert!(refused > 300, "{refused} of 400 blocks refused");
    let Value::Int(refused) = interp.call("__main__:small", (50,)).unwrap() else {
        panic!()
    };
    assert!(refused >= 50, "{refused}");
    // Still working: fresh strings are interned, dicts resized, modules imported.
    interp
        .exec("import json, decimal\nx = {str(i): i for i in range(10_000)}")
        .unwrap();
    assert!(interp.memory_peak().unwrap() <= 64 * MB + 16 * MB + MB);
}

#[test]
fn one_large_bytearray_past_the_limit_is_a_memory_error() {
    let _heavy = heavy();
    let interp = limited(100 * MB);
    let caught = interp
        .eval(
            "(lambda: (exec('try:\\n    b = bytearray(200 * 2**20)\\n    r = \"allocated\"\\n\
             except MemoryError:\\n    r = \"MemoryError\"', globals()), r)[1])()",
        )
        .unwrap();
    assert_eq!(caught, Value::from("MemoryError"));
    // Uncaught, it reaches the host as a Python MemoryError.
    match interp.exec("b = bytearray(150 * 2**20)") {
        Err(Error::Python(exc)) => assert!(exc.is("MemoryError"), "{exc:?}"),
        other => panic!("{other:?}"),
    }
    // Below the limit it works.
    interp
        .exec("b = bytearray(50 * 2**20); del b")
        .expect("50 MB under a 100 MB limit");
}

#[test]
fn a_large_allocation_shows_in_the_peak_and_leaves_in_use_when_freed() {
    let _heavy = heavy();
    let interp = isolated();
    let before = interp
        .memory_in_use()
        .expect("memory accounting is on by default");
    interp.exec("b = bytes(50 * 2**20)").unwrap();
    let during = interp.memory_in_use().unwrap();
    assert!(
        during >= before + 50 * MB,
        "{before} -> {during}: 50 MB not counted"
    );
    interp.exec("del b").unwrap();
    let after = interp.memory_in_use().unwrap();
    assert!(after < before + 5 * MB, "{before} -> {after} after del");
    let peak = interp.memory_peak().unwrap();
    assert!(peak >= before + 50 * MB, "peak {peak}");
    // The figures stay readable after the interpreter ended.
    interp.close().unwrap();
    assert!(interp.memory_peak().unwrap() >= 50 * MB);
}

#[test]
fn threads_started_by_python_code_are_charged_to_their_interpreter() {
    let _heavy = heavy();
    let interp = isolated();
    let before = interp.memory_in_use().unwrap();
    interp
        .exec(
            "import threading\nkept = []\n\
             t = threading.Thread(target=lambda: kept.append(bytes(30 * 2**20)))\n\
             t.start(); t.join()",
        )
        .unwrap();
    let after = interp.memory_in_use().unwrap();
    assert!(
        after >= before + 30 * MB,
        "{before} -> {after}: the thread's 30 MB not counted"
    );
}

#[test]
fn a_limit_applies_to_threads_started_by_python_code() {
    let _heavy = heavy();
    let interp = limited(64 * MB);
    interp
        .exec(
            "import threading\nseen = []\n\
             def grab():\n    try:\n        bytes(100 * 2**20)\n        seen.append('allocated')\n\
             \x20   except MemoryError:\n        seen.append('MemoryError')\n\
             t = threading.Thread(target=grab)\nt.start(); t.join()",
        )
        .unwrap();
    assert_eq!(
        interp.eval("seen").unwrap(),
        Value::List(vec![Value::from("MemoryError")])
    );
}

#[test]
fn a_limit_of_zero_is_refused() {
    let mut config = InterpreterConfig::isolated();
    config.memory_limit(0);
    let err = Interpreter::new(&runtime(), &config).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err:?}");
}

#[test]
fn cpu_time_counts_a_one_second_loop() {
    let interp = isolated();
    let before = interp.cpu_time();
    // Spins until the thread itself has used 1 s of CPU (whatever the machine's load).
    interp
        .exec(
            "import time\nt0 = time.thread_time()\n\
             while time.thread_time() - t0 < 1.0:\n    pass",
        )
        .unwrap();
    let used = interp.cpu_time() - before;
    assert!(
        used >= Duration::from_millis(950) && used <= Duration::from_millis(2000),
        "a 1 s CPU loop counted as {used:?}"
    );
    interp.close().unwrap();
    assert!(
        interp.cpu_time() >= used,
        "the last value is kept after close"
    );
}

#[test]
fn a_pool_task_past_the_memory_limit_fails_and_its_worker_is_replaced() {
    let _heavy = heavy();
    let mut interp_config = InterpreterConfig::isolated();
    interp_config.memory_limit(100 * MB);
    let mut config = PoolConfig::new();
    config.workers(1).interpreter(interp_config);
    let pool = Pool::new(&runtime(), &config).unwrap();
    let first = pool.submit("subinterp:id", ()).unwrap().wait().unwrap();
    match pool
        .submit("builtins:bytearray", (200 * MB as i64,))
        .unwrap()
        .wait()
    {
        Err(Error::Python(exc)) => assert!(exc.is("MemoryError"), "{exc:?}"),
        other => panic!("{other:?}"),
    }
    let second = pool.submit("subinterp:id", ()).unwrap().wait().unwrap();
    assert_ne!(first, second, "the worker was not replaced");
    // Tasks under the limit run as before.
    let ok = pool
        .submit("builtins:bytearray", (MB as i64,))
        .unwrap()
        .wait();
    assert!(ok.is_ok(), "{ok:?}");
    let third = pool.submit("subinterp:id", ()).unwrap().wait().unwrap();
    assert_eq!(second, third, "a task under the limit replaced the worker");
    pool.shutdown(Duration::from_secs(10));
}

#[test]
fn a_cpu_budget_stops_a_loop() {
    let mut config = PoolConfig::new();
    config
        .workers(1)
        .init("def spin():\n    while True:\n        pass\n")
        .init("def nap():\n    import time\n    time.sleep(1.0)\n    return 'rested'\n");
    let pool = Pool::new(&runtime(), &config).unwrap();
    let budget = TaskOptions {
        cpu_budget: Some(Duration::from_millis(300)),
        ..TaskOptions::default()
    };
    let err = pool
        .submit_with("__main__:spin", (), budget)
        .unwrap()
        .wait()
        .unwrap_err();
    match &err {
        Error::Timeout { message, .. } => {
            assert!(message.contains("CPU budget of 0.300 s"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // Sleeping uses no CPU: a task waiting longer than its budget is not stopped.
    let rested = pool
        .submit_with("__main__:nap", (), budget)
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(rested, Value::from("rested"));
    pool.shutdown(Duration::from_secs(10));
}

#[test]
fn sizes_are_read_with_binary_units() {
    assert_eq!(parse_size("256M").unwrap(), 256 * MB);
    assert_eq!(parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("1.5k").unwrap(), 1536);
    assert_eq!(parse_size("4096").unwrap(), 4096);
    assert_eq!(parse_size(" 64 MB ").unwrap(), 64 * MB);
    for bad in ["", "0", "M", "-1M", "1.5", "12X", "99999999999T", "0.1K"] {
        let err = parse_size(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{bad:?}: {err:?}");
    }
}

fn soft_limited(
    soft: u64,
    action: SoftLimitAction,
) -> (InterpreterConfig, Arc<Mutex<Vec<MemoryPressure>>>) {
    let told = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&told);
    let mut config = InterpreterConfig::isolated();
    config.memory_soft_limit(soft, move |pressure| {
        record.lock().unwrap().push(*pressure);
        action
    });
    (config, told)
}

/// Waits up to 10 s for `cond`.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[test]
fn a_soft_limit_tells_the_host_once_per_passing() {
    let _heavy = heavy();
    let (config, told) = soft_limited(32 * MB, SoftLimitAction::Continue);
    let interp = Interpreter::new(&runtime(), &config).unwrap();
    interp.exec("a = bytearray(40 * 2**20)").unwrap();
    assert!(eventually(|| told.lock().unwrap().len() == 1));
    let first = told.lock().unwrap()[0];
    assert_eq!(first.interpreter, interp.id());
    assert_eq!(first.soft_limit, 32 * MB);
    assert!(first.in_use >= 40 * MB, "{first:?}");
    assert_eq!(first.limit, None);
    // Still past it: not told again.
    interp.exec("b = bytearray(8 * 2**20)").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(told.lock().unwrap().len(), 1);
    // Under it again, then past it: told again.
    interp.exec("del a, b").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    interp.exec("c = bytearray(40 * 2**20)").unwrap();
    assert!(eventually(|| told.lock().unwrap().len() == 2));
}

#[test]
fn a_soft_limit_can_raise_memory_error() {
    let _heavy = heavy();
    let (config, told) = soft_limited(32 * MB, SoftLimitAction::RaiseMemoryError);
    let interp = Interpreter::new(&runtime(), &config).unwrap();
    interp.exec(GROW_INTS).unwrap();
    let Value::Int(n) = interp.call("__main__:grow", ()).unwrap() else {
        panic!()
    };
    assert!(n > 100_000, "{n}");
    assert_eq!(told.lock().unwrap().len(), 1);
    assert!(interp.memory_peak().unwrap() < 64 * MB);
}

#[test]
fn a_soft_limit_can_replace_a_pool_worker_after_its_task() {
    let _heavy = heavy();
    let (config, told) = soft_limited(32 * MB, SoftLimitAction::ReplaceWorker);
    let mut pool = PoolConfig::new();
    pool.workers(1).interpreter(config).init(
        "import subinterp, time\n\
         def hold(mb):\n    global held\n    held = bytearray(mb << 20)\n    time.sleep(0.3)\n    return subinterp.id()\n",
    );
    let pool = Pool::new(&runtime(), &pool).unwrap();
    let first = pool.submit("__main__:hold", (1,)).unwrap().wait().unwrap();
    let big = pool.submit("__main__:hold", (40,)).unwrap().wait().unwrap();
    assert_eq!(first, big, "the task itself finishes in its worker");
    assert_eq!(told.lock().unwrap().len(), 1);
    let after = pool.submit("__main__:hold", (1,)).unwrap().wait().unwrap();
    assert_ne!(big, after, "the worker was replaced");
    pool.shutdown(Duration::from_secs(10));
}
