//! Worker processes of the `Pool`: tasks an isolated interpreter refuses (numpy, orjson,
//! pydantic-core, lxml and regex, from real wheels installed from PyPI into a virtual
//! environment made by this test) run in a worker process with no option; pure-Python tasks of the same pool stay in the calling
//! process; deadlines, cancellation, crashes and exceptions in worker processes.
//!
//! The environment is made once under Cargo's target directory (one per Python). Making
//! it needs `pip` to reach PyPI: without it, the tests that need numpy say so and pass.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use subinterp::{Error, Pool, PoolConfig, Runtime, RuntimeConfig, TaskOptions, Value};

mod wheel_venv;

/// The virtual environment with the refused wheels, or `None` if PyPI could not be reached.
fn venv() -> Option<&'static Path> {
    wheel_venv::refused("process-venv")
}

const NP_TASKS: &str = r#"
import os
import numpy as np

def total(n):
    return float(np.arange(n, dtype=np.float64).sum())

def stats(values):
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "max": float(a.max()), "n": int(a.size)}

def pid():
    return os.getpid()

def use_channel():
    import subinterp
    return subinterp.channel("only-in-the-host").send(1)
"#;

const LATE_NP: &str = r#"
import os
def work(path):
    with open(path, "a") as f:
        f.write("ran\n")
    import numpy
    return int(numpy.int64(7))
"#;

/// One module per wheel, so that each is refused (and routed) on its own.
const WHEEL_TASKS: [(&str, &str); 4] = [
    (
        "orjson_tasks",
        r#"
import os
import orjson

def pid():
    return os.getpid()

def dumps(obj):
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)

def roundtrip(text):
    return orjson.loads(text)
"#,
    ),
    (
        "pydantic_tasks",
        r#"
import os
from pydantic_core import SchemaValidator, ValidationError, core_schema

def pid():
    return os.getpid()

VALIDATOR = SchemaValidator(
    core_schema.typed_dict_schema(
        {
            "name": core_schema.typed_dict_field(core_schema.str_schema()),
            "age": core_schema.typed_dict_field(core_schema.int_schema(ge=0)),
        }
    )
)

def validate(data):
    try:
        return VALIDATOR.validate_python(data)
    except ValidationError as e:
        return [err["type"] for err in e.errors()]
"#,
    ),
    (
        "lxml_tasks",
        r#"
import os
from lxml import etree

def pid():
    return os.getpid()

def total(xml):
    return float(etree.fromstring(xml).xpath("sum(//item/@price)"))

def names(xml):
    return [e.text for e in etree.fromstring(xml).iter("name")]
"#,
    ),
    (
        "regex_tasks",
        r#"
import os
import regex

def pid():
    return os.getpid()

def words(text):
    return regex.findall(r"\p{Lu}\p{Ll}+", text)

def fuzzy(pattern, text):
    m = regex.search(f"(?:{pattern}){{e<=1}}", text)
    return None if m is None else m.group()
"#,
    ),
];

const PURE_TASKS: &str = r#"
import os, sys, time

def pid():
    return os.getpid()

def echo(x):
    return x

def spin():
    while True:
        pass

def stuck_in_c():
    import ctypes
    ctypes.CDLL(None).sleep(60)

def abort():
    os.abort()

def boom():
    try:
        raise KeyError("inner")
    except KeyError as e:
        raise ValueError("outer") from e

def leave(code):
    sys.exit(code)

def a_set():
    return {1}

def as_bytearray(data):
    return [bytearray(data)][0]

def main_mark():
    return sys.modules["__main__"].MARK

def wire_of(x):
    # The worker's own wire writer (the worker script runs as __main__).
    return sys.modules["__main__"].encode(x, lenient=True)

def read_stdin():
    return sys.stdin.read()

def use_channel():
    import subinterp
    return subinterp.channel("only-in-the-host").send(1)

def use_host_module():
    import proc_host
    return proc_host.double(2)

def printing():
    print("to the host's stderr")
    return 1

def grab(mb):
    data = b"x" * (mb << 20)
    time.sleep(10)
    return len(data)
"#;

/// The runtime of this test process: the venv's Python (if PyPI was reachable) and the
/// fixture modules on `sys.path`.
fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("subinterp-processes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("np_tasks.py"), NP_TASKS).unwrap();
        std::fs::write(dir.join("late_np.py"), LATE_NP).unwrap();
        std::fs::write(dir.join("np_once.py"), NP_TASKS).unwrap();
        std::fs::write(dir.join("pure_tasks.py"), PURE_TASKS).unwrap();
        std::fs::write(dir.join("proc_tasks.py"), PURE_TASKS).unwrap();
        for (name, source) in WHEEL_TASKS {
            std::fs::write(dir.join(format!("{name}.py")), source).unwrap();
        }
        let mut config = RuntimeConfig::new();
        config.add_path(&dir);
        config.host_module(subinterp::HostModule::new("proc_host").function(
            "double",
            ["x"],
            |_: &subinterp::Caller, (x,): (i64,)| Ok(x * 2),
        ));
        if let Some(venv) = venv() {
            config.virtual_env(venv);
        }
        Runtime::get_or_init(&config).expect("start Python")
    })
    .clone()
}

/// A pool whose `proc_tasks` module runs in processes from the start.
fn new_pool(configure: impl FnOnce(&mut PoolConfig)) -> Pool {
    let mut config = PoolConfig::new();
    config.workers(2).in_processes("proc_tasks");
    configure(&mut config);
    Pool::new(&runtime(), &config).expect("pool")
}

fn int(v: Value) -> i64 {
    match v {
        Value::Int(i) => i,
        other => panic!("expected an int, got {other:?}"),
    }
}

const WAIT: Duration = Duration::from_secs(120);

fn wait(task: subinterp::Task) -> subinterp::Result<Value> {
    task.wait_timeout(WAIT).expect("the task finishes")
}

#[test]
fn numpy_tasks_run_in_processes_and_pure_ones_in_interpreters() {
    if venv().is_none() {
        return;
    }
    let pool = new_pool(|_| {});
    let me = i64::from(std::process::id());
    // The pure task runs in an interpreter of this process.
    assert_eq!(
        int(wait(pool.submit("pure_tasks:pid", ()).unwrap()).unwrap()),
        me
    );
    assert_eq!(pool.tasks_in_processes(), 0);
    // numpy is refused by isolated interpreters: the task runs in a process, with no option.
    let got = wait(pool.submit("np_tasks:total", (1000,)).unwrap()).unwrap();
    assert_eq!(got, Value::Float(499500.0));
    let pid = int(wait(pool.submit("np_tasks:pid", ()).unwrap()).unwrap());
    assert_ne!(pid, me);
    // map: results in input order, equal to computing them directly.
    let results: Vec<Value> = pool
        .map("np_tasks:total", (0..40).map(|n| (n,)))
        .unwrap()
        .collect::<subinterp::Result<_>>()
        .unwrap();
    let expected: Vec<Value> = (0..40i64)
        .map(|n| Value::Float((n * (n - 1) / 2) as f64))
        .collect();
    assert_eq!(results, expected);
    let stats = wait(
        pool.submit(
            "np_tasks:stats",
            (Value::List(vec![1.into(), 2.into(), 6.into()]),),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        stats,
        Value::Dict(vec![
            ("mean".into(), Value::Float(3.0)),
            ("max".into(), Value::Float(6.0)),
            ("n".into(), Value::Int(3)),
        ])
    );
    assert!(pool.tasks_in_processes() >= 43);
    // Still in this process.
    assert_eq!(
        int(wait(pool.submit("pure_tasks:pid", ()).unwrap()).unwrap()),
        me
    );
    pool.shutdown(WAIT);
}

#[test]
fn orjson_pydantic_core_lxml_and_regex_tasks_run_in_processes_with_no_option() {
    if venv().is_none() {
        return;
    }
    let pool = new_pool(|_| {});
    let call = |target: &str, args: Vec<Value>| wait(pool.submit(target, args).unwrap());
    let me = i64::from(std::process::id());
    // orjson: bytes out, a dict back.
    let record = Value::Dict(vec![
        (
            "b".into(),
            Value::List(vec![1.into(), 2.5.into(), Value::None]),
        ),
        ("a".into(), "é".into()),
    ]);
    assert_eq!(
        call("orjson_tasks:dumps", vec![record.clone()]).unwrap(),
        Value::Bytes(r#"{"a":"é","b":[1,2.5,null]}"#.as_bytes().to_vec())
    );
    assert_eq!(
        call(
            "orjson_tasks:roundtrip",
            vec![r#"{"a":"é","b":[1,2.5,null]}"#.into()]
        )
        .unwrap(),
        Value::Dict(vec![
            ("a".into(), "é".into()),
            (
                "b".into(),
                Value::List(vec![1.into(), 2.5.into(), Value::None])
            ),
        ])
    );
    // pydantic-core: lax validation turns "42" into 42; a bad record gives its error types.
    let person =
        |name: Value, age: Value| Value::Dict(vec![("name".into(), name), ("age".into(), age)]);
    assert_eq!(
        call(
            "pydantic_tasks:validate",
            vec![person("Ada".into(), "42".into())]
        )
        .unwrap(),
        person("Ada".into(), 42.into())
    );
    assert_eq!(
        call(
            "pydantic_tasks:validate",
            vec![person(1.into(), (-1).into())]
        )
        .unwrap(),
        Value::List(vec!["string_type".into(), "greater_than_equal".into()])
    );
    // lxml: XPath over a document.
    let xml = r#"<shop><item price="1.5"><name>tea</name></item><item price="2.25"><name>jam</name></item></shop>"#;
    assert_eq!(
        call("lxml_tasks:total", vec![xml.into()]).unwrap(),
        Value::Float(3.75)
    );
    assert_eq!(
        call("lxml_tasks:names", vec![xml.into()]).unwrap(),
        Value::List(vec!["tea".into(), "jam".into()])
    );
    // regex: Unicode properties and fuzzy matching, which `re` has not.
    assert_eq!(
        call(
            "regex_tasks:words",
            vec!["Élan and Ünïcode or ascii Words".into()]
        )
        .unwrap(),
        Value::List(vec!["Élan".into(), "Ünïcode".into(), "Words".into()])
    );
    assert_eq!(
        call(
            "regex_tasks:fuzzy",
            vec!["kitten".into(), "a sitten b".into()]
        )
        .unwrap(),
        Value::from("sitten")
    );
    // A map over each module: results in input order.
    let results: Vec<Value> = pool
        .map(
            "regex_tasks:words",
            (0..30).map(|n| (format!("x{n} abc{n} Ok"),)),
        )
        .unwrap()
        .collect::<subinterp::Result<_>>()
        .unwrap();
    assert_eq!(results.len(), 30);
    assert!(results.iter().all(|r| *r == Value::List(vec!["Ok".into()])));
    assert!(
        pool.tasks_in_processes() >= 38,
        "{}",
        pool.tasks_in_processes()
    );
    // None of them ran in this process, and pure tasks still do.
    for (module, _) in WHEEL_TASKS {
        let pid = int(wait(pool.submit(&format!("{module}:pid"), ()).unwrap()).unwrap());
        assert_ne!(pid, me, "{module}");
    }
    assert_eq!(
        int(wait(pool.submit("pure_tasks:pid", ()).unwrap()).unwrap()),
        me
    );
    pool.shutdown(WAIT);
}

#[test]
fn with_the_fallback_off_the_refusal_is_the_error() {
    if venv().is_none() {
        return;
    }
    let pool = new_pool(|c| {
        c.process_fallback(false);
    });
    let err = wait(pool.submit("np_tasks:total", (10,)).unwrap()).unwrap_err();
    let exc = err.as_python().expect("a Python exception");
    assert!(exc.is("ImportError"), "{err:?}");
    assert!(format!("{err:?}").contains("subinterpreters"), "{err:?}");
    assert_eq!(pool.tasks_in_processes(), 0);
}

#[test]
fn a_task_refused_after_doing_work_runs_twice_unless_told_not_to() {
    if venv().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("subinterp-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("log");
    let path = log.to_string_lossy().into_owned();
    let pool = new_pool(|_| {});
    assert_eq!(
        wait(pool.submit("late_np:work", (path.as_str(),)).unwrap()).unwrap(),
        Value::Int(7)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\nran\n");
    drop(pool);
    std::fs::remove_file(&log).unwrap();
    let pool = new_pool(|c| {
        c.rerun_refused_tasks(false);
    });
    let err = wait(pool.submit("late_np:work", (path.as_str(),)).unwrap()).unwrap_err();
    assert!(
        err.as_python().is_some_and(|e| e.is("ImportError")),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\n");
    // Later tasks of the module go to processes directly: once each.
    assert_eq!(
        wait(pool.submit("late_np:work", (path.as_str(),)).unwrap()).unwrap(),
        Value::Int(7)
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "ran\nran\n");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plain_data_crosses_to_processes_and_back_exactly() {
    let pool = new_pool(|_| {});
    let big = num_bigint::BigInt::from(7u8).pow(60);
    let values = vec![
        Value::None,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(0),
        Value::Int(-1),
        Value::Int(i64::MIN),
        Value::Int(i64::MAX),
        Value::BigInt(big.clone()),
        Value::BigInt(-big),
        Value::Float(-0.0),
        Value::Float(f64::INFINITY),
        Value::Float(1.5e-300),
        Value::from("héllo \u{1F600}"),
        Value::Bytes(vec![0, 1, 255]),
        Value::List(vec![Value::Int(1), Value::Tuple(vec![Value::from("a")])]),
        Value::Dict(vec![
            (Value::from("k"), Value::List(vec![])),
            (Value::Int(3), Value::Dict(vec![])),
        ]),
    ];
    for value in values {
        let back = wait(pool.submit("proc_tasks:echo", (value.clone(),)).unwrap()).unwrap();
        assert_eq!(back, value);
    }
    // Memo references the Rust writer makes (repeated dict keys) read in the worker.
    let rows = Value::List(
        (0..3)
            .map(|i| Value::Dict(vec![(Value::from("key"), Value::Int(i))]))
            .collect(),
    );
    let back = wait(pool.submit("proc_tasks:echo", (rows.clone(),)).unwrap()).unwrap();
    assert_eq!(back, rows);
    let nan = wait(pool.submit("proc_tasks:echo", (f64::NAN,)).unwrap()).unwrap();
    assert!(matches!(nan, Value::Float(x) if x.is_nan()));
    // What is not plain data is an error naming its type, as in an interpreter.
    let err = wait(pool.submit("proc_tasks:a_set", ()).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::Unshareable { type_name, .. } if type_name == "builtins.set"),
        "{err:?}"
    );
    assert!(pool.tasks_in_processes() >= 17);
}

#[test]
fn large_bytes_cross_to_processes_and_back_whole_in_raw_frames() {
    let pool = new_pool(|_| {});
    // Past the size the worker writes by reference (64 KiB), alone, inside containers,
    // and as a bytearray (which a result gives as bytes); 3 MiB takes several pipe writes.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    let small = vec![9u8; 70_000];
    let value = Value::List(vec![
        Value::Bytes(big.clone()),
        Value::Tuple(vec![Value::Bytes(small.clone()), Value::from("after")]),
        Value::Bytes(big[..65_536].to_vec()),
    ]);
    let back = wait(pool.submit("proc_tasks:echo", (value.clone(),)).unwrap()).unwrap();
    assert_eq!(back, value);
    let back = wait(
        pool.submit("proc_tasks:as_bytearray", (Value::Bytes(big.clone()),))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(back, Value::Bytes(big));
}

#[test]
fn exceptions_keep_type_message_traceback_and_cause() {
    let pool = new_pool(|_| {});
    let err = wait(pool.submit("proc_tasks:boom", ()).unwrap()).unwrap_err();
    let exc = err.as_python().expect("a Python exception");
    assert_eq!(exc.type_name, "builtins.ValueError");
    assert_eq!(exc.message, "outer");
    assert!(exc.traceback.contains("in boom"), "{}", exc.traceback);
    assert!(
        exc.traceback.contains("KeyError: 'inner'"),
        "{}",
        exc.traceback
    );
    let cause = exc.cause.as_ref().expect("the cause");
    assert_eq!(cause.type_name, "builtins.KeyError");
    let err = wait(pool.submit("proc_tasks:leave", (3,)).unwrap()).unwrap_err();
    assert_eq!(err.exit_code(), Some(3));
}

#[test]
fn a_runaway_task_in_a_process_is_interrupted_and_the_process_kept() {
    let pool = new_pool(|c| {
        c.workers(1);
    });
    let before = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    let options = TaskOptions {
        timeout: Some(Duration::from_millis(500)),
        ..TaskOptions::default()
    };
    let err = wait(pool.submit_with("proc_tasks:spin", (), options).unwrap()).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let exc = err
        .as_python()
        .expect("the TimeoutError raised in the task");
    assert!(exc.traceback.contains("in spin"), "{}", exc.traceback);
    let after = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    assert_eq!(before, after, "the worker process is kept");
}

#[test]
fn a_task_stuck_in_c_in_a_process_is_killed_and_replaced() {
    let pool = new_pool(|c| {
        c.workers(1).grace(Duration::from_millis(300));
    });
    let before = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    let options = TaskOptions {
        timeout: Some(Duration::from_millis(300)),
        ..TaskOptions::default()
    };
    let err = wait(
        pool.submit_with("proc_tasks:stuck_in_c", (), options)
            .unwrap(),
    )
    .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.to_string().contains("killed"), "{err}");
    let after = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    assert_ne!(before, after, "a new worker process");
}

#[test]
fn an_aborting_process_fails_only_its_task() {
    let pool = new_pool(|c| {
        c.workers(1);
    });
    let err = wait(pool.submit("proc_tasks:abort", ()).unwrap()).unwrap_err();
    assert!(matches!(err, Error::WorkerDied(_)), "{err:?}");
    assert!(err.to_string().contains("SIGABRT"), "{err}");
    // The pool goes on, in processes and in interpreters.
    assert_eq!(
        wait(pool.submit("proc_tasks:echo", (5,)).unwrap()).unwrap(),
        Value::Int(5)
    );
    assert_eq!(
        int(wait(pool.submit("pure_tasks:pid", ()).unwrap()).unwrap()),
        i64::from(std::process::id())
    );
}

#[test]
fn a_killed_process_fails_only_its_task() {
    let pool = new_pool(|c| {
        c.workers(1);
    });
    let pid = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    let task = pool.submit("proc_tasks:spin", ()).unwrap();
    while !task.is_started() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let err = wait(task).unwrap_err();
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    assert_eq!(
        wait(pool.submit("proc_tasks:echo", (1,)).unwrap()).unwrap(),
        Value::Int(1)
    );
}

#[test]
fn a_running_task_in_a_process_can_be_cancelled() {
    let pool = new_pool(|c| {
        c.workers(1);
    });
    let pid = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    let task = pool.submit("proc_tasks:spin", ()).unwrap();
    while !task.is_started() {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(task.cancel());
    assert!(matches!(wait(task), Err(Error::Cancelled)));
    // The worker process stopped the task and is kept.
    assert_eq!(
        int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap()),
        pid
    );
}

#[test]
fn recycling_replaces_worker_processes() {
    let pool = new_pool(|c| {
        c.workers(1).max_tasks_per_worker(2);
    });
    let pids: Vec<i64> = (0..4)
        .map(|_| int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap()))
        .collect();
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
    assert_eq!(pids[2], pids[3]);
}

#[test]
fn init_code_runs_in_worker_processes() {
    let pool = new_pool(|c| {
        c.init("MARK = 'set by init'");
    });
    let got = wait(pool.submit("proc_tasks:main_mark", ()).unwrap()).unwrap();
    assert_eq!(got, Value::from("set by init"));
}

#[test]
fn init_code_an_interpreter_refuses_sends_every_task_to_processes() {
    if venv().is_none() {
        return;
    }
    let pool = new_pool(|c| {
        c.init("import numpy\nSCALE = int(numpy.int64(3))");
    });
    let got = wait(pool.submit("np_tasks:total", (4,)).unwrap()).unwrap();
    assert_eq!(got, Value::Float(6.0));
    let pid = int(wait(pool.submit("pure_tasks:pid", ()).unwrap()).unwrap());
    assert_ne!(pid, i64::from(std::process::id()));
    assert_eq!(
        wait(pool.submit("__main__:SCALE.__int__", ()).unwrap()).unwrap(),
        Value::Int(3)
    );
    // With the fallback off, the refusal is the pool's set-up error.
    let mut config = PoolConfig::new();
    config
        .workers(1)
        .init("import numpy")
        .process_fallback(false);
    let err = Pool::new(&runtime(), &config).unwrap_err();
    assert!(
        err.as_python().is_some_and(|e| e.is("ImportError")),
        "{err:?}"
    );
}

#[test]
fn shutdown_ends_worker_processes() {
    let pool = new_pool(|_| {});
    assert_eq!(
        wait(pool.submit("proc_tasks:echo", (1,)).unwrap()).unwrap(),
        Value::Int(1)
    );
    let started = std::time::Instant::now();
    pool.shutdown(WAIT);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn the_worker_writes_the_wire_format_byte_for_byte_as_the_rust_writer() {
    let pool = new_pool(|_| {});
    let big = num_bigint::BigInt::from(-3i8).pow(77);
    // No dict with str keys: the Rust writer records those in the memo, this one does not.
    let values = vec![
        Value::None,
        Value::Bool(true),
        Value::Int(-64),
        Value::Int(i64::MAX),
        Value::BigInt(big),
        Value::Float(-0.0),
        Value::from("ünïcode"),
        Value::Bytes(vec![1, 2, 3]),
        Value::List(vec![Value::Tuple(vec![Value::Int(1), Value::None])]),
        Value::Dict(vec![(Value::Int(1), Value::List(vec![]))]),
    ];
    for value in values {
        let written = wait(pool.submit("proc_tasks:wire_of", (value.clone(),)).unwrap()).unwrap();
        assert_eq!(
            written,
            Value::Bytes(subinterp::value::wire::encode(&value).unwrap()),
            "{value:?}"
        );
    }
}

#[test]
fn tasks_in_processes_read_an_empty_stdin_and_print_to_stderr() {
    let pool = new_pool(|_| {});
    assert_eq!(
        wait(pool.submit("proc_tasks:read_stdin", ()).unwrap()).unwrap(),
        Value::from("")
    );
    assert_eq!(
        wait(pool.submit("proc_tasks:printing", ()).unwrap()).unwrap(),
        Value::Int(1)
    );
    // The pipe was not disturbed.
    assert_eq!(
        wait(pool.submit("proc_tasks:echo", (2,)).unwrap()).unwrap(),
        Value::Int(2)
    );
}

/// What the library logs at `warn` and above, in this test process.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_refusal_is_said_once_naming_the_refused_module() {
    if venv().is_none() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let pool = new_pool(|_| {});
    for n in 0..5 {
        wait(pool.submit("np_once:total", (n,)).unwrap()).unwrap();
    }
    let log = String::from_utf8(LOG.lock().unwrap().clone()).unwrap();
    let said: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("tasks of module np_once run in worker processes"))
        .collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(
        said[0].contains("refused extension module numpy._core._multiarray_umath"),
        "{}",
        said[0]
    );
    assert!(
        said[0].contains("does not support loading in subinterpreters"),
        "{}",
        said[0]
    );
}

#[test]
fn a_worker_process_past_the_memory_limit_is_killed_and_its_task_gets_memory_error() {
    let pool = new_pool(|c| {
        let mut interpreter = subinterp::InterpreterConfig::isolated();
        interpreter.memory_limit(200 << 20);
        c.workers(1).interpreter(interpreter);
    });
    let before = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    let err = wait(pool.submit("proc_tasks:grab", (400,)).unwrap()).unwrap_err();
    let exc = err.as_python().unwrap_or_else(|| panic!("{err:?}"));
    assert!(exc.is("MemoryError"), "{exc:?}");
    assert!(
        exc.message.contains("memory limit of 200 MiB"),
        "{}",
        exc.message
    );
    // Replaced: a new process runs the next task, well under the limit.
    let after = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    assert_ne!(before, after);
    assert_eq!(pool.stats().tasks_over_memory_limit, 1);
    pool.shutdown(WAIT);
}

#[test]
fn a_cpu_budget_stops_a_loop_in_a_worker_process() {
    let pool = new_pool(|c| {
        c.workers(1).cpu_budget(Duration::from_millis(300));
    });
    let before = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    let err = wait(pool.submit("proc_tasks:spin", ()).unwrap()).unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.to_string().contains("CPU budget of 0.300 s"), "{err}");
    // Interrupted as at a deadline: the process is kept.
    let after = int(wait(pool.submit("proc_tasks:pid", ()).unwrap()).unwrap());
    assert_eq!(before, after);
    pool.shutdown(WAIT);
}

#[test]
fn host_only_modules_in_a_process_task_fail_naming_the_reason() {
    // `proc_tasks` runs in processes from the start; `np_tasks` because numpy is refused.
    let pool = new_pool(|_| {});
    let here = wait(pool.submit("pure_tasks:use_host_module", ()).unwrap()).unwrap();
    assert_eq!(here, Value::Int(4), "a host module works in an interpreter");
    for (target, module) in [
        ("proc_tasks:use_channel", "subinterp"),
        ("proc_tasks:use_host_module", "proc_host"),
    ] {
        let err = wait(pool.submit(target, ()).unwrap()).unwrap_err();
        let Error::Python(exc) = &err else {
            panic!("{target}: {err:?}")
        };
        assert!(exc.is("ImportError"), "{target}: {err}");
        assert!(
            exc.message
                .contains(&format!("module '{module}' lives in the host process")),
            "{target}: {}",
            exc.message
        );
        assert!(
            exc.message
                .contains("this task runs in a worker process because the pool sends proc_tasks"),
            "{target}: {}",
            exc.message
        );
    }
    if venv().is_some() {
        let err = wait(pool.submit("np_tasks:use_channel", ()).unwrap()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("module 'subinterp' lives in the host process"),
            "{message}"
        );
        assert!(
            message.contains(
                "this task runs in a worker process because an isolated interpreter refused \
                 numpy._core._multiarray_umath"
            ),
            "{message}"
        );
    }
    pool.shutdown(WAIT);
}
