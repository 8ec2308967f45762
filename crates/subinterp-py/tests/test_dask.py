"""A real Dask LocalCluster whose workers run annotated tasks on subinterp pools."""

import os
import subprocess
import sys

import dask
import pytest
from distributed import Client, LocalCluster

import helpers
import subinterp.dask


@pytest.fixture(scope="module")
def client():
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        client.register_plugin(subinterp.dask.PoolPlugin(max_workers=2))
        yield client


def test_annotated_tasks_run_in_subinterpreters_with_the_default_results(client):
    numbers = list(range(1, 400))
    expected = client.gather(client.map(helpers.collatz_steps, numbers, key="default"))
    with dask.annotate(executor="subinterp"):
        got = client.gather(client.map(helpers.collatz_steps, numbers, key="pool"))
        where = client.gather(client.map(helpers.where, range(20)))
    assert got == expected == [helpers.collatz_steps(n) for n in numbers]
    # Default-executor tasks run in each worker's main interpreter (id 0), annotated
    # ones in its pool's isolated interpreters.
    assert client.gather(client.map(helpers.where, range(20), key="main")) == [0] * 20
    assert all(i > 0 for i in where), where


def test_a_delayed_graph_with_dependencies(client):
    def build():
        parts = [dask.delayed(helpers.collatz_steps)(n) for n in range(1, 200)]
        return dask.delayed(helpers.total)(parts)

    expected = client.compute(build(), optimize_graph=False).result(120)
    with dask.annotate(executor="subinterp"):
        graph = build()
    assert client.compute(graph, optimize_graph=False).result(120) == expected


def test_lambdas_and_task_errors_come_back_as_dask_reports_them(client):
    with dask.annotate(executor="subinterp"):
        doubled = client.submit(lambda x: 2 * x, 21, key="lambda")
        failed = client.submit(helpers.fail, "no such key", key="fail")
    assert doubled.result(120) == 42
    with pytest.raises(KeyError, match="no such key"):
        failed.result(120)


# Dask's worker profiler calls sys._current_frames() every 10 ms (its default
# distributed.worker.profile.interval); CPython's own aborted the workers running the
# README's recipe (hazard current-frames). Each cluster runs in a fresh process, so that a
# crash is a failure of its test.
PROFILED = """
import sys, time
sys.path.insert(0, {tests!r})
import dask
from distributed import Client, LocalCluster
import sampling, subinterp.dask

if __name__ == "__main__":
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert dask.config.get("distributed.worker.profile.interval") == "10ms"
    expected = sampling.busy(200000)
    with LocalCluster(
        n_workers=2, threads_per_worker=2, processes={processes}, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        client.register_plugin(subinterp.dask.PoolPlugin(max_workers=2))
        # Annotated tasks run in the pools' interpreters while the others keep the
        # workers' threads busy, and so their profilers sampling; rounds until a profile
        # cycle (1 s) has been recorded.
        deadline = time.monotonic() + 120
        rounds = 0
        while rounds < 2 or client.profile()["count"] == 0:
            assert time.monotonic() < deadline, "the profiler recorded nothing"
            with dask.annotate(executor="subinterp"):
                annotated = client.map(sampling.busy, [200000] * 40, key=f"pool{{rounds}}")
            plain = client.map(sampling.busy, [200000] * 40, key=f"plain{{rounds}}")
            assert client.gather(annotated) == client.gather(plain) == [expected] * 40
            rounds += 1
    print("ok", rounds)
"""


@pytest.mark.parametrize("processes", [False, True], ids=["in-process", "worker-processes"])
def test_the_readme_recipe_runs_with_the_profiler_on(tmp_path, processes):
    script = tmp_path / "profiled.py"
    script.write_text(PROFILED.format(tests=os.path.dirname(__file__), processes=processes))
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, f"status {out.returncode}\n{out.stderr[-4000:]}"
    assert out.stdout.startswith("ok "), out.stdout
    assert "KilledWorker" not in out.stderr and "free()" not in out.stderr, out.stderr[-4000:]
