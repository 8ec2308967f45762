# Runs in every worker of `subinterp map` after the user's --init: imports the target
# and defines the per-record entry point, `_subinterp_map_record`. The command runs it
# with `_si_module`, `_si_path` (dotted identifiers, checked) and `_si_target` (the two
# joined by ":") set first. What the set-up raises carries the markers of prelude.py:
# _SubinterpBadTarget for a target that does not exist or cannot be called,
# _SubinterpImportFailed for a module whose own import raised (the cause is its error);
# a record raises _SubinterpBadInput for a bad input line.

def _si_find(module, path, target):
    try:
        __import__(module)
        func = _si_sys.modules[module]
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise _SubinterpBadTarget(f"cannot find {target}: no module named {exc.name!r}") from None
        raise _SubinterpImportFailed(f"importing {module} failed") from exc.with_traceback(exc.__traceback__.tb_next)
    except BaseException as exc:
        raise _SubinterpImportFailed(f"importing {module} failed") from exc.with_traceback(exc.__traceback__.tb_next)
    for attr in path.split("."):
        try:
            func = getattr(func, attr)
        except AttributeError:
            raise _SubinterpBadTarget(f"cannot find {target}: {func!r} has no attribute {attr!r}") from None
    if not callable(func):
        raise _SubinterpBadTarget(f"{target} is not callable")
    return func

def _subinterp_map_record(line, _func=_si_find(_si_module, _si_path, _si_target), _loads=_si_loads, _dumps=_si_dumps):
    try:
        record = _loads(line)
    except (ValueError, RecursionError) as exc:
        raise _SubinterpBadInput(str(exc)) from None
    result = _func(record)
    try:
        text = _dumps(result, ensure_ascii=False, allow_nan=False)
    except ValueError:
        try:
            _dumps(_loads(line), allow_nan=False)
        except ValueError as exc:
            raise _SubinterpBadInput("a number is too large for a float (json.loads reads it as inf)") from None
        raise
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            text = _dumps(result, allow_nan=False)
    return text

del _si_find, _si_module, _si_path, _si_target
