# Replaces os._exit (and posix._exit) in the interpreter that runs it: every interpreter
# of a process shares it, so os._exit(n) in any of them would end them all. `who` is
# None to raise SystemExit(n) instead (ending only that interpreter's code, as
# sys.exit(n) does), or the words naming the code that cannot call it, for a
# RuntimeError. Leaves no name behind: the caller appends the call and a `del`.


def _subinterp_exit_guard(who):
    import os, posix

    def _exit(status, /):
        if who is None:
            raise SystemExit(status)
        raise RuntimeError(
            f"os._exit({status!r}) would end the whole process, every interpreter in it; "
            f"{who} cannot call it"
        )

    os._exit = posix._exit = _exit
