//! Catches Python exceptions in Rust: type, message, traceback and cause; the interpreter
//! keeps working afterwards.
//!
//! `cargo run -p subinterp --example exceptions`

use subinterp::{Error, Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

fn main() -> subinterp::Result<()> {
    let mut runtime_config = RuntimeConfig::new();
    runtime_config.add_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/plugins"
    ));
    let rt = Runtime::init(&runtime_config)?;
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;

    for input in ["8080", "http", "70000"] {
        match interp.call("fragile:parse_port", (input,)) {
            Ok(port) => println!("{input:>6} -> port {port}"),
            Err(Error::Python(exc)) => {
                println!("{input:>6} -> {} ({})", exc.message, exc.short_type_name());
                if let Some(cause) = &exc.cause {
                    println!("         caused by {cause}");
                }
                if input == "http" {
                    println!("--- traceback as Python prints it ---\n{}", exc.traceback);
                }
            }
            Err(other) => return Err(other),
        }
    }

    // Values that are not plain data cannot leave the interpreter: the error names the type.
    if let Err(err) = interp.eval("{1, 2, 3}") {
        println!("eval of a set: {err}");
    }
    // SystemExit is reported, never obeyed by the host.
    if let Err(err) = interp.exec("raise SystemExit(2)") {
        println!("user code tried to exit: {err}");
    }
    println!("still running: {}", interp.eval("'yes'")?);
    Ok(())
}
