"""A CPU-bound plugin: counts primes below a limit with trial division.

Each interpreter imports its own copy of this module; the module-level counter below
shows that nothing is shared between them.
"""

calls = 0


def count_primes(limit):
    global calls
    calls += 1
    count = 0
    for n in range(2, limit):
        is_prime = True
        d = 2
        while d * d <= n:
            if n % d == 0:
                is_prime = False
                break
            d += 1
        if is_prime:
            count += 1
    return {"limit": limit, "primes": count, "calls_in_this_interpreter": calls}
