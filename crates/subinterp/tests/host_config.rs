//! Host modules CPython could not import are refused before it starts.

use subinterp::{Caller, Error, HostModule, Runtime, RuntimeConfig};

#[test]
fn mistakes_in_a_host_module_are_invalid_config_and_python_is_not_started() {
    for module in [
        HostModule::new("two-words"),
        HostModule::new("game").function("bad name", ["a"], |_: &Caller, (a,): (i64,)| Ok(a)),
        HostModule::new("game").function("f", ["a"], |_: &Caller, (a, b): (i64, i64)| Ok(a + b)),
        HostModule::new("game").exception("NotFound", "no such base"),
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
    // Nothing was started: a correct configuration still can be.
    let mut config = RuntimeConfig::new();
    config.host_module(HostModule::new("game"));
    Runtime::init(&config).expect("start Python");
}
