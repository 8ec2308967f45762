//! Channels benchmark: ping-pong latency, one-way throughput (small ints, 1 KiB bytes)
//! and the hand-over of a 64 MiB buffer between two interpreters, each printed next to
//! `concurrent.interpreters` queues (the `interpreters-pep-734` backport on 3.12/3.13) and
//! `multiprocessing` queues, measured in the same run on the same Python by
//! `bench/peers_channels.py`.
//!
//! Run: `cargo bench -p subinterp --bench channels`

mod common;

use std::sync::Arc;

use common::{figure, header, median_f64, peer_figures, row};
use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

const ROUND_TRIPS: i64 = 20_000;
const MESSAGES: i64 = 200_000;

/// Side B: echoes `ping` to `pong`, or drains a channel and reports when it finished.
const SIDE_B: &str = r#"
import subinterp, time

def echo(prefix):
    ping = subinterp.channel(prefix + '-ping')
    pong = subinterp.channel(prefix + '-pong')
    for message in ping:
        pong.send(message)

def drain(name, count):
    ch = subinterp.channel(name)
    for _ in range(count):
        ch.recv()
    return time.perf_counter()

def take_buffers(name, count):
    ch = subinterp.channel(name)
    times = []
    for _ in range(count):
        view = ch.recv()
        times.append(time.perf_counter())
        assert len(view) == 64 << 20
    return times
"#;

/// Side A: measures.
const SIDE_A: &str = r#"
import subinterp, time

def pingpong(prefix, n):
    ping = subinterp.channel(prefix + '-ping')
    pong = subinterp.channel(prefix + '-pong')
    samples = []
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        ping.send(i)
        pong.recv()
        samples.append(clock() - start)
    ping.close()
    samples.sort()
    return samples[len(samples) // 2] / 1000.0

def flood(name, count, payload):
    ch = subinterp.channel(name)
    item = b'x' * 1024 if payload == 'kib' else 1
    start = time.perf_counter()
    send = ch.send
    if payload == 'kib':
        for _ in range(count):
            send(item)
    else:
        for i in range(count):
            send(i)
    return start

def give_buffers(name, count, gap):
    ch = subinterp.channel(name)
    starts = []
    for _ in range(count):
        buf = subinterp.buffer(64 << 20)
        time.sleep(gap)
        starts.append(time.perf_counter())
        ch.send(buf)
    return starts
"#;

fn pair(rt: &Runtime) -> (Arc<Interpreter>, Arc<Interpreter>) {
    let a = Interpreter::new(rt, &InterpreterConfig::isolated()).expect("create A");
    let b = Interpreter::new(rt, &InterpreterConfig::isolated()).expect("create B");
    a.exec(SIDE_A).expect("side A");
    b.exec(SIDE_B).expect("side B");
    (Arc::new(a), Arc::new(b))
}

fn on<F, T>(interp: &Arc<Interpreter>, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce(&Interpreter) -> T + Send + 'static,
    T: Send + 'static,
{
    let interp = Arc::clone(interp);
    std::thread::spawn(move || f(&interp))
}

fn throughput(a: &Arc<Interpreter>, b: &Arc<Interpreter>, name: &str, payload: &str) -> f64 {
    let n = name.to_owned();
    let drain = on(b, move |b| {
        b.call("__main__:drain", (n, MESSAGES)).expect("drain")
    });
    let n = name.to_owned();
    let payload = payload.to_owned();
    let start = on(a, move |a| {
        a.call("__main__:flood", (n, MESSAGES, payload))
            .expect("flood")
    })
    .join()
    .expect("join A");
    let end = drain.join().expect("join B");
    let seconds = end.as_f64().unwrap() - start.as_f64().unwrap();
    MESSAGES as f64 / seconds
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = Runtime::init(RuntimeConfig::new().memory_accounting(common::accounting()))?;
    println!(
        "subinterp channels benchmark — Python {}, {} cores",
        rt.python_version(),
        std::thread::available_parallelism().map_or(2, |n| n.get())
    );
    let (a, b) = pair(&rt);
    let prefix = format!("bench-{}", std::process::id());

    // Ping-pong.
    let echo = {
        let p = prefix.clone();
        on(&b, move |b| b.call("__main__:echo", (p,)))
    };
    let p = prefix.clone();
    a.call("__main__:pingpong", (p, 1000))?; // warm-up; closes `ping`
    echo.join().expect("echo").ok();
    let p = format!("{prefix}-2");
    let echo = {
        let p = p.clone();
        on(&b, move |b| b.call("__main__:echo", (p,)))
    };
    let pingpong_us = a
        .call("__main__:pingpong", (p, ROUND_TRIPS))?
        .as_f64()
        .unwrap();
    echo.join().expect("echo").ok();

    // One-way throughput.
    let small = throughput(&a, &b, &format!("{prefix}-small"), "int");
    let kib = throughput(&a, &b, &format!("{prefix}-kib"), "kib");

    // 64 MiB buffer hand-over, median of 5 (B is already waiting when A sends).
    let n = format!("{prefix}-buf");
    let takes = {
        let n = n.clone();
        on(&b, move |b| {
            b.call("__main__:take_buffers", (n, 5)).expect("take")
        })
    };
    let starts = a.call("__main__:give_buffers", (n, 5, 0.05))?;
    let ends = takes.join().expect("join B");
    let handover_ms = median_f64(
        starts
            .as_slice()
            .unwrap()
            .iter()
            .zip(ends.as_slice().unwrap())
            .map(|(s, e)| (e.as_f64().unwrap() - s.as_f64().unwrap()) * 1e3)
            .collect(),
    );
    drop((a, b));

    let peers = peer_figures(
        "peers_channels.py",
        &[ROUND_TRIPS.to_string(), MESSAGES.to_string()],
    );
    println!();
    header();
    for (peer, label) in [
        ("interp_queue", "interpreters queue"),
        ("mp_queue", "multiprocessing queue"),
    ] {
        let f = |key: &str| figure(&peers, &format!("{peer}_{key}"));
        row(
            &format!("ping-pong round trip, median (vs {label})"),
            pingpong_us,
            f("pingpong_us"),
            "us",
            true,
        );
        row(
            &format!("small ints one way (vs {label})"),
            small,
            f("small_msgs_per_s"),
            "msg/s",
            false,
        );
        row(
            &format!("1 KiB bytes one way (vs {label})"),
            kib,
            f("kib_msgs_per_s"),
            "msg/s",
            false,
        );
        row(
            &format!("64 MiB hand-over, median (vs {label})"),
            handover_ms,
            f("64mib_ms"),
            "ms",
            true,
        );
        if let Some(err) = peers.as_ref().and_then(|p| p.get(&format!("{peer}_error"))) {
            println!("  {label}: no figures: {err}");
        }
    }
    common::print_notes(&peers);
    println!();
    println!("ratio > 1 means subinterp is better. Targets: ping-pong <= 10 us, >= 1 000 000 small msg/s, 64 MiB < 1 ms.");
    Ok(())
}
