//! The runtime's configuration and life cycle, in a process of its own (CPython starts
//! once per process): a virtual environment from `VIRTUAL_ENV` (with `.pth` files), extra
//! paths, finalisation when the last handle goes, and no second start after it.

use subinterp::{Error, Interpreter, InterpreterConfig, Runtime, RuntimeConfig, Value};

#[test]
fn virtual_env_extra_paths_and_finalisation() {
    let root = std::env::temp_dir().join(format!("subinterp-venv-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let version = {
        // The site-packages folder is named after the embedded Python's version.
        let v = env!("SUBINTERP_BUILD_PYTHON_VERSION");
        v.split('.').take(2).collect::<Vec<_>>().join(".")
    };
    let site = root.join(format!("venv/lib/python{version}/site-packages"));
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("venv_only_module.py"), "WHERE = 'venv'\n").unwrap();
    let extra = root.join("pth-target");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("pth_module.py"), "WHERE = 'pth'\n").unwrap();
    std::fs::write(site.join("extra.pth"), format!("{}\n", extra.display())).unwrap();
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::write(plugins.join("plugin_module.py"), "WHERE = 'plugins'\n").unwrap();

    // The default configuration honours VIRTUAL_ENV.
    std::env::set_var("VIRTUAL_ENV", root.join("venv"));
    let mut config = RuntimeConfig::new();
    config.add_path(&plugins);
    let rt = Runtime::init(&config).unwrap();
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated()).unwrap();
    for (module, expected) in [
        ("venv_only_module", "venv"),
        ("pth_module", "pth"),
        ("plugin_module", "plugins"),
    ] {
        assert_eq!(
            interp
                .eval(&format!("__import__('{module}').WHERE"))
                .unwrap(),
            Value::from(expected),
            "{module}"
        );
    }
    assert_eq!(
        interp.eval("__import__('sys').path[0]").unwrap(),
        Value::from(plugins.display().to_string()),
        "extra paths come first"
    );

    // The runtime lives while any handle or interpreter does, then is finalised; CPython
    // cannot be started again in the same process.
    assert!(matches!(
        Runtime::init(&config),
        Err(Error::AlreadyInitialized)
    ));
    drop(rt);
    assert!(
        Runtime::current().is_some(),
        "the interpreter keeps it alive"
    );
    interp.close().unwrap();
    drop(interp);
    assert!(Runtime::current().is_none());
    let err = Runtime::init(&config).unwrap_err();
    assert!(matches!(err, Error::Finalized), "{err}");
    assert!(err.to_string().contains("cannot be initialised again"));
}
