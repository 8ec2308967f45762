"""Peer figures for the foundation benchmark, measured on the same Python.

Prints one JSON object:
  create_close_ms   median create+destroy of an isolated interpreter through CPython's
                    own low-level module (_interpreters on 3.13+, _xxsubinterpreters on 3.12)
  exec_roundtrip_us median of running a tiny statement in an existing interpreter that way
  thread_roundtrip_us median submit()+result() of a tiny call on a ThreadPoolExecutor
  thread_speedup    K threads running a CPU-bound function vs one thread running K calls
Usage: python3 peers_foundation.py K WORK_N
"""
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

try:
    import _interpreters as interpreters
except ImportError:  # Python 3.12
    import _xxsubinterpreters as interpreters


def work(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def median_of(fn, repeat):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    k = int(sys.argv[1])
    work_n = int(sys.argv[2])

    def create_close():
        interp = interpreters.create()  # isolated by default
        interpreters.destroy(interp)

    create_close()
    create_close_ms = median_of(create_close, 30) * 1e3

    interp = interpreters.create()
    run = getattr(interpreters, "exec", None) or interpreters.run_string
    run(interp, "x = 1")
    exec_us = median_of(lambda: run(interp, "x = 1"), 20000) * 1e6
    interpreters.destroy(interp)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(abs, 1).result()
        thread_us = median_of(lambda: pool.submit(abs, 1).result(), 20000) * 1e6

    start = time.perf_counter()
    for _ in range(k):
        work(work_n)
    sequential = time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=k) as pool:
        start = time.perf_counter()
        list(pool.map(work, [work_n] * k))
        parallel = time.perf_counter() - start

    print(json.dumps({
        "python": sys.version.split()[0],
        "create_close_ms": create_close_ms,
        "exec_roundtrip_us": exec_us,
        "thread_roundtrip_us": thread_us,
        "thread_speedup": sequential / parallel,
    }))


if __name__ == "__main__":
    main()
