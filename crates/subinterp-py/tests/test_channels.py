"""Channels in the main interpreter: Ctrl-C ends their waits, buffer views and subclasses
cross as they are."""

import collections
import enum
import os
import signal
import subprocess
import sys
import time

import pytest

import subinterp

# What the child blocks in, after printing "ready"; the channel holds one message at most.
_WAITS = {
    "recv": ["ch.recv()"],
    "recv-timeout": ["ch.recv(timeout=600)"],
    "send": ["ch.send(1)", "ch.send(2)"],
    "iterate": ["for item in ch:", "    pass"],
}


def _child(mode: str, catch: bool) -> str:
    lines = [
        "import os, subinterp",
        'ch = subinterp.channel(f"ctrl-c-{os.getpid()}", capacity=1)',
        'print("ready", flush=True)',
    ]
    if not catch:
        return "\n".join(lines + _WAITS[mode]) + "\n"
    lines.append("try:")
    lines += ["    " + line for line in _WAITS[mode]]
    lines += [
        "except KeyboardInterrupt:",
        '    print("interrupted", len(ch), flush=True)',
        'ch.try_recv() if len(ch) else ch.try_send("after")',
        "print(len(ch), flush=True)",
    ]
    return "\n".join(lines) + "\n"


def _interrupt(script: str) -> tuple:
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # into the wait
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=60)
        return proc.returncode, out, err, time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("mode", sorted(_WAITS))
def test_ctrl_c_ends_a_channel_wait_with_keyboard_interrupt(mode):
    code, out, err, took = _interrupt(_child(mode, catch=False))
    assert code == -signal.SIGINT, (code, out, err)
    assert "KeyboardInterrupt" in err, err
    assert took < 10, took  # promptly (a wait sleeps 50 ms at a time)


@pytest.mark.parametrize("mode", sorted(_WAITS))
def test_a_channel_interrupted_by_ctrl_c_goes_on_working(mode):
    code, out, err, _ = _interrupt(_child(mode, catch=True))
    assert code == 0, err
    # An interrupted send sent nothing: the channel still holds just the first message,
    # which the child then takes; a receiver's channel was empty and takes one message.
    first = "interrupted 1" if mode == "send" else "interrupted 0"
    assert out.split("\n")[:2] == [first, "0" if mode == "send" else "1"], out


def test_a_view_of_a_shared_buffer_crosses_as_that_view():
    buf = subinterp.buffer(bytes(range(16)), writable=True)
    view = memoryview(buf)
    ch = subinterp.channel("py-buffer-views")
    ch.send(view[2:4])
    ch.send(view.cast("H")[1:3])
    part = ch.recv()
    assert bytes(part) == bytes([2, 3]) and len(part.obj) == 2
    part[0] = 42  # the same memory
    assert view[2] == 42
    shorts = ch.recv()
    assert shorts.format == "H" and shorts.tolist() == view[2:6].cast("H").tolist()
    with pytest.raises(TypeError, match="non-contiguous"):
        ch.send(view[::2])
    assert len(ch) == 0


def test_a_zero_dimensional_view_of_a_shared_buffer_keeps_its_shape():
    buf = subinterp.buffer((7).to_bytes(8, "little"), writable=True)
    scalar = memoryview(buf).cast("q", shape=[])
    ch = subinterp.channel("py-buffer-scalar")
    ch.send(scalar)
    got = ch.recv()
    assert (got.format, got.shape, got.ndim) == ("q", (), 0)
    assert got[()] == 7


def test_a_view_of_other_memory_is_refused_with_the_way_to_send_a_copy():
    ch = subinterp.channel("py-other-views")
    for view in (memoryview(bytearray(b"abcd"))[1:3], memoryview(b"abcd")):
        with pytest.raises(TypeError, match=r"bytes\(view\)"):
            ch.send(view)
    assert len(ch) == 0


class _Color(enum.IntEnum):
    RED = 1


_Pair = collections.namedtuple("_Pair", "x y")


def test_subclasses_keep_their_type_through_a_channel():
    ch = subinterp.channel("py-subclasses")
    factory = collections.defaultdict(list)
    factory["k"].append(1)
    sent = [
        _Color.RED,
        collections.OrderedDict(a=1),
        factory,
        _Pair(1, 2),
        bytearray(b"x"),
        {"nested": collections.OrderedDict(b=2)},
    ]
    for item in sent:
        ch.send(item)
    got = [ch.recv() for _ in sent]
    assert got == sent
    assert [type(x) for x in got] == [type(x) for x in sent]
    assert type(got[5]["nested"]) is collections.OrderedDict
    got[2]["new"].append(2)  # the factory came along
    assert got[2]["new"] == [2]


def test_large_bytes_cross_between_the_main_interpreter_and_workers_whole():
    import helpers

    data = bytes(range(256)) * 8192  # 2 MiB: lent by the sender, copied once
    name = f"lent-{os.getpid()}"
    with subinterp.Pool(1) as pool:
        relayed = pool.submit(helpers.relay, name)
        ch = subinterp.channel(name)
        base = sys.getrefcount(data)
        ch.send(data)
        assert relayed.result(60) == "relayed"
        back = subinterp.channel(name + "-back").recv(timeout=60)
        assert type(back) is bytes and back == data * 2
        # The worker has copied it: the main interpreter's reference goes at its next
        # channel operation.
        ch.send(None)
        assert ch.recv() is None
        assert sys.getrefcount(data) == base
