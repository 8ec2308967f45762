"""A spare interpreter, made in the background when the package is imported.

CPython takes 5-10 ms to create an isolated interpreter (most of it importing ``site``,
the codecs and the import machinery), more than a process pool takes to ``fork`` a
worker. Made on a thread of its own while the program goes on importing and setting up,
the spare lets the first ``Pool`` or ``Interpreter`` start at once; it is made once, and
taken by the first one of the default (isolated) kind.

It costs one interpreter's creation on another core and about 3 MB while unused. It is
ended before a ``fork`` (so the child has no interpreter it could not end) and at exit.
``SUBINTERP_SPARE=0`` in the environment turns it off; it is not made in a process started
by ``multiprocessing`` nor in the pools' worker processes, which do not use it.
"""

from __future__ import annotations

import os
import sys

from . import _native


def _wanted() -> bool:
    if _native.id() != 0:
        # Not the main interpreter: only the main one runs pools.
        return False
    if os.environ.get("SUBINTERP_SPARE", "1").strip() == "0":
        return False
    process = sys.modules.get("multiprocessing.process")
    return process is None or process.parent_process() is None


def start() -> None:
    """Starts the spare, unless it is not wanted here (see the module's docstring)."""
    if not _wanted():
        return
    try:
        _native._spare_start()
    except Exception:
        # Only a head start is lost: the first pool makes its interpreters itself, and
        # says what fails there.
        return
    os.register_at_fork(before=_native._spare_end)


start()
