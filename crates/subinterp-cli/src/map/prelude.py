# Runs first in every worker of `subinterp map`, before the user's --init: the
# exceptions the command's own set-up code raises (their names are matched by
# worker.rs), and private references to what the record wrapper (record.py) needs:
# `json` from the standard library, even when the user's directory has a `json.py`,
# which stays importable as the user's own. Before this code, the exit guard makes
# `os._exit` raise, so that no Python code can end the whole process as if the run
# succeeded.

import sys as _si_sys, os as _si_os

class _SubinterpBadTarget(Exception):
    pass

class _SubinterpImportFailed(Exception):
    pass

class _SubinterpBadInput(ValueError):
    pass

def _si_guard():
    saved = _si_sys.path[:]
    roots = tuple({_si_os.path.join(p, "") for p in (_si_sys.base_prefix, _si_sys.base_exec_prefix)})
    _si_sys.path[:] = [p for p in saved if _si_os.path.join(p, "").startswith(roots)]
    before = set(_si_sys.modules)
    try:
        import json
    finally:
        _si_sys.path[:] = saved
    for name in set(_si_sys.modules) - before:
        if name == "json" or name.startswith("json."):
            del _si_sys.modules[name]

    return json.loads, json.dumps

_si_loads, _si_dumps = _si_guard()
del _si_guard
