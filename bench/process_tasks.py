"""Tasks of bench/processes.py: numpy ones (run by subinterp in worker processes, since
isolated interpreters refuse numpy) and a pure-Python one (run in interpreters)."""

import numpy as np


def np_scalar(seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((120, 120))
    return float(np.linalg.norm(a @ a.T))


def np_array(a):
    return np.sqrt(a * a + 1.0)


def np_tiny(x):
    return x + 1


def pure(n):
    total = 0
    for k in range(n):
        total += k * k % 7
    return total
