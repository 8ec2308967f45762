//! Memory kept by CPython per interpreter created and ended: `Interpreter::new` +
//! `exec` + `close`, N times, isolated and legacy, next to CPython's own
//! `_interpreters.create` / `run_string` / `destroy` (`_xxsubinterpreters` on 3.12) doing
//! the same in a `python` process in the same run. Prints the RSS before, after, and
//! the growth per interpreter.
//!
//! Run: `cargo bench -p subinterp --bench churn` (`SUBINTERP_CHURN=N`, default 500).

mod common;

use std::process::Command;

use common::rss_kib;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

const CODE: &str = "import json, re\nx = json.dumps({'a': [1, 2, 3]}) + re.sub('a', 'b', 'abc')";

const PEER: &str = r#"
import sys
try:
    import _interpreters as I
    create = lambda isolated: I.create("isolated" if isolated else "legacy")
except ImportError:
    import _xxsubinterpreters as I
    create = lambda isolated: I.create(isolated=isolated)
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
n, isolated, code = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
warm = create(isolated); I.run_string(warm, code); I.destroy(warm)
before = rss()
for _ in range(n):
    i = create(isolated)
    I.run_string(i, code)
    I.destroy(i)
print(before, rss())
"#;

fn peer(n: usize, isolated: bool) -> Option<(u64, u64)> {
    let out = Command::new(env!("SUBINTERP_BUILD_PYTHON"))
        .args([
            "-c",
            PEER,
            &n.to_string(),
            if isolated { "1" } else { "0" },
            CODE,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

fn ours(rt: &Runtime, n: usize, config: &InterpreterConfig) -> (u64, u64) {
    let warm = Interpreter::new(rt, config).expect("create");
    warm.exec(CODE).expect("exec");
    warm.close().expect("close");
    let before = rss_kib();
    for _ in 0..n {
        let interp = Interpreter::new(rt, config).expect("create");
        interp.exec(CODE).expect("exec");
        interp.close().expect("close");
    }
    (before, rss_kib())
}

fn main() {
    let n: usize = std::env::var("SUBINTERP_CHURN")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = Runtime::get_or_init(&RuntimeConfig::new()).expect("start Python");
    println!(
        "churn: {n} interpreters created, used and ended one after another (Python {})",
        rt.python_version()
    );
    println!(
        "{:<10} {:<24} {:>10} {:>10} {:>14} {:>8}",
        "kind", "host", "RSS before", "RSS after", "KiB per interp", "ratio"
    );
    for (kind, config, isolated) in [
        ("isolated", InterpreterConfig::isolated(), true),
        ("legacy", InterpreterConfig::legacy(), false),
    ] {
        let (b, a) = ours(&rt, n, &config);
        let per = (a.saturating_sub(b)) as f64 / n as f64;
        let peer = peer(n, isolated);
        let peer_per = peer.map(|(pb, pa)| (pa.saturating_sub(pb)) as f64 / n as f64);
        println!(
            "{kind:<10} {:<24} {:>7} MiB {:>7} MiB {per:>14.1} {:>8}",
            "subinterp",
            b / 1024,
            a / 1024,
            peer_per
                .filter(|p| *p > 0.0)
                .map(|p| format!("{:.2}x", per / p))
                .unwrap_or_else(|| "-".into())
        );
        match (peer, peer_per) {
            (Some((pb, pa)), Some(pp)) => println!(
                "{kind:<10} {:<24} {:>7} MiB {:>7} MiB {pp:>14.1} {:>8}",
                "CPython _interpreters",
                pb / 1024,
                pa / 1024,
                "1.00x"
            ),
            _ => println!("{kind:<10} CPython _interpreters: could not be run"),
        }
    }
}
