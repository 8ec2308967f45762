"""What a pool's start shares with its workers is the code they would load themselves:
the runner from the package's bytecode cache, the main script from its own or compiled as
Python compiles a file (its coding line honoured)."""

import marshal
import os
import py_compile
import sys

from subinterp import _calls

import helpers
from helpers import run_script


def test_code_comes_from_a_valid_bytecode_cache_only(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    return 41 + 1\n")
    # Missing cache: nothing.
    assert _calls._cached_code(str(source), os.stat(source)) is None
    py_compile.compile(str(source), doraise=True)
    cached = _calls._cached_code(str(source), os.stat(source))
    assert cached is not None
    namespace = {}
    exec(marshal.loads(cached), namespace)
    assert namespace["f"]() == 42
    # The source changed since (its size): the cache is stale.
    source.write_text("def f():\n    return 41 + 2  # changed\n")
    assert _calls._cached_code(str(source), os.stat(source)) is None


def test_the_runner_code_is_the_packages_own():
    code = marshal.loads(_calls._worker_code())
    assert code.co_filename.endswith("_worker.py")
    assert "_subinterp_load_main" in code.co_names


def test_a_main_script_with_a_coding_line_runs_in_workers(tmp_path):
    script = (
        "# -*- coding: latin-1 -*-\n"
        "import subinterp\n"
        "def word():\n"
        "    return 'caf\xe9'\n"
        "if __name__ == '__main__':\n"
        "    with subinterp.Pool(1) as pool:\n"
        "        print(ascii(pool.submit(word).result(60)))\n"
        "    import os\n"
        "    from subinterp import _calls, _native\n"
        "    path = _calls._main_path()\n"
        "    stat = os.stat(path)\n"
        "    name = _calls.main_code_name(path, stat.st_mtime_ns, stat.st_size)\n"
        "    print(_native._shared_bytes(name) is not None)\n"
    ).encode("latin-1")
    path = tmp_path / "main.py"
    path.write_bytes(script)
    import subprocess

    out = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    # Shared compiled (so decoded from Latin-1 as its coding line says), and run.
    assert out.stdout.split() == [ascii("caf\xe9"), "True"]


def test_a_main_script_shared_once_compiled_is_the_one_workers_run(tmp_path):
    out = run_script(
        tmp_path,
        """
        import subinterp
        from subinterp import _calls, _native

        def where():
            return __name__, __file__

        if __name__ == "__main__":
            with subinterp.Pool(1) as pool:
                print(*pool.submit(where).result(60))
            path = _calls._main_path()
            stat = __import__("os").stat(path)
            name = _calls.main_code_name(path, stat.st_mtime_ns, stat.st_size)
            print(_native._shared_bytes(name) is not None)
        """,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"__mp_main__ {tmp_path / 'main.py'}"
    assert lines[1] == "True"


def test_workers_compile_sources_as_importlib_does(tmp_path):
    import subinterp

    module = tmp_path / "probe_source.py"
    module.write_text(
        '"""Docstring."""\n'
        "from __future__ import annotations\n"
        "def f(x: int) -> int:\n"
        '    """Doc."""\n'
        "    assert x\n"
        "    return x + 1\n"
    )
    with subinterp.Pool(1) as pool:
        ours, same = pool.submit(helpers.compiled_like_importlib, str(module)).result(60)
    assert ours, "the worker compiles sources with the engine"
    assert same == [True, True, True, True]


def test_a_syntax_error_imported_in_a_worker_has_the_traceback_of_the_main_interpreter(
    tmp_path,
):
    import subinterp

    (tmp_path / "broken_source.py").write_text("x = 1\ndef f(:\n    pass\n")
    here = helpers.import_module_at(str(tmp_path), "broken_source")
    with subinterp.Pool(1) as pool:
        there = pool.submit(helpers.import_module_at, str(tmp_path), "broken_source").result(60)
    assert here is not None and "SyntaxError" in here
    # The same frames and message (importlib's own frames trimmed in both).
    assert there.replace(helpers.__file__, "helpers") == here.replace(helpers.__file__, "helpers")
