//! Helpers shared by the benchmarks: medians, peer scripts, the ratio table.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

pub type Figures = serde_json::Map<String, serde_json::Value>;

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

pub fn median_f64(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Runs `bench/<script>` with the Python this crate was built against and parses the one
/// JSON object it prints; `None` (with the reason on stderr) if that fails.
pub fn peer_figures(script: &str, args: &[String]) -> Option<Figures> {
    let python = option_env!("SUBINTERP_BUILD_PYTHON")?;
    let path = format!("{}/../../bench/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python).arg(&path).args(args).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "peer script {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    match serde_json::from_slice(&out.stdout) {
        Ok(figures) => Some(figures),
        Err(err) => {
            eprintln!("peer script {script} printed no JSON: {err}");
            None
        }
    }
}

pub fn figure(peers: &Option<Figures>, key: &str) -> Option<f64> {
    peers.as_ref()?.get(key)?.as_f64()
}

pub fn header() {
    println!(
        "{:<52} {:>14} {:>14} {:>9}",
        "measure", "subinterp", "peer", "ratio"
    );
}

/// One row: our figure, the peer's, and how many times better ours is (> 1 = better).
pub fn row(name: &str, ours: f64, theirs: Option<f64>, unit: &str, lower_is_better: bool) {
    let (peer_text, ratio) = match theirs {
        Some(t) if t > 0.0 && ours > 0.0 => {
            let r = if lower_is_better { t / ours } else { ours / t };
            (format!("{} {unit}", fmt(t)), format!("{r:.2}x"))
        }
        _ => ("n/a".to_owned(), "n/a".to_owned()),
    };
    println!(
        "{name:<52} {:>14} {peer_text:>14} {ratio:>9}",
        format!("{} {unit}", fmt(ours))
    );
}

fn fmt(x: f64) -> String {
    if x >= 100_000.0 {
        format!("{:.0}", x)
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Prints the peer script's `notes`, if any.
pub fn print_notes(peers: &Option<Figures>) {
    let notes = peers
        .as_ref()
        .and_then(|p| p.get("notes"))
        .and_then(|n| n.as_array());
    if let Some(notes) = notes.filter(|n| !n.is_empty()) {
        println!();
        for note in notes {
            println!("note: {}", note.as_str().unwrap_or_default());
        }
    }
}

/// This process's resident set size, in KiB (0 where `/proc` cannot tell).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Memory accounting for a benchmark's runtime: on (the default) unless
/// `SUBINTERP_BENCH_ACCOUNTING=0`, so that a figure can be compared with and without it.
pub fn accounting() -> bool {
    let on = std::env::var("SUBINTERP_BENCH_ACCOUNTING").map_or(true, |v| v != "0");
    println!("memory accounting: {}", if on { "on" } else { "off" });
    on
}
