//! Python exceptions arrive as snapshots with type, message, traceback and chain, and the
//! host keeps working.

mod common;

use subinterp::{Error, PyException, Value};

fn exception(err: Error) -> PyException {
    match err {
        Error::Python(exc) => *exc,
        other => panic!("expected a Python exception, got {other:?}"),
    }
}

#[test]
fn exceptions_carry_type_message_and_traceback() {
    let interp = common::isolated();
    interp
        .exec("def inner(x):\n    raise ValueError(f'bad value: {x}')\n\ndef outer():\n    inner(7)\n")
        .unwrap();
    let exc = exception(interp.call("__main__:outer", ()).unwrap_err());
    assert_eq!(exc.type_name, "builtins.ValueError");
    assert_eq!(exc.message, "bad value: 7");
    assert!(exc
        .traceback
        .starts_with("Traceback (most recent call last):"));
    assert!(exc.traceback.contains("in outer"), "{}", exc.traceback);
    assert!(exc.traceback.contains("in inner"), "{}", exc.traceback);
    assert!(exc
        .traceback
        .trim_end()
        .ends_with("ValueError: bad value: 7"));
    assert_eq!(exc.to_string(), "builtins.ValueError: bad value: 7");
    assert!(exc.is("ValueError") && exc.is("builtins.ValueError"));
    // The interpreter keeps working.
    assert_eq!(interp.eval("1 + 1").unwrap(), Value::Int(2));
}

#[test]
fn user_defined_exceptions_have_qualified_names() {
    let interp = common::isolated();
    interp
        .exec("class Errors:\n    class Oops(Exception):\n        pass\n")
        .unwrap();
    let exc = exception(
        interp
            .exec("raise Errors.Oops('nested class')")
            .unwrap_err(),
    );
    assert_eq!(exc.type_name, "__main__.Errors.Oops");
    let exc = exception(interp.exec("import json; json.loads('{')").unwrap_err());
    assert_eq!(exc.type_name, "json.decoder.JSONDecodeError");
}

#[test]
fn cause_and_context_chains_are_kept() {
    let interp = common::isolated();
    let exc = exception(
        interp
            .exec("try:\n    {}['missing']\nexcept KeyError as e:\n    raise RuntimeError('lookup failed') from e\n")
            .unwrap_err(),
    );
    assert_eq!(exc.type_name, "builtins.RuntimeError");
    let cause = exc.cause.as_deref().expect("__cause__");
    assert_eq!(cause.type_name, "builtins.KeyError");
    assert_eq!(cause.message, "'missing'");
    assert!(exc
        .traceback
        .contains("The above exception was the direct cause of the following exception"));

    let exc = exception(
        interp
            .exec("try:\n    1 / 0\nexcept ZeroDivisionError:\n    undefined_name\n")
            .unwrap_err(),
    );
    assert_eq!(exc.type_name, "builtins.NameError");
    assert!(exc.cause.is_none());
    let context = exc.context.as_deref().expect("__context__");
    assert_eq!(context.type_name, "builtins.ZeroDivisionError");
    assert!(exc
        .traceback
        .contains("During handling of the above exception, another exception occurred"));
}

#[test]
fn syntax_errors_are_reported_with_location() {
    let interp = common::isolated();
    let exc = exception(interp.exec("def broken(:\n    pass\n").unwrap_err());
    assert_eq!(exc.type_name, "builtins.SyntaxError");
    assert!(exc.traceback.contains("line 1"), "{}", exc.traceback);
    let exc = exception(interp.eval("1 +").unwrap_err());
    assert_eq!(exc.type_name, "builtins.SyntaxError");
}

#[test]
fn system_exit_is_reported_not_obeyed() {
    let interp = common::isolated();
    let exc = exception(interp.exec("raise SystemExit(3)").unwrap_err());
    assert_eq!(exc.type_name, "builtins.SystemExit");
    assert_eq!(exc.message, "3");
    let exc = exception(interp.exec("import sys; sys.exit('bye')").unwrap_err());
    assert_eq!(exc.type_name, "builtins.SystemExit");
    assert_eq!(exc.message, "bye");
    let exc = exception(interp.exec("exit()").unwrap_err());
    assert_eq!(exc.type_name, "builtins.SystemExit");
    // Still here, and the interpreter still works.
    assert_eq!(interp.eval("'alive'").unwrap(), Value::from("alive"));
}

#[test]
fn missing_modules_and_functions_are_clear_errors() {
    let interp = common::isolated();
    let exc = exception(interp.call("no_such_module:f", ()).unwrap_err());
    assert_eq!(exc.type_name, "builtins.ModuleNotFoundError");
    assert!(exc.message.contains("no_such_module"));
    let exc = exception(interp.call("math:no_such_function", ()).unwrap_err());
    assert_eq!(exc.type_name, "builtins.AttributeError");
    assert!(exc.message.contains("no_such_function"));
    let err = interp.call("not a target", ()).unwrap_err();
    assert!(matches!(err, Error::InvalidTarget { .. }), "{err}");
}

#[test]
fn exceptions_whose_str_fails_still_arrive() {
    let interp = common::isolated();
    interp
        .exec("class Weird(Exception):\n    def __str__(self):\n        raise RuntimeError('no str')\n")
        .unwrap();
    let exc = exception(interp.exec("raise Weird()").unwrap_err());
    assert_eq!(exc.type_name, "__main__.Weird");
    assert!(exc.message.contains("str() failed"), "{}", exc.message);
    assert_eq!(interp.eval("3").unwrap(), Value::Int(3));
}

#[test]
fn keyword_arguments_and_call_forms() {
    let interp = common::isolated();
    interp
        .exec("def join(*parts, sep='-'):\n    return sep.join(parts)\n")
        .unwrap();
    let args = subinterp::Args::new().arg("a").arg("b").kwarg("sep", "+");
    assert_eq!(
        interp.call("__main__:join", args).unwrap(),
        Value::from("a+b")
    );
    assert_eq!(
        interp.call("os.path.join", ("x", "y")).unwrap(),
        Value::from("x/y")
    );
    assert_eq!(
        interp.call("os.path:join", ("x", "y", "z")).unwrap(),
        Value::from("x/y/z")
    );
    assert_eq!(
        interp.call("builtins:str.upper", ("abc",)).unwrap(),
        Value::from("ABC")
    );
}

#[test]
fn runaway_recursion_is_a_recursion_error() {
    let interp = common::isolated();
    interp
        .exec("def down(n):\n    return down(n + 1)\n")
        .unwrap();
    let exc = exception(interp.call("__main__:down", (0,)).unwrap_err());
    assert_eq!(exc.type_name, "builtins.RecursionError");
    assert_eq!(
        interp.eval("'still here'").unwrap(),
        Value::from("still here")
    );
}

#[test]
fn source_with_a_nul_byte_is_a_syntax_error() {
    let interp = common::isolated();
    let exc = exception(interp.exec("x = 1\0").unwrap_err());
    assert_eq!(exc.type_name, "builtins.SyntaxError");
    assert!(exc.message.contains("null bytes"), "{}", exc.message);
}

#[test]
fn system_exit_carries_the_status_python_would_exit_with() {
    let interp = common::isolated();
    let cases: [(&str, i32, Option<&str>); 11] = [
        ("sys.exit()", 0, None),
        ("sys.exit(None)", 0, None),
        ("sys.exit(0)", 0, None),
        ("sys.exit(False)", 0, None),
        ("sys.exit(True)", 1, None),
        ("sys.exit(3)", 3, None),
        ("sys.exit('0')", 1, Some("0")),
        ("sys.exit('')", 1, Some("")),
        ("sys.exit('message')", 1, Some("message")),
        ("sys.exit(2 ** 100)", -1, None),
        ("class Quit(SystemExit): pass\nraise Quit(7)", 7, None),
    ];
    for (code, status, message) in cases {
        let err = interp.exec(&format!("import sys\n{code}")).unwrap_err();
        assert_eq!(err.exit_code(), Some(status), "{code}");
        let exit = err.as_python().unwrap().exit.clone().unwrap();
        assert_eq!(exit.message.as_deref(), message, "{code}");
    }
    let err = interp.exec("raise ValueError(3)").unwrap_err();
    assert_eq!(err.exit_code(), None);
    assert_eq!(err.as_python().unwrap().exit, None);
}

#[test]
fn debug_prints_a_python_exception_as_python_does() {
    // `fn main() -> subinterp::Result<()>` prints `Error: {err:?}` for an error it
    // returns: the traceback, not an escaped struct.
    let interp = common::isolated();
    interp
        .exec("def parse(text):\n    return int(text)\n")
        .unwrap();
    let err = interp.call("__main__:parse", ("twelve",)).unwrap_err();
    let shown = format!("{err:?}");
    assert!(
        shown.starts_with("Traceback (most recent call last):\n"),
        "{shown}"
    );
    assert!(shown.contains("in parse\n"), "{shown}");
    assert!(
        shown.ends_with("ValueError: invalid literal for int() with base 10: 'twelve'"),
        "{shown}"
    );
    assert!(
        !shown.contains("PyException") && !shown.contains("\\n"),
        "{shown}"
    );
    // An exception never raised has no traceback: its type and message.
    let made = Error::python("KeyError", "no such key");
    assert_eq!(format!("{made:?}"), "builtins.KeyError: no such key");
    // Other errors print as their variant.
    assert_eq!(format!("{:?}", Error::Closed), "Closed");
}
