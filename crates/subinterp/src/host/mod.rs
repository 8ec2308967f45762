//! Host modules: Python modules of native Rust functions that every interpreter of the
//! runtime can import.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{call_target, Args, Target};
use crate::channel::{Channel, Message, Stop};
use crate::error::{Error, Result};
use crate::names;
pub(crate) mod params;

use crate::raw::callback::{self, FastArgs};
use crate::raw::convert::scalar_object;
use crate::raw::module::{ExceptionSpec, FunctionSpec, ModuleSpec, NativeFn};
use crate::raw::{PyObj, Python};
use crate::value::{from_value, to_value, Value};
use crate::wait::{self, InterruptReason, InterruptState, WaitSlot};
use params::{Param, Plain};

/// A Python module whose functions are Rust closures, registered on a runtime with
/// [`RuntimeConfig::host_module`](crate::RuntimeConfig::host_module) and importable in
/// every interpreter of that runtime — isolated or legacy, pool workers included.
///
/// Each interpreter that imports it gets its own module object, functions and exception
/// classes (a multi-phase-init module supporting a per-interpreter GIL); the closures are
/// shared, so they are `Send + Sync`, and run on the thread of the interpreter calling
/// them, with its GIL held.
///
/// ```
/// use subinterp::{Caller, Error, HostModule};
///
/// let game = HostModule::new("game")
///     .function("add", ["a", "b"], |_: &Caller, (a, b): (i64, i64)| Ok(a + b))
///     .function("spawn", ["kind", "x", "y"], |_: &Caller, (kind, x, y): (String, f64, Option<f64>)| {
///         if kind == "dragon" {
///             return Err(Error::python("game.NotFound", "no dragons here"));
///         }
///         Ok(format!("{kind} at {x},{}", y.unwrap_or(0.0)))
///     })
///     .exception("NotFound", "LookupError")
///     .constant("VERSION", "1.2");
/// ```
#[derive(Clone)]
pub struct HostModule {
    name: String,
    doc: String,
    functions: Vec<HostFunction>,
    exceptions: Vec<(String, String)>,
    constants: Vec<(String, Value)>,
    /// Mistakes found while the module was built, reported when the runtime starts.
    problems: Vec<String>,
    /// Whether the module may replace a standard-library module of its name.
    shadow_stdlib: bool,
}

#[derive(Clone)]
struct HostFunction {
    name: String,
    params: Vec<String>,
    call: NativeFn,
}

impl fmt::Debug for HostModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostModule")
            .field("name", &self.name)
            .field(
                "functions",
                &self.functions.iter().map(|f| &f.name).collect::<Vec<_>>(),
            )
            .field("exceptions", &self.exceptions)
            .finish_non_exhaustive()
    }
}

impl HostModule {
    /// A module to be imported as `name`: a Python identifier (without dots, not a
    /// keyword), unique among the runtime's host modules, and not the name of a module of
    /// the standard library unless [`shadow_stdlib`](Self::shadow_stdlib) says so. A
    /// name, function, parameter, exception or constant that breaks these rules, or one
    /// used twice, is refused with [`Error::InvalidConfig`] when the runtime starts
    /// ([`Runtime::init`](crate::Runtime::init)), before CPython does.
    pub fn new(name: impl Into<String>) -> HostModule {
        HostModule {
            name: name.into(),
            doc: String::new(),
            functions: Vec::new(),
            exceptions: Vec::new(),
            constants: Vec::new(),
            problems: Vec::new(),
            shadow_stdlib: false,
        }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module's docstring.
    pub fn doc(mut self, doc: impl Into<String>) -> Self {
        self.doc = doc.into();
        self
    }

    /// Adds a function `name` with parameters named `params`, each positional or keyword.
    ///
    /// The arguments arrive as `P`: a tuple of one typed value per parameter, converted
    /// through [`Value`] with serde (a parameter of type `Option<T>` may be left out), or
    /// [`Args`] for the raw positional and keyword values (then `params` only documents
    /// them and any arguments are accepted). The result converts back to a Python object
    /// through [`Value`].
    ///
    /// Python code gets `TypeError` naming the parameter for a missing, unexpected,
    /// repeated or mistyped argument. An error the function returns is raised as a Python
    /// exception: [`Error::python`] picks its class (a built-in one such as
    /// `"builtins.KeyError"`, or one this module defines with
    /// [`exception`](Self::exception), as `"game.NotFound"`); an [`Error::Python`] that
    /// came from Python code the function called ([`Caller::call`]) is raised again as it
    /// was, with its type, traceback and cause. A panic becomes `SystemError` with the
    /// panic's message; the interpreter stays usable.
    pub fn function<P, R, F, const N: usize>(
        mut self,
        name: impl Into<String>,
        params: [&str; N],
        f: F,
    ) -> Self
    where
        P: Params,
        R: Serialize,
        F: Fn(&Caller<'_>, P) -> Result<R> + Send + Sync + 'static,
    {
        let name = name.into();
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        if let Some(arity) = P::ARITY.filter(|&a| a != N) {
            self.problems.push(format!(
                "function {name:?} names {N} parameters for {arity} typed arguments"
            ));
        }
        let binding = Binding {
            function: name.clone(),
            params: params.clone(),
        };
        let call: NativeFn = Arc::new(move |py, interp, args| {
            let _in_call = InCall::enter(interp);
            let caller = Caller { py, interp };
            let bound = P::bind(&binding, args)?;
            let result = f(&caller, bound)?;
            // A scalar result is built at once; other data goes through a `Value`.
            match scalar_object(py, &result) {
                Some(obj) => Ok(obj?),
                None => Ok(py.to_object(&to_value(&result)?)?),
            }
        });
        self.functions.push(HostFunction { name, params, call });
        self
    }

    /// Adds an exception class `name` deriving from the built-in exception class `base`
    /// (`"Exception"`, `"LookupError"`, `"ValueError"`...). Python code catches it as
    /// `module.name`; a function raises it by returning
    /// `Error::python("module.name", message)`.
    pub fn exception(mut self, name: impl Into<String>, base: impl Into<String>) -> Self {
        self.exceptions.push((name.into(), base.into()));
        self
    }

    /// Adds a constant: a module attribute holding `value`.
    pub fn constant(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.constants.push((name.into(), value.into()));
        self
    }

    /// Lets the module take the name of a module of Python's standard library
    /// (`sys.stdlib_module_names`), which it then replaces in every interpreter of the
    /// runtime: `import json` gets this module, in the standard library's own imports too.
    /// Without this, such a name is refused when the runtime starts
    /// ([`Error::InvalidConfig`]), so that a host module never hides a standard module by
    /// accident. A module built into CPython itself (`sys.builtin_module_names`: `sys`,
    /// `time`, `_io`...) cannot be replaced, and stays refused.
    pub fn shadow_stdlib(mut self) -> Self {
        self.shadow_stdlib = true;
        self
    }

    /// Checks the names, for the runtime to refuse a module CPython could not import, or
    /// one whose names clash. `builtin` lists the modules built into CPython.
    pub(crate) fn validate(&self, builtin: &[String]) -> Result<()> {
        let refuse = |problem: String| {
            Err(Error::InvalidConfig(format!(
                "host module {:?}: {problem}",
                self.name
            )))
        };
        if let Some(problem) = self.problems.first() {
            return refuse(problem.clone());
        }
        let bad = |what: &str, name: &str| {
            refuse(format!(
                "{what} {name:?} is not a Python identifier (or is a keyword)"
            ))
        };
        if !names::is_identifier(&self.name) {
            return bad("the module name", &self.name);
        }
        if self.name == "subinterp" {
            return refuse("the name is the library's own module".into());
        }
        if builtin.contains(&self.name) {
            return refuse(
                "the name is a module built into CPython (sys.builtin_module_names), which \
                 a host module cannot replace"
                    .into(),
            );
        }
        if names::is_stdlib_module(&self.name) && !self.shadow_stdlib {
            return refuse(
                "the name is a module of Python's standard library, which this module would \
                 replace in every interpreter; choose another name, or call \
                 HostModule::shadow_stdlib() to replace it on purpose"
                    .into(),
            );
        }
        for f in &self.functions {
            if !names::is_identifier(&f.name) {
                return bad("the function name", &f.name);
            }
            if let Some(p) = f.params.iter().find(|p| !names::is_identifier(p)) {
                return bad("the parameter name", p);
            }
            for (i, p) in f.params.iter().enumerate() {
                if f.params[..i].contains(p) {
                    return refuse(format!(
                        "function {:?} names the parameter {p:?} twice",
                        f.name
                    ));
                }
            }
        }
        for (name, base) in &self.exceptions {
            if !names::is_identifier(name) {
                return bad("the exception name", name);
            }
            if !names::is_identifier(base) {
                return bad("the exception base", base);
            }
        }
        for (name, _) in &self.constants {
            if !names::is_identifier(name) {
                return bad("the constant name", name);
            }
        }
        // Functions, exceptions and constants are attributes of one module namespace.
        let mut seen: Vec<(&str, &str)> = Vec::new();
        let attributes = self
            .functions
            .iter()
            .map(|f| ("a function", f.name.as_str()))
            .chain(
                self.exceptions
                    .iter()
                    .map(|(n, _)| ("an exception", n.as_str())),
            )
            .chain(
                self.constants
                    .iter()
                    .map(|(n, _)| ("a constant", n.as_str())),
            );
        for (what, name) in attributes {
            if let Some((first, _)) = seen.iter().find(|(_, n)| *n == name) {
                return refuse(format!(
                    "the name {name:?} is used twice in the module ({first}, then {what})"
                ));
            }
            seen.push((what, name));
        }
        if self.doc.contains('\0') {
            return bad("the docstring", &self.doc);
        }
        Ok(())
    }

    pub(crate) fn to_spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: self.name.clone(),
            doc: self.doc.clone(),
            methods: Vec::new(),
            functions: self
                .functions
                .iter()
                .map(|f| FunctionSpec {
                    name: f.name.clone(),
                    doc: format!("{}({})\n--\n\n", f.name, f.params.join(", ")),
                    call: Arc::clone(&f.call),
                })
                .collect(),
            exceptions: self
                .exceptions
                .iter()
                .map(|(name, base)| ExceptionSpec {
                    name: name.clone(),
                    base: base.clone(),
                    doc: String::new(),
                })
                .collect(),
            classes: Vec::new(),
            constants: self.constants.clone(),
        }
    }
}

/// The interpreter calling a host function: which one it is, the host data attached to
/// it, and access to its Python code.
///
/// A `Caller` lives for one call: its lifetime is the brand of the caller's GIL token, so
/// it cannot be kept, or sent to another thread.
///
/// ```compile_fail
/// use subinterp::{Caller, HostModule};
/// HostModule::new("m").function("f", [], |caller: &Caller, (): ()| {
///     let kept: &'static Caller<'static> = caller;
///     Ok(())
/// });
/// ```
pub struct Caller<'py> {
    py: Python<'py>,
    interp: i64,
}

impl<'py> Caller<'py> {
    /// CPython's id of the calling interpreter.
    pub fn interpreter_id(&self) -> i64 {
        self.interp
    }

    /// The host data attached to the calling interpreter
    /// ([`InterpreterConfig::host_data`](crate::InterpreterConfig::host_data)), if it is a
    /// `T`.
    pub fn data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        host_data(self.py).and_then(|data| data.downcast::<T>().ok())
    }

    /// The GIL token of the calling interpreter, for low-level access.
    pub fn python(&self) -> Python<'py> {
        self.py
    }

    /// Calls the Python function `target` (`"module:qualname"`) of the calling
    /// interpreter and copies its result out. An exception it raises is an
    /// [`Error::Python`]; returned by the host function, it reaches the Python caller as
    /// the very exception raised.
    pub fn call(&self, target: &str, args: impl Into<Args>) -> Result<Value> {
        call_target(self.py, &Target::parse(target)?, &args.into())
    }

    /// Runs `f` with the calling interpreter's GIL released, so its other Python threads
    /// run meanwhile. `f` must not use the interpreter.
    pub fn allow_threads<T, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        self.py.allow_threads(f)
    }
}

impl Caller<'_> {
    /// Runs a blocking part of a host function with the calling interpreter's GIL
    /// released — its other Python threads run meanwhile — and interruptible: a pool
    /// deadline, a cancellation or [`InterruptHandle::interrupt`](crate::InterruptHandle)
    /// reaches the [`Interrupt`] that `f` gets, at once. `f` waits through it
    /// ([`Interrupt::sleep`], [`Interrupt::recv`]) or polls it ([`Interrupt::check`]).
    ///
    /// When `f` saw the interrupt, the result is [`Error::Timeout`] or
    /// [`Error::Cancelled`] (raised in Python as `TimeoutError` or `KeyboardInterrupt`). An interrupt that arrives after `f` last
    /// looked is not lost: `f`'s result is returned and the interrupt raised at the next
    /// bytecode boundary.
    pub fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(&Interrupt) -> Result<T> + Send,
    {
        let state = wait::lookup(self.py);
        let (result, late) = self.py.allow_threads(move || {
            let slot = state.as_ref().map(|s| s.enter_wait());
            let interrupt = Interrupt {
                slot: slot.clone(),
                state: state.clone(),
                seen: Cell::new(None),
            };
            let result = f(&interrupt);
            let late = match (&state, &slot) {
                (Some(state), Some(slot)) => state.leave_wait(slot),
                _ => None,
            };
            match interrupt.seen.get() {
                Some(reason) => (Err(Error::interrupted(reason)), None),
                None => (result, late),
            }
        });
        if let Some(reason) = late {
            crate::raw::lifecycle::raise_soon(self.py, reason);
        }
        result
    }
}

/// The interrupt of a blocking host function ([`Caller::blocking`]): how it learns that
/// its call was interrupted, and waits that end when it is.
pub struct Interrupt {
    slot: Option<Arc<WaitSlot>>,
    state: Option<Arc<InterruptState>>,
    seen: Cell<Option<InterruptReason>>,
}

impl Interrupt {
    /// Why the call was interrupted, if it was.
    pub fn reason(&self) -> Option<InterruptReason> {
        if self.seen.get().is_none() {
            self.seen.set(self.slot.as_ref().and_then(|s| s.take()));
        }
        self.seen.get()
    }

    /// [`Error::Timeout`] or [`Error::Cancelled`] once the call is interrupted.
    pub fn check(&self) -> Result<()> {
        match self.reason() {
            Some(reason) => Err(Error::interrupted(reason)),
            None => Ok(()),
        }
    }

    /// Sleeps for `duration`, or less: until the call is interrupted
    /// ([`Error::Timeout`] or [`Error::Cancelled`]).
    pub fn sleep(&self, duration: Duration) -> Result<()> {
        let deadline = wait::deadline_after(Some(duration));
        loop {
            self.check()?;
            let signal = match &self.slot {
                Some(slot) => Arc::clone(slot.signal()),
                // Not an interpreter of this crate: nothing can interrupt it.
                None => {
                    std::thread::sleep(duration);
                    return Ok(());
                }
            };
            if !signal.wait(deadline) {
                return self.check();
            }
        }
    }

    /// Receives from `channel`, waiting at most `timeout` (`None`: without limit) or
    /// until the call is interrupted. Fails with [`Error::Timeout`],
    /// [`Error::ChannelClosed`] (closed and drained) or the interrupt's
    /// [`Error::Timeout`] or [`Error::Cancelled`].
    pub fn recv(&self, channel: &Channel, timeout: Option<Duration>) -> Result<Message> {
        self.check()?;
        // An interrupt that arrives with a message also reached this call's own wait: the
        // message is returned and the interrupt raised after the call.
        let mut late = None;
        let result = channel.recv_with(
            wait::deadline_after(timeout),
            self.state.as_deref(),
            &mut late,
        );
        if let Err(Stop::Interrupted(reason)) = &result {
            self.seen.set(Some(*reason));
        }
        result.map(Message::for_rust).map_err(Stop::into_error)
    }
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("reason", &self.seen.get())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("interpreter", &self.interpreter_id())
            .finish()
    }
}

/// The arguments of a host function, converted from the Python call: `()`, a tuple of up
/// to eight typed values (one per parameter, each `serde::de::DeserializeOwned`), a
/// [`Kwargs`] struct, or [`Args`]. Implemented by the crate only.
pub trait Params: sealed::Bind + 'static {}

impl<T: sealed::Bind + 'static> Params for T {}

mod sealed {
    use super::{Binding, FastArgs, Result};

    /// Conversion of a call's arguments. Sealed: its types are the crate's own, so the
    /// trait cannot be named or implemented outside it.
    #[allow(private_interfaces)]
    pub trait Bind: Sized {
        /// How many parameters; `None` for any arguments.
        const ARITY: Option<usize>;
        fn bind(binding: &Binding, args: &FastArgs<'_, '_>) -> Result<Self>;
    }
}

use sealed::Bind;

/// The parameters of a host function.
pub(crate) struct Binding {
    function: String,
    params: Vec<String>,
}

impl Binding {
    fn type_error(&self, message: String) -> Error {
        Error::python(
            "builtins.TypeError",
            format!("{}() {message}", self.function),
        )
    }

    /// One object per parameter, by position or keyword; `None` where left out.
    fn slots<'py, const N: usize>(
        &self,
        args: &FastArgs<'_, 'py>,
    ) -> Result<[Option<PyObj<'py>>; N]> {
        let mut slots: [Option<PyObj<'py>>; N] = std::array::from_fn(|_| None);
        self.fill(args, &mut slots)?;
        Ok(slots)
    }

    /// Puts each argument in the slot of its parameter.
    fn fill<'py>(&self, args: &FastArgs<'_, 'py>, slots: &mut [Option<PyObj<'py>>]) -> Result<()> {
        params::bind(&self.function, &self.params, args, slots)
    }

    fn convert(&self, index: usize, obj: &PyObj<'_>) -> Result<Value> {
        params::plain_value(&self.function, &self.params[index], obj)
    }

    /// Argument `index` as a `T` ([`params::Plain`]).
    fn typed<T: DeserializeOwned + 'static>(
        &self,
        index: usize,
        obj: Option<PyObj<'_>>,
    ) -> Result<T> {
        Plain::<T>::read(&self.function, &self.params[index], obj).map(|plain| plain.0)
    }
}

#[allow(private_interfaces)]
impl Bind for Args {
    const ARITY: Option<usize> = None;
    fn bind(binding: &Binding, args: &FastArgs<'_, '_>) -> Result<Self> {
        let mut out = Args::new();
        for i in 0..args.positional_len() {
            if let Some(obj) = args.positional(i) {
                out.positional.push(obj.to_value().map_err(|e| {
                    binding.type_error(format!("positional argument {}: {e}", i + 1))
                })?);
            }
        }
        for k in 0..args.keyword_len() {
            let name = args.keyword_name(k).unwrap_or("").to_owned();
            if let Some(obj) = args.keyword_value(k) {
                let value = obj
                    .to_value()
                    .map_err(|e| binding.type_error(format!("argument '{name}': {e}")))?;
                out.keywords.push((name, value));
            }
        }
        Ok(out)
    }
}

#[allow(private_interfaces)]
impl Bind for () {
    const ARITY: Option<usize> = Some(0);
    fn bind(binding: &Binding, args: &FastArgs<'_, '_>) -> Result<Self> {
        if args.positional_len() == 0 && args.keyword_len() == 0 {
            return Ok(());
        }
        binding.slots::<0>(args).map(drop)
    }
}

/// Arguments bound by name into a `#[derive(Deserialize)]` struct: each declared
/// parameter, passed by position or keyword, is the struct's field of that name. A
/// parameter left out is absent from the struct's input (fine for an `Option` field or
/// one with `#[serde(default)]`); a mistyped one is a `TypeError` naming the field.
///
/// ```
/// use serde::Deserialize;
/// use subinterp::{Caller, HostModule, Kwargs};
///
/// #[derive(Deserialize)]
/// struct Spawn {
///     kind: String,
///     x: f64,
///     #[serde(default)]
///     hidden: bool,
/// }
///
/// let game = HostModule::new("game").function(
///     "spawn",
///     ["kind", "x", "hidden"],
///     |_: &Caller, Kwargs(spawn): Kwargs<Spawn>| Ok(format!("{} at {}{}", spawn.kind, spawn.x,
///         if spawn.hidden { " (hidden)" } else { "" })),
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Kwargs<T>(pub T);

#[allow(private_interfaces)]
impl<T: DeserializeOwned + 'static> Bind for Kwargs<T> {
    const ARITY: Option<usize> = None;
    fn bind(binding: &Binding, args: &FastArgs<'_, '_>) -> Result<Self> {
        let mut slots: Vec<Option<PyObj<'_>>> = vec![None; binding.params.len()];
        binding.fill(args, &mut slots)?;
        let mut entries = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            if let Some(obj) = slot {
                entries.push((
                    Value::from(binding.params[i].as_str()),
                    binding.convert(i, &obj)?,
                ));
            }
        }
        from_value(Value::Dict(entries))
            .map(Kwargs)
            .map_err(|err| binding.type_error(format!("arguments: {err}")))
    }
}

macro_rules! params_tuple {
    ($n:literal: $($t:ident $i:tt),+) => {
        #[allow(private_interfaces)]
        impl<$($t: DeserializeOwned + 'static),+> Bind for ($($t,)+) {
            const ARITY: Option<usize> = Some($n);
            fn bind(binding: &Binding, args: &FastArgs<'_, '_>) -> Result<Self> {
                if args.keyword_len() == 0 && args.positional_len() == $n {
                    // Every parameter passed by position, in order: nothing to match.
                    return Ok(($(
                        match args.positional_ref($i).and_then(params::direct::<$t>) {
                            Some(value) => value,
                            None => binding.typed::<$t>($i, args.positional($i))?,
                        },
                    )+));
                }
                let mut slots = binding.slots::<$n>(args)?.into_iter();
                Ok(($(binding.typed::<$t>($i, slots.next().flatten())?,)+))
            }
        }
    };
}
params_tuple!(1: A 0);
params_tuple!(2: A 0, B 1);
params_tuple!(3: A 0, B 1, C 2);
params_tuple!(4: A 0, B 1, C 2, D 3);
params_tuple!(5: A 0, B 1, C 2, D 3, E 4);
params_tuple!(6: A 0, B 1, C 2, D 3, E 4, G 5);
params_tuple!(7: A 0, B 1, C 2, D 3, E 4, G 5, H 6);
params_tuple!(8: A 0, B 1, C 2, D 3, E 4, G 5, H 6, I 7);

// ---------------------------------------------------------------- host data

/// The key of the host data in an interpreter's own dict (`PyInterpreterState_GetDict`).
const HOST_DATA_KEY: &str = "subinterp.host_data";

/// What the interpreter's dict holds: the host data, in a capsule.
struct HostData(Arc<dyn Any + Send + Sync>);

/// Attaches `data` to the interpreter of `py`, for [`Caller::data`].
pub(crate) fn attach_data(py: Python<'_>, data: Arc<dyn Any + Send + Sync>) -> Result<()> {
    let capsule = callback::capsule(py, HostData(data))?;
    py.interpreter_dict()?
        .set_item(&py.str(HOST_DATA_KEY)?, &capsule)
}

fn host_data(py: Python<'_>) -> Option<Arc<dyn Any + Send + Sync>> {
    let dict = py.interpreter_dict().ok()?;
    let capsule = dict.dict_get(&py.str(HOST_DATA_KEY).ok()?)?;
    callback::capsule_value::<HostData>(&capsule).map(|d| Arc::clone(&d.0))
}

// ---------------------------------------------------------------- re-entrancy

thread_local! {
    /// The interpreter whose host functions are running innermost on this thread, and
    /// how many of its calls are nested there (0: none).
    static CALLS: Cell<(i64, usize)> = const { Cell::new((0, 0)) };
    /// The same for the interpreters further out, when calls of several are nested on
    /// one thread (rare: each interpreter runs on its own thread), innermost last.
    static OUTER_CALLS: RefCell<Vec<(i64, usize)>> = const { RefCell::new(Vec::new()) };
}

/// A host function call in progress on this thread.
struct InCall {
    /// Whether the call began a nesting of a different interpreter's calls.
    switched: bool,
}

impl InCall {
    fn enter(interp: i64) -> InCall {
        let (current, n) = CALLS.with(Cell::get);
        let switched = n > 0 && current != interp;
        if switched {
            OUTER_CALLS.with(|outer| outer.borrow_mut().push((current, n)));
            CALLS.with(|c| c.set((interp, 1)));
        } else {
            CALLS.with(|c| c.set((interp, n + 1)));
        }
        InCall { switched }
    }
}

impl Drop for InCall {
    fn drop(&mut self) {
        if self.switched {
            let outer = OUTER_CALLS.with(|outer| outer.borrow_mut().pop());
            CALLS.with(|c| c.set(outer.unwrap_or((0, 0))));
        } else {
            CALLS.with(|c| {
                let (interp, n) = c.get();
                c.set((interp, n.saturating_sub(1)));
            });
        }
    }
}

/// True if this thread is running a host function called by interpreter `interp`: an
/// operation on `interp` from here would wait for the call to end.
pub(crate) fn calling_from(interp: i64) -> bool {
    let (current, n) = CALLS.with(Cell::get);
    (n > 0 && current == interp)
        || OUTER_CALLS.with(|outer| outer.borrow().iter().any(|(i, _)| *i == interp))
}
