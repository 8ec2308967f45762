# os.environ of an interpreter made ahead of need (a spare), brought up to date: `os` read
# the process's environment when the interpreter was created, and the program may have
# changed it since (os.environ["X"] = ... in any interpreter sets the process's own).
# `fresh`: the process's environment now, as (name, value) pairs of bytes.
import os

_data = os.environ._data
_fresh = dict(fresh)
if _data != _fresh:
    _zone = _data.get(b"TZ") != _fresh.get(b"TZ")
    _data.clear()
    _data.update(_fresh)
    if _zone:
        # The time module read TZ when it was imported: read it again.
        import time

        time.tzset()
    del _zone
del _data, _fresh
