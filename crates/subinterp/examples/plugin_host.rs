//! A host with a `host` module that its Python plugins call: `log`, a per-tenant `config`
//! lookup from the interpreter's host data, and a blocking `fetch` that waits for the host
//! to answer on a channel (the interpreter's GIL released meanwhile). Four plugins, each
//! in its own isolated interpreter, run in parallel, each call with a deadline: the
//! fourth plugin never returns (and swallows every `Exception`), so its call ends with
//! a timeout, and closing its interpreter stops it.
//!
//! `cargo run -p subinterp --example plugin_host`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use subinterp::{
    CallOptions, Caller, Channel, Error, HostModule, Interpreter, InterpreterConfig, Runtime,
    RuntimeConfig, Value,
};

/// How long a plugin's call may run.
const DEADLINE: Duration = Duration::from_secs(2);

/// What the host knows about the tenant a plugin runs for: attached to its interpreter.
struct Tenant {
    name: String,
    settings: HashMap<String, String>,
}

const PLUGIN: &str = r#"
import host

def run(item):
    host.log(f"starting on {item!r}")
    if item == "perpetuum mobile":
        while True:  # a buggy plugin: never returns, and swallows the TimeoutError
            try:
                sum(range(10_000))
            except Exception:
                pass
    currency = host.config("currency")
    try:
        host.config("missing")
    except host.NoSuchSetting as e:
        host.log(f"as expected: {e}")
    price = host.fetch(item, timeout=5.0)
    return f"{item}: {price} {currency}"
"#;

fn host_module(log: Arc<Mutex<Vec<String>>>, requests: Channel) -> HostModule {
    HostModule::new("host")
        .doc("What plugins may ask of the host.")
        .function(
            "log",
            ["message"],
            move |caller: &Caller, (message,): (String,)| {
                let tenant = caller
                    .data::<Tenant>()
                    .map_or("?".into(), |t| t.name.clone());
                log.lock().unwrap().push(format!("[{tenant}] {message}"));
                Ok(())
            },
        )
        .function("config", ["key"], |caller: &Caller, (key,): (String,)| {
            let tenant = caller
                .data::<Tenant>()
                .ok_or_else(|| Error::python("RuntimeError", "no tenant"))?;
            tenant.settings.get(&key).cloned().ok_or_else(|| {
                Error::python(
                    "host.NoSuchSetting",
                    format!("{}: no setting {key:?}", tenant.name),
                )
            })
        })
        .function(
            "fetch",
            ["item", "timeout"],
            move |caller: &Caller, (item, timeout): (String, Option<f64>)| {
                // Ask the host's pricing thread, and wait for its answer on a reply
                // channel of our own — interruptible, with the GIL released.
                let reply = Channel::new(Some(1));
                PENDING
                    .lock()
                    .unwrap()
                    .get_or_insert_with(HashMap::new)
                    .insert(caller.interpreter_id(), reply.clone());
                requests.send(Value::Tuple(vec![
                    Value::from(item),
                    Value::from(caller.interpreter_id()),
                ]))?;
                let timeout = timeout.map(Duration::from_secs_f64);
                caller.blocking(|interrupt| interrupt.recv(&reply, timeout)?.into_value())
            },
        )
        .exception("NoSuchSetting", "LookupError")
}

/// Reply channels of the fetches in progress, by interpreter.
static PENDING: Mutex<Option<HashMap<i64, Channel>>> = Mutex::new(None);

fn main() -> subinterp::Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let requests = Channel::new(None);
    let mut config = RuntimeConfig::new();
    config.host_module(host_module(Arc::clone(&log), requests.clone()));
    let rt = Runtime::init(&config)?;

    // The host's pricing service: answers each fetch on the asking plugin's channel.
    let pricing = {
        let requests = requests.clone();
        std::thread::spawn(move || {
            while let Ok(message) = requests.recv() {
                let Ok(Value::Tuple(request)) = message.into_value() else {
                    continue;
                };
                let (Some(Value::Str(item)), Some(Value::Int(asker))) =
                    (request.first(), request.get(1))
                else {
                    continue;
                };
                let price = item.len() as f64 * 1.25;
                let reply = PENDING
                    .lock()
                    .unwrap()
                    .as_mut()
                    .and_then(|p| p.remove(asker));
                if let Some(reply) = reply {
                    let _ = reply.send(Value::Float(price));
                }
            }
        })
    };

    let tenants = [
        ("acme", "EUR", "anvil"),
        ("globex", "USD", "laser"),
        ("initech", "CHF", "stapler"),
        ("hooli", "USD", "perpetuum mobile"),
    ];
    let plugins: Vec<_> = tenants
        .into_iter()
        .map(|(name, currency, item)| {
            let rt = rt.clone();
            std::thread::spawn(move || -> subinterp::Result<Value> {
                let mut config = InterpreterConfig::isolated();
                config.host_data(Tenant {
                    name: name.to_owned(),
                    settings: HashMap::from([("currency".to_owned(), currency.to_owned())]),
                });
                // Closing waits this long for the plugin's threads, or for a call
                // stuck in C code, before leaving the interpreter behind.
                config.shutdown_grace(Duration::from_secs(2));
                let interp = Interpreter::new(&rt, &config)?;
                interp.exec(PLUGIN)?;
                let options = CallOptions::new().timeout(DEADLINE);
                let result = match interp.call_with("__main__:run", (item,), options) {
                    // Blocked in C past the deadline: no Python code could be stopped.
                    Err(Error::Timeout {
                        exception: None, ..
                    }) => Ok(Value::from(format!(
                        "{name}: no answer within {} s",
                        DEADLINE.as_secs()
                    ))),
                    // Stopped by the TimeoutError raised in it at the deadline.
                    Err(Error::Timeout { .. }) => {
                        Ok(Value::from(format!("{name}: stopped at its deadline")))
                    }
                    other => other,
                };
                interp.close()?;
                result
            })
        })
        .collect();
    for plugin in plugins {
        match plugin.join().expect("plugin thread")? {
            Value::Str(line) => println!("{line}"),
            other => println!("{other:?}"),
        }
    }
    requests.close();
    let _ = pricing.join();
    for line in log.lock().unwrap().iter() {
        println!("{line}");
    }
    Ok(())
}
