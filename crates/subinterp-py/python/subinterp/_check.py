"""``check()``: what ``subinterp check`` reports for modules, from Python."""

from __future__ import annotations

import os
import sys

from . import _native


def check(module, *, timeout: float | None = None):
    """What ``subinterp check`` reports for a module (a name) or for each of several (a
    list of names): dicts with the verdict (``ok``, ``legacy-only``, ``refused``,
    ``crash``, ...), its reason, where a pool would run it (``pool``: ``interpreter``,
    ``process`` or ``nowhere``) and the details the CLI prints with ``--json``. Each
    module is imported in separate probe processes of this Python, with this ``sys.path``.
    ``timeout`` (seconds, more than 0, at most ``threading.TIMEOUT_MAX``: the one rule
    for seconds of the engine) bounds each probe; a ``TypeError``, ``ValueError`` or
    ``OverflowError`` says what is wrong with an argument.
    """
    if isinstance(module, str):
        names = [module]
    elif isinstance(module, (bytes, bytearray)) or not hasattr(module, "__iter__"):
        raise TypeError(
            f"check() takes a module name or a list of names, not {type(module).__name__}"
        )
    else:
        names = list(module)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"a module name must be a str, not {type(name).__name__}")
        if not name or not all(part.isidentifier() for part in name.split(".")):
            raise ValueError(f"{name!r} is not a module name (such as 'json' or 'xml.dom')")
    paths = [p for p in sys.path if isinstance(p, str) and os.path.isdir(p)]
    reports = _native._check(names, paths, timeout)
    return reports[0] if isinstance(module, str) else reports


