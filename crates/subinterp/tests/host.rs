//! Host modules: native Rust functions that Python code in every interpreter imports.

use std::sync::{Arc, Mutex, OnceLock};

use subinterp::{
    Args, Caller, Error, ExternalResult, HostModule, Interpreter, InterpreterConfig, Kwargs,
    Runtime, RuntimeConfig, Value,
};

/// Arguments of `game.place`, bound by name.
#[derive(serde::Deserialize)]
struct Place {
    kind: String,
    x: f64,
    #[serde(default)]
    hidden: bool,
}

/// Per-tenant data attached to interpreters.
struct Tenant {
    name: String,
}

/// An interpreter the `reenter` function calls back into.
static REENTRY: Mutex<Option<Arc<Interpreter>>> = Mutex::new(None);

fn game() -> HostModule {
    HostModule::new("game")
        .doc("A game's scripting interface.")
        .function(
            "add",
            ["a", "b"],
            |_: &Caller, (a, b): (i64, i64)| Ok(a + b),
        )
        .function(
            "spawn",
            ["kind", "x", "y"],
            |_: &Caller, (kind, x, y): (String, f64, Option<f64>)| {
                if kind == "dragon" {
                    return Err(Error::python("game.NotFound", format!("no {kind} here")));
                }
                Ok(format!("{kind} at {x},{}", y.unwrap_or(0.0)))
            },
        )
        .function(
            "lookup",
            ["key"],
            |_: &Caller, (key,): (String,)| -> subinterp::Result<i64> {
                Err(Error::python("KeyError", key))
            },
        )
        .function(
            "read_config",
            ["path"],
            |_: &Caller, (path,): (String,)| -> subinterp::Result<String> {
                // The host's own error types pass through `?`.
                let text = std::fs::read_to_string(&path).into_error()?;
                let number: i64 = text.trim().parse().into_error()?;
                Ok(format!("{path} holds {number}"))
            },
        )
        .function(
            "explode",
            [],
            |_: &Caller, (): ()| -> subinterp::Result<()> { panic!("the host function blew up") },
        )
        .function(
            "apply",
            ["target"],
            |caller: &Caller, (target,): (String,)| caller.call(&target, ()),
        )
        .function("tenant", [], |caller: &Caller, (): ()| {
            Ok(caller.data::<Tenant>().map(|t| t.name.clone()))
        })
        .function("interpreter", [], |caller: &Caller, (): ()| {
            Ok(caller.interpreter_id())
        })
        .function("raw", ["anything"], |_: &Caller, args: Args| {
            Ok(Value::Tuple(vec![
                Value::Int(args.positional.len() as i64),
                Value::List(
                    args.keywords
                        .into_iter()
                        .map(|(k, _)| Value::from(k))
                        .collect(),
                ),
            ]))
        })
        .function("reenter", [], |_: &Caller, (): ()| {
            let interp = REENTRY.lock().unwrap().clone().expect("set by the test");
            Ok(match interp.eval("1") {
                Err(Error::WouldDeadlock) => "WouldDeadlock".to_owned(),
                other => format!("{other:?}"),
            })
        })
        .function(
            "place",
            ["kind", "x", "hidden"],
            |_: &Caller, Kwargs(place): Kwargs<Place>| {
                Ok(format!(
                    "{} at {}{}",
                    place.kind,
                    place.x,
                    if place.hidden { ", hidden" } else { "" }
                ))
            },
        )
        .function(
            "unknown_class",
            [],
            |_: &Caller, (): ()| -> subinterp::Result<()> {
                Err(Error::python("nosuch.Missing", "not loaded here"))
            },
        )
        .function("elsewhere", ["code"], |_: &Caller, (code,): (String,)| {
            // An exception of another interpreter arrives as a snapshot: it is rebuilt.
            let other = OTHER.lock().unwrap().clone().expect("set by the test");
            other.exec(&code).map(|()| Value::None)
        })
        .function("poll", ["name"], |_: &Caller, (name,): (String,)| {
            subinterp::Channel::named(&name).try_recv()?.into_value()
        })
        .function("same", ["x"], |_: &Caller, (x,): (Value,)| Ok(x))
        .function("widest", [], |_: &Caller, (): ()| Ok(u64::MAX))
        .function("half", [], |_: &Caller, (): ()| Ok(0.5f32))
        .function("maybe", ["x"], |_: &Caller, (x,): (Option<i64>,)| Ok(x))
        .function("flag", ["x"], |_: &Caller, (x,): (bool,)| Ok(!x))
        .exception("NotFound", "LookupError")
        .constant("VERSION", "1.2")
}

/// Another interpreter, for `elsewhere`.
static OTHER: Mutex<Option<Arc<Interpreter>>> = Mutex::new(None);

fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let mut config = RuntimeConfig::new();
        config
            .host_module(game())
            .host_module(waiting())
            .host_module(shadowing());
        Runtime::init(&config).expect("start Python with the host module")
    })
    .clone()
}

fn isolated() -> Interpreter {
    Interpreter::new(&runtime(), &InterpreterConfig::isolated()).expect("create interpreter")
}

fn py_err(err: &Error) -> &subinterp::PyException {
    err.as_python()
        .unwrap_or_else(|| panic!("expected a Python exception, got {err:?}"))
}

#[test]
fn eight_isolated_interpreters_call_the_host_at_once_each_with_its_own_module() {
    let rt = runtime();
    let threads: Vec<_> = (0..8i64)
        .map(|n| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                let interp = Interpreter::new(&rt, &InterpreterConfig::isolated()).unwrap();
                interp
                    .exec(&format!(
                        "import game\n\
                         assert not hasattr(game, 'marker'), 'a module object of another interpreter'\n\
                         game.marker = {n}\n\
                         total = 0\n\
                         for i in range(2000):\n    total = game.add(total, i + {n})\n"
                    ))
                    .unwrap();
                let total = interp.eval("total").unwrap();
                let marker = interp.eval("game.marker").unwrap();
                (n, total, marker, interp.eval("game.interpreter()").unwrap(), interp.id())
            })
        })
        .collect();
    for thread in threads {
        let (n, total, marker, seen_id, id) = thread.join().unwrap();
        assert_eq!(total, Value::Int((0..2000).map(|i| i + n).sum::<i64>()));
        assert_eq!(marker, Value::Int(n));
        assert_eq!(
            seen_id,
            Value::Int(id),
            "the caller is the calling interpreter"
        );
    }
}

#[test]
fn typed_positional_and_keyword_arguments() {
    let interp = isolated();
    interp.exec("import game").unwrap();
    assert_eq!(
        interp.eval("game.spawn('elf', 1.5, y=2)").unwrap(),
        Value::from("elf at 1.5,2")
    );
    assert_eq!(
        interp.eval("game.spawn(x=3, kind='orc')").unwrap(),
        Value::from("orc at 3,0")
    );
    assert_eq!(interp.eval("game.VERSION").unwrap(), Value::from("1.2"));
    assert_eq!(
        interp.eval("game.raw(1, 2, three=3)").unwrap(),
        Value::Tuple(vec![Value::Int(2), Value::List(vec![Value::from("three")])])
    );
    assert_eq!(
        interp.eval("game.add.__text_signature__").unwrap(),
        Value::from("(a, b)")
    );
    // Bound by name into a struct.
    assert_eq!(
        interp.eval("game.place('elf', 2)").unwrap(),
        Value::from("elf at 2")
    );
    assert_eq!(
        interp
            .eval("game.place(x=1.5, kind='orc', hidden=True)")
            .unwrap(),
        Value::from("orc at 1.5, hidden")
    );
    for (call, needle) in [
        ("game.place('elf', x='far')", "field `x`"),
        ("game.place(x=1)", "missing field `kind`"),
        (
            "game.place('elf', 1, False, 4)",
            "takes 3 positional arguments but 4 were given",
        ),
    ] {
        let err = interp.eval(call).unwrap_err();
        let exc = py_err(&err);
        assert_eq!(exc.type_name, "builtins.TypeError", "{call}: {exc}");
        assert!(exc.message.contains(needle), "{call}: {}", exc.message);
    }
}

#[test]
fn results_of_every_kind_come_back_with_their_python_type() {
    let interp = isolated();
    interp
        .exec(
            r#"
import game
for v in [None, True, False, 0, -5, 2**63 - 1, -2**63, 2**63, 2**70, -2**70, 1.5,
          float('inf'), '', 'é', b'x', [1, 'a'], {'k': [2]}]:
    r = game.same(v)
    assert r == v and type(r) is type(v), (v, r)
assert game.widest() == 2**64 - 1 and type(game.widest()) is int
assert game.half() == 0.5 and type(game.half()) is float
assert game.maybe(3) == 3 and game.maybe(None) is None and game.maybe() is None
assert game.flag(False) is True and game.flag(x=True) is False
assert game.explode.__name__ == 'explode'
"#,
        )
        .unwrap();
}

#[test]
fn wrong_arity_and_wrong_types_are_type_errors_naming_the_parameter() {
    let interp = isolated();
    interp.exec("import game").unwrap();
    for (call, needle) in [
        ("game.add(1)", "missing required argument 'b'"),
        (
            "game.add(1, 2, 3)",
            "takes 2 positional arguments but 3 were given",
        ),
        ("game.add(1, c=2)", "unexpected keyword argument 'c'"),
        ("game.add(1, a=2)", "multiple values for argument 'a'"),
        ("game.add(1, 'two')", "argument 'b'"),
        ("game.spawn('elf', x='far')", "argument 'x'"),
        ("game.add(1, object())", "argument 'b' must be plain data"),
        // A `String` parameter takes a `str` only, as Python keeps bytes apart.
        (
            "game.spawn(b'orc', 1.0)",
            "argument 'kind': bytes is not accepted",
        ),
        ("game.lookup(key=bytearray(b'k'))", "argument 'key'"),
    ] {
        let err = interp.eval(call).unwrap_err();
        let exc = py_err(&err);
        assert_eq!(exc.type_name, "builtins.TypeError", "{call}: {exc}");
        assert!(exc.message.contains(needle), "{call}: {}", exc.message);
    }
}

#[test]
fn host_errors_raise_the_exception_class_the_host_chose() {
    let interp = isolated();
    interp
        .exec(
            "import game\n\
             try:\n    game.spawn('dragon', 0)\n\
             except game.NotFound as e:\n    caught = str(e)\n\
             try:\n    game.lookup('gold')\n\
             except KeyError as e:\n    key = e.args[0]\n",
        )
        .unwrap();
    assert_eq!(
        interp.eval("caught").unwrap(),
        Value::from("no dragon here")
    );
    assert_eq!(interp.eval("key").unwrap(), Value::from("gold"));
    assert_eq!(
        interp
            .eval("issubclass(game.NotFound, LookupError)")
            .unwrap(),
        Value::Bool(true)
    );
    let err = interp.eval("game.spawn('dragon', 0)").unwrap_err();
    assert_eq!(py_err(&err).type_name, "game.NotFound");
}

#[test]
fn host_functions_return_their_own_errors_with_the_question_mark() {
    let dir = std::env::temp_dir().join(format!("subinterp-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.txt");
    let bad = dir.join("bad.txt");
    std::fs::write(&good, "42\n").unwrap();
    std::fs::write(&bad, "forty-two\n").unwrap();
    let interp = isolated();
    interp.exec("import game").unwrap();
    let call = |path: &std::path::Path| interp.call("game:read_config", (path.to_str().unwrap(),));
    assert_eq!(
        call(&good).unwrap(),
        Value::from(format!("{} holds 42", good.display()))
    );
    // std::num::ParseIntError and std::io::Error arrive as RuntimeError with their message.
    let err = call(&bad).unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.RuntimeError");
    assert_eq!(py_err(&err).message, "invalid digit found in string");
    let err = call(&dir.join("missing.txt")).unwrap_err();
    assert_eq!(py_err(&err).type_name, "builtins.RuntimeError");
    assert!(
        py_err(&err).message.contains("No such file or directory"),
        "{err:?}"
    );
    // Python code catches it as a RuntimeError.
    interp
        .exec(&format!(
            "try:\n    game.read_config({:?})\nexcept RuntimeError as e:\n    caught = str(e)\n",
            bad.display()
        ))
        .unwrap();
    assert_eq!(
        interp.eval("caught").unwrap(),
        Value::from("invalid digit found in string")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn exceptions_known_only_as_snapshots_are_rebuilt_with_their_class_and_cause() {
    let interp = isolated();
    *OTHER.lock().unwrap() = Some(Arc::new(isolated()));
    interp
        .exec(
            "import game\n\
             try:\n    game.elsewhere(\"raise ValueError('bad') from KeyError('k')\")\n\
             except ValueError as e:\n    caught = (str(e), type(e.__cause__).__name__)\n",
        )
        .unwrap();
    assert_eq!(
        interp.eval("caught").unwrap(),
        Value::Tuple(vec![Value::from("bad"), Value::from("KeyError")])
    );
    // A class this interpreter does not have is a RuntimeError naming it.
    let err = interp.eval("game.unknown_class()").unwrap_err();
    let exc = py_err(&err);
    assert_eq!(exc.type_name, "builtins.RuntimeError");
    assert_eq!(exc.message, "nosuch.Missing: not loaded here");
    *OTHER.lock().unwrap() = None;
}

#[test]
fn channel_errors_of_host_functions_are_the_subinterp_module_exceptions() {
    let interp = isolated();
    let name = format!("host-poll-{}", std::process::id());
    interp
        .exec(&format!(
            "import game, subinterp\n\
             try:\n    game.poll('{name}')\n\
             except subinterp.ChannelEmpty:\n    empty = True\n"
        ))
        .unwrap();
    assert_eq!(interp.eval("empty").unwrap(), Value::Bool(true));
}

#[test]
fn a_panic_in_a_host_function_is_a_python_exception_and_the_interpreter_lives_on() {
    let interp = isolated();
    interp.exec("import game").unwrap();
    let err = interp.eval("game.explode()").unwrap_err();
    let exc = py_err(&err);
    assert_eq!(exc.type_name, "builtins.SystemError");
    assert!(exc.message.contains("the host function blew up"), "{exc}");
    interp
        .exec("try:\n    game.explode()\nexcept SystemError:\n    survived = game.add(2, 3)\n")
        .unwrap();
    assert_eq!(interp.eval("survived").unwrap(), Value::Int(5));
}

#[test]
fn a_python_exception_raised_in_a_callback_keeps_its_type_and_traceback() {
    let interp = isolated();
    interp
        .exec(
            "import game, traceback\n\
             class Refused(Exception):\n    pass\n\
             def callback():\n    raise Refused('no') from ValueError('why')\n\
             def ok():\n    return 7\n\
             try:\n    game.apply('__main__:callback')\n\
             except Refused as e:\n    \
                 caught = (type(e.__cause__).__name__, \
                           [f.name for f in traceback.extract_tb(e.__traceback__)])\n",
        )
        .unwrap();
    let Value::Tuple(caught) = interp.eval("caught").unwrap() else {
        panic!("a tuple")
    };
    assert_eq!(caught[0], Value::from("ValueError"));
    assert_eq!(
        caught[1],
        Value::List(vec![Value::from("<module>"), Value::from("callback")])
    );
    assert_eq!(
        interp.eval("game.apply('__main__:ok')").unwrap(),
        Value::Int(7)
    );
}

#[test]
fn each_interpreter_sees_its_own_host_data() {
    let rt = runtime();
    let make = |name: &str| {
        let mut config = InterpreterConfig::isolated();
        config.host_data(Tenant {
            name: name.to_owned(),
        });
        Interpreter::new(&rt, &config).unwrap()
    };
    let (a, b) = (make("acme"), make("globex"));
    let plain = isolated();
    for (interp, expected) in [
        (&a, Value::from("acme")),
        (&b, Value::from("globex")),
        (&plain, Value::None),
    ] {
        assert_eq!(
            interp.eval("__import__('game').tenant()").unwrap(),
            expected
        );
    }
}

#[test]
fn pool_workers_get_the_host_data_of_their_configuration() {
    use subinterp::{Pool, PoolConfig};
    let mut interp_config = InterpreterConfig::isolated();
    interp_config.host_data(Tenant {
        name: "pooled".to_owned(),
    });
    let mut config = PoolConfig::new();
    config.workers(2).interpreter(interp_config);
    let pool = Pool::new(&runtime(), &config).unwrap();
    let names: Vec<Value> = pool
        .map("game:tenant", (0..4).map(|_| ()))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(names, vec![Value::from("pooled"); 4]);
}

#[test]
fn calling_back_into_the_same_interpreter_is_would_deadlock_another_works() {
    let interp = Arc::new(isolated());
    *REENTRY.lock().unwrap() = Some(Arc::clone(&interp));
    assert_eq!(
        interp.eval("__import__('game').reenter()").unwrap(),
        Value::from("WouldDeadlock")
    );
    // From a thread of the interpreter, too: it could otherwise wait for itself.
    interp
        .exec(
            "import threading, game\n\
             out = []\n\
             t = threading.Thread(target=lambda: out.append(game.reenter()))\n\
             t.start(); t.join()\n",
        )
        .unwrap();
    assert_eq!(
        interp.eval("out").unwrap(),
        Value::List(vec![Value::from("WouldDeadlock")])
    );
    let other = isolated();
    assert_eq!(
        other.eval("__import__('game').reenter()").unwrap(),
        Value::from("Ok(Int(1))")
    );
    *REENTRY.lock().unwrap() = None;
}

#[test]
fn legacy_interpreters_import_host_modules_too() {
    let interp = Interpreter::new(&runtime(), &InterpreterConfig::legacy()).unwrap();
    assert_eq!(
        interp.eval("__import__('game').add(20, 22)").unwrap(),
        Value::Int(42)
    );
}

/// Host functions that block, for the pool tests below.
fn waiting() -> HostModule {
    HostModule::new("waiting")
        .function("forever", [], |caller: &Caller, (): ()| {
            caller.blocking(|interrupt| -> subinterp::Result<()> {
                loop {
                    interrupt.sleep(std::time::Duration::from_secs(3600))?;
                }
            })
        })
        .function("recv", ["name"], |caller: &Caller, (name,): (String,)| {
            let channel = subinterp::Channel::named(&name);
            caller.blocking(|interrupt| interrupt.recv(&channel, None)?.into_value())
        })
}

#[test]
fn a_blocking_host_function_releases_the_gil_and_is_interrupted_at_a_pool_deadline() {
    use std::time::{Duration, Instant};
    use subinterp::{Pool, PoolConfig, TaskOptions};
    let rt = runtime();
    let mut config = PoolConfig::new();
    config.workers(1);
    let pool = Pool::new(&rt, &config).unwrap();
    let start = Instant::now();
    let err = pool
        .submit_with(
            "waiting:forever",
            (),
            TaskOptions {
                timeout: Some(Duration::from_millis(200)),
                ..TaskOptions::default()
            },
        )
        .unwrap()
        .wait()
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(py_err(&err).type_name, "builtins.TimeoutError", "{err}");
    assert!(took < Duration::from_millis(1100), "took {took:?}");
    // The worker was interrupted, not replaced, and works on.
    assert_eq!(
        pool.submit("game:add", (1, 2)).unwrap().wait().unwrap(),
        Value::Int(3)
    );

    // A cancelled task's blocking function returns.
    let task = pool.submit("waiting:recv", ("host-never-sent",)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(task.cancel());
    assert!(matches!(task.wait(), Err(Error::Cancelled)));

    // Other threads of the interpreter run while one waits in the host.
    let interp = isolated();
    let name = format!("host-gil-{}", std::process::id());
    interp
        .exec(&format!(
            "import threading, waiting, subinterp\n\
             got = []\n\
             t = threading.Thread(target=lambda: got.append(waiting.recv('{name}')))\n\
             t.start()\n\
             subinterp.channel('{name}').send('from python')\n\
             t.join(10)\n"
        ))
        .unwrap();
    assert_eq!(
        interp.eval("got").unwrap(),
        Value::List(vec![Value::from("from python")])
    );
}

/// A module that replaces a standard-library module on purpose.
fn shadowing() -> HostModule {
    HostModule::new("colorsys")
        .shadow_stdlib()
        .constant("SHADOWED", true)
}

#[test]
fn a_host_module_replaces_a_standard_module_only_when_it_says_so() {
    let interp = isolated();
    assert_eq!(
        interp
            .eval("__import__('colorsys').SHADOWED")
            .expect("the host module, not the standard one"),
        Value::Bool(true)
    );
}

/// `Runtime::init` with `modules` registered: the error it gives. A runtime runs in this
/// test binary, so a configuration that passes the checks is `AlreadyInitialized`.
fn register(modules: Vec<HostModule>) -> Error {
    let _running = runtime();
    let mut config = RuntimeConfig::new();
    for module in modules {
        config.host_module(module);
    }
    Runtime::init(&config).expect_err("a runtime is already running")
}

#[test]
fn clashing_names_keywords_and_standard_modules_are_refused_at_registration() {
    let one = |x: i64| -> subinterp::Result<i64> { Ok(x) };
    let cases: Vec<(Vec<HostModule>, &str)> = vec![
        (
            vec![HostModule::new("tools"), HostModule::new("tools")],
            "host module \"tools\" is registered twice",
        ),
        (
            vec![HostModule::new("json")],
            "a module of Python's standard library",
        ),
        (
            vec![HostModule::new("_json")],
            "HostModule::shadow_stdlib()",
        ),
        (
            vec![HostModule::new("sys").shadow_stdlib()],
            "built into CPython",
        ),
        (
            vec![HostModule::new("class")],
            "the module name \"class\" is not a Python identifier (or is a keyword)",
        ),
        (
            vec![HostModule::new("tools").function(
                "f",
                ["lambda"],
                move |_: &Caller, (x,): (i64,)| one(x),
            )],
            "the parameter name \"lambda\"",
        ),
        (
            vec![HostModule::new("tools").function(
                "f",
                ["a", "a"],
                |_: &Caller, (a, b): (i64, i64)| Ok(a + b),
            )],
            "function \"f\" names the parameter \"a\" twice",
        ),
        (
            vec![HostModule::new("tools")
                .function("f", ["x"], move |_: &Caller, (x,): (i64,)| one(x))
                .function("f", ["y"], move |_: &Caller, (y,): (i64,)| one(y))],
            "the name \"f\" is used twice in the module (a function, then a function)",
        ),
        (
            vec![HostModule::new("tools")
                .exception("f", "Exception")
                .constant("f", 1)],
            "the name \"f\" is used twice in the module (an exception, then a constant)",
        ),
    ];
    for (modules, needle) in cases {
        let names: Vec<String> = modules.iter().map(|m| m.name().to_owned()).collect();
        match register(modules) {
            Error::InvalidConfig(message) => {
                assert!(message.contains(needle), "{names:?}: {message}")
            }
            other => panic!("{names:?}: expected InvalidConfig, got {other:?}"),
        }
    }
    // Allowed on purpose, or unrelated to the standard library: the checks pass.
    for module in [
        HostModule::new("json").shadow_stdlib(),
        HostModule::new("tools")
            .function("f", ["a", "b"], |_: &Caller, (a, b): (i64, i64)| Ok(a + b)),
    ] {
        assert!(
            matches!(register(vec![module]), Error::AlreadyInitialized),
            "a correct module passes the checks"
        );
    }
}

#[test]
fn every_standard_module_of_the_running_python_is_known_as_one() {
    // The list the checks use is the running Python's `sys.stdlib_module_names`, or more.
    let interp = isolated();
    let names = interp
        .eval("sorted(__import__('sys').stdlib_module_names)")
        .unwrap();
    let Value::List(names) = names else {
        panic!("a list: {names:?}")
    };
    for name in names {
        let Value::Str(name) = name else {
            panic!("a str: {name:?}")
        };
        let module = HostModule::new(name.as_str());
        let refused = match register(vec![module]) {
            Error::InvalidConfig(message) => {
                message.contains("standard library") || message.contains("built into CPython")
            }
            _ => false,
        };
        assert!(refused, "{name} is not refused as a standard module");
    }
}
