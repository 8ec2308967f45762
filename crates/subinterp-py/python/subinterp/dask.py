"""Dask tasks in subinterpreters: a ``subinterp.Pool`` as an executor of Dask workers.

A Dask worker runs each task on the executor its ``executor`` annotation names. Register
the plugin once per cluster, then annotate what should run in isolated interpreters::

    import dask
    from distributed import Client, LocalCluster
    import subinterp.dask

    with LocalCluster(n_workers=2) as cluster, Client(cluster) as client:
        client.register_plugin(subinterp.dask.PoolPlugin(max_workers=4))
        with dask.annotate(executor="subinterp"):
            futures = client.map(score, documents)

Each Dask worker process then has a pool of isolated interpreters beside its threads.
A task's function and arguments are sent to the pool with cloudpickle (so functions
Dask can ship can be run), its result comes back pickled. Whatever the task imports
must load in isolated interpreters (``subinterp check`` tells).

The pool's workers import this module too, to run a task (``_run_node``): what it
imports at its top level must load there, so ``cloudpickle`` and ``distributed`` are
imported only where they are used, in the caller's interpreter.
"""

from __future__ import annotations

import threading

from . import Pool, _native

__all__ = ["DaskPool", "PoolPlugin"]


def _is_dask_runner(fn) -> bool:
    return (
        getattr(fn, "__module__", None) == "distributed.worker"
        and getattr(fn, "__qualname__", None) == "_run_task_simple"
    )


def _run_node(payload: bytes) -> list:
    """In a pool's worker: runs a Dask task (a pickled ``(GraphNode, data)``); returns
    ``[start, stop, reply]``, the wall-clock times around the call and the task's outcome
    as the worker encodes a task's reply."""
    import pickle
    import sys
    import time

    call = sys.modules["_subinterp_worker"]._subinterp_call
    task, data = pickle.loads(payload)
    start = time.time()
    # Pickled here: the engine checks only the outer reply for plain data.
    reply = call(task, (data,), {}, True)
    return [start, time.time(), reply]


class DaskPool(Pool):
    """A ``Pool`` that also runs a Dask worker's tasks.

    A Dask worker calls ``submit(distributed.worker._run_task_simple, task, data,
    delay)`` on an executor that is not a thread pool; ``distributed`` cannot be
    imported in isolated interpreters (``psutil`` refuses them), so this pool runs the
    task itself in a worker and makes the report Dask expects (result or error, start
    and stop times) here. Everything else is as for ``Pool``.
    """

    def submit(self, fn, /, *args, **kwargs):
        if _is_dask_runner(fn) and len(args) == 3 and not kwargs:
            return self._submit_node(*args)
        return super().submit(fn, *args, **kwargs)

    def _submit_node(self, task, data, time_delay):
        import cloudpickle  # type: ignore[import-untyped]

        from ._calls import RUN, encode_call

        try:
            payload = cloudpickle.dumps((task, data))
        except Exception as exc:
            raise TypeError(
                f"subinterp.dask: task {getattr(task, 'key', task)!r} cannot be sent to an "
                f"interpreter: {exc}"
            ) from exc
        args, kwargs, pickled = encode_call(_run_node, (payload,), None)
        return self._queue(
            RUN, args, kwargs, None, lambda reply: _report(reply, time_delay), pickled
        )


def _report(reply, time_delay: float):
    """What ``distributed.worker._run_task_simple`` returns, from a worker's reply to
    ``_run_node``: ``(report, None)``, or ``(None, exception)`` if the task could not
    be run."""
    from dask.sizeof import sizeof
    from distributed.core import error_message

    from ._errors import from_worker

    timed, failure = from_worker(reply)
    if failure is not None:
        return None, failure
    start, stop, outcome = timed
    result, exc = from_worker(outcome)
    msg: dict
    if exc is None:
        msg = {
            "op": "task-finished",
            "status": "OK",
            "result": result,
            "nbytes": sizeof(result),
            "type": type(result) if result is not None else None,
        }
    else:
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise exc
        msg = dict(error_message(exc))
        msg["op"] = "task-erred"
        msg["actual_exception"] = exc
    msg["start"] = start + time_delay
    msg["stop"] = stop + time_delay
    msg["thread"] = threading.get_ident()
    return msg, None


WorkerPlugin: type = object
if _native.id() == 0:  # not in a pool's worker, where distributed does not load
    try:
        from distributed import WorkerPlugin
    except ImportError:  # the pool works without distributed; the plugin needs it
        pass


class PoolPlugin(WorkerPlugin):  # type: ignore[misc,valid-type]
    """A Dask worker plugin that gives each worker a ``DaskPool`` as its executor
    ``name`` (default ``"subinterp"``). The keywords are ``Pool``'s (``max_workers``,
    ``timeout``, ``init``, ...). The pool ends with the worker."""

    def __init__(self, name: str = "subinterp", **pool_options):
        self.name = name
        self.pool_options = pool_options

    def setup(self, worker) -> None:
        worker.executors[self.name] = DaskPool(**self.pool_options)

    def teardown(self, worker) -> None:
        pool = worker.executors.pop(self.name, None)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
