//! Runs the same plugin in N isolated interpreters at once, one per core.
//!
//! `cargo run -p subinterp --release --example parallel_plugins -- [N]`

use std::sync::Arc;
use std::time::Instant;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

fn main() -> subinterp::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let plugins = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/plugins");

    let mut runtime_config = RuntimeConfig::new();
    runtime_config.add_path(plugins);
    let rt = Runtime::init(&runtime_config)?;

    let start = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let rt = rt.clone();
            std::thread::spawn(move || -> subinterp::Result<String> {
                let interp = Arc::new(Interpreter::new(&rt, &InterpreterConfig::isolated())?);
                let limit = 60_000 + 1_000 * i as i64;
                let result = interp.call("primes:count_primes", (limit,))?;
                Ok(format!("interpreter {}: {result}", interp.id()))
            })
        })
        .collect();
    for thread in threads {
        println!("{}", thread.join().expect("thread panicked")?);
    }
    println!("{n} interpreters in {:.0?}", start.elapsed());
    Ok(())
}
