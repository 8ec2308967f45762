//! Calls a Python function with typed Rust arguments and gets a typed result back (serde).
//!
//! `cargo run -p subinterp --example typed_call`

use serde::{Deserialize, Serialize};
use subinterp::{Args, Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

#[derive(Serialize)]
struct Order {
    customer: String,
    items: Vec<Item>,
}

#[derive(Serialize)]
struct Item {
    sku: String,
    quantity: u32,
    unit_price: f64,
}

#[derive(Deserialize, Debug)]
struct Summary {
    customer: String,
    lines: Vec<Line>,
    total: f64,
    big_order: bool,
}

#[derive(Deserialize, Debug)]
struct Line {
    sku: String,
    amount: f64,
}

fn main() -> subinterp::Result<()> {
    let mut runtime_config = RuntimeConfig::new();
    runtime_config.add_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/plugins"
    ));
    let rt = Runtime::init(&runtime_config)?;
    let interp = Interpreter::new(&rt, &InterpreterConfig::isolated())?;

    let order = Order {
        customer: "Zoë".into(),
        items: vec![
            Item {
                sku: "KB-101".into(),
                quantity: 2,
                unit_price: 49.5,
            },
            Item {
                sku: "MS-7".into(),
                quantity: 1,
                unit_price: 19.99,
            },
        ],
    };
    let args = Args::new().arg_serde(&order)?.kwarg("discount", 0.1);
    let summary: Summary = interp.call_as("orders:summarize", args)?;

    println!(
        "{} ordered {} lines:",
        summary.customer,
        summary.lines.len()
    );
    for line in &summary.lines {
        println!("  {:<8} {:>8.2}", line.sku, line.amount);
    }
    println!(
        "total {:.2}{}",
        summary.total,
        if summary.big_order {
            " (big order)"
        } else {
            ""
        }
    );
    Ok(())
}
