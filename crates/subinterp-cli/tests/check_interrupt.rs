//! `subinterp check` interrupted while a module spins at import: every process it
//! started ends with it (before, a probe process spun on at 90 % CPU).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TempDir;

/// Whether process `pid` still exists (and is not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_for_file(path: &Path, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text;
            }
        }
        assert!(start.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn interrupted_check_leaves_nothing_running(signal: &str) {
    let dir = TempDir::new("check-interrupt");
    let pid_file = dir.path().join("spinner.pid");
    dir.write(
        "spinner.py",
        &format!(
            "import os\nwith open({:?}, 'w') as f:\n    f.write(str(os.getpid()))\nwhile True:\n    pass\n",
            pid_file.to_str().unwrap()
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_subinterp"))
        .args(["check", "spinner", "--path", "."])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run subinterp check");
    let spinner: u32 = wait_for_file(&pid_file, Duration::from_secs(30))
        .trim()
        .parse()
        .unwrap();
    assert!(alive(spinner));
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
    let start = Instant::now();
    while alive(spinner) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the importing process {spinner} still runs after subinterp check was killed with {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_ends_every_probe_process() {
    interrupted_check_leaves_nothing_running("-INT");
}

#[test]
fn sigterm_ends_every_probe_process() {
    interrupted_check_leaves_nothing_running("-TERM");
}

#[test]
fn sigkill_ends_every_probe_process() {
    interrupted_check_leaves_nothing_running("-KILL");
}
