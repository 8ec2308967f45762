"""subinterp.Pool runs tasks isolated interpreters refuse (numpy) in worker processes,
with no option; pure-Python tasks of the same pool stay in this process."""

import os
import time

import numpy as np
import pytest

import helpers
import np_helpers
import subinterp


def test_numpy_tasks_run_with_no_option_and_pure_ones_stay_here():
    with subinterp.Pool(2) as pool:
        assert pool.submit(os.getpid).result(60) == os.getpid()
        assert pool.submit(np_helpers.total, 1000).result(120) == np_helpers.total(1000)
        assert pool.submit(np_helpers.pid).result(60) != os.getpid()
        # Not plain data: pickled both ways, equal to running it here.
        got = pool.submit(np_helpers.matrix, 4).result(60)
        assert isinstance(got, np.ndarray)
        assert np.array_equal(got, np_helpers.matrix(4))
        assert list(pool.map(np_helpers.total, range(30))) == [
            np_helpers.total(n) for n in range(30)
        ]
        assert list(pool.map(np_helpers.total, range(30), chunksize=7)) == [
            np_helpers.total(n) for n in range(30)
        ]
        assert pool.submit(helpers.add, 2, 3).result(60) == 5
        assert pool.submit(os.getpid).result(60) == os.getpid()


def test_large_arrays_and_bytes_cross_worker_processes_whole_both_ways():
    rng = np.random.default_rng(5)
    arrays = [
        rng.standard_normal(1_000_000),
        np.arange(600_000, dtype=np.int32).reshape(1000, 600),
        np.asfortranarray(rng.standard_normal((300, 400))),
        rng.standard_normal((800, 800))[::3, 1::2],  # not contiguous
        np.zeros(0),
    ]
    blob = bytes(range(256)) * 20_000  # 5 MB
    with subinterp.Pool(2) as pool:
        for a in arrays:
            got, where = pool.submit(np_helpers.echo, a).result(120)
            assert where != os.getpid()
            assert got.dtype == a.dtype and got.shape == a.shape
            assert np.array_equal(got, a)
            got[...] = 0  # a result is the caller's own array, writable
        for data in (blob, bytearray(blob), [blob, bytearray(blob[:70_000]), "after"]):
            got, where = pool.submit(np_helpers.echo, data).result(120)
            assert where != os.getpid()
            assert type(got) is type(data) and got == data
        doubled = list(pool.map(np_helpers.double, arrays[:3] * 4, chunksize=3))
        for a, d in zip(arrays[:3] * 4, doubled):
            assert np.array_equal(d, a * 2)


def test_exceptions_in_processes_keep_type_and_traceback():
    with subinterp.Pool(1) as pool:
        with pytest.raises(ValueError, match="bad index") as info:
            pool.submit(np_helpers.fail).result(120)
        # As for any task: the worker's traceback, the cause's included, as the cause.
        remote = str(info.value.__cause__)
        assert "in fail" in remote, remote
        assert "IndexError" in remote, remote


def test_an_aborting_process_fails_its_task_and_the_pool_goes_on():
    with subinterp.Pool(1) as pool:
        assert pool.submit(np_helpers.total, 3).result(120) == 3.0
        with pytest.raises(Exception, match="SIGABRT"):
            pool.submit(np_helpers.abort).result(120)
        assert pool.submit(np_helpers.total, 4).result(120) == 6.0


def test_a_dask_cluster_runs_annotated_numpy_tasks():
    import dask
    from distributed import Client, LocalCluster

    import subinterp.dask

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        client.register_plugin(subinterp.dask.PoolPlugin(max_workers=2))
        with dask.annotate(executor="subinterp"):
            got = client.gather(client.map(np_helpers.total, range(20), key="np"))
        assert got == [np_helpers.total(n) for n in range(20)]
        # In the pool's worker processes, not the Dask worker's own.
        dask_worker = set(client.gather(client.map(np_helpers.pid, range(4), key="main")))
        with dask.annotate(executor="subinterp"):
            pool_workers = set(client.gather(client.map(np_helpers.pid, range(4), key="pool")))
        assert not dask_worker & pool_workers


def test_orjson_pydantic_core_lxml_and_regex_tasks_equal_process_pool_executor():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import wheel_helpers as w

    calls = [
        (w.dumps, {"b": [1, 2.5, None], "a": "é"}),
        (w.validate, {"name": "Ada", "age": "42"}),
        (w.validate, {"name": 1, "age": -1}),
        (w.xml_total, 7),
        (w.capitals, "Élan Ünïcode x"),
    ]
    # spawn: this process has threads (the pools of other tests), which fork must not copy.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as peer:
        expected = [peer.submit(f, arg).result(120) for f, arg in calls]
        expected_map = list(peer.map(w.everything, range(25)))
    with subinterp.Pool(2) as pool:
        got = [pool.submit(f, arg).result(120) for f, arg in calls]
        assert got == expected
        assert list(pool.map(w.everything, range(25), chunksize=4)) == expected_map
        assert pool.submit(w.pid).result(60) != os.getpid()
        assert pool.submit(os.getpid).result(60) == os.getpid()
    assert expected[0] == b'{"a":"\xc3\xa9","b":[1,2.5,null]}'
    assert expected[2] == ["string_type", "greater_than_equal"]


def test_channels_and_buffers_of_the_host_fail_clearly_in_a_worker_process():
    ch = subinterp.channel("test-processes-host-only")
    with subinterp.Pool(1) as pool:
        with pytest.raises(RuntimeError) as info:
            pool.submit(np_helpers.send_to, "test-processes-host-only", 5).result(120)
        message = str(info.value)
        assert "channel 'test-processes-host-only' lives in the host process" in message
        assert (
            "it runs in a worker process because an isolated interpreter refused "
            "numpy._core._multiarray_umath" in message
        ), message
        with pytest.raises(RuntimeError, match="shared buffers live in the host process"):
            pool.submit(np_helpers.make_buffer).result(120)
        # The pool and the package go on working in the worker process.
        assert pool.submit(np_helpers.total, 4).result(120) == 6.0
    assert len(ch) == 0


def test_in_processes_sends_a_pure_module_to_worker_processes_from_the_start():
    with subinterp.Pool(1, in_processes=["helpers"]) as pool:
        assert pool.submit(helpers.getpid).result(120) != os.getpid()
    with subinterp.Pool(1) as pool:
        assert pool.submit(helpers.getpid).result(120) == os.getpid()
    with pytest.raises(TypeError, match="in_processes"):
        subinterp.Pool(1, in_processes=[3])
