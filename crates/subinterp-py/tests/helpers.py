"""Module-level functions the tests run in workers (found there by module and name)."""

import sys
import time


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return [list(args), kwargs]


def fail(message):
    raise KeyError(message)


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


class Custom(Exception):
    pass


def raise_custom(message):
    raise Custom(message)


def make_point(x, y):
    return Point(x, y)


def norm(point):
    return point.x * point.x + point.y * point.y


def spin():
    while True:
        pass


def sleep_c(seconds):
    time.sleep(seconds)
    return "slept"


def slow(x, seconds):
    time.sleep(seconds)
    return x


def path():
    return list(sys.path)


def prefix():
    return [sys.prefix, sys.executable]


def interp_id():
    import subinterp

    return subinterp.id()


def relay(name):
    import subinterp

    ch = subinterp.channel(name)
    got = ch.recv(timeout=10)
    subinterp.channel(name + "-back").send(got * 2)
    return "relayed"


def fill(name):
    import subinterp

    buf = subinterp.channel(name).recv(timeout=10)
    view = memoryview(buf)
    view[:5] = b"hello"
    return len(view)


def signal_then_sleep(name, seconds):
    import subinterp

    subinterp.channel(name).send("started")
    time.sleep(seconds)
    return "slept"


def signal_then_spin(name):
    import subinterp

    subinterp.channel(name).send("started")
    while True:
        pass


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def collatz_steps(n):
    steps = 0
    while n > 1:
        n = 3 * n + 1 if n % 2 else n // 2
        steps += 1
    return steps


def where(_):
    import subinterp

    return subinterp.id()


def total(values):
    return sum(values)


def import_name(name):
    import importlib

    return importlib.import_module(name).__name__


def fail_on(value):
    if value != "ok":
        raise KeyError(value)
    return value


class MyObject:
    """CPython's test_concurrent_futures.executor.MyObject."""

    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def sleep_and_print(t, msg):
    time.sleep(t)
    print(msg)
    sys.stdout.flush()


def run_script(
    directory, source, *, args=(), timeout=120, stdin=None, module=None, env=None,
    python_args=(),
):
    """Runs ``source`` as the main script of a child Python (this one) in ``directory``,
    with a generous timeout so that a hang fails the test instead of stopping the run;
    ``module`` runs it as ``python -m module`` (source written to module's path); ``env``:
    variables to set in its environment; ``python_args``: options of ``python``."""
    import os
    import subprocess
    import textwrap

    if module is None:
        script = os.path.join(directory, "main.py")
        command = [sys.executable, *python_args, script, *args]
    else:
        script = os.path.join(directory, *module.split(".")) + ".py"
        command = [sys.executable, *python_args, "-m", module, *args]
    os.makedirs(os.path.dirname(script), exist_ok=True)
    with open(script, "w") as f:
        f.write(textwrap.dedent(source))
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.path.dirname(__file__))
    return subprocess.run(
        command,
        cwd=directory,
        env=env,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Scaler:
    def __init__(self, factor):
        self.factor = factor

    def scale(self, x):
        return self.factor * x

    def __call__(self, x):
        return self.factor + x


def scale_by(x, factor=1, offset=0):
    return x * factor + offset


def exit_now(status):
    import os

    os._exit(status)


class Stop(SystemExit):
    pass


class Interrupted(KeyboardInterrupt):
    pass


def raise_stop():
    raise Stop(3)


def raise_interrupted():
    raise Interrupted("mine")


class BadStr(Exception):
    def __str__(self):
        raise ValueError("no text")


def raise_bad_str():
    raise BadStr("x")


def nested_failure():
    return _fails_inside()


def _fails_inside():
    raise KeyError("deep")


def raise_timeout(message):
    raise TimeoutError(message)


def same(*values):
    """Returns its arguments as one tuple (one argument: itself), as they arrived."""
    return values[0] if len(values) == 1 else values


def fs_name(raw):
    """A file name as os.fsdecode gives it: lone surrogates for bytes that are not UTF-8."""
    import os

    return os.fsdecode(raw)


def make_lock(_=None):
    """A result that cannot be pickled."""
    import threading

    return [threading.Lock()]


def getpid():
    import os

    return os.getpid()


class Blob:
    """Bytes that pickle protocol 5 sends out of band (as numpy arrays do)."""

    def __init__(self, data):
        self.data = bytearray(data)

    def __reduce_ex__(self, protocol):
        import pickle

        if protocol >= 5:
            return Blob._rebuild, (pickle.PickleBuffer(self.data),)
        return Blob, (bytes(self.data),)

    @staticmethod
    def _rebuild(buffer):
        blob = Blob(b"")
        blob.data = buffer if isinstance(buffer, bytearray) else bytearray(buffer)
        blob.owns = isinstance(buffer, bytearray)
        return blob

    def __eq__(self, other):
        return isinstance(other, Blob) and self.data == other.data


def blob_back(blob):
    """The blob it got, doubled, and whether it was rebuilt from a bytearray of its own."""
    return Blob(bytes(blob.data) * 2), getattr(blob, "owns", None)


def interpreter_threads():
    """How many threads of this process run (or wait to run) a subinterpreter: the
    engine names them "subinterp" (Linux)."""
    import os

    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                count += comm.read().strip() == "subinterp"
        except OSError:
            pass
    return count


def wait_for_interpreter_threads(count):
    """``interpreter_threads()`` once it is ``count``, or after 30 s (a thread ends a
    moment after the interpreter it ran)."""
    end = time.monotonic() + 30
    while interpreter_threads() != count and time.monotonic() < end:
        time.sleep(0.01)
    return interpreter_threads()


def threads_after_importing_the_package():
    """Imports the package here (a process of its own) and gives this process's id and
    the interpreter threads the import made, once a spare would have been created."""
    import os

    import subinterp  # noqa: F401

    time.sleep(0.5)
    return os.getpid(), interpreter_threads()


def getenv(name):
    import os

    return os.environ.get(name)


def compiled_like_importlib(path):
    """In a worker: whether importlib compiles with the engine's compile there, and whether
    its source_to_code gives the code builtins.compile gives for the file at ``path``, at
    each optimize level and from ``str`` (code objects compare their bytecode, constants,
    names, positions and nested code)."""
    import sys

    external = sys.modules["_frozen_importlib_external"]
    loader = external.SourceFileLoader("compiled_probe", path)
    data = loader.get_data(path)
    same = []
    for optimize in (-1, 0, 2):
        ours = loader.source_to_code(data, path, _optimize=optimize)
        builtin = compile(data, path, "exec", dont_inherit=True, optimize=optimize)
        same.append(ours == builtin)
    text = data.decode("utf-8")
    builtin = compile(text, path, "exec", dont_inherit=True)
    same.append(loader.source_to_code(text, path) == builtin)
    return "compile" in vars(external), same


def import_module_at(directory, name):
    """Imports ``name`` from ``directory``; the formatted traceback if that fails."""
    import importlib
    import sys
    import traceback

    sys.path.insert(0, directory)
    try:
        importlib.import_module(name)
        return None
    except SyntaxError:
        return traceback.format_exc()
    finally:
        sys.path.remove(directory)


def tzname():
    import time

    return time.tzname[0]
