//! Foundation benchmark: interpreter create+close, a tiny `call` round trip, and the
//! parallel speed-up of K own-GIL interpreters (K = cores), each printed next to the same
//! figure for CPython's own subinterpreter module and for threads, measured in the same run
//! on the same Python (by running `bench/peers_foundation.py` with it).
//!
//! Run: `cargo bench -p subinterp --bench foundation`

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{figure, header, median, peer_figures, row};
use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

const WORK: &str = "def work(n):\n    total = 0\n    for i in range(n):\n        total += i * i\n    return total\n";
const WORK_N: i64 = 3_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let k = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = Runtime::init(&RuntimeConfig::new())?;
    let isolated = InterpreterConfig::isolated();
    println!(
        "subinterp foundation benchmark — Python {}, {k} cores",
        rt.python_version()
    );

    // Create + close, median of 30 after one warm-up.
    Interpreter::new(&rt, &isolated)?.close()?;
    let create: Vec<Duration> = (0..30)
        .map(|_| {
            let start = Instant::now();
            let interp = Interpreter::new(&rt, &isolated).expect("create");
            interp.close().expect("close");
            start.elapsed()
        })
        .collect::<Vec<_>>();
    let create_ms = median(create).as_secs_f64() * 1e3;

    // Tiny call round trip from another thread, median of 20 000.
    let interp = Interpreter::new(&rt, &isolated)?;
    interp.exec("def tiny(x):\n    return x\n")?;
    for _ in 0..1000 {
        interp.call("__main__:tiny", (1,))?;
    }
    let calls: Vec<Duration> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            let v = interp.call("__main__:tiny", (1,)).expect("call");
            let elapsed = start.elapsed();
            assert_eq!(v, Value::Int(1));
            elapsed
        })
        .collect();
    let call_us = median(calls).as_secs_f64() * 1e6;
    let execs: Vec<Duration> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            interp.exec("x = 1").expect("exec");
            start.elapsed()
        })
        .collect();
    let exec_us = median(execs).as_secs_f64() * 1e6;
    drop(interp);

    // K interpreters in parallel vs one interpreter running the K calls in sequence.
    let workers: Vec<Arc<Interpreter>> = (0..k)
        .map(|_| {
            let i = Interpreter::new(&rt, &isolated).expect("create");
            i.exec(WORK).expect("define work");
            Arc::new(i)
        })
        .collect();
    workers[0].call("__main__:work", (1000,))?;
    let start = Instant::now();
    for _ in 0..k {
        workers[0].call("__main__:work", (WORK_N,))?;
    }
    let sequential = start.elapsed();
    let start = Instant::now();
    let handles: Vec<_> = workers
        .iter()
        .map(|w| {
            let w = Arc::clone(w);
            std::thread::spawn(move || w.call("__main__:work", (WORK_N,)).expect("work"))
        })
        .collect();
    for h in handles {
        h.join().expect("join");
    }
    let parallel = start.elapsed();
    let speedup = sequential.as_secs_f64() / parallel.as_secs_f64();
    drop(workers);

    let peers = peer_figures("peers_foundation.py", &[k.to_string(), WORK_N.to_string()]);
    let peer = |key: &str| figure(&peers, key);
    println!();
    header();
    row(
        "create+close, median (peer: _interpreters)",
        create_ms,
        peer("create_close_ms"),
        "ms",
        true,
    );
    row(
        "call round trip, median (peer: thread pool)",
        call_us,
        peer("thread_roundtrip_us"),
        "us",
        true,
    );
    row(
        "exec round trip, median (peer: _interpreters)",
        exec_us,
        peer("exec_roundtrip_us"),
        "us",
        true,
    );
    row(
        &format!("speed-up, {k} parallel / sequential (peer: threads)"),
        speedup,
        peer("thread_speedup"),
        "x",
        false,
    );
    println!();
    println!(
        "ratio > 1 means subinterp is better. Targets: speed-up >= {:.1}x, call <= 10 us.",
        0.9 * k as f64
    );
    println!(
        "sequential {k} calls: {:.0} ms, parallel: {:.0} ms",
        sequential.as_secs_f64() * 1e3,
        parallel.as_secs_f64() * 1e3
    );
    Ok(())
}
