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
    let who = match guard {
        ExitGuard::SystemExit => "None".to_owned(),
        ExitGuard::Refuse(who) => python_str(who),
    };
    format!(
        "{}\n_subinterp_exit_guard({who})\ndel _subinterp_exit_guard\n",
        include_str!("exit_guard.py")
    )
}

/// `text` as a Python string literal.
fn python_str(text: &str) -> String {
    let mut out = String::from("'");
    for c in text.chars() {
        match c {
            '\\' | '\'' => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}
