"""The probe behind `subinterp check`, run by the library as `python -E -s -P -c PROBE`.

It reads one JSON request on stdin:

    {"modules": [...], "all": bool, "paths": [...], "venv": str|null,
     "venv_required": bool, "jobs": int, "timeout": float, "tmp": str,
     "prepare": bool|null, "prepare_rules": [[major, minor, fixed|null], ...],
     "legacy_prepare": {"3.12": [module, ...], ...}}

and writes JSON lines on stdout: {"type": "observation", ...} per module (in any order),
{"type": "warning", "message": ...}, {"type": "fatal", "message": ...} and, last,
{"type": "done", "python": "3.13.0", "prepared": bool}. `prepare` (or, when it is null,
`prepare_rules`, the versions the library's hazards table names) says whether the
library would import extension modules in the main interpreter first on this Python.

Every question about a module is asked in a process of its own, forked from this one
before anything of the module has been loaded, so that what one question does to the
process (a crash, a half-initialised C library, an extension's "already loaded" flag)
cannot change the answer to the next. For each module a supervisor process is forked; it
forks, one after another:

- `facts` (extension and builtin modules): calls the module's `PyInit_<name>` through
  ctypes. A multi-phase module returns its `PyModuleDef` (whose `m_slots` give
  `Py_mod_multiple_interpreters` and `Py_mod_gil`); a single-phase one runs its whole
  initialisation and returns a module object (or fails, which multi-phase initialisers
  cannot do: they only return their definition).
- `isolated`: imports the module in an own-GIL interpreter, then (if that worked) in a
  second one, while recording every extension module whose creation raised ImportError
  (CPython's refusal, "module X does not support loading in subinterpreters", even when
  the importing code caught it and fell back).
- `pool` (when the isolated imports worked or crashed): the way a pool uses a module,
  four isolated interpreters each created and used on a thread of its own, all alive at
  once, then each ended by its thread. Some crashes (CPython 3.13.0's `_datetime`) only
  show this way.
- `pool-prepared` (when the library prepares extension modules on this Python and one
  of the phases above crashed): the same after importing the module in the main
  interpreter, which is what the library's runtime does; its outcome is the one a host
  sees.
- `legacy` (only when the isolated import failed): the same with shared-GIL interpreters,
  after importing in the main interpreter the modules the library prepares for legacy
  interpreters on this Python (`legacy_prepare`, by minor version).
- `mixed` (only when isolated failed and legacy worked): an isolated attempt, then a
  legacy import in the same process, as a host that tries isolated first would do.

Each phase ends by destroying its interpreters, oldest first, so a crash at interpreter
end is seen too. The supervisor itself never imports the module, so it survives any crash of a phase and
reports the signal. This process itself imports only a few standard modules (`json`, `os`,
`signal`, `sys`, `time` and the low-level interpreters module), never the modules under
test.
"""

import json
import os
import signal
import sys
import time

import importlib.machinery as machinery

try:
    import _interpreters as _interp

    def new_interpreter(isolated):
        return _interp.create("isolated" if isolated else "legacy")

    def run_in(interp, code):
        failure = _interp.run_string(interp, code)
        if failure is not None:
            raise RuntimeError(failure.formatted)

except ImportError:  # Python 3.12
    import _xxsubinterpreters as _interp

    def new_interpreter(isolated):
        return _interp.create(isolated=isolated)

    def run_in(interp, code):
        _interp.run_string(interp, code)


REFUSAL = "does not support loading in subinterpreters"

# The code run in each subinterpreter: sets up sys.path like the library's interpreters,
# runs `import NAME` in __main__ (as a host's `exec("import NAME")` would) with the
# extension loaders wrapped to record the ImportErrors they raise, and writes what
# happened to a file (fds and files are process-wide) as a Python literal.
#
# It imports nothing else: what an interpreter has loaded changes how it is torn down, and
# with it whether a module's use-after-free at interpreter end crashes (pybind11 modules
# on 3.12 crash when a plain `import` is all that ran, and not after `import importlib`).
ATTEMPT = r'''
def _subinterp_check_attempt(name, out_path, bootstrap):
    import sys
    exec(bootstrap, {})
    bs = sys.modules["_frozen_importlib"]
    be = sys.modules["_frozen_importlib_external"]
    failed = []
    ext_create = be.ExtensionFileLoader.create_module
    builtin_create = bs.BuiltinImporter.__dict__["create_module"]

    def create_extension(self, spec):
        try:
            return ext_create(self, spec)
        except ImportError as e:
            failed.append([spec.name, str(e)])
            raise

    def create_builtin(spec):
        try:
            return builtin_create.__func__(spec)
        except ImportError as e:
            failed.append([spec.name, str(e)])
            raise

    be.ExtensionFileLoader.create_module = create_extension
    bs.BuiltinImporter.create_module = staticmethod(create_builtin)
    result = {"ok": False, "error": None, "failed_extensions": failed,
              "kind": None, "origin": None, "ids": None, "loaded": None}
    module = None
    try:
        exec("import " + name, sys.modules["__main__"].__dict__)
        module = sys.modules[name]
        result["ok"] = True
    except BaseException as e:
        t = type(e)
        qual = t.__qualname__ if t.__module__ == "builtins" else t.__module__ + "." + t.__qualname__
        result["error"] = {"type": qual, "message": str(e)}
    finally:
        be.ExtensionFileLoader.create_module = ext_create
        bs.BuiltinImporter.create_module = builtin_create
    if module is not None:
        spec = getattr(module, "__spec__", None)
        loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
        if isinstance(loader, be.ExtensionFileLoader):
            result["kind"] = "extension"
        elif loader is bs.BuiltinImporter or isinstance(loader, bs.BuiltinImporter):
            result["kind"] = "builtin"
        else:
            result["kind"] = "python"
        result["origin"] = getattr(spec, "origin", None)
        is_immortal = getattr(sys, "_is_immortal", None) or (lambda o: sys.getrefcount(o) >= 1 << 30)
        ids = {}
        for key, value in list(vars(module).items()):
            if not isinstance(key, str) or (key.startswith("__") and key.endswith("__")):
                continue
            if is_immortal(value):
                continue
            ids[key] = id(value)
        result["ids"] = ids
    result["loaded"] = sorted(k for k in list(sys.modules) if isinstance(k, str))
    # The module stays alive in sys.modules while the ids are compared.
    with open(out_path, "w") as f:
        f.write(repr(result))

_subinterp_check_attempt(%r, %r, %r)
del _subinterp_check_attempt
'''


def emit(kind, **fields):
    fields["type"] = kind
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def bootstrap_code(paths, venv_site):
    """Python run in every interpreter: what the library's runtime runs in each new one."""
    code = ["import sys"]
    if paths:
        code.append("sys.path[0:0] = %r" % (list(paths),))
    if venv_site:
        code.append("import site")
        code.append("site.addsitedir(%r)" % (venv_site,))
    return "\n".join(code) + "\n"


# --- finding modules without running any of their code --------------------------------


def find_spec(name):
    """The spec `import name` would use, found without executing any package's code.

    Walks the dotted name with the finders of sys.meta_path, handing each level the
    parent's `submodule_search_locations`, instead of importing parent packages.
    """
    parts = name.split(".")
    path = None
    spec = None
    for i in range(len(parts)):
        full = ".".join(parts[: i + 1])
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            try:
                spec = find(full, path)
            except Exception:
                spec = None
            if spec is not None:
                break
        if spec is None:
            return None
        if i < len(parts) - 1:
            path = spec.submodule_search_locations
            if path is None:
                return None
    return spec


def static_kind(name, spec):
    if name in sys.builtin_module_names:
        return "builtin", None
    if spec is None:
        return None, None
    if isinstance(spec.loader, machinery.ExtensionFileLoader):
        return "extension", spec.origin
    if spec.loader is machinery.BuiltinImporter:
        return "builtin", None
    return "python", spec.origin


def extension_modules():
    """Every extension module file on sys.path, package submodules included.

    Yields (name, origin, tagged): the first file found for a name wins, as for import.
    `tagged` is False for a file with the bare `.so` suffix, which may be a plain shared
    library shipped inside a package rather than a module.
    """
    suffixes = sorted(machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    seen = set()

    def walk(directory, prefix, depth):
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            try:
                if entry.is_file():
                    for suffix in suffixes:
                        if entry.name.endswith(suffix):
                            stem = entry.name[: -len(suffix)]
                            full = prefix + stem
                            if stem.isidentifier() and full not in seen:
                                seen.add(full)
                                yield full, entry.path, suffix != ".so"
                            break
                elif (
                    entry.is_dir(follow_symlinks=False)
                    and entry.name.isidentifier()
                    and entry.name != "__pycache__"
                    and depth < 12
                ):
                    yield from walk(entry.path, prefix + entry.name + ".", depth + 1)
            except OSError:
                continue

    for entry in list(sys.path):
        if entry and os.path.isdir(entry):
            yield from walk(entry, "", 0)


# --- the phases, each in a forked process ---------------------------------------------


def redirect_output(capture_path):
    """Send this process's stdout and stderr (fd level) to a capture file."""
    fd = os.open(capture_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import faulthandler

    faulthandler.enable(file=sys.stderr)


def init_symbol(name):
    short = name.rpartition(".")[2]
    if short.isascii():
        return "PyInit_" + short
    return "PyInitU_" + short.encode("punycode").decode("ascii").replace("-", "_")


def phase_facts(name, kind, origin, report):
    """Calls PyInit_<name> and reads what the module declares."""
    import ctypes

    P = ctypes.sizeof(ctypes.c_void_p)
    lib = ctypes.pythonapi if kind == "builtin" else ctypes.PyDLL(origin)
    try:
        init = getattr(lib, init_symbol(name))
    except AttributeError:
        report({"facts": {"init": None, "no_init": init_symbol(name)}})
        return
    init.restype = ctypes.c_void_p
    init.argtypes = []
    try:
        ptr = init()
    except BaseException as e:
        # Multi-phase initialisers only return their definition; this one ran code.
        report({"facts": {"init": "single-phase",
                          "error": "%s: %s" % (type(e).__name__, e)}})
        return
    if not ptr:
        report({"facts": {"init": "single-phase", "error": "PyInit returned NULL"}})
        return
    # ob_type is the last field of the object header, whatever the build.
    ob_type = ctypes.c_void_p.from_address(ptr + object.__basicsize__ - P).value
    moduledef_type = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "PyModuleDef_Type"))
    if ob_type != moduledef_type:
        report({"facts": {"init": "single-phase"}})
        return
    # PyModuleDef: m_base (header, m_init, m_index, m_copy), m_name, m_doc, m_size,
    # m_methods, m_slots, ...; each slot is {int slot; void *value;}.
    m_slots = ctypes.c_void_p.from_address(ptr + object.__basicsize__ + 3 * P + 4 * P).value
    multiple = None
    gil = None
    count = 0
    while m_slots and count < 256:
        slot_id = ctypes.c_int.from_address(m_slots).value
        if slot_id == 0:
            break
        value = ctypes.c_void_p.from_address(m_slots + P).value or 0
        if slot_id == 3:  # Py_mod_multiple_interpreters
            multiple = value
        elif slot_id == 4:  # Py_mod_gil (3.13+)
            gil = value
        m_slots += 2 * P
        count += 1
    report({"facts": {"init": "multi-phase", "multiple_interpreters": multiple, "gil": gil,
                      "gil_slot_exists": sys.version_info >= (3, 13)}})


def prepare_modules_in_main(names, report):
    """What the library's runtime does for legacy interpreters: the extension modules a
    hazard names are imported in the main interpreter (here all at once, up front)."""
    report({"stage": "importing %s in the main interpreter" % ", ".join(names)})
    import importlib

    for module in names:
        try:
            importlib.import_module(module)
        except BaseException:
            pass


def phase_imports(name, bootstrap, steps, tmp, report, stop_on_failure=True, prepare=False,
                  prepare_only=None):
    """Imports `name` in one new interpreter per step, one after another in this process,
    then destroys them. A step is (isolated, words naming the interpreter). With
    `prepare`, the main interpreter imports the module first (or, with `prepare_only`,
    those modules instead).

    After an import that failed, the next steps are skipped (unless told otherwise): the
    question of the phase is answered, and a host would not try again either."""
    import ast

    if prepare and prepare_only is not None:
        if prepare_only:
            prepare_modules_in_main(prepare_only, report)
    elif prepare:
        prepare_in_main(name, report)
    interps = []
    for n, (isolated, words) in enumerate(steps):
        report({"stage": "creating " + words})
        interp = new_interpreter(isolated)
        interps.append(interp)
        out_path = os.path.join(tmp, "attempt-%d-%d.json" % (os.getpid(), n))
        report({"stage": "importing it in " + words})
        run_in(interp, ATTEMPT % (name, out_path, bootstrap))
        with open(out_path) as f:
            attempt = ast.literal_eval(f.read())
        os.unlink(out_path)
        attempt["isolated"] = isolated
        report({"attempt": attempt})
        if stop_on_failure and not attempt["ok"]:
            break
    # End them oldest first, as a host closing interpreters in the order it made them
    # would: the first interpreter to initialise a module is the one most likely to
    # free what the others still use (on 3.13.0, `_datetime` crashes that way).
    for interp, (_, words) in zip(interps, steps):
        report({"stage": "ending " + words})
        _interp.destroy(interp)
    report({"stage": "done"})


def prepare_in_main(name, report):
    """What the library's runtime does on versions with a preparation hazard: the main
    interpreter imports the module before any isolated interpreter loads it."""
    report({"stage": "importing it in the main interpreter"})
    try:
        import importlib

        importlib.import_module(name)
        report({"prepared": None})
    except BaseException as e:
        report({"prepared": "%s: %s" % (type(e).__name__, e)})


def phase_process(name, bootstrap, tmp, report):
    """Imports `name` in this (forked) process's main interpreter, as a pool's worker
    process would, with the same bootstrap as the interpreters."""
    import ast

    out_path = os.path.join(tmp, "attempt-%d-process.json" % os.getpid())
    report({"stage": "importing it in the main interpreter of a process"})
    exec(ATTEMPT % (name, out_path, bootstrap), {"__name__": "__subinterp_check__"})
    with open(out_path) as f:
        attempt = ast.literal_eval(f.read())
    os.unlink(out_path)
    attempt["isolated"] = False
    attempt["ids"] = None
    attempt["loaded"] = None
    report({"attempt": attempt})
    report({"stage": "done"})


POOL_SIZE = 4
POOL_WORDS = "the %s isolated interpreters alive at once" % ("four" if POOL_SIZE == 4 else POOL_SIZE)


def phase_pool(name, bootstrap, tmp, report, prepare):
    """Imports `name` the way a pool uses it: POOL_SIZE isolated interpreters, each
    created and used on a thread of its own, all alive at once, then each ended by its
    thread. With `prepare`, the main interpreter imports the module first."""
    import ast
    import threading

    if prepare:
        prepare_in_main(name, report)
    attempts = [None] * POOL_SIZE

    def all_imported():
        for attempt in attempts:
            report({"attempt": attempt})
        report({"stage": "ending " + POOL_WORDS})

    barrier = threading.Barrier(POOL_SIZE, action=all_imported)

    def worker(n):
        interp = None
        attempt = {"ok": False, "error": None, "failed_extensions": [], "isolated": True}
        try:
            interp = new_interpreter(True)
            out_path = os.path.join(tmp, "attempt-%d-pool-%d.json" % (os.getpid(), n))
            run_in(interp, ATTEMPT % (name, out_path, bootstrap))
            with open(out_path) as f:
                attempt = ast.literal_eval(f.read())
            os.unlink(out_path)
            attempt["isolated"] = True
        except BaseException as e:
            attempt["error"] = {"type": type(e).__name__, "message": str(e)}
        finally:
            attempts[n] = attempt
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass
            if interp is not None:
                _interp.destroy(interp)

    report({"stage": "importing it in %s" % POOL_WORDS})
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(POOL_SIZE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report({"stage": "done"})


def prepares(rules):
    """Whether the library prepares extension modules in the main interpreter on this
    Python: `rules` are (major, minor, first fixed version or None) from its hazards."""
    here = sys.version_info[:3]
    for major, minor, fixed in rules or []:
        if (major, minor) != here[:2]:
            continue
        if fixed is None:
            return True
        fixed_parts = tuple(int("".join(c for c in part if c.isdigit()) or 0)
                            for part in fixed.split(".")[:3])
        if here < fixed_parts:
            return True
    return False


ISOLATED_STEPS = [(True, "the first isolated interpreter"), (True, "the second isolated interpreter")]
LEGACY_STEPS = [(False, "the first legacy interpreter"), (False, "the second legacy interpreter")]
MIXED_STEPS = [(True, "an isolated interpreter"),
               (False, "a legacy interpreter after an isolated one tried it")]


def run_phase(label, body, tmp, progress):
    """Runs body(report) in a forked process; returns its reports and how it ended.

    Stages reported by the phase also go to the supervisor's progress file (the phase
    writes through the file it inherited), where a timeout finds them."""
    report_path = os.path.join(tmp, "phase-%d-%s.jsonl" % (os.getpid(), label))
    capture_path = os.path.join(tmp, "phase-%d-%s.out" % (os.getpid(), label))
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            redirect_output(capture_path)
            with open(report_path, "w", buffering=1) as out:
                def report(item):
                    out.write(json.dumps(item) + "\n")
                    out.flush()
                    if "stage" in item:
                        progress(item["stage"])
                try:
                    body(report)
                except BaseException as e:
                    import traceback
                    report({"probe_error": "".join(traceback.format_exception(e))})
        except BaseException:
            status = 3
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    items = []
    try:
        with open(report_path) as f:
            for line in f:
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except ValueError:
                        pass
        os.unlink(report_path)
    except OSError:
        pass
    output = ""
    try:
        with open(capture_path, "rb") as f:
            output = f.read()[-8192:].decode("utf-8", "replace")
        os.unlink(capture_path)
    except OSError:
        pass
    phase = {"phase": label, "attempts": [], "facts": None, "stage": None,
             "probe_error": None, "crash": None, "exit_status": None,
             "prepared": False, "prepare_error": None}
    for item in items:
        if "attempt" in item:
            phase["attempts"].append(item["attempt"])
        elif "facts" in item:
            phase["facts"] = item["facts"]
        elif "stage" in item:
            phase["stage"] = item["stage"]
        elif "probe_error" in item:
            phase["probe_error"] = item["probe_error"]
        elif "prepared" in item:
            phase["prepared"] = True
            phase["prepare_error"] = item["prepared"]
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = "signal %d" % sig
        phase["crash"] = {"signal": sig, "name": signame, "output": output}
    elif os.WEXITSTATUS(status) != 0:
        phase["exit_status"] = os.WEXITSTATUS(status)
        phase["crash"] = {"signal": None, "name": None, "output": output}
    elif phase["stage"] not in (None, "done") and label != "facts" and phase["probe_error"] is None:
        # Exited with status 0 in the middle: the module called exit(0) from C.
        phase["exit_status"] = 0
        phase["crash"] = {"signal": None, "name": None, "output": output}
    return phase


def clean(phase, count):
    """Whether every interpreter of the phase imported the module and the process
    survived their end."""
    return (
        phase["crash"] is None
        and phase["probe_error"] is None
        and len(phase["attempts"]) == count
        and all(a["ok"] for a in phase["attempts"])
    )


def crashed(phase):
    return phase["crash"] is not None or phase["probe_error"] is not None


def supervise(name, optional, bootstrap, tmp, progress, prepare, legacy_prepare):
    """Asks every question about one module, each in a fresh forked process."""
    spec = find_spec(name)
    kind, origin = static_kind(name, spec)
    obs = {"module": name, "static_kind": kind, "origin": origin, "phases": []}
    if kind in ("extension", "builtin"):
        progress("reading what it declares (PyInit_)")
        facts = run_phase(
            "facts", lambda report: phase_facts(name, kind, origin, report), tmp, progress)
        if optional and facts["facts"] and facts["facts"].get("no_init"):
            return None  # a plain shared library, not a module
        obs["phases"].append(facts)
    progress("importing it in isolated interpreters")
    isolated = run_phase(
        "isolated", lambda report: phase_imports(name, bootstrap, ISOLATED_STEPS, tmp, report), tmp, progress)
    obs["phases"].append(isolated)
    # The phase whose outcome a host's isolated interpreters would see.
    deciding = isolated
    if clean(isolated, 2) or crashed(isolated):
        progress("importing it in %d isolated interpreters at once" % POOL_SIZE)
        pool = run_phase(
            "pool", lambda report: phase_pool(name, bootstrap, tmp, report, False), tmp, progress)
        obs["phases"].append(pool)
        if crashed(pool):
            deciding = pool
        if prepare and (crashed(isolated) or crashed(pool)):
            progress("importing it in the main interpreter, then in %d isolated ones" % POOL_SIZE)
            deciding = run_phase(
                "pool-prepared", lambda report: phase_pool(name, bootstrap, tmp, report, True),
                tmp, progress)
            obs["phases"].append(deciding)
    iso_ok = clean(deciding, POOL_SIZE if deciding is not isolated else 2)
    if not iso_ok:
        progress("importing it in legacy interpreters")
        legacy = run_phase(
            "legacy", lambda report: phase_imports(
                name, bootstrap, LEGACY_STEPS, tmp, report, prepare=prepare,
                prepare_only=legacy_prepare),
            tmp, progress)
        obs["phases"].append(legacy)
        refused_first = (
            deciding["crash"] is None
            and deciding["attempts"]
            and not deciding["attempts"][0]["ok"]
        )
        if refused_first and legacy["crash"] is None and legacy["attempts"] and legacy["attempts"][0]["ok"]:
            progress("importing it in a legacy interpreter after an isolated one refused it")
            obs["phases"].append(run_phase(
                "mixed", lambda report: phase_imports(
                    name, bootstrap, MIXED_STEPS, tmp, report, stop_on_failure=False,
                    prepare=prepare),
                tmp, progress))
        # Where a pool would run it instead: a worker process, if it imports there. A
        # module a legacy interpreter imported imports in a main interpreter too.
        legacy_imported = (
            legacy["crash"] is None and legacy["attempts"] and legacy["attempts"][0]["ok"]
        )
        if not legacy_imported:
            progress("importing it in the main interpreter of a process")
            obs["phases"].append(run_phase(
                "process", lambda report: phase_process(name, bootstrap, tmp, report),
                tmp, progress))
    return obs


def start_supervisor(name, optional, bootstrap, tmp, prepare, legacy_prepare):
    progress_path = os.path.join(tmp, "module-%d-%d.progress" % (os.getpid(), time.monotonic_ns()))
    result_path = progress_path[: -len(".progress")] + ".json"
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            with open(progress_path, "w", buffering=1) as progress_file:
                def progress(stage):
                    progress_file.write(stage + "\n")
                    progress_file.flush()
                try:
                    obs = supervise(
                        name, optional, bootstrap, tmp, progress, prepare, legacy_prepare)
                except BaseException as e:
                    import traceback
                    obs = {"module": name, "probe_error": "".join(traceback.format_exception(e))}
            with open(result_path + ".part", "w") as f:
                json.dump(obs, f)
            os.rename(result_path + ".part", result_path)
        except BaseException:
            status = 3
        os._exit(status)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    return pid, progress_path, result_path


def last_progress(path):
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else None
    except OSError:
        return None


def main():
    request = json.loads(sys.stdin.read())
    tmp = request["tmp"]
    venv_site = None
    if request.get("venv"):
        venv = request["venv"]
        site_dir = os.path.join(
            venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
        if os.path.isdir(site_dir):
            venv_site = site_dir
        else:
            message = "virtual environment %s has no %s (is it made for another Python than %s?)" % (
                venv, site_dir, sys.version.split()[0])
            if request.get("venv_required"):
                emit("fatal", message=message)
                return
            emit("warning", message=message + "; ignoring VIRTUAL_ENV")
    bootstrap = bootstrap_code(request.get("paths") or [], venv_site)
    exec(bootstrap, {})

    work = [(name, False) for name in request.get("modules") or []]
    if request.get("all"):
        named = set(request.get("modules") or [])
        for name, origin, tagged in extension_modules():
            if name not in named:
                work.append((name, not tagged))
    prepare = request.get("prepare")
    if prepare is None:
        prepare = prepares(request.get("prepare_rules"))
    legacy_prepare = (request.get("legacy_prepare") or {}).get(
        "%d.%d" % sys.version_info[:2], [])
    jobs = max(1, int(request.get("jobs") or 1))
    timeout = float(request.get("timeout") or 120.0)

    pending = list(work)
    pending.reverse()
    running = {}
    parent = os.getppid()

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Every process this probe started ends with it, however it ends: Ctrl-C (the
    # supervisors have process groups of their own, so the terminal's SIGINT does not
    # reach them), SIGTERM, SIGHUP, or the library's process going away.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
    try:
        supervise_all(pending, running, bootstrap, tmp, prepare, legacy_prepare, jobs,
                      timeout, parent)
    finally:
        for pid in list(running):
            kill_supervisor(pid)
    emit("done", python=sys.version.split()[0], prepared=bool(prepare))


def kill_supervisor(pid):
    """Kills a supervisor and the phase it runs (its process group), and reaps it."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except OSError:
        pass


def supervise_all(pending, running, bootstrap, tmp, prepare, legacy_prepare, jobs, timeout,
                  parent):
    """Runs the supervisors, `jobs` at a time, and emits what each observed."""
    while pending or running:
        if os.getppid() != parent:
            raise KeyboardInterrupt  # the library's process is gone
        while pending and len(running) < jobs:
            name, optional = pending.pop()
            pid, progress_path, result_path = start_supervisor(
                name, optional, bootstrap, tmp, prepare, legacy_prepare)
            running[pid] = (name, progress_path, result_path, time.monotonic() + timeout)
        finished = False
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            finished = True
            name, progress_path, result_path, _ = running.pop(pid)
            obs = None
            try:
                with open(result_path) as f:
                    obs = json.load(f)
                os.unlink(result_path)
            except (OSError, ValueError):
                obs = {"module": name, "probe_error": "the checking process ended with status %r "
                       "while %s" % (status, last_progress(progress_path) or "starting")}
            try:
                os.unlink(progress_path)
            except OSError:
                pass
            if obs is not None:
                emit("observation", **obs)
        now = time.monotonic()
        for pid, (name, progress_path, result_path, deadline) in list(running.items()):
            if now >= deadline:
                kill_supervisor(pid)
                running.pop(pid)
                emit("observation", module=name, timeout=timeout,
                     stage=last_progress(progress_path))
                for path in (progress_path, result_path):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        if not finished and running:
            time.sleep(0.005)


main()
