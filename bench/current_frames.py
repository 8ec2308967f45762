"""Counts crashes of ``sys._current_frames()`` samplers beside running interpreters.

Each run is a fresh process of the given Python with the ``subinterp`` package installed:
a thread of the main interpreter calls ``sys._current_frames()`` and
``sys._current_exceptions()`` every millisecond while a ``subinterp.Pool`` runs Python
tasks (``pool``), or a Dask ``LocalCluster`` with its worker profiler on (Dask's
defaults) runs the README's recipe, in process (``dask-inproc``) or with worker processes
(``dask-processes``). CPython's own functions walk every interpreter's threads and abort
the process within milliseconds; subinterp's replacements do not::

    python bench/current_frames.py [--runs N] [pool|dask-inproc|dask-processes ...]

A run counts as crashed when the process dies of a signal or does not print ``ok``
(Dask reports a dead worker as ``KilledWorker``).
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

SAMPLER = """
import sys, threading, time

def sample(stop):
    while not stop.is_set():
        sys._current_frames()
        sys._current_exceptions()
        time.sleep(0.001)
"""

POOL = SAMPLER + """
import subinterp

def work(n):
    total = 0
    for k in range(n):
        total += k * k
    return total

if __name__ == "__main__":
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop,))
    sampler.start()
    with subinterp.Pool(4) as pool:
        for _ in range(3):
            assert list(pool.map(work, [20000] * 200)) == [work(20000)] * 200
    stop.set()
    sampler.join()
    print("ok")
"""

DASK = """
import dask
from distributed import Client, LocalCluster
import subinterp.dask

def score(n):
    total = 0
    for k in range(n):
        total += k * k
    return total

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=2, processes={processes},
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.register_plugin(subinterp.dask.PoolPlugin(max_workers=2))
        with dask.annotate(executor="subinterp"):
            futures = client.map(score, [200000] * 80)
        assert client.gather(futures) == [score(200000)] * 80
    print("ok")
"""

SCRIPTS = {
    "pool": POOL,
    "dask-inproc": DASK.format(processes=False),
    "dask-processes": DASK.format(processes=True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("scenarios", nargs="*", default=list(SCRIPTS))
    args = parser.parse_args()
    for name in args.scenarios:
        crashed = 0
        directory = tempfile.mkdtemp()
        script = os.path.join(directory, "sampled.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(SCRIPTS[name]))
        for _ in range(args.runs):
            try:
                out = subprocess.run(
                    [sys.executable, script],
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                )
                ok = out.returncode == 0 and "ok" in out.stdout.split()
            except subprocess.TimeoutExpired:
                ok = False
            crashed += not ok
        print(f"{name}: {crashed}/{args.runs} crashed (Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
