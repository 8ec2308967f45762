"""Demo script for `subinterp run`: CPU-bound work, reported per interpreter.

Run several copies at once; each runs in its own interpreter with its own GIL, so the
copies use every core:
    subinterp run --copies 4 examples/scripts/primes_report.py
"""
import time


def interpreter_id():
    try:
        import _interpreters  # Python 3.13+: returns (id, whence)
        current = _interpreters.get_current()
        return current[0] if isinstance(current, tuple) else current
    except ImportError:
        import _xxsubinterpreters  # Python 3.12
        return int(_xxsubinterpreters.get_current())


def count_primes(limit):
    count = 0
    for n in range(2, limit):
        d = 2
        while d * d <= n:
            if n % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


start = time.perf_counter()
primes = count_primes(150_000)
elapsed = time.perf_counter() - start
print(f"interpreter {interpreter_id()}: {primes} primes below 150000 in {elapsed:.2f} s")
