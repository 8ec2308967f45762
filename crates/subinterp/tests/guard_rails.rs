//! Guard rails on process-wide state: each rule refuses its action with a
//! `PermissionError` naming it, and the process state stays unchanged, while an
//! interpreter without the rule can still act; counting mode counts.

mod common;

use subinterp::{GuardAction, GuardRule, Guards, Interpreter, InterpreterConfig, Value};

fn guarded(guards: Guards) -> Interpreter {
    let mut config = InterpreterConfig::isolated();
    config.guards(guards);
    Interpreter::new(&common::runtime(), &config).expect("create interpreter")
}

fn refusing(rule: GuardRule) -> Interpreter {
    let mut guards = Guards::new();
    guards.refuse(rule);
    guarded(guards)
}

/// Runs `code` (which must raise) and returns the exception's message, checking that it
/// is a `PermissionError` naming `rule`.
fn refused(interp: &Interpreter, rule: &str, code: &str) -> String {
    let err = interp.exec(code).expect_err("the guard rail refuses");
    let exc = err.as_python().expect("a Python exception");
    assert_eq!(exc.type_name, "builtins.PermissionError", "{exc:?}");
    assert!(
        exc.message.contains(&format!("'{rule}' guard rail")),
        "{}",
        exc.message
    );
    assert!(exc.message.contains("to permit it"), "{}", exc.message);
    exc.message.clone()
}

#[test]
fn chdir_is_refused_and_the_directory_stays() {
    let before = std::env::current_dir().unwrap();
    let interp = refusing(GuardRule::Chdir);
    let target = std::env::temp_dir();
    let message = refused(
        &interp,
        "chdir",
        &format!("import os\nos.chdir({target:?})"),
    );
    assert!(message.contains("os.chdir"), "{message}");
    refused(
        &interp,
        "chdir",
        &format!("import os\nfd = os.open({target:?}, os.O_RDONLY)\ntry:\n    os.fchdir(fd)\nfinally:\n    os.close(fd)"),
    );
    assert_eq!(std::env::current_dir().unwrap(), before);
    assert_eq!(interp.stats().guards["chdir"].refused, 2);
    // Another interpreter, without the rule, can change it (here: to where it is).
    let free = common::isolated();
    free.exec("import os\nos.chdir(os.getcwd())").unwrap();
}

#[test]
fn environment_writes_are_refused_and_the_environment_stays() {
    let interp = refusing(GuardRule::Env);
    refused(
        &interp,
        "env",
        "import os\nos.environ['SUBINTERP_GUARD_TEST'] = 'guarded'",
    );
    assert!(std::env::var_os("SUBINTERP_GUARD_TEST").is_none());
    // Neither the process's nor the interpreter's view of it changed; reading is free.
    assert_eq!(
        interp
            .eval("__import__('os').environ.get('SUBINTERP_GUARD_TEST')")
            .unwrap(),
        Value::None
    );
    refused(&interp, "env", "import os\nos.unsetenv('PATH')");
    assert!(std::env::var_os("PATH").is_some());
    let free = common::isolated();
    free.exec("import os\nos.environ['SUBINTERP_GUARD_FREE'] = 'free'")
        .unwrap();
    assert_eq!(std::env::var("SUBINTERP_GUARD_FREE").unwrap(), "free");
}

#[test]
fn signal_handlers_and_timers_are_refused_and_stay() {
    let interp = refusing(GuardRule::Signals);
    refused(
        &interp,
        "signals",
        "import signal\nsignal.signal(signal.SIGUSR1, lambda *a: None)",
    );
    let message = refused(
        &interp,
        "signals",
        "import signal\nsignal.setitimer(signal.ITIMER_REAL, 1000)",
    );
    assert!(message.contains("setitimer"), "{message}");
    refused(&interp, "signals", "import signal\nsignal.alarm(1000)");
    refused(
        &interp,
        "signals",
        "import os, signal\nos.kill(os.getpid(), signal.SIGUSR1)",
    );
    // No timer was set for the process.
    assert_eq!(
        interp
            .eval("__import__('signal').getitimer(__import__('signal').ITIMER_REAL)")
            .unwrap(),
        Value::Tuple(vec![Value::Float(0.0), Value::Float(0.0)])
    );
    // Without the rule, the process-wide timer is set (and cleared again at once).
    let free = common::isolated();
    let previous = free
        .eval(
            "(__import__('signal').setitimer(__import__('signal').ITIMER_REAL, 1000), \
             __import__('signal').setitimer(__import__('signal').ITIMER_REAL, 0))[1][0]",
        )
        .unwrap();
    assert!(
        matches!(previous, Value::Float(s) if s > 900.0),
        "{previous:?}"
    );
    // CPython itself refuses signal handlers outside the main interpreter.
    let err = free
        .exec("import signal\nsignal.signal(signal.SIGUSR1, lambda *a: None)")
        .unwrap_err();
    assert!(err.as_python().unwrap().is("ValueError"), "{err}");
}

#[test]
fn fork_is_refused_by_the_rule() {
    let interp = refusing(GuardRule::Fork);
    refused(&interp, "fork", "import os\nos.fork()");
    refused(&interp, "fork", "import os\nos.forkpty()");
    // Without the rule, CPython refuses it in an isolated interpreter.
    let err = common::isolated().exec("import os\nos.fork()").unwrap_err();
    assert!(err.as_python().unwrap().is("RuntimeError"), "{err}");
}

#[test]
fn subprocesses_are_refused() {
    let interp = refusing(GuardRule::Subprocess);
    let message = refused(
        &interp,
        "subprocess",
        "import subprocess\nsubprocess.run(['true'])",
    );
    assert!(message.contains("starting the process"), "{message}");
    refused(&interp, "subprocess", "import os\nos.system('true')");
    let free = common::isolated();
    assert_eq!(
        free.eval("__import__('subprocess').run(['true']).returncode")
            .unwrap(),
        Value::Int(0)
    );
}

#[test]
fn writes_outside_the_allowed_directories_are_refused() {
    let allowed = common::scratch_dir("guard-write-allowed");
    let outside = common::scratch_dir("guard-write-outside");
    let mut guards = Guards::new();
    guards.allow_write(&allowed);
    let interp = guarded(guards);
    let inside_file = allowed.join("inside.txt");
    interp
        .exec(&format!(
            "with open({inside_file:?}, 'w') as f:\n    f.write('ok')\n\
             import os\nos.mkdir({:?})\nos.remove({inside_file:?})",
            allowed.join("sub")
        ))
        .unwrap();
    let outside_file = outside.join("outside.txt");
    refused(&interp, "write", &format!("open({outside_file:?}, 'w')"));
    refused(&interp, "write", &format!("open({outside_file:?}, 'a')"));
    refused(
        &interp,
        "write",
        &format!("import os\nos.open({outside_file:?}, os.O_CREAT | os.O_WRONLY)"),
    );
    refused(
        &interp,
        "write",
        &format!("import os\nos.mkdir({:?})", outside.join("d")),
    );
    assert!(!outside_file.exists());
    assert!(!outside.join("d").exists());
    // A symbolic link inside the allowed directory does not lead out of it.
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    refused(
        &interp,
        "write",
        &format!("open({:?}, 'w')", allowed.join("link").join("escaped.txt")),
    );
    assert!(!outside.join("escaped.txt").exists());
    // Importing a module from outside writes its bytecode cache there, which is exempt.
    std::fs::write(outside.join("guard_imported.py"), "VALUE = 7\n").unwrap();
    interp
        .exec(&format!(
            "import sys\nsys.path.insert(0, {outside:?})\nimport guard_imported"
        ))
        .unwrap();
    assert!(outside.join("__pycache__").is_dir());
    assert_eq!(interp.stats().guards["write"].refused, 5);
    // Reading is free.
    std::fs::write(&outside_file, "read me").unwrap();
    assert_eq!(
        interp
            .eval(&format!("open({outside_file:?}).read()"))
            .unwrap(),
        Value::from("read me")
    );
}

#[test]
fn connections_are_refused() {
    let interp = refusing(GuardRule::Connect);
    refused(
        &interp,
        "connect",
        "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 9))\nfinally:\n    s.close()",
    );
    // Without the rule, the connection is attempted (and refused by the closed port, or
    // made if something listens there).
    let free = common::isolated();
    free.exec(
        "import socket\ns = socket.socket()\ntry:\n    s.connect(('127.0.0.1', 9))\n\
         except OSError as e:\n    assert not isinstance(e, PermissionError), e\nfinally:\n    s.close()",
    )
    .unwrap();
}

#[test]
fn counting_lets_the_action_happen_and_counts_it() {
    let mut guards = Guards::new();
    guards.count(GuardRule::Chdir).count(GuardRule::Env);
    assert_eq!(guards.action(GuardRule::Chdir), GuardAction::Count);
    let interp = guarded(guards);
    interp
        .exec(
            "import os\nfor _ in range(3):\n    os.chdir(os.getcwd())\n\
             os.environ['SUBINTERP_GUARD_COUNTED'] = '1'",
        )
        .unwrap();
    assert_eq!(std::env::var("SUBINTERP_GUARD_COUNTED").unwrap(), "1");
    let stats = interp.stats();
    assert_eq!(stats.guards["chdir"].counted, 3, "{stats:?}");
    assert_eq!(stats.guards["env"].counted, 1, "{stats:?}");
    assert_eq!((stats.guard_counted, stats.guard_refused), (4, 0));
}

#[test]
fn the_process_state_preset_still_runs_ordinary_code() {
    let interp = guarded(Guards::process_state());
    interp
        .exec("import json, os, tempfile, signal, subprocess\nx = json.dumps({'cwd': os.getcwd()})")
        .unwrap();
    assert_eq!(interp.stats().guard_refused, 0);
}
