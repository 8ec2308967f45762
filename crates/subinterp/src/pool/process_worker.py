# A worker process of a subinterp pool: run by `python -c` with this source, it takes
# tasks from the host over its stdin and answers on its stdout, in frames (a 4-byte
# little-endian length, then that many bytes). A message is one frame holding a value in
# the wire format (docs/wire-format.md); a call and a result are followed by one raw
# frame: a wire buffer, carried as it is (neither side copies it into the message).
# This process has no Rust extension: the wire format is read and written here in pure
# Python.
#
# Host -> worker:  ("setup", sys_path, init_sources, host_builtins)
#                                                      first, once; host_builtins: the
#                                                      interpreters' builtin module names
#                  ("call", module, qualname, otherwise, why) + raw frame: the call's
#                                                      arguments, a wire buffer holding
#                                                      ((pos...), {kw}); why: why it runs
#                                                      in a process
#                  ("interrupt", reason)               1: TimeoutError, 2: KeyboardInterrupt
#                                                      in the running task
# Worker -> host:  ("ready",) | ("error", exc)         after setup
#                  ("ok",) + raw frame: the result, a wire buffer
#                  | ("error", exc) | ("unshareable", type_name, detail)
import os
import signal
import struct
import sys
import threading
import traceback

_NONE, _FALSE, _TRUE, _INT, _BIGINT, _FLOAT, _STR, _STR_SUR = range(8)
_BYTES, _BYTEARRAY, _LIST, _TUPLE, _DICT, _REF, _PICKLE, _BUFFER = range(8, 16)
_MEMO = 0x80
_MAX_DEPTH = 512
_HEADER = b"SW\x01"
_F64 = struct.Struct("<d")
# Blobs from this size on are not copied into the buffer being written: the writer keeps
# a reference, and the frame is written from its parts (os.writev).
_BY_REFERENCE = 1 << 16


class WireError(ValueError):
    pass


class Unshareable(TypeError):
    def __init__(self, type_name, detail=""):
        super().__init__(type_name, detail)
        self.type_name = type_name
        self.detail = detail


def _qualname(obj):
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


class _Writer:
    """Writes plain data as `Mode::Lenient` does: subclasses as their base type, a
    bytearray as bytes (results); `exact` keeps bytearray (what the host sends)."""

    def __init__(self, lenient):
        self.out = bytearray(_HEADER)
        # The parts written before `out`: bytearrays, and large blobs as they are.
        self.parts = []
        self.lenient = lenient
        self.active = set()

    def segments(self):
        return self.parts + [self.out]

    def varint(self, n):
        out = self.out
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)

    def blob(self, tag, data):
        self.out.append(tag)
        self.varint(len(data))
        if len(data) >= _BY_REFERENCE:
            self.parts += (self.out, data)
            self.out = bytearray()
        else:
            self.out += data

    def record(self, obj, tag, top):
        # The format lets a writer record what it likes; this one records nothing (what
        # it writes is read into a `Value`, which has no sharing).
        return tag

    def seen(self, obj):
        if id(obj) in self.active:
            raise Unshareable(_qualname(obj), "it contains itself")
        return False

    def value(self, obj, depth=0, top=False):
        out = self.out
        t = type(obj)
        if obj is None:
            out.append(_NONE)
        elif t is bool:
            out.append(_TRUE if obj else _FALSE)
        elif t is int or (self.lenient and isinstance(obj, int) and t is not bool):
            n = int(obj)
            if -(1 << 63) <= n < (1 << 63):
                out.append(_INT)
                self.varint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)
            else:
                size = (n + (n < 0)).bit_length() // 8 + 1
                self.blob(_BIGINT, n.to_bytes(size, "little", signed=True))
        elif t is float or (self.lenient and isinstance(obj, float)):
            out.append(_FLOAT)
            out += _F64.pack(obj)
        elif t is str or (self.lenient and isinstance(obj, str)):
            if self.seen(obj):
                return
            try:
                data = obj.encode("utf-8")
                tag = _STR
            except UnicodeEncodeError:
                if self.lenient:
                    raise
                data = obj.encode("utf-8", "surrogatepass")
                tag = _STR_SUR
            self.blob(self.record(obj, tag, top), data)
        elif t is bytes or (self.lenient and isinstance(obj, bytes)):
            if not self.seen(obj):
                self.blob(self.record(obj, _BYTES, top), obj)
        elif t is bytearray or (self.lenient and isinstance(obj, bytearray)):
            if not self.seen(obj):
                tag = _BYTES if self.lenient else _BYTEARRAY
                self.blob(self.record(obj, tag, top), obj)
        elif t in (list, tuple, dict) or (
            self.lenient and isinstance(obj, (list, tuple, dict))
        ):
            if depth >= _MAX_DEPTH:
                raise Unshareable(_qualname(obj), f"nested more than {_MAX_DEPTH} levels deep")
            if self.seen(obj):
                return
            kind = _LIST if isinstance(obj, list) else _TUPLE if isinstance(obj, tuple) else _DICT
            out.append(self.record(obj, kind, top))
            self.varint(len(obj))
            self.active.add(id(obj))
            if kind == _DICT:
                for k, v in dict.items(obj):
                    self.value(k, depth + 1)
                    self.value(v, depth + 1)
            else:
                for item in obj:
                    self.value(item, depth + 1)
            self.active.discard(id(obj))
        elif t.__name__ == "PickleBuffer" and t.__module__ == "pickle":
            # Pickle protocol 5's out-of-band buffers, as the Rust writer takes them: their
            # bytes as a bytearray (bytes when lenient), written by reference.
            if not self.seen(obj):
                try:
                    data = obj.raw()
                except (ValueError, BufferError):
                    raise Unshareable(_qualname(obj), "a buffer that is not contiguous")
                self.blob(self.record(obj, _BYTES if self.lenient else _BYTEARRAY, top), data)
        else:
            raise Unshareable(_qualname(obj))


def encode_parts(obj, lenient=False):
    """``obj`` in the wire format, as a list of parts to write one after the other."""
    w = _Writer(lenient)
    w.value(obj, 0, top=True)
    return w.segments()


def encode(obj, lenient=False):
    return b"".join(encode_parts(obj, lenient))


class _Reader:
    def __init__(self, data):
        if bytes(data[:2]) != b"SW":
            raise WireError("not in the wire format (no SW header)")
        if len(data) < 3 or data[2] != 1:
            raise WireError("unsupported wire format version")
        self.data = memoryview(data)
        self.pos = 3
        self.memo = []
        self.done = []

    def byte(self):
        if self.pos >= len(self.data):
            raise WireError("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self):
        n = shift = 0
        for _ in range(10):
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n >> 64:
                    raise WireError("varint past 64 bits")
                return n
            shift += 7
        raise WireError("varint longer than 10 bytes")

    def count(self, min_bytes):
        n = self.varint()
        if n * min_bytes > len(self.data) - self.pos:
            raise WireError("count larger than the data left")
        return n

    def blob(self):
        n = self.count(1)
        start = self.pos
        self.pos += n
        return self.data[start : self.pos]

    def value(self, depth=0):
        tag = self.byte()
        kind, memo = tag & 0x7F, tag & _MEMO
        if memo and kind in (_NONE, _FALSE, _TRUE, _INT, _REF):
            raise WireError("memo bit where none may be")
        if kind == _NONE:
            return None
        if kind == _FALSE:
            return False
        if kind == _TRUE:
            return True
        if kind == _INT:
            z = self.varint()
            return (z >> 1) ^ -(z & 1)
        if kind == _FLOAT:
            start = self.pos
            self.pos += 8
            if self.pos > len(self.data):
                raise WireError("truncated")
            return _F64.unpack_from(self.data, start)[0]
        if kind == _REF:
            index = self.varint()
            if index >= len(self.memo) or not self.done[index]:
                raise WireError("reference to no recorded object")
            return self.memo[index]
        slot = None
        if memo:
            slot = len(self.memo)
            self.memo.append(None)
            self.done.append(False)
        if kind == _BIGINT:
            data = self.blob()
            if not data:
                raise WireError("empty big integer")
            obj = int.from_bytes(data, "little", signed=True)
        elif kind == _STR:
            obj = str(self.blob(), "utf-8")
        elif kind == _STR_SUR:
            obj = str(self.blob(), "utf-8", "surrogatepass")
        elif kind == _BYTES:
            obj = bytes(self.blob())
        elif kind == _BYTEARRAY:
            obj = bytearray(self.blob())
        elif kind in (_LIST, _TUPLE, _DICT):
            if depth >= _MAX_DEPTH:
                raise WireError(f"nested more than {_MAX_DEPTH} levels deep")
            if kind == _DICT:
                n = self.count(2)
                obj = {}
                if slot is not None:
                    self.memo[slot] = obj
                for _ in range(n):
                    k = self.value(depth + 1)
                    obj[k] = self.value(depth + 1)
            elif kind == _LIST:
                n = self.count(1)
                obj = []
                if slot is not None:
                    self.memo[slot] = obj
                for _ in range(n):
                    obj.append(self.value(depth + 1))
            else:
                n = self.count(1)
                obj = tuple([self.value(depth + 1) for _ in range(n)])
        elif kind == _PICKLE:
            if depth != 0:
                raise WireError("a pickled object inside a container")
            self.blob()
            import pickle

            obj = pickle.loads(self.blob())
        elif kind == _BUFFER:
            raise WireError("a shared buffer cannot cross processes")
        else:
            raise WireError(f"unknown tag {tag:#x}")
        if slot is not None:
            self.memo[slot] = obj
            self.done[slot] = True
        return obj


def decode(data):
    r = _Reader(data)
    obj = r.value()
    if r.pos != len(r.data):
        raise WireError("trailing bytes after the value")
    return obj


# --- Exceptions -------------------------------------------------------------------------


def _exit_status(exc):
    code = getattr(exc, "code", None)
    if code is None or code is False:
        return (0, None)
    if isinstance(code, int):
        return (code if -(1 << 63) <= code < (1 << 63) else -1, None)
    return (1, str(code))


def snapshot(exc, depth=0):
    """The exception as plain data, as `PyException` holds it."""
    if exc is None or depth > 32:
        return None
    t = type(exc)
    module = t.__module__
    try:
        message = str(exc)
    except BaseException:
        message = "<exception str() failed>"
    return {
        "type": f"{module}.{t.__qualname__}",
        "message": message,
        "traceback": "".join(traceback.format_exception(exc)),
        "cause": snapshot(exc.__cause__, depth + 1),
        "context": None if exc.__suppress_context__ else snapshot(exc.__context__, depth + 1),
        "exit": _exit_status(exc) if isinstance(exc, SystemExit) else None,
    }


# --- The loop ---------------------------------------------------------------------------

_LEN = struct.Struct("<I")


def _read_exact(fd, n):
    """``n`` bytes read straight into one bytearray; None at the end of the input."""
    data = bytearray(n)
    view = memoryview(data)
    pos = 0
    while pos < n:
        got = os.readv(fd, [view[pos:]])
        if not got:
            return None
        pos += got
    return data


def _read_frame(fd):
    head = _read_exact(fd, 4)
    return head and _read_exact(fd, _LEN.unpack(head)[0])


def _write_all(fd, parts):
    """Writes the parts one after the other, without joining them."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views[:512])
        while n:
            if n >= len(views[0]):
                n -= len(views.pop(0))
            else:
                views[0] = views[0][n:]
                n = 0


def _frame_parts(parts):
    return [_LEN.pack(sum(len(p) for p in parts)), *parts]


class _HostOnly:
    """A finder, first on sys.meta_path, for what lives only in the host process.

    The modules of `names` (a Rust host's `subinterp` module, its host modules) do not
    exist here: importing one fails with an ImportError that says so and why the task
    runs here, not with "No module named". Where `subinterp` is the Python package (whose
    pool this process serves), it imports, but its `channel()` and `buffer()` would make
    this process's own, which no interpreter of the host reaches: they raise instead."""

    # What the package's top-level module gives that only the host's interpreters share.
    PACKAGE_ATTRS = {"subinterp": ("channel", "buffer")}

    def __init__(self, names):
        self.names = frozenset(names)
        self.why = "the pool runs tasks isolated interpreters refuse in worker processes"
        self.finding = False
        self.attrs = {
            name: attrs for name, attrs in self.PACKAGE_ATTRS.items() if name not in self.names
        }
        for name in self.attrs:
            if name in sys.modules:
                self.patch(sys.modules[name])

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in self.names:
            what = (
                "its channels, shared buffers and id() belong to the host's interpreters"
                if top == "subinterp"
                else "it is a host module, functions of the host program"
            )
            raise ImportError(
                f"module {top!r} lives in the host process ({what}); this task runs in "
                f"a worker process because {self.why}",
                name=name,
            )
        if name not in self.attrs or self.finding:
            return None
        # The real spec, from the other finders, with a loader that patches the module.
        import importlib.util

        self.finding = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, self)
        return spec

    def patch(self, module):
        for attr in self.attrs.get(module.__name__, ()):
            setattr(module, attr, self.refuser(attr))

    def refuser(self, attr):
        finder = self

        def host_only(name=None, *args, **kwargs):
            if attr == "channel":
                what = f"channel {name!r} lives in the host process"
            else:
                what = "shared buffers live in the host process"
            raise RuntimeError(
                f"{what}, which this task cannot reach: it runs in a worker process "
                f"because {finder.why}"
            )

        host_only.__name__ = host_only.__qualname__ = attr
        return host_only


class _PatchingLoader:
    """A module's own loader, then the host-only attributes replaced."""

    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        self.finder.patch(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def _resolve(importlib, module, qualname):
    """The callable ``module.qualname``, imported here."""
    target = importlib.import_module(module)
    for attr in qualname.split("."):
        target = getattr(target, attr)
    return target


def main():
    # Frames go out on a private copy of stdout; what the tasks print goes to stderr.
    # Frames come in on a private copy of stdin; the tasks' stdin reads /dev/null.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    in_fd = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, "r", closefd=False)
    write_lock = threading.Lock()

    def send(msg, raw=None):
        """Sends ``msg``, then ``raw`` (the parts of a wire buffer) as a raw frame."""
        parts = _frame_parts(encode_parts(msg))
        if raw is not None:
            parts += _frame_parts(raw)
        with write_lock:
            _write_all(out_fd, parts)

    running = [False]  # the task's own code runs
    inflight = [False]  # a call was received and not answered
    pending = [0]

    def on_interrupt(signum, frame):
        reason, pending[0] = pending[0], 0
        if not running[0]:
            return
        if reason == 2:
            raise KeyboardInterrupt("the task was cancelled")
        raise TimeoutError("the task ran past its deadline")

    signal.signal(signal.SIGUSR1, on_interrupt)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    import queue
    import _thread

    tasks = queue.SimpleQueue()

    def reader():
        # Interrupts are handled here, at once; everything else goes to the main thread.
        while True:
            body = _read_frame(in_fd)
            msg = body and decode(body)
            if msg and msg[0] == "call":
                args = _read_frame(in_fd)
                msg = None if args is None else (*msg, args)
            if msg is None:
                tasks.put(None)
                return
            if msg[0] == "interrupt":
                if inflight[0]:
                    pending[0] = msg[1]
                    if running[0]:
                        _thread.interrupt_main(signal.SIGUSR1)
            else:
                if msg[0] == "call":
                    inflight[0] = True
                tasks.put(msg)

    threading.Thread(target=reader, daemon=True).start()

    setup = tasks.get()
    if setup is None:
        return
    _, path, init, host_builtins = setup
    sys.path[:] = list(path)
    host_only = _HostOnly(set(host_builtins) - set(sys.builtin_module_names))
    sys.meta_path.insert(0, host_only)
    main_mod = sys.modules["__main__"]
    try:
        for source in init:
            exec(compile(source, "<string>", "exec"), main_mod.__dict__)
    except BaseException as exc:
        send(("error", snapshot(exc)))
        return
    send(("ready",))
    import importlib

    while True:
        msg = tasks.get()
        if msg is None:
            return
        _, module, qualname, otherwise, host_only.why, args = msg
        try:
            try:
                running[0] = True
                if pending[0]:
                    on_interrupt(None, None)
                target = _resolve(importlib, module, qualname)
                pos, kw = decode(args)
                result = target(*pos, **kw)
            finally:
                running[0] = False
            # A task with a fallback (the package's) gets every plain type kept, a
            # bytearray included, as in an interpreter; others get what a `Value` holds.
            lenient = otherwise is None
            try:
                raw = encode_parts(result, lenient)
            except Unshareable:
                if lenient:
                    raise
                # Not plain data: what the task's own fallback makes of it (the
                # package's runner pickles it), as in an interpreter.
                fallback = _resolve(importlib, *otherwise)
                raw = encode_parts(fallback(result), lenient)
            reply = ("ok",)
        except Unshareable as exc:
            reply, raw = ("unshareable", exc.type_name, exc.detail), None
        except BaseException as exc:
            reply, raw = ("error", snapshot(exc)), None
        result = args = None
        inflight[0] = False
        pending[0] = 0
        send(reply, raw)
        raw = None


if __name__ == "__main__":
    main()
