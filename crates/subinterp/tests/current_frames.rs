//! `sys._current_frames()` and `sys._current_exceptions()` while other interpreters run
//! Python (the `current-frames` hazard of `subinterp::hazards`): CPython's own make frame
//! objects for the threads of every interpreter and abort the process within
//! milliseconds; the runtime's report the calling interpreter's threads only.
//!
//! Each scenario runs in a fresh process (this test binary, re-run with `--exact
//! scenario_helper --ignored`), since a crash takes the whole process with it.

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::describe;
use subinterp::{
    Channel, Interpreter, InterpreterConfig, InterruptReason, Pool, PoolConfig, Runtime,
    RuntimeConfig, Value,
};

const SCENARIO: &str = "SUBINTERP_TEST_FRAMES_SCENARIO";
const DONE: &str = "scenario finished";

/// A sampler for one interpreter: a thread that calls `sys._current_frames()` and
/// `sys._current_exceptions()` every millisecond beside an idle second thread of the same
/// interpreter, until told to stop on the channel `<name>-stop`; it then sends a JSON
/// report on `<name>-report`.
const SAMPLER: &str = r#"
import json, sys, threading, time, traceback, subinterp

def _sampler(name, period):
    me = threading.get_ident()
    stop = subinterp.channel(name + '-stop')
    idle = threading.Event()
    helper = threading.Thread(target=idle.wait, name='idle')
    helper.start()
    seen, errors, samples = set(), [], 0
    def check(ok, what):
        if not ok and len(errors) < 5:
            errors.append(what)
    while True:
        frames = sys._current_frames()
        samples += 1
        seen.update(frames)
        check(me in frames, 'the sampler is missing')
        check(helper.ident in frames, 'the second thread is missing')
        if me in frames:
            check(frames[me].f_code.co_name == '_sampler', frames[me].f_code.co_name)
            check('_sampler' in ''.join(traceback.format_stack(frames[me])), 'stack')
        exceptions = sys._current_exceptions()
        check(exceptions.get(me, 0) is None, 'exception outside a handler')
        if samples % 50 == 0:
            try:
                raise ValueError(samples)
            except ValueError as exc:
                check(sys._current_exceptions().get(me) is exc, 'handled exception')
        try:
            stop.try_recv()
            break
        except subinterp.ChannelEmpty:
            pass
        time.sleep(period)
    idle.set()
    helper.join()
    subinterp.channel(name + '-report').send(json.dumps(
        {'samples': samples, 'seen': sorted(seen), 'errors': errors, 'me': me,
         'helper': helper.ident}))
"#;

/// Pool tasks: about a millisecond of Python each, returning their thread's identifier.
const WORK: &str = "\
import threading
def work(i):
    total = 0
    for k in range(20000):
        total += k * k
    return threading.get_ident()
";

/// Runs in a fresh process for the tests below; does nothing otherwise.
#[test]
#[ignore = "helper run by the other tests in a process of its own"]
fn scenario_helper() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let mut config = RuntimeConfig::new();
    config.no_virtual_env();
    let rt = Runtime::get_or_init(&config).expect("start Python");
    match scenario.as_str() {
        "samplers" => samplers(&rt),
        other => panic!("no scenario {other}"),
    }
    println!("{DONE}");
}

#[derive(Debug)]
struct Report {
    samples: u64,
    seen: BTreeSet<u64>,
    errors: Vec<String>,
    me: u64,
    helper: u64,
}

fn report(name: &str) -> Report {
    let text = Channel::named(&format!("{name}-report"))
        .recv_timeout(Duration::from_secs(60))
        .expect("the sampler's report")
        .into_value()
        .expect("a value");
    let Value::Str(text) = text else {
        panic!("a JSON report, not {text:?}")
    };
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let ids = |key: &str| -> BTreeSet<u64> {
        json[key]
            .as_array()
            .expect("a list")
            .iter()
            .map(|v| v.as_u64().expect("an identifier"))
            .collect()
    };
    Report {
        samples: json["samples"].as_u64().expect("samples"),
        seen: ids("seen"),
        errors: json["errors"]
            .as_array()
            .expect("errors")
            .iter()
            .map(|e| e.to_string())
            .collect(),
        me: json["me"].as_u64().expect("me"),
        helper: json["helper"].as_u64().expect("helper"),
    }
}

/// A pool of three isolated interpreters runs rounds of Python tasks while a sampler
/// runs in another isolated interpreter and one in the main interpreter, and a thread
/// keeps interrupting the sampler's interpreter.
fn samplers(rt: &Runtime) {
    let mut config = PoolConfig::new();
    config.workers(3).init(WORK);
    let pool = Pool::new(rt, &config).expect("start the pool");
    let warm: Vec<_> = pool
        .map("__main__:work", (0..30).map(|i| (i,)))
        .expect("map")
        .collect();
    assert!(warm.iter().all(|r| r.is_ok()), "{warm:?}");

    // A sampler in an isolated interpreter of its own.
    let sampler = Interpreter::new(rt, &InterpreterConfig::isolated()).expect("interpreter");
    sampler.exec(SAMPLER).expect("define the sampler");
    sampler
        .exec("threading.Thread(target=_sampler, args=('sub', 0.001)).start()")
        .expect("start the sampler");

    // A sampler in the main interpreter: a module whose import starts it, imported there
    // through the runtime's preparation of modules in the main interpreter.
    let dir = common::scratch_dir("frames");
    std::fs::write(
        dir.join("subinterp_main_sampler.py"),
        format!("{SAMPLER}\nthreading.Thread(target=_sampler, args=('main', 0.001)).start()\n"),
    )
    .expect("write the module");
    let starter = Interpreter::new(rt, &InterpreterConfig::isolated()).expect("interpreter");
    starter
        .exec(&format!(
            "import subinterp\nsubinterp._prepare_in_main('subinterp_main_sampler', [{:?}])",
            dir.to_str().expect("a UTF-8 path")
        ))
        .expect("start the main interpreter's sampler");
    starter.close().expect("close");

    // Meanwhile a thread interrupts the sampler's (idle) interpreter over and over: each
    // interrupt makes a thread state in that interpreter from another thread, attaches it
    // and deletes it, racing the sampler's walk over the interpreter's thread states.
    let stop = Arc::new(AtomicBool::new(false));
    let interrupter = {
        let (handle, stop) = (sampler.interrupt_handle(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                handle
                    .interrupt(InterruptReason::Timeout)
                    .expect("interrupt the idle interpreter");
                calls += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            calls
        })
    };

    let mut workers = BTreeSet::new();
    for round in 0..5 {
        let results: Vec<_> = pool
            .map("__main__:work", (0..150).map(|i| (i,)))
            .expect("map")
            .collect();
        for result in results {
            let ident = result.unwrap_or_else(|e| panic!("round {round}: {e}"));
            let Value::Int(ident) = ident else {
                panic!("an identifier, not {ident:?}")
            };
            workers.insert(ident as u64);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let interrupts = interrupter.join().expect("the interrupter");
    assert!(interrupts > 0);
    for name in ["sub", "main"] {
        Channel::named(&format!("{name}-stop"))
            .send(Value::None)
            .expect("stop the sampler");
    }
    let reports = [report("sub"), report("main")];
    pool.shutdown(Duration::from_secs(30));
    sampler.close().expect("close the sampler's interpreter");
    let _ = std::fs::remove_dir_all(&dir);
    for (name, report) in ["sub", "main"].iter().zip(&reports) {
        println!(
            "{name}: {} samples, {} threads seen",
            report.samples,
            report.seen.len()
        );
        assert!(report.samples >= 10, "{name}: {report:?}");
        assert!(report.errors.is_empty(), "{name}: {report:?}");
        assert!(report.seen.contains(&report.me), "{name}: {report:?}");
        assert!(report.seen.contains(&report.helper), "{name}: {report:?}");
        let foreign: Vec<_> = report.seen.intersection(&workers).collect();
        assert!(
            foreign.is_empty(),
            "{name} saw the pool's threads {foreign:?}: {report:?}"
        );
    }
    assert!(!workers.is_empty());
    // Neither sampler sees the other interpreter's threads.
    let [sub, main] = &reports;
    assert!(sub.seen.is_disjoint(&main.seen), "{sub:?}\n{main:?}");
}

fn run_scenario(scenario: &str) -> Output {
    common::scenario_command()
        .env(SCENARIO, scenario)
        .output()
        .expect("run the scenario helper")
}

/// Samplers every millisecond in an isolated interpreter and in the main interpreter
/// while a pool runs rounds of tasks: no crash, each sampler sees its own thread and its
/// interpreter's second thread, never a pool worker. Three processes in a row.
#[test]
fn samplers_beside_a_running_pool_see_their_own_interpreter_only() {
    for run in 0..3 {
        let out = run_scenario("samplers");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(DONE),
            "run {run}: {}",
            describe(&out)
        );
    }
}

/// The replacement is installed, with the layout of the running version known, in new
/// interpreters and in the main interpreter alike.
#[test]
fn the_replacement_reports_other_threads_of_the_interpreter() {
    let rt = Runtime::get_or_init(&RuntimeConfig::new()).expect("start Python");
    let interp = Interpreter::new(&rt, &InterpreterConfig::legacy()).expect("interpreter");
    let code = "\
import sys, threading
ready, done = threading.Event(), threading.Event()
def wait():
    ready.set()
    done.wait()
t = threading.Thread(target=wait)
t.start()
ready.wait()
frames = sys._current_frames()
found = (threading.get_ident() in frames, t.ident in frames, sys._current_frames.__module__,
         'this interpreter' in sys._current_frames.__doc__)
done.set()
t.join()
";
    interp.exec(code).expect("run");
    assert_eq!(
        interp.eval("found").expect("found"),
        Value::Tuple(vec![
            Value::Bool(true),
            Value::Bool(true),
            Value::Str("sys".into()),
            Value::Bool(true)
        ])
    );
    assert!(interp
        .eval("sys._current_frames(1)")
        .unwrap_err()
        .to_string()
        .contains("takes no arguments"));
    interp.close().expect("close");
}
