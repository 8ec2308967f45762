"""Dask tasks whose module isolated interpreters refuse (numpy), annotated for the
``subinterp`` executor of ``subinterp.dask.PoolPlugin`` — which runs them in the pool's
worker processes — against the same tasks on the Dask worker's own threads (what the
other design, handing refused tasks back to the worker's default executor, would cost
at best), in one run::

    python bench/dask_refused.py [--tasks N] [--rounds R]

One ``LocalCluster`` worker process with 2 threads, a pool of 2; each case timed over
R rounds of N tasks (submit and gather), after a warm-up. Cases (``process_tasks``):
``tiny`` (``x + 1`` of a numpy-importing module: the cost of the route) and ``matrix``
(a 120x120 matrix product, an int in and a float out) and ``python`` (a pure-Python
loop of 200k steps in the same numpy-importing module: it holds the GIL, so the Dask
worker's two threads take turns while two worker processes run in parallel).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import process_tasks as t  # noqa: E402
import subinterp.dask  # noqa: E402


def timed(client, fn, n, annotated, tag, arg=None):
    """Seconds to run ``fn`` on 0..n-1 (or n times on ``arg``) and gather the results."""
    start = time.perf_counter()
    key = f"{fn.__name__}-{tag}-{time.time_ns()}"
    args = range(n) if arg is None else [arg] * n
    if annotated:
        with dask.annotate(executor="subinterp"):
            futures = client.map(fn, args, key=key, pure=False)
    else:
        futures = client.map(fn, args, key=key, pure=False)
    client.gather(futures)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        client.run(lambda: sys.path.insert(0, here))
        client.register_plugin(subinterp.dask.PoolPlugin(max_workers=2))
        print(f"{args.rounds} rounds of {args.tasks} tasks; median (min) ms")
        cases = (("tiny", t.np_tiny, None), ("matrix", t.np_scalar, None), ("python", t.pure, 200_000))
        for name, fn, arg in cases:
            for annotated in (True, False):
                timed(client, fn, 20, annotated, "warm", arg)
            rows = {}
            for annotated in (True, False):
                runs = sorted(
                    timed(client, fn, args.tasks, annotated, str(r), arg) * 1000
                    for r in range(args.rounds)
                )
                rows[annotated] = runs
            pool, threads = rows[True], rows[False]
            mid = len(pool) // 2
            print(
                f"{name:7} pool worker processes {pool[mid]:7.0f} ({pool[0]:.0f})   "
                f"Dask worker threads {threads[mid]:7.0f} ({threads[0]:.0f})   "
                f"ratio {threads[mid] / pool[mid]:.2f}"
            )


if __name__ == "__main__":
    main()
