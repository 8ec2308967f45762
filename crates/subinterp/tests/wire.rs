//! The wire format: exact round trips of every plain type (Rust, Python, and across),
//! sharing kept, self-containing and over-deep values refused by the writer, and a reader
//! that survives any input.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use subinterp::value::{wire, BigInt};
use subinterp::{Channel, Encoded, Error, Interpreter, Message, Value};

fn name(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("wire-{what}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// Equal as data, floats compared by their bits (NaN payloads, -0.0).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
        (Value::List(x), Value::List(y)) | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Dict(x), Value::Dict(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| same(ka, kb) && same(va, vb))
        }
        _ => a == b,
    }
}

fn samples() -> Vec<Value> {
    let big = |s: &str| Value::from_bigint(s.parse::<BigInt>().unwrap());
    vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(1),
        Value::Int(-1),
        Value::Int(i64::MAX),
        Value::Int(i64::MIN),
        big("9223372036854775808"),
        big("-9223372036854775809"),
        big("-340282366920938463463374607431768211457"),
        big(&format!("1{}", "0".repeat(2000))),
        Value::Float(0.0),
        Value::Float(-0.0),
        Value::Float(f64::NAN),
        Value::Float(f64::from_bits(0x7ff8_0000_0000_0123)),
        Value::Float(f64::NEG_INFINITY),
        Value::Float(5e-324),
        Value::from(""),
        Value::from("non-ASCII: héllo ✓ 日本語 🐍 \u{0}"),
        Value::Bytes(vec![]),
        Value::Bytes((0..=255).collect()),
        Value::List(vec![]),
        Value::Tuple(vec![]),
        Value::Tuple(vec![Value::Int(1)]),
        Value::Dict(vec![]),
        Value::Dict(vec![
            (Value::from("z"), Value::Int(1)),
            (Value::from("a"), Value::Int(2)),
            (Value::Int(3), Value::Tuple(vec![Value::from("z")])),
            (
                Value::Tuple(vec![Value::Int(1), Value::from("z")]),
                Value::List(vec![Value::Dict(vec![(Value::from("z"), Value::None)])]),
            ),
        ]),
    ]
}

#[test]
fn values_round_trip_through_the_format_exactly() {
    for value in samples() {
        let bytes = wire::encode(&value).unwrap();
        let back = wire::decode(&bytes).unwrap();
        assert!(same(&back, &value), "{value} came back as {back}");
    }
}

#[test]
fn the_header_names_the_format_and_its_version() {
    let bytes = wire::encode(&Value::None).unwrap();
    assert_eq!(&bytes[..2], &wire::MAGIC);
    assert_eq!(bytes[2], wire::VERSION);
    let mut future = bytes.clone();
    future[2] = wire::VERSION + 1;
    let err = wire::decode(&future).unwrap_err().to_string();
    assert!(err.contains("version"), "{err}");
    assert!(wire::decode(b"").is_err());
    assert!(wire::decode(b"XX\x01\x00").is_err());
}

#[test]
fn dict_keys_are_written_once() {
    let row = |i: i64| {
        Value::Dict(vec![
            (Value::from("identifier"), Value::Int(i)),
            (Value::from("description"), Value::from("x")),
        ])
    };
    let one = wire::encode(&Value::List(vec![row(0)])).unwrap().len();
    let many = wire::encode(&Value::List((0..100).map(row).collect()))
        .unwrap()
        .len();
    // Each further row costs far less than its two keys (21 bytes) spelled out.
    assert!(many - one < 99 * 12, "{one} then {many}");
}

#[test]
fn malformed_input_is_an_error_not_a_crash_nor_a_huge_allocation() {
    // A list claiming 2^60 items, a str claiming 2^40 bytes, deep nesting, a reference
    // to nothing, a reference to a list from inside it, an unknown tag, trailing bytes.
    let cases: Vec<Vec<u8>> = vec![
        [
            &b"SW\x01\x0a"[..],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10],
        ]
        .concat(),
        [
            &b"SW\x01\x06"[..],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x20],
            b"abc",
        ]
        .concat(),
        [&b"SW\x01"[..], &[0x0a, 1].repeat(600), &[0x00]].concat(),
        b"SW\x01\x0d\x00".to_vec(),
        b"SW\x01\x8a\x01\x0d\x00".to_vec(),
        b"SW\x01\x7f".to_vec(),
        b"SW\x01\x00\x00".to_vec(),
        b"SW\x01\x83\x00".to_vec(),
        b"SW\x01\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01".to_vec(),
        b"SW\x01\x06\x02\xc3\x28".to_vec(),
    ];
    for case in cases {
        assert!(wire::decode(&case).is_err(), "{case:?}");
    }
}

#[test]
fn shared_values_copied_into_a_tree_are_limited() {
    // 40 levels of [x, x] in 200 bytes would be 2^40 nodes as a Value tree.
    let mut data = b"SW\x01".to_vec();
    for _ in 0..40 {
        data.extend_from_slice(&[0x8a, 2]);
    }
    data.extend_from_slice(&[0x00, 0x00]);
    for i in (1..40u8).rev() {
        data.extend_from_slice(&[0x0d, i]);
    }
    let err = wire::decode(&data).unwrap_err().to_string();
    assert!(err.contains("too large"), "{err}");
}

/// Channels between Rust and the interpreter: [`echoed`] has the interpreter receive one
/// message on the first and send it back on the second.
fn echo(interp: &Interpreter, n: &str) -> (Channel, Channel) {
    interp
        .exec(&format!(
            "import subinterp\n\
             def _echo():\n\
             \x20   m = subinterp.channel('{n}-in').recv()\n\
             \x20   dst = subinterp.channel('{n}-out')\n\
             \x20   try:\n\
             \x20       dst.send(('ok', m))\n\
             \x20   except Exception as e:\n\
             \x20       dst.send(('err', type(e).__name__))\n\
             def echo():\n\
             \x20   try:\n\
             \x20       _echo()\n\
             \x20   except Exception as e:\n\
             \x20       subinterp.channel('{n}-out').send(('err', type(e).__name__))\n"
        ))
        .unwrap();
    (
        Channel::named(&format!("{n}-in")),
        Channel::named(&format!("{n}-out")),
    )
}

fn echoed(interp: &Interpreter, out: &Channel) -> Value {
    interp.call("__main__:echo", ()).unwrap();
    let reply = out
        .recv_timeout(Duration::from_secs(60))
        .unwrap()
        .into_value()
        .unwrap();
    match reply {
        Value::Tuple(mut pair) if pair.len() == 2 && pair[0] == Value::from("ok") => pair.remove(1),
        other => panic!("the echo failed: {other}"),
    }
}

#[test]
fn values_cross_to_python_and_back_in_the_format() {
    let interp = common::isolated();
    let n = name("echo");
    let (into, out) = echo(&interp, &n);
    for value in samples() {
        // Sent as wire bytes, read by Python's reader, written by Python's writer, read
        // back as a Value.
        into.send(Message::Encoded(Encoded::from_bytes(
            wire::encode(&value).unwrap(),
        )))
        .unwrap();
        let back = echoed(&interp, &out);
        assert!(same(&back, &value), "{value} came back as {back}");
        // Sent as a Value too.
        into.send(value.clone()).unwrap();
        assert!(same(&echoed(&interp, &out), &value));
    }
    into.close();
}

/// Runs `code` in `a`, which sends `sent` on a channel; `b` receives it as `got` and
/// evaluates `check`.
fn cross(a: &Interpreter, b: &Interpreter, setup: &str, check: &str) -> Value {
    let n = name("cross");
    a.exec(&format!(
        "import subinterp\n{setup}\nsubinterp.channel('{n}').send(sent)\n"
    ))
    .unwrap();
    b.exec(&format!(
        "import subinterp\ngot = subinterp.channel('{n}').recv()\n"
    ))
    .unwrap();
    b.eval(check).unwrap()
}

#[test]
fn python_objects_cross_channels_exactly() {
    let a = common::isolated();
    let b = common::isolated();
    let cases = [
        // Lone surrogates, as os.fsdecode gives for a non-UTF-8 file name.
        (
            "sent = 'caf\\udce9 \\ud800x'",
            "got == 'caf\\udce9 \\ud800x'",
        ),
        (
            "sent = ['\\udcff', {'\\udcff': '\\ud83d'}]",
            "got == ['\\udcff', {'\\udcff': '\\ud83d'}]",
        ),
        (
            "import struct\nnan = struct.unpack('<d', struct.pack('<Q', 0x7ff8000000000123))[0]\n\
             sent = [-0.0, nan, float('inf')]",
            "[__import__('struct').pack('<d', x).hex() for x in got] == \
             ['0000000000000080', '230100000000f87f', '000000000000f07f']",
        ),
        (
            "sent = [2**64, -2**64 - 1, 7**500, -(7**500), 2**63 - 1, -2**63]",
            "got == [2**64, -2**64 - 1, 7**500, -(7**500), 2**63 - 1, -2**63]",
        ),
        (
            "sent = [True, 1, False, 0, 1.0]",
            "[type(x).__name__ for x in got] == ['bool', 'int', 'bool', 'int', 'float'] \
             and got == [True, 1, False, 0, 1.0]",
        ),
        (
            "sent = ([1, (2,)], (), [()], bytearray(b'ba'), b'by')",
            "type(got) is tuple and type(got[0]) is list and type(got[0][1]) is tuple \
             and type(got[3]) is bytearray and type(got[4]) is bytes \
             and got == ([1, (2,)], (), [()], bytearray(b'ba'), b'by')",
        ),
        (
            "sent = {'z': 1, 'a': 2, 3: 'c', (1, 'k'): None, 'm': {'y': 1, 'b': 2}}",
            "list(got) == ['z', 'a', 3, (1, 'k'), 'm'] and list(got['m']) == ['y', 'b']",
        ),
        (
            "inner = [1, 2]\nt = ('x', inner)\nsent = [inner, inner, {'a': t, 'b': t}, t]",
            "got[0] is got[1] and got[2]['a'] is got[2]['b'] is got[3] \
             and got[3][1] is got[0] and got == [[1, 2], [1, 2], {'a': ('x', [1, 2]), \
             'b': ('x', [1, 2])}, ('x', [1, 2])]",
        ),
        (
            "b = bytearray(b'shared')\nsent = [b, b]",
            "got[0] is got[1] and got[0] == bytearray(b'shared')",
        ),
    ];
    for (setup, check) in cases {
        assert_eq!(
            cross(&a, &b, setup, check),
            Value::Bool(true),
            "{setup} / {check}"
        );
    }
}

#[test]
fn nested_pairs_cross_in_linear_time_with_their_sharing() {
    let a = common::isolated();
    let b = common::isolated();
    let start = Instant::now();
    let check = cross(
        &a,
        &b,
        "x = [1]\nfor _ in range(24):\n    x = [x, x]\nsent = x",
        "all(y[0] is y[1] for y in [got, got[0], got[0][0][0][0]]) and \
         got[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0] == [1]",
    );
    assert_eq!(check, Value::Bool(true));
    // Tree copies took 21 s here; linear work takes milliseconds.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn self_containing_and_over_deep_values_are_pickled_as_before() {
    let a = common::isolated();
    let b = common::isolated();
    let check = cross(
        &a,
        &b,
        "sent = [1]\nsent.append(sent)",
        "got[1] is got and got[0] == 1",
    );
    assert_eq!(check, Value::Bool(true));
    cross(
        &a,
        &b,
        "sent = []\nfor _ in range(600):\n    sent = [sent]",
        "None",
    );
    b.exec("depth = 0\nx = got\nwhile x:\n    x = x[0]; depth += 1")
        .unwrap();
    assert_eq!(b.eval("depth").unwrap(), Value::Int(600));
    // A Rust receiver sees the pickle: the writer refused both.
    let n = name("refused");
    let ch = Channel::named(&n);
    a.exec(&format!(
        "l = [1]; l.append(l)\nd = []\nfor _ in range(600):\n    d = [d]\n\
         subinterp.channel('{n}').send(l)\nsubinterp.channel('{n}').send(d)\n"
    ))
    .unwrap();
    for _ in 0..2 {
        assert!(matches!(ch.recv().unwrap(), Message::Pickled { .. }));
    }
}

#[test]
fn a_rust_receiver_gets_values_and_keeps_what_a_value_cannot_hold_encoded() {
    let a = common::isolated();
    let n = name("to-rust");
    let ch = Channel::named(&n);
    a.exec(&format!(
        "import subinterp\nch = subinterp.channel('{n}')\n\
         ch.send({{'k': [1, 2.5, 'x', b'y', (None, True)], 'big': 2**70}})\n\
         ch.send(bytearray(b'ba'))\n\
         ch.send('lone \\udcff')\n"
    ))
    .unwrap();
    let big = Value::from_bigint("1180591620717411303424".parse::<BigInt>().unwrap());
    assert_eq!(
        ch.recv_value().unwrap(),
        Value::Dict(vec![
            (
                Value::from("k"),
                Value::List(vec![
                    Value::Int(1),
                    Value::Float(2.5),
                    Value::from("x"),
                    Value::Bytes(b"y".to_vec()),
                    Value::Tuple(vec![Value::None, Value::Bool(true)]),
                ])
            ),
            (Value::from("big"), big),
        ])
    );
    assert_eq!(ch.recv_value().unwrap(), Value::Bytes(b"ba".to_vec()));
    match ch.recv().unwrap() {
        Message::Encoded(encoded) => {
            let err = encoded.to_value().unwrap_err();
            assert!(matches!(err, Error::Conversion(_)), "{err:?}");
            assert!(err.to_string().contains("surrogates"), "{err}");
            // Sent back to Python, it is the same str again.
            let back = Channel::named(&format!("{n}-back"));
            back.send(Message::Encoded(encoded)).unwrap();
            a.exec(&format!("got = subinterp.channel('{n}-back').recv()"))
                .unwrap();
            assert_eq!(a.eval("got == 'lone \\udcff'").unwrap(), Value::Bool(true));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_python_reader_survives_random_and_truncated_input() {
    let interp = common::isolated();
    let n = name("fuzz");
    let (into, out) = echo(&interp, &n);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let inputs = (
        arb_value(),
        any::<usize>(),
        prop::collection::vec(any::<u8>(), 0..40),
    );
    runner
        .run(&inputs, |(value, cut, noise)| {
            let good = wire::encode(&value).unwrap();
            let cut = 3 + cut % (good.len() - 2);
            let mut bad = good[..cut].to_vec();
            bad.extend_from_slice(&noise);
            into.send(Message::Encoded(Encoded::from_bytes(bad.clone())))
                .unwrap();
            // Either an error in Python or some object, never a crash; the interpreter
            // goes on.
            interp.call("__main__:echo", ()).unwrap();
            let reply = out.recv_timeout(Duration::from_secs(60)).unwrap();
            let reply = reply.into_value().unwrap_or(Value::None);
            if let Err(err) = wire::decode(&bad) {
                // Malformed for the Rust reader: malformed for Python's too.
                if err.to_string().contains("malformed") {
                    prop_assert_eq!(&reply.as_slice().unwrap()[0], &Value::from("err"));
                }
            }
            Ok(())
        })
        .unwrap();
    into.close();
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::None),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<i128>().prop_map(Value::from),
        any::<u64>().prop_map(|bits| Value::Float(f64::from_bits(bits))),
        ".{0,12}".prop_map(Value::Str),
        prop::sample::select(vec!["id", "name", "v", "tags", "ok"]).prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
            prop::collection::vec((hashable(), inner), 0..8).prop_map(|items| {
                // Python keeps one entry per key: the first place, the last value.
                let mut out: Vec<(Value, Value)> = Vec::new();
                for (k, v) in items {
                    match out
                        .iter_mut()
                        .find(|(existing, _)| python_equal_key(existing, &k))
                    {
                        Some(entry) => entry.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Value::Dict(out)
            }),
        ]
    })
}

/// Keys whose Python equality is their Value equality (no floats, no bools next to ints).
fn hashable() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        ".{0,8}".prop_map(Value::Str),
        prop::sample::select(vec!["id", "name", "v", "tags", "ok"]).prop_map(Value::from),
        (any::<i32>(), ".{0,4}")
            .prop_map(|(i, s)| Value::Tuple(vec![Value::from(i), Value::Str(s)])),
        Just(Value::None),
    ]
}

fn python_equal_key(a: &Value, b: &Value) -> bool {
    a == b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn generated_values_round_trip_in_rust(value in arb_value()) {
        let bytes = wire::encode(&value).unwrap();
        let back = wire::decode(&bytes).unwrap();
        prop_assert!(same(&back, &value));
        // The writer is deterministic: the same bytes again.
        prop_assert_eq!(wire::encode(&back).unwrap(), bytes);
    }

    #[test]
    fn the_reader_survives_random_bytes(noise in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut data = b"SW\x01".to_vec();
        data.extend_from_slice(&noise);
        let _ = wire::decode(&data);
        let _ = wire::decode(&noise);
    }

    #[test]
    fn truncated_buffers_are_errors(value in arb_value(), cut in any::<usize>()) {
        let bytes = wire::encode(&value).unwrap();
        let cut = cut % bytes.len();
        prop_assert!(wire::decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn generated_values_cross_python_and_back() {
    let interp = common::isolated();
    let n = name("prop");
    let (into, out) = echo(&interp, &n);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    runner
        .run(&arb_value(), |value| {
            // Value -> wire -> Python objects -> wire -> Value.
            into.send(Message::Encoded(Encoded::from_bytes(
                wire::encode(&value).unwrap(),
            )))
            .unwrap();
            let back = echoed(&interp, &out);
            prop_assert!(same(&back, &value), "{} came back as {}", value, back);
            Ok(())
        })
        .unwrap();
    into.close();
}

const SHARING: &str = "def pairs(n):\n\
    \x20   x = [1]\n\
    \x20   for _ in range(n):\n\
    \x20       x = [x, x]\n\
    \x20   return x\n\
    def shared():\n\
    \x20   t = ('k', [1, 2])\n\
    \x20   return {'a': t, 'b': t, 'c': [t, t]}\n\
    def looped():\n\
    \x20   l = [1]\n\
    \x20   l.append(l)\n\
    \x20   return l\n\
    def deep():\n\
    \x20   d = []\n\
    \x20   for _ in range(600):\n\
    \x20       d = [d]\n\
    \x20   return d\n";

fn expected_shared() -> Value {
    let t = Value::Tuple(vec![
        Value::from("k"),
        Value::List(vec![Value::Int(1), Value::Int(2)]),
    ]);
    Value::Dict(vec![
        (Value::from("a"), t.clone()),
        (Value::from("b"), t.clone()),
        (Value::from("c"), Value::List(vec![t.clone(), t])),
    ])
}

fn pairs_value(n: usize) -> Value {
    let mut x = Value::List(vec![Value::Int(1)]);
    for _ in 0..n {
        x = Value::List(vec![x.clone(), x]);
    }
    x
}

/// Call and eval results cross in the wire format: shared parts arrive as copies in the
/// Value tree, a value too shared to copy is a clear error (not gigabytes), and
/// self-containing or over-deep results are refused in the interpreter.
#[test]
fn call_and_eval_results_cross_in_the_format() {
    let interp = common::isolated();
    interp.exec(SHARING).unwrap();
    assert_eq!(
        interp.call("__main__:shared", ()).unwrap(),
        expected_shared()
    );
    assert_eq!(interp.eval("pairs(10)").unwrap(), pairs_value(10));
    let start = Instant::now();
    let err = interp.eval("pairs(24)").unwrap_err();
    assert!(matches!(err, Error::Conversion(_)), "{err:?}");
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let err = interp.call("__main__:looped", ()).unwrap_err();
    assert!(err.to_string().contains("it contains itself"), "{err}");
    let err = interp.call("__main__:deep", ()).unwrap_err();
    assert!(err.to_string().contains("nested more than 512"), "{err}");
    // Arguments cross in the format too: keywords in order, a value nested past the
    // limit refused before it reaches the interpreter.
    interp
        .exec("def kw(*a, **k):\n    return [list(a), list(k.items())]")
        .unwrap();
    let args = subinterp::Args::new()
        .arg(pairs_value(3))
        .kwarg("z", Value::from(-0.0))
        .kwarg("a", Value::Bytes(vec![0; 3]));
    assert_eq!(
        interp.call("__main__:kw", args).unwrap(),
        Value::List(vec![
            Value::List(vec![pairs_value(3)]),
            Value::List(vec![
                Value::Tuple(vec![Value::from("z"), Value::Float(-0.0)]),
                Value::Tuple(vec![Value::from("a"), Value::Bytes(vec![0; 3])]),
            ]),
        ])
    );
    let mut deep = Value::None;
    for _ in 0..600 {
        deep = Value::List(vec![deep]);
    }
    let err = interp.call("__main__:kw", (deep,)).unwrap_err();
    assert!(err.to_string().contains("nested more than 512"), "{err}");
    // Subclasses still arrive as their base type, bytearray as bytes.
    assert_eq!(
        interp
            .eval(
                "[__import__('enum').IntEnum('E', 'A').A, bytearray(b'x'), \
                   __import__('collections').OrderedDict(a=1.5)]"
            )
            .unwrap(),
        Value::List(vec![
            Value::Int(1),
            Value::Bytes(b"x".to_vec()),
            Value::Dict(vec![(Value::from("a"), Value::Float(1.5))]),
        ])
    );
}

#[test]
fn pool_results_cross_in_the_format() {
    let mut config = subinterp::PoolConfig::new();
    config.workers(1).init(SHARING);
    let pool = subinterp::Pool::new(&common::runtime(), &config).unwrap();
    assert_eq!(
        pool.submit("__main__:shared", ()).unwrap().wait().unwrap(),
        expected_shared()
    );
    assert_eq!(
        pool.submit("__main__:pairs", (10,))
            .unwrap()
            .wait()
            .unwrap(),
        pairs_value(10)
    );
    let err = pool
        .submit("__main__:pairs", (24,))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    let err = pool
        .submit("__main__:looped", ())
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(err.to_string().contains("it contains itself"), "{err}");
    let results: Vec<Value> = pool
        .map("__main__:pairs", (0..4).map(|n| (n,)))
        .unwrap()
        .collect::<subinterp::Result<_>>()
        .unwrap();
    assert_eq!(results, (0..4).map(pairs_value).collect::<Vec<_>>());
}

/// Shared buffers inside plain data travel beside it, in its out-of-band table: the
/// receiver gets views of the same memory, nothing copied.
#[test]
fn shared_buffers_inside_data_cross_without_a_copy() {
    let a = common::isolated();
    let b = common::isolated();
    let check = cross(
        &a,
        &b,
        "buf = subinterp.buffer(1 << 20, writable=True)\n\
         memoryview(buf)[:5] = b'hello'\n\
         sent = {'meta': {'n': 1}, 'parts': [buf, memoryview(buf)[1:3]], 'tail': b'x'}",
        "bytes(got['parts'][0][:5]) == b'hello' and bytes(got['parts'][1]) == b'el' \
         and got['meta'] == {'n': 1} and got['tail'] == b'x' \
         and type(got['parts'][0]) is memoryview",
    );
    assert_eq!(check, Value::Bool(true));
    // The receiver writes, the sender sees it: the same memory.
    b.exec("got['parts'][0][0:1] = b'J'").unwrap();
    assert_eq!(
        a.eval("bytes(memoryview(buf)[:5])").unwrap(),
        Value::Bytes(b"Jello".to_vec())
    );
    // A Rust receiver gets the data encoded, with the buffers beside it.
    let n = name("buffers-to-rust");
    let ch = Channel::named(&n);
    a.exec(&format!("subinterp.channel('{n}').send([1, buf])"))
        .unwrap();
    match ch.recv().unwrap() {
        Message::Encoded(encoded) => {
            assert_eq!(encoded.buffers().len(), 1);
            assert_eq!(encoded.buffers()[0].len(), 1 << 20);
            assert!(encoded.to_value().is_err());
        }
        other => panic!("{other:?}"),
    }
    // A memoryview of memory that is not shared is refused, inside data as alone.
    let err = a
        .exec(&format!(
            "subinterp.channel('{n}').send([memoryview(bytearray(4))])"
        ))
        .unwrap_err();
    assert!(err.to_string().contains("subinterp.buffer"), "{err}");
}
