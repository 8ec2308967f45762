"""A sampler of ``sys._current_frames()`` like a profiler's, and tasks for the workers it
runs beside (found there by module and name)."""

import sys
import threading
import time
import traceback


class Sampler:
    """A thread calling ``sys._current_frames()`` and ``sys._current_exceptions()`` every
    ``period`` seconds while the ``with`` block runs, checking what it gets."""

    def __init__(self, period: float = 0.001):
        self.period = period
        self.stop = threading.Event()
        self.samples = 0
        self.seen: set = set()
        self.errors: list = []
        self.thread = threading.Thread(target=self._sample, name="sampler")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _check(self, ok, what):
        if not ok and len(self.errors) < 5:
            self.errors.append(what)

    def _sample(self):
        me = threading.get_ident()
        while not self.stop.is_set():
            frames = sys._current_frames()
            exceptions = sys._current_exceptions()
            self.samples += 1
            self.seen.update(frames)
            self._check(me in frames, "the sampler's own thread is missing")
            if me in frames:
                stack = "".join(traceback.format_stack(frames[me]))
                self._check("_sample" in stack, stack)
            self._check(exceptions.get(me, 0) is None, f"exception: {exceptions.get(me, 0)!r}")
            if self.samples % 50 == 0:
                try:
                    raise ValueError(self.samples)
                except ValueError as exc:
                    self._check(sys._current_exceptions().get(me) is exc, "handled exception")
            time.sleep(self.period)


def busy_ident(n):
    """About n / 20000 milliseconds of Python, then the worker thread's identifier."""
    total = 0
    for k in range(n):
        total += k * k
    return threading.get_ident()


def busy(n):
    total = 0
    for k in range(n):
        total += k * k
    return total


def worker_view():
    """What ``sys._current_frames()`` shows inside a worker."""
    me = threading.get_ident()
    frames = sys._current_frames()
    return {
        "me": me,
        "threads": sorted(frames),
        "module": sys._current_frames.__module__,
        "stack": "".join(traceback.format_stack(frames[me])),
    }
