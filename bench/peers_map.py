"""Peer figures for the pool benchmark (`subinterp map`), measured on the same Python.

Three peers run a module's function over records with N workers, results in input order:
  process_pool  concurrent.futures.ProcessPoolExecutor, start method "fork" (the Linux
                default before 3.14, and the fastest to start), Executor.map(chunksize=C)
  mp_pool_imap  multiprocessing.Pool.imap, start method "fork", chunksize C
  interp_pool   InterpreterPoolExecutor, one isolated interpreter per worker thread:
                concurrent.futures on 3.14+, otherwise the PyPI backport
                interpreters-pep-734 (with its low-level modules, interpreters-3-12, on
                3.12), installed into a venv cached in target/bench-venv-<major>.<minor>/
                (see peer_venv.py); the script re-executes itself with that venv's python.
                It takes no chunksize: every record is a task of its own.
C is the chunk size multiprocessing.Pool.map picks by itself: records / (4 N), rounded up.
Each peer runs in a child process of its own, with the module directory on PYTHONPATH
(which worker processes and interpreters alike get), so a peer that crashes or hangs
loses only its own figures and the peak RSS is that peer's alone.

The workloads, on one pool per peer, in this order:
  start-up     from creating the pool to having a trivial result from every worker: N
               tasks that each wait until all N have started, so N different workers
               must take them
  overhead     MODULE.identity over TRIVIAL_RECORDS small ints; a slow peer maps fewer,
               sized by a probe run to fit the phase budget
  CPU-bound    MODULE.analyze over every record of the data set: each JSON line parsed,
               mapped, and its result written as a JSON line {"ok": result}, as
               `subinterp map` does
The pool is made before the data set is read, so forked workers do not inherit it.

Prints one JSON object:
  python                      version of the Python measured
  workers                     N, the workers of every pool (the argument)
  data, records               the data set and its number of records
  trivial_records             records requested for the overhead figure
  phase_budget_s              time the overhead phase may take
  mp_start_method             start method of the two process peers
  interp_pool_module          implementation of InterpreterPoolExecutor, with its version
  serial_records_per_s        MODULE.analyze in a plain loop in one process, as a baseline
  <peer>_startup_ms           the start-up figure
  <peer>_cpu_records_per_s    CPU-bound records per second of wall time
  <peer>_cpu_chunksize        chunk size used for them (absent for interp_pool)
  <peer>_overhead_us          wall time of the overhead run divided by its records
  <peer>_overhead_records     records mapped for that figure
  <peer>_overhead_chunksize   chunk size used for them (absent for interp_pool)
  <peer>_peak_rss_mib         the largest sum of VmRSS over the peer's process and all its
                              descendants, sampled every 10 ms during the CPU-bound run
  <peer>_error                why a peer has no figures (the other peers are still reported)
  notes                       facts about the peers that bear on reading the figures,
                              including any count scaled down to fit the phase budget
Usage: python3 peers_map.py [WORKERS] [--data PATH] [--module-dir DIR]
       (defaults: os.cpu_count(), examples/map/documents.jsonl, examples/map; each child
       runs `peers_map.py WORKERS --data PATH --module-dir DIR --peer NAME`, which
       prints that peer's figures unprefixed)
"""
import argparse
import importlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import peer_venv
# The venv requirements and the failure report are the same as the channels benchmark's.
from peers_channels import backport_requirements, describe_failure

PEERS = ("process_pool", "mp_pool_imap", "interp_pool")
SCRIPT = Path(__file__).resolve()
EXAMPLE_DIR = SCRIPT.parent.parent / "examples" / "map"
MODULE = "textstats"
MP_START_METHOD = "fork"
TRIVIAL_RECORDS = 20000
PROBE_RECORDS = 1000
PHASE_BUDGET_S = 5.0
STARTUP_TIMEOUT_S = 10.0
RSS_INTERVAL_S = 0.01
PEER_TIMEOUT_S = 25

# Run by each start-up task through builtins.exec, so that no worker has to import a
# module for it (forked workers would have this script already, interpreters would have
# to import it): mark this task's arrival in `directory`, then wait until all `workers`
# tasks have arrived. A worker holds its task until then, so each worker takes one.
CHECK_IN = """
import os, time
open(os.path.join(directory, str(index)), "x").close()
deadline = time.monotonic() + timeout
while len(os.listdir(directory)) < workers:
    if time.monotonic() > deadline:
        raise TimeoutError(
            f"{len(os.listdir(directory))} of {workers} workers started in {timeout} s")
    time.sleep(0.0002)
"""


def default_chunksize(records, workers):
    """The chunk size multiprocessing.Pool.map chooses: records / (4 workers), rounded up."""
    return max(1, math.ceil(records / (4 * workers)))


class ExecutorPeer:
    """A pool made of a concurrent.futures executor.

    A pool peer offers call_each(function, calls), which submits function(*args) for
    every args of `calls` at once and returns the results; map(function, items,
    chunksize), an iterator over the results in input order; and close()."""

    def __init__(self, executor, chunked):
        self.executor = executor
        self.chunked = chunked  # whether its map takes a chunksize

    def call_each(self, function, calls):
        futures = [self.executor.submit(function, *args) for args in calls]
        return [future.result() for future in futures]

    def map(self, function, items, chunksize):
        if self.chunked:
            return self.executor.map(function, items, chunksize=chunksize)
        return self.executor.map(function, items)

    def close(self):
        self.executor.shutdown()


class MultiprocessingPoolPeer:
    """A pool made of a multiprocessing.Pool, mapped with imap (ordered, lazy); offers
    the same methods as ExecutorPeer."""

    chunked = True

    def __init__(self, pool):
        self.pool = pool

    def call_each(self, function, calls):
        pending = [self.pool.apply_async(function, args) for args in calls]
        return [result.get() for result in pending]

    def map(self, function, items, chunksize):
        return self.pool.imap(function, items, chunksize=chunksize)

    def close(self):
        self.pool.terminate()
        self.pool.join()


def import_interpreter_pool():
    """InterpreterPoolExecutor and the name of its implementation with its version."""
    try:
        from concurrent.futures import InterpreterPoolExecutor
    except ImportError:
        from interpreters_backport.concurrent.futures import InterpreterPoolExecutor
        version = importlib.metadata.version("interpreters-pep-734")
        return InterpreterPoolExecutor, f"interpreters_backport {version}"
    return InterpreterPoolExecutor, f"concurrent.futures {sys.version.split()[0]}"


def peer_maker(name):
    """For peer `name`: a function making its pool with a given number of workers, notes
    on the peer, and facts to report. What the peer needs is imported here, so that no
    import is timed as start-up."""
    if name == "interp_pool":
        executor_type, module = import_interpreter_pool()
        notes = ["every record is a task of its own (no chunksize): the function and "
                 "its argument are pickled, run by exec in the worker's interpreter, "
                 "and the result comes back through a cross-interpreter queue"]
        return (lambda workers: ExecutorPeer(executor_type(workers), chunked=False),
                notes, {"module": module})
    context = multiprocessing.get_context(MP_START_METHOD)
    notes = [f"start method {MP_START_METHOD}; each chunk of records and of results is "
             f"pickled and sent through a pipe"]
    if name == "process_pool":
        return (lambda workers: ExecutorPeer(
            ProcessPoolExecutor(workers, mp_context=context), chunked=True), notes, {})
    return lambda workers: MultiprocessingPoolPeer(context.Pool(workers)), notes, {}


def process_tree_rss_kib(root):
    """Sum of VmRSS, in KiB, of process `root` and all its descendants."""
    total = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process (or thread) ended while being read
    return total


class PeakRss:
    """While active, samples the summed RSS of this process and its descendants every
    RSS_INTERVAL_S in a background thread; `peak_mib` is the largest sum seen."""

    def __enter__(self):
        self.peak_kib = process_tree_rss_kib(os.getpid())
        self.stopping = threading.Event()
        self.sampler = threading.Thread(target=self.sample)
        self.sampler.start()
        return self

    def sample(self):
        while not self.stopping.wait(RSS_INTERVAL_S):
            self.peak_kib = max(self.peak_kib, process_tree_rss_kib(os.getpid()))

    def __exit__(self, *exc_info):
        self.stopping.set()
        self.sampler.join()
        self.peak_kib = max(self.peak_kib, process_tree_rss_kib(os.getpid()))

    @property
    def peak_mib(self):
        return self.peak_kib / 1024


def start_pool(make_pool, workers):
    """A pool made by `make_pool(workers)` and the milliseconds from calling that to
    having a result from every worker (see CHECK_IN)."""
    with tempfile.TemporaryDirectory() as directory:
        calls = [(CHECK_IN, {"directory": directory, "index": index, "workers": workers,
                             "timeout": STARTUP_TIMEOUT_S})
                 for index in range(workers)]
        start = time.perf_counter()
        pool = make_pool(workers)
        pool.call_each(exec, calls)
        return pool, (time.perf_counter() - start) * 1e3


def timed_map_s(pool, function, items, size):
    """Seconds to map `function` over `items` in chunks of `size` on `pool` and take
    every result in order."""
    start = time.perf_counter()
    for _ in pool.map(function, items, size):
        pass
    return time.perf_counter() - start


def measure_overhead(pool, identity, workers):
    """The overhead figures: wall time per record of mapping `identity` over small ints,
    the records mapped and the chunk size. A probe run (which also warms the workers up)
    sizes the measured run to fit the phase budget."""
    probe = min(TRIVIAL_RECORDS, PROBE_RECORDS)
    rate = probe / timed_map_s(pool, identity, range(probe),
                               default_chunksize(probe, workers))
    count = max(probe, min(TRIVIAL_RECORDS, int(rate * PHASE_BUDGET_S)))
    size = default_chunksize(count, workers)
    figures = {"overhead_us": timed_map_s(pool, identity, range(count), size) / count * 1e6,
               "overhead_records": count}
    if pool.chunked:
        figures["overhead_chunksize"] = size
    return figures


def measure_cpu(pool, analyze, workers, data):
    """The CPU-bound figures: records per second of mapping `analyze` over the JSON lines
    of `data` and writing each result as a JSON line, the peak RSS in MiB during that
    run, and the chunk size."""
    lines = data.read_text(encoding="utf-8").splitlines()
    size = default_chunksize(len(lines), workers)
    with PeakRss() as rss:
        start = time.perf_counter()
        results = list(pool.map(analyze, map(json.loads, lines), size))
        output = [json.dumps({"ok": result}) for result in results]
        elapsed = time.perf_counter() - start
    expected_ids = [json.loads(line).get("id") for line in lines]
    if len(output) != len(lines) or [r.get("id") for r in results] != expected_ids:
        raise RuntimeError("results are missing or out of input order")
    figures = {"cpu_records_per_s": len(lines) / elapsed, "peak_rss_mib": rss.peak_mib}
    if pool.chunked:
        figures["cpu_chunksize"] = size
    return figures


def run_peer_here(name, workers, data):
    """All figures and notes of one peer, measured in this process and its workers."""
    module = importlib.import_module(MODULE)
    make_pool, notes, results = peer_maker(name)
    pool, results["startup_ms"] = start_pool(make_pool, workers)
    try:
        results.update(measure_overhead(pool, module.identity, workers))
        results.update(measure_cpu(pool, module.analyze, workers, data))
    finally:
        pool.close()
    results["notes"] = notes
    return results


def count_lines(path):
    """Number of lines of the text file `path`."""
    with open(path, encoding="utf-8") as file:
        return sum(1 for _ in file)


def serial_records_per_s(data, module_dir):
    """Records per second of MODULE.analyze called in a plain loop in this process, with
    the same JSON parsing and writing as the pools."""
    sys.path.insert(0, str(module_dir))
    analyze = importlib.import_module(MODULE).analyze
    lines = data.read_text(encoding="utf-8").splitlines()
    start = time.perf_counter()
    output = [json.dumps({"ok": analyze(json.loads(line))}) for line in lines]
    return len(output) / (time.perf_counter() - start)


def run_peer(name, args):
    """Run one peer in a child process; return its figures and notes, or its error."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(args.module_dir), environment.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(SCRIPT), str(args.workers),
         "--data", str(args.data), "--module-dir", str(args.module_dir), "--peer", name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
        start_new_session=True)
    try:
        stdout, stderr = child.communicate(timeout=PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"error": f"no result within {PEER_TIMEOUT_S} s"}
    sys.stderr.write(stderr)
    if child.returncode != 0:
        return {"error": describe_failure(child.returncode, stderr)}
    try:
        return json.loads(stdout)
    except ValueError:
        return {"error": f"unreadable output: {stdout[:200]!r}"}


def parse_arguments():
    parser = argparse.ArgumentParser(description="Peer figures for the pool benchmark.")
    parser.add_argument("workers", nargs="?", type=int, default=os.cpu_count(),
                        help="workers of every pool (default: the number of CPUs)")
    parser.add_argument("--data", type=Path, default=EXAMPLE_DIR / "documents.jsonl",
                        help="JSON Lines data set for the CPU-bound run")
    parser.add_argument("--module-dir", type=Path, default=EXAMPLE_DIR,
                        help=f"directory holding {MODULE}.py")
    parser.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = parse_arguments()
    if args.peer:
        print(json.dumps(run_peer_here(args.peer, args.workers, args.data)))
        return

    notes = []
    requirements = backport_requirements()
    if requirements:
        try:
            peer_venv.reexec_in_venv(requirements)
        except (OSError, subprocess.CalledProcessError) as exc:
            notes.append(f"interp_pool: could not prepare the venv with "
                         f"{' '.join(requirements)}: {exc}")

    report = {
        "python": sys.version.split()[0],
        "workers": args.workers,
        "data": str(args.data),
        "records": count_lines(args.data),
        "trivial_records": TRIVIAL_RECORDS,
        "phase_budget_s": PHASE_BUDGET_S,
        "mp_start_method": MP_START_METHOD,
        "serial_records_per_s": serial_records_per_s(args.data, args.module_dir),
    }
    for name in PEERS:
        results = run_peer(name, args)
        notes.extend(f"{name}: {note}" for note in results.pop("notes", []))
        ran = results.get("overhead_records", TRIVIAL_RECORDS)
        if ran < TRIVIAL_RECORDS:
            notes.append(f"{name}: overhead mapped {ran} of {TRIVIAL_RECORDS} records "
                         f"(phase budget {PHASE_BUDGET_S:g} s)")
        report.update({f"{name}_{key}": value for key, value in results.items()})
    report["notes"] = notes
    print(json.dumps(report))


if __name__ == "__main__":
    main()
