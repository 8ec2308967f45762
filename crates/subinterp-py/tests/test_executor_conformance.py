"""CPython's own executor tests (Lib/test/test_concurrent_futures, 3.13), ported to
``subinterp.Pool``: what a program written for the standard executors relies on."""

import gc
import time
import weakref

import pytest

import helpers
import subinterp
from helpers import run_script


def _freed(ref, timeout=30.0):
    """Whether the object of ``ref`` is freed within ``timeout`` (as CPython's test, with
    its support.sleeping_retry(SHORT_TIMEOUT))."""
    end = time.monotonic() + timeout
    while ref() is not None:
        if time.monotonic() > end:
            return False
        gc.collect()
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("chunksize", [1, 3])
def test_free_reference(chunksize):
    # test_free_reference (bpo-14406): the result iterator of map keeps no reference to
    # a result once it has yielded it.
    with subinterp.Pool(2) as pool:
        for obj in pool.map(helpers.make_dummy_object, range(10), chunksize=chunksize):
            assert isinstance(obj, helpers.MyObject)
            wr = weakref.ref(obj)
            del obj
            assert _freed(wr), "a result yielded by map is still referenced"


def test_a_task_submitted_right_after_the_pool_starts_without_waiting_for_the_rest():
    # The pool is ready with its first worker; the others start as tasks arrive. Here
    # they cannot finish their set-up until the gate opens: the first task runs anyway.
    subinterp.channel("conformance-token").send("first")
    init = (
        "import subinterp\n"
        "try:\n"
        "    subinterp.channel('conformance-token').try_recv()\n"
        "except subinterp.ChannelEmpty:\n"
        "    subinterp.channel('conformance-gate').recv(timeout=120)\n"
    )
    pool = subinterp.Pool(5, init=init)
    try:
        futures = [pool.submit(helpers.add, i, 1) for i in range(5)]
        assert futures[0].result(timeout=60) == 1
    finally:
        gate = subinterp.channel("conformance-gate")
        for _ in range(4):
            gate.send("open")
        pool.shutdown(cancel_futures=True)
    for future in futures:
        assert future.cancelled() or future.result() == futures.index(future) + 1


def test_cancel_futures():
    # test_cancel_futures of test_shutdown: 50 tasks submitted right after the pool
    # returned, then shutdown(cancel_futures=True).
    pool = subinterp.Pool(5)
    fs = [pool.submit(time.sleep, 0.1) for _ in range(50)]
    pool.shutdown(cancel_futures=True)
    # Some were cancelled: with few workers, many of them.
    cancelled = [fut for fut in fs if fut.cancelled()]
    assert len(cancelled) > 20
    # The others finished, without error ...
    others = [fut for fut in fs if not fut.cancelled()]
    for fut in others:
        assert fut.done(), fut._state
        assert fut.exception() is None
    # ... and at least one did.
    assert len(others) > 0


def test_a_task_given_a_worker_at_submit_runs_whatever_cancel_comes_after():
    # What makes test_cancel_futures hold on a loaded machine too, where a worker may
    # take its first task only after the 50 submissions and the shutdown: a task
    # submitted while fewer tasks than workers are unfinished has its worker at once (as
    # a ProcessPoolExecutor moves it to its workers' queue), here one still starting.
    subinterp.channel("committed-token").send("first")
    init = (
        "import subinterp\n"
        "try:\n"
        "    subinterp.channel('committed-token').try_recv()\n"
        "except subinterp.ChannelEmpty:\n"
        "    subinterp.channel('committed-gate').recv(timeout=120)\n"
    )
    pool = subinterp.Pool(2, init=init)
    try:
        busy = pool.submit(helpers.signal_then_sleep, "committed-started", 0.5)
        assert subinterp.channel("committed-started").recv(timeout=60) == "started"
        given = pool.submit(helpers.add, 1, 1)  # the second worker starts for it
        waiting = pool.submit(helpers.add, 2, 2)  # two tasks for two workers: it waits
        assert given.running() and not given.cancel()
        assert not waiting.running() and waiting.cancel()
    finally:
        subinterp.channel("committed-gate").send("open")
        pool.shutdown(cancel_futures=True)
    assert busy.result() == "slept" and given.result() == 2 and waiting.cancelled()


def test_interpreter_shutdown(tmp_path):
    # test_interpreter_shutdown of test_shutdown: a program that submits a task and ends
    # waits for it at exit, silently (the stdlib's sleeps 1 s; this one 1.5 s, past the
    # second after which exit used to say that it waits).
    out = run_script(
        tmp_path,
        """
        import helpers, subinterp

        if __name__ == "__main__":
            t = subinterp.Pool(5)
            t.submit(helpers.sleep_and_print, 1.5, "apple")
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.strip() == "apple"
