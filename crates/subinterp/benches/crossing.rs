//! Crossing benchmark: what it costs to carry one value of each shape through a channel
//! (`send` + `recv` in one interpreter, the wire format), next to pickle protocol 5
//! (`dumps` + `loads`), marshal (`dumps` + `loads`) and the former path (a `Value` tree:
//! `PyObj::to_value` + `Python::to_object`), all measured in the same run, in the same
//! interpreter, on the same objects.
//!
//! Shapes: a record of 2000 small dicts (`{"id", "name", "v", "tags", "ok"}`), a list of
//! 1e6 ints, a 10 MB str, 64 MiB of bytes, and deeply nested small dicts (200 chains of
//! 400 levels).
//!
//! Each shape is measured in rounds of one sample of each way, in rotating order, so that
//! the drift of a shared machine's load reaches every way alike; medians are printed.
//!
//! Run: `cargo bench -p subinterp --bench crossing [-- SHAPE...]`

use std::time::{Duration, Instant};

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

const SETUP: &str = r#"
import marshal, pickle, statistics, time, subinterp

def make_record():
    return [{"id": i, "name": f"name-{i}", "v": i * 0.5, "tags": ["a", "b", str(i % 7)],
             "ok": i % 2 == 0} for i in range(2000)]

def make_nested():
    chains = []
    for c in range(200):
        d = {"leaf": c}
        for level in range(400):
            d = {"k": level, "child": d}
        chains.append(d)
    return chains

shapes = {
    "record": make_record(),
    "ints": list(range(1_000_000)),
    "str": "x" * 9_999_990 + "é" * 5,
    "bytes": b"\x5a" * (64 << 20),
    "nested": make_nested(),
}

ch = subinterp.channel("crossing-bench")

def via_pickle(x):
    return pickle.loads(pickle.dumps(x, protocol=5))

def via_marshal(x):
    return marshal.loads(marshal.dumps(x))

def via_channel(x):
    ch.send(x)
    return ch.recv()

WAYS = {"channel": via_channel, "pickle": via_pickle, "marshal": via_marshal}

def check(shape):
    x = shapes[shape]
    for fn in WAYS.values():
        assert fn(x) == x

def one_round(shape, turn):
    """One sample of each way, in an order that rotates with `turn`: the machine's load
    drifts, and every way sees the same drift."""
    x = shapes[shape]
    names = list(WAYS)
    names = names[turn % len(names):] + names[:turn % len(names)]
    clock = time.perf_counter_ns
    out = {}
    for name in names:
        fn = WAYS[name]
        start = clock()
        fn(x)
        out[name] = (clock() - start) / 1000
    return out
"#;

const SHAPES: [(&str, usize); 5] = [
    ("record", 301),
    ("ints", 21),
    ("str", 21),
    ("bytes", 9),
    ("nested", 21),
];

/// The former crossing: the object copied out as a `Value` tree, and objects rebuilt
/// from it.
fn old_path(interp: &Interpreter, shape: &str, reps: usize) -> Duration {
    let shape = shape.to_owned();
    interp
        .with_gil(move |py| {
            let main = py.main_dict()?;
            let shapes = main.get_item(&py.str("shapes")?)?;
            let obj = shapes.get_item(&py.str(&shape)?)?;
            let mut samples = Vec::with_capacity(reps);
            for _ in 0..reps {
                let start = Instant::now();
                let value = obj.to_value()?;
                let back = py.to_object(&value)?;
                drop(value);
                drop(back);
                samples.push(start.elapsed());
            }
            samples.sort_unstable();
            Ok::<Duration, subinterp::Error>(samples[samples.len() / 2])
        })
        .unwrap()
        .unwrap()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let runtime = Runtime::init(&RuntimeConfig::default()).unwrap();
    let interp = Interpreter::new(&runtime, &InterpreterConfig::isolated()).unwrap();
    interp.exec(SETUP).unwrap();
    let version = interp.eval("__import__('sys').version.split()[0]").unwrap();
    println!("crossing cost per value, median µs (CPython {version}); ratio = peer / channel, > 1 means the channel is faster\n");
    println!(
        "{:<8} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>9}",
        "shape", "channel", "pickle", "marshal", "old path", "vs pickle", "vs marsh", "vs old"
    );
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (shape, reps) in SHAPES {
        if !only.is_empty() && !only.iter().any(|o| o == shape) {
            continue;
        }
        interp.exec(&format!("check({shape:?})")).unwrap();
        // Rounds of one sample of each way, the former path included.
        let (mut channel, mut pickle, mut marshal, mut old) = (vec![], vec![], vec![], vec![]);
        for turn in 0..reps {
            let round = interp
                .eval(&format!("one_round({shape:?}, {turn})"))
                .unwrap();
            let get = |name: &str| round.get(name).and_then(Value::as_f64).unwrap();
            channel.push(get("channel"));
            pickle.push(get("pickle"));
            marshal.push(get("marshal"));
            old.push(old_path(&interp, shape, 1).as_secs_f64() * 1e6);
        }
        let (channel, pickle, marshal, old) = (
            median(channel),
            median(pickle),
            median(marshal),
            median(old),
        );
        println!(
            "{shape:<8} {channel:>12.1} {pickle:>12.1} {marshal:>12.1} {old:>12.1} {:>8.2}x {:>8.2}x {:>8.2}x",
            pickle / channel,
            marshal / channel,
            old / channel
        );
    }
}
