# Guard rails of one interpreter on state every interpreter of the process shares.
# Run once when the interpreter starts, with `actions` (one per rule, in the order of
# RULES: 0 allow, 1 count, 2 refuse) and `write_dirs` (real paths) in its namespace.
# Most rules are an audit hook (PEP 578: `sys.addaudithook` is per interpreter); the
# actions CPython raises no audit event for before it acts (signal handlers and timers,
# os.fork) are wrapped in this interpreter's own module objects. A guard rail against
# accidents, not a security boundary: native code and ctypes pass it.


def _subinterp_install_guards(actions, write_dirs):
    import os
    import posix
    import sys
    import _signal
    import subinterp

    record = subinterp._guard_event
    RULES = ("chdir", "env", "signals", "fork", "subprocess", "write", "connect")
    CHDIR, ENV, SIGNALS, FORK, SUBPROCESS, WRITE, CONNECT = range(7)
    COUNT, REFUSE = 1, 2
    hints = {
        WRITE: "add the directory to the allowed ones (Guards::allow_write, "
        "allow_write=[...] in Python, --allow-write DIR) or allow the rule",
    }

    def refusal(rule, what):
        name = RULES[rule]
        how = hints.get(
            rule,
            f"allow the rule (Guards::allow(GuardRule::{name.capitalize()}) in Rust, "
            f"guards={{'{name}': 'allow'}} in Python, leave {name} out of --guard)",
        )
        return PermissionError(
            f"{what} is refused by the '{name}' guard rail of this interpreter, as it "
            f"would change the whole process, every interpreter in it; to permit it, {how}"
        )

    def seen(rule, what):
        # Counts the event; raises PermissionError if the rule refuses it.
        refused = actions[rule] == REFUSE
        record(rule, refused)
        if refused:
            raise refusal(rule, what)

    def real(path, dir_fd=None):
        if isinstance(path, int):
            return None  # an open file descriptor: its path is unknown
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(path):
            try:
                base = os.readlink(f"/proc/self/fd/{dir_fd}")
            except OSError:
                return None
            path = os.path.join(base, path)
        return os.path.realpath(path)

    def outside(path, dir_fd=None):
        try:
            where = real(path, dir_fd)
        except (TypeError, ValueError):
            return True
        if where is None:
            return dir_fd is not None or not isinstance(path, int)
        if "__pycache__" in where.split(os.sep):
            return False  # Python's own bytecode cache, written by imports
        return not any(where == d or where.startswith(d + os.sep) for d in write_dirs)

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def on_open(args):
        path, _mode, flags = args
        if flags & WRITE_FLAGS and outside(path):
            seen(WRITE, f"opening {path!r} for writing")

    def on_path(event, index, dir_index=None):
        def check(args):
            dir_fd = args[dir_index] if dir_index is not None else None
            if outside(args[index], dir_fd):
                seen(WRITE, f"{event}({args[index]!r})")

        return check

    def on_kill(event):
        def check(args):
            target, signum = args[0], args[1]
            if signum != 0 and target in (0, os.getpid(), os.getpgid(0)):
                seen(SIGNALS, f"{event}({target}, {args[1]}) to this process")

        return check

    def always(rule, what):
        return lambda args: seen(rule, what(args))

    checks = {}
    if actions[CHDIR]:
        checks["os.chdir"] = always(CHDIR, lambda a: f"os.chdir({a[0]!r})")
    if actions[ENV]:
        checks["os.putenv"] = always(ENV, lambda a: f"setting the environment variable {a[0]!r}")
        checks["os.unsetenv"] = always(ENV, lambda a: f"removing the environment variable {a[0]!r}")
    if actions[SIGNALS]:
        checks["signal.pthread_kill"] = always(SIGNALS, lambda a: f"signal.pthread_kill(..., {a[1]})")
        checks["os.kill"] = on_kill("os.kill")
        checks["os.killpg"] = on_kill("os.killpg")
    if actions[SUBPROCESS]:
        checks["subprocess.Popen"] = always(SUBPROCESS, lambda a: f"starting the process {a[1]!r}")
        checks["os.system"] = always(SUBPROCESS, lambda a: f"os.system({a[0]!r})")
        checks["os.posix_spawn"] = always(SUBPROCESS, lambda a: f"os.posix_spawn({a[0]!r})")
        checks["os.exec"] = always(SUBPROCESS, lambda a: f"os.exec*({a[0]!r})")
    if actions[WRITE]:
        checks["open"] = on_open
        for event, index, dir_index in (
            ("os.remove", 0, 1),
            ("os.rmdir", 0, 1),
            ("os.mkdir", 0, 2),
            ("os.rename", 0, 2),
            ("os.truncate", 0, None),
            ("os.symlink", 1, 2),
            ("os.link", 1, 3),
            ("shutil.rmtree", 0, 1),
        ):
            checks[event] = on_path(event, index, dir_index)
        rename_check = checks["os.rename"]
        target_check = on_path("os.rename", 1, 3)

        def on_rename(args):
            rename_check(args)
            target_check(args)

        checks["os.rename"] = on_rename
    if actions[CONNECT]:
        checks["socket.connect"] = always(CONNECT, lambda a: f"connecting to {a[1]!r}")
        checks["socket.sendto"] = always(CONNECT, lambda a: f"sending to {a[1]!r}")

    if checks:
        def hook(event, args, _get=checks.get):
            check = _get(event)
            if check is not None:
                check(args)

        sys.addaudithook(hook)

    def wrap(module, name, rule, describe):
        original = getattr(module, name, None)
        if original is None:
            return

        def guarded(*args, **kwargs):
            seen(rule, describe(args))
            return original(*args, **kwargs)

        guarded.__name__ = guarded.__qualname__ = name
        guarded.__doc__ = original.__doc__
        setattr(module, name, guarded)

    if actions[SIGNALS]:
        # signal.py re-exports _signal's functions: wrap both, whichever is loaded.
        modules = [_signal] + [m for m in (sys.modules.get("signal"),) if m is not None]
        for module in modules:
            wrap(module, "signal", SIGNALS, lambda a: f"setting the handler of signal {a[0]!r}")
            wrap(module, "set_wakeup_fd", SIGNALS, lambda a: "signal.set_wakeup_fd()")
            wrap(module, "siginterrupt", SIGNALS, lambda a: "signal.siginterrupt()")
            wrap(module, "alarm", SIGNALS, lambda a: "signal.alarm() (a process-wide timer)")
            wrap(module, "setitimer", SIGNALS, lambda a: "signal.setitimer() (a process-wide timer)")
            wrap(module, "raise_signal", SIGNALS, lambda a: f"signal.raise_signal({a[0]!r})")
    if actions[FORK]:
        for module in (os, posix):
            wrap(module, "fork", FORK, lambda a: "os.fork()")
            wrap(module, "forkpty", FORK, lambda a: "os.forkpty()")


_subinterp_install_guards(actions, write_dirs)
del _subinterp_install_guards
