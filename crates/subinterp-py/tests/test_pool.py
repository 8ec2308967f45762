"""subinterp.Pool as a concurrent.futures.Executor."""

import asyncio
import concurrent.futures
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import helpers
import subinterp


@pytest.fixture(scope="module")
def pool():
    with subinterp.Pool(2) as p:
        yield p


def test_results_and_plain_data(pool):
    assert pool.submit(math.factorial, 20).result(30) == 2432902008176640000
    assert pool.submit(helpers.add, 2, b=40).result(30) == 42
    assert pool.submit(helpers.echo, 1, "two", [3.0, None], x={"k": b"v"}).result(30) == [
        [1, "two", [3.0, None]],
        {"x": {"k": b"v"}},
    ]
    assert pool.submit(helpers.add, 2**100, 1).result(30) == 2**100 + 1


def test_futures_are_standard(pool):
    futures = [pool.submit(helpers.add, i, i) for i in range(20)]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    done = [f.result() for f in concurrent.futures.as_completed(futures, timeout=30)]
    assert sorted(done) == [2 * i for i in range(20)]
    finished, pending = concurrent.futures.wait(futures, timeout=30)
    assert len(finished) == 20 and not pending


def test_pickled_arguments_results_and_exceptions(pool):
    assert pool.submit(helpers.norm, helpers.Point(3, 4)).result(30) == 25
    assert pool.submit(helpers.make_point, 1, 2).result(30) == helpers.Point(1, 2)
    with pytest.raises(helpers.Custom, match="boom") as info:
        pool.submit(helpers.raise_custom, "boom").result(30)
    assert "raise Custom(message)" in str(info.value.__cause__)
    with pytest.raises(KeyError, match="missing"):
        pool.submit(helpers.fail, "missing").result(30)


def test_unpicklable_argument_is_a_type_error_in_the_caller(pool):
    with pytest.raises(TypeError, match="cannot be sent"):
        pool.submit(helpers.echo, threading_lock())


def threading_lock():
    import threading

    return threading.Lock()


def test_lambdas_and_closures_are_refused_at_submit(pool):
    with pytest.raises(TypeError, match="lambda"):
        pool.submit(lambda: 1)

    def nested():
        return 1

    with pytest.raises(TypeError, match="nested"):
        pool.submit(nested)


def test_map_keeps_order_with_and_without_chunks(pool):
    assert list(pool.map(helpers.add, range(50), range(50))) == [2 * i for i in range(50)]
    assert list(pool.map(helpers.add, range(50), range(50), chunksize=7)) == [
        2 * i for i in range(50)
    ]
    results = pool.map(helpers.fail, ["a"], chunksize=3)
    with pytest.raises(KeyError):
        list(results)
    # One iterable, in chunks: plain items, pickled items, and a failure mid-chunk
    # after which the earlier results are still given.
    assert list(pool.map(helpers.collatz_steps, range(1, 100), chunksize=16)) == [
        helpers.collatz_steps(n) for n in range(1, 100)
    ]
    points = [helpers.Point(i, i) for i in range(10)]
    assert list(pool.map(helpers.norm, points, chunksize=4)) == [2 * i * i for i in range(10)]
    got = []
    with pytest.raises(KeyError, match="b"):
        for value in pool.map(helpers.fail_on, ["ok", "ok", "b", "ok"], chunksize=4):
            got.append(value)
    assert got == ["ok", "ok"]


def test_map_is_lazy_about_results(pool):
    results = pool.map(helpers.slow, [1, 2, 3], [0.0, 0.0, 0.0])
    assert next(results) == 1
    assert list(results) == [2, 3]


def test_deadline_stops_a_runaway_task_and_the_worker_is_reused():
    with subinterp.Pool(1, timeout=0.5) as p:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            p.submit(helpers.spin).result(30)
        assert time.monotonic() - start < 15
        assert p.submit(helpers.add, 1, 1).result(30) == 2


def test_per_call_deadline_and_stuck_c_call():
    with subinterp.Pool(1) as p:
        with pytest.raises(TimeoutError):
            p.submit_with(helpers.spin, timeout=0.3).result(30)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            p.submit_with(helpers.sleep_c, (8,), timeout=0.3).result(30)
        assert time.monotonic() - start < 6
        assert p.submit(helpers.add, 2, 2).result(30) == 4


def test_shutdown_semantics():
    p = subinterp.Pool(1)
    slow = [p.submit(helpers.slow, i, 0.2) for i in range(3)]
    p.shutdown(wait=True)
    assert [f.result() for f in slow] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(helpers.add, 1, 2)

    # cancel_futures cancels what waits; what runs finishes.
    p = subinterp.Pool(1)
    running = p.submit(helpers.signal_then_sleep, "shutdown-started", 0.5)
    queued = [p.submit(helpers.add, i, 1) for i in range(5)]
    assert subinterp.channel("shutdown-started").recv(timeout=60) == "started"
    p.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) == "slept"
    assert all(f.cancelled() for f in queued)

    # interrupt stops what runs as well.
    p = subinterp.Pool(1)
    running = p.submit(helpers.signal_then_spin, "shutdown-spinning")
    queued = p.submit(helpers.add, 1, 1)
    assert subinterp.channel("shutdown-spinning").recv(timeout=60) == "started"
    p.shutdown(wait=True, interrupt=True)
    assert running.cancelled() and queued.cancelled()


def test_cancel_is_standard_and_interrupt_stops_a_running_task():
    with subinterp.Pool(1) as p:
        running = p.submit(helpers.signal_then_spin, "cancel-spinning")
        queued = p.submit(helpers.add, 3, 4)
        assert subinterp.channel("cancel-spinning").recv(timeout=60) == "started"
        assert running.running() and not queued.running()
        assert not running.cancel(), "a running task is not cancelled"
        assert queued.cancel() and queued.cancelled()
        assert running.interrupt()
        assert running.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            running.result(30)
        done = p.submit(helpers.add, 3, 4)
        assert done.result(30) == 7
        assert not done.cancel() and not done.interrupt()


def test_workers_see_the_callers_sys_path_and_prefix(pool):
    worker_path = pool.submit(helpers.path).result(30)
    for entry in sys.path:
        assert entry in worker_path
    assert pool.submit(helpers.prefix).result(30)[0] == sys.prefix


def test_workers_are_other_interpreters(pool):
    ids = {pool.submit(helpers.interp_id).result(30) for _ in range(10)}
    assert 0 not in ids and subinterp.id() == 0


def test_max_tasks_per_child_is_accepted_as_in_the_stdlib():
    # ProcessPoolExecutor's name for max_tasks_per_worker: each task gets a fresh worker.
    with subinterp.Pool(1, max_tasks_per_child=1) as pool:
        ids = [pool.submit(helpers.interp_id).result(60) for _ in range(3)]
    assert len(set(ids)) == 3
    with pytest.raises(TypeError, match="max_tasks_per_child"):
        subinterp.Pool(1, max_tasks_per_worker=2, max_tasks_per_child=2)


def test_channels_between_main_and_workers(pool):
    future = pool.submit(helpers.relay, "t-relay")
    subinterp.channel("t-relay").send(21)
    assert subinterp.channel("t-relay-back").recv(timeout=30) == 42
    assert future.result(30) == "relayed"


def test_buffers_are_shared_memory(pool):
    buf = subinterp.buffer(16, writable=True)
    future = pool.submit(helpers.fill, "t-buffer")
    subinterp.channel("t-buffer").send(buf)
    assert future.result(30) == 16
    assert bytes(memoryview(buf)[:5]) == b"hello"


def test_asyncio_run_in_executor(pool):
    async def main():
        loop = asyncio.get_running_loop()
        one = loop.run_in_executor(pool, helpers.add, 1, 2)
        two = asyncio.wrap_future(pool.submit(helpers.add, 3, 4))
        return await asyncio.gather(one, two)

    assert asyncio.run(main()) == [3, 7]


def test_initializer_and_init_code():
    with subinterp.Pool(1, initializer=helpers.add, initargs=(1, 2), init="X = 5") as p:
        assert p.submit(helpers.add, 1, 1).result(30) == 2


def test_main_script_functions_run(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import subinterp

            def square(x):
                return x * x

            if __name__ == "__main__":
                with subinterp.Pool(2) as pool:
                    print(sum(pool.map(square, range(10))))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "285"


def test_workers_load_the_main_script_as_it_is_when_they_start(tmp_path):
    # The caller hands its workers the main script's code (taken as their loader would
    # take it); a worker started after the file changed loads the file as it is then, as
    # before, and one started while it is unchanged gets the same module either way.
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            import subinterp

            VERSION = 1

            def version():
                return VERSION, __name__, __file__ == os.path.abspath(sys.argv[0])

            if __name__ == "__main__":
                for _ in range(2):
                    with subinterp.Pool(1) as pool:
                        print(*pool.submit(version).result())
                from subinterp import _calls, _native
                path, stat = os.path.abspath(__file__), os.stat(__file__)
                name = _calls.main_code_name(path, stat.st_mtime_ns, stat.st_size)
                print("shared", _native._shared_bytes(name) is not None)
                source = open(__file__).read().replace("VERSION = 1", "VERSION = 22")
                with open(__file__, "w") as file:
                    file.write(source)
                with subinterp.Pool(1) as pool:
                    print(*pool.submit(version).result())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:4] == [
        "1 __mp_main__ True",
        "1 __mp_main__ True",
        "shared True",
        "22 __mp_main__ True",
    ], out.stdout


def test_a_fresh_worker_imports_only_what_its_task_needs(tmp_path):
    # A worker's set-up and a task of plain data import none of these (each costs a fresh
    # interpreter milliseconds of its start), unless a fresh Python of this environment
    # has them at start-up (a .pth file may import anything).
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import subinterp

            def loaded():
                return sorted(sys.modules)

            if __name__ == "__main__":
                with subinterp.Pool(1) as pool:
                    print(" ".join(pool.submit(loaded).result(60)))
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    in_worker = set(out.stdout.split())
    assert "__mp_main__" in in_worker
    fresh = subprocess.run(
        [sys.executable, "-c", "import sys; print(' '.join(sys.modules))"],
        capture_output=True, text=True, timeout=120,
    )
    at_start = set(fresh.stdout.split())
    needless = {"importlib", "importlib.machinery", "importlib.util", "pickle", "re",
                "runpy", "threading", "traceback", "types"}
    assert sorted((needless & in_worker) - at_start) == []


def test_exit_waits_for_a_task_stuck_in_c_and_keeps_the_status(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {os.path.dirname(__file__)!r})
            import helpers, subinterp

            if __name__ == "__main__":
                pool = subinterp.Pool(1)
                try:
                    pool.submit_with(helpers.sleep_c, (3,), timeout=0.2).result(30)
                except TimeoutError:
                    print("timed out")
                sys.exit(7)
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 7, out.stderr
    assert out.stdout.strip() == "timed out"
    assert "Fatal" not in out.stderr


def _script(tmp_path, body):
    script = tmp_path / "script.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        + textwrap.dedent(body)
    )
    return script


def test_ctrl_c_during_result_interrupts_the_wait_and_the_task(tmp_path):
    script = _script(
        tmp_path,
        """
        import helpers, subinterp

        if __name__ == "__main__":
            pool = subinterp.Pool(1)
            future = pool.submit(helpers.signal_then_spin, "ctrl-c")
            subinterp.channel("ctrl-c").recv(timeout=60)
            print("ready", flush=True)
            future.result()
        """,
    )
    _ctrl_c_once_ready(script)


def _ctrl_c_once_ready(script):
    """Runs ``script``, sends one SIGINT once it prints ``ready`` and checks that it ends
    of it within a minute."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("one Ctrl-C did not end it: " + err)
    assert proc.returncode == -signal.SIGINT, err
    assert "KeyboardInterrupt" in err
    assert "Fatal" not in err


def test_one_ctrl_c_in_a_with_block_stops_its_tasks_instead_of_waiting_for_them(tmp_path):
    # Executor.__exit__ waits for every task; ProcessPoolExecutor's workers die of the
    # same SIGINT. A with block left by KeyboardInterrupt stops the running task and
    # cancels the queued one.
    marker = tmp_path / "written"
    script = _script(
        tmp_path,
        f"""
        import helpers, subinterp

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                future = pool.submit(helpers.signal_then_spin, "ctrl-c-with")
                pool.submit(helpers.write, {str(marker)!r}, "done")
                subinterp.channel("ctrl-c-with").recv(timeout=60)
                print("ready", flush=True)
                future.result()
        """,
    )
    _ctrl_c_once_ready(script)
    assert not marker.exists()


def test_exit_lets_submitted_tasks_finish(tmp_path):
    marker = tmp_path / "written"
    script = _script(
        tmp_path,
        f"""
        import helpers, subinterp

        if __name__ == "__main__":
            pool = subinterp.Pool(1)
            pool.submit(helpers.slow, 1, 0.3)
            pool.submit(helpers.write, {str(marker)!r}, "done")
        """,
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert marker.read_text() == "done"


def test_no_result_is_lost_when_threads_submit_at_once(pool):
    # Tasks that finish while submit() is still filing them must still be delivered.
    def client(base):
        futures = [pool.submit(helpers.add, base, i) for i in range(500)]
        return [f.result(60) for f in futures]

    with concurrent.futures.ThreadPoolExecutor(4) as threads:
        results = list(threads.map(client, [0, 1000, 2000, 3000]))
    assert results == [[base + i for i in range(500)] for base in (0, 1000, 2000, 3000)]


def test_result_timeout_is_the_callers_and_the_task_goes_on(pool):
    future = pool.submit(helpers.slow, "late", 1.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    assert time.monotonic() - start < 1.2, "the timeout is not counted twice"
    assert future.result(30) == "late"
    assert future.exception(0) is None


def test_legacy_workers_load_modules_isolated_ones_refuse():
    with subinterp.Pool(1, isolated=False) as p:
        assert p.submit(helpers.import_name, "psutil").result(60) == "psutil"
    # Isolated workers refuse it: the task runs in a worker process instead, unless the
    # fallback is off.
    with subinterp.Pool(1) as p:
        assert p.submit(helpers.import_name, "psutil").result(60) == "psutil"
    with subinterp.Pool(1, process_fallback=False) as p:
        with pytest.raises(ImportError, match="subinterpreters"):
            p.submit(helpers.import_name, "psutil").result(60)


def test_a_main_script_written_for_the_caller_loads_in_workers(tmp_path):
    # `from subinterp import Pool` and `import subinterp.dask` at the top of the main
    # script: in a worker, subinterp is the native module, with stand-ins for the rest.
    script = _script(
        tmp_path,
        """
        from subinterp import Pool, Interpreter, check
        import subinterp.dask

        def square(x):
            return x * x

        def make_a_pool():
            try:
                Pool(1)
            except RuntimeError as exc:
                return str(exc)

        if __name__ == "__main__":
            with Pool(2) as pool:
                print(pool.submit(square, 7).result(60))
                print(pool.submit(make_a_pool).result(60))
        """,
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "49"
    assert "only available in the main interpreter" in lines[1]
