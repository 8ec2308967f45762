"""A real Dask LocalCluster whose workers run annotated tasks on subinterp pools."""

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
