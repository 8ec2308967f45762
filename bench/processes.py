"""subinterp.Pool on tasks isolated interpreters refuse (numpy), which it runs in worker
processes, against ProcessPoolExecutor and multiprocessing.Pool, in one run::

    python bench/processes.py [--workers N] [--rounds R]

Cases (each peer with N workers, started and warmed before timing; the best of R rounds):

- ``numpy scalars``: 400 tasks, an int in, a float out (a 120x120 matrix product each);
- ``numpy arrays``: 200 tasks, a 100k float64 array in and out;
- ``overhead``: 500 tasks ``x + 1`` of a numpy-importing module, one at a time (submit,
  wait): the cost of a process-run task;
- ``mixed``: 200 pure-Python tasks and 200 numpy tasks, interleaved.
"""

import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import process_tasks as t  # noqa: E402
import subinterp  # noqa: E402


def best(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cases(n_scalar, n_array, n_overhead, n_mixed):
    arrays = [np.full(100_000, float(i)) for i in range(n_array)]
    expected_scalars = None

    def scalars(map_fn):
        nonlocal expected_scalars
        got = list(map_fn(t.np_scalar, range(n_scalar)))
        if expected_scalars is None:
            expected_scalars = got
        assert got == expected_scalars

    def array_case(map_fn):
        got = list(map_fn(t.np_array, arrays))
        assert len(got) == n_array and got[3][0] == np.sqrt(10.0)

    def overhead(submit):
        for i in range(n_overhead):
            assert submit(t.np_tiny, i) == i + 1

    def mixed(map_fn):
        fns = [t.pure, t.np_scalar] * (n_mixed // 2)
        args = [20_000 if fn is t.pure else i for i, fn in enumerate(fns)]
        got = list(map_fn(lambda_call, list(zip(fns, args))))
        assert len(got) == n_mixed

    return scalars, array_case, overhead, mixed


def lambda_call(pair):
    fn, arg = pair
    return fn(arg)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    w, rounds = args.workers, args.rounds
    scalars, array_case, overhead, mixed = cases(400, 200, 500, 400)
    print(f"Python {sys.version.split()[0]}, numpy {np.__version__}, {w} workers, best of {rounds}")

    results = {}

    with subinterp.Pool(w) as pool:
        # Warm: the refusal is met once, and every worker process started.
        list(pool.map(t.np_scalar, range(4 * w)))
        list(pool.map(t.pure, [10] * (4 * w)))
        results["subinterp.Pool"] = (
            best(lambda: scalars(pool.map), rounds),
            best(lambda: array_case(pool.map), rounds),
            best(lambda: overhead(lambda f, x: pool.submit(f, x).result()), rounds),
            best(lambda: mixed(mixed_map(pool)), rounds),
        )

    with concurrent.futures.ProcessPoolExecutor(w) as ex:
        list(ex.map(t.np_scalar, range(4 * w)))
        results["ProcessPoolExecutor"] = (
            best(lambda: scalars(ex.map), rounds),
            best(lambda: array_case(ex.map), rounds),
            best(lambda: overhead(lambda f, x: ex.submit(f, x).result()), rounds),
            best(lambda: mixed(ex.map), rounds),
        )

    with multiprocessing.Pool(w) as mp:
        mp.map(t.np_scalar, range(4 * w))
        results["multiprocessing.Pool"] = (
            best(lambda: scalars(mp.imap), rounds),
            best(lambda: array_case(mp.imap), rounds),
            best(lambda: overhead(lambda f, x: mp.apply(f, (x,))), rounds),
            best(lambda: mixed(mp.imap), rounds),
        )

    print(f"{'':22} {'numpy scalars':>14} {'numpy arrays':>13} {'per task':>10} {'mixed':>9}")
    for name, (s, a, o, m) in results.items():
        print(f"{name:22} {s * 1e3:11.1f} ms {a * 1e3:10.1f} ms {o / 500 * 1e6:7.0f} us {m * 1e3:6.1f} ms")


def mixed_map(pool):
    # The functions themselves, so that pure ones run in interpreters and numpy ones in
    # processes (a wrapper would be one function, routed as one).
    def run(_, pairs):
        futures = [pool.submit(fn, arg) for fn, arg in pairs]
        return [f.result() for f in futures]

    return run


if __name__ == "__main__":
    main()
