"""How a call reaches a worker: the set-up code that makes an interpreter a worker, and
a callable with its arguments as the worker's runner takes them (found by module and
name, or pickled; plain data as it is)."""

from __future__ import annotations

import functools
import io
import os
import pickle
import sys
import types
from collections.abc import Callable, Mapping

from . import _native
# Objects of the main script come back from workers as __mp_main__'s (the name it is
# loaded under there); multiprocessing makes the same alias.
if "__main__" in sys.modules and _native.id() == 0:
    sys.modules.setdefault("__mp_main__", sys.modules["__main__"])

WORKER = "__import__('sys').modules['_subinterp_worker']"
RUN = "_subinterp_worker:_subinterp_run"
RUN_CHUNK = "_subinterp_worker:_subinterp_run_chunk"


GUARD_RULES = ("chdir", "env", "signals", "fork", "subprocess", "write", "connect")


def guard_settings(guards, allow_write) -> dict:
    """The ``guards`` and ``allow_write`` of a pool's or an interpreter's settings."""
    if guards is None:
        spec = ""
    elif isinstance(guards, str):
        spec = guards
    elif isinstance(guards, Mapping):
        spec = ",".join(f"{rule}={action}" for rule, action in guards.items())
    else:
        spec = ",".join(guards)
    dirs = [os.fsdecode(os.path.abspath(os.fspath(d))) for d in (allow_write or ())]
    return {"guards": spec, "allow_write": dirs}


def reference(fn) -> tuple[str, str] | None:
    """The module and qualified name a worker finds ``fn`` by; None if ``fn`` must be
    pickled instead (a bound method, a ``functools.partial``, a callable instance, a
    method descriptor such as ``str.upper``); a ``TypeError`` for what a worker can get
    neither way (lambdas, closures, nested functions)."""
    if not callable(fn):
        raise TypeError(f"subinterp.Pool runs callables; {fn!r} is not callable")
    if not isinstance(fn, (types.FunctionType, type, types.BuiltinFunctionType, Named)):
        return None
    if isinstance(fn, types.BuiltinFunctionType) and not (
        fn.__self__ is None or isinstance(fn.__self__, types.ModuleType)
    ):
        return None  # a built-in method bound to an object: pickled with it
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        if isinstance(fn, types.FunctionType):
            raise TypeError(
                f"subinterp.Pool runs functions found by module and name; "
                f"{fn!r} has no module and qualified name"
            )
        return None
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise TypeError(
            f"subinterp.Pool cannot run {qualname!r} from {module!r}: lambdas, closures and "
            f"nested functions cannot be found by name in another interpreter; define it at "
            f"the top level of a module"
        )
    if module == "__main__" and not _main_path():
        raise TypeError(
            f"subinterp.Pool cannot run {qualname!r}: it is defined in __main__, which has "
            f"no file to load in the workers (interactive session); put it in a module"
        )
    return module, qualname


def pickled_call(fn, *parts) -> bytes:
    """``(fn, *parts)`` pickled for a worker, with a ``TypeError`` saying which part
    cannot be sent."""
    try:
        return pickle.dumps((fn, *parts), protocol=5)
    except Exception as exc:
        try:
            pickle.dumps(fn)
        except Exception:
            raise TypeError(
                f"subinterp.Pool cannot send {fn!r} to a worker: {exc}; lambdas, closures "
                f"and nested functions cannot be found by name in another interpreter"
            ) from exc
        raise TypeError(f"subinterp: an argument cannot be sent to a worker: {exc}") from exc


_MAIN_PATHS: dict[str, str | None] = {}


def _main_path() -> str | None:
    """The main script's absolute path, if it has a file (checked once per path)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str):
        return None
    if path not in _MAIN_PATHS:
        _MAIN_PATHS[path] = os.path.abspath(path) if os.path.exists(path) else None
    return _MAIN_PATHS[path]


def _main_name() -> str | None:
    """The module name the main script was run as (``python -m NAME``), if any: workers
    import it by that name, as multiprocessing's spawn does, so that its relative imports
    work."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if not isinstance(name, str) or name == "__main__" or name.endswith(".__main__"):
        return None
    return name


def _cached_code(path: str, stat: os.stat_result) -> bytes | None:
    """The marshalled code of the source file ``path`` from its bytecode cache, if that
    is valid for ``stat`` (a timestamp-checked ``.pyc`` of this Python): read, not
    imported, so neither the module nor ``importlib.util`` is loaded for it."""
    external = sys.modules["_frozen_importlib_external"]
    try:
        with open(external.cache_from_source(path), "rb") as file:
            data = file.read()
    except (OSError, ValueError, NotImplementedError):
        return None
    header = (
        external.MAGIC_NUMBER,
        (0).to_bytes(4, "little"),
        (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
        (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little"),
    )
    if len(data) <= 16 or data[:16] != b"".join(header):
        return None
    return data[16:]


@functools.cache
def _worker_code() -> bytes:
    """The code of ``_worker.py``, marshalled: taken once from the package's bytecode
    cache (compiled here if there is none), so that each worker loads it with ``marshal``
    (the same Python) instead of compiling its source again."""
    path = _worker_file()
    try:
        cached = _cached_code(path, os.stat(path))
    except OSError:
        cached = None
    if cached is not None:
        return cached
    import marshal

    from . import _worker

    get_code = getattr(getattr(_worker.__spec__, "loader", None), "get_code", None)
    code = get_code(_worker.__name__) if get_code is not None else None
    if code is None:
        with open(_worker.__file__, encoding="utf-8") as file:
            code = compile(file.read(), _worker.__file__, "exec")
    return marshal.dumps(code)


def _worker_file() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker.py")


@functools.cache
def _share_worker_code() -> None:
    """Hands the runner's code to the workers (once a process): they read it with
    ``_shared_bytes``, which costs a new interpreter less than parsing it as a literal of
    the set-up code."""
    _native._share_bytes("worker", _worker_code())


def main_code_name(path: str, mtime_ns: int, size: int) -> str:
    """The name the main script's code is shared under: a worker that finds the file
    changed (by its time and size, as the bytecode cache is checked) finds no code. The
    worker's ``_subinterp_load_main`` makes the same name (it cannot import this module)."""
    return f"main:{mtime_ns}:{size}:{path}"


_main_shared: set[str] = set()


def share_main_code() -> None:
    """Gives the workers the code of the main script, so that each loads it with
    ``marshal`` instead of reading and compiling it: from its bytecode cache when that is
    valid, else compiled by the engine, as a worker's loader would compile it. A worker
    that finds none (the file has changed since) loads the file itself, to the same
    module. Never fails: a script that cannot be read or compiled here is left to the
    workers, which report why to the tasks that need it."""
    path = _main_path()
    if path is None or _main_name() is not None:
        return
    try:
        stat = os.stat(path)
        name = main_code_name(path, stat.st_mtime_ns, stat.st_size)
        if name in _main_shared:
            return
        cached = _cached_code(path, stat)
        if cached is not None:
            _native._share_bytes(name, cached)
        else:
            # Compiled by the engine: builtins.compile would first build the ast
            # module's types (about 2 ms) in a program that may never need them.
            with io.open_code(path) as file:
                _native._share_compiled(name, file.read(), path)
    except Exception:
        return
    _main_shared.add(name)


def share_code() -> None:
    """Shares the runner's and the main script's code with the workers (see
    ``_share_worker_code`` and ``share_main_code``), before they start: a worker that
    finds none loads the files itself, which costs it more."""
    _share_worker_code()
    share_main_code()


def setup_code() -> list[str]:
    """Python statements that make a new interpreter a worker: ``os._exit`` refused (it
    would end this whole process), no reading of this process's stdin (a worker gets an
    empty one, as multiprocessing's children get ``/dev/null``), this interpreter's
    ``sys.path``, the runner module, the main script. What it loads from shared code
    (``share_code``) it loads from the files when that is not shared yet."""
    code = [
        _native._exit_guard(),
        "import sys",
        f"sys.stdin = open({os.devnull!r}, encoding='utf-8')",
        f"sys.path[:] = {[p for p in sys.path if isinstance(p, str)]!r}",
        # The runner: as shared by this process, or in a worker process (whose
        # `subinterp` is the package, not this process's engine) from its file.
        "_s = getattr(__import__('subinterp'), '_shared_bytes', None)",
        "_c = _s('worker') if _s is not None else None",
        "if _c is not None:",
        "    _w = type(sys)('_subinterp_worker')",
        "    exec(__import__('marshal').loads(_c), _w.__dict__)",
        "else:",
        "    _x = sys.modules['_frozen_importlib_external'].spec_from_file_location(",
        f"        '_subinterp_worker', {_worker_file()!r})",
        "    _w = sys.modules['_frozen_importlib'].module_from_spec(_x)",
        "    _x.loader.exec_module(_w)",
        "del _s, _c",
        "sys.modules['_subinterp_worker'] = _w",
        f"_w._subinterp_stand_in(__import__('subinterp'), {os.path.dirname(__file__)!r})",
        "_w._subinterp_compile_natively(__import__('subinterp'))",
    ]
    name = _main_name()
    main = _main_path()
    if name is not None:
        code.append(f"_w._subinterp_load_main(name={name!r})")
    elif main is not None:
        code.append(f"_w._subinterp_load_main({main!r})")
    return code


def encode_call(
    fn, args, kwargs
) -> tuple[tuple, dict, Callable[[], tuple[tuple, dict]] | None]:
    """The runner's arguments for calling ``fn(*args, **kwargs)`` in a worker, and how to
    make them again pickled: the engine writes plain data as it is, straight from the
    objects, and says when they are not plain data (then the pickled form is sent)."""
    ref = reference(fn)
    kwargs = {} if kwargs is None else dict(kwargs)
    if ref is None:
        return (None, None, pickled_call(fn, tuple(args), kwargs)), {}, None
    module, qualname = ref

    def pickled() -> tuple[tuple, dict]:
        return (module, qualname, dumps_out_of_band((tuple(args), kwargs))), {}

    return (module, qualname, None, *args), kwargs, pickled


def dumps(obj) -> bytes:
    """``obj`` pickled for a worker; what cannot be pickled is a ``TypeError`` here."""
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise TypeError(f"subinterp: an argument cannot be sent to a worker: {exc}") from exc


def dumps_out_of_band(obj) -> bytes | tuple[bytes, list]:
    """``obj`` pickled for a worker as ``dumps`` does, with the large buffers it holds
    (a numpy array's data) out of band: ``(pickle, buffers)``, the buffers as
    ``pickle.PickleBuffer`` objects, which the engine writes as bytearrays beside the
    pickle (the data is not copied into the pickle); the pickle alone when there are
    none."""
    from ._worker import _subinterp_out_of_band

    buffers: list = []
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=_subinterp_out_of_band(buffers))
    except Exception as exc:
        raise TypeError(f"subinterp: an argument cannot be sent to a worker: {exc}") from exc
    return (data, buffers) if buffers else data



class Named:
    """A function named by module and qualified name, for ``Interpreter.call``."""

    def __init__(self, module: str, qualname: str):
        self.__module__ = module
        self.__qualname__ = qualname

    def __call__(self, *args, **kwargs):  # never called here
        raise TypeError("a reference to a function of another interpreter")

