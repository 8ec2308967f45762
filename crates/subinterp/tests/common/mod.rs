//! Shared set-up: one runtime per test process (CPython starts once per process).
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use subinterp::{Interpreter, InterpreterConfig, Runtime, RuntimeConfig};

pub fn runtime() -> Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| Runtime::get_or_init(&RuntimeConfig::new()).expect("start Python"))
        .clone()
}

pub fn isolated() -> Interpreter {
    Interpreter::new(&runtime(), &InterpreterConfig::isolated()).expect("create interpreter")
}

pub fn legacy() -> Interpreter {
    Interpreter::new(&runtime(), &InterpreterConfig::legacy()).expect("create interpreter")
}

pub fn capturing() -> Interpreter {
    let mut config = InterpreterConfig::isolated();
    config.capture_output(true);
    Interpreter::new(&runtime(), &config).expect("create interpreter")
}

/// A minimal executor: polls the future, parking the thread until its waker fires.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park_timeout(Duration::from_secs(5)),
        }
    }
}

/// A new empty directory under the system's temporary directory, unique to this test
/// process and `name`.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("subinterp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// This test binary's ignored `scenario_helper` test, to run alone in a process of its
/// own (a crash of CPython takes the whole process with it); the caller adds the
/// environment that names the scenario.
pub fn scenario_command() -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command.args(["--exact", "scenario_helper", "--ignored", "--nocapture"]);
    command
}

/// How a scenario's process ended, and what it wrote.
pub fn describe(out: &std::process::Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    format!(
        "status {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        out.status.signal(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
