"""One cold start of a pool, to be timed as a whole process from outside.

    python bench/cold_start.py [subinterp|process_pool|mp_pool] [WORKERS]

Imports the pool's module, creates a pool of WORKERS (default 2), submits one trivial
task, takes its result and shuts the pool down: what a short script that uses a pool
pays. Time it with public tools, the peers in turn, e.g.

    hyperfine -N 'python bench/cold_start.py subinterp' \\
                 'python bench/cold_start.py process_pool'

or `/usr/bin/time -v` over a loop. `python -c pass` gives the interpreter's own start.
bench/python_pool.py measures the same from inside (import, first result and shutdown
apart) for every peer in one run.
"""
import sys


def trivial(x=None):
    return x


def main(argv):
    peer = argv[0] if argv else "subinterp"
    workers = int(argv[1]) if len(argv) > 1 else 2
    if peer == "subinterp":
        import subinterp

        pool = subinterp.Pool(max_workers=workers)
    elif peer == "process_pool":
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers)
    elif peer == "mp_pool":
        import multiprocessing

        mp_pool = multiprocessing.Pool(workers)
        result = mp_pool.apply_async(trivial, (1,)).get()
        mp_pool.close()
        mp_pool.join()
        assert result == 1
        return
    else:
        raise SystemExit(f"unknown peer {peer!r}: subinterp, process_pool or mp_pool")
    result = pool.submit(trivial, 1).result()
    pool.shutdown(wait=True)
    assert result == 1


if __name__ == "__main__":
    main(sys.argv[1:])
