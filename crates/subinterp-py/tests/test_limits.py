"""Memory limits and figures in the Python package: the accounting is put around this
Python's allocators when the package starts, so interpreters made here are counted and
limited like the Rust library's."""

import pytest

import subinterp

MB = 2**20

# Loops are bounded (well past any limit here), so that a limit that does not work fails
# the test instead of filling the machine; the asynchronous MemoryError may also land in
# the handler, before it let the list go: the outer handler takes that one.
GROW = """
def grow():
    items = []
    try:
        try:
            for _ in range(20_000_000):
                items.append(str(len(items)) * 3)
            return -1
        except MemoryError:
            n = len(items)
            items = None
            return n
    except MemoryError:
        n = len(items) if items is not None else 0
        items = None
        return n
"""


def test_an_interpreter_past_its_limit_gets_memory_error_and_goes_on():
    interp = subinterp.Interpreter(memory_limit="64M")
    try:
        interp.exec(GROW)
        grown = interp.call("__main__:grow")
        assert grown > 100_000, (grown, interp.stats())
        with pytest.raises(MemoryError):
            interp.exec("b = bytearray(200 * 2**20)")
        assert interp.call("builtins:sum", [1, 2, 3]) == 6
        stats = interp.stats()
        assert stats["memory_refusals"] >= 2
        assert 48 * MB < stats["memory_peak_bytes"] <= 64 * MB + 16 * MB + MB
        assert stats["cpu_seconds"] > 0
    finally:
        interp.close()


def grow_on(n):
    import subinterp

    if n == 2:
        data = []
        for _ in range(2000):
            data.append(bytearray(2**20))
        return "the 64 MiB limit let 2000 MiB through"
    return subinterp.id()


def test_a_pool_task_past_its_limit_fails_and_its_worker_is_replaced():
    with subinterp.Pool(1, memory_limit=64 * MB) as pool:
        futures = [pool.submit(grow_on, n) for n in range(5)]
        with pytest.raises(MemoryError):
            print(futures[2].result(timeout=60), pool.stats())
        ids = [futures[n].result(timeout=60) for n in (0, 1, 3, 4)]
        assert ids[0] == ids[1] and ids[2] == ids[3] and ids[1] != ids[2]
        stats = pool.stats()
        assert stats["tasks_over_memory_limit"] == 1
        assert stats["memory_peak_bytes"] >= 60 * MB


def test_memory_figures_without_a_limit():
    interp = subinterp.Interpreter()
    try:
        before = interp.stats()["memory_bytes"]
        interp.exec("big = bytearray(50 * 2**20)")
        after = interp.stats()
        assert after["memory_bytes"] >= before + 50 * MB
        assert after["memory_peak_bytes"] >= 50 * MB
        assert after["memory_refusals"] == 0
    finally:
        interp.close()


def test_a_bad_memory_limit_is_a_value_or_type_error():
    for bad in ("12X", "0", -5):
        with pytest.raises(ValueError, match="memory_limit|size"):
            subinterp.Interpreter(memory_limit=bad)
    with pytest.raises(TypeError, match="memory_limit"):
        subinterp.Interpreter(memory_limit=1.5)  # type: ignore[arg-type]


def spin():
    while True:
        pass


def sleep_a_while():
    import time

    time.sleep(1.0)
    return "slept"


def test_a_cpu_budget_stops_a_loop_and_not_a_sleep():
    with subinterp.Pool(1, cpu_budget=0.3, timeout=30) as pool:
        with pytest.raises(TimeoutError, match="CPU budget"):
            pool.submit(spin).result(timeout=60)
        assert pool.submit(sleep_a_while).result(timeout=60) == "slept"


def test_accounting_survives_cpython_restoring_its_default_raw_allocator():
    # CPython saves and restores the raw allocator around some of its own work; a
    # restore of an allocator saved before the accounting started takes the accounting
    # hook out. Simulated here: the next interpreter must count and refuse large blocks.
    import ctypes

    try:
        set_default = ctypes.pythonapi._PyMem_SetDefaultAllocator
    except AttributeError:
        pytest.skip("this CPython does not export _PyMem_SetDefaultAllocator")
    subinterp.Interpreter().close()  # the runtime, and the hooks, are in place
    set_default.argtypes = [ctypes.c_int, ctypes.c_void_p]
    set_default(0, None)  # PYMEM_DOMAIN_RAW
    interp = subinterp.Interpreter(memory_limit="64M")
    try:
        with pytest.raises(MemoryError):
            interp.exec("b = bytearray(200 * 2**20)")
        interp.exec("c = bytearray(50 * 2**20)")
        assert interp.stats()["memory_bytes"] >= 50 * MB
    finally:
        interp.close()
