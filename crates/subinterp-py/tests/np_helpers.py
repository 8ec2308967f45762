"""Tasks that use numpy, which isolated interpreters refuse: a pool runs them in worker
processes."""

import os

import numpy as np


def total(n):
    return float(np.arange(n, dtype=np.float64).sum())


def matrix(n):
    a = np.arange(n * n, dtype=np.float64).reshape(n, n)
    return a @ a.T


def pid(_=None):
    return os.getpid()


def fail():
    try:
        np.zeros(2)[5]
    except IndexError as exc:
        raise ValueError("bad index") from exc


def abort():
    os.abort()


def send_to(name, value):
    """Uses a channel of the host: in a worker process, an error that says why."""
    import subinterp

    assert np.int64(1) == 1
    subinterp.channel(name).send(value)


def make_buffer():
    from subinterp import buffer

    return len(buffer(8))


def echo(x):
    """``x`` as it came, and where it was (a worker process: this module imports numpy)."""
    return x, os.getpid()


def double(a):
    return a * 2
