"""Pure-Python work on every core: pools of isolated CPython subinterpreters.

``subinterp.Pool`` is a ``concurrent.futures.Executor`` whose workers are isolated
interpreters of this process, each with its own GIL, running in parallel. Tasks can have
deadlines that stop them; plain data (None, bool, int, float, str, bytes, bytearray, and
lists, tuples and dicts of them, sharing kept) crosses without pickling. ``subinterp.channel`` and
``subinterp.buffer`` work between this interpreter and the workers.
"""

# _spare, _exit and _fork act on import: the spare interpreter starts being made (first,
# while the rest is imported), exit's hook, and os.fork() refused beside live pools.
from . import _spare  # noqa: F401, I001
from . import _exit, _fork  # noqa: F401
from ._check import check
from ._errors import RemoteError
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
