"""Every wait of subinterp.Interpreter is bounded and interruptible: deadlines fire on C
code holding the interpreter's GIL, Ctrl-C (a real SIGINT to a child process) stops
calls, constructors, close() and exit, and an interpreter stuck in C is left behind with
a message instead of hanging the program.

Code stuck in C keeps its interpreter for good, so those cases run in child processes.
Times are asserted with wide margins.
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import helpers
import subinterp

# Backtracking that runs for hours in C, holding the interpreter's GIL.
STUCK_IN_C = "import re\nre.match(r'(a+)+$', 'a' * 34 + 'b')"


def start_child(tmp_path, body: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        "import time, helpers, subinterp\n"
        f"STUCK_IN_C = {STUCK_IN_C!r}\n"
        # The main script is loaded in every interpreter too (as __mp_main__).
        "if __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(body), "    ")
    )
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_line(proc: subprocess.Popen, expected: str) -> None:
    line = proc.stdout.readline().strip()
    assert line == expected, (line, proc.stderr.read() if proc.poll() is not None else "")


def test_a_deadline_fires_on_c_code_holding_the_gil_and_exit_leaves_it_behind(tmp_path):
    proc = start_child(
        tmp_path,
        """
        interp = subinterp.Interpreter()
        start = time.monotonic()
        try:
            interp.exec(STUCK_IN_C, timeout=0.5)
        except TimeoutError as exc:
            print("timeout", time.monotonic() - start, exc, flush=True)
        """,
    )
    started = time.monotonic()
    out, err = proc.communicate(timeout=120)
    words = out.split()
    assert words[0] == "timeout", (out, err)
    assert float(words[1]) < 10, out
    assert "blocked in C code" in out, out
    # Exit: close() leaves the interpreter behind, and the process ends without hanging.
    assert "left running" in err, err
    assert "exits now with status 1" in err, err
    assert proc.returncode == 1, err
    assert time.monotonic() - started < 60


def test_ctrl_c_stops_a_call_in_c_code_and_a_blocked_close(tmp_path):
    proc = start_child(
        tmp_path,
        """
        interp = subinterp.Interpreter()
        print("ready", flush=True)
        start = time.monotonic()
        try:
            interp.exec(STUCK_IN_C)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic() - start, flush=True)
        interp2 = subinterp.Interpreter()
        try:
            interp2.exec("import threading\\nthreading.Event().wait()", timeout=0.3)
        except TimeoutError:
            print("timeout", flush=True)
        print("closing", flush=True)
        interp2.close()
        print("not reached", flush=True)
        """,
    )
    wait_for_line(proc, "ready")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    words = proc.stdout.readline().split()
    assert words[0] == "interrupted", words
    assert float(words[1]) < 10, words
    wait_for_line(proc, "timeout")
    wait_for_line(proc, "closing")
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20
    assert "not reached" not in out, (out, err)
    assert "KeyboardInterrupt" in err, err
    # Ended by Ctrl-C, without finalising (code is still stuck): as Python dies of SIGINT.
    assert proc.returncode in (-signal.SIGINT, 130), (proc.returncode, err)


def test_close_and_exit_end_past_a_grace_period_after_a_timeout_in_a_c_wait(tmp_path):
    proc = start_child(
        tmp_path,
        """
        interp = subinterp.Interpreter()
        try:
            interp.exec("import threading\\nthreading.Event().wait()", timeout=0.3)
        except TimeoutError:
            print("timeout", flush=True)
        try:
            interp.exec("pass", timeout=0.2)
        except TimeoutError as exc:
            print("busy" if "did not start" in str(exc) else exc, flush=True)
        start = time.monotonic()
        interp.close()
        print("closed", time.monotonic() - start, flush=True)
        """,
    )
    started = time.monotonic()
    out, err = proc.communicate(timeout=120)
    lines = out.splitlines()
    assert lines[:2] == ["timeout", "busy"], (out, err)
    words = lines[2].split()
    assert words[0] == "closed" and float(words[1]) < 30, (out, err)
    assert "left running" in err, err
    assert proc.returncode == 1, err
    assert time.monotonic() - started < 60


def test_ctrl_c_stops_an_interpreters_init(tmp_path):
    proc = start_child(
        tmp_path,
        """
        print("ready", flush=True)
        try:
            subinterp.Interpreter(init="while True: pass")
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        with subinterp.Interpreter() as interp:
            print(interp.call(helpers.add, 1, 2), flush=True)
        """,
    )
    wait_for_line(proc, "ready")
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["interrupted", "3"], (out, err)
    assert proc.returncode == 0, err


def test_ctrl_c_stops_a_pools_start_without_setup_timeout(tmp_path):
    proc = start_child(
        tmp_path,
        """
        print("ready", flush=True)
        start = time.monotonic()
        try:
            subinterp.Pool(2, init="while True: pass")
        except KeyboardInterrupt:
            print("interrupted", time.monotonic() - start, flush=True)
        """,
    )
    wait_for_line(proc, "ready")
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    words = proc.stdout.readline().split()
    assert words and words[0] == "interrupted", (words, proc.stderr.read())
    assert float(words[1]) < 15, words
    # The worker whose set-up never ends does not keep the program from exiting.
    out, err = proc.communicate(timeout=60)
    assert proc.returncode is not None, err


def test_an_interpreters_init_has_its_deadline():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="init"):
        subinterp.Interpreter(init="while True: pass", timeout=0.5)
    assert time.monotonic() - start < 20


def test_closing_from_another_thread_is_a_clear_error_in_the_running_call():
    interp = subinterp.Interpreter()
    got = []

    def run():
        try:
            interp.call(helpers.spin)
        except BaseException as exc:  # noqa: B902 - what the caller sees
            got.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    time.sleep(0.5)
    interp.close()
    caller.join(30)
    assert not caller.is_alive()
    assert isinstance(got[0], RuntimeError), got
    assert "closed" in str(got[0])


def test_a_runaway_task_past_its_deadline_is_reported_as_timed_out():
    with subinterp.Pool(1) as pool:
        future = pool.submit_with(helpers.spin, timeout=0.3)
        with pytest.raises(TimeoutError) as info:
            future.result(timeout=30)
    assert "deadline" in str(info.value), info.value
    assert "returned a result" not in str(info.value), info.value


def test_close_cancels_a_call_queued_behind_the_interrupted_one(tmp_path):
    # Two threads call the same interpreter: the second call waits behind the first.
    # close() interrupts the first; the second, pure Python, is cancelled once the grace
    # period has passed instead of keeping the interpreter (and the program's exit status).
    proc = start_child(
        tmp_path,
        """
        import threading
        interp = subinterp.Interpreter()
        got = []

        def run():
            try:
                interp.exec("while True: pass")
            except BaseException as exc:
                got.append(type(exc).__name__)

        callers = [threading.Thread(target=run) for _ in range(2)]
        for caller in callers:
            caller.start()
            time.sleep(0.3)
        interp.close()
        for caller in callers:
            caller.join(60)
        print(*got, flush=True)
        """,
    )
    out, err = proc.communicate(timeout=120)
    assert out.split() == ["RuntimeError", "RuntimeError"], (out, err)
    assert "left running" not in err, err
    assert proc.returncode == 0, err


def test_ctrl_c_while_exit_first_waits_for_code_stuck_in_c_exits_at_once(tmp_path):
    # The first second of exit's wait for an interpreter stuck in C (here, an init given
    # up with Ctrl-C): a second Ctrl-C then ends the process as Ctrl-C does, instead of
    # letting Python finalise beside the running interpreter (a fatal error on 3.12).
    proc = start_child(
        tmp_path,
        """
        print("ready", flush=True)
        try:
            subinterp.Interpreter(init=STUCK_IN_C)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """,
    )
    wait_for_line(proc, "ready")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    wait_for_line(proc, "interrupted")
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Fatal Python error" not in err, err
    assert "Traceback" not in err, err
    assert proc.returncode in (-signal.SIGINT, 130), (proc.returncode, err)


def test_ctrl_c_in_close_does_not_make_exit_wait_again(tmp_path):
    # Ctrl-C stops close() waiting for code stuck in C; the program then ends without a
    # second wait for the same code.
    proc = start_child(
        tmp_path,
        """
        interp = subinterp.Interpreter()
        try:
            interp.exec("import threading\\nthreading.Event().wait()", timeout=0.3)
        except TimeoutError:
            pass
        print("closing", flush=True)
        interp.close()
        """,
    )
    wait_for_line(proc, "closing")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err, err
    assert "waiting up to" not in err, err
    assert proc.returncode in (-signal.SIGINT, 130), (proc.returncode, err)


def test_init_runs_where_exec_runs_and_its_errors_give_its_own_lines():
    # (pytest's own main script is loaded in the interpreter, as a user's would be.)
    with pytest.raises(SyntaxError, match=r"<init>, line 2"):
        subinterp.Interpreter(init="x = 1\ny = (")
    with subinterp.Interpreter(init="import math\nvalue = math.sqrt(16)") as interp:
        interp.exec("assert value == 4.0")


def test_exit_closes_several_stuck_interpreters_at_once(tmp_path):
    # Four interpreters blocked in C at exit: their grace periods run together, not one
    # after another (which took over 20 s).
    proc = start_child(
        tmp_path,
        """
        interps = [subinterp.Interpreter() for _ in range(4)]
        for interp in interps:
            try:
                interp.exec("import threading\\nthreading.Event().wait()", timeout=0.1)
            except TimeoutError:
                pass
        print("done", flush=True)
        """,
    )
    wait_for_line(proc, "done")
    ending = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert err.count("left running") == 4, err
    assert proc.returncode == 1, err
    assert time.monotonic() - ending < 16, err
