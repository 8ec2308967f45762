"""``Interpreter``: one isolated interpreter of this process, for hosting plugins."""

from __future__ import annotations

import sys

from . import _live, _native
from ._calls import RUN, Named, encode_call, guard_settings, setup_code, share_code
from ._errors import from_worker, outcome


def close_interpreters(interpreters: "list[Interpreter]") -> None:
    """Closes the interpreters all at once (each within its grace period), saying which
    were left running."""
    closing = [interp for interp in interpreters if not interp._closed]
    for interp in closing:
        interp._closed = True
    try:
        graces = _native._interp_close_all([interp._handle for interp in closing])
    except KeyboardInterrupt:
        # Closing goes on in the background; exit does not wait for it beyond its first
        # second, as Ctrl-C asked.
        _live.left_behind = True
        raise
    finally:
        with _live.lock:
            _live.interpreters.difference_update(closing)
    for interp, grace in zip(closing, graces):
        if grace is not None:
            _live.left_behind = True
            sys.stderr.write(
                f"subinterp: interpreter {interp.id} did not end within its grace period "
                f"of {grace:.1f} s (blocked in C code?); it is left running until that "
                "code returns\n"
            )
    sys.stderr.flush()


class Interpreter:
    """One isolated interpreter of this process, with its own GIL, modules and ``sys``:
    for hosting plugins or running code apart from the program's own state.

    It sees this interpreter's ``sys.path`` as it was when it was made, and the main
    script's functions (loaded as ``__mp_main__``). ``isolated=False`` makes a legacy
    interpreter (shares the process's GIL; loads modules that refuse isolated ones).
    ``init`` is Python source run in it first, in the ``__main__`` where ``exec`` runs;
    ``timeout`` is the deadline of ``init``
    and the default deadline of each ``exec``/``call``, in seconds. Waiting releases this
    interpreter's GIL, and Ctrl-C interrupts the running code and raises
    ``KeyboardInterrupt`` here.

    Code past its deadline gets ``TimeoutError`` (again every 0.2 s until it stops);
    code blocked in C, which no interrupt reaches, is reported with ``TimeoutError``
    (or ``KeyboardInterrupt`` on Ctrl-C) one second later and left running: the
    interpreter is busy until it returns — later calls wait for it (their deadline
    counts from the call) — and ``close()`` and exit leave it behind after a grace period,
    with a message on stderr.

    ``guards`` and ``allow_write`` set its guard rails on process-wide state, as for
    ``Pool``; ``stats()`` returns its counters (its operations, the package's own set-up
    calls included, by outcome; channel messages; guard rail events; memory and CPU
    time). ``memory_limit`` (bytes, or a size such as ``"256M"``) caps the memory it may
    hold: past it, its code gets ``MemoryError``.
    """

    def __init__(
        self,
        *,
        isolated: bool = True,
        init: str | None = None,
        timeout: float | None = None,
        guards=None,
        allow_write=None,
        memory_limit: int | str | None = None,
    ):
        _native._runtime_start()
        share_code()
        # The user's init is a source of its own: an error points at its own line.
        code = ["\n".join(setup_code()) + "\n"]
        if init is not None:
            # Compiled on its own, so that errors give its own line numbers, and run where
            # exec() and call("__main__:...") run later: the main script's module, which
            # loading it made __main__.
            code.append(
                f"exec(compile({init!r}, '<init>', 'exec'), sys.modules['__main__'].__dict__)"
            )
        self._handle = _native._interp_new(
            {
                "isolated": bool(isolated),
                "init": "\n".join(code) + "\n",
                "timeout": timeout,
                **guard_settings(guards, allow_write),
                "memory_limit": memory_limit,
            }
        )
        self._timeout = timeout
        self._closed = False
        with _live.lock:
            _live.interpreters.add(self)
        self.id: int = self.call("subinterp:id")

    def exec(self, code: str, *, timeout: float | None = None) -> None:
        """Runs Python statements in the interpreter's ``__main__``. An exception there is
        raised here (its type when it can be rebuilt, else ``RemoteError``); past the
        deadline the code is interrupted and ``TimeoutError`` raised."""
        kind, payload = _native._interp_exec(self._live(), code, self._deadline(timeout))
        value, exc = outcome(kind, payload, lambda _: (None, None))
        if exc is not None:
            raise exc

    def call(self, fn, /, *args, **kwargs):
        """Calls ``fn(*args, **kwargs)`` in the interpreter and returns its result. ``fn``
        is a module-level function (found there by module and qualified name) or a
        ``"module:qualname"`` string; arguments and results that are not plain data are
        pickled."""
        return self.call_with(fn, args, kwargs)

    def call_with(self, fn, args: tuple = (), kwargs: dict | None = None, *, timeout=None):
        """Like ``call``, with this call's own deadline in seconds."""
        if isinstance(fn, str):
            module, sep, qualname = fn.partition(":")
            if not sep or not module or not qualname:
                raise ValueError(f"expected 'module:qualname', got {fn!r}")
            fn = Named(module, qualname)
        call_args, call_kwargs, pickled = encode_call(fn, args, kwargs)
        deadline = self._deadline(timeout)
        done = _native._interp_call(self._live(), RUN, call_args, call_kwargs, deadline)
        if done is None and pickled is not None:  # not plain data: sent pickled
            call_args, call_kwargs = pickled()
            done = _native._interp_call(self._live(), RUN, call_args, call_kwargs, deadline)
        if done is None:
            raise TypeError("subinterp: the call cannot be sent to the interpreter")
        kind, payload = done
        value, exc = outcome(kind, payload, from_worker)
        if exc is not None:
            raise exc
        return value

    def stats(self) -> dict:
        """The interpreter's counters: ``tasks_run``, ``tasks_ok``, ``tasks_failed``,
        ``tasks_timed_out``, ``tasks_cancelled``, ``messages_sent``, ``bytes_sent``,
        ``messages_received``, ``bytes_received``, ``guard_counted``, ``guard_refused``,
        ``guards`` (per rule: ``counted`` and ``refused``), ``interpreters_created``,
        ``interpreters_ended``, and ``memory_bytes``, ``memory_peak_bytes``,
        ``cpu_seconds`` (None where not measured)."""
        return _native._interp_stats(self._live())

    def close(self) -> None:
        """Ends the interpreter, waiting for its threads within a grace period (5 s). A
        call still running (say, blocked in C code) is interrupted; if it does not stop
        within the grace period, the interpreter is left running with a message on
        stderr. A call running meanwhile in another thread raises ``RuntimeError``."""
        close_interpreters([self])

    def __enter__(self) -> "Interpreter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _live(self) -> int:
        if self._closed:
            raise RuntimeError("the interpreter is closed")
        return self._handle

    def _deadline(self, timeout):
        return self._timeout if timeout is None else timeout


