//! Channels between interpreters and the host: delivery, closing, pickled objects,
//! shared buffers, interrupts.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use subinterp::{
    select, Channel, Error, Interpreter, InterruptReason, Message, SharedBuffer, Value,
};

/// A channel name unique to the test process and the test.
fn name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

fn py_err(err: &Error) -> &subinterp::PyException {
    err.as_python()
        .unwrap_or_else(|| panic!("expected a Python exception, got {err:?}"))
}

#[test]
fn the_module_is_multi_phase_with_one_module_object_per_interpreter() {
    let a = common::isolated();
    let b = common::isolated();
    // Importable in an own-GIL interpreter: CPython refuses modules that do not declare
    // per-interpreter GIL support there.
    for interp in [&a, &b] {
        interp.exec("import subinterp").unwrap();
        assert_eq!(
            interp.eval("subinterp.id()").unwrap(),
            Value::Int(interp.id())
        );
    }
    let types_a = a
        .eval("(id(subinterp), id(subinterp.Channel), id(subinterp.ChannelClosed))")
        .unwrap();
    let types_b = b
        .eval("(id(subinterp), id(subinterp.Channel), id(subinterp.ChannelClosed))")
        .unwrap();
    let (Value::Tuple(ta), Value::Tuple(tb)) = (types_a, types_b) else {
        panic!("tuples expected")
    };
    for (x, y) in ta.iter().zip(&tb) {
        assert_ne!(x, y, "module, types and exceptions are per interpreter");
    }
    let legacy = common::legacy();
    legacy.exec("import subinterp").unwrap();
}

#[test]
fn host_and_interpreters_share_named_channels() {
    let n = name("host");
    let to_py = Channel::named(&format!("{n}-in"));
    let from_py = Channel::named(&format!("{n}-out"));
    let interp = common::isolated();
    to_py
        .send(Value::Dict(vec![(Value::from("x"), Value::Int(20))]))
        .unwrap();
    interp
        .exec(&format!(
            "import subinterp\n\
             inbox = subinterp.channel('{n}-in')\n\
             outbox = subinterp.channel('{n}-out')\n\
             msg = inbox.recv()\n\
             outbox.send(msg['x'] * 2 + 2)\n\
             outbox.send(('tuple', b'bytes', None, 2**100))\n"
        ))
        .unwrap();
    assert_eq!(from_py.recv_value().unwrap(), Value::Int(42));
    let big = Value::from_bigint(subinterp::value::BigInt::from(1u8) << 100);
    assert_eq!(
        from_py.recv_value().unwrap(),
        Value::Tuple(vec![
            Value::from("tuple"),
            Value::Bytes(b"bytes".to_vec()),
            Value::None,
            big
        ])
    );
    assert_eq!(
        interp
            .eval(&format!("repr(subinterp.channel('{n}-in'))"))
            .unwrap(),
        Value::from(format!("<subinterp.Channel \"{n}-in\" len=0>"))
    );
}

#[test]
fn no_message_is_lost_or_duplicated_eight_producers_eight_consumers() {
    const PRODUCERS: i64 = 8;
    const CONSUMERS: usize = 8;
    const TOTAL: i64 = 100_000;
    let per_producer = TOTAL / PRODUCERS;
    let n = name("mpmc");
    let rt = common::runtime();
    let make = |code: String| {
        let rt = rt.clone();
        std::thread::spawn(move || {
            let interp = Interpreter::new(&rt, &subinterp::InterpreterConfig::isolated()).unwrap();
            interp.exec(&code).unwrap();
            interp.call("__main__:run", ()).unwrap()
        })
    };
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            make(format!(
                "import subinterp\n\
                 def run():\n    \
                     count = total = 0\n    \
                     for m in subinterp.channel('{n}', capacity=1000):\n        \
                         count += 1\n        \
                         total += m\n    \
                     return (count, total)\n"
            ))
        })
        .collect();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let start = p * per_producer;
            make(format!(
                "import subinterp\n\
                 def run():\n    \
                     ch = subinterp.channel('{n}', capacity=1000)\n    \
                     for i in range({start}, {end}):\n        \
                         ch.send(i)\n    \
                     return None\n",
                end = start + per_producer
            ))
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    Channel::named(&n).close();
    let (mut count, mut total) = (0i64, 0i64);
    for c in consumers {
        let Value::Tuple(pair) = c.join().unwrap() else {
            panic!("a tuple")
        };
        count += pair[0].as_i64().unwrap();
        total += pair[1].as_i64().unwrap();
    }
    assert_eq!(count, TOTAL, "every message received exactly once");
    assert_eq!(
        total,
        TOTAL * (TOTAL - 1) / 2,
        "and no message changed or duplicated"
    );
}

#[test]
fn closing_wakes_blocked_receivers_and_fails_later_sends() {
    let n = name("close");
    let interp = Arc::new(common::isolated());
    interp
        .exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    let waiter = {
        let interp = Arc::clone(&interp);
        std::thread::spawn(move || {
            interp.exec(
                "try:\n    ch.recv()\n    outcome = 'received'\nexcept subinterp.ChannelClosed as e:\n    outcome = 'closed: ' + str(e)\n",
            )
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    Channel::named(&n).close();
    waiter.join().unwrap().unwrap();
    assert_eq!(
        interp.eval("outcome").unwrap(),
        Value::from("closed: the channel is closed")
    );
    let err = interp.exec("ch.send(1)").unwrap_err();
    assert_eq!(py_err(&err).type_name, "subinterp.ChannelClosed");
    assert_eq!(interp.eval("ch.closed").unwrap(), Value::Bool(true));
    assert!(matches!(
        Channel::named(&n).send(Value::Int(1)),
        Err(Error::ChannelClosed)
    ));
}

#[test]
fn queued_messages_survive_close_and_iteration_ends() {
    let ch = Channel::new(None);
    for i in 0..3 {
        ch.send(Value::Int(i)).unwrap();
    }
    ch.close();
    let got: Vec<Value> = ch.iter().map(|m| m.into_value().unwrap()).collect();
    assert_eq!(got, vec![Value::Int(0), Value::Int(1), Value::Int(2)]);
    assert!(matches!(ch.recv(), Err(Error::ChannelClosed)));
}

#[test]
fn an_interpreter_closed_while_blocked_in_recv_does_not_hang_the_host() {
    let n = name("blocked");
    let interp = Arc::new(common::isolated());
    interp
        .exec(&format!(
            "import subinterp, threading\nch = subinterp.channel('{n}')"
        ))
        .unwrap();
    // One Python thread of the interpreter blocks too.
    interp
        .exec("threading.Thread(target=lambda: ch.recv()).start()")
        .unwrap();
    let blocked = {
        let interp = Arc::clone(&interp);
        std::thread::spawn(move || interp.exec("ch.recv()"))
    };
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    interp.close().unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    let err = blocked.join().unwrap().unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.KeyboardInterrupt");
    assert!(matches!(interp.eval("1"), Err(Error::Closed)));
}

#[test]
fn receive_timeouts_and_non_blocking_operations() {
    let n = name("timeouts");
    let interp = common::isolated();
    interp
        .exec(&format!(
            "import subinterp, time\nch = subinterp.channel('{n}', capacity=1)"
        ))
        .unwrap();
    let err = interp.exec("ch.recv(timeout=0.05)").unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.TimeoutError");
    let err = interp.exec("ch.try_recv()").unwrap_err();
    assert_eq!(py_err(&err).type_name, "subinterp.ChannelEmpty");
    interp.exec("ch.try_send('a')").unwrap();
    assert_eq!(interp.eval("len(ch)").unwrap(), Value::Int(1));
    let err = interp.exec("ch.try_send('b')").unwrap_err();
    assert_eq!(py_err(&err).type_name, "subinterp.ChannelFull");
    let err = interp.exec("ch.send('b', timeout=0.05)").unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.TimeoutError");
    let err = interp.exec("ch.recv(timeout=-1)").unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.ValueError");
    let err = interp
        .exec(
            "subinterp.channel('{n}', capacity=5)"
                .replace("{n}", &n)
                .as_str(),
        )
        .unwrap_err();
    assert!(py_err(&err)
        .message
        .contains("already exists with capacity 1"));
    assert_eq!(interp.eval("ch.recv()").unwrap(), Value::from("a"));
    assert_eq!(interp.eval("ch.capacity").unwrap(), Value::Int(1));

    let rust = Channel::new(Some(1));
    rust.try_send(Value::Int(1)).unwrap();
    assert!(matches!(
        rust.try_send(Value::Int(2)),
        Err(Error::ChannelFull)
    ));
    assert!(matches!(
        rust.send_timeout(Value::Int(2), Duration::from_millis(20)),
        Err(Error::Timeout { .. })
    ));
    rust.try_recv().unwrap();
    assert!(matches!(rust.try_recv(), Err(Error::ChannelEmpty)));
    assert!(matches!(
        rust.recv_timeout(Duration::from_millis(20)),
        Err(Error::Timeout { .. })
    ));
}

#[test]
fn other_objects_are_pickled_and_unpicklable_ones_fail_in_the_sender() {
    let n = name("pickle");
    let a = common::isolated();
    let b = common::isolated();
    a.exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    b.exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    a.exec("ch.send({1, 2, 3}); ch.send(complex(1, 2)); ch.send(range(2, 10, 3))")
        .unwrap();
    assert_eq!(b.eval("ch.recv() == {1, 2, 3}").unwrap(), Value::Bool(true));
    assert_eq!(b.eval("str(ch.recv())").unwrap(), Value::from("(1+2j)"));
    assert_eq!(
        b.eval("repr(ch.recv())").unwrap(),
        Value::from("range(2, 10, 3)")
    );

    let err = a.exec("ch.send(lambda: 1)").unwrap_err();
    let exc = py_err(&err);
    assert_eq!(exc.type_name, "builtins.TypeError");
    assert!(
        exc.message
            .contains("cannot send a builtins.function object"),
        "{}",
        exc.message
    );
    assert_eq!(
        a.eval("len(ch)").unwrap(),
        Value::Int(0),
        "nothing was sent"
    );

    // The receiver cannot import the sender's class: a clear error, and the message is
    // handed over inside it rather than dropped.
    a.exec("class Point:\n    def __init__(self, x):\n        self.x = x\nch.send(Point(3))")
        .unwrap();
    b.exec(
        "try:\n    ch.recv()\nexcept subinterp.ReceiveError as e:\n    failure = (str(e), e.type_name, len(e.pickled) > 0)\n",
    )
    .unwrap();
    let Value::Tuple(failure) = b.eval("failure").unwrap() else {
        panic!("a tuple")
    };
    assert!(
        failure[0].as_str().unwrap().contains("__main__.Point"),
        "{failure:?}"
    );
    assert!(
        failure[0].as_str().unwrap().contains("AttributeError"),
        "{failure:?}"
    );
    assert_eq!(failure[1], Value::from("__main__.Point"));
    assert_eq!(failure[2], Value::Bool(true));
    // Rust sees pickled messages as such.
    a.exec("ch.send(Point(4))").unwrap();
    match Channel::named(&n).recv().unwrap() {
        Message::Pickled { type_name, data } => {
            assert_eq!(type_name, "__main__.Point");
            assert!(!data.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_buffer_view_outlives_the_interpreter_that_created_it() {
    let n = name("buffer-outlives");
    let a = common::isolated();
    let b = common::isolated();
    a.exec(&format!(
        "import subinterp\nbuf = subinterp.buffer(b'shared bytes')\nsubinterp.channel('{n}').send(buf)"
    ))
    .unwrap();
    b.exec(&format!(
        "import subinterp\nview = subinterp.channel('{n}').recv()\n"
    ))
    .unwrap();
    a.close().unwrap();
    assert_eq!(
        b.eval("type(view).__name__").unwrap(),
        Value::from("memoryview")
    );
    assert_eq!(
        b.eval("bytes(view)").unwrap(),
        Value::Bytes(b"shared bytes".to_vec())
    );
    assert_eq!(b.eval("view.readonly").unwrap(), Value::Bool(true));
    let err = b.exec("view[0] = 65").unwrap_err();
    assert_eq!(
        py_err(&err).type_name,
        "builtins.TypeError",
        "read-only by default"
    );
}

#[test]
fn writes_through_a_writable_buffer_are_seen_by_other_interpreters() {
    let n = name("buffer-writable");
    let a = common::isolated();
    let b = common::isolated();
    a.exec(&format!(
        "import subinterp\nbuf = subinterp.buffer(8, writable=True)\nmine = memoryview(buf)\n\
         ch = subinterp.channel('{n}')\nch.send(buf)\nch.send(mine)"
    ))
    .unwrap();
    b.exec(&format!(
        "import subinterp\nch = subinterp.channel('{n}')\nv1 = ch.recv()\nv2 = ch.recv()\nv1[0:5] = b'hello'"
    ))
    .unwrap();
    assert_eq!(
        a.eval("bytes(mine[:5])").unwrap(),
        Value::Bytes(b"hello".to_vec())
    );
    assert_eq!(
        b.eval("bytes(v2[:5])").unwrap(),
        Value::Bytes(b"hello".to_vec())
    );
    a.exec("mine[7] = 33").unwrap();
    assert_eq!(b.eval("v1[7]").unwrap(), Value::Int(33));

    // And the host sees the same memory.
    let host = SharedBuffer::from_bytes(b"from rust", false).unwrap();
    Channel::named(&n).send(host.clone()).unwrap();
    assert_eq!(
        b.eval("bytes(ch.recv())").unwrap(),
        Value::Bytes(b"from rust".to_vec())
    );
    b.exec("ch.send(v1)").unwrap();
    match Channel::named(&n).recv().unwrap() {
        Message::Buffer(buf) => {
            assert_eq!(&buf.to_vec()[..5], b"hello");
            assert!(buf.is_writable());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_blocked_recv_is_interrupted_by_a_deadline_and_the_interpreter_stays_usable() {
    let n = name("interrupt");
    let interp = Arc::new(common::isolated());
    interp
        .exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    let handle = interp.interrupt_handle();
    let blocked = {
        let interp = Arc::clone(&interp);
        std::thread::spawn(move || interp.exec("ch.recv()"))
    };
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert!(handle.interrupt(InterruptReason::Timeout).unwrap());
    let err = blocked.join().unwrap().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(py_err(&err).type_name, "builtins.TimeoutError");
    assert_eq!(interp.eval("1 + 1").unwrap(), Value::Int(2));
    // Nothing running: nothing to interrupt, and the next operation is not hit.
    assert!(!handle.interrupt(InterruptReason::Cancelled).unwrap());
    assert_eq!(interp.eval("2 + 2").unwrap(), Value::Int(4));
}

#[test]
fn running_python_code_is_interrupted() {
    let interp = Arc::new(common::isolated());
    let handle = interp.interrupt_handle();
    let busy = {
        let interp = Arc::clone(&interp);
        std::thread::spawn(move || interp.exec("while True:\n    pass\n"))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(handle.interrupt(InterruptReason::Timeout).unwrap());
    let err = busy.join().unwrap().unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.TimeoutError");
    assert_eq!(interp.eval("'usable'").unwrap(), Value::from("usable"));
    interp.close().unwrap();
    assert!(matches!(
        handle.interrupt(InterruptReason::Timeout),
        Err(Error::Closed)
    ));
}

#[test]
fn select_and_async_receive_from_rust() {
    let a = Channel::new(None);
    let b = Channel::new(None);
    let sender = {
        let b = b.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            b.send(Value::from("on b")).unwrap();
        })
    };
    let (index, message) = select(&[&a, &b], Some(Duration::from_secs(5))).unwrap();
    sender.join().unwrap();
    assert_eq!(index, 1);
    assert_eq!(message.into_value().unwrap(), Value::from("on b"));
    assert!(matches!(
        select(&[&a, &b], Some(Duration::from_millis(10))),
        Err(Error::Timeout { .. })
    ));
    a.close();
    b.close();
    assert!(matches!(select(&[&a, &b], None), Err(Error::ChannelClosed)));

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Job {
        id: u32,
        words: Vec<String>,
    }
    let typed = Channel::new(None);
    let interp = common::isolated();
    let n = name("async");
    let named = Channel::named(&n);
    let future = named.recv_async();
    interp
        .exec(&format!(
            "import subinterp\nsubinterp.channel('{n}').send({{'id': 7, 'words': ['a', 'b']}})"
        ))
        .unwrap();
    let job: Job =
        subinterp::from_value(common::block_on(future).unwrap().into_value().unwrap()).unwrap();
    assert_eq!(
        job,
        Job {
            id: 7,
            words: vec!["a".into(), "b".into()]
        }
    );
    typed.send_serde(&job).unwrap();
    assert_eq!(typed.recv_as::<Job>().unwrap(), job);
}

#[test]
fn bytes_messages_of_every_size_arrive_intact_while_buffers_are_reused() {
    let n = name("bytes-reuse");
    let a = common::isolated();
    let b = common::isolated();
    a.exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    b.exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    let sizes = "[0, 1, 1024, 5, 70000, 3, 0, 2048, 7]";
    a.exec(&format!(
        "for round in range(3):\n    for i, size in enumerate({sizes}):\n        ch.send(bytes([65 + i]) * size)"
    ))
    .unwrap();
    let ok = b
        .eval(&format!(
            "all(ch.recv() == bytes([65 + i]) * size for round in range(3) for i, size in enumerate({sizes}))"
        ))
        .unwrap();
    assert_eq!(ok, Value::Bool(true));
    // A bytes subclass or bytearray still crosses as plain bytes.
    a.exec("ch.send(bytearray(b'xy'))").unwrap();
    assert_eq!(b.eval("ch.recv()").unwrap(), Value::Bytes(b"xy".to_vec()));
}

#[test]
fn argument_errors_are_the_exceptions_python_raises_for_them() {
    let interp = common::isolated();
    let n = name("argument-errors");
    interp
        .exec(&format!(
            "import subinterp\nch = subinterp.channel('{n}', capacity=1)"
        ))
        .unwrap();
    // Timeouts as `queue.Queue.get` and `threading.Lock.acquire` take them.
    for (timeout, expected) in [
        ("2**64", "builtins.OverflowError"),
        ("10**400", "builtins.OverflowError"),
        ("1e300", "builtins.OverflowError"),
        ("-1", "builtins.ValueError"),
        ("float('nan')", "builtins.ValueError"),
        ("'soon'", "builtins.TypeError"),
    ] {
        let err = interp
            .exec(&format!("ch.recv(timeout={timeout})"))
            .unwrap_err();
        assert_eq!(py_err(&err).type_name, expected, "timeout={timeout}");
    }
    let err = interp.exec("ch.recv(timeout=2**64)").unwrap_err();
    assert!(
        py_err(&err).message.contains("timeout value is too large"),
        "{err}"
    );
    // The longest timeout Python's own locks accept is accepted too.
    let got = interp
        .eval(
            "(ch.send('x', timeout=__import__('threading').TIMEOUT_MAX), \
              ch.recv(timeout=__import__('threading').TIMEOUT_MAX))",
        )
        .unwrap();
    assert_eq!(got, Value::Tuple(vec![Value::None, Value::from("x")]));

    // A buffer too large to allocate is a MemoryError, as bytearray(1 << 62) is.
    let err = interp.exec("subinterp.buffer(1 << 62)").unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.MemoryError");

    // Errors that are not about converting values do not say they are.
    let err = interp
        .exec(&format!("subinterp.channel('{n}', capacity=5)"))
        .unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.ValueError");
    assert!(
        !py_err(&err).message.contains("conversion"),
        "{}",
        py_err(&err).message
    );
    let err = interp.exec("ch.recv(timeout='soon')").unwrap_err();
    assert!(!py_err(&err).message.contains("conversion"), "{err}");
}

#[test]
fn a_name_that_is_not_utf8_raises_unicode_encode_error_and_prints_nothing() {
    let interp = common::capturing();
    interp
        .exec(
            "import subinterp\n\
             try:\n    subinterp.channel('\\udc80')\n\
             except UnicodeEncodeError as e:\n    caught = (type(e).__name__, e.reason)\n",
        )
        .unwrap();
    assert_eq!(
        interp.eval("caught").unwrap(),
        Value::Tuple(vec![
            Value::from("UnicodeEncodeError"),
            Value::from("surrogates not allowed")
        ])
    );
    let err = interp.exec("subinterp.channel('\\udc80')").unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.UnicodeEncodeError");
    let output = interp.take_output().unwrap();
    assert_eq!(output.stderr, "", "nothing is printed");
}

#[test]
fn an_exception_raised_by_python_code_called_from_the_module_keeps_type_traceback_and_cause() {
    let interp = common::isolated();
    interp
        .exec(
            "import subinterp, traceback\n\
             class Boom(Exception):\n    pass\n\
             class Source:\n    def __bytes__(self):\n        raise Boom('no bytes') from KeyError('k')\n\
             try:\n    subinterp.buffer(Source())\n\
             except Boom as e:\n    \
                 caught = (str(e), type(e.__cause__).__name__, \
                           [f.name for f in traceback.extract_tb(e.__traceback__)])\n",
        )
        .unwrap();
    let Value::Tuple(caught) = interp.eval("caught").unwrap() else {
        panic!("a tuple")
    };
    assert_eq!(caught[0], Value::from("no bytes"));
    assert_eq!(caught[1], Value::from("KeyError"));
    let Value::List(frames) = &caught[2] else {
        panic!("a list of frames")
    };
    assert!(
        frames.contains(&Value::from("__bytes__")),
        "the traceback reaches the Python code that raised: {frames:?}"
    );
    // Seen from Rust as well, with its real type.
    let err = interp.exec("subinterp.buffer(Source())").unwrap_err();
    assert_eq!(py_err(&err).type_name, "__main__.Boom");
    assert!(py_err(&err).traceback.contains("__bytes__"), "{err}");
}

#[test]
fn channel_and_buffer_lengths_go_through_the_trampolines() {
    let interp = common::isolated();
    let n = name("lengths");
    let got = interp
        .eval(&format!(
            "(lambda s: (s.channel('{n}').send(1), len(s.channel('{n}')), \
              len(s.buffer(7)), len(memoryview(s.buffer(b'abc'))), \
              iter(s.channel('{n}')) is not None))(__import__('subinterp'))"
        ))
        .unwrap();
    assert_eq!(
        got,
        Value::Tuple(vec![
            Value::None,
            Value::Int(1),
            Value::Int(7),
            Value::Int(3),
            Value::Bool(true)
        ])
    );
}

#[test]
fn bad_calls_of_the_module_are_type_errors_naming_the_parameter() {
    let interp = common::isolated();
    let n = name("bad-calls");
    interp
        .exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    for (call, needle) in [
        ("ch.send()", "send() missing required argument 'obj'"),
        (
            "subinterp.channel('x', 1, 2)",
            "channel() takes 2 positional arguments but 3 were given",
        ),
        (
            "ch.recv(wait=1)",
            "recv() got an unexpected keyword argument 'wait'",
        ),
        (
            "ch.send(1, obj=2)",
            "send() got multiple values for argument 'obj'",
        ),
        (
            "subinterp.id(1)",
            "id() takes 0 positional arguments but 1 were given",
        ),
    ] {
        let err = interp.exec(call).unwrap_err();
        let exc = py_err(&err);
        assert_eq!(exc.type_name, "builtins.TypeError", "{call}: {exc}");
        assert_eq!(exc.message, needle, "{call}");
    }
}

#[test]
fn a_contiguous_view_of_a_buffer_crosses_as_exactly_that_part_of_the_memory() {
    let n = name("buffer-views");
    let a = common::isolated();
    let b = common::isolated();
    a.exec(&format!(
        "import subinterp\nbuf = subinterp.buffer(bytes(range(16)), writable=True)\n\
         m = memoryview(buf)\nch = subinterp.channel('{n}')\n\
         ch.send(m[2:4])\n\
         ch.send(m.toreadonly()[4:8])\n\
         ch.send(m.cast('I')[1:3])\n\
         ch.send(m.cast('B', [4, 4])[1:3])\n\
         ch.send(m[5:5])\n"
    ))
    .unwrap();
    b.exec(&format!(
        "import subinterp\nch = subinterp.channel('{n}')\n\
         part, readonly, ints, rows, empty = (ch.recv() for _ in range(5))\n"
    ))
    .unwrap();
    // A slice: those two bytes and nothing else, the same memory (a write is seen by the
    // sender), and no way to reach the rest through the view's object.
    assert_eq!(b.eval("bytes(part)").unwrap(), Value::Bytes(vec![2, 3]));
    assert_eq!(
        b.eval("(len(part), part.nbytes, len(part.obj), bytes(memoryview(part.obj)))")
            .unwrap(),
        Value::Tuple(vec![
            Value::Int(2),
            Value::Int(2),
            Value::Int(2),
            Value::Bytes(vec![2, 3])
        ])
    );
    b.exec("part[0] = 99").unwrap();
    assert_eq!(a.eval("m[2]").unwrap(), Value::Int(99));
    // A read-only view stays read-only though the buffer is writable.
    assert_eq!(
        b.eval("(bytes(readonly), readonly.readonly)").unwrap(),
        Value::Tuple(vec![Value::Bytes(vec![4, 5, 6, 7]), Value::Bool(true)])
    );
    let err = b.exec("readonly[0] = 1").unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.TypeError");
    // A cast view arrives in its format, a 2-D view in its shape.
    assert_eq!(
        b.eval("(ints.format, ints.shape, ints.tolist() == list(memoryview(bytes(range(4, 12))).cast('I')))")
            .unwrap(),
        Value::Tuple(vec![
            Value::from("I"),
            Value::Tuple(vec![Value::Int(2)]),
            Value::Bool(true)
        ])
    );
    assert_eq!(
        b.eval("(rows.format, rows.shape, rows.tolist())").unwrap(),
        Value::Tuple(vec![
            Value::from("B"),
            Value::Tuple(vec![Value::Int(2), Value::Int(4)]),
            Value::List(vec![
                Value::List((4..8).map(Value::Int).collect()),
                Value::List((8..12).map(Value::Int).collect()),
            ]),
        ])
    );
    assert_eq!(b.eval("bytes(empty)").unwrap(), Value::Bytes(vec![]));

    // Forwarded again, a part of a part is still that part; the host sees exactly it.
    b.exec("ch.send(part[1:])").unwrap();
    match Channel::named(&n).recv().unwrap() {
        Message::Buffer(buf) => {
            assert_eq!(buf.to_vec(), vec![3]);
            assert_eq!(buf.len(), 1);
            assert!(buf.is_writable());
        }
        other => panic!("{other:?}"),
    }
    b.exec("ch.send(readonly)").unwrap();
    match Channel::named(&n).recv().unwrap() {
        Message::Buffer(buf) => assert!(!buf.is_writable(), "read-only stays read-only"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_strided_view_of_a_buffer_is_refused_and_nothing_is_sent() {
    let n = name("buffer-strided");
    let a = common::isolated();
    a.exec(&format!(
        "import subinterp\nbuf = subinterp.buffer(bytes(range(16)))\n\
         m = memoryview(buf)\nch = subinterp.channel('{n}')\n"
    ))
    .unwrap();
    for view in ["m[::2]", "m[::-1]", "m.cast('B', [4, 4])[::2]"] {
        let err = a.exec(&format!("ch.send({view})")).unwrap_err();
        let exc = py_err(&err);
        assert_eq!(exc.type_name, "builtins.TypeError", "{view}");
        assert!(exc.message.contains("non-contiguous"), "{}", exc.message);
        assert!(exc.message.contains("bytes(view)"), "{}", exc.message);
    }
    assert_eq!(
        a.eval("len(ch)").unwrap(),
        Value::Int(0),
        "nothing was sent"
    );
    // The copy the message suggests does cross.
    a.exec("ch.send(bytes(m[::2]))").unwrap();
    assert_eq!(
        Channel::named(&n).recv_value().unwrap(),
        Value::Bytes((0..16).step_by(2).collect())
    );
}

#[test]
fn a_rust_slice_of_a_shared_buffer_shows_only_its_bytes() {
    let n = name("buffer-rust-slice");
    let whole = SharedBuffer::from_bytes(b"0123456789", true).unwrap();
    let part = whole.slice(3..6).unwrap();
    assert_eq!(part.to_vec(), b"345");
    assert!(part.same_memory(&whole));
    part.write_at(0, b"x").unwrap();
    assert_eq!(whole.to_vec(), b"012x456789");
    assert!(part.write_at(2, b"yy").is_err(), "past the end of the part");
    assert!(whole.slice(8..11).is_err());
    assert!(
        part.slice(1..4).is_err(),
        "offsets are relative to the part"
    );
    assert_eq!(part.slice(1..3).unwrap().to_vec(), b"45");

    let a = common::isolated();
    Channel::named(&n).send(part).unwrap();
    a.exec(&format!(
        "import subinterp\nv = subinterp.channel('{n}').recv()"
    ))
    .unwrap();
    assert_eq!(
        a.eval("(bytes(v), len(v.obj), v.readonly)").unwrap(),
        Value::Tuple(vec![
            Value::Bytes(b"x45".to_vec()),
            Value::Int(3),
            Value::Bool(false)
        ])
    );
}

/// Classes defined the same way in the `__main__` of every interpreter that uses them, so
/// that pickles of their instances load on both sides.
const SUBCLASSES: &str = "
import collections, enum, http, subinterp
class Color(enum.IntEnum):
    RED = 1
class Name(str):
    pass
class Meters(float):
    pass
Pair = collections.namedtuple('Pair', 'x y')
";

#[test]
fn subclasses_of_plain_types_keep_their_type_nested_ones_too() {
    let n = name("subclasses");
    let a = common::isolated();
    let b = common::isolated();
    for interp in [&a, &b] {
        interp.exec(SUBCLASSES).unwrap();
        interp
            .exec(&format!("ch = subinterp.channel('{n}')"))
            .unwrap();
    }
    a.exec(
        "d = collections.defaultdict(list); d['k'].append(1)\n\
         sent = [Color.RED, http.HTTPStatus.OK, collections.OrderedDict(a=1, b=2), d,\n\
                 Pair(1, 2), bytearray(b'ba'), Name('n'), Meters(2.5),\n\
                 {'inner': collections.OrderedDict(z=0)}, [Color.RED, (Pair(3, 4),)],\n\
                 {'plain': [1, 2.5, 'x', b'y', (None, True)]}]\n\
         for x in sent:\n    ch.send(x)\n",
    )
    .unwrap();
    b.exec("got = [ch.recv() for _ in range(11)]").unwrap();
    let types = b
        .eval(
            "[type(got[0]).__name__, type(got[1]).__name__, type(got[2]).__name__,\n\
              type(got[3]).__name__, type(got[4]).__name__, type(got[5]).__name__,\n\
              type(got[6]).__name__, type(got[7]).__name__,\n\
              type(got[8]['inner']).__name__, type(got[9][0]).__name__,\n\
              type(got[9][1][0]).__name__]",
        )
        .unwrap();
    assert_eq!(
        types,
        Value::List(
            [
                "Color",
                "HTTPStatus",
                "OrderedDict",
                "defaultdict",
                "Pair",
                "bytearray",
                "Name",
                "Meters",
                "OrderedDict",
                "Color",
                "Pair"
            ]
            .into_iter()
            .map(Value::from)
            .collect()
        )
    );
    // Values are equal, and the defaultdict keeps its factory.
    assert_eq!(
        b.eval(
            "got == [Color.RED, http.HTTPStatus.OK, collections.OrderedDict(a=1, b=2), \
             {'k': [1]}, Pair(1, 2), bytearray(b'ba'), 'n', 2.5, {'inner': {'z': 0}}, \
             [1, (Pair(3, 4),)], {'plain': [1, 2.5, 'x', b'y', (None, True)]}]"
        )
        .unwrap(),
        Value::Bool(true)
    );
    b.exec("got[3]['new'].append(5)").unwrap();
    assert_eq!(
        b.eval("dict(got[3])").unwrap(),
        Value::Dict(vec![
            (Value::from("k"), Value::List(vec![Value::Int(1)])),
            (Value::from("new"), Value::List(vec![Value::Int(5)])),
        ])
    );
    // Plain data still crosses natively: the host reads it as a value, and a subclass as
    // the pickle it is.
    a.exec("ch.send({'plain': [1, (2,)]}); ch.send(Color.RED); ch.send(True)")
        .unwrap();
    let host = Channel::named(&n);
    assert_eq!(
        host.recv_value().unwrap(),
        Value::Dict(vec![(
            Value::from("plain"),
            Value::List(vec![Value::Int(1), Value::Tuple(vec![Value::Int(2)])])
        )])
    );
    match host.recv().unwrap() {
        Message::Pickled { type_name, .. } => assert_eq!(type_name, "__main__.Color"),
        other => panic!("{other:?}"),
    }
    assert_eq!(host.recv_value().unwrap(), Value::Bool(true));
}

#[test]
fn values_read_by_the_host_still_convert_subclasses_as_their_base_type() {
    let a = common::isolated();
    a.exec(SUBCLASSES).unwrap();
    assert_eq!(
        a.eval("[Color.RED, collections.OrderedDict(a=Pair(1, 2)), bytearray(b'x'), Name('n')]")
            .unwrap(),
        Value::List(vec![
            Value::Int(1),
            Value::Dict(vec![(
                Value::from("a"),
                Value::Tuple(vec![Value::Int(1), Value::Int(2)])
            )]),
            Value::Bytes(b"x".to_vec()),
            Value::from("n"),
        ])
    );
}

/// The resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_named_channel_is_freed_once_closed_drained_and_without_handles() {
    let n = name("freed");
    // Closed and drained, but a handle is left: the name is still that channel.
    let first = Channel::named(&n);
    first.send(Value::Int(1)).unwrap();
    first.close();
    assert!(Channel::named(&n).same_channel(&first));
    assert_eq!(Channel::named(&n).recv_value().unwrap(), Value::Int(1));
    assert!(Channel::named(&n).is_closed());
    // The last handle goes: the name makes a new, open channel.
    drop(first);
    let second = Channel::named(&n);
    assert!(!second.is_closed());
    assert!(second.is_empty());

    // Without handles, an open channel lives on with its messages...
    second.send(Value::Int(2)).unwrap();
    drop(second);
    let again = Channel::named(&n);
    assert_eq!(again.len(), 1);
    // ... and so does a closed one that still holds messages: they can be received by
    // name later (a producer that sent and closed before its consumer started).
    again.close();
    drop(again);
    let later = Channel::named(&n);
    assert!(later.is_closed());
    assert_eq!(later.recv_value().unwrap(), Value::Int(2));
    drop(later);
    assert!(!Channel::named(&n).is_closed(), "drained: freed");

    // A Python handle counts like a Rust one, in any interpreter.
    let interp = common::isolated();
    interp
        .exec(&format!(
            "import subinterp\nch = subinterp.channel('{n}')\nch.close()"
        ))
        .unwrap();
    assert!(Channel::named(&n).is_closed(), "held by the interpreter");
    interp.exec("del ch").unwrap();
    assert!(
        !Channel::named(&n).is_closed(),
        "freed with its last handle"
    );
    // Anonymous channels are unaffected.
    let anon = Channel::new(Some(1));
    anon.send(Value::Int(3)).unwrap();
    anon.close();
    assert_eq!(anon.recv_value().unwrap(), Value::Int(3));
}

#[test]
fn two_hundred_thousand_reply_channels_leave_little_memory_behind() {
    const ROUNDS: usize = 200_000;
    let n = name("replies");
    let interp = common::isolated();
    interp
        .exec(&format!(
            "import subinterp\n\
             def serve(prefix, rounds):\n\
             \x20   for i in range(rounds):\n\
             \x20       reply = subinterp.channel(f'{n}-{{prefix}}-{{i}}')\n\
             \x20       reply.send({{'id': i, 'body': b'x' * 100}})\n\
             \x20       assert reply.recv()['id'] == i\n\
             \x20       reply.close()\n"
        ))
        .unwrap();
    // Warm up (allocator arenas, the interpreter's caches), then measure.
    interp.exec("serve('warm-up', 1000)").unwrap();
    let before = rss();
    let start = Instant::now();
    interp.exec(&format!("serve('python', {ROUNDS})")).unwrap();
    for i in 0..ROUNDS {
        let reply = Channel::named(&format!("{n}-rust-{i}"));
        reply.send(Value::Bytes(vec![b'x'; 100])).unwrap();
        reply.recv().unwrap();
        reply.close();
    }
    let grown = rss().saturating_sub(before);
    eprintln!(
        "{} named channels: RSS grew by {:.1} MB in {:.1} s",
        2 * ROUNDS,
        grown as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    // Kept, they took about 9 KB each (over 3 GB here); freed, the growth is noise (other
    // tests run in this process meanwhile).
    assert!(
        grown < 200_000_000,
        "RSS grew by {grown} bytes over {ROUNDS} reply channels"
    );
}

#[test]
fn the_module_s_functions_bind_arguments_as_host_functions_do() {
    let interp = common::isolated();
    interp
        .exec(
            "import subinterp\n\
             def error(f, *args, **kwargs):\n    \
                 try:\n        f(*args, **kwargs)\n    \
                 except Exception as e:\n        return f'{type(e).__name__}: {e}'\n",
        )
        .unwrap();
    let cases = [
        (
            "error(subinterp.channel)",
            "TypeError: channel() missing required argument 'name'",
        ),
        (
            "error(subinterp.channel, 5)",
            "TypeError: channel() argument 'name' must be str, not int",
        ),
        (
            "error(subinterp.channel, 'typed-binding', size=3)",
            "TypeError: channel() got an unexpected keyword argument 'size'",
        ),
        (
            "error(subinterp.channel('typed-binding').send)",
            "TypeError: send() missing required argument 'obj'",
        ),
        (
            "error(subinterp.channel('typed-binding').send, 1, 2, 3)",
            "TypeError: send() takes 2 positional arguments but 3 were given",
        ),
        (
            "error(subinterp.channel('typed-binding').recv, timeout=-1)",
            "ValueError: timeout must be a non-negative number",
        ),
        (
            "error(subinterp.id, 1)",
            "TypeError: id() takes 0 positional arguments but 1 were given",
        ),
    ];
    for (code, expected) in cases {
        assert_eq!(interp.eval(code).unwrap(), Value::from(expected), "{code}");
    }
    // Keywords work for every parameter, and None means no limit.
    interp
        .exec(
            "ch = subinterp.channel(name='typed-binding', capacity=None)\n\
             ch.send(obj=7, timeout=None)\n\
             got = ch.recv(timeout=1)\n",
        )
        .unwrap();
    assert_eq!(interp.eval("got").unwrap(), Value::Int(7));
}

/// Python code that makes `big`, a `bytes` of `size` bytes that all differ from their
/// neighbours, and `base`, its reference count before anything is sent.
fn big_bytes(size: usize) -> String {
    format!("import sys\nbig = bytes(i * 7 % 251 for i in range({size}))\nbase = sys.getrefcount(big)\n")
}

#[test]
fn a_large_bytes_is_lent_until_received_and_then_released_by_its_sender() {
    let n = name("lent-bytes");
    let a = common::isolated();
    let b = common::isolated();
    a.exec(&format!(
        "import subinterp\nch = subinterp.channel('{n}')\n{}",
        big_bytes(3 << 20)
    ))
    .unwrap();
    b.exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    // Sent: the channel holds the sender's own object (no copy was made).
    a.exec("ch.send(big)").unwrap();
    assert_eq!(
        a.eval("sys.getrefcount(big) - base").unwrap(),
        Value::Int(1)
    );
    // Received: a bytes of the receiver's own, equal to what was sent.
    b.exec("got = ch.recv()").unwrap();
    assert_eq!(
        b.eval("type(got) is bytes and len(got)").unwrap(),
        Value::Int(3 << 20)
    );
    let same = a.eval("hash(big)").unwrap();
    assert_eq!(b.eval("hash(got)").unwrap(), same);
    // The sender releases its object the next time it uses a channel.
    a.exec("ch.send(None)").unwrap();
    assert_eq!(
        a.eval("sys.getrefcount(big) - base").unwrap(),
        Value::Int(0)
    );
    assert_eq!(b.eval("ch.recv()").unwrap(), Value::None);
    // Sent and received in one interpreter: released at once, the copy is equal and
    // not the same object.
    a.exec("got = ch.send(big) or ch.recv()").unwrap();
    assert_eq!(
        a.eval("(got == big, got is big, sys.getrefcount(big) - base)")
            .unwrap(),
        Value::Tuple(vec![Value::Bool(true), Value::Bool(false), Value::Int(0)])
    );
    // A Rust receiver gets the bytes as a value; the loan ends there too.
    a.exec("ch.send(big)").unwrap();
    let Value::Bytes(data) = Channel::named(&n).recv_value().unwrap() else {
        panic!("bytes expected")
    };
    let sum: i64 = data.iter().map(|&b| i64::from(b)).sum();
    assert_eq!(
        a.eval("len(big), sum(big)").unwrap(),
        Value::Tuple(vec![Value::Int(3 << 20), Value::Int(sum)])
    );
    a.exec("ch.send(None)").unwrap();
    assert_eq!(
        a.eval("sys.getrefcount(big) - base").unwrap(),
        Value::Int(0)
    );
    // Small bytes are copied as before (no reference kept).
    a.exec("small = bytes(1000)\nsb = sys.getrefcount(small)\nch.send(small)\nsa = sys.getrefcount(small)")
        .unwrap();
    assert_eq!(a.eval("sa - sb").unwrap(), Value::Int(0));
    assert_eq!(
        b.eval("ch.recv() is None and ch.recv()").unwrap(),
        Value::Bytes(vec![0; 1000])
    );
}

#[test]
fn large_bytes_sent_by_an_interpreter_that_ended_are_received_whole() {
    let n = name("lent-ended");
    let a = common::isolated();
    a.exec(&format!(
        "import subinterp\nch = subinterp.channel('{n}')\n{}",
        big_bytes(2 << 20)
    ))
    .unwrap();
    // Two loans of the same object, one of another, and one sent by `atexit` code while
    // the interpreter ends.
    a.exec(
        "ch.send(big)\nch.send(big)\nch.send(big[::-1])\nimport atexit\n\
         atexit.register(lambda: ch.send(big[1:]))",
    )
    .unwrap();
    let expected = a.eval("hash(big), hash(big[::-1]), hash(big[1:])").unwrap();
    // And one that nobody ever receives.
    a.exec(&format!("subinterp.channel('{n}-never').send(big)"))
        .unwrap();
    a.close().unwrap();
    let b = common::isolated();
    b.exec(&format!("import subinterp\nch = subinterp.channel('{n}')"))
        .unwrap();
    b.exec("got = [ch.recv() for _ in range(3)]").unwrap();
    let Value::Tuple(expected) = expected else {
        panic!("a tuple expected")
    };
    assert_eq!(
        b.eval("hash(got[0]), hash(got[2])").unwrap(),
        Value::Tuple(expected[..2].to_vec())
    );
    assert_eq!(b.eval("got[0] == got[1]").unwrap(), Value::Bool(true));
    // The message sent at exit, to a Rust receiver.
    let Value::Bytes(last) = Channel::named(&n).recv_value().unwrap() else {
        panic!("bytes expected")
    };
    assert_eq!(last.len(), (2 << 20) - 1);
    assert_eq!(&last[..3], &[7, 14, 21]);
}

#[test]
fn a_pickle_buffer_crosses_as_a_bytearray_of_its_bytes() {
    let n = name("pickle-buffer");
    let a = common::isolated();
    let b = common::isolated();
    for interp in [&a, &b] {
        interp
            .exec(&format!(
                "import pickle, subinterp\nch = subinterp.channel('{n}')"
            ))
            .unwrap();
    }
    // Alone, inside a container, and read-only: the bytes it shows, as a bytearray.
    a.exec(
        "ch.send(pickle.PickleBuffer(bytearray(b'abc')))\n\
         ch.send([pickle.PickleBuffer(b'xyz' * 30000), 1])",
    )
    .unwrap();
    assert_eq!(
        b.eval("(lambda x: (type(x).__name__, bytes(x)))(ch.recv())")
            .unwrap(),
        Value::Tuple(vec![
            Value::from("bytearray"),
            Value::Bytes(b"abc".to_vec())
        ])
    );
    assert_eq!(
        b.eval("(lambda x: (type(x[0]).__name__, x[0] == b'xyz' * 30000, x[1]))(ch.recv())")
            .unwrap(),
        Value::Tuple(vec![
            Value::from("bytearray"),
            Value::Bool(true),
            Value::Int(1)
        ])
    );
}
