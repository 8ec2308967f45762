//! Creating, using and ending interpreters: concurrency, closing, configuration errors.

mod common;

use std::sync::Arc;

use subinterp::{Error, Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

const CPU_BOUND: &str = "def work(n):\n    total = 0\n    for i in range(n):\n        total += i * i\n    return total\n";

#[test]
fn sixteen_interpreters_created_concurrently_from_sixteen_threads() {
    let rt = common::runtime();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let rt = rt.clone();
            std::thread::spawn(move || {
                let interp = Interpreter::new(&rt, &InterpreterConfig::isolated()).unwrap();
                interp.exec(CPU_BOUND).unwrap();
                let got = interp.call("__main__:work", (1000 + i,)).unwrap();
                let n = 1000 + i as i64;
                assert_eq!(got, Value::Int((0..n).map(|k| k * k).sum()));
                let id = interp.id();
                interp.close().unwrap();
                id
            })
        })
        .collect();
    let mut ids: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 16, "every interpreter had its own id");
}

#[test]
fn a_thousand_create_close_cycles() {
    let rt = common::runtime();
    for i in 0..1000 {
        let interp = Interpreter::new(&rt, &InterpreterConfig::isolated()).unwrap();
        if i % 100 == 0 {
            assert_eq!(interp.eval("1 + 1").unwrap(), Value::Int(2));
        }
        interp.close().unwrap();
    }
}

#[test]
fn one_interpreter_shared_by_many_rust_threads() {
    let interp = Arc::new(common::isolated());
    interp.exec("hits = []").unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let interp = Arc::clone(&interp);
            std::thread::spawn(move || {
                for j in 0..50 {
                    interp
                        .exec(&format!("hits.append({})", i * 100 + j))
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(interp.eval("len(hits)").unwrap(), Value::Int(400));
}

#[test]
fn every_operation_on_a_closed_interpreter_is_an_error() {
    let interp = common::capturing();
    interp.close().unwrap();
    assert!(interp.is_closed());
    interp.close().unwrap(); // idempotent
    assert!(matches!(interp.exec("x = 1"), Err(Error::Closed)));
    assert!(matches!(interp.eval("1"), Err(Error::Closed)));
    assert!(matches!(
        interp.call("math:sqrt", (4.0,)),
        Err(Error::Closed)
    ));
    assert!(matches!(interp.exec_file("Cargo.toml"), Err(Error::Closed)));
    assert!(matches!(interp.add_path("/tmp"), Err(Error::Closed)));
    assert!(matches!(interp.set_argv(&["x"]), Err(Error::Closed)));
    assert!(matches!(interp.take_output(), Err(Error::Closed)));
    assert!(matches!(interp.with_gil(|_| 1), Err(Error::Closed)));
    assert_eq!(Error::Closed.to_string(), "the interpreter is closed");
}

#[test]
fn close_runs_atexit_and_waits_for_python_threads() {
    let interp = common::isolated();
    let marker = std::env::temp_dir().join(format!("subinterp-atexit-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    interp
        .exec(&format!(
            "import atexit, threading, time\n\
             results = []\n\
             t = threading.Thread(target=lambda: (time.sleep(0.05), results.append(1)))\n\
             t.start()\n\
             def bye():\n    open({:?}, 'w').write(str(len(results)))\n\
             atexit.register(bye)\n",
            marker.display().to_string()
        ))
        .unwrap();
    interp.close().unwrap();
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "1",
        "the thread finished before atexit ran"
    );
}

#[test]
fn invalid_configurations_are_refused_before_reaching_cpython() {
    let rt = common::runtime();
    let mut config = InterpreterConfig::isolated();
    config.use_main_obmalloc(true);
    let err = Interpreter::new(&rt, &config).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    assert!(err.to_string().contains("own GIL"), "{err}");
}

#[test]
fn isolated_interpreters_refuse_fork_exec_and_daemon_threads() {
    let interp = common::isolated();
    for (code, what) in [
        ("import os; os.fork()", "fork"),
        (
            "import threading; threading.Thread(target=print, daemon=True).start()",
            "daemon",
        ),
    ] {
        let err = interp.exec(code).unwrap_err();
        let exc = err.as_python().expect("a Python exception");
        assert!(exc.is("RuntimeError"), "{what}: {exc}");
    }
    let legacy = common::legacy();
    legacy
        .exec("import threading; threading.Thread(target=lambda: None, daemon=True).start()")
        .unwrap();
}

#[test]
fn the_runtime_cannot_be_initialised_twice() {
    let _rt = common::runtime();
    let err = Runtime::init(&RuntimeConfig::new()).unwrap_err();
    assert!(matches!(err, Error::AlreadyInitialized), "{err}");
    assert!(Runtime::current().is_some());
    assert!(common::runtime().python_version().starts_with("3.1"));
}

#[test]
fn output_is_captured_per_interpreter() {
    let a = common::capturing();
    let b = common::capturing();
    a.exec("print('from a'); import sys; print('warn a', file=sys.stderr)")
        .unwrap();
    b.exec("print('from b', 'héllo ✓')").unwrap();
    let out_a = a.take_output().unwrap();
    assert_eq!(out_a.stdout, "from a\n");
    assert_eq!(out_a.stderr, "warn a\n");
    assert_eq!(b.take_output().unwrap().stdout, "from b héllo ✓\n");
    // Taking empties the buffers.
    assert_eq!(a.take_output().unwrap().stdout, "");
    a.exec("print('again')").unwrap();
    assert_eq!(a.take_output().unwrap().stdout, "again\n");

    let plain = common::isolated();
    assert!(matches!(plain.take_output(), Err(Error::InvalidConfig(_))));
}

#[test]
fn exec_file_sets_dunder_file_and_reports_missing_files() {
    let dir = std::env::temp_dir().join(format!("subinterp-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("script.py");
    std::fs::write(&script, "where = __file__\nname = __name__\n").unwrap();
    let interp = common::isolated();
    interp.exec_file(&script).unwrap();
    assert_eq!(
        interp.eval("where").unwrap(),
        Value::from(script.display().to_string())
    );
    assert_eq!(interp.eval("name").unwrap(), Value::from("__main__"));

    let err = interp.exec_file(dir.join("missing.py")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(err.to_string().contains("missing.py"), "{err}");
}

#[test]
fn with_gil_gives_low_level_access_and_survives_panics() {
    let interp = common::isolated();
    let got = interp
        .with_gil(|py| {
            let math = py.import("math").unwrap();
            let pi = math.getattr("pi").unwrap();
            let text = pi.repr().unwrap();
            (py.interpreter_id(), text, pi.to_value().unwrap())
        })
        .unwrap();
    assert_eq!(got.0, interp.id());
    assert!(got.1.starts_with("3.14159"));
    assert_eq!(got.2, Value::Float(std::f64::consts::PI));

    let err = interp
        .with_gil(|_py| -> i32 { panic!("boom in a closure") })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Panic(m) if m.contains("boom")),
        "{err}"
    );
    assert_eq!(interp.eval("2 + 2").unwrap(), Value::Int(4));
}

#[test]
fn calling_an_interpreter_from_its_own_thread_is_an_error_not_a_deadlock() {
    let interp = Arc::new(common::isolated());
    let inner = Arc::clone(&interp);
    let nested = interp.with_gil(move |_py| inner.eval("1")).unwrap();
    assert!(matches!(nested, Err(Error::WouldDeadlock)));
}

#[test]
fn interpreters_run_in_parallel_with_their_own_gil() {
    // Not a timing assertion: A spins in pure Python, never releasing its GIL (no system
    // call, a switch interval of 1000 s), until B has run Python. Under one shared GIL B
    // could not run until A gives up, and A would report that it gave up.
    let a = Arc::new(common::isolated());
    let b = common::isolated();
    a.exec(
        "import mmap, sys, time\n\
         def spin_until_set(path):\n    \
             with open(path, 'r+b') as f:\n        \
                 m = mmap.mmap(f.fileno(), 2)\n    \
             sys.setswitchinterval(1000)\n    \
             m[1] = 1\n    \
             deadline = time.monotonic() + 20\n    \
             while m[0] == 0:\n        \
                 if time.monotonic() > deadline:\n            \
                     return False\n    \
             return True\n",
    )
    .unwrap();
    let flag = std::env::temp_dir().join(format!("subinterp-parallel-{}", std::process::id()));
    std::fs::write(&flag, [0u8, 0]).unwrap();
    let flag_text = flag.display().to_string();
    let spinner = {
        let a = Arc::clone(&a);
        let flag_text = flag_text.clone();
        std::thread::spawn(move || a.call("__main__:spin_until_set", (flag_text,)).unwrap())
    };
    // Wait until A spins, holding its GIL (it sets the second byte just before).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read(&flag).unwrap()[1] == 0 {
        assert!(
            std::time::Instant::now() < until,
            "A never started spinning"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // B runs Python and sets the first byte while A still spins.
    b.exec(&format!(
        "with open({flag_text:?}, 'r+b') as f:\n    f.write(b'\\x01')"
    ))
    .unwrap();
    let ran_in_parallel = spinner.join().unwrap();
    let _ = std::fs::remove_file(&flag);
    assert_eq!(
        ran_in_parallel,
        Value::Bool(true),
        "B ran only after A gave up"
    );
}

#[test]
fn close_and_take_output_includes_threads_and_atexit() {
    let interp = common::capturing();
    interp
        .exec(
            "import atexit, threading, time\n\
             print('main')\n\
             threading.Thread(target=lambda: (time.sleep(0.05), print('thread'))).start()\n\
             atexit.register(print, 'atexit')\n",
        )
        .unwrap();
    let output = interp.close_and_take_output().unwrap();
    assert_eq!(output.stdout, "main\nthread\natexit\n");
    assert!(interp.is_closed());
    assert!(matches!(interp.close_and_take_output(), Err(Error::Closed)));
}

#[test]
fn text_is_utf8_whatever_the_host_locale() {
    let interp = common::isolated();
    assert_eq!(
        interp
            .eval("(__import__('sys').flags.utf8_mode, __import__('sys').getfilesystemencoding(), __import__('locale').getpreferredencoding(False))")
            .unwrap(),
        Value::Tuple(vec![Value::Int(1), Value::from("utf-8"), Value::from("utf-8")])
    );
}

#[test]
fn exec_file_decodes_source_as_python_does() {
    let dir = common::scratch_dir("coding");
    let latin1 = dir.join("latin1.py");
    let mut source = b"# -*- coding: latin-1 -*-\ntext = '".to_vec();
    source.extend_from_slice(&[0xe9, 0xe8]); // 'éè' in latin-1
    source.extend_from_slice(b"'\n");
    std::fs::write(&latin1, &source).unwrap();
    let interp = common::isolated();
    interp.exec_file(&latin1).unwrap();
    assert_eq!(interp.eval("text").unwrap(), Value::from("éè"));

    // A UTF-8 BOM is honoured too.
    let bom = dir.join("bom.py");
    std::fs::write(&bom, "\u{feff}text = 'bom ✓'\n").unwrap();
    interp.exec_file(&bom).unwrap();
    assert_eq!(interp.eval("text").unwrap(), Value::from("bom ✓"));

    // Source that does not decode is a SyntaxError, as for `python FILE`.
    let broken = dir.join("broken.py");
    std::fs::write(&broken, [b"text = '".as_slice(), &[0xe9], b"'\n"].concat()).unwrap();
    let err = interp.exec_file(&broken).unwrap_err();
    let exc = err.as_python().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(exc.type_name, "builtins.SyntaxError", "{exc}");

    // Code given as text keeps its text, whatever coding line it carries.
    interp
        .exec("# -*- coding: latin-1 -*-\ntext = 'déjà'\n")
        .unwrap();
    assert_eq!(interp.eval("text").unwrap(), Value::from("déjà"));
}

#[test]
fn paths_that_are_not_utf8_keep_their_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = common::scratch_dir("bytes").join(OsStr::from_bytes(b"odd\xffdir"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sibling.py"), "VALUE = 'from the sibling'\n").unwrap();
    let script = dir.join(OsStr::from_bytes(b"odd\xfename.py"));
    std::fs::write(
        &script,
        "import os, sys\nwhere = os.fsencode(__file__)\nargv = [os.fsencode(a) for a in sys.argv]\n",
    )
    .unwrap();
    let expected = Value::Bytes(script.as_os_str().as_bytes().to_vec());

    let interp = common::isolated();
    interp.set_argv_os(&[script.as_os_str()]).unwrap();
    interp.add_path(&dir).unwrap();
    interp.exec_file(&script).unwrap();
    assert_eq!(interp.eval("where").unwrap(), expected);
    assert_eq!(interp.eval("argv").unwrap(), Value::List(vec![expected]));
    assert_eq!(
        interp.eval("__import__('sibling').VALUE").unwrap(),
        Value::from("from the sibling")
    );
    // An extension module still imports with such a directory on sys.path.
    interp.exec("import _json").unwrap();

    let mut config = InterpreterConfig::isolated();
    config.add_path(&dir);
    let interp = Interpreter::new(&common::runtime(), &config).unwrap();
    assert_eq!(
        interp.eval("__import__('sibling').VALUE").unwrap(),
        Value::from("from the sibling")
    );
    assert_eq!(
        interp
            .eval("__import__('os').fsencode(__import__('sys').path[0])")
            .unwrap(),
        Value::Bytes(dir.as_os_str().as_bytes().to_vec())
    );
}
