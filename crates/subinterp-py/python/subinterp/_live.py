"""What of this package is alive: its pools and interpreters, which exit ends and fork
refuses beside."""

from __future__ import annotations

import threading
from typing import Any

from . import _native

pools: set[Any] = set()
interpreters: set[Any] = set()
lock = threading.Lock()

# Whether an interpreter was left behind, stuck in C code, by close() or a pool's start
# given up: exit then does not wait for it again.
left_behind = False


def live() -> bool:
    """Whether a pool or an interpreter of this package is alive (a pool's worker left
    behind stuck in C code included)."""
    return bool(pools or interpreters or _native._workers_left_behind())


