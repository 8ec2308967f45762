# Joins the interpreter's non-daemon threads, for at most `grace` seconds (`None`: no
# limit), including threads started meanwhile; leaves in `left` the names of the threads
# still running then — and of daemon threads, which are not waited for (as `python`
# does not wait for them) but, running, keep the interpreter from ending. `threading`
# and `_thread` are the modules if loaded, else `None`.
#
# Neither this thread (never asked for with `current_thread()`, which would make
# `threading` record it as a dummy thread) nor the main thread is waited for: in a
# subinterpreter `threading` may take the process's main thread for it (3.13), and it
# never ends while we run.

def _join(threading, grace):
    me = threading.get_ident()
    main = threading.main_thread()
    clock = threading._time
    deadline = None if grace is None else clock() + grace
    def others():
        return [
            t for t in threading.enumerate()
            if t.ident != me and t is not main
            and not isinstance(t, threading._DummyThread)
        ]
    while True:
        pending = [t for t in others() if not t.daemon]
        if not pending:
            break
        for thread in pending:
            if deadline is None:
                thread.join()
            else:
                thread.join(max(0.0, deadline - clock()))
        if deadline is not None and clock() >= deadline:
            break
    return [t.name for t in others() if t.is_alive()]
left = [] if threading is None else _join(threading, grace)
if not left and _thread is not None and _thread._count() > 0:
    left = [f'{_thread._count()} started with _thread']
