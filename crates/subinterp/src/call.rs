//! What a call names and what it passes: a [`Target`] (`module:qualname`) and its [`Args`],
//! and the one function that resolves a target in an interpreter and calls it.

use crate::error::{Error, Result};
use crate::names;
use crate::raw::wire::{self as raw_wire, Mode};
use crate::raw::{PyObj, Python};
use crate::value::{to_value, wire, Value};

/// A callable named by its module and the dotted attribute path inside it.
///
/// Written `module:qualname` (`"pkg.mod:Class.method"`) or `module.attr` (`"math.sqrt"`);
/// both parts must be dotted Python identifiers.
///
/// ```
/// let target = subinterp::Target::parse("os.path:join").unwrap();
/// assert_eq!((target.module(), target.path()), ("os.path", "join"));
/// assert!(subinterp::Target::parse("not a target").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    module: String,
    path: String,
}

impl Target {
    /// Parses `module:qualname` or `module.attr`, checking both parts.
    pub fn parse(target: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidTarget {
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        let (module, path) = match target.split_once(':') {
            Some((m, p)) => (m, p),
            None => target
                .rsplit_once('.')
                .ok_or_else(|| bad("expected module:function or module.function"))?,
        };
        if !names::is_dotted(module) {
            return Err(bad("the module name must be a dotted Python identifier"));
        }
        if !names::is_dotted(path) {
            return Err(bad("the function name must be a dotted Python identifier"));
        }
        Ok(Target {
            module: module.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The module to import (`"os.path"`).
    pub fn module(&self) -> &str {
        &self.module
    }

    /// The dotted attribute path inside the module (`"join"`, `"Class.method"`).
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.module, self.path)
    }
}

/// Splits a call target into the module name and the dotted attribute path: the parts of
/// [`Target::parse`].
///
/// ```
/// assert_eq!(
///     subinterp::parse_target("os.path:join").unwrap(),
///     ("os.path".to_owned(), "join".to_owned())
/// );
/// ```
pub fn parse_target(target: &str) -> Result<(String, String)> {
    Target::parse(target).map(|t| (t.module, t.path))
}

/// Positional and keyword arguments of a [`call`](crate::Interpreter::call).
///
/// Tuples of up to six items convert (`(1, "a")`), as do `()` and `Vec<Value>`:
///
/// ```
/// use subinterp::{Args, Value};
/// let args = Args::new().arg(1).arg("two").kwarg("sep", ", ");
/// assert_eq!(args.positional, vec![Value::Int(1), Value::from("two")]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args {
    /// Positional arguments.
    pub positional: Vec<Value>,
    /// Keyword arguments, in order.
    pub keywords: Vec<(String, Value)>,
}

impl Args {
    /// No arguments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a positional argument.
    pub fn arg(mut self, value: impl Into<Value>) -> Self {
        self.positional.push(value.into());
        self
    }

    /// Appends a keyword argument.
    pub fn kwarg(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.keywords.push((name.into(), value.into()));
        self
    }

    /// The arguments in the wire format, for [`raw_wire::call_encoded`].
    pub(crate) fn to_wire(&self) -> Result<Vec<u8>> {
        wire::encode_call(&self.positional, &self.keywords)
    }

    /// Appends a positional argument converted from any `Serialize` type.
    pub fn arg_serde<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Result<Self> {
        self.positional.push(to_value(value)?);
        Ok(self)
    }
}

impl From<()> for Args {
    fn from(_: ()) -> Self {
        Args::new()
    }
}

impl From<Vec<Value>> for Args {
    fn from(positional: Vec<Value>) -> Self {
        Args {
            positional,
            keywords: Vec::new(),
        }
    }
}

macro_rules! args_from_tuple {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> From<($($name,)+)> for Args {
            #[allow(non_snake_case)]
            fn from(($($name,)+): ($($name,)+)) -> Self {
                Args { positional: vec![$($name.into()),+], keywords: Vec::new() }
            }
        }
    };
}
args_from_tuple!(A);
args_from_tuple!(A, B);
args_from_tuple!(A, B, C);
args_from_tuple!(A, B, C, D);
args_from_tuple!(A, B, C, D, E);
args_from_tuple!(A, B, C, D, E, F);

/// Imports the target's module, follows its dotted path to a callable, calls it with
/// `args` and copies the result out.
pub(crate) fn call_target(py: Python<'_>, target: &Target, args: &Args) -> Result<Value> {
    wire::decode(&call_target_wire(py, target, &args.to_wire()?)?)
}

/// As [`call_target`], with the arguments and the result in the wire format, so that
/// the caller writes and reads them off this interpreter's GIL.
pub(crate) fn call_target_wire(py: Python<'_>, target: &Target, args: &[u8]) -> Result<Vec<u8>> {
    call_target_wire_as(py, target, args, &ResultForm::VALUE)
}

/// How a call's result is written in the wire format.
#[derive(Clone, Debug)]
pub(crate) struct ResultForm {
    /// [`Mode::Lenient`]: as [`PyObj::to_value`] would read it. [`Mode::Exact`]: every
    /// plain type kept as it is (a `bytearray`, a `str` with lone surrogates) for a
    /// reader of Python objects, anything else refused.
    pub(crate) mode: Mode,
    /// Called with a result the mode refuses (not plain data): what it returns is
    /// written instead (say, the result pickled).
    pub(crate) otherwise: Option<Target>,
}

impl ResultForm {
    /// The meaning a `Value` reader gives results.
    pub(crate) const VALUE: ResultForm = ResultForm {
        mode: Mode::Lenient,
        otherwise: None,
    };
}

/// The callable a target names, imported in this interpreter.
fn resolve<'py>(py: Python<'py>, target: &Target) -> Result<PyObj<'py>> {
    let mut callable = py.import(&target.module)?;
    for attr in target.path.split('.') {
        callable = callable.getattr(attr)?;
    }
    Ok(callable)
}

/// As [`call_target_wire`], the result written as `form` says.
pub(crate) fn call_target_wire_as(
    py: Python<'_>,
    target: &Target,
    args: &[u8],
    form: &ResultForm,
) -> Result<Vec<u8>> {
    let result = raw_wire::call_encoded(&resolve(py, target)?, args)?;
    match (
        raw_wire::encode(&result, form.mode, Vec::new()),
        &form.otherwise,
    ) {
        (Err(Error::Unshareable { .. }), Some(otherwise)) => {
            let instead = resolve(py, otherwise)?.call(&[&result])?;
            raw_wire::encode(&instead, form.mode, Vec::new())
        }
        (written, _) => written,
    }
}

/// A result in the wire format, with the meaning [`PyObj::to_value`] gives it
/// (subclasses as their base type).
pub(crate) fn result_wire(obj: &PyObj<'_>) -> Result<Vec<u8>> {
    raw_wire::encode(obj, Mode::Lenient, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("os.path:join").unwrap(),
            ("os.path".into(), "join".into())
        );
        assert_eq!(
            parse_target("math.sqrt").unwrap(),
            ("math".into(), "sqrt".into())
        );
        assert_eq!(
            parse_target("pkg.mod:Class.method").unwrap(),
            ("pkg.mod".into(), "Class.method".into())
        );
        for bad in ["", "math", ":f", "m:", "m:f g", "1m:f", "m:.f"] {
            assert!(parse_target(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
