//! Values round-trip exactly between Rust and Python.

mod common;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use subinterp::value::BigInt;
use subinterp::{Error, Value};

fn round_trip(interp: &subinterp::Interpreter, value: Value) {
    let back = interp.call("__main__:identity", (value.clone(),)).unwrap();
    assert_eq!(back, value, "round trip of {value}");
    // And Python sees the type it should.
    let type_name = interp.call("__main__:type_name", (value.clone(),)).unwrap();
    assert_eq!(type_name, Value::from(value.python_type()), "{value}");
}

fn interp() -> subinterp::Interpreter {
    let interp = common::isolated();
    interp
        .exec("def identity(x):\n    return x\n\ndef type_name(x):\n    return type(x).__name__\n")
        .unwrap();
    interp
}

#[test]
fn every_type_round_trips() {
    let interp = interp();
    let big = |s: &str| Value::from_bigint(s.parse::<BigInt>().unwrap());
    for value in [
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(-1),
        Value::Int(i64::MAX),
        Value::Int(i64::MIN),
        big("9223372036854775808"),
        big("-9223372036854775809"),
        big("123456789012345678901234567890123456789012345678901234567890"),
        big("-340282366920938463463374607431768211457"),
        Value::Float(0.1),
        Value::Float(-2.5e300),
        Value::Float(f64::INFINITY),
        Value::Str(String::new()),
        Value::from("ascii"),
        Value::from("non-ASCII: héllo wörld ✓ 日本語 🐍 \u{0}"),
        Value::Bytes(vec![]),
        Value::Bytes((0..=255).collect()),
        Value::List(vec![]),
        Value::Tuple(vec![]),
        Value::Tuple(vec![Value::Int(1)]),
        Value::Dict(vec![]),
        Value::List(vec![
            Value::Int(1),
            Value::List(vec![Value::Tuple(vec![Value::from("deep"), Value::None])]),
            Value::Dict(vec![(
                Value::from("k"),
                Value::List(vec![Value::Bool(true)]),
            )]),
        ]),
        Value::Dict(vec![
            (Value::from("z"), Value::Int(1)),
            (Value::from("a"), Value::Int(2)),
            (Value::Int(3), Value::from("int key")),
            (
                Value::Tuple(vec![Value::Int(1), Value::from("t")]),
                Value::from("tuple key"),
            ),
            (Value::None, Value::Float(1.5)),
        ]),
    ] {
        round_trip(&interp, value);
    }
    let nan = interp
        .call("__main__:identity", (Value::Float(f64::NAN),))
        .unwrap();
    assert!(matches!(nan, Value::Float(x) if x.is_nan()));
}

#[test]
fn big_ints_are_exact_in_python() {
    let interp = interp();
    assert_eq!(
        interp.eval("2 ** 200").unwrap().to_string(),
        "1606938044258990275541962092341162602522202993782792835301376"
    );
    assert_eq!(
        interp.eval("-(2 ** 64) + 1").unwrap().to_string(),
        "-18446744073709551615"
    );
    let v = Value::from_bigint("-1".parse::<BigInt>().unwrap() << 100);
    assert_eq!(
        interp.call("builtins:str", (v,)).unwrap(),
        Value::from("-1267650600228229401496703205376")
    );
}

#[test]
fn dict_order_is_kept() {
    let interp = interp();
    let value = interp.eval("{'b': 1, 'a': 2, 'c': 3}").unwrap();
    let keys: Vec<String> = match value {
        Value::Dict(items) => items.into_iter().map(|(k, _)| k.to_string()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(keys, ["\"b\"", "\"a\"", "\"c\""]);
}

#[test]
fn subclasses_convert_as_their_base_type() {
    let interp = interp();
    assert_eq!(
        interp
            .eval("__import__('collections').OrderedDict(a=1)")
            .unwrap(),
        Value::Dict(vec![(Value::from("a"), Value::Int(1))])
    );
    interp
        .exec("import enum\nclass Color(enum.IntEnum):\n    RED = 1\n")
        .unwrap();
    assert_eq!(interp.eval("Color.RED").unwrap(), Value::Int(1));
    assert_eq!(
        interp.eval("bytearray(b'xy')").unwrap(),
        Value::Bytes(b"xy".to_vec())
    );
    assert_eq!(
        interp.eval("True").unwrap(),
        Value::Bool(true),
        "bool is not turned into int"
    );
}

#[test]
fn unshareable_objects_are_refused_naming_their_type() {
    let interp = interp();
    for (expr, type_name, detail) in [
        ("{1, 2}", "builtins.set", ""),
        ("object()", "builtins.object", ""),
        (
            "[1, 2, lambda: 3]",
            "builtins.function",
            "found inside a list",
        ),
        (
            "{'k': range(3)}",
            "builtins.range",
            "found inside a dict value",
        ),
        (
            "__import__('collections').deque([1])",
            "collections.deque",
            "",
        ),
    ] {
        match interp.eval(expr).unwrap_err() {
            Error::Unshareable {
                type_name: got,
                detail: got_detail,
            } => {
                assert_eq!(got, type_name, "{expr}");
                assert_eq!(got_detail, detail, "{expr}");
            }
            other => panic!("{expr}: {other:?}"),
        }
    }
    let message = interp.eval("{1}").unwrap_err().to_string();
    assert_eq!(
        message,
        "builtins.set objects cannot cross interpreters as values"
    );
    // A self-referencing list is refused, not a stack overflow, and so is a list nested
    // past the limit.
    let err = interp
        .eval("(lambda l: (l.append(l), l)[1])([])")
        .unwrap_err();
    assert!(err.to_string().contains("it contains itself"), "{err}");
    interp
        .exec("deep = []\nfor _ in range(600):\n    deep = [deep]")
        .unwrap();
    let err = interp.eval("deep").unwrap_err();
    assert!(err.to_string().contains("nested more than 512"), "{err}");
}

#[test]
fn strings_with_lone_surrogates_are_an_error() {
    let interp = interp();
    let err = interp.eval("'\\udc80'").unwrap_err();
    let exc = err.as_python().expect("a Python exception");
    assert!(exc.is("UnicodeEncodeError"), "{exc}");
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Order {
    id: u64,
    customer: String,
    items: Vec<Item>,
    notes: Option<String>,
    tags: BTreeMap<String, i32>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Item {
    sku: String,
    quantity: u32,
    price: f64,
}

#[test]
fn typed_structs_cross_with_serde() {
    let interp = interp();
    interp
        .exec(
            "def total(order):\n    \
                 order['notes'] = f\"{len(order['items'])} lines\"\n    \
                 order['items'].append({'sku': 'FREE', 'quantity': 1, 'price': 0.0})\n    \
                 return order\n",
        )
        .unwrap();
    let order = Order {
        id: u64::MAX,
        customer: "Zoë".into(),
        items: vec![Item {
            sku: "A-1".into(),
            quantity: 3,
            price: 2.5,
        }],
        notes: None,
        tags: BTreeMap::from([("rush".into(), 1)]),
    };
    let args = subinterp::Args::new().arg_serde(&order).unwrap();
    let back: Order = interp.call_as("__main__:total", args).unwrap();
    assert_eq!(back.id, u64::MAX);
    assert_eq!(back.customer, "Zoë");
    assert_eq!(back.notes.as_deref(), Some("1 lines"));
    assert_eq!(back.items.len(), 2);
    assert_eq!(back.items[1].sku, "FREE");

    let err = interp
        .call_as::<Order>("__main__:identity", (Value::from("not an order"),))
        .unwrap_err();
    assert!(matches!(err, Error::Conversion(_)), "{err}");
}
