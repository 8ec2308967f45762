"""subinterp.Pool against the standard pools, on the same Python, in one run.

    python bench/python_pool.py [--workers N] [--quick] [--only NAME,...]
                                [--measures NAME,...] [--start-method METHOD]

Peers (subinterp is always measured, as the reference of every ratio):
  subinterp     subinterp.Pool: isolated subinterpreters of the calling process
  thread_pool   concurrent.futures.ThreadPoolExecutor
  process_pool  concurrent.futures.ProcessPoolExecutor (this Python's default start
                method unless --start-method says otherwise)
  mp_pool       multiprocessing.Pool (same start method)
  interp_pool   InterpreterPoolExecutor: concurrent.futures on 3.14+, on 3.12/3.13 the
                PyPI backport interpreters-pep-734 (import name interpreters_backport;
                `pip install interpreters-pep-734`, plus interpreters-3-12 on 3.12).
                A peer that cannot be imported or run is reported as skipped, with why.

Measures (each peer gets a fresh pool per measure, in a child process of its own with a
timeout, so a peer that hangs or crashes loses only that figure):
  overhead   submit(trivial) then .result(), one at a time, N times; µs per task
  map        map(trivial, range(ITEMS)) with a chunksize suited to the peer; total ms
  cpu        a pure-Python loop of ~20 ms over 4 * workers items; tasks/s
  records    the data-heavy map: map(summarize, RECORDS records of 2000 small dicts
             {"id", "name", "v", "tags", "ok"}), chunksize 8; total ms. The arguments
             are the data: what it costs to carry them to the workers is the figure
  cold       time to first result: in a fresh process, create the pool, submit one
             trivial task, get its result (pool start included, imports excluded and
             reported apart); median of several fresh processes
  rss        peak RSS of the process tree while a fresh process runs the cpu workload

Each timing is repeated: every child runs several rounds, and overhead, map and cpu run
in several passes over the peers in turn (this machine's speed drifts from one moment to
the next, so taking turns spreads that over every peer). The tables show the median and
the best of all rounds. Ratios are written so that > 1 means subinterp is better: peer /
subinterp for times and memory, subinterp / peer for throughput; the verdicts at the end
compare medians. A peer whose child times out is not run again, so a full run stays
bounded (about 1 minute when nothing hangs; --quick about 10 s).

Note: the interpreters-pep-734 0.5.0 backport cannot run a function of __main__ (its
workers cannot unpickle it) and then waits for the result forever, spinning a core; so
the functions here live in a module, never in __main__.

The functions every peer runs, `trivial` and `cpu`, are defined at the top level of this
file; their source is written to a small module, python_pool_work, in a temporary
directory put on PYTHONPATH (which worker processes and interpreters all get), so every
peer runs the same functions, found by the same module and name, and no worker has to
compile this whole file to get them. Each child process runs a small main script there
that imports this file under `if __name__ == "__main__":`.
"""
import os
import sys
import time

SCRIPT = os.path.abspath(__file__)
SCRIPT_DIR = os.path.dirname(SCRIPT)
WORK_MODULE = "python_pool_work"  # trivial and cpu, written out to a temporary directory
# The main script of every child: small, and doing nothing unless run as __main__, as a
# user's script would be (subinterp.Pool's workers load it as __mp_main__).
CHILD_MAIN = """import sys
if __name__ == "__main__":
    sys.path.insert(0, {bench_dir!r})
    import python_pool
    python_pool.run_child(sys.argv[1:])
"""
PEERS = ("subinterp", "thread_pool", "process_pool", "mp_pool", "interp_pool")
MEASURES = ("overhead", "map", "cpu", "records", "cold", "rss")
RECORDS, RECORD_ROWS, RECORDS_CHUNKSIZE = 300, 2000, 8
RSS_INTERVAL_S = 0.01


# ---------------------------------------------------------------- the work


def trivial(x=None):
    """The trivial task: returns its argument."""
    return x


def cpu(n):
    """The CPU-bound task: a pure-Python loop of n steps."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def make_record(seed, rows=2000):
    """One record of the data-heavy map: `rows` small dicts."""
    return [{"id": seed * rows + i, "name": f"name-{i}", "v": i * 0.5,
             "tags": ["a", "b", str(i % 7)], "ok": i % 2 == 0} for i in range(rows)]


def summarize(record):
    """The data-heavy task: a small summary of one record."""
    total = 0.0
    ok = 0
    for row in record:
        total += row["v"]
        ok += row["ok"]
    return [len(record), total, ok]


# ---------------------------------------------------------------- peers


class Peer:
    """One pool implementation: make(workers) gives a pool; submit/map/close use it."""

    chunked = True  # whether its map honours a chunksize

    def __init__(self, workers, start_method):
        self.workers = workers
        self.start_method = start_method

    def submit(self, pool, fn, arg):
        return pool.submit(fn, arg).result()

    def map(self, pool, fn, items, chunksize):
        return list(pool.map(fn, items, chunksize=chunksize))

    def close(self, pool):
        pool.shutdown(wait=True)


class SubinterpPeer(Peer):
    name = "subinterp"

    def load(self):
        import subinterp
        self.pool_type = subinterp.Pool

    def describe(self):
        return f"subinterp.Pool (subinterp {_dist_version('subinterp')})"

    def make(self):
        return self.pool_type(max_workers=self.workers)


class ThreadPoolPeer(Peer):
    name = "thread_pool"
    chunked = False

    def load(self):
        from concurrent.futures import ThreadPoolExecutor
        self.pool_type = ThreadPoolExecutor

    def describe(self):
        return "concurrent.futures.ThreadPoolExecutor"

    def make(self):
        return self.pool_type(max_workers=self.workers)

    def map(self, pool, fn, items, chunksize):
        return list(pool.map(fn, items))  # chunksize would be ignored


class ProcessPoolPeer(Peer):
    name = "process_pool"

    def load(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        self.context = multiprocessing.get_context(self.start_method)
        self.pool_type = ProcessPoolExecutor

    def describe(self):
        return f"concurrent.futures.ProcessPoolExecutor ({self.context.get_start_method()})"

    def make(self):
        return self.pool_type(max_workers=self.workers, mp_context=self.context)


class MpPoolPeer(Peer):
    name = "mp_pool"

    def load(self):
        import multiprocessing
        import multiprocessing.pool  # noqa: F401  (what context.Pool imports)
        self.context = multiprocessing.get_context(self.start_method)

    def describe(self):
        return f"multiprocessing.Pool ({self.context.get_start_method()})"

    def make(self):
        return self.context.Pool(self.workers)

    def submit(self, pool, fn, arg):
        return pool.apply_async(fn, (arg,)).get()

    def map(self, pool, fn, items, chunksize):
        return pool.map(fn, items, chunksize=chunksize)

    def close(self, pool):
        pool.close()
        pool.join()


class InterpPoolPeer(Peer):
    name = "interp_pool"
    chunked = False

    def load(self):
        try:
            from concurrent.futures import InterpreterPoolExecutor
            self.where = ("concurrent.futures.InterpreterPoolExecutor "
                          f"({sys.version.split()[0]})")
        except ImportError:
            if sys.version_info < (3, 12):
                raise ImportError("no InterpreterPoolExecutor before Python 3.12")
            try:
                from interpreters_backport.concurrent.futures import InterpreterPoolExecutor
            except ImportError as exc:
                raise ImportError(
                    f"{exc}; on 3.12/3.13 it is the backport: "
                    f"pip install interpreters-pep-734"
                    + (" interpreters-3-12" if sys.version_info < (3, 13) else "")) from exc
            self.where = ("interpreters_backport.concurrent.futures.InterpreterPoolExecutor "
                          "(interpreters-pep-734 {})")
        self.pool_type = InterpreterPoolExecutor

    def describe(self):
        return self.where.format(_dist_version("interpreters-pep-734"))

    def make(self):
        return self.pool_type(max_workers=self.workers)

    def map(self, pool, fn, items, chunksize):
        return list(pool.map(fn, items))  # it takes no chunksize: one task per item


PEER_TYPES = {peer.name: peer for peer in
              (SubinterpPeer, ThreadPoolPeer, ProcessPoolPeer, MpPoolPeer, InterpPoolPeer)}


def _dist_version(name):
    try:
        import importlib.metadata
        return importlib.metadata.version(name)
    except Exception:
        return "?"


def chunksize_for(items, workers):
    """What multiprocessing.Pool.map picks by itself: items / (4 workers), rounded up."""
    return max(1, -(-items // (4 * workers)))


# ---------------------------------------------------------------- children: the measures


def _median(values):
    import statistics
    return statistics.median(values)


def _work():
    """The module whose functions every peer runs."""
    import importlib
    return importlib.import_module(WORK_MODULE)


def write_work_dir():
    """A temporary directory holding WORK_MODULE and the children's main script."""
    import inspect
    import tempfile
    directory = tempfile.mkdtemp(prefix="python_pool_bench_")
    with open(os.path.join(directory, WORK_MODULE + ".py"), "w") as module:
        module.write('"""The work of bench/python_pool.py, written out by it."""\n\n\n')
        module.write("\n\n".join(inspect.getsource(f)
                                   for f in (trivial, cpu, make_record, summarize)))
    with open(os.path.join(directory, "child_main.py"), "w") as main:
        main.write(CHILD_MAIN.format(bench_dir=SCRIPT_DIR))
    return directory


def child_probe(peer, cfg):
    work = _work()
    peer.load()
    where = peer.describe()
    pool = peer.make()
    try:
        if peer.submit(pool, work.trivial, 7) != 7:
            raise RuntimeError("trivial task gave a wrong result")
    finally:
        peer.close(pool)
    return {"implementation": where}


def child_overhead(peer, cfg):
    work = _work()
    peer.load()
    pool = peer.make()
    try:
        for i in range(max(50, 4 * peer.workers)):  # warm up: workers started, imports done
            peer.submit(pool, work.trivial, i)
        start = time.perf_counter()
        for i in range(100):
            peer.submit(pool, work.trivial, i)
        probe = (time.perf_counter() - start) / 100
        count = cfg["tasks"]
        if probe * count > cfg["round_budget_s"]:  # a slow peer runs fewer tasks a round
            count = max(min(200, count), int(cfg["round_budget_s"] / probe))
        rounds = []
        for _ in range(cfg["repeat"]):
            start = time.perf_counter()
            for i in range(count):
                if peer.submit(pool, work.trivial, i) != i:
                    raise RuntimeError("trivial task gave a wrong result")
            rounds.append((time.perf_counter() - start) / count * 1e6)
    finally:
        peer.close(pool)
    return {"us": rounds, "tasks": count}


def child_map(peer, cfg):
    work = _work()
    peer.load()
    items = cfg["items"]
    size = chunksize_for(items, peer.workers)
    expected = list(range(items))
    pool = peer.make()
    try:
        peer.map(pool, work.trivial, range(64 * peer.workers), chunksize_for(64, 1))
        rounds = []
        for _ in range(cfg["repeat"]):
            start = time.perf_counter()
            results = peer.map(pool, work.trivial, range(items), size)
            rounds.append((time.perf_counter() - start) * 1e3)
            if results != expected:
                raise RuntimeError("map gave wrong or misordered results")
    finally:
        peer.close(pool)
    return {"ms": rounds, "chunksize": size if peer.chunked else None}


def child_cpu(peer, cfg):
    work = _work()
    peer.load()
    n, tasks = cfg["cpu_n"], cfg["cpu_tasks"]
    expected = work.cpu(n)
    pool = peer.make()
    try:
        peer.map(pool, work.cpu, [n] * peer.workers, 1)  # warm up every worker
        rounds = []
        for _ in range(cfg["repeat"]):
            start = time.perf_counter()
            results = peer.map(pool, work.cpu, [n] * tasks, 1)
            rounds.append(tasks / (time.perf_counter() - start))
            if results != [expected] * tasks:
                raise RuntimeError("cpu task gave a wrong result")
    finally:
        peer.close(pool)
    return {"per_s": rounds}


def child_records(peer, cfg):
    work = _work()
    peer.load()
    records = [work.make_record(seed, RECORD_ROWS) for seed in range(RECORDS)]
    expected = [work.summarize(record) for record in records]
    pool = peer.make()
    try:
        peer.map(pool, work.summarize, records[:4 * peer.workers], 1)  # warm up
        rounds = []
        for _ in range(cfg["repeat"]):
            start = time.perf_counter()
            results = peer.map(pool, work.summarize, records, RECORDS_CHUNKSIZE)
            rounds.append((time.perf_counter() - start) * 1e3)
            if results != expected:
                raise RuntimeError("summarize gave wrong or misordered results")
    finally:
        peer.close(pool)
    return {"ms": rounds}


def child_cold(peer, cfg):
    work = _work()
    start = time.perf_counter()
    peer.load()
    imported = time.perf_counter()
    pool = peer.make()
    result = peer.submit(pool, work.trivial, 1)
    first = time.perf_counter()
    peer.close(pool)
    closed = time.perf_counter()
    if result != 1:
        raise RuntimeError("trivial task gave a wrong result")
    return {"import_ms": (imported - start) * 1e3, "first_ms": (first - imported) * 1e3,
            "shutdown_ms": (closed - first) * 1e3}


def child_rss(peer, cfg):
    import resource
    work = _work()
    peer.load()
    n, tasks = cfg["cpu_n"], cfg["cpu_tasks"]
    baseline = _status_kib(os.getpid(), "VmRSS")
    pool = peer.make()
    try:
        for _ in range(cfg["rss_repeat"]):
            peer.map(pool, work.cpu, [n] * tasks, 1)
    finally:
        peer.close(pool)
    return {"baseline_kib": baseline, "hwm_kib": _status_kib(os.getpid(), "VmHWM"),
            "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


CHILDREN = {"probe": child_probe, "overhead": child_overhead, "map": child_map,
            "cpu": child_cpu, "records": child_records, "cold": child_cold,
            "rss": child_rss}


def run_child(argv):
    """MEASURE PEER WORKERS START_METHOD CONFIG_JSON: print that figure as JSON.

    Run by the children's main script (see CHILD_MAIN), or by hand as
    `python_pool.py --child ...` with the work directory on PYTHONPATH."""
    import json
    measure, name, workers, start_method, cfg = argv
    peer = PEER_TYPES[name](int(workers), start_method if start_method != "-" else None)
    print(json.dumps(CHILDREN[measure](peer, json.loads(cfg))), flush=True)


# ---------------------------------------------------------------- process tree memory


def _status_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _tree(root):
    pids, pending = [], [root]
    while pending:
        pid = pending.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass  # ended while being read
    return pids


def tree_memory_kib(root):
    """(sum of VmRSS, sum of Pss) in KiB over process `root` and its descendants."""
    rss = pss = 0
    for pid in _tree(root):
        try:
            rss += _status_kib(pid, "VmRSS")
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return rss, pss


# ---------------------------------------------------------------- the parent


class Child:
    """Run one child measurement with a timeout; sample its process tree if asked."""

    def __init__(self, measure, name, args, cfg, timeout, sample=False):
        import json
        import signal
        import subprocess
        import threading
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.work_dir,
                                                          env.get("PYTHONPATH")]))
        command = [sys.executable, "-X", "faulthandler",
                   os.path.join(args.work_dir, "child_main.py"), measure, name,
                   str(args.workers), args.start_method or "-", json.dumps(cfg)]
        self.result = self.error = None
        self.timed_out = False
        self.peak_rss_kib = self.peak_pss_kib = 0
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=env, start_new_session=True)
        done = threading.Event()
        sampler = None
        if sample:
            def sampling():
                while True:
                    rss, pss = tree_memory_kib(child.pid)
                    self.peak_rss_kib = max(self.peak_rss_kib, rss)
                    self.peak_pss_kib = max(self.peak_pss_kib, pss)
                    if done.wait(RSS_INTERVAL_S):
                        return
            sampler = threading.Thread(target=sampling, daemon=True)
            sampler.start()
        try:
            stdout, stderr = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            self.error = f"no result within {timeout:g} s (killed)"
            self.timed_out = True
            return
        finally:
            done.set()
            if sampler:
                sampler.join()
        if child.returncode != 0:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # leftover workers, if any
            except ProcessLookupError:
                pass
            self.error = describe_failure(child.returncode, stderr)
            return
        try:
            self.result = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.error = f"unreadable output {stdout[-200:]!r}; stderr {stderr[-300:]!r}"


def argparse_namespace(**fields):
    import argparse
    return argparse.Namespace(**fields)


def describe_failure(returncode, stderr):
    import signal
    if returncode < 0:
        try:
            what = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"killed by signal {-returncode}"
    else:
        what = f"exit status {returncode}"
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return what
    if "Fatal Python error" in stderr or returncode < 0:  # a crash: its first lines tell
        crash = [line for line in lines if "Fatal Python error" in line or "File" in line]
        return f"{what}: {' | '.join((crash or lines)[:3])[:400]}"
    return f"{what}: {lines[-1][:400]}"  # the exception that ended it


def config(args):
    if args.quick:
        return {"tasks": 300, "round_budget_s": 0.3, "repeat": 3, "passes": 1,
                "cpu_passes": 3, "items": 4000, "cpu_target_s": 0.010, "cold_repeat": 3,
                "rss_repeat": 1, "timeout": 40}
    return {"tasks": 2000, "round_budget_s": 1.0, "repeat": 3, "passes": 3, "cpu_passes": 5,
            "items": 20000, "cpu_target_s": 0.020, "cold_repeat": 7, "rss_repeat": 2,
            "timeout": 90}


def calibrate_cpu(target_s, n=None):
    """Steps of cpu() that take about target_s here (or the given n), the serial tasks/s
    at that size (median of 5) and the best time of one."""
    if n is None:
        n = 20000
        while True:
            start = time.perf_counter()
            cpu(n)
            elapsed = time.perf_counter() - start
            if elapsed > 0.005:
                break
            n *= 4
        n = max(1, int(n * target_s / elapsed))
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        cpu(n)
        samples.append(time.perf_counter() - start)
    return n, 1 / _median(samples), min(samples)


def thread_round_trip_us(count=2000):
    """Median µs of a round trip to another thread through two queue.SimpleQueue."""
    import queue
    import threading
    there, back = queue.SimpleQueue(), queue.SimpleQueue()

    def echo():
        while (item := there.get()) is not None:
            back.put(item)

    thread = threading.Thread(target=echo)
    thread.start()
    samples = []
    for i in range(count):
        start = time.perf_counter()
        there.put(i)
        back.get()
        samples.append(time.perf_counter() - start)
    there.put(None)
    thread.join()
    return _median(samples) * 1e6


def fmt(value, digits=3):
    """A number with about `digits` significant digits, thousands spaced."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    magnitude = len(str(int(abs(value)))) if abs(value) >= 1 else 0
    decimals = max(0, digits - magnitude) if abs(value) >= 1 else digits
    text = f"{value:,.{decimals}f}".replace(",", " ")
    return text


def ratio(value):
    return "-" if value is None else f"{value:.2f}x"


def print_table(title, header, rows, notes=()):
    print()
    print(title)
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


def main():
    import argparse
    import multiprocessing

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="workers of every pool (default: os.cpu_count())")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a smoke run")
    parser.add_argument("--only", help=f"peers to run, of {','.join(PEERS)} "
                                       f"(subinterp is always run)")
    parser.add_argument("--measures", help=f"measures to run, of {','.join(MEASURES)}")
    parser.add_argument("--start-method", choices=multiprocessing.get_all_start_methods(),
                        help="start method of process_pool and mp_pool "
                             "(default: this Python's default)")
    args = parser.parse_args()
    selected = PEERS if not args.only else ["subinterp"] + [
        n.strip() for n in args.only.split(",") if n.strip() and n.strip() != "subinterp"]
    for name in selected:
        if name not in PEER_TYPES:
            parser.error(f"unknown peer {name!r}; peers: {', '.join(PEERS)}")
    measures = MEASURES if not args.measures else [m.strip() for m in args.measures.split(",")]
    for measure in measures:
        if measure not in MEASURES:
            parser.error(f"unknown measure {measure!r}; measures: {', '.join(MEASURES)}")
    cfg = config(args)
    began = time.perf_counter()
    args.work_dir = write_work_dir()
    try:
        return measure_all(args, selected, measures, cfg, began)
    finally:
        import shutil
        shutil.rmtree(args.work_dir, ignore_errors=True)


def measure_all(args, selected, measures, cfg, began):
    import multiprocessing
    import platform
    timeout = cfg["timeout"]

    start_method = args.start_method or multiprocessing.get_start_method()
    print(f"subinterp.Pool vs standard pools - Python {platform.python_version()} "
          f"({sys.executable}), {platform.machine()} {platform.system()}")
    print(f"workers: {args.workers}   cores (os.cpu_count): {os.cpu_count()}   "
          f"usable cores: {len(os.sched_getaffinity(0))}   "
          f"process start method: {start_method}   "
          f"{'--quick' if args.quick else 'full run'}")
    try:
        with open("/proc/loadavg") as loadavg:
            print(f"load average at start: {' '.join(loadavg.read().split()[:3])}")
    except OSError:
        pass

    # Which peers run here, and what they are.
    peers, skipped = [], {}
    print()
    print("peers:")
    for name in selected:
        probe = Child("probe", name, args, cfg, timeout=min(timeout, 30))
        if probe.error:
            skipped[name] = probe.error
            print(f"  {name:13} SKIPPED: {probe.error}")
        else:
            peers.append(name)
            print(f"  {name:13} {probe.result['implementation']}")
    if "subinterp" not in peers:
        print("subinterp itself cannot run here; nothing to compare.")
        return 1

    cpu_n, serial_per_s, serial_best_s = calibrate_cpu(cfg["cpu_target_s"])
    cfg.update(cpu_n=cpu_n, cpu_tasks=4 * args.workers)
    results = {}  # (measure, peer) -> {key: [values], "_note": str} or {"error": str}

    hung = {}  # peer -> the measure it hung in; it is not run again, to bound the run time

    def run(measure, name, **extra):
        if name in hung:
            child = argparse_namespace(result=None, error=f"not run: it hung in {hung[name]}")
            return child
        child = Child(measure, name, args, cfg, timeout=timeout, **extra)
        if child.error:
            print(f"  ! {name} {measure}: {child.error}", flush=True)
            if child.timed_out:
                hung[name] = measure
        return child

    def interleaved(measure, passes, collect):
        """Run `measure` for every peer, `passes` times round-robin (so that a slow
        spell of the machine falls on every peer alike); collect(data, result) merges
        each child's figures into results[(measure, peer)]. A peer that fails once is
        not run again for that measure."""
        for _ in range(passes):
            for name in peers:
                data = results.setdefault((measure, name), {})
                if "error" in data:
                    continue
                child = run(measure, name)
                if child.error:
                    results[(measure, name)] = {"error": child.error}
                else:
                    collect(data, child.result)

    def extend(key, *extra_keys):
        def collect(data, result):
            for k in (key,) + extra_keys:
                value = result[k]
                data.setdefault(k, []).extend(value if isinstance(value, list) else [value])
        return collect

    def rows_for(measure, key, better_low, unit_fmt=fmt):
        """Table rows: peer, median, best, ratio of medians (> 1: subinterp better)."""
        rows = []
        ref = results.get((measure, "subinterp"))
        for name in peers:
            data = results.get((measure, name))
            if not data or "error" in data:
                rows.append([name, "failed", "-", "-", data["error"] if data else "not run"])
                continue
            values = data[key]
            median = _median(values)
            best = min(values) if better_low else max(values)
            r = None
            if ref and "error" not in ref:
                ref_median = _median(ref[key])
                r = median / ref_median if better_low else ref_median / median
            rows.append([name, unit_fmt(median), unit_fmt(best),
                         "ref" if name == "subinterp" else ratio(r), data.get("_note", "")])
        return rows

    passes = cfg["passes"]
    rounds = f"{passes} x {cfg['repeat']} rounds" if passes > 1 else f"{cfg['repeat']} rounds"

    # 1. per-task overhead
    if "overhead" in measures:
        floor = thread_round_trip_us()
        interleaved("overhead", passes, extend("us", "tasks"))
        for name in peers:
            data = results[("overhead", name)]
            if "error" not in data:
                low, high = min(data["tasks"]), max(data["tasks"])
                data["_note"] = (f"{low if low == high else f'{low}-{high}'} tasks a round, "
                                 f"{len(data['us'])} rounds")
        print_table("1. per-task overhead: submit(trivial, i).result(), one at a time "
                    "(µs per task)",
                    ["peer", "median µs", "best µs", "peer/subinterp", "run"],
                    rows_for("overhead", "us", True),
                    [f"rounds: {rounds}, each peer in a fresh child process per pass; a slow "
                     f"peer runs fewer tasks a round (about {cfg['round_budget_s']:g} s)",
                     "mp_pool uses apply_async(trivial, (i,)).get()",
                     f"for scale: a bare round trip to another Python thread through two "
                     f"queue.SimpleQueue here takes {fmt(floor)} µs (median)"])

    # 2. map of trivial items
    if "map" in measures:
        interleaved("map", passes, extend("ms", "chunksize"))
        for name in peers:
            data = results[("map", name)]
            if "error" not in data:
                size = data["chunksize"][0]
                per_item = _median(data["ms"]) * 1e3 / cfg["items"]
                data["_note"] = (f"{fmt(per_item)} µs/item, "
                                 + (f"chunksize {size}" if size else "no chunksize"))
        print_table(f"2. map(trivial, range({cfg['items']})) to a list (ms total; {rounds})",
                    ["peer", "median ms", "best ms", "peer/subinterp",
                     "µs/item (median), chunking"],
                    rows_for("map", "ms", True),
                    ["chunksize = items / (4 * workers), rounded up, for peers whose map "
                     "takes one; thread_pool and interp_pool map item by item "
                     "(their map ignores chunksize)"])

    # 3. CPU-bound throughput
    if "cpu" in measures:
        serial, serial_best = [], []

        def collect_cpu(data, result):
            extend("per_s")(data, result)
            _, rate, best = calibrate_cpu(cfg["cpu_target_s"], n=cpu_n)
            serial.append(rate)
            serial_best.append(best)

        cpu_passes = cfg.get("cpu_passes", passes)
        interleaved("cpu", cpu_passes, collect_cpu)
        serial_median = _median(serial) if serial else serial_per_s
        for name in peers:
            data = results[("cpu", name)]
            if "error" not in data:
                data["_note"] = f"{_median(data['per_s']) / serial_median:.2f}x serial"
        print_table(f"3. CPU-bound: map(cpu, [{cpu_n}] * {cfg['cpu_tasks']}), chunksize 1 "
                    f"(tasks/s; {cpu_passes} x {cfg['repeat']} rounds)",
                    ["peer", "median tasks/s", "best tasks/s", "subinterp/peer", "vs serial"],
                    rows_for("cpu", "per_s", False),
                    [f"one cpu({cpu_n}) task takes {1e3 / serial_median:.1f} ms (median) in a "
                     f"plain loop in this process, measured after each child: serial "
                     f"{fmt(serial_median)} tasks/s, ideal with {args.workers} workers "
                     f"{fmt(serial_median * min(args.workers, os.cpu_count()))} tasks/s",
                     f"the serial task time (median of 5) ranged "
                     f"{1e3 / max(serial):.1f}-{1e3 / min(serial):.1f} ms over the "
                     f"{len(serial)} measurements (best single task "
                     f"{1e3 * min(serial_best):.1f} ms): this machine's speed drifts, hence "
                     f"the round-robin passes"])

    # 3b. the data-heavy map
    if "records" in measures:
        interleaved("records", passes, extend("ms"))
        print_table(f"3b. data-heavy map: map(summarize, {RECORDS} records of {RECORD_ROWS} "
                    f"small dicts), chunksize {RECORDS_CHUNKSIZE} (ms total; {rounds})",
                    ["peer", "median ms", "best ms", "peer/subinterp", ""],
                    rows_for("records", "ms", True),
                    ["the arguments are the data (about 600 000 dicts); the results are "
                     "three numbers a record; thread_pool and interp_pool map item by item"])

    # 4. time to first result from a cold start
    if "cold" in measures:
        interleaved("cold", cfg["cold_repeat"], extend("first_ms", "import_ms", "shutdown_ms"))
        for name in peers:
            data = results[("cold", name)]
            if "error" not in data:
                data["_note"] = (f"import {fmt(_median(data['import_ms']))} ms, "
                                 f"shutdown {fmt(_median(data['shutdown_ms']))} ms")
        print_table(f"4. cold start: create the pool, submit(trivial), result() "
                    f"(ms; {cfg['cold_repeat']} fresh processes each)",
                    ["peer", "median ms", "best ms", "peer/subinterp",
                     "medians apart from it"],
                    rows_for("cold", "first_ms", True),
                    ["each run in a fresh process of this Python, the peers taking turns; the "
                     "import of the peer's module is timed apart (not in the figure), and so "
                     "is shutdown(wait=True) after the result"])

    # 5. peak RSS
    if "rss" in measures:
        for name in peers:
            child = run("rss", name, sample=True)
            if child.error:
                results[("rss", name)] = {"error": child.error}
                continue
            r = child.result
            peak = max(child.peak_rss_kib, r["hwm_kib"])
            results[("rss", name)] = {
                "mib": [peak / 1024],
                "pss_mib": [child.peak_pss_kib / 1024],
                "_note": (f"PSS {child.peak_pss_kib / 1024:.1f}, parent VmHWM "
                          f"{r['hwm_kib'] / 1024:.1f}, before the pool "
                          f"{r['baseline_kib'] / 1024:.1f}, largest child ru_maxrss "
                          f"{r['children_maxrss_kib'] / 1024:.1f}")}
        print_table(f"5. peak RSS of the process tree, cpu workload x {cfg['rss_repeat']} "
                    f"with {args.workers} workers (MiB)",
                    ["peer", "peak MiB", "peer/subinterp", "other figures (MiB)"],
                    [[row[0], row[1], row[3], row[4]]
                     for row in rows_for("rss", "mib", True, lambda v: f"{v:.1f}")],
                    ["peak = max(largest sum of VmRSS over the child process and all its "
                     "descendants, sampled every 10 ms from outside; the child's own VmHWM)",
                     "PSS: the same sampled sum of Pss (/proc/PID/smaps_rollup), which "
                     "counts pages shared between forked processes once",
                     "ru_maxrss (RUSAGE_CHILDREN): the largest single worker process, a "
                     "lower bound; 0 for peers without worker processes"])

    # Verdicts
    print()
    print("verdicts (from the medians above):")
    for line in verdicts(results, peers, skipped, measures):
        print(f"  {line}")
    print()
    print(f"total time {time.perf_counter() - began:.0f} s")
    return 0


def verdicts(results, peers, skipped, measures):
    def median_of(measure, name, key):
        data = results.get((measure, name))
        if not data or "error" in data:
            return None
        return _median(data[key])

    lines = []
    # the data-heavy map against the faster process pool
    if "records" in measures:
        ours = median_of("records", "subinterp", "ms")
        pools = {n: median_of("records", n, "ms") for n in ("process_pool", "mp_pool")}
        pools = {n: v for n, v in pools.items() if v is not None}
        if ours is None or not pools:
            lines.append("data-heavy map >= 1.5x faster than the faster process pool: "
                         "cannot judge")
        else:
            best = min(pools.values())
            lines.append(f"data-heavy map >= 1.5x faster than the faster process pool: "
                         f"{'met' if best / ours >= 1.5 else 'NOT met'} (subinterp "
                         f"{fmt(ours)} ms; "
                         + ", ".join(f"{n} {fmt(v)} ms ({v / ours:.2f}x)"
                                     for n, v in pools.items()) + ")")
    for measure, target in (("overhead", "per-task overhead"), ("cpu", "CPU-bound throughput"),
                            ("cold", "start-up"), ("rss", "peak RSS")):
        if measure not in measures:
            lines.append(f"{target}: not measured in this run (--measures)")
    # per-task overhead
    ours = median_of("overhead", "subinterp", "us")
    theirs = median_of("overhead", "interp_pool", "us")
    if "overhead" not in measures:
        pass
    elif ours is None:
        lines.append("per-task overhead: cannot judge (no subinterp figure)")
    else:
        absolute = "met" if ours <= 10 else "NOT met"
        if theirs is None:
            relative = "cannot judge: no interp_pool figure"
            overall = "NOT judged"
        else:
            relative_ok = theirs / ours >= 10
            relative = f"{theirs / ours:.1f}x better than interp_pool " \
                       f"({fmt(theirs)} µs): {'met' if relative_ok else 'NOT met'}"
            overall = "met" if ours <= 10 and relative_ok else "NOT met"
        lines.append(f"per-task overhead <= 10 µs and >= 10x better than the interpreter "
                     f"pool: {overall} (subinterp {fmt(ours)} µs: {absolute}; {relative})")
    # throughput
    ours = median_of("cpu", "subinterp", "per_s")
    if "cpu" not in measures:
        pass
    elif ours is None:
        lines.append("CPU-bound throughput >= every peer's: cannot judge "
                     "(no subinterp figure)")
    else:
        compared = {n: median_of("cpu", n, "per_s") for n in peers if n != "subinterp"}
        ours_best = max(results[("cpu", "subinterp")]["per_s"])
        losses = [f"{n} {fmt(v)} tasks/s ({ours / v:.2f}x"
                  + (", below subinterp's best round" if v < ours_best else "") + ")"
                  for n, v in compared.items() if v is not None and v > ours]
        absent = [n for n, v in compared.items() if v is None] + list(skipped)
        verdict = ("NOT met" if losses else
                   "met" if not absent else "met for the peers measured")
        detail = f"loses to {', '.join(losses)}" if losses else "no peer is faster"
        lines.append(f"CPU-bound throughput >= every peer's: {verdict} (subinterp "
                     f"{fmt(ours)} tasks/s; {detail}"
                     + (f"; not measured: {', '.join(absent)}" if absent else "") + ")")
    # start-up and memory against the process pools
    for measure, key, label, unit in (("cold", "first_ms", "start-up (cold first result) "
                                       "faster than the process pools", "ms"),
                                      ("rss", "mib", "peak RSS below the process pools",
                                       "MiB")):
        ours = median_of(measure, "subinterp", key)
        if measure not in measures:
            continue
        if ours is None:
            lines.append(f"{label}: cannot judge (no subinterp figure)")
            continue
        compared = {n: median_of(measure, n, key) for n in ("process_pool", "mp_pool")}
        measured = {n: v for n, v in compared.items() if v is not None}
        if not measured:
            lines.append(f"{label}: cannot judge (no process pool figure)")
            continue
        ok = all(ours < v for v in measured.values())
        verdict = "met" if ok else "NOT met"
        if len(measured) < len(compared):
            verdict += " for the process pool measured"
        detail = ", ".join(f"{n} {fmt(v)} {unit} ({v / ours:.2f}x)"
                           for n, v in measured.items())
        others = {n: median_of(measure, n, key) for n in ("thread_pool", "interp_pool")
                  if n in peers}
        other = ", ".join(f"{n} {fmt(v)} {unit}" for n, v in others.items() if v is not None)
        lines.append(f"{label}: {verdict} (subinterp {fmt(ours)} {unit}; {detail}"
                     + (f"; for reference {other}" if other else "") + ")")
        if measure == "rss":
            ours = median_of("rss", "subinterp", "pss_mib")
            pss = {n: median_of("rss", n, "pss_mib") for n in measured}
            verdict = "below" if all(ours < v for v in pss.values()) else "NOT below"
            lines.append(f"  counted as PSS instead (pages that forked workers share counted "
                         f"once), subinterp is {verdict} the process pools: subinterp "
                         f"{fmt(ours)} MiB; "
                         + ", ".join(f"{n} {fmt(v)} MiB" for n, v in pss.items()))
    return lines


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_child(sys.argv[2:])
    else:
        sys.exit(main())
