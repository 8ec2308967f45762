//! The command's own copies of its standard input and output.
//!
//! Python code in the interpreters shares this process's file descriptors: `print`,
//! `os.write(1, ...)`, subprocesses and pytest's `--capture=fd` (which points fd 1 at a
//! temporary file and back) all write to fd 1, and `sys.stdin` reads fd 0. When the
//! command's results go to stdout (`map`'s records, `run --json`'s report) or its input
//! comes from stdin (`map`'s records), it first takes copies of those descriptors for
//! itself (close-on-exec, so child processes do not inherit them), then points fd 1 at
//! stderr and fd 0 at `/dev/null`. Whatever Python code does with fds 0 and 1 afterwards
//! cannot reach the results or take records from the input.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;

/// Lowest descriptor number for the command's copies: above the three standard ones.
const FIRST_PRIVATE_FD: i32 = 3;

/// Takes a private copy of stdout for the command's results and points fd 1 at stderr
/// (or at `/dev/null` when stderr is closed). Everything Python writes to `sys.stdout` or
/// fd 1 from then on shows on stderr.
pub fn take_stdout() -> io::Result<File> {
    let own: OwnedFd = rustix::io::fcntl_dupfd_cloexec(io::stdout(), FIRST_PRIVATE_FD)?;
    stdout_to_stderr()?;
    Ok(File::from(own))
}

/// Points fd 1 at stderr (or at `/dev/null` when stderr is closed).
pub fn stdout_to_stderr() -> io::Result<()> {
    if rustix::stdio::dup2_stdout(io::stderr()).is_err() {
        rustix::stdio::dup2_stdout(File::options().write(true).open("/dev/null")?)?;
    }
    Ok(())
}

/// Takes a private copy of stdin for the command's input and points fd 0 at
/// `/dev/null`: Python code reading `sys.stdin` sees an empty input.
pub fn take_stdin() -> io::Result<File> {
    let own: OwnedFd = rustix::io::fcntl_dupfd_cloexec(io::stdin(), FIRST_PRIVATE_FD)?;
    stdin_from_null()?;
    Ok(File::from(own))
}

/// Points fd 0 at `/dev/null`.
pub fn stdin_from_null() -> io::Result<()> {
    Ok(rustix::stdio::dup2_stdin(File::open("/dev/null")?)?)
}

/// True when `signal` was set to be ignored by whoever started this process (a shell
/// running a command in the background, `nohup`): such a signal is left ignored, as
/// `python` leaves it, instead of being handled. Read from `/proc/self/status`; when that
/// cannot be read the signal counts as not ignored.
pub fn ignored_at_start(signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok());
    match (mask, u32::try_from(signal - 1)) {
        (Some(mask), Ok(bit)) if bit < 64 => mask & (1 << bit) != 0,
        _ => false,
    }
}
