"""Memory limits in the Python package: the borrowed Python has no memory accounting (it
is installed when an embedded Python starts), so a limit is refused, saying why."""

import pytest

import subinterp


def test_a_memory_limit_is_refused_with_the_reason():
    with pytest.raises(RuntimeError, match="memory accounting"):
        subinterp.Interpreter(memory_limit="64M")
    with pytest.raises(RuntimeError, match="memory accounting"):
        with subinterp.Pool(1, memory_limit=64 * 2**20) as pool:
            pool.submit(int).result()


def test_a_bad_memory_limit_is_a_value_error():
    for bad in ("12X", "0", -5, 1.5):
        with pytest.raises(ValueError, match="memory_limit|size"):
            subinterp.Interpreter(memory_limit=bad)  # type: ignore[arg-type]
