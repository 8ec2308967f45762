"""Pure-Python work on every core: pools of isolated CPython subinterpreters.

``subinterp.Pool`` is a ``concurrent.futures.Executor`` whose workers are isolated
interpreters of this process, each with its own GIL, running in parallel. Tasks can have
deadlines that stop them; plain data (None, bool, int, float, str, bytes, and lists,
tuples and dicts of them) crosses without pickling. ``subinterp.channel`` and
``subinterp.buffer`` work between this interpreter and the workers.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import itertools
import os
import pickle
import sys
import threading
import types
import warnings
import weakref
from pathlib import Path

from . import _native
from ._worker import _subinterp_plain as _plain
from ._native import (  # noqa: F401 - re-exported
    Buffer,
    Channel,
    ChannelClosed,
    ChannelEmpty,
    ChannelFull,
    ReceiveError,
    buffer,
    channel,
    id,
)

__all__ = [
    "Buffer",
    "Channel",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelFull",
    "Interpreter",
    "Pool",
    "ReceiveError",
    "RemoteError",
    "buffer",
    "channel",
    "check",
    "id",
]

# Objects of the main script come back from workers as __mp_main__'s (the name it is
# loaded under there); multiprocessing makes the same alias.
if "__main__" in sys.modules and _native.id() == 0:
    sys.modules.setdefault("__mp_main__", sys.modules["__main__"])

_WORKER_SOURCE = (Path(__file__).parent / "_worker.py").read_text(encoding="utf-8")
_WORKER_FILE = "<subinterp worker>"
_WORKER = "__import__('sys').modules['_subinterp_worker']"
_RUN = "_subinterp_worker:_subinterp_run"
_RUN_CHUNK = "_subinterp_worker:_subinterp_run_chunk"


class RemoteError(Exception):
    """An exception of a worker that cannot be rebuilt here as its own type.

    ``type_name``, ``message`` and ``traceback`` (the worker's, as text) say what it was.
    """

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a task's exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


def _reference(fn) -> tuple[str, str] | None:
    """The module and qualified name a worker finds ``fn`` by; None if ``fn`` must be
    pickled instead (a bound method, a ``functools.partial``, a callable instance, a
    method descriptor such as ``str.upper``); a ``TypeError`` for what a worker can get
    neither way (lambdas, closures, nested functions)."""
    if not callable(fn):
        raise TypeError(f"subinterp.Pool runs callables; {fn!r} is not callable")
    if not isinstance(fn, (types.FunctionType, type, types.BuiltinFunctionType, _Named)):
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


def _pickled_call(fn, *parts) -> bytes:
    """``(fn, *parts)`` pickled for a worker, with a ``TypeError`` saying which part
    cannot be sent."""
    try:
        return pickle.dumps((fn, *parts))
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


def _setup_code() -> list[str]:
    """Python statements that make a new interpreter a worker: ``os._exit`` refused (it
    would end this whole process), no reading of this process's stdin (a worker gets an
    empty one, as multiprocessing's children get ``/dev/null``), this interpreter's
    ``sys.path``, the runner module, the main script."""
    code = [
        _native._exit_guard(),
        "import sys, types",
        "sys.stdin = open(__import__('os').devnull, encoding='utf-8')",
        f"sys.path[:] = {[p for p in sys.path if isinstance(p, str)]!r}",
        "_w = types.ModuleType('_subinterp_worker')",
        f"exec(compile({_WORKER_SOURCE!r}, {_WORKER_FILE!r}, 'exec'), _w.__dict__)",
        "sys.modules['_subinterp_worker'] = _w",
        f"_w._subinterp_stand_in(__import__('subinterp'), {str(Path(__file__).parent)!r})",
    ]
    name = _main_name()
    main = _main_path()
    if name is not None:
        code.append(f"_w._subinterp_load_main(name={name!r})")
    elif main is not None:
        code.append(f"_w._subinterp_load_main({main!r})")
    return code


def _encode_call(fn, args, kwargs) -> tuple[list, dict]:
    """The runner's arguments for calling ``fn(*args, **kwargs)`` in a worker: plain data
    as it is, anything else pickled."""
    ref = _reference(fn)
    kwargs = {} if kwargs is None else dict(kwargs)
    if ref is None:
        return [None, None, _pickled_call(fn, tuple(args), kwargs)], {}
    module, qualname = ref
    if _plain(args) and _plain(kwargs):
        return [module, qualname, None, *args], kwargs
    return [module, qualname, _dumps((tuple(args), kwargs))], {}


def _dumps(obj) -> bytes:
    """``obj`` pickled for a worker; what cannot be pickled is a ``TypeError`` here."""
    try:
        return pickle.dumps(obj)
    except Exception as exc:
        raise TypeError(f"subinterp: an argument cannot be sent to a worker: {exc}") from exc


def _outcome(kind: str, payload, unwrap):
    """``(value, exception)`` from what the engine reports for a finished call."""
    if kind == "ok":
        return unwrap(payload)
    if kind == "python":
        return None, _rebuild(*payload)
    if kind == "timeout":
        return None, TimeoutError(payload)
    if kind == "cancelled":
        return None, concurrent.futures.CancelledError()
    return None, RemoteError("subinterp.Error", str(payload))


def _rebuild(type_name: str, message: str, tb: str) -> BaseException:
    module, _, name = type_name.rpartition(".")
    if module == "builtins":
        import builtins

        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            try:
                exc = kind(message)
            except Exception:
                exc = RemoteError(type_name, message, tb)
            exc.__cause__ = _RemoteTraceback(tb)
            return exc
    return RemoteError(type_name, message, tb)


def _from_worker(reply):
    """The value a task gave, or the exception to raise."""
    tag = reply[0]
    if tag == 0:
        return reply[1], None
    if tag == 1:
        return pickle.loads(reply[1]), None
    _, pickled, type_name, message, tb = reply
    exc = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, tb)
    else:
        exc.__cause__ = _RemoteTraceback(tb)
    return None, exc


class _Future(concurrent.futures.Future):
    """The future of a task of a ``Pool``.

    ``cancel()`` means what it means for every ``concurrent.futures.Future``: it succeeds
    only while the task waits in the queue. ``interrupt()`` also stops a running task.
    """

    def __init__(self, pool: "_PoolCore"):
        super().__init__()
        self._pool = pool
        self._task: int | None = None
        self._unwrap = _from_worker

    def cancel(self) -> bool:
        """Cancels the task if no worker has started it; False once it runs or is done."""
        if self._task is not None and not self.done():
            if not self._pool._cancel_task(self._task, running=False):
                return self.cancelled()
        return super().cancel()

    def interrupt(self) -> bool:
        """Stops the task: a queued one never runs, a running one is interrupted in its
        worker (``KeyboardInterrupt`` is raised in it), and the future is cancelled.
        False if the task had already finished."""
        if self._task is None or self.done():
            return False
        if not self._pool._cancel_task(self._task, running=True):
            return False
        return super().cancel()

    def result(self, timeout: float | None = None):
        return super().result(self._fetch(timeout))

    def exception(self, timeout: float | None = None):
        return super().exception(self._fetch(timeout))

    def _fetch(self, timeout: float | None) -> float | None:
        # The waiting caller takes the result straight from its task (one thread
        # wake-up fewer than through the pool's collector thread). Returns what is
        # left of the timeout for the standard wait.
        if self._task is not None and not self.done():
            pool = self._pool
            if pool._deliver_taken(self._task):
                return timeout
            if pool._wait_for(self, timeout):
                return 0
            # A collector took it: it may be this very thread, in a done-callback of
            # another future of its batch, so deliver it here rather than wait for it.
            pool._deliver_taken(self._task)
        return timeout

    def running(self) -> bool:
        """True while a worker runs the task."""
        if self.done() or self._task is None:
            return False
        return self._pool._started(self._task)


_POOLS: "set[_PoolCore]" = set()
_POOLS_LOCK = threading.Lock()


def _warn_memory() -> None:
    """Raises the engine's warning about the memory of ended interpreters, if any."""
    message = _native._memory_warning()
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)


class _PoolCore:
    """A pool's handle and what its collector threads and futures share, apart from the
    ``Pool`` object, so that a ``Pool`` dropped without ``shutdown()`` is collected and
    ends its workers, as the standard executors do."""

    def __init__(self, handle: int):
        self.handle = handle
        self.lock = threading.Lock()
        self.futures: dict[int, _Future] = {}
        # Results a collector took from the engine and has not delivered yet.
        self.taken: dict[int, tuple[_Future, str, object]] = {}
        self.shutdown_started = False
        self.collectors = 0  # collector threads alive
        self.waiting = 0  # of them, waiting for results
        self.ended = threading.Event()

    # ------------------------------------------------------------------ tasks

    def queue(self, target, args, kwargs, timeout, unwrap) -> _Future:
        future = _Future(self)
        future._unwrap = unwrap
        with self.lock:
            if self.shutdown_started:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task = _native._pool_submit(self.handle, target, args, kwargs, timeout)
            future._task = task
            self.futures[task] = future
        return future

    def _cancel_task(self, task: int, running: bool) -> bool:
        try:
            return _native._pool_cancel(self.handle, task, running)
        except RuntimeError:  # the pool has ended: every task has its result
            return False

    def _wait_for(self, future: _Future, timeout: float | None) -> bool:
        """Waits for the future's task and delivers it; true if the timeout passed."""
        if future._task is None:
            return False
        try:
            got = _native._pool_wait(self.handle, future._task, timeout)
        except RuntimeError:  # the pool has ended: the collector delivers
            return False
        if got is None:  # the collector has it
            return False
        if isinstance(got, bool):
            return True
        task, kind, payload = got
        with self.lock:
            self.futures.pop(task, None)
        _deliver(future, kind, payload)
        return False

    def _deliver_taken(self, task: int) -> bool:
        """Delivers a result a collector took and has not delivered yet; true if it did."""
        with self.lock:
            taken = self.taken.pop(task, None)
        if taken is None:
            return False
        _deliver(*taken)
        return True

    def _started(self, task: int) -> bool:
        try:
            return _native._pool_started(self.handle, task)
        except RuntimeError:
            return False

    # ------------------------------------------------------------------ results

    def start_collector(self) -> None:
        with self.lock:
            self.collectors += 1
        thread = threading.Thread(target=self._collect, name="subinterp-pool-results", daemon=True)
        try:
            thread.start()
        except BaseException:
            with self.lock:
                self.collectors -= 1
            raise

    def _collect(self) -> None:
        try:
            self._collect_until_ended()
        finally:
            with self.lock:
                self.collectors -= 1
                last = self.collectors == 0
                left = [] if not last else list(self.futures.values())
                if last:
                    self.futures.clear()
            if last:
                for future in left:
                    concurrent.futures.Future.cancel(future)
                    future.set_running_or_notify_cancel()
                with _POOLS_LOCK:
                    _POOLS.discard(self)
                self.ended.set()

    def _collect_until_ended(self) -> None:
        while True:
            with self.lock:
                self.waiting += 1
            try:
                done = _native._pool_done(self.handle, 0.5)
            except RuntimeError:
                done = None
            finally:
                with self.lock:
                    self.waiting -= 1
            _warn_memory()
            if done is None:
                return
            if not done:
                continue
            with self.lock:
                batch = []
                callbacks = False
                for task, kind, payload in done:
                    future = self.futures.pop(task, None)
                    if future is not None:
                        self.taken[task] = (future, kind, payload)
                        batch.append(task)
                        callbacks = callbacks or bool(getattr(future, "_done_callbacks", True))
                # Done-callbacks run on this thread and may block (say, on another
                # future of this pool): another collector waits for results meanwhile.
                spare = callbacks and self.waiting == 0
            if spare:
                try:
                    self.start_collector()
                except RuntimeError:  # no new threads (the interpreter is ending)
                    pass
            for task in batch:
                try:
                    self._deliver_taken(task)
                except BaseException as error:
                    # A done-callback raised what Future does not catch (KeyboardInterrupt,
                    # SystemExit): reported as an uncaught exception of this thread, which
                    # goes on delivering the rest of the batch.
                    threading.excepthook(
                        threading.ExceptHookArgs(
                            (type(error), error, error.__traceback__, threading.current_thread())
                        )
                    )
            with self.lock:
                # Two collectors are enough for callbacks that do not block.
                if self.collectors > 2 and self.waiting > 0:
                    return

    # ------------------------------------------------------------------ ending

    def shutdown(self, wait: bool, cancel_futures: bool, interrupt: bool) -> None:
        with self.lock:
            first = not self.shutdown_started
            self.shutdown_started = True
            pending = list(self.futures.values()) if cancel_futures or interrupt else []
        for future in pending:
            if interrupt:
                future.interrupt()
            else:
                future.cancel()
        if first or interrupt:
            try:
                # With interrupt, a task stuck in C code is abandoned after the grace
                # period, so that the pool ends.
                _native._pool_shutdown(self.handle, interrupt)
            except RuntimeError:  # already ended
                pass
        if wait:
            self.ended.wait()

    def wait_ended(self, timeout: float | None) -> bool:
        return self.ended.wait(timeout)


class Pool(concurrent.futures.Executor):
    """A pool of isolated interpreters, as a ``concurrent.futures.Executor``.

    ``max_workers`` (default: the number of cores), ``initializer`` and ``initargs`` mean
    what they mean for the standard executors. Beyond them:

    - ``init``: Python source run in each worker before its first task;
    - ``isolated``: False makes the workers legacy interpreters (they share the process's
      GIL, so they do not run in parallel, but load modules that refuse isolated ones);
    - ``timeout``: the default deadline of a task, in seconds, counted from its start. A
      task past it fails with ``TimeoutError`` and its interpreter is reused; one stuck
      in C code is reported the same way and its worker replaced;
    - ``max_tasks_per_worker``: tasks per worker before it is replaced by a fresh one
      (``max_tasks_per_child``, ``ProcessPoolExecutor``'s name, is accepted too);
    - ``setup_timeout``: a deadline for each worker's set-up (``init``, ``initializer``);
    - ``memory_limit``: bytes (or a size such as ``"256M"``) each worker may hold. Not
      available in this package: the accounting it needs is installed when an embedded
      Python starts, and this Python started before; giving it raises ``RuntimeError``
      saying so (the Rust library and the ``subinterp`` command have it).

    The callable of a task is found in the worker by module and name when it is a
    module-level function or class, else pickled with its arguments (bound methods,
    ``functools.partial``, callable instances), as ``ProcessPoolExecutor`` does.
    Workers see this interpreter's ``sys.path`` as it was when the pool started, and
    functions of the main script (loaded in each worker as ``__mp_main__``; by module
    name when it was run with ``python -m``), but not its stdin. ``os._exit`` raises
    ``RuntimeError`` in a worker. One worker starts with the pool, the others as tasks
    find no idle worker, up to ``max_workers``; a pool dropped without ``shutdown()``
    ends its workers once its tasks are done. While a pool or ``Interpreter`` is alive,
    ``os.fork()`` of this interpreter raises ``RuntimeError``: use the ``spawn`` or
    ``forkserver`` start method of ``multiprocessing``. A ``with`` block left by
    ``KeyboardInterrupt`` stops the pool's tasks instead of waiting for them.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        initializer=None,
        initargs: tuple = (),
        *,
        init: str | None = None,
        isolated: bool = True,
        timeout: float | None = None,
        max_tasks_per_worker: int | None = None,
        setup_timeout: float | None = None,
        max_tasks_per_child: int | None = None,
        memory_limit: int | str | None = None,
    ):
        if max_tasks_per_child is not None:
            if max_tasks_per_worker is not None:
                raise TypeError(
                    "max_tasks_per_worker and max_tasks_per_child are the same option: give one"
                )
            max_tasks_per_worker = max_tasks_per_child
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if not isinstance(max_workers, int) or max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        _native._runtime_start()
        _guard_fork()
        # Each part its own source: an error points at its line in that part.
        code = ["\n".join(_setup_code()) + "\n"]
        if initializer is not None:
            ref = _reference(initializer)
            if ref is None:
                pickled = _pickled_call(initializer, tuple(initargs))
                code.append(f"{_WORKER}._subinterp_initialize(None, None, {pickled!r})\n")
            else:
                pickled = _dumps(tuple(initargs))
                code.append(
                    f"{_WORKER}._subinterp_initialize({ref[0]!r}, {ref[1]!r}, {pickled!r})\n"
                )
        if init is not None:
            code.append(init if init.endswith("\n") else init + "\n")
        handle = _native._pool_new(
            {
                "workers": max_workers,
                "isolated": bool(isolated),
                "init": code,
                "timeout": timeout,
                "max_tasks_per_worker": max_tasks_per_worker,
                "setup_timeout": setup_timeout,
                "memory_limit": memory_limit,
            },
        )
        self._max_workers = max_workers
        self._core = core = _PoolCore(handle)
        with _POOLS_LOCK:
            _POOLS.add(core)
        core.start_collector()
        # Dropped without shutdown(): queued and running tasks finish, then the workers
        # end (as ThreadPoolExecutor's do); at exit, _end_all ends the pool instead.
        finalizer = weakref.finalize(self, core.shutdown, False, False, False)
        finalizer.atexit = False
        _warn_memory()

    # ------------------------------------------------------------------ submitting

    def submit(self, fn, /, *args, **kwargs) -> concurrent.futures.Future:
        """Runs ``fn(*args, **kwargs)`` in a worker; returns its future."""
        return self.submit_with(fn, args, kwargs)

    def submit_with(
        self, fn, args: tuple = (), kwargs: dict | None = None, *, timeout: float | None = None
    ) -> concurrent.futures.Future:
        """Like ``submit``, with this call's own deadline (seconds from its start)."""
        call_args, call_kwargs = _encode_call(fn, args, kwargs)
        return self._queue(_RUN, call_args, call_kwargs, timeout, _from_worker)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Like ``Executor.map``: results in input order. A ``chunksize`` above 1 sends
        the items to the workers in chunks of that many."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        ref = _reference(fn)
        if ref is None:
            _pickled_call(fn)  # a TypeError now if it cannot be sent
        # One iterable: its items are the arguments, no tuple is made for each.
        star = len(iterables) != 1
        items = zip(*iterables) if star else iter(iterables[0])
        chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
        futures = []
        for chunk in chunks:
            if ref is None:
                call_args = [None, None, _pickled_call(fn, chunk), [], star]
            elif _plain(chunk):
                call_args = [ref[0], ref[1], None, chunk, star]
            else:
                call_args = [ref[0], ref[1], _dumps(chunk), [], star]
            futures.append(self._queue(_RUN_CHUNK, call_args, {}, None, _chunk_from_worker))
        return _chained(futures, timeout)

    def _queue(self, target, args, kwargs, timeout, unwrap) -> _Future:
        return self._core.queue(target, args, kwargs, timeout, unwrap)

    # ------------------------------------------------------------------ ending

    def shutdown(
        self, wait: bool = True, *, cancel_futures: bool = False, interrupt: bool = False
    ) -> None:
        """Ends the pool: no task can be submitted after it. Tasks already submitted run
        to the end, except that ``cancel_futures`` cancels those no worker has started
        and ``interrupt`` also stops the running ones (a task stuck in C code is left
        behind after a grace period). With ``wait``, returns once every task has its
        result and every worker has ended (Ctrl-C stops the waiting, not the ending)."""
        self._core.shutdown(wait, cancel_futures, interrupt)

    def __exit__(self, exc_type, exc_val, exc_tb):
        # A with block left by Ctrl-C stops its tasks, as the processes of a
        # ProcessPoolExecutor die of the same SIGINT, instead of waiting for them all.
        stop = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=stop, interrupt=stop)
        return False


def _live() -> bool:
    """Whether a pool or an interpreter of this package is alive (a pool's worker left
    behind stuck in C code included)."""
    return bool(_POOLS or _INTERPRETERS or _native._workers_left_behind())


_FORK_REFUSED = (
    "{what} while subinterp pools or interpreters are alive would leave a broken "
    "child: CPython cannot remove running subinterpreters in a forked child (it dies in "
    "PyThreadState_Get on 3.13 and hangs on 3.12). Start processes with the 'spawn' or "
    "'forkserver' method instead: multiprocessing.get_context('forkserver'), or "
    "ProcessPoolExecutor(mp_context=multiprocessing.get_context('forkserver')); "
    "subprocess works as it is, without preexec_fn. Or end every subinterp Pool "
    "(shutdown()) and Interpreter (close()) before forking."
)

# The position of preexec_fn among the arguments subprocess gives
# _posixsubprocess.fork_exec (the same in 3.12 and 3.13).
_PREEXEC_FN_ARG = 21


def _guard_fork() -> None:
    """Makes ``os.fork`` and ``os.forkpty`` of this interpreter refuse while a pool or an
    interpreter is alive (multiprocessing looks them up when it starts a process).

    There is no sound fork then: in the child, ``PyOS_AfterFork_Child`` calls
    ``_PyInterpreterState_DeleteExceptMain``, which clears every other interpreter with
    no thread state of it current (CPython's own comments there: "XXX Won't this fail
    since PyInterpreterState_Clear() requires the "current" tstate to be set?", "XXX must
    activate?"); 3.13.0 aborts in ``PyThreadState_Get``, 3.12.1 hangs. ``subprocess``
    forks and execs in C, with no Python in the child, and is not affected, except with a
    ``preexec_fn``: to run it, ``_posixsubprocess`` calls ``PyOS_AfterFork_Child`` in the
    child, which dies the same way, so ``fork_exec`` with one refuses too."""
    for name in ("fork", "forkpty"):
        original = getattr(os, name, None)
        if original is None or getattr(original, "_subinterp_guarded", False):
            continue

        def guarded(*args, _original=original, _name=name, **kwargs):
            if _live():
                raise RuntimeError(_FORK_REFUSED.format(what=f"os.{_name}()"))
            return _original(*args, **kwargs)

        functools.update_wrapper(guarded, original)
        guarded._subinterp_guarded = True  # type: ignore[attr-defined]
        setattr(os, name, guarded)
    _guard_fork_exec()


def _guard_fork_exec() -> None:
    """Makes ``subprocess`` refuse a ``preexec_fn`` while a pool or an interpreter is alive
    (see _guard_fork); subprocess keeps ``fork_exec`` of ``_posixsubprocess`` as its own
    ``_fork_exec``, so both are replaced."""
    try:
        import _posixsubprocess
        import subprocess
    except ImportError:  # not a POSIX system
        return
    original = _posixsubprocess.fork_exec
    if getattr(original, "_subinterp_guarded", False):
        return

    def fork_exec(*args):
        if (
            len(args) > _PREEXEC_FN_ARG
            and args[_PREEXEC_FN_ARG] is not None
            and _live()
        ):
            what = "subprocess with a preexec_fn (Python run in a forked child)"
            raise RuntimeError(_FORK_REFUSED.format(what=what))
        return original(*args)

    fork_exec._subinterp_guarded = True  # type: ignore[attr-defined]
    _posixsubprocess.fork_exec = fork_exec
    if getattr(subprocess, "_fork_exec", None) is original:
        subprocess._fork_exec = fork_exec  # type: ignore[attr-defined]


def _deliver(future: _Future, kind: str, payload) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        value, exc = _outcome(kind, payload, future._unwrap)
    except BaseException as error:  # unpickling the result failed
        value, exc = None, error
    if exc is None:
        future.set_result(value)
    else:
        future.set_exception(exc)


def _chunk_from_worker(reply):
    """A chunk's values up to its first exception, and that exception (or None)."""
    encoded, failure = reply
    values, _ = _from_worker(encoded)
    exc = None if failure is None else _from_worker(failure)[1]
    return (values, exc), None


def _chained(futures, timeout):
    import time

    end = None if timeout is None else time.monotonic() + timeout

    def results():
        try:
            for future in futures:
                left = None if end is None else end - time.monotonic()
                values, exc = future.result(left)
                yield from values
                if exc is not None:
                    raise exc
        finally:
            for future in futures:
                future.cancel()

    return results()


_INTERPRETERS: "set[Interpreter]" = set()


def _close_interpreters(interpreters: "list[Interpreter]") -> None:
    """Closes the interpreters all at once (each within its grace period), saying which
    were left running."""
    global _LEFT_BEHIND
    closing = [interp for interp in interpreters if not interp._closed]
    for interp in closing:
        interp._closed = True
    try:
        graces = _native._interp_close_all([interp._handle for interp in closing])
    except KeyboardInterrupt:
        # Closing goes on in the background; exit does not wait for it beyond its first
        # second, as Ctrl-C asked.
        _LEFT_BEHIND = True
        raise
    finally:
        with _POOLS_LOCK:
            _INTERPRETERS.difference_update(closing)
    for interp, grace in zip(closing, graces):
        if grace is not None:
            _LEFT_BEHIND = True
            sys.stderr.write(
                f"subinterp: interpreter {interp.id} did not end within its grace period "
                f"of {grace:.1f} s (blocked in C code?); it is left running until that "
                "code returns\n"
            )
    sys.stderr.flush()


class Interpreter:
    """One isolated interpreter of this process, with its own GIL, modules and ``sys``:
    for hosting plugins or running code apart from the program's own state.

    It sees this interpreter's ``sys.path`` as it was when it was made, and the main
    script's functions (loaded as ``__mp_main__``). ``isolated=False`` makes a legacy
    interpreter (shares the process's GIL; loads modules that refuse isolated ones).
    ``init`` is Python source run in it first, in the ``__main__`` where ``exec`` runs;
    ``timeout`` is the deadline of ``init``
    and the default deadline of each ``exec``/``call``, in seconds. ``memory_limit`` is
    refused with ``RuntimeError`` in this package (see ``Pool``). Waiting releases this
    interpreter's GIL, and Ctrl-C interrupts the running code and raises
    ``KeyboardInterrupt`` here.

    Code past its deadline gets ``TimeoutError`` (again every 0.2 s until it stops);
    code blocked in C, which no interrupt reaches, is reported with ``TimeoutError``
    (or ``KeyboardInterrupt`` on Ctrl-C) one second later and left running: the
    interpreter is busy until it returns — later calls wait for it (their deadline
    counts from the call) — and ``close()`` and exit leave it behind after a grace period,
    with a message on stderr.
    """

    def __init__(
        self,
        *,
        isolated: bool = True,
        init: str | None = None,
        timeout: float | None = None,
        memory_limit: int | str | None = None,
    ):
        _native._runtime_start()
        # The user's init is a source of its own: an error points at its own line.
        code = ["\n".join(_setup_code()) + "\n"]
        if init is not None:
            # Compiled on its own, so that errors give its own line numbers, and run where
            # exec() and call("__main__:...") run later: the main script's module, which
            # loading it made __main__.
            code.append(
                f"exec(compile({init!r}, '<init>', 'exec'), sys.modules['__main__'].__dict__)"
            )
        self._handle = _native._interp_new(
            {
                "isolated": isolated,
                "init": "\n".join(code) + "\n",
                "timeout": timeout,
                "memory_limit": memory_limit,
            }
        )
        self._timeout = timeout
        self._closed = False
        with _POOLS_LOCK:
            _INTERPRETERS.add(self)
        self.id: int = self.call("subinterp:id")

    def exec(self, code: str, *, timeout: float | None = None) -> None:
        """Runs Python statements in the interpreter's ``__main__``. An exception there is
        raised here (its type when it can be rebuilt, else ``RemoteError``); past the
        deadline the code is interrupted and ``TimeoutError`` raised."""
        kind, payload = _native._interp_exec(self._live(), code, self._deadline(timeout))
        value, exc = _outcome(kind, payload, lambda _: (None, None))
        if exc is not None:
            raise exc

    def call(self, fn, /, *args, **kwargs):
        """Calls ``fn(*args, **kwargs)`` in the interpreter and returns its result. ``fn``
        is a module-level function (found there by module and qualified name) or a
        ``"module:qualname"`` string; arguments and results that are not plain data are
        pickled."""
        return self.call_with(fn, args, kwargs)

    def call_with(self, fn, args: tuple = (), kwargs: dict | None = None, *, timeout=None):
        """Like ``call``, with this call's own deadline in seconds."""
        if isinstance(fn, str):
            module, sep, qualname = fn.partition(":")
            if not sep or not module or not qualname:
                raise ValueError(f"expected 'module:qualname', got {fn!r}")
            fn = _Named(module, qualname)
        call_args, call_kwargs = _encode_call(fn, args, kwargs)
        kind, payload = _native._interp_call(
            self._live(), _RUN, call_args, call_kwargs, self._deadline(timeout)
        )
        value, exc = _outcome(kind, payload, _from_worker)
        if exc is not None:
            raise exc
        return value

    def close(self) -> None:
        """Ends the interpreter, waiting for its threads within a grace period (5 s). A
        call still running (say, blocked in C code) is interrupted; if it does not stop
        within the grace period, the interpreter is left running with a message on
        stderr. A call running meanwhile in another thread raises ``RuntimeError``."""
        _close_interpreters([self])

    def __enter__(self) -> "Interpreter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self) -> int:
        if self._closed:
            raise RuntimeError("the interpreter is closed")
        return self._handle

    def _deadline(self, timeout):
        return self._timeout if timeout is None else timeout


class _Named:
    """A function named by module and qualified name, for ``Interpreter.call``."""

    def __init__(self, module: str, qualname: str):
        self.__module__ = module
        self.__qualname__ = qualname

    def __call__(self, *args, **kwargs):  # never called here
        raise TypeError("a reference to a function of another interpreter")


def check(module, *, timeout: float | None = None):
    """What ``subinterp check`` reports for a module (a name) or for each of several (a
    list of names): dicts with the verdict (``ok``, ``legacy-only``, ``refused``,
    ``crash``, ...), its reason, and the details the CLI prints with ``--json``. Each
    module is imported in separate probe processes of this Python, with this ``sys.path``.
    ``timeout`` (seconds, more than 0) bounds each probe; a ``TypeError`` or
    ``ValueError`` says what is wrong with an argument.
    """
    if isinstance(module, str):
        names = [module]
    elif isinstance(module, (bytes, bytearray)) or not hasattr(module, "__iter__"):
        raise TypeError(
            f"check() takes a module name or a list of names, not {type(module).__name__}"
        )
    else:
        names = list(module)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a module name must be a str, not {type(name).__name__}")
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a module name (such as 'json' or 'xml.dom')")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not 0 < timeout < float("inf"):
            raise ValueError(f"timeout must be more than 0 seconds and finite, not {timeout!r}")
    paths = [p for p in sys.path if isinstance(p, str) and os.path.isdir(p)]
    reports = _native._check(names, paths, timeout)
    return reports[0] if isinstance(module, str) else reports


# How long exiting waits for code stuck in C (beyond the first second), unless an
# interpreter was already left behind, stuck, by close() or a pool's start given up.
_EXIT_GRACE = 5.0
_LEFT_BEHIND = False


@atexit.register
def _end_all() -> None:
    # As at the exit of a program with a ThreadPoolExecutor, tasks already submitted
    # finish first, unless the program ended with Ctrl-C (KeyboardInterrupt) or Ctrl-C is
    # pressed while waiting: then running tasks are interrupted.
    with _POOLS_LOCK:
        pools = list(_POOLS)
    stop = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    try:
        for pool in pools:
            pool.shutdown(False, False, stop)
        # Stopping takes at most the grace period (1 s) of a task stuck in C code, which
        # is then left behind.
        if not all(pool.wait_ended(2.5 if stop else 1.0) for pool in pools):
            sys.stderr.write(
                "subinterp: stopping the running tasks before Python exits "
                "(Ctrl-C exits at once)\n"
                if stop
                else "subinterp: waiting for submitted tasks to finish before Python exits "
                "(Ctrl-C stops them)\n"
            )
            sys.stderr.flush()
            for pool in pools:
                pool.wait_ended(None)
    except KeyboardInterrupt:
        if stop:
            _exit_now(130)
        stop = True
        try:
            # Running tasks are interrupted, and a task stuck in C code is left behind
            # after the grace period: the pools end at once, as the message said.
            for pool in pools:
                pool.shutdown(False, False, True)
            for pool in pools:
                pool.wait_ended(None)
        except KeyboardInterrupt:
            _exit_now(130)
    with _POOLS_LOCK:
        interpreters = list(_INTERPRETERS)
    try:
        _close_interpreters(interpreters)
    except KeyboardInterrupt:
        _exit_now(130)
    # Code stuck in C (a task reported as TimeoutError, its worker replaced; an
    # Interpreter's call past its deadline or Ctrl-C) keeps its interpreter until the call
    # returns; Python must not finalise before it ends, so exiting waits for it — within
    # a grace period: past it, the process exits without finalising. Ctrl-C at any point
    # of that wait exits at once, never finalising beside a running interpreter.
    try:
        _native._runtime_stop()
        left = _native._runtime_wait(1.0)
        if left is None and not _LEFT_BEHIND:
            sys.stderr.write(
                f"subinterp: waiting up to {_EXIT_GRACE:.0f} s for code stuck in C to "
                "return before Python exits (Ctrl-C exits at once)\n"
            )
            sys.stderr.flush()
            import time

            end = time.monotonic() + _EXIT_GRACE
            while left is None and time.monotonic() < end:
                left = _native._runtime_wait(0.25)
    except KeyboardInterrupt:
        _exit_now(130)
    if left is None:
        status = 130 if stop else 1
        sys.stderr.write(
            "subinterp: code still runs in an interpreter (stuck in C, or a pool's set-up "
            "given up with Ctrl-C); Python cannot finalise while it runs, so the process "
            f"exits now with status {status}\n"
        )
        _exit_now(status)
    if left:
        # Interpreters whose Python threads did not end cannot be finalised: CPython
        # would abort the process ("remaining subinterpreters") or free what they use.
        sys.stderr.write(
            f"subinterp: {left} interpreter(s) still run Python threads that did not end; "
            "Python cannot finalise with them, so the process exits now with status 1\n"
        )
        _exit_now(1)
    _keep_the_interrupt_status()


def _keep_the_interrupt_status() -> None:
    # CPython ends a program that died of an uncaught KeyboardInterrupt by SIGINT, as a
    # shell expects, if a process-wide flag says so. Every exec()/eval() of a string in
    # any interpreter resets that flag, and sets it when KeyboardInterrupt leaves it, so
    # the workers' code (or interrupting it) may have changed it: put it back.
    if isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        try:
            exec("raise KeyboardInterrupt", {})
        except KeyboardInterrupt:
            pass
    else:
        exec("pass", {})


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if status == 130:
        # Die of SIGINT, as Python does after Ctrl-C, so that a shell sees it.
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


# os.fork() refuses while pools or interpreters are alive (see _guard_fork).
if _native.id() == 0:
    _guard_fork()
