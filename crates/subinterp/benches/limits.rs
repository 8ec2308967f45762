//! The cost of memory accounting on allocation-heavy Python code: building and dropping
//! a dict of a million small objects, and a json round trip of a large document, in an
//! isolated interpreter of a runtime started with and without
//! [`RuntimeConfig::memory_accounting`], next to the same code in a plain `python`
//! process (the peer), in the same run.
//!
//! The accounting hooks are installed when CPython starts, so each variant runs in a
//! process of its own: this benchmark starts itself again as a child per variant and
//! round, alternating them, and reports the median of every sample of each.
//!
//! Run: `cargo bench -p subinterp --bench limits` (`SUBINTERP_LIMITS_ROUNDS=N`, default 4).

mod common;

use std::process::Command;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

/// Python that times each workload `reps` times and returns the seconds of each run.
const WORKLOADS: &str = r#"
import json, time, gc

def build_dict():
    d = {str(i): [i] for i in range(1_000_000)}
    del d

DOC = [{"id": i, "name": f"item {i}", "tags": ["a", "b", "c"], "score": i * 0.5,
        "nested": {"x": i, "y": [i, i + 1]}} for i in range(100_000)]

def json_round_trip():
    json.loads(json.dumps(DOC))

def measure(reps):
    out = {}
    for name, fn in (("dict", build_dict), ("json", json_round_trip)):
        fn()  # warm up
        runs = []
        for _ in range(reps):
            gc.collect()
            t0 = time.thread_time()
            fn()
            runs.append(time.thread_time() - t0)
        out[name] = runs
    return out
"#;

const REPS: usize = 5;
const CHILD: &str = "SUBINTERP_LIMITS_CHILD";

fn child(accounting: bool) {
    let mut config = RuntimeConfig::new();
    config.memory_accounting(accounting);
    let runtime = Runtime::init(&config).expect("start Python");
    assert_eq!(runtime.memory_accounting(), accounting);
    let interp =
        Interpreter::new(&runtime, &InterpreterConfig::isolated()).expect("an interpreter");
    interp.exec(WORKLOADS).expect("the workloads");
    let figures = interp
        .call("__main__:measure", (REPS as i64,))
        .expect("measure");
    let peak = interp.memory_peak();
    let json = serde_json::json!({"runs": figures, "peak": peak});
    println!("{json}");
    drop(interp);
}

/// Runs one variant in a child process: `on`, `off`, or the peer `python`.
fn run(variant: &str) -> Option<serde_json::Value> {
    let out = if variant == "python" {
        let code =
            format!("{WORKLOADS}\nimport json as j\nprint(j.dumps({{'runs': measure({REPS})}}))");
        Command::new(option_env!("SUBINTERP_BUILD_PYTHON")?)
            .args(["-c", &code])
            .output()
            .ok()?
    } else {
        Command::new(std::env::current_exe().ok()?)
            .env(CHILD, variant)
            .output()
            .ok()?
    };
    if !out.status.success() {
        eprintln!(
            "{variant}: the child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last()?).ok()
}

fn samples(results: &[serde_json::Value], workload: &str) -> Vec<f64> {
    results
        .iter()
        .filter_map(|r| r["runs"][workload].as_array())
        .flatten()
        .filter_map(serde_json::Value::as_f64)
        .collect()
}

fn main() {
    if let Ok(variant) = std::env::var(CHILD) {
        child(variant == "on");
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("SUBINTERP_LIMITS_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    let (mut off, mut on, mut python) = (Vec::new(), Vec::new(), Vec::new());
    let mut peak = None;
    for round in 0..rounds {
        // Alternate the order, so that a drift of the machine's load hits both.
        let order = if round % 2 == 0 {
            ["off", "on", "python"]
        } else {
            ["on", "off", "python"]
        };
        for variant in order {
            let Some(result) = run(variant) else { continue };
            match variant {
                "off" => off.push(result),
                "on" => {
                    peak = result["peak"].as_u64().or(peak);
                    on.push(result)
                }
                _ => python.push(result),
            }
        }
    }
    println!(
        "memory accounting: {rounds} rounds x {REPS} runs per variant, median CPU seconds of the thread (time.thread_time, less sensitive to the load of other processes than wall time) \
         (isolated interpreter; python = the same code in a plain python process)"
    );
    println!(
        "{:<44} {:>10} {:>10} {:>8} {:>10}",
        "workload", "off", "on", "cost", "python"
    );
    for (workload, label) in [
        ("dict", "dict of 1M small objects, built and dropped"),
        ("json", "json round trip of a 100k-record document"),
    ] {
        let (a, b, p) = (
            samples(&off, workload),
            samples(&on, workload),
            samples(&python, workload),
        );
        if a.is_empty() || b.is_empty() {
            println!("{label:<44} n/a");
            continue;
        }
        let (a, b) = (common::median_f64(a), common::median_f64(b));
        let p = if p.is_empty() {
            "n/a".to_owned()
        } else {
            format!("{:.3}", common::median_f64(p))
        };
        println!(
            "{label:<44} {a:>10.3} {b:>10.3} {:>7.1}% {p:>10}",
            (b / a - 1.0) * 100.0
        );
    }
    if let Some(peak) = peak {
        println!(
            "peak memory counted for the interpreter (accounting on): {:.1} MiB",
            peak as f64 / (1 << 20) as f64
        );
    }
}
