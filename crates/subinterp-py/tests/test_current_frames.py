"""``sys._current_frames()`` and ``sys._current_exceptions()`` beside running interpreters.

CPython's own walk the threads of every interpreter and abort the process within
milliseconds while other interpreters run Python (hazard ``current-frames``); the
package's runtime replaces them, in the main interpreter and in every worker, by
functions that report the calling interpreter's threads only.
"""

import os
import subprocess
import sys
import textwrap
import threading
import traceback

import sampling
import subinterp

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_a_sampler_in_the_main_interpreter_survives_a_pool_run(tmp_path):
    # Started before the pool, as a profiler is: the runtime's start replaces the
    # functions under it. A fresh process, so that a crash is a failure of this test.
    script = tmp_path / "sampled.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, threading
            sys.path.insert(0, {TESTS!r})
            import sampling, subinterp

            if __name__ == "__main__":
                workers = set()
                with sampling.Sampler() as sampler:
                    with subinterp.Pool(3) as pool:
                        for _ in range(4):
                            workers.update(pool.map(sampling.busy_ident, [20000] * 150))
                assert sampler.samples >= 10, sampler.samples
                assert not sampler.errors, sampler.errors
                assert not sampler.seen & workers, (sampler.seen, workers)
                assert threading.get_ident() in sampler.seen
                print("ok", sampler.samples, len(workers))
            """
        )
    )
    for run in range(2):
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"run {run}: status {out.returncode}\n{out.stderr}"
        assert out.stdout.startswith("ok "), out.stdout


def test_the_main_interpreter_lists_its_own_threads_while_a_pool_runs():
    with subinterp.Pool(2) as pool:
        futures = [pool.submit(sampling.busy_ident, 200000) for _ in range(4)]
        frames = sys._current_frames()
        workers = {f.result(60) for f in futures}
    me = threading.get_ident()
    assert sys._current_frames.__module__ == "sys"
    assert "test_the_main_interpreter" in "".join(traceback.format_stack(frames[me]))
    assert not set(frames) & workers
    try:
        raise KeyError("handled")
    except KeyError as exc:
        assert sys._current_exceptions()[me] is exc
    assert sys._current_exceptions()[me] is None


def test_a_worker_sees_its_own_thread_only():
    with subinterp.Pool(2) as pool:
        view = pool.submit(sampling.worker_view).result(60)
    assert view["threads"] == [view["me"]]
    assert view["module"] == "sys"
    assert "worker_view" in view["stack"]
