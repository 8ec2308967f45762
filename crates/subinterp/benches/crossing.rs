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
//! Run: `cargo bench -p subinterp --bench crossing`

use std::time::{Duration, Instant};

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

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

def measure(shape, how, reps):
    x = shapes[shape]
    fn = {"pickle": via_pickle, "marshal": via_marshal, "channel": via_channel}[how]
    assert fn(x) == x
    clock = time.perf_counter_ns
    samples = []
    for _ in range(reps):
        start = clock()
        fn(x)
        samples.append(clock() - start)
    return statistics.median(samples) / 1000
"#;

const SHAPES: [(&str, usize); 5] = [
    ("record", 300),
    ("ints", 15),
    ("str", 15),
    ("bytes", 7),
    ("nested", 15),
];

fn python_figure(interp: &Interpreter, shape: &str, how: &str, reps: usize) -> f64 {
    let value = interp
        .eval(&format!("measure({shape:?}, {how:?}, {reps})"))
        .unwrap();
    value.as_f64().unwrap()
}

/// The former crossing: the object copied out as a `Value` tree, and objects rebuilt
/// from it.
fn old_path(interp: &Interpreter, shape: &str, reps: usize) -> f64 {
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
        .as_secs_f64()
        * 1e6
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
    for (shape, reps) in SHAPES {
        let channel = python_figure(&interp, shape, "channel", reps);
        let pickle = python_figure(&interp, shape, "pickle", reps);
        let marshal = python_figure(&interp, shape, "marshal", reps);
        let old = old_path(&interp, shape, reps);
        println!(
            "{shape:<8} {channel:>12.1} {pickle:>12.1} {marshal:>12.1} {old:>12.1} {:>8.2}x {:>8.2}x {:>8.2}x",
            pickle / channel,
            marshal / channel,
            old / channel
        );
    }
}
