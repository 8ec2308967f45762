//! A pipeline over channels: the Rust host produces work, N isolated interpreters process
//! it in parallel, and the host collects typed results.
//!
//! `cargo run -p subinterp --release --example pipeline -- [WORKERS]`

use std::sync::Arc;

use serde::Deserialize;
use subinterp::{Channel, Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

const WORKER: &str = r#"
import subinterp

def work():
    tasks = subinterp.channel('pipeline-tasks')
    results = subinterp.channel('pipeline-results')
    done = 0
    for text in tasks:
        words = text.split()
        results.send({'words': len(words), 'longest': max(words, key=len), 'worker': subinterp.id()})
        done += 1
    return done
"#;

#[derive(Deserialize)]
struct Stats {
    words: u64,
    longest: String,
    worker: i64,
}

fn main() -> subinterp::Result<()> {
    let workers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = Runtime::init(&RuntimeConfig::new())?;
    let tasks = Channel::named_with("pipeline-tasks", Some(64))?;
    let results = Channel::named("pipeline-results");

    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let interp = Arc::new(Interpreter::new(&rt, &InterpreterConfig::isolated())?);
            interp.exec(WORKER)?;
            Ok(std::thread::spawn(move || interp.call("__main__:work", ())))
        })
        .collect::<subinterp::Result<_>>()?;

    let lines = 10_000;
    let producer = std::thread::spawn(move || -> subinterp::Result<()> {
        for i in 0..lines {
            let line = format!("line {i} of a text with some words, one unusuallylongword{i}");
            tasks.send(Value::from(line))?;
        }
        tasks.close();
        Ok(())
    });

    let (mut words, mut longest) = (0, String::new());
    let mut per_worker = std::collections::BTreeMap::new();
    for _ in 0..lines {
        let stats: Stats = results.recv_as()?;
        words += stats.words;
        if stats.longest.len() > longest.len() {
            longest = stats.longest;
        }
        *per_worker.entry(stats.worker).or_insert(0) += 1;
    }
    producer.join().expect("producer")?;
    for handle in handles {
        handle.join().expect("worker")?;
    }
    println!("{lines} lines, {words} words, longest word {longest:?}");
    println!("lines per interpreter: {per_worker:?}");
    Ok(())
}
