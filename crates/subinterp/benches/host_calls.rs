//! Host call benchmark: a host function taking two ints and returning their sum, called
//! from Python, in nanoseconds per call, next to a Python function doing the same and
//! the built-in C function `operator.add`, measured in the same interpreter in one run.
//!
//! Run: `cargo bench -p subinterp --bench host_calls`

mod common;

use common::median_f64;
use subinterp::{
    Caller, HostModule, Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value,
};

const CALLS: i64 = 200_000;
const ROUNDS: usize = 7;

const MEASURE: &str = r#"
import time, operator, bench

def py_add(a, b):
    return a + b

def per_call(f, n):
    clock = time.perf_counter_ns
    start = clock()
    for i in range(n):
        f(i, 1)
    loop = clock() - start
    # The loop's own cost, to subtract.
    start = clock()
    for i in range(n):
        pass
    empty = clock() - start
    return (loop - empty) / n

def measure(n):
    return {
        'host': per_call(bench.add, n),
        'host_kw': per_call(lambda a, b: bench.add(a, b=b), n) - per_call(lambda a, b: None, n),
        'python': per_call(py_add, n),
        'nothing': per_call(lambda a, b: bench.nothing(), n) - per_call(lambda a, b: None, n),
        'operator.add': per_call(operator.add, n),
    }
"#;

fn main() -> subinterp::Result<()> {
    let mut config = RuntimeConfig::new();
    config.memory_accounting(common::accounting());
    config.host_module(
        HostModule::new("bench")
            .function(
                "add",
                ["a", "b"],
                |_: &Caller, (a, b): (i64, i64)| Ok(a + b),
            )
            .function("nothing", [], |_: &Caller, (): ()| Ok(())),
    );
    let rt = Runtime::init(&config)?;
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;
    interp.exec(MEASURE)?;
    let mut samples: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for _ in 0..ROUNDS {
        let Value::Dict(figures) = interp.call("__main__:measure", (CALLS,))? else {
            unreachable!("measure returns a dict")
        };
        for (name, ns) in figures {
            if let (Value::Str(name), Value::Float(ns)) = (name, ns) {
                samples.entry(name).or_default().push(ns);
            }
        }
    }
    let median = |name: &str| median_f64(samples.get(name).cloned().unwrap_or_default());
    println!(
        "(fixed cost of a host call without arguments: {:.1} ns)",
        median("nothing")
    );
    let (host, host_kw, python, add) = (
        median("host"),
        median("host_kw"),
        median("python"),
        median("operator.add"),
    );
    println!(
        "Python {}, {CALLS} calls x {ROUNDS} rounds, median ns per call",
        rt.python_version()
    );
    println!("{:<44} {:>10} {:>12}", "call", "ns/call", "vs operator.add");
    for (name, ns) in [
        ("host function bench.add(i, 1)", host),
        ("host function bench.add(i, b=1)", host_kw),
        ("Python function py_add(i, 1)", python),
        ("built-in operator.add(i, 1)", add),
    ] {
        println!("{name:<44} {ns:>10.1} {:>11.2}x", ns / add);
    }
    Ok(())
}
