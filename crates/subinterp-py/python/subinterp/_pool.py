"""``Pool``: a ``concurrent.futures.Executor`` whose workers are isolated interpreters."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import threading
import types
import warnings
import weakref

from . import _live, _native
from ._calls import (
    RUN,
    RUN_CHUNK,
    WORKER,
    dumps,
    dumps_out_of_band,
    encode_call,
    guard_settings,
    pickled_call,
    reference,
    setup_code,
    share_code,
)
from ._errors import from_worker, outcome
from ._fork import guard_fork


class _Future(concurrent.futures.Future):
    """The future of a task of a ``Pool``.

    ``cancel()`` means what it means for the standard executors' futures: it succeeds
    only while the task waits for a worker. A task submitted while fewer tasks than the
    pool has workers are unfinished is given a worker at once (one that is idle, or
    started for it), as a ``ProcessPoolExecutor`` hands tasks to its workers' queue: it
    runs, whatever ``cancel()`` or ``shutdown(cancel_futures=True)`` come after.
    ``interrupt()`` also stops a running task.
    """

    def __init__(self, pool: "_PoolCore"):
        super().__init__()
        self._pool = pool
        self._task: int | None = None
        self._unwrap = from_worker
        # Given a worker at submit: it runs, as if a worker had already taken it.
        self._committed = False

    def cancel(self) -> bool:
        """Cancels the task if it waits for a worker; False once it has one or is done."""
        if self._task is not None and not self.done():
            if self._committed or not self._pool._cancel_task(self._task, running=False):
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
        """True while a worker runs the task, or has been given it (it cannot be
        cancelled then)."""
        if self.done() or self._task is None:
            return False
        return self._committed or self._pool._started(self._task)



def _warn_memory() -> None:
    """Raises the engine's warning about the memory of ended interpreters, if any."""
    message = _native._memory_warning()
    if message is not None:
        warnings.warn(message, RuntimeWarning, stacklevel=2)



class _PoolCore:
    """A pool's handle and what its collector threads and futures share, apart from the
    ``Pool`` object, so that a ``Pool`` dropped without ``shutdown()`` is collected and
    ends its workers, as the standard executors do."""

    def __init__(self, handle: int, workers: int):
        self.handle = handle
        self.workers = workers
        self.lock = threading.Lock()
        self.futures: dict[int, _Future] = {}
        # Results a collector took from the engine and has not delivered yet.
        self.taken: dict[int, tuple[_Future, str, object]] = {}
        self.shutdown_started = False
        self.collectors = 0  # collector threads alive
        self.waiting = 0  # of them, waiting for results
        self.ended = threading.Event()

    # ------------------------------------------------------------------ tasks

    def queue(self, target, args, kwargs, timeout, unwrap, pickled=None) -> _Future:
        """Submits a task; ``pickled`` makes its arguments again, pickled, for when they
        are not plain data (the engine tells while it writes them)."""
        future = _Future(self)
        future._unwrap = unwrap
        with self.lock:
            if self.shutdown_started:
                raise RuntimeError("cannot schedule new futures after shutdown")
            # A worker is idle or starts for it (workers start on demand): it is the
            # worker's at once, so that a task submitted right after the pool started
            # runs however soon a shutdown(cancel_futures=True) comes.
            future._committed = len(self.futures) + len(self.taken) < self.workers
            task = _native._pool_submit(self.handle, target, args, kwargs, timeout)
            if task is None:
                if pickled is None:
                    raise TypeError("subinterp: the call cannot be sent to a worker")
                args, kwargs = pickled()
                task = _native._pool_submit(self.handle, target, args, kwargs, timeout)
                if task is None:
                    raise TypeError("subinterp: the call cannot be sent to a worker")
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
                with _live.lock:
                    _live.pools.discard(self)
                self.ended.set()

    def _collect_until_ended(self) -> None:
        while self._collect_batch():
            pass

    def _collect_batch(self) -> bool:
        """Waits for finished tasks and delivers them; false once the pool has ended, or
        when this collector is one too many. One batch a call: nothing of a batch (its
        results above all) stays referenced by this thread while it waits for the next,
        so that a result its caller has dropped is freed, as with the standard executors."""
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
            return False
        if not done:
            return True
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
            return not (self.collectors > 2 and self.waiting > 0)

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
    - ``guards``: guard rails on state the whole process shares, per worker: rule names
      to refuse (``["chdir", "env"]``, or ``"chdir,env"``; ``"process"`` for chdir, env,
      signals, fork and subprocess), or a dict of rule to ``"allow"``, ``"count"`` or
      ``"refuse"`` (rules: chdir, env, signals, fork, subprocess, write, connect). A
      refused action raises ``PermissionError`` naming the rule; a counted one shows in
      ``stats()``. A guard rail against accidents, not a security boundary: native code
      and ``ctypes`` pass it;
    - ``allow_write``: directories the workers may write files in; writing anywhere else
      raises ``PermissionError`` (the ``write`` rule);
    - ``process_fallback``: a task whose function's module imports an extension module
      that isolated interpreters refuse (numpy, pandas, pydantic-core, ...) runs in a
      worker process instead, started fresh with this Python and ``sys.path``, the
      ``init`` code and the ``initializer``; the pool records the module for its life
      (later tasks of it go straight to processes). (The core logs it through Rust's
      ``tracing``, which this package does not forward to ``logging`` yet.)
      A task that imports such a module only inside its body, after doing work, runs
      twice. False makes the refusal the task's error. Pure-Python tasks stay in the
      interpreters of this process;
    - ``in_processes``: modules (names or module objects; their submodules too) whose
      tasks run in worker processes from the start: for a module known to be refused, or
      one that crashes isolated interpreters;
    - ``memory_limit``: bytes (an int, or a size such as ``"256M"``) each worker
      interpreter may hold. Past it, the task gets ``MemoryError`` and its worker is
      replaced; the other workers and this interpreter go on (blocks of 1 MiB or more
      are refused at the limit; smaller ones raise within milliseconds; nothing passes
      the limit plus a quarter);
    - ``cpu_budget``: the CPU time, in seconds, a task may use (its worker's thread;
      waiting on I/O or a lock uses none); past it the task fails with ``TimeoutError``
      as at its ``timeout``.

    ``stats()`` returns the pool's counters as a dict: tasks by outcome, channel messages
    and bytes, guard rail events, interpreters created and ended.

    The callable of a task is found in the worker by module and name when it is a
    module-level function or class, else pickled with its arguments (bound methods,
    ``functools.partial``, callable instances), as ``ProcessPoolExecutor`` does.
    Workers see this interpreter's ``sys.path`` as it was when the pool started, and
    functions of the main script (loaded in each worker as ``__mp_main__``; by module
    name when it was run with ``python -m``), but not its stdin. ``os._exit`` raises
    ``RuntimeError`` in a worker. One worker starts with the pool, the others as tasks
    find no idle worker, up to ``max_workers``. ``Pool()`` returns while its first worker
    is created (tasks submitted meanwhile wait for it), unless it has ``init`` or an
    ``initializer``: then it returns once they ran there, and raises their error. A pool
    dropped without ``shutdown()``
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
        guards=None,
        allow_write=None,
        process_fallback: bool = True,
        in_processes=None,
        memory_limit: int | str | None = None,
        cpu_budget: float | None = None,
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
        guard_fork()
        # Before the workers start: a spare interpreter is ready for its set-up at once.
        share_code()
        # Each part its own source: an error points at its line in that part.
        code = ["\n".join(setup_code()) + "\n"]
        if initializer is not None:
            ref = reference(initializer)
            if ref is None:
                pickled = pickled_call(initializer, tuple(initargs))
                code.append(f"{WORKER}._subinterp_initialize(None, None, {pickled!r})\n")
            else:
                pickled = dumps(tuple(initargs))
                code.append(
                    f"{WORKER}._subinterp_initialize({ref[0]!r}, {ref[1]!r}, {pickled!r})\n"
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
                **guard_settings(guards, allow_write),
                "process_fallback": bool(process_fallback),
                "in_processes": _module_names(in_processes),
                "memory_limit": memory_limit,
                "cpu_budget": cpu_budget,
                # The first worker is created while this goes on; Pool() waits for it
                # only to raise the errors of the caller's own set-up code here.
                "wait": initializer is not None or init is not None,
            },
        )
        self._max_workers = max_workers
        self._core = core = _PoolCore(handle, max_workers)
        self._stats = _native._pool_stats_handle(handle)
        weakref.finalize(self, _native._pool_stats_release, self._stats)
        with _live.lock:
            _live.pools.add(core)
        core.start_collector()
        # Dropped without shutdown(): queued and running tasks finish, then the workers
        # end (as ThreadPoolExecutor's do); at exit, _exit ends the pool instead.
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
        call_args, call_kwargs, pickled = encode_call(fn, args, kwargs)
        return self._queue(RUN, call_args, call_kwargs, timeout, from_worker, pickled)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Like ``Executor.map``: results in input order. A ``chunksize`` above 1 sends
        the items to the workers in chunks of that many."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        ref = reference(fn)
        if ref is None:
            pickled_call(fn)  # a TypeError now if it cannot be sent
        # One iterable: its items are the arguments, no tuple is made for each.
        star = len(iterables) != 1
        items = zip(*iterables) if star else iter(iterables[0])
        chunks = iter(lambda: list(itertools.islice(items, chunksize)), [])
        futures = []
        for chunk in chunks:
            pickled = None
            if ref is None:
                call_args = (None, None, pickled_call(fn, chunk), [], star)
            else:
                # Written as it is by the engine; pickled only if it is not plain data.
                call_args = (ref[0], ref[1], None, chunk, star)
                pickled = _pickled_chunk(ref, chunk, star)
            futures.append(
                self._queue(RUN_CHUNK, call_args, {}, None, _chunk_from_worker, pickled)
            )
        return _chained(futures, timeout)

    def _queue(self, target, args, kwargs, timeout, unwrap, pickled=None) -> _Future:
        return self._core.queue(target, args, kwargs, timeout, unwrap, pickled)

    def stats(self) -> dict:
        """The pool's counters, also after ``shutdown()``: ``tasks_run``, ``tasks_ok``,
        ``tasks_failed``, ``tasks_timed_out``, ``tasks_cancelled`` (each task counted once,
        as its future ends), and over every worker it had: ``messages_sent``,
        ``bytes_sent``, ``messages_received``, ``bytes_received``, ``guard_counted``,
        ``guard_refused``, ``guards`` (per rule: ``counted`` and ``refused``),
        ``interpreters_created``, ``interpreters_ended``; ``memory_bytes``,
        ``memory_peak_bytes``, ``cpu_seconds`` are None where not measured. The package's
        own calls to set a worker up are not tasks."""
        return _native._pool_stats(self._stats)

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



def _deliver(future: _Future, kind: str, payload) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        value, exc = outcome(kind, payload, future._unwrap)
    except BaseException as error:  # unpickling the result failed
        value, exc = None, error
    if exc is None:
        future.set_result(value)
    else:
        future.set_exception(exc)


def _pickled_chunk(ref, chunk, star):
    def pickled():
        return (ref[0], ref[1], dumps_out_of_band(chunk), [], star), {}

    return pickled


def _chunk_from_worker(reply):
    """A chunk's values up to its first exception, and that exception (or None)."""
    encoded, failure = reply
    values, _ = from_worker(encoded)
    exc = None if failure is None else from_worker(failure)[1]
    return (values, exc), None


def _chained(futures, timeout):
    import time

    end = None if timeout is None else time.monotonic() + timeout

    def results():
        # As the standard executors' map: nothing here keeps a result once it is
        # yielded (a chunk's future is dropped when its values are taken, and each
        # value is taken out of the chunk as it is yielded).
        try:
            futures.reverse()
            while futures:
                left = None if end is None else end - time.monotonic()
                future = futures.pop()
                try:
                    values, exc = future.result(left)
                finally:
                    future.cancel()
                    del future
                values.reverse()
                while values:
                    yield values.pop()
                if exc is not None:
                    raise exc
        finally:
            for future in futures:
                future.cancel()

    return results()


def _module_names(modules) -> list[str] | None:
    """The module names ``in_processes`` gives: a name, a module, or a list of them."""
    if modules is None:
        return None
    if isinstance(modules, (str, types.ModuleType)):
        modules = [modules]
    names = []
    for module in modules:
        if isinstance(module, types.ModuleType):
            module = module.__name__
        if not isinstance(module, str):
            raise TypeError(
                f"in_processes takes module names or modules, not {type(module).__name__}"
            )
        names.append(module)
    return names
