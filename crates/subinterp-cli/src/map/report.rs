//! Error reporting: the output line of a record that failed or was a bad input, and
//! the command's own messages (set-up failures, an output that cannot be written).

use std::io::{self, Write};

use serde::Serialize;
use subinterp::{Error, Value};

use super::worker::{BAD_INPUT, BAD_TARGET, ENTRY_FUNCTION, IMPORT_FAILED};
use crate::{EXIT_BROKEN_PIPE, EXIT_USAGE};

#[derive(Serialize)]
struct ErrorRecord<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceback: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
}

/// The output line for a record's result, and whether it succeeded.
pub(super) fn render_result(result: subinterp::Result<Value>, line: usize) -> (String, bool) {
    let line = match result {
        Ok(Value::Str(json)) => return (format!("{{\"ok\": {json}}}"), true),
        Ok(other) => error_line(
            "subinterp.InternalError",
            &format!("the record wrapper returned {}", other.python_type()),
            None,
            None,
        ),
        Err(err) => match err.as_python() {
            Some(exc) if exc.type_name.ends_with(BAD_INPUT) => error_line(
                "InvalidInput",
                &format!("line {line}: {}", exc.message),
                None,
                Some(line),
            ),
            // A Python exception, or the TimeoutError that stopped a record at its deadline.
            Some(exc) => error_line(
                &exc.type_name,
                &exc.message,
                Some(&without_wrapper_frame(&exc.traceback)),
                None,
            ),
            // Past its deadline with no Python code to stop (blocked in C).
            None if err.is_timeout() => {
                error_line("builtins.TimeoutError", &err.to_string(), None, None)
            }
            None => error_line("subinterp.Error", &err.to_string(), None, None),
        },
    };
    (line, false)
}

/// The traceback without the line of the tool's own record wrapper.
fn without_wrapper_frame(traceback: &str) -> String {
    traceback
        .split_inclusive('\n')
        .filter(|line| {
            !(line.starts_with("  File \"<string>\", line ")
                && line
                    .trim_end()
                    .strip_suffix(ENTRY_FUNCTION)
                    .is_some_and(|rest| rest.ends_with(", in ")))
        })
        .collect()
}

/// An error line, spaced as `json.dumps` spaces the `ok` lines.
pub(super) fn error_line(
    kind: &str,
    message: &str,
    traceback: Option<&str>,
    line: Option<usize>,
) -> String {
    let record = ErrorRecord {
        error: ErrorBody {
            kind,
            message,
            traceback,
            line,
        },
    };
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, DumpsFormatter);
    match record.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => "{\"error\": null}".to_owned(),
    }
}

/// Separators as Python's `json.dumps` writes them: `", "` and `": "`.
struct DumpsFormatter;

impl serde_json::ser::Formatter for DumpsFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// What to say when the pool could not be set up: the target is not there, its module
/// raised while being imported, or an `--init` raised.
pub(super) fn describe_setup_error(module: &str, err: &Error) -> String {
    match err.as_python() {
        Some(exc) if exc.is("TimeoutError") && exc.message.contains("set-up deadline") => {
            // The library's own TimeoutError, with the traceback of where the set-up was.
            let in_import = exc.traceback.contains(IMPORT_FAILED);
            let traceback = match (&exc.cause, in_import) {
                (Some(cause), true) => cause.traceback.as_str(),
                _ => exc.traceback.as_str(),
            };
            let place = if in_import {
                format!("importing {module}")
            } else {
                "an --init code".to_owned()
            };
            let mut text = format!(
                "setting up the interpreters timed out in {place}: {} (--setup-timeout)",
                exc.message
            );
            if !traceback.trim().is_empty() {
                text.push_str(":\n");
                text.push_str(traceback.trim_end());
            }
            text
        }
        Some(exc) if exc.type_name.ends_with(BAD_TARGET) => {
            let hint = if exc.message.contains("no module named") {
                "\n(is its directory on --path? the current directory is searched too)"
            } else {
                ""
            };
            format!("{}{hint}", exc.message)
        }
        Some(exc) if exc.type_name.ends_with(IMPORT_FAILED) => {
            let traceback = exc
                .cause
                .as_ref()
                .map_or(exc.traceback.as_str(), |cause| cause.traceback.as_str());
            format!(
                "importing {module} raised an exception:\n{}",
                traceback.trim_end()
            )
        }
        Some(exc) => format!(
            "an --init code raised an exception:\n{}",
            exc.traceback.trim_end()
        ),
        None if err.is_timeout() => {
            format!("setting up the interpreters timed out: {err} (--setup-timeout)")
        }
        None => format!("cannot start the interpreters: {err}"),
    }
}

/// Reports an output that could not be written. A reader that went away (a closed pipe,
/// as with `| head`) ends the command quietly, as it ends other Unix tools.
pub(super) fn write_failed(err: &io::Error) -> u8 {
    if err.kind() == io::ErrorKind::BrokenPipe {
        return EXIT_BROKEN_PIPE;
    }
    setup_error(format!("cannot write the output: {err}"))
}

pub(super) fn setup_error(message: String) -> u8 {
    eprintln!("subinterp map: {message}");
    EXIT_USAGE
}
