"""``os.fork()`` refused while a pool or an interpreter is alive."""

from __future__ import annotations

import functools
import os
import sys

from . import _native
from ._live import live


_FORK_REFUSED = (
    "{what} while subinterp pools or interpreters are alive would leave a broken "
    "child: CPython cannot remove running subinterpreters in a forked child (it dies in "
    "PyThreadState_Get on 3.13 and hangs on 3.12). Start processes with the 'spawn' or "
    "'forkserver' method instead: multiprocessing.get_context('forkserver'), or "
    "ProcessPoolExecutor(mp_context=multiprocessing.get_context('forkserver')); "
    "subprocess works as it is, without preexec_fn. Or end every subinterp Pool "
    "(shutdown()) and Interpreter (close()) before forking."
)

# The position of preexec_fn among the arguments subprocess gives
# _posixsubprocess.fork_exec (the same in 3.12 and 3.13).
_PREEXEC_FN_ARG = 21


def guard_fork() -> None:
    """Makes ``os.fork`` and ``os.forkpty`` of this interpreter refuse while a pool or an
    interpreter is alive (multiprocessing looks them up when it starts a process).

    There is no sound fork then: in the child, ``PyOS_AfterFork_Child`` calls
    ``_PyInterpreterState_DeleteExceptMain``, which clears every other interpreter with
    no thread state of it current (CPython's own comments there: "XXX Won't this fail
    since PyInterpreterState_Clear() requires the "current" tstate to be set?", "XXX must
    activate?"); 3.13.0 aborts in ``PyThreadState_Get``, 3.12.1 hangs. ``subprocess``
    forks and execs in C, with no Python in the child, and is not affected, except with a
    ``preexec_fn``: to run it, ``_posixsubprocess`` calls ``PyOS_AfterFork_Child`` in the
    child, which dies the same way, so ``fork_exec`` with one refuses too."""
    for name in ("fork", "forkpty"):
        original = getattr(os, name, None)
        if original is None or getattr(original, "_subinterp_guarded", False):
            continue

        def guarded(*args, _original=original, _name=name, **kwargs):
            if live():
                raise RuntimeError(_FORK_REFUSED.format(what=f"os.{_name}()"))
            return _original(*args, **kwargs)

        functools.update_wrapper(guarded, original)
        guarded._subinterp_guarded = True  # type: ignore[attr-defined]
        setattr(os, name, guarded)
    _guard_fork_exec()


def _guard_fork_exec() -> None:
    """Makes ``subprocess`` refuse a ``preexec_fn`` while a pool or an interpreter is alive
    (see guard_fork); subprocess keeps ``fork_exec`` of ``_posixsubprocess`` as its own
    ``_fork_exec``, so both are replaced (a subprocess imported later takes the
    replacement: importing it here would only slow this package's import)."""
    try:
        import _posixsubprocess
    except ImportError:  # not a POSIX system
        return
    original = _posixsubprocess.fork_exec
    if getattr(original, "_subinterp_guarded", False):
        return

    def fork_exec(*args):
        if (
            len(args) > _PREEXEC_FN_ARG
            and args[_PREEXEC_FN_ARG] is not None
            and live()
        ):
            what = "subprocess with a preexec_fn (Python run in a forked child)"
            raise RuntimeError(_FORK_REFUSED.format(what=what))
        return original(*args)

    fork_exec._subinterp_guarded = True  # type: ignore[attr-defined]
    _posixsubprocess.fork_exec = fork_exec
    subprocess = sys.modules.get("subprocess")
    if getattr(subprocess, "_fork_exec", None) is original:
        setattr(subprocess, "_fork_exec", fork_exec)


# os.fork() refuses while pools or interpreters are alive, from the package's import on.
if _native.id() == 0:
    guard_fork()
