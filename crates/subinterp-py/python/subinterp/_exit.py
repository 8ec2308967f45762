"""What exit does: submitted tasks finish (or are stopped on Ctrl-C), interpreters are
closed, and Python finalises only once no interpreter runs code."""

from __future__ import annotations

import atexit
import os
import sys
import time

from . import _live, _native
from ._interpreter import close_interpreters

# How long exiting waits for submitted tasks silently, as the standard executors wait,
# before it says that it waits (a program that submits a task and ends prints nothing).
_QUIET_WAIT = 5.0

# How long exiting waits for code stuck in C (beyond the first second), unless an
# interpreter was already left behind, stuck, by close() or a pool's start given up.
_EXIT_GRACE = 5.0


def _end_all() -> None:
    # As at the exit of a program with a ThreadPoolExecutor, tasks already submitted
    # finish first, unless the program ended with Ctrl-C (KeyboardInterrupt) or Ctrl-C is
    # pressed while waiting: then running tasks are interrupted.
    with _live.lock:
        pools = list(_live.pools)
    stop = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    try:
        for pool in pools:
            pool.shutdown(False, False, stop)
        # Stopping takes at most the grace period (1 s) of a task stuck in C code, which
        # is then left behind.
        end = time.monotonic() + (2.5 if stop else _QUIET_WAIT)
        if not all(pool.wait_ended(max(0.0, end - time.monotonic())) for pool in pools):
            sys.stderr.write(
                "subinterp: stopping the running tasks before Python exits "
                "(Ctrl-C exits at once)\n"
                if stop
                else "subinterp: waiting for submitted tasks to finish before Python exits "
                "(Ctrl-C stops them)\n"
            )
            sys.stderr.flush()
            for pool in pools:
                pool.wait_ended(None)
    except KeyboardInterrupt:
        if stop:
            _exit_now(130)
        stop = True
        try:
            # Running tasks are interrupted, and a task stuck in C code is left behind
            # after the grace period: the pools end at once, as the message said.
            for pool in pools:
                pool.shutdown(False, False, True)
            for pool in pools:
                pool.wait_ended(None)
        except KeyboardInterrupt:
            _exit_now(130)
    with _live.lock:
        interpreters = list(_live.interpreters)
    try:
        close_interpreters(interpreters)
    except KeyboardInterrupt:
        _exit_now(130)
    # Code stuck in C (a task reported as TimeoutError, its worker replaced; an
    # Interpreter's call past its deadline or Ctrl-C) keeps its interpreter until the call
    # returns; Python must not finalise before it ends, so exiting waits for it — within
    # a grace period: past it, the process exits without finalising. Ctrl-C at any point
    # of that wait exits at once, never finalising beside a running interpreter.
    try:
        _native._runtime_stop()
        left = _native._runtime_wait(1.0)
        if left is None and not _live.left_behind:
            sys.stderr.write(
                f"subinterp: waiting up to {_EXIT_GRACE:.0f} s for code stuck in C to "
                "return before Python exits (Ctrl-C exits at once)\n"
            )
            sys.stderr.flush()
            end = time.monotonic() + _EXIT_GRACE
            while left is None and time.monotonic() < end:
                left = _native._runtime_wait(0.25)
    except KeyboardInterrupt:
        _exit_now(130)
    if left is None:
        status = 130 if stop else 1
        sys.stderr.write(
            "subinterp: code still runs in an interpreter (stuck in C, or a pool's set-up "
            "given up with Ctrl-C); Python cannot finalise while it runs, so the process "
            f"exits now with status {status}\n"
        )
        _exit_now(status)
    if left:
        # Interpreters whose Python threads did not end cannot be finalised: CPython
        # would abort the process ("remaining subinterpreters") or free what they use.
        sys.stderr.write(
            f"subinterp: {left} interpreter(s) still run Python threads that did not end; "
            "Python cannot finalise with them, so the process exits now with status 1\n"
        )
        _exit_now(1)
    _keep_the_interrupt_status()


def _keep_the_interrupt_status() -> None:
    # CPython ends a program that died of an uncaught KeyboardInterrupt by SIGINT, as a
    # shell expects, if a process-wide flag says so. Every exec()/eval() of a string in
    # any interpreter resets that flag, and sets it when KeyboardInterrupt leaves it, so
    # the workers' code (or interrupting it) may have changed it: put it back.
    if isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        try:
            exec("raise KeyboardInterrupt", {})
        except KeyboardInterrupt:
            pass
    else:
        exec("pass", {})


def _exit_now(status: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if status == 130:
        # Die of SIGINT, as Python does after Ctrl-C, so that a shell sees it.
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


# Only the main interpreter runs pools; the package imported in another interpreter (one
# the program made with CPython's own `_interpreters`) has nothing to end when it does.
if _native.id() == 0:
    atexit.register(_end_all)
