"""Guard rails (guards=, allow_write=) and stats() of Pool and Interpreter."""

import os
import signal
import pytest

import helpers
import subinterp


def chdir_to(path):
    os.chdir(path)
    return os.getcwd()


def set_env(name, value):
    os.environ[name] = value
    return os.environ[name]


def set_timer(seconds):
    return signal.setitimer(signal.ITIMER_REAL, seconds)


def write_file(path):
    with open(path, "w") as f:
        f.write("written")
    return path


def spin():
    while True:
        pass


def process_env(name):
    """The process's environment variable (this interpreter's os.environ is a copy made
    at its start): as a new interpreter reads it."""
    with subinterp.Interpreter() as fresh:
        return fresh.call("os:getenv", name)


def test_interpreter_refuses_what_its_guards_name_and_the_process_state_stays(tmp_path):
    before = os.getcwd()
    with subinterp.Interpreter(guards=["chdir", "env", "signals"]) as interp:
        with pytest.raises(PermissionError, match="'chdir' guard rail"):
            interp.call(chdir_to, str(tmp_path))
        assert os.getcwd() == before
        with pytest.raises(PermissionError, match="'env' guard rail"):
            interp.call(set_env, "SUBINTERP_PY_GUARD", "1")
        assert process_env("SUBINTERP_PY_GUARD") is None
        with pytest.raises(PermissionError, match="'signals' guard rail"):
            interp.call(set_timer, 1000)
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        stats = interp.stats()
        assert stats["guard_refused"] == 3
        assert stats["guards"]["chdir"] == {"counted": 0, "refused": 1}
    # Without guards, another interpreter can change the environment.
    with subinterp.Interpreter() as free:
        assert free.call(set_env, "SUBINTERP_PY_FREE", "1") == "1"
    assert process_env("SUBINTERP_PY_FREE") == "1"


def test_guard_dicts_count_and_bad_rules_are_value_errors():
    with subinterp.Interpreter(guards={"env": "count", "chdir": "refuse"}) as interp:
        interp.call(set_env, "SUBINTERP_PY_COUNTED", "1")
        assert interp.stats()["guards"]["env"] == {"counted": 1, "refused": 0}
    os.environ.pop("SUBINTERP_PY_COUNTED", None)
    with pytest.raises(ValueError, match="unknown guard rule"):
        subinterp.Interpreter(guards="cwd")


def test_pool_guards_and_allow_write(tmp_path):
    allowed = tmp_path / "out"
    allowed.mkdir()
    with subinterp.Pool(2, guards="process", allow_write=[allowed]) as pool:
        assert pool.submit(write_file, str(allowed / "a.txt")).result() == str(
            allowed / "a.txt"
        )
        with pytest.raises(PermissionError, match="'write' guard rail"):
            pool.submit(write_file, str(tmp_path / "b.txt")).result()
        with pytest.raises(PermissionError, match="'chdir' guard rail"):
            pool.submit(chdir_to, str(tmp_path)).result()
    assert not (tmp_path / "b.txt").exists()
    stats = pool.stats()
    assert stats["guards"]["write"]["refused"] == 1
    assert stats["guards"]["chdir"]["refused"] == 1


def test_pool_stats_count_each_outcome():
    with subinterp.Pool(1, timeout=0.5) as pool:
        for i in range(3):
            assert pool.submit(helpers.add, i, 1).result() == i + 1
        with pytest.raises(KeyError):
            pool.submit(helpers.fail, "missing").result()
        spinning = pool.submit(spin)
        queued = pool.submit(helpers.add, 1, 1)
        assert queued.cancel()
        with pytest.raises(TimeoutError):
            spinning.result()
    stats = pool.stats()
    assert stats["tasks_ok"] == 3, stats
    assert stats["tasks_failed"] == 1, stats
    assert stats["tasks_timed_out"] == 1, stats
    assert stats["tasks_cancelled"] == 1, stats
    assert stats["tasks_run"] == 6, stats
    assert stats["interpreters_created"] == 1, stats
    assert stats["interpreters_ended"] == 1, stats
    assert stats["memory_bytes"] is None or isinstance(stats["memory_bytes"], int)


def test_interpreter_stats_count_calls_and_channel_messages():
    with subinterp.Interpreter() as interp:
        before = interp.stats()
        interp.exec("import subinterp\nch = subinterp.channel('py-stats')\nch.send(b'abcd')")
        with pytest.raises(KeyError):
            interp.call(helpers.fail, "missing")
        stats = interp.stats()
    assert stats["tasks_ok"] - before["tasks_ok"] == 1, stats
    assert stats["tasks_failed"] - before["tasks_failed"] == 1, stats
    assert (stats["messages_sent"], stats["bytes_sent"]) == (1, 4), stats
    assert subinterp.channel("py-stats").recv() == b"abcd"
