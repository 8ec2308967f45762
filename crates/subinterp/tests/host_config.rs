//! Host modules CPython could not import are refused before it starts.

use subinterp::{
    Caller, Error, HostModule, Interpreter, InterpreterConfig, Runtime, RuntimeConfig,
};

#[test]
fn mistakes_in_a_host_module_are_invalid_config_and_python_is_not_started() {
    for module in [
        HostModule::new("two-words"),
        HostModule::new("game").function("bad name", ["a"], |_: &Caller, (a,): (i64,)| Ok(a)),
        HostModule::new("game").function("f", ["a"], |_: &Caller, (a, b): (i64, i64)| Ok(a + b)),
        HostModule::new("game").exception("NotFound", "no such base"),
        HostModule::new("subinterp"),
    ] {
        let mut config = RuntimeConfig::new();
        config.host_module(module.clone());
        match Runtime::init(&config) {
            Err(Error::InvalidConfig(message)) => {
                assert!(message.contains("host module"), "{message}")
            }
            other => panic!("{module:?}: expected InvalidConfig, got {other:?}"),
        }
    }
    let mut config = RuntimeConfig::new();
    for i in 0..33 {
        config.host_module(HostModule::new(format!("m{i}")));
    }
    match Runtime::init(&config) {
        Err(Error::InvalidConfig(message)) => {
            assert!(message.contains("at most 32 host modules"), "{message}")
        }
        other => panic!("33 host modules: expected InvalidConfig, got {other:?}"),
    }
    // Nothing was started: a correct configuration still can be; 32 host modules and the
    // library's own are all importable.
    let mut config = RuntimeConfig::new();
    for i in 0..31 {
        config.host_module(HostModule::new(format!("m{i}")));
    }
    config.host_module(HostModule::new("game"));
    let runtime = Runtime::init(&config).expect("start Python");
    let interp =
        Interpreter::new(&runtime, &InterpreterConfig::isolated()).expect("an interpreter");
    interp
        .exec(
            "import subinterp, game, m0, m30\nassert subinterp.Channel and subinterp.ChannelClosed",
        )
        .expect("the 32 host modules and subinterp import");
}
