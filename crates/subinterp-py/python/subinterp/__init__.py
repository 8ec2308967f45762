"""Pure-Python work on every core: pools of isolated CPython subinterpreters.

``subinterp.Pool`` is a ``concurrent.futures.Executor`` whose workers are isolated
interpreters of this process, each with its own GIL, running in parallel. Tasks can have
deadlines that stop them; plain data (None, bool, int, float, str, bytes, and lists,
tuples and dicts of them) crosses without pickling. ``subinterp.channel`` and
``subinterp.buffer`` work between this interpreter and the workers.
"""

from . import _exit, _native  # noqa: F401 - _exit: what exit does (an atexit hook)
from ._check import check
from ._errors import RemoteError
from ._fork import guard_fork as _guard_fork
from ._interpreter import Interpreter
from ._native import (
    Buffer,
    Channel,
    ChannelClosed,
    ChannelEmpty,
    ChannelFull,
    ReceiveError,
    buffer,
    channel,
    id,
)
from ._pool import Pool

__all__ = [
    "Buffer",
    "Channel",
    "ChannelClosed",
    "ChannelEmpty",
    "ChannelFull",
    "Interpreter",
    "Pool",
    "ReceiveError",
    "RemoteError",
    "buffer",
    "channel",
    "check",
    "id",
]

# The public names are the package's own (in reprs, pickles and documentation).
for _public in (Interpreter, Pool, RemoteError, check):
    _public.__module__ = __name__
del _public

# os.fork() refuses while pools or interpreters are alive (see _fork.guard_fork).
if _native.id() == 0:
    _guard_fork()
