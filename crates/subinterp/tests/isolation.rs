//! The isolation rules of subinterpreters (seed 001, sections 48.6–48.9, 48.31, 48.43;
//! seeds 000/002 for extension modules), each shown on real interpreters.

mod common;

use std::path::PathBuf;

use subinterp::{Error, Value};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("subinterp-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn each_interpreter_has_its_own_sys_modules_and_module_globals() {
    let dir = temp_dir("modules");
    std::fs::write(dir.join("counter_mod.py"), "count = 0\n").unwrap();
    let a = common::isolated();
    let b = common::isolated();
    for interp in [&a, &b] {
        interp.add_path(&dir).unwrap();
    }
    a.exec(
        "import counter_mod, sys\ncounter_mod.count += 5\nsys.modules['only_in_a'] = counter_mod",
    )
    .unwrap();
    assert_eq!(a.eval("counter_mod.count").unwrap(), Value::Int(5));
    assert_eq!(
        b.eval("'counter_mod' in __import__('sys').modules")
            .unwrap(),
        Value::Bool(false),
        "a module imported in A is not in B's sys.modules"
    );
    b.exec("import counter_mod").unwrap();
    assert_eq!(b.eval("counter_mod.count").unwrap(), Value::Int(0));
    assert_eq!(
        b.eval("'only_in_a' in __import__('sys').modules").unwrap(),
        Value::Bool(false)
    );
    // __main__ globals too.
    a.exec("shared_name = 'a'").unwrap();
    assert_eq!(
        b.eval("'shared_name' in globals()").unwrap(),
        Value::Bool(false)
    );
}

#[test]
fn each_interpreter_has_its_own_builtins() {
    let a = common::isolated();
    let b = common::isolated();
    a.exec("import builtins\nbuiltins.injected = 42\nbuiltins.len = lambda x: -1")
        .unwrap();
    assert_eq!(a.eval("injected").unwrap(), Value::Int(42));
    assert_eq!(a.eval("len([1, 2])").unwrap(), Value::Int(-1));
    let err = b.eval("injected").unwrap_err();
    assert!(err.as_python().unwrap().is("NameError"), "{err}");
    assert_eq!(b.eval("len([1, 2])").unwrap(), Value::Int(2));
}

#[test]
fn each_interpreter_has_its_own_sys_path() {
    let a = common::isolated();
    let b = common::isolated();
    a.add_path("/only/in/a").unwrap();
    assert_eq!(
        a.eval("__import__('sys').path[0]").unwrap(),
        Value::from("/only/in/a")
    );
    assert_eq!(
        b.eval("'/only/in/a' in __import__('sys').path").unwrap(),
        Value::Bool(false)
    );
}

#[test]
fn each_interpreter_has_its_own_sys_state() {
    let a = common::isolated();
    let b = common::isolated();
    a.exec("import sys\nsys.argv = ['a-script']\nsys.setrecursionlimit(321)")
        .unwrap();
    assert_eq!(
        b.eval("__import__('sys').argv").unwrap(),
        Value::List(vec![Value::from("")])
    );
    assert_ne!(
        b.eval("__import__('sys').getrecursionlimit()").unwrap(),
        Value::Int(321)
    );
    assert_ne!(a.id(), b.id());
    assert_eq!(
        a.eval("__import__('sys').modules['sys'] is sys").unwrap(),
        Value::Bool(true)
    );
}

#[test]
fn process_state_is_shared_cwd_and_environment() {
    let dir = temp_dir("cwd");
    let a = common::isolated();
    let b = common::isolated();
    let before = b.eval("__import__('os').getcwd()").unwrap();
    a.set_argv(&["unused"]).unwrap();
    a.exec(&format!(
        "import os\nos.chdir({:?})",
        dir.display().to_string()
    ))
    .unwrap();
    let seen_by_b = b.eval("__import__('os').getcwd()").unwrap();
    // Restore at once: the current directory belongs to the whole test process.
    a.exec(&format!("os.chdir({before})")).unwrap();
    assert_eq!(
        seen_by_b,
        Value::from(std::fs::canonicalize(&dir).unwrap().display().to_string()),
        "os.chdir in one interpreter moves every interpreter"
    );

    // os.environ writes go to the process environment (putenv); an interpreter created
    // afterwards, and the host itself, see them.
    a.exec("os.environ['SUBINTERP_SHARED_ENV'] = 'from-a'")
        .unwrap();
    assert_eq!(
        std::env::var("SUBINTERP_SHARED_ENV").as_deref(),
        Ok("from-a")
    );
    let c = common::isolated();
    assert_eq!(
        c.eval("__import__('os').environ.get('SUBINTERP_SHARED_ENV')")
            .unwrap(),
        Value::from("from-a")
    );
}

fn import_error(err: &Error) -> String {
    let exc = err.as_python().expect("a Python exception");
    assert!(exc.is("ImportError"), "expected ImportError, got {exc}");
    exc.message.clone()
}

#[test]
fn single_phase_extensions_are_refused_when_isolated_and_load_when_legacy() {
    for module in ["readline", "_curses"] {
        let isolated = common::isolated();
        let err = isolated.exec(&format!("import {module}")).unwrap_err();
        let message = import_error(&err);
        assert!(
            message.contains("does not support loading in subinterpreters"),
            "{module}: {message}"
        );
        assert!(
            err.as_python().unwrap().traceback.contains("ImportError"),
            "the traceback is kept"
        );
        // The interpreter keeps working after the refusal.
        assert_eq!(isolated.eval("6 * 7").unwrap(), Value::Int(42));

        let legacy = common::legacy();
        legacy.exec(&format!("import {module}")).unwrap();
        assert_eq!(
            legacy
                .eval(&format!("__import__('sys').modules['{module}'].__name__"))
                .unwrap(),
            Value::from(module)
        );
    }
}

#[test]
fn multi_phase_extensions_get_a_module_object_per_interpreter() {
    let a = common::isolated();
    let b = common::isolated();
    for interp in [&a, &b] {
        interp
            .exec("import _json, array\nmarker = id(array.array)")
            .unwrap();
    }
    a.exec("array.tag = 'a'").unwrap();
    assert_eq!(b.eval("hasattr(array, 'tag')").unwrap(), Value::Bool(false));
}

#[test]
fn legacy_interpreters_share_single_phase_module_dict_objects() {
    // Seeds 000/002: a single-phase module (with m_size == -1, such as `_curses`) is
    // initialised once; later imports get a shallow copy of its module dict, so the
    // objects in it are the very same objects in every legacy interpreter. Python's `id()`
    // is the object's address, which makes that visible. (`readline` keeps per-module
    // state, so CPython initialises it again for each interpreter and shares nothing.)
    let a = common::legacy();
    let b = common::legacy();
    a.exec("import _curses").unwrap();
    b.exec("import _curses").unwrap();
    for name in ["_curses.error", "_curses.beep"] {
        let in_a = a.eval(&format!("id({name})")).unwrap();
        let in_b = b.eval(&format!("id({name})")).unwrap();
        assert_eq!(
            in_a, in_b,
            "{name} is one object shared by both interpreters"
        );
    }
    // ...while the module objects themselves differ.
    assert_ne!(
        a.eval("id(_curses)").unwrap(),
        b.eval("id(_curses)").unwrap()
    );
}

#[test]
fn fork_is_refused_in_every_interpreter_and_subprocess_works() {
    for interp in [common::isolated(), common::legacy()] {
        for fork in ["os.fork()", "os.forkpty()"] {
            let err = interp.exec(&format!("import os\n{fork}")).unwrap_err();
            let exc = err.as_python().unwrap();
            assert_eq!(exc.type_name, "builtins.RuntimeError", "{fork}");
            assert!(
                exc.message.contains("fork not supported"),
                "{}",
                exc.message
            );
        }
        let out = interp
            .eval(
                "__import__('subprocess').run(['sh', '-c', 'echo child $((6 * 7))'], \
                 capture_output=True, check=True).stdout",
            )
            .unwrap();
        assert_eq!(out, Value::Bytes(b"child 42\n".to_vec()));
    }
}
