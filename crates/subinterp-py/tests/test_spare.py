"""The spare interpreter the package makes when it is imported: taken by the first pool
or Interpreter of the default kind, ended before a fork and at exit, never made where no
pool runs."""

import concurrent.futures
import multiprocessing
import os
import subprocess
import sys

import pytest

import helpers
from helpers import run_script

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="counts threads through /proc"
)

def _ok(out):
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr == "", out.stderr
    return out.stdout.splitlines()


def test_the_first_pool_takes_the_spare_made_at_import(tmp_path):
    # Its os.environ is the process's when the pool starts, not when the spare was made.
    out = run_script(
        tmp_path,
        """
        import os, helpers, subinterp
        from helpers import wait_for_interpreter_threads as wait_for

        if __name__ == "__main__":
            print("after import", wait_for(1))
            # Changed after the spare read the environment.
            os.environ["SUBINTERP_TEST_LATE"] = "late"
            del os.environ["SUBINTERP_TEST_GONE"]
            os.environ["TZ"] = "ABC+3"
            with subinterp.Pool(1) as pool:
                print("pool", pool.submit(helpers.add, 1, 2).result(60))
                late = pool.submit(helpers.getenv, "SUBINTERP_TEST_LATE").result(60)
                gone = pool.submit(helpers.getenv, "SUBINTERP_TEST_GONE").result(60)
                print("environ", late, gone, pool.submit(helpers.tzname).result(60))
                # The spare's thread is the worker's: no other interpreter thread.
                print("threads", helpers.interpreter_threads())
            print("after shutdown", wait_for(0))
            with subinterp.Pool(1) as pool:
                print("second pool", pool.submit(helpers.add, 2, 3).result(60))
        """,
        env={"SUBINTERP_TEST_GONE": "gone", "TZ": "XYZ-2"},
    )
    assert _ok(out) == [
        "after import 1",
        "pool 3",
        "environ late None ABC",
        "threads 1",
        "after shutdown 0",
        "second pool 5",
    ]


def test_an_interpreter_takes_the_spare_and_a_legacy_pool_leaves_it(tmp_path):
    out = run_script(
        tmp_path,
        """
        import helpers, subinterp
        from helpers import wait_for_interpreter_threads as wait_for

        if __name__ == "__main__":
            wait_for(1)
            with subinterp.Pool(1, isolated=False) as pool:
                print("legacy", pool.submit(helpers.add, 1, 2).result(60))
                print("threads", helpers.interpreter_threads())
            print("after shutdown", wait_for(1))
            with subinterp.Interpreter() as interp:
                print("interpreter", interp.call(helpers.add, 3, 4))
                print("threads", helpers.interpreter_threads())
        """,
    )
    assert _ok(out) == [
        "legacy 3",
        "threads 2",
        "after shutdown 1",
        "interpreter 7",
        "threads 1",
    ]


def test_no_spare_when_the_environment_says_so(tmp_path):
    script = """
        import helpers, subinterp, time
        if __name__ == "__main__":
            time.sleep(0.5)
            print("after import", helpers.interpreter_threads())
            with subinterp.Pool(1) as pool:
                print("pool", pool.submit(helpers.add, 1, 2).result(60))
        """
    env = {"SUBINTERP_SPARE": "0"}
    assert _ok(run_script(tmp_path, script, env=env)) == ["after import 0", "pool 3"]


def test_a_fork_ends_the_spare_first_and_a_pool_works_after(tmp_path):
    # -W error: CPython 3.12+ warns (DeprecationWarning) when a multi-threaded process
    # forks; the spare's thread must be gone by then.
    out = run_script(
        tmp_path,
        """
        import os, helpers, subinterp
        from helpers import wait_for_interpreter_threads as wait_for

        if __name__ == "__main__":
            wait_for(1)
            pid = os.fork()
            if pid == 0:
                os._exit(0 if helpers.interpreter_threads() == 0 else 1)
            print("child", os.waitpid(pid, 0)[1])
            print("parent threads", helpers.interpreter_threads())
            with subinterp.Pool(1) as pool:
                print("pool", pool.submit(helpers.add, 1, 2).result(60))
        """,
        python_args=["-W", "error::DeprecationWarning"],
    )
    assert _ok(out) == ["child 0", "parent threads 0", "pool 3"]


def test_exiting_while_the_spare_is_being_made_is_quiet():
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", "import subinterp"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0 and out.stderr == "", out.stderr


def test_processes_that_run_no_pool_make_no_spare():
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as executor:
        pid, threads = executor.submit(helpers.threads_after_importing_the_package).result(120)
        assert pid != os.getpid() and threads == 0
    import subinterp

    # The pool's own worker processes.
    with subinterp.Pool(1, in_processes=["helpers"]) as pool:
        pid, threads = pool.submit(helpers.threads_after_importing_the_package).result(120)
        assert pid != os.getpid() and threads == 0


def test_ctrl_c_while_the_spare_is_being_made_exits_as_python_does():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, subinterp; os.kill(os.getpid(), signal.SIGINT)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode in (130, -2), (out.returncode, out.stderr)
    assert "KeyboardInterrupt" in out.stderr
    assert "Fatal" not in out.stderr
