//! A real virtual environment, in a process of its own (CPython starts once per process):
//! inside interpreters, `sys.prefix`, `sys.exec_prefix`, `sys.executable` and `sys.path`
//! are what the environment's own `python` has.

use std::process::Command;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

/// What is compared: with `python -I` (isolated, as the embedded runtime is).
const FACTS: &str = "repr([sys.prefix, sys.exec_prefix, sys.executable, sys.path])";

/// Makes a virtual environment, runs its `python`, then the embedded runtime with
/// `VIRTUAL_ENV` pointing at it, and compares.
fn compare(name: &str, system_site_packages: bool) {
    let root = std::env::temp_dir().join(format!("subinterp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let venv = root.join(".venv");
    let mut make = Command::new(env!("SUBINTERP_BUILD_PYTHON"));
    make.args(["-m", "venv", "--without-pip"]);
    if system_site_packages {
        make.arg("--system-site-packages");
    }
    assert!(
        make.arg(&venv).status().unwrap().success(),
        "python -m venv failed"
    );
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap();
    let wanted = format!("include-system-site-packages = {system_site_packages}");
    assert!(cfg.contains(&wanted), "{cfg}");
    let site = venv.join(format!(
        "lib/python{}/site-packages",
        env!("SUBINTERP_BUILD_PYTHON_VERSION")
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    ));
    std::fs::write(site.join("only_in_venv.py"), "WHERE = 'venv'\n").unwrap();
    let python = venv.join("bin/python");
    let own = Command::new(&python)
        .args(["-I", "-c", &format!("import sys; print({FACTS})")])
        .output()
        .unwrap();
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );
    let expected = String::from_utf8(own.stdout).unwrap();

    std::env::set_var("VIRTUAL_ENV", &venv);
    let rt = Runtime::init(&RuntimeConfig::new()).unwrap();
    for config in [InterpreterConfig::isolated(), InterpreterConfig::legacy()] {
        let interp = Interpreter::new(&rt, &config).unwrap();
        interp.exec("import sys").unwrap();
        let got = interp.eval(FACTS).unwrap();
        assert_eq!(got, Value::from(expected.trim_end()), "{config:?}");
        assert_eq!(
            interp.eval("__import__('only_in_venv').WHERE").unwrap(),
            Value::from("venv")
        );
    }
}

const CHILD: &str = "SUBINTERP_VENV_TEST";

#[test]
fn a_virtual_environment_is_honoured_as_its_own_python_honours_it() {
    if std::env::var_os(CHILD).is_some() {
        // The second runtime of this test, in a process of its own.
        compare("venv-system", true);
        return;
    }
    compare("venv-isolated", false);
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_virtual_environment_is_honoured_as_its_own_python_honours_it",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        child.status.success(),
        "with system site-packages:\n{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
}
