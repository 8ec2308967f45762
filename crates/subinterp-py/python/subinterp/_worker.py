"""The code each worker interpreter runs: calling a task's function by reference.

Its source is sent to the workers as part of their set-up code (workers cannot import
the package: their ``subinterp`` module is the native one) and runs there as the module
``_subinterp_worker``, defining everything it needs at its top level. Code that runs as a
task reaches it as ``sys.modules["_subinterp_worker"]``: ``_subinterp_call(fn, args,
kwargs)`` calls a function and encodes its outcome as a task's reply, for a task that
wraps another one (``subinterp.dask`` times Dask's tasks with it).
"""

import sys as _sys


def _subinterp_loads(payload):
    """``payload`` unpickled: a pickle, or a pickle and its out-of-band buffers.
    ``pickle`` is imported on first use: a fresh interpreter takes milliseconds to import
    it (and ``re``, ``struct``...), which a task of plain data never needs."""
    import pickle

    if type(payload) is tuple:
        return pickle.loads(payload[0], buffers=payload[1])
    return pickle.loads(payload)


def _subinterp_resolve(module, qualname):
    if module in ("__main__", "__mp_main__"):
        if _subinterp_main_error is not None:
            raise ImportError(_subinterp_main_error)
        module = "__mp_main__"
    # What importlib.import_module does for an absolute name, without importing importlib.
    obj = _sys.modules.get(module)
    if obj is None:
        __import__(module)
        obj = _sys.modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _subinterp_injected(exc):
    """Whether ``exc`` may be how the pool stops a task (a plain ``KeyboardInterrupt``,
    or ``TimeoutError`` at a deadline), or an isolated interpreter's refusal of an
    extension module (the pool re-runs the task in a worker process), which must reach
    the pool as raised; the task's other exceptions, ``SystemExit`` and subclasses of
    ``KeyboardInterrupt`` included, are reported to the caller by this runner."""
    return type(exc) is KeyboardInterrupt or type(exc) is TimeoutError or _subinterp_refused(exc)


# The messages of a refused extension module: set by the pool's set-up code (the core's
# one list).
_SUBINTERP_REFUSALS = ()


def _subinterp_refused(exc):
    """Whether ``exc`` or its chain is an ``ImportError`` refusing an extension module."""
    stack = [exc]
    seen = 0
    while stack and seen < 64:
        exc = stack.pop()
        seen += 1
        if isinstance(exc, ImportError):
            text = str(exc)
            if any(pattern in text for pattern in _SUBINTERP_REFUSALS):
                return True
        stack.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    return False


def _subinterp_run(module, qualname, payload, *args, **kwargs):
    """Calls ``module.qualname`` (or, with no module, the callable pickled with its
    arguments in ``payload``); returns what ``_subinterp_call`` returns."""
    try:
        if module is None:
            fn, args, kwargs = _subinterp_loads(payload)
        else:
            if payload is not None:
                args, kwargs = _subinterp_loads(payload)
            fn = _subinterp_resolve(module, qualname)
    except BaseException as exc:  # noqa: B902 - reported to the caller whole
        if _subinterp_injected(exc):
            raise
        return _subinterp_failure(_subinterp_main_failure(exc))
    return _subinterp_call(fn, args, kwargs)


def _subinterp_initialize(module, qualname, payload):
    """Runs a pool's ``initializer``: by name with the pickled ``initargs``, or pickled
    with them (no module)."""
    import pickle

    if module is None:
        fn, args = pickle.loads(payload)
    else:
        fn, args = _subinterp_resolve(module, qualname), pickle.loads(payload)
    fn(*args)


def _subinterp_main_failure(exc):
    """What unpickling a callable of the main script failed with, when the main script
    could not be loaded here: the reason it could not."""
    if _subinterp_main_error is not None and isinstance(exc, AttributeError):
        if "__mp_main__" in str(exc) or "'__main__'" in str(exc):
            return ImportError(_subinterp_main_error)
    return exc


def _subinterp_call(fn, args, kwargs, pickled=False):
    """Calls ``fn``; returns ``(0, result)``, or ``(2, pickled exception or None, type
    name, message, traceback)`` for an exception of the function. Deadlines and
    cancellations (``TimeoutError``, ``KeyboardInterrupt`` injected by the pool) pass
    through. A result that is not plain data is pickled by ``_subinterp_unplain`` (the
    engine calls it when it finds so while writing the reply): ``(1, pickled result)``;
    with ``pickled``, every result is, at once (for a reply inside another reply)."""
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B902 - reported to the caller whole
        if _subinterp_injected(exc):
            raise
        return _subinterp_failure(exc)
    if pickled:
        return _subinterp_unplain((0, result))
    return (0, result)


def _subinterp_unplain(reply):
    """A reply of ``_subinterp_call`` or ``_subinterp_run_chunk`` whose value is not
    plain data (the engine found so while writing it), with that value pickled; or the
    failure to pickle it."""
    import pickle

    if type(reply) is list:  # a chunk: [(0, values), failure]
        (_, values), failure = reply
        try:
            return [_subinterp_pickled(values), failure]
        except Exception as exc:
            error = TypeError(f"a result cannot be sent back: {exc}")
            return [(0, []), failure or _subinterp_failure(error)]
    _, result = reply
    try:
        return _subinterp_pickled(result)
    except Exception as exc:
        return _subinterp_failure(
            TypeError(f"the result ({type(result).__qualname__}) cannot be sent back: {exc}")
        )


def _subinterp_pickled(value):
    """``(1, pickle)``, or ``(1, pickle, buffers)`` with the large contiguous buffers
    of ``value`` (a numpy array's data) out of band, as ``pickle.PickleBuffer`` objects
    the engine writes beside the pickle, not copied into it."""
    import pickle

    buffers = []
    data = pickle.dumps(value, protocol=5, buffer_callback=_subinterp_out_of_band(buffers))
    return (1, data, buffers) if buffers else (1, data)


def _subinterp_out_of_band(buffers):
    """A ``buffer_callback`` for ``pickle.dumps`` that keeps contiguous buffers out of
    band in ``buffers`` and leaves the others in the pickle."""

    def callback(buffer):
        try:
            buffer.raw()
        except (ValueError, BufferError):
            return True  # not contiguous: in band
        buffers.append(buffer)
        return False

    return callback


def _subinterp_failure(exc):
    import pickle
    import traceback

    # The traceback starts at the task's own frames, not the runner's.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == _SUBINTERP_FILE:
        tb = tb.tb_next
    # Without the exception's own last lines: the caller shows them when it raises the
    # exception, and a long message (numpy's refusal) would be printed twice.
    shown = traceback.TracebackException(type(exc), exc, tb)
    lines = list(shown.format())
    own = len(list(shown.format_exception_only()))
    text = "".join(lines[: len(lines) - own] if own < len(lines) else lines)
    try:
        pickled = pickle.dumps(exc)
    except Exception:
        pickled = None
    kind = type(exc)
    try:
        message = str(exc)
    except Exception:
        message = "<exception str() failed>"
    return (2, pickled, f"{kind.__module__}.{kind.__qualname__}", message, text)


_SUBINTERP_FILE = _subinterp_failure.__code__.co_filename


def _subinterp_run_chunk(module, qualname, payload, items, star=True):
    """Calls the function on each argument tuple of ``items`` (a map chunk; each item
    is the one argument when not ``star``), up to the first exception; returns
    ``[values, failure]``: the values as ``_subinterp_call`` encodes a result, and the
    exception as it encodes one (or None)."""
    try:
        if module is None:
            fn, items = _subinterp_loads(payload)
        else:
            if payload is not None:
                items = _subinterp_loads(payload)
            fn = _subinterp_resolve(module, qualname)
    except BaseException as exc:  # noqa: B902 - reported to the caller whole
        if _subinterp_injected(exc):
            raise
        return [(0, []), _subinterp_failure(_subinterp_main_failure(exc))]
    values = []
    failure = None
    try:
        if star:
            for args in items:
                values.append(fn(*args))
        else:
            for arg in items:
                values.append(fn(arg))
    except BaseException as exc:  # noqa: B902 - reported to the caller whole
        if _subinterp_injected(exc):
            raise
        failure = _subinterp_failure(exc)
    return [(0, values), failure]


def _subinterp_stand_in(native, package_dir):
    """Lets a main script written for the caller load in a worker: there ``subinterp``
    is the native module, so the package's main-interpreter API (``from subinterp import
    Pool``, ``import subinterp.dask``) gets stand-ins that say where it works."""

    def refuse(name):
        def refused(*args, **kwargs):
            raise RuntimeError(
                f"subinterp.{name} is only available in the main interpreter, "
                "not in a pool worker or an Interpreter"
            )

        return refused

    for name in ("Pool", "Interpreter"):
        if not hasattr(native, name):
            setattr(native, name, type(name, (), {"__init__": refuse(name)}))
    if not hasattr(native, "check"):
        native.check = refuse("check")
    if not hasattr(native, "RemoteError"):
        native.RemoteError = type("RemoteError", (Exception,), {})
    native._native = native
    native.__path__ = [package_dir]


def _subinterp_compile_natively(native):
    """Makes this worker's imports from source compile with the engine's ``compile``: for
    the one call importlib makes (``source_to_code``), it gives the code
    ``builtins.compile`` gives without first building the ``ast`` module's types (about
    2 ms in each new interpreter), for a module with no bytecode cache
    (``PYTHONDONTWRITEBYTECODE``, a read-only directory); any other call is
    ``builtins.compile``'s. It is a global of importlib's ``_bootstrap_external`` only,
    which looks ``compile`` up there first: importlib's frames and tracebacks are
    unchanged."""
    compile_source = getattr(native, "_compile", None)
    external = _sys.modules.get("_frozen_importlib_external")
    if compile_source is not None and external is not None:
        external.compile = compile_source


_subinterp_main_error = None


def _subinterp_load_main(path=None, name=None):
    """Loads the caller's main script as ``__mp_main__`` (code under ``if __name__ ==
    "__main__":`` does not run): by module ``name`` when it was run with ``python -m``
    (as multiprocessing's spawn does, so that its relative imports work), else from its
    ``path``; and makes it what ``__main__`` means for pickle. If it cannot be loaded here
    (it imports a module that refuses isolated interpreters, say), only the tasks that
    need it fail, with that error."""
    global _subinterp_main_error
    try:
        if name is not None:
            import runpy

            module = type(_sys)("__mp_main__")
            _sys.modules["__mp_main__"] = module
            module.__dict__.update(runpy.run_module(name, run_name="__mp_main__", alter_sys=True))
        else:
            # importlib.util's own functions, from the modules it takes them from (always
            # loaded): importing importlib.util would import threading and types too.
            external = _sys.modules["_frozen_importlib_external"]
            spec = external.spec_from_file_location("__mp_main__", path)
            module = _sys.modules["_frozen_importlib"].module_from_spec(spec)
            _sys.modules["__mp_main__"] = module
            # The code the caller took from the script as this loader would (see
            # share_main_code), if it has given it yet and the file is unchanged; else
            # the loader reads the file.
            shared = getattr(_sys.modules.get("subinterp"), "_shared_bytes", None)
            code = None
            if shared is not None:
                stat = external._path_stat(path)
                # The name `_calls.main_code_name` gives.
                code = shared(f"main:{stat.st_mtime_ns}:{stat.st_size}:{path}")
            if code is None:
                spec.loader.exec_module(module)
            else:
                exec(__import__("marshal").loads(code), module.__dict__)
    except BaseException as exc:  # noqa: B902 - kept for the tasks that need it
        if isinstance(exc, KeyboardInterrupt):
            raise
        _sys.modules.pop("__mp_main__", None)
        _subinterp_main_error = (
            f"the main script {name or path} cannot be loaded in a worker: "
            f"{type(exc).__name__}: {exc}"
        )
        return
    # Set again: importing multiprocessing while the script loads points __mp_main__
    # at the worker's own __main__.
    _sys.modules["__main__"] = _sys.modules["__mp_main__"] = module
