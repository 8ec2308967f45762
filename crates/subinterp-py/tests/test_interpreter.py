"""subinterp.Interpreter and subinterp.check."""

import sys
import threading
import time

import pytest

import helpers
import subinterp


def test_exec_call_and_isolation():
    with subinterp.Interpreter() as interp:
        assert interp.id > 0
        interp.exec("import sys\nsys.marker = 'inside'\ncounter = 41")
        assert not hasattr(sys, "marker"), "its sys is its own"
        assert interp.call(helpers.add, 1, 2) == 3
        assert interp.call("operator:add", 40, 2) == 42
        assert interp.call(helpers.norm, helpers.Point(3, 4)) == 25  # pickled argument
        assert interp.call(helpers.make_point, 1, 2) == helpers.Point(1, 2)
        assert interp.call(helpers.interp_id) == interp.id


def test_exceptions_keep_their_type_message_and_traceback():
    with subinterp.Interpreter() as interp:
        with pytest.raises(KeyError, match="missing") as caught:
            interp.call(helpers.fail, "missing")
        assert "helpers.py" in str(caught.value.__cause__)
        with pytest.raises(helpers.Custom, match="mine"):
            interp.call(helpers.raise_custom, "mine")
        with pytest.raises(ZeroDivisionError):
            interp.exec("1 / 0")
        with pytest.raises(SyntaxError):
            interp.exec("def broken(:")
        with pytest.raises(ModuleNotFoundError):
            interp.call("no_such_module_here:f")
        assert interp.call(helpers.add, 2, 2) == 4, "it keeps working"


def test_deadlines_stop_a_runaway_call_and_the_interpreter_is_reused():
    with subinterp.Interpreter(timeout=30) as interp:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            interp.call_with(helpers.spin, timeout=0.3)
        with pytest.raises(TimeoutError):
            interp.exec("while True: pass", timeout=0.3)
        assert time.monotonic() - start < 20
        assert interp.call(helpers.add, 5, 5) == 10


def test_timeouts_follow_the_one_rule_for_seconds():
    # As threading.Lock.acquire: negative or NaN is a ValueError, past TIMEOUT_MAX an
    # OverflowError; a pool's deadline must be positive and within the same limit.
    with subinterp.Interpreter() as interp:
        for bad in (-1, float("nan")):
            with pytest.raises(ValueError, match="timeout"):
                interp.exec("pass", timeout=bad)
        for huge in (1e12, float("inf")):
            with pytest.raises(OverflowError, match="too large"):
                interp.exec("pass", timeout=huge)
        interp.exec("pass", timeout=threading.TIMEOUT_MAX)
    for bad in (0, -1, 1e12, float("inf")):
        with pytest.raises(ValueError, match="invalid pool setting timeout"):
            subinterp.Pool(1, timeout=bad)


def test_the_engine_refuses_a_setting_it_does_not_know():
    # The settings of Pool and Interpreter reach the engine as a dict: a key the engine
    # does not know (misspelt, or added on one side only) is a TypeError naming it.
    from subinterp import _native

    with pytest.raises(TypeError, match="unknown setting 'max_task_per_worker'"):
        _native._pool_new({"workers": 1, "max_task_per_worker": 2})
    with pytest.raises(TypeError, match="unknown setting 'timout'"):
        _native._interp_new({"isolated": True, "timout": 1.0})
    # A pool's setting is not an interpreter's.
    with pytest.raises(TypeError, match="unknown setting 'workers'"):
        _native._interp_new({"workers": 2})
    with pytest.raises(TypeError, match="'isolated' must be a bool"):
        _native._pool_new({"isolated": "no"})
    with pytest.raises(TypeError, match="'init' must be a str"):
        _native._interp_new({"init": ["pass"]})
    with pytest.raises(TypeError, match="dict of settings"):
        _native._pool_new([("workers", 1)])
    # An interpreter's timeout follows the rule of its calls' deadlines, at once.
    with pytest.raises(ValueError, match="timeout"):
        subinterp.Interpreter(timeout=-1)


def test_check_follows_the_one_rule_for_seconds():
    # check()'s timeout is refused by the engine's rule for seconds, as every other
    # timeout of the package: more than 0, at most threading.TIMEOUT_MAX.
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="more than 0"):
            subinterp.check("json", timeout=bad)
    for huge in (1e12, float("inf")):
        with pytest.raises(OverflowError, match="too large"):
            subinterp.check("json", timeout=huge)
    for wrong in ("5", True, [1]):
        with pytest.raises(TypeError, match="number of seconds"):
            subinterp.check("json", timeout=wrong)


def test_closed_interpreter_refuses_work_and_legacy_interpreters_work():
    interp = subinterp.Interpreter(isolated=False, init="value = 7")
    assert interp.call(helpers.add, 1, 1) == 2
    interp.close()
    interp.close()
    with pytest.raises(RuntimeError, match="closed"):
        interp.exec("pass")
    with pytest.raises(TypeError, match="lambda"):
        subinterp.Interpreter().call(lambda: 1)


def test_check_reports_what_the_cli_reports():
    ok = subinterp.check("json")
    assert ok["module"] == "json" and ok["verdict"] == "ok", ok
    assert ok["reason"]
    assert ok["pool"] == "interpreter", ok
    reports = subinterp.check(["psutil", "no_such_module_here", "orjson"])
    assert reports[0]["verdict"] != "ok", reports[0]
    assert reports[0]["culprit"] == "psutil._psutil_linux", reports[0]
    # Where a pool runs it: refused, it imports in a process of its own.
    assert reports[0]["pool"] == "process", reports[0]
    assert reports[1]["verdict"] == "broken", reports[1]
    assert "No module named" in reports[1]["detail"]
    assert reports[1]["pool"] == "nowhere", reports[1]
    assert reports[2]["pool"] == "process", reports[2]
    assert reports[2]["culprit"] == "orjson.orjson", reports[2]


def test_ctrl_c_interrupts_a_call_and_is_raised_in_the_caller(tmp_path):
    import os
    import signal
    import subprocess
    import textwrap

    script = tmp_path / "plugin_host.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n"
        + textwrap.dedent(
            """
            import helpers, subinterp

            if __name__ == "__main__":
                interp = subinterp.Interpreter()
                print("ready", flush=True)
                try:
                    interp.call(helpers.spin)
                except KeyboardInterrupt:
                    print("interrupted", flush=True)
                print(interp.call(helpers.add, 1, 2), flush=True)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split() == ["interrupted", "3"], (out, err)
