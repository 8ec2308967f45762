//! Pool benchmark: start-up, per-task overhead, CPU-bound throughput and peak RSS of a
//! `Pool` of K interpreters (K = cores), each printed next to `ProcessPoolExecutor`,
//! `multiprocessing.Pool.imap` and `InterpreterPoolExecutor` (the `interpreters-pep-734`
//! backport on 3.12/3.13) running the same workloads in the same run on the same Python
//! (`bench/peers_map.py`). The CPU-bound workload is `examples/map/textstats.py:analyze`
//! over `examples/map/documents.jsonl`.
//!
//! Run: `cargo bench -p subinterp --bench pool`

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{figure, header, peer_figures, row, rss_kib};
use subinterp::{Pool, PoolConfig, Runtime, RuntimeConfig, Value};

const TRIVIAL_TASKS: i64 = 20_000;

/// Samples this process's RSS every 10 ms until dropped; keeps the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib()));
        let thread = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let k = std::thread::available_parallelism().map_or(2, |n| n.get());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/map");
    let data = format!("{root}/documents.jsonl");
    let records: Vec<Value> = std::fs::read_to_string(&data)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;

    let mut runtime_config = RuntimeConfig::new();
    runtime_config.add_path(root);
    let rt = Runtime::init(&runtime_config)?;
    println!(
        "subinterp pool benchmark — Python {}, {k} workers, {} records",
        rt.python_version(),
        records.len()
    );

    // Start-up: the pool and one trivial result from every worker.
    let sampler = RssSampler::start();
    let start = Instant::now();
    let mut config = PoolConfig::new();
    config.workers(k);
    let pool = Pool::new(&rt, &config)?;
    let firsts: Vec<_> = (0..k)
        .map(|i| pool.submit("textstats:identity", (i as i64,)))
        .collect::<Result<_, _>>()?;
    for task in firsts {
        task.wait()?;
    }
    let startup_ms = start.elapsed().as_secs_f64() * 1e3;

    // CPU-bound throughput, results in input order.
    let start = Instant::now();
    let mut done = 0usize;
    for result in pool.map("textstats:analyze", records.iter().cloned().map(|r| (r,)))? {
        result?;
        done += 1;
    }
    let cpu_per_s = done as f64 / start.elapsed().as_secs_f64();
    let peak_rss = sampler.finish();

    // Per-task overhead on trivial records.
    let start = Instant::now();
    let mut n = 0;
    for result in pool.map_with(
        "textstats:identity",
        (0..TRIVIAL_TASKS).map(|i| (i,)),
        subinterp::TaskOptions::default(),
        16 * k,
    )? {
        result?;
        n += 1;
    }
    let overhead_us = start.elapsed().as_secs_f64() * 1e6 / n as f64;

    // How long after its deadline a runaway pure-Python task is stopped (median of 5).
    let deadline = Duration::from_millis(100);
    let late_ms = common::median_f64(
        (0..5)
            .map(|_| {
                let task = pool.submit_with(
                    "builtins:exec",
                    ("while True: pass", Value::Dict(Vec::new())),
                    subinterp::TaskOptions {
                        timeout: Some(deadline),
                        ..Default::default()
                    },
                )?;
                let start = Instant::now();
                let err = task.wait().expect_err("the loop never ends by itself");
                assert!(
                    err.as_python().is_some_and(|e| e.is("TimeoutError")),
                    "{err}"
                );
                Ok((start.elapsed().saturating_sub(deadline)).as_secs_f64() * 1e3)
            })
            .collect::<subinterp::Result<Vec<f64>>>()?,
    );
    pool.shutdown(Duration::from_secs(10));

    let peers = peer_figures(
        "peers_map.py",
        &[
            k.to_string(),
            "--data".into(),
            data.clone(),
            "--module-dir".into(),
            root.into(),
        ],
    );
    println!();
    header();
    for (peer, label) in [
        ("process_pool", "ProcessPoolExecutor"),
        ("mp_pool_imap", "multiprocessing.Pool.imap"),
        ("interp_pool", "InterpreterPoolExecutor"),
    ] {
        let f = |key: &str| figure(&peers, &format!("{peer}_{key}"));
        row(
            &format!("start-up, {k} workers (vs {label})"),
            startup_ms,
            f("startup_ms"),
            "ms",
            true,
        );
        row(
            &format!("CPU-bound records (vs {label})"),
            cpu_per_s,
            f("cpu_records_per_s"),
            "rec/s",
            false,
        );
        row(
            &format!("per-task overhead (vs {label})"),
            overhead_us,
            f("overhead_us"),
            "us",
            true,
        );
        row(
            &format!("peak RSS (vs {label})"),
            peak_rss,
            f("peak_rss_mib"),
            "MiB",
            true,
        );
        if let Some(err) = peers.as_ref().and_then(|p| p.get(&format!("{peer}_error"))) {
            println!("  {label}: no figures: {err}");
        }
    }
    common::print_notes(&peers);
    println!();
    println!(
        "a runaway task stopped {late_ms:.1} ms after its deadline (median of 5; target 100 ms)"
    );
    println!("ratio > 1 means subinterp is better. Targets: throughput >= every peer, overhead <= 10 us,");
    println!("start-up faster than processes, peak RSS below processes.");
    Ok(())
}
