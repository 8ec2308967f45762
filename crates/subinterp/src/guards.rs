//! Python start-up snippets that keep code in one interpreter from ending the whole
//! process: every interpreter of a process shares it, so `os._exit(n)` in any of them
//! would end them all, with status `n` and no report.

/// What `os._exit(n)` does in an interpreter that ran [`exit_guard`].
#[derive(Clone, Copy, Debug)]
pub enum ExitGuard<'a> {
    /// `SystemExit(n)`: ends only the code of that interpreter, as `sys.exit(n)` does.
    SystemExit,
    /// `RuntimeError` saying that `os._exit(n)` would end the whole process and that the
    /// code named here (say, "a map function or --init") cannot call it.
    Refuse(&'a str),
}

/// Python statements that replace `os._exit` (and `posix._exit`) in the interpreter
/// that runs them, as `guard` says. They leave no name behind in the namespace they run
/// in.
///
/// ```
/// use subinterp::guards::{exit_guard, ExitGuard};
/// let code = exit_guard(ExitGuard::Refuse("a task"));
/// assert!(code.contains("os._exit"));
/// ```
pub fn exit_guard(guard: ExitGuard<'_>) -> String {
    let raise = match guard {
        ExitGuard::SystemExit => "raise SystemExit(status)".to_owned(),
        ExitGuard::Refuse(who) => format!(
            "raise RuntimeError(\n            f\"os._exit({{status!r}}) would end the whole \
             process, every interpreter in it; \"\n            {:?}\n        )",
            format!("{who} cannot call it")
        ),
    };
    format!(
        "def _subinterp_exit_guard():\n    import os, posix\n\n    def _exit(status, /):\n        \
         {raise}\n\n    os._exit = posix._exit = _exit\n\n_subinterp_exit_guard()\n\
         del _subinterp_exit_guard\n"
    )
}
