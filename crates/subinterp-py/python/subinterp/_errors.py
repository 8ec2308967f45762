"""Errors of workers as the caller sees them: a task's exception rebuilt as its own type
when it can be, else ``RemoteError``; the engine's other outcomes (deadline, cancellation)
as the standard exceptions."""

from __future__ import annotations

import concurrent.futures
import pickle


class RemoteError(Exception):
    """An exception of a worker that cannot be rebuilt here as its own type.

    ``type_name``, ``message`` and ``traceback`` (the worker's, as text) say what it was.
    """

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback


class _RemoteTraceback(Exception):
    """The worker's traceback, attached as ``__cause__`` of a task's exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'



def outcome(kind: str, payload, unwrap):
    """``(value, exception)`` from what the engine reports for a finished call."""
    if kind == "ok":
        return unwrap(payload)
    if kind == "python":
        return None, _rebuild(*payload)
    if kind == "timeout":
        return None, TimeoutError(payload)
    if kind == "cancelled":
        return None, concurrent.futures.CancelledError()
    return None, RemoteError("subinterp.Error", str(payload))


def _rebuild(type_name: str, message: str, tb: str) -> BaseException:
    module, _, name = type_name.rpartition(".")
    if module == "builtins":
        import builtins

        kind = getattr(builtins, name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            try:
                exc = kind(message)
            except Exception:
                exc = RemoteError(type_name, message, tb)
            exc.__cause__ = _RemoteTraceback(tb)
            return exc
    return RemoteError(type_name, message, tb)


def from_worker(reply):
    """The value a task gave, or the exception to raise."""
    tag = reply[0]
    if tag == 0:
        return reply[1], None
    if tag == 1:  # pickled, with its out-of-band buffers if any
        return pickle.loads(reply[1], buffers=reply[2] if len(reply) > 2 else None), None
    _, pickled, type_name, message, tb = reply
    exc = None
    if pickled is not None:
        try:
            exc = pickle.loads(pickled)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, tb)
    else:
        exc.__cause__ = _RemoteTraceback(tb)
    return None, exc

