"""What a user may do that must not kill, hang or silently corrupt: os._exit, fork,
blocking done-callbacks, stdin, callables of every kind, ``python -m``, odd exceptions,
bad arguments, pools left behind."""

import concurrent.futures
import functools
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import helpers
import subinterp
from helpers import run_script


@pytest.fixture(scope="module")
def pool():
    p = subinterp.Pool(2)
    yield p
    p.shutdown()


def _ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Fatal" not in out.stderr
    return out.stdout.splitlines()


# ---------------------------------------------------------------- os._exit


def test_os_exit_in_a_task_init_initializer_or_interpreter_raises_for_the_caller(tmp_path):
    out = run_script(
        tmp_path,
        """
        import helpers, subinterp

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                try:
                    pool.submit(helpers.exit_now, 3).result(60)
                except RuntimeError as exc:
                    print("task:", exc)
                print("still", pool.submit(helpers.add, 1, 2).result(60))
            for kwargs in ({"init": "import os; os._exit(4)"},
                           {"initializer": helpers.exit_now, "initargs": (5,)}):
                try:
                    subinterp.Pool(1, **kwargs)
                except Exception as exc:
                    print("set-up:", type(exc).__name__, "os._exit(" in str(exc))
            with subinterp.Interpreter() as interp:
                try:
                    interp.exec("import os; os._exit(6)")
                except RuntimeError as exc:
                    print("exec:", "os._exit(6)" in str(exc))
            print("alive")
        """,
    )
    lines = _ok(out)
    assert lines[0].startswith("task: os._exit(3) would end the whole process"), lines
    assert lines[1] == "still 3"
    assert lines[2].startswith("set-up:") and lines[2].endswith("True"), lines
    assert lines[3].startswith("set-up:") and lines[3].endswith("True"), lines
    assert lines[4:] == ["exec: True", "alive"]


# ---------------------------------------------------------------- fork


def test_fork_beside_a_live_pool_is_refused_and_other_start_methods_work(tmp_path):
    out = run_script(
        tmp_path,
        """
        import concurrent.futures as cf, multiprocessing as mp, os, subprocess, sys
        import helpers, subinterp

        if __name__ == "__main__":
            pool = subinterp.Pool(1)
            print("pool", pool.submit(helpers.add, 1, 2).result(60))
            with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as ex:
                try:
                    ex.submit(helpers.add, 1, 2).result(60)
                    print("fork ran")
                except RuntimeError as exc:
                    print("fork refused", "forkserver" in str(exc), "spawn" in str(exc))
            for method in ("forkserver", "spawn"):
                with cf.ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as ex:
                    print(method, ex.submit(helpers.add, 2, 3).result(60))
            run = subprocess.run([sys.executable, "-c", "print(7)"], capture_output=True, text=True)
            print("subprocess", run.stdout.strip())
            try:
                os.fork()
                print("forked")
            except RuntimeError:
                print("os.fork refused")
            print("pool still", pool.submit(helpers.add, 3, 4).result(60))
            pool.shutdown()
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            print("fork after shutdown", os.waitpid(pid, 0)[1])
        """,
    )
    assert _ok(out) == [
        "pool 3",
        "fork refused True True",
        "forkserver 5",
        "spawn 5",
        "subprocess 7",
        "os.fork refused",
        "pool still 7",
        "fork after shutdown 0",
    ]


def test_fork_is_refused_while_a_worker_stuck_in_c_is_left_behind(tmp_path):
    out = run_script(
        tmp_path,
        """
        import os, time, helpers, subinterp

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                try:
                    pool.submit_with(helpers.sleep_c, (3,), timeout=0.2).result(60)
                except TimeoutError:
                    print("timed out")
            try:
                os.fork()
            except RuntimeError:
                print("refused")
            time.sleep(5)  # the C call returns: its interpreter ends
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            print("forked", os.waitpid(pid, 0)[1])
        """,
    )
    assert _ok(out) == ["timed out", "refused", "forked 0"]


def test_fork_beside_a_live_interpreter_is_refused(tmp_path):
    out = run_script(
        tmp_path,
        """
        import os, subinterp

        interp = subinterp.Interpreter()
        try:
            os.fork()
        except RuntimeError as exc:
            print("refused", "os.fork()" in str(exc))
        interp.close()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        print("forked", os.waitpid(pid, 0)[1])
        """,
    )
    assert _ok(out) == ["refused True", "forked 0"]


def test_os_exec_in_a_legacy_worker_or_interpreter_raises_for_the_caller(tmp_path):
    # Legacy interpreters allow exec in CPython's defaults: os.execv in a task would
    # replace the whole program silently. subprocess (fork and exec in C) still works.
    out = run_script(
        tmp_path,
        """
        import os, subprocess, sys, subinterp

        def replace():
            os.execv(sys.executable, [sys.executable, "-c", "print('replaced')"])

        def child():
            return subprocess.run([sys.executable, "-c", "pass"]).returncode

        if __name__ == "__main__":
            with subinterp.Pool(1, isolated=False) as pool:
                try:
                    pool.submit(replace).result(60)
                except RuntimeError as exc:
                    print("task refused")
                print("subprocess", pool.submit(child).result(60))
            with subinterp.Interpreter(isolated=False) as interp:
                try:
                    interp.exec("import os, sys; os.execv(sys.executable, [sys.executable])")
                except RuntimeError:
                    print("exec refused")
            print("alive")
        """,
    )
    assert _ok(out) == ["task refused", "subprocess 0", "exec refused", "alive"]


@pytest.mark.parametrize("subprocess_first", [True, False])
def test_subprocess_with_preexec_fn_beside_a_live_pool_is_refused(tmp_path, subprocess_first):
    # preexec_fn runs Python in the forked child, after PyOS_AfterFork_Child, which dies
    # (3.13) or hangs (3.12) with subinterpreters running; without it subprocess is fine.
    # The package does not import subprocess itself (that would slow its import): one
    # imported after it takes the guarded fork_exec all the same.
    first, then = ("subprocess, ", "") if subprocess_first else ("", "import subprocess")
    out = run_script(
        tmp_path,
        f"""
        import {first}sys, helpers, subinterp

        if __name__ == "__main__":
            print("subprocess imported", "subprocess" in sys.modules)
            {then}
            with subinterp.Pool(1) as pool:
                print(pool.submit(helpers.add, 1, 2).result(60))
                try:
                    subprocess.run([sys.executable, "-c", "pass"], preexec_fn=lambda: None,
                                   timeout=60)
                    print("ran")
                except RuntimeError as exc:
                    print("refused", "preexec_fn" in str(exc))
                print("plain", subprocess.run([sys.executable, "-c", "pass"]).returncode)
            done = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=lambda: None,
                                  timeout=60)
            print("after shutdown", done.returncode)
        """,
    )
    assert _ok(out) == [
        f"subprocess imported {subprocess_first}", "3", "refused True", "plain 0",
        "after shutdown 0",
    ]


# ---------------------------------------------------------------- callbacks


def test_a_callback_waiting_for_another_future_does_not_stall_the_pool(tmp_path):
    out = run_script(
        tmp_path,
        """
        import concurrent.futures as cf
        import helpers, subinterp

        if __name__ == "__main__":
            pool = subinterp.Pool(2)
            for round in range(20):
                futures = [pool.submit(helpers.add, i, 0) for i in range(20)]
                for i, f in enumerate(futures[:-1]):
                    f.add_done_callback(lambda f, other=futures[i + 1]: other.result())
                done, not_done = cf.wait(futures, timeout=60)
                assert not not_done, round
                assert [f.result() for f in futures] == list(range(20))
            print("done")
        """,
        timeout=180,
    )
    assert _ok(out) == ["done"]


def test_a_blocking_callback_does_not_stall_delivery(pool):
    gate = threading.Event()
    first = pool.submit(helpers.add, 1, 1)
    first.add_done_callback(lambda f: gate.wait(60))
    concurrent.futures.wait([first], timeout=60)
    try:
        later = [pool.submit(helpers.add, i, 1) for i in range(10)]
        done, not_done = concurrent.futures.wait(later, timeout=60)
        assert not not_done
    finally:
        gate.set()
    assert [f.result() for f in later] == list(range(1, 11))


def test_a_callback_raising_keyboard_interrupt_leaves_no_future_undelivered(tmp_path):
    # Future does not catch BaseException from a done-callback: it reaches the thread
    # that delivers the results, which must still deliver the rest of what it took.
    out = run_script(
        tmp_path,
        """
        import concurrent.futures as cf
        import helpers, subinterp

        def stop(f):
            raise KeyboardInterrupt("from a callback")

        def leave(f):
            raise SystemExit(3)

        if __name__ == "__main__":
            with subinterp.Pool(2) as pool:
                for round in range(10):
                    futures = [pool.submit(helpers.add, i, 0) for i in range(50)]
                    futures[0].add_done_callback(stop)
                    futures[1].add_done_callback(leave)
                    done, not_done = cf.wait(futures, timeout=60)
                    assert not not_done, (round, len(not_done))
                    assert [f.result() for f in futures] == list(range(50))
            print("done")
        """,
        timeout=180,
    )
    assert _ok(out) == ["done"]
    assert "KeyboardInterrupt: from a callback" in out.stderr


# ---------------------------------------------------------------- stdin


def test_workers_do_not_read_the_callers_stdin(tmp_path):
    read, write = os.pipe()
    os.write(write, b"hello\n")
    try:
        out = run_script(
            tmp_path,
            """
            import helpers, subinterp

            line = input()

            def shout(text):
                return text.upper()

            if __name__ == "__main__":
                with subinterp.Pool(2) as pool:
                    print(line, pool.submit(helpers.add, 1, 2).result(60))
                    try:
                        pool.submit(shout, "x").result(60)
                    except ImportError as exc:
                        print("EOFError" in str(exc))
            """,
            stdin=read,
            timeout=60,
        )
    finally:
        os.close(read)
        os.close(write)
    assert _ok(out) == ["hello 3", "True"]


# ---------------------------------------------------------------- callables


def test_every_callable_runs_with_its_meaning(pool):
    assert pool.submit(helpers.Scaler(10).scale, 5).result(60) == 50
    assert pool.submit(helpers.Scaler(10), 5).result(60) == 15
    assert pool.submit(functools.partial(helpers.scale_by, factor=3, offset=1), 2).result(60) == 7
    assert pool.submit(str.upper, "abc").result(60) == "ABC"
    assert pool.submit("abc".upper).result(60) == "ABC"
    assert pool.submit(len, [1, 2, 3]).result(60) == 3
    assert pool.submit(helpers.Point, 1, 2).result(60) == helpers.Point(1, 2)
    assert list(pool.map(helpers.Scaler(2).scale, range(5), chunksize=2)) == [0, 2, 4, 6, 8]
    assert list(pool.map(functools.partial(helpers.add, 1), range(3))) == [1, 2, 3]
    with subinterp.Pool(1, functools.partial(helpers.write, os.devnull), ("x",)) as p:
        assert p.submit(helpers.add, 1, 1).result(60) == 2


def test_lambdas_and_closures_inside_callables_are_refused_at_submit(pool):
    with pytest.raises(TypeError, match="lambda"):
        pool.submit(lambda: 1)
    with pytest.raises(TypeError, match="cannot send"):
        pool.submit(functools.partial(lambda x: x, 1))

    def nested():
        pass

    with pytest.raises(TypeError, match="nested"):
        pool.submit(nested)


# ---------------------------------------------------------------- python -m


def test_a_main_module_run_with_dash_m_uses_its_package(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "util.py").write_text("def double(x):\n    return 2 * x\n")
    out = run_script(
        tmp_path,
        """
        import subinterp
        from .util import double

        def task(x):
            return double(x)

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                print(pool.submit(task, 21).result(60))
        """,
        module="pkg.main",
    )
    assert _ok(out) == ["42"]


# ---------------------------------------------------------------- exceptions


def test_exceptions_keep_their_type_and_show_the_users_frames(pool):
    with pytest.raises(helpers.Stop) as info:
        pool.submit(helpers.raise_stop).result(60)
    assert info.value.code == 3
    with pytest.raises(helpers.Interrupted):
        pool.submit(helpers.raise_interrupted).result(60)
    with pytest.raises(helpers.BadStr):
        pool.submit(helpers.raise_bad_str).result(60)
    with pytest.raises(KeyError) as info:
        pool.submit(helpers.nested_failure).result(60)
    tb = info.value.__cause__.tb
    assert "_subinterp" not in tb, tb
    assert tb.startswith("Traceback"), tb
    assert "_fails_inside" in tb and "nested_failure" in tb
    # The pool goes on.
    assert pool.submit(helpers.add, 1, 2).result(60) == 3


def test_a_failing_tasks_message_is_printed_once(tmp_path):
    (tmp_path / "refuser.py").write_text(
        "raise ImportError('UNIQUE ' + 'refusal text, long as numpy\\'s')\n"
        "def f():\n    pass\n"
    )
    out = run_script(
        tmp_path,
        """
        import subinterp, refuser

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                pool.submit(refuser.f).result(60)
        """,
    )
    # The import fails in the main interpreter too: import it only in the worker.
    assert out.returncode != 0
    out = run_script(
        tmp_path,
        """
        import subinterp, helpers

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                pool.submit(helpers.import_name, "refuser").result(60)
        """,
    )
    assert out.returncode == 1
    assert out.stderr.count("UNIQUE refusal") == 1, out.stderr
    assert "Traceback" in out.stderr and "refuser.py" in out.stderr


def test_an_init_syntax_error_points_at_the_users_line():
    with pytest.raises(Exception) as info:
        subinterp.Pool(1, init="x = 1\ny = (\n")
    text = str(info.value)
    assert "line 2" in text, text
    assert "line 8" not in text, text


def test_an_interpreter_init_error_points_at_the_users_line():
    with pytest.raises(SyntaxError) as info:
        subinterp.Interpreter(init="x = 1\ny = (\n")
    assert "line 2" in str(info.value), info.value


# ---------------------------------------------------------------- check


def test_check_refuses_bad_arguments_clearly():
    with pytest.raises(TypeError, match="module name or a list"):
        subinterp.check(123)
    with pytest.raises(TypeError, match="must be a str"):
        subinterp.check([b"json"])
    with pytest.raises(ValueError, match="not a module name"):
        subinterp.check("")
    with pytest.raises(ValueError, match="not a module name"):
        subinterp.check("json..decoder")
    with pytest.raises(ValueError, match="more than 0"):
        subinterp.check("json", timeout=0)
    with pytest.raises(TypeError, match="number of seconds"):
        subinterp.check("json", timeout="5")


# ---------------------------------------------------------------- leaks


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_a_dropped_pool_ends_its_workers():
    # What was submitted still runs to the end.
    future = subinterp.Pool(2).submit(helpers.slow, 5, 0.3)
    gc.collect()
    assert future.result(60) == 5
    assert list(subinterp.Pool(2).map(helpers.add, range(5), range(5), chunksize=2)) == [
        0, 2, 4, 6, 8
    ]
    gc.collect()
    before = _threads()
    for _ in range(5):
        p = subinterp.Pool(2)
        assert p.submit(helpers.add, 1, 2).result(60) == 3
        del p
        gc.collect()
    deadline = time.monotonic() + 60
    while _threads() > before + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _threads() <= before + 2, (before, _threads())


def test_workers_start_on_demand():
    before = _threads()
    p = subinterp.Pool(64)
    try:
        for i in range(20):
            assert p.submit(helpers.add, i, 1).result(60) == i + 1
        # One worker (its thread and its keeper's), the watchdog, the collector: not 64.
        assert _threads() - before < 10, (before, _threads())
        ids = {f.result(60) for f in [p.submit(helpers.slow, None, 0.5) for _ in range(4)]}
        assert ids == {None}
        assert _threads() - before >= 4
    finally:
        p.shutdown()


def test_the_memory_warning_reaches_python(tmp_path):
    out = run_script(
        tmp_path,
        """
        import warnings, helpers, subinterp

        if __name__ == "__main__":
            warnings.simplefilter("always")
            with subinterp.Pool(1, max_tasks_per_worker=1) as pool:
                for i in range(300):
                    pool.submit(helpers.add, i, 0).result(60)
            print("done")
        """,
        timeout=300,
    )
    assert _ok(out) == ["done"]
    assert "RuntimeWarning" in out.stderr and "isolated interpreters have ended" in out.stderr


# ---------------------------------------------------------------- Ctrl-C at exit


def test_one_ctrl_c_at_exit_ends_a_pool_stuck_in_c(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(
        "import helpers, subinterp\n"
        "pool = subinterp.Pool(1)\n"
        "pool.submit(helpers.signal_then_sleep, 'stuck', 3600)\n"
        "subinterp.channel('stuck').recv(timeout=60)\n"
        "print('ready', flush=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        line = proc.stderr.readline()
        assert "waiting for submitted tasks" in line and "Ctrl-C stops them" in line, line
        proc.send_signal(signal.SIGINT)
        # The pool ends (its worker stuck in C is left behind): the next wait is the
        # process's own, for the stuck interpreter, and it says so.
        line = proc.stderr.readline()
        assert "stuck in C" in line, line
        # ... for at most its grace period: the process then exits, as a Ctrl-C'd one.
        assert proc.wait(timeout=30) in (130, -signal.SIGINT), proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_while_waiting_for_a_task_stuck_in_c_stops_the_pool_without_asking_again(
    tmp_path,
):
    script = tmp_path / "stuck.py"
    script.write_text(
        "import helpers, subinterp\n"
        "pool = subinterp.Pool(1)\n"
        "future = pool.submit(helpers.signal_then_sleep, 'stuck', 3600)\n"
        "subinterp.channel('stuck').recv(timeout=60)\n"
        "print('ready', flush=True)\n"
        "future.result()\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        # The KeyboardInterrupt's traceback, then only the wait for the interpreter
        # stuck in C, which says what Ctrl-C does there: no message asks for a Ctrl-C
        # to stop what the first one already stopped.
        seen = []
        while True:
            line = proc.stderr.readline()
            assert line, seen
            seen.append(line)
            if "subinterp:" in line:
                break
        assert "stuck in C" in line and "Ctrl-C exits at once" in line, seen
        assert "KeyboardInterrupt" in "".join(seen)
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_stops_a_pool_whose_init_never_ends(tmp_path):
    script = tmp_path / "init.py"
    script.write_text(
        "import subinterp\n"
        "try:\n"
        "    subinterp.Pool(1, init=\"print('ready', flush=True)\\nwhile True: pass\")\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "print(subinterp.Pool(1).submit(len, 'abc').result(60), flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert out.split() == ["interrupted", "3"], err
        assert proc.returncode == 0, err
    finally:
        proc.kill()
        proc.wait()


def test_a_runaway_task_past_its_deadline_is_reported_as_such():
    with subinterp.Pool(1, timeout=0.3) as p:
        with pytest.raises(TimeoutError) as info:
            p.submit(helpers.spin).result(60)
        assert str(info.value) == "the task ran past its deadline of 0.300 s"
        # A task's own TimeoutError is its own.
        with pytest.raises(TimeoutError, match="mine"):
            p.submit(helpers.raise_timeout, "mine").result(60)


# ---------------------------------------------------------------- other interpreters


def test_the_package_in_an_interpreter_of_cpythons_own_ends_quietly(tmp_path):
    # Importing it there gives the built-in functions; when that interpreter ends, its
    # exit has no pool to end (the main interpreter's runtime is not its to stop).
    out = run_script(
        tmp_path,
        """
        try:
            import _interpreters as interpreters
        except ImportError:
            import _xxsubinterpreters as interpreters

        if __name__ == "__main__":
            for kind in ("isolated", "legacy"):
                if hasattr(interpreters, "new_config"):
                    interp = interpreters.create(kind)
                else:
                    interp = interpreters.create(isolated=kind == "isolated")
                interpreters.run_string(interp, "import subinterp; subinterp.channel")
                interpreters.destroy(interp)
                print(kind, "ended")
            import subinterp, helpers
            with subinterp.Pool(1) as pool:
                print("pool", pool.submit(helpers.add, 1, 2).result(60))
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr
    assert out.stdout.splitlines() == ["isolated ended", "legacy ended", "pool 3"]


def test_a_thread_started_by_a_workers_atexit_function_does_not_abort_the_process(tmp_path):
    # The worker runs its atexit functions as it ends; a thread one starts has a thread
    # state before it runs, which CPython would end the interpreter under (a fatal
    # error). It is waited for within the grace period, then the worker is left running.
    out = run_script(
        tmp_path,
        """
        import subinterp

        def arm():
            import atexit, _thread, time
            atexit.register(lambda: _thread.start_new_thread(time.sleep, (1000,)))
            return "armed"

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                print(pool.submit(arm).result(60))
            print("shut down")
        """,
    )
    assert "Fatal" not in out.stderr, out.stderr
    assert out.stdout.splitlines() == ["armed", "shut down"], out.stdout + out.stderr
    assert out.returncode == 1, out.stderr
    assert "still run Python threads that did not end" in out.stderr
