//! Helpers shared by the CLI tests: temporary directories and running the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory whose name includes `name`, the process id and a counter.
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "subinterp-cli-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the temporary directory");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `relative` (creating parent directories) and returns its path.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create the parent directory");
        }
        std::fs::write(&path, text).expect("write the file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `subinterp` with `args` in the directory `cwd`.
pub fn subinterp(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the subinterp binary")
}

/// The process's stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The process's stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit status, with the output shown when the process was killed.
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or_else(|| {
        panic!(
            "killed by a signal: {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            stdout(out),
            stderr(out)
        )
    })
}

/// Parses the `--json` report on stdout.
/// Runs `subinterp` with `args` in `cwd`, feeding `input` on its standard input.
pub fn subinterp_with_stdin(cwd: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the subinterp binary");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().expect("wait for subinterp");
    writer.join().expect("stdin writer");
    out
}

/// A command running `subinterp` with `args` with SIGINT at its default action, whatever
/// the test itself inherited (a shell ignores SIGINT for the background jobs of a
/// script, and `subinterp` leaves an ignored SIGINT ignored): `python3` resets it and
/// execs the binary.
pub fn command_with_sigint(args: &[&str]) -> Command {
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(
            "import os, signal, sys\n\
             signal.signal(signal.SIGINT, signal.SIG_DFL)\n\
             os.execv(sys.argv[1], sys.argv[1:])",
        )
        .arg(env!("CARGO_BIN_EXE_subinterp"))
        .args(args);
    command
}

/// Starts `subinterp` with `args` in `cwd`, every stream piped, SIGINT at its default
/// action (see [`command_with_sigint`]).
pub fn spawn_subinterp(cwd: &Path, args: &[&str]) -> std::process::Child {
    command_with_sigint(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the subinterp binary")
}

/// Sends `signal` (a name such as `INT`) to the process `pid` with the real `kill`.
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Waits for `child` at most `limit`; the output, or `None` if it is still running (it is
/// then killed).
pub fn wait_at_most(mut child: std::process::Child, limit: std::time::Duration) -> Option<Output> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
