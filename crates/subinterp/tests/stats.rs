//! Stats: the counters of interpreters and pools match what ran, and move in a `metrics`
//! recorder installed by the host.

mod common;

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use subinterp::{
    CallOptions, Error, GuardRule, Guards, Interpreter, InterpreterConfig, Pool, PoolConfig,
    TaskOptions,
};

const FUNCS: &str = r#"
import subinterp, time

def ok(x):
    return x

def fail():
    raise ValueError("no")

def spin():
    while True:
        pass

def sleep(seconds):
    time.sleep(seconds)

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

def hold(megabytes):
    global held
    held = bytearray(megabytes << 20)

def chatter(name):
    ch = subinterp.channel(name)
    ch.send(b"abc")
    ch.send("hello")
    return [ch.recv(), ch.recv()]
"#;

/// The recorder, installed once for this test binary before any interpreter exists.
fn recorder() -> &'static Snapshotter {
    static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("install the debugging recorder");
        snapshotter
    })
}

/// The values of the metrics called `name` whose labels include every one of `labels`.
fn metric_values(name: &str, labels: &[(&str, &str)]) -> Vec<DebugValue> {
    recorder()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, _, _, value)| value)
        .collect()
}

/// The sum of the counters called `name` whose labels include every one of `labels`.
fn counted(name: &str, labels: &[(&str, &str)]) -> u64 {
    metric_values(name, labels)
        .into_iter()
        .map(|value| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// The highest value of the gauges called `name` whose labels include every one of
/// `labels`.
fn gauge(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metric_values(name, labels)
        .into_iter()
        .filter_map(|value| match value {
            DebugValue::Gauge(v) => Some(v.into_inner()),
            _ => None,
        })
        .reduce(f64::max)
}

/// Tasks run, ok, failed, timed out, cancelled.
fn outcomes(stats: &subinterp::Stats) -> (u64, u64, u64, u64, u64) {
    (
        stats.tasks_run,
        stats.tasks_ok,
        stats.tasks_failed,
        stats.tasks_timed_out,
        stats.tasks_cancelled,
    )
}

#[test]
fn an_interpreters_stats_match_what_ran() {
    recorder();
    let interp = common::isolated();
    interp.exec(FUNCS).unwrap(); // 1 ok
    interp.call("__main__:ok", (1,)).unwrap(); // 2 ok
    interp.eval("1 + 1").unwrap(); // 3 ok
    interp.call("__main__:fail", ()).unwrap_err(); // 1 failed
    let err = interp
        .call_with(
            "__main__:spin",
            (),
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let replies = interp.call("__main__:chatter", ("stats-chatter",)).unwrap(); // 4 ok
    assert_eq!(
        replies,
        subinterp::Value::List(vec![
            subinterp::Value::Bytes(b"abc".to_vec()),
            subinterp::Value::from("hello")
        ])
    );
    interp.set_argv(&["not", "a", "task"]).unwrap();
    let stats = interp.stats();
    assert_eq!(outcomes(&stats), (6, 4, 1, 1, 0), "{stats:?}");
    // Python's messages are counted by what crosses: b"abc" and "hello" in the wire
    // format, a header and a tag and a length each beside their 8 bytes of data.
    assert_eq!(stats.messages_sent, 2, "{stats:?}");
    assert!((8..=24).contains(&stats.bytes_sent), "{stats:?}");
    assert_eq!(
        (stats.messages_received, stats.bytes_received),
        (2, stats.bytes_sent)
    );
    assert_eq!(
        (stats.interpreters_created, stats.interpreters_ended),
        (1, 0)
    );
    // Memory accounting is on by default: what the interpreter holds, its peak (at
    // least what it holds), and the CPU time of its thread.
    let (memory, peak) = (
        stats.memory_bytes.unwrap(),
        stats.memory_peak_bytes.unwrap(),
    );
    assert!(memory > 0 && peak >= memory, "{stats:?}");
    assert!(stats.cpu_seconds.unwrap() > 0.0, "{stats:?}");
    assert_eq!(stats.memory_refusals, 0);
    // The same counts through the metrics facade, labelled with the interpreter.
    let id = interp.id().to_string();
    let me = ("interpreter", id.as_str());
    assert_eq!(
        counted("subinterp_tasks_total", &[me, ("outcome", "ok")]),
        4
    );
    assert_eq!(
        counted("subinterp_tasks_total", &[me, ("outcome", "failed")]),
        1
    );
    assert_eq!(
        counted("subinterp_tasks_total", &[me, ("outcome", "timed_out")]),
        1
    );
    assert_eq!(
        counted(
            "subinterp_channel_bytes_total",
            &[me, ("direction", "sent")]
        ),
        stats.bytes_sent
    );
    assert_eq!(
        counted(
            "subinterp_channel_messages_total",
            &[me, ("direction", "received")]
        ),
        2
    );
    assert_eq!(counted("subinterp_interpreters_created_total", &[me]), 1);
    interp.close().unwrap();
    assert_eq!(interp.stats().interpreters_ended, 1);
    assert_eq!(counted("subinterp_interpreters_ended_total", &[me]), 1);
    // A snapshot is a map in Python terms.
    let value = interp.stats().to_value();
    assert!(matches!(value, subinterp::Value::Dict(_)), "{value:?}");
}

#[test]
fn guard_events_are_counted_in_stats_and_metrics() {
    recorder();
    let mut guards = Guards::new();
    guards.refuse(GuardRule::Env).count(GuardRule::Chdir);
    let mut config = InterpreterConfig::isolated();
    config.guards(guards);
    let interp = Interpreter::new(&common::runtime(), &config).unwrap();
    interp
        .exec("import os\nos.chdir(os.getcwd())\ntry:\n    os.putenv('X_STATS', '1')\nexcept PermissionError:\n    pass")
        .unwrap();
    let stats = interp.stats();
    assert_eq!(
        (stats.guard_counted, stats.guard_refused),
        (1, 1),
        "{stats:?}"
    );
    let id = interp.id().to_string();
    let me = ("interpreter", id.as_str());
    let events = "subinterp_guard_events_total";
    assert_eq!(
        counted(events, &[me, ("rule", "env"), ("action", "refused")]),
        1
    );
    assert_eq!(
        counted(events, &[me, ("rule", "chdir"), ("action", "counted")]),
        1
    );
}

#[test]
fn a_pools_stats_match_what_ran() {
    recorder();
    let mut config = PoolConfig::new();
    config
        .workers(1)
        .init(FUNCS)
        .name("stats-pool")
        .grace(Duration::from_secs(5));
    let pool = Pool::new(&common::runtime(), &config).unwrap();
    assert_eq!(pool.name(), "stats-pool");
    for i in 0..3 {
        pool.submit("__main__:ok", (i,)).unwrap().wait().unwrap();
    }
    pool.submit("__main__:fail", ())
        .unwrap()
        .wait()
        .unwrap_err();
    let timeout = TaskOptions {
        timeout: Some(Duration::from_millis(200)),
        ..TaskOptions::default()
    };
    let err = pool
        .submit_with("__main__:spin", (), timeout)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // One worker: the second task waits behind the first, and is cancelled there.
    let first = pool.submit("__main__:sleep", (0.3,)).unwrap();
    let second = pool.submit("__main__:ok", (0,)).unwrap();
    assert!(second.cancel_queued());
    first.wait().unwrap();
    pool.submit("__main__:chatter", ("stats-pool-chatter",))
        .unwrap()
        .wait()
        .unwrap();
    let stats = pool.stats();
    assert_eq!(outcomes(&stats), (8, 5, 1, 1, 1), "{stats:?}");
    assert_eq!(stats.messages_sent, 2, "{stats:?}");
    assert!((8..=24).contains(&stats.bytes_sent), "{stats:?}");
    assert_eq!(stats.interpreters_created, 1, "{stats:?}");
    let pool_label = ("pool", "stats-pool");
    let tasks = "subinterp_pool_tasks_total";
    assert_eq!(counted(tasks, &[pool_label, ("outcome", "ok")]), 5);
    assert_eq!(counted(tasks, &[pool_label, ("outcome", "cancelled")]), 1);
    // The worker's own counters carry the pool's label.
    assert_eq!(
        counted(
            "subinterp_channel_messages_total",
            &[pool_label, ("direction", "sent")]
        ),
        2
    );
    pool.shutdown(Duration::from_secs(10));
}

#[test]
fn recycled_workers_add_up_in_the_pool() {
    recorder();
    let mut config = PoolConfig::new();
    config.workers(1).init(FUNCS).max_tasks_per_worker(2);
    let pool = Pool::new(&common::runtime(), &config).unwrap();
    for i in 0..6 {
        pool.submit("__main__:chatter", (format!("stats-recycled-{i}"),))
            .unwrap()
            .wait()
            .unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.tasks_ok, 6);
    assert_eq!(stats.messages_sent, 12, "{stats:?}");
    assert!(stats.interpreters_created >= 3, "{stats:?}");
    assert!(stats.interpreters_ended >= 2, "{stats:?}");
    // CPU time adds up over the workers that ended; the peak is the highest one worker
    // reached; memory in use is what the live worker holds.
    for _ in 0..2 {
        pool.submit("__main__:burn", (0.3,))
            .unwrap()
            .wait()
            .unwrap();
    }
    pool.submit("__main__:hold", (40,)).unwrap().wait().unwrap();
    let stats = pool.stats();
    assert!(stats.cpu_seconds.unwrap() >= 0.55, "{stats:?}");
    assert!(stats.memory_peak_bytes.unwrap() >= 40 << 20, "{stats:?}");
    assert!(stats.memory_bytes.unwrap() >= 40 << 20, "{stats:?}");
    // Exported as gauges, per interpreter and per pool, brought up to date as tasks end.
    let pool_label = [("pool", pool.name())];
    let peak = gauge("subinterp_pool_memory_peak_bytes", &pool_label).expect("pool gauge");
    assert!(peak >= (40 << 20) as f64, "{peak}");
    let cpu = gauge("subinterp_pool_cpu_seconds", &pool_label).expect("pool gauge");
    assert!(cpu >= 0.55, "{cpu}");
    // The live worker's: those that ended hold nothing.
    let worker = gauge("subinterp_memory_bytes", &pool_label).expect("worker gauge");
    assert!(worker >= (40 << 20) as f64, "{worker}");
    pool.shutdown(Duration::from_secs(10));
    let after = pool_stats_after_shutdown(&config);
    assert!(
        after.cpu_seconds.unwrap() > 0.0 && after.memory_bytes == Some(0),
        "{after:?}"
    );
}

/// A pool's stats read after its shutdown: what its workers used, none of them alive.
fn pool_stats_after_shutdown(config: &PoolConfig) -> subinterp::Stats {
    let pool = Pool::new(&common::runtime(), config).unwrap();
    pool.submit("__main__:burn", (0.05,))
        .unwrap()
        .wait()
        .unwrap();
    let handle = pool.stats_handle();
    pool.shutdown(Duration::from_secs(10));
    handle.stats()
}
