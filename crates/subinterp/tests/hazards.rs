//! CPython's own subinterpreter crashes that the runtime works around (see
//! `subinterp::hazards`): interpreters and pools whose code imports `datetime` and
//! `decimal` on CPython 3.12 and 3.13.
//!
//! Each scenario runs in a fresh process (this test binary, re-run with `--exact
//! scenario_helper --ignored`), since a crash takes the whole process with it and CPython
//! starts once per process. Each is repeated: the crashes are frequent but not certain.

use std::os::unix::process::ExitStatusExt;
use std::process::Output;
use std::sync::{Arc, Barrier};

mod common;

use common::describe;
use subinterp::{
    hazards, Interpreter, InterpreterConfig, Pool, PoolConfig, Runtime, RuntimeConfig,
};

const SCENARIO: &str = "SUBINTERP_TEST_HAZARD_SCENARIO";
const PREPARE: &str = "SUBINTERP_TEST_HAZARD_PREPARE";
const DONE: &str = "scenario finished";

/// Code that loads `_datetime` (its static types crash 3.13.0, python/cpython#136423),
/// `_decimal` (single-phase on 3.12, python/cpython#116510) and `_hashlib` (its keyword
/// tuples crash 3.12.1 at exit, python/cpython#119213) in each interpreter.
const USES_BOTH: &str = "\
import datetime, decimal, hashlib
hashlib.md5(b'x', usedforsecurity=False)
def work(x):
    day = datetime.date.fromordinal(x + 1) + datetime.timedelta(days=1)
    return f'{day.isoformat()} {decimal.Decimal(x) / 7:.3f}'
work(1)
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
    if let Ok(prepare) = std::env::var(PREPARE) {
        config.prepare_extensions(prepare == "1");
    }
    let rt = Runtime::get_or_init(&config).expect("start Python");
    match scenario.as_str() {
        "interpreters" => interpreters(&rt, InterpreterConfig::isolated()),
        "legacy" => interpreters(&rt, InterpreterConfig::legacy()),
        "pool" => {
            let mut config = PoolConfig::new();
            config.workers(4).init(USES_BOTH);
            let pool = Pool::new(&rt, &config).expect("start the pool");
            let results: Vec<_> = pool
                .map("__main__:work", (0..200).map(|i| (i,)))
                .expect("map")
                .collect();
            assert_eq!(results.len(), 200);
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
            pool.shutdown(std::time::Duration::from_secs(10));
        }
        "settled" => {
            // All is written; then CPython dies of a signal while interpreters end.
            println!("{DONE}");
            hazards::settle_exit(7, "settled: results complete, CPython crashed at the end\n");
            std::process::abort();
        }
        other => panic!("no scenario {other}"),
    }
    println!("{DONE}");
}

/// Four interpreters on threads of their own, all alive at once, then all closed: the
/// way a pool uses them, and the way that crashes.
fn interpreters(rt: &Runtime, config: InterpreterConfig) {
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (rt, config, barrier) = (rt.clone(), config.clone(), barrier.clone());
            std::thread::spawn(move || {
                let interp = Interpreter::new(&rt, &config).expect("create interpreter");
                interp.exec(USES_BOTH).expect("run the code");
                barrier.wait();
                interp.close().expect("close");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("interpreter thread");
    }
}

fn run_scenario(scenario: &str, prepare: Option<bool>) -> Output {
    let mut command = common::scenario_command();
    command.env(SCENARIO, scenario).env_remove(PREPARE);
    if let Some(prepare) = prepare {
        command.env(PREPARE, if prepare { "1" } else { "0" });
    }
    command.output().expect("run the scenario helper")
}

fn assert_survives(scenario: &str, runs: usize) {
    for run in 0..runs {
        let out = run_scenario(scenario, None);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(DONE),
            "{scenario}, run {run}: {}",
            describe(&out)
        );
    }
}

fn python_version() -> &'static str {
    env!("SUBINTERP_BUILD_PYTHON_VERSION")
}

#[test]
fn four_isolated_interpreters_using_datetime_and_decimal_survive() {
    assert_survives("interpreters", 5);
}

#[test]
fn four_legacy_interpreters_using_datetime_and_decimal_survive() {
    assert_survives("legacy", 3);
}

#[test]
fn a_pool_of_four_using_datetime_and_decimal_survives() {
    assert_survives("pool", 3);
}

/// The same scenario without the preparation crashes on the versions with the hazard:
/// the test above passes because of the workaround, not by luck.
#[test]
fn without_the_preparation_cpython_crashes() {
    if !hazards::needs_preparation(python_version()) {
        eprintln!("CPython {} has no such hazard", python_version());
        return;
    }
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        let out = run_scenario("interpreters", Some(false));
        let crashed = out.status.signal().is_some();
        outcomes.push(describe(&out));
        if crashed {
            return;
        }
    }
    panic!(
        "no crash in {} runs without the preparation on CPython {}; the hazard table may \
         be out of date:\n{}",
        outcomes.len(),
        python_version(),
        outcomes.join("\n---\n")
    );
}

#[test]
fn a_settled_exit_survives_a_crash_at_the_end() {
    let out = run_scenario("settled", None);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("settled: results complete"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_runtime_reports_its_hazards() {
    let ids: Vec<&str> = hazards::for_version(python_version())
        .iter()
        .map(|h| h.id)
        .collect();
    assert!(ids.contains(&"single-phase-state"), "{ids:?}");
    assert!(ids.contains(&"current-frames"), "{ids:?}");
    if python_version().starts_with("3.13") {
        assert!(ids.contains(&"datetime-static-types"), "{ids:?}");
    }
}
