"""What crosses to a worker and back: every plain type kept as it is (written straight
from the objects in the wire format, read straight into objects), sharing kept, and what
is not plain data pickled."""

import math
import struct
import time

import pytest

import helpers
import subinterp

SURROGATES = "caf\udce9 \ud800 end"


def plain_values():
    return [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**63 - 1,
        -(2**63),
        2**64,
        -(2**200) + 7,
        10**400,
        0.0,
        -0.0,
        1.5,
        float("inf"),
        float("-inf"),
        float("nan"),
        "",
        "text",
        "ünïcødé ✓ 🐍",
        SURROGATES,
        b"",
        b"\x00\xff bytes",
        bytearray(b"mutable"),
        [],
        (),
        {},
        [1, (2, [3, (4,)])],
        (1, [2, (3,)]),
        {"z": 1, "a": 2, "m": 3, 5: "five", None: [], (1, 2): "tuple key", 1.5: b"f"},
        [True, 1, 1.0, False, 0, 0.0],
        {True: "bool", 2: "int"},
    ]


def same_value(a, b):
    """Equal, with the same types all the way down, floats bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            same_value(k, l) and same_value(a[k], b[l]) for k, l in zip(a, b)
        )
    return a == b


@pytest.fixture(scope="module")
def pool():
    with subinterp.Pool(2) as p:
        yield p


@pytest.fixture(scope="module")
def interp():
    with subinterp.Interpreter() as i:
        yield i


def test_plain_values_round_trip_through_submit(pool):
    for value in plain_values():
        got = pool.submit(helpers.same, value).result(60)
        assert same_value(got, value), (value, got)
        got = pool.submit(helpers.echo, value, key=value).result(60)
        assert same_value(got, [[value], {"key": value}]), (value, got)


def test_plain_values_round_trip_through_map(pool):
    values = plain_values()
    for chunksize in (1, 4):
        got = list(pool.map(helpers.same, values, chunksize=chunksize))
        assert same_value(got, values)
        got = list(pool.map(helpers.same, values, values, chunksize=chunksize))
        assert same_value(got, [(v, v) for v in values])


def test_plain_values_round_trip_through_interpreter_call(interp):
    for value in plain_values():
        got = interp.call(helpers.same, value)
        assert same_value(got, value), (value, got)


def test_all_at_once(pool, interp):
    values = plain_values()
    assert same_value(pool.submit(helpers.same, values).result(60), values)
    assert same_value(interp.call(helpers.same, values), values)


def test_lone_surrogates_cross_both_ways(pool, interp):
    # os.fsdecode of a name that is not UTF-8: made in the worker, sent back, and sent
    # again as an argument.
    name = pool.submit(helpers.fs_name, b"caf\xe9.txt").result(60)
    assert name == "caf\udce9.txt"
    assert pool.submit(helpers.same, name).result(60) == name
    assert list(pool.map(helpers.same, [name] * 5, chunksize=2)) == [name] * 5
    assert interp.call(helpers.fs_name, b"\xff") == "\udcff"
    assert interp.call(helpers.same, {name: [name]}) == {name: [name]}


def nested_pairs(levels=24):
    x = [1]
    for _ in range(levels):
        x = [x, x]
    return x


def assert_pairs_shared(value, levels=24):
    for _ in range(levels):
        assert value[0] is value[1]
        value = value[0]
    assert value == [1]


def test_shared_substructure_is_kept_and_fast(pool, interp):
    # 25 lists, 2**24 paths: written once each, read back with the same sharing.
    value = nested_pairs()
    start = time.monotonic()
    got = pool.submit(helpers.same, value).result(60)
    assert_pairs_shared(got)
    got = interp.call(helpers.same, value)
    assert_pairs_shared(got)
    [got] = list(pool.map(helpers.same, [value], chunksize=2))
    assert_pairs_shared(got)
    # Well under a second each; the margin is for a loaded machine.
    assert time.monotonic() - start < 20
    shared = [1, 2]
    a, b = pool.submit(helpers.same, shared, shared).result(60)
    assert a is b and a == shared


def test_values_that_contain_themselves_are_pickled(pool, interp):
    cycle: list = [1]
    cycle.append(cycle)
    got = pool.submit(helpers.same, cycle).result(60)
    assert got[0] == 1 and got[1] is got
    got = interp.call(helpers.same, cycle)
    assert got[1] is got
    d: dict = {}
    d["self"] = d
    [got] = list(pool.map(helpers.same, [d], chunksize=2))
    assert got["self"] is got


def test_subclasses_and_other_types_are_pickled(pool, interp):
    import collections

    values = [
        collections.OrderedDict(a=1),
        collections.Counter("abc"),
        {1, 2},
        frozenset({3}),
        complex(1, 2),
        helpers.make_point(1, 2) if hasattr(helpers, "make_point") else 1,
    ]
    for value in values:
        got = pool.submit(helpers.same, value).result(60)
        assert type(got) is type(value) and got == value
        assert type(interp.call(helpers.same, value)) is type(value)
    got = list(pool.map(helpers.same, values, chunksize=3))
    assert [type(v) for v in got] == [type(v) for v in values]


def test_unpicklable_argument_is_a_type_error_at_submit(pool, interp):
    import threading

    lock = threading.Lock()
    with pytest.raises(TypeError):
        pool.submit(helpers.same, [1, lock])
    with pytest.raises(TypeError):
        interp.call(helpers.same, lock)
    with pytest.raises(TypeError):
        pool.map(helpers.same, [1, lock], chunksize=2)


def test_values_nested_past_the_limit_are_pickled(pool, interp):
    # Past the wire format's 512 levels the value is pickled, both ways.
    deep: list = []
    inner = deep
    for _ in range(600):
        inner.append([])
        inner = inner[0]
    for got in (pool.submit(helpers.same, deep).result(60), interp.call(helpers.same, deep)):
        depth = 0
        while got:
            got = got[0]
            depth += 1
        assert depth == 600


def test_a_result_that_cannot_be_pickled_is_a_type_error(pool, interp):
    with pytest.raises(TypeError, match="cannot be sent back"):
        pool.submit(helpers.make_lock).result(60)
    with pytest.raises(TypeError, match="cannot be sent back"):
        list(pool.map(helpers.make_lock, [1, 2], chunksize=2))
    with pytest.raises(TypeError, match="cannot be sent back"):
        interp.call(helpers.make_lock)
    # The worker goes on.
    assert pool.submit(helpers.same, "\udcff").result(60) == "\udcff"


def test_pickled_arguments_and_results_keep_large_buffers_out_of_band():
    import pickle

    from subinterp import _calls

    data = bytes(range(256)) * 1000
    pickled, buffers = _calls.dumps_out_of_band(((helpers.Blob(data),), {}))
    assert [type(b) for b in buffers] == [pickle.PickleBuffer]
    assert len(pickled) < 1000  # the data is not in the pickle
    with subinterp.Pool(2) as pool:
        back, owned = pool.submit(helpers.blob_back, helpers.Blob(data)).result(60)
        assert back == helpers.Blob(data * 2)
        assert owned is True  # the worker got the buffer as a bytearray of its own
        assert back.owns is True
        got = list(pool.map(helpers.blob_back, [helpers.Blob(data[:i]) for i in range(5)], chunksize=2))
        assert [b for b, _ in got] == [helpers.Blob(data[:i] * 2) for i in range(5)]
