"""Peer figures for the channels benchmark, measured on the same Python.

Two peers carry messages between side A, which measures, and side B:
  interp_queue  PEP 734 cross-interpreter queues between the main interpreter and a
                subinterpreter with its own GIL, side B running in a thread of the same
                process: concurrent.interpreters on 3.14+, otherwise the PyPI backport
                interpreters-pep-734 (with its low-level modules, interpreters-3-12, on
                3.12). The backport is installed into a venv cached in
                target/bench-venv-<major>.<minor>/ (see peer_venv.py) and the script
                re-executes itself with that venv's python.
  mp_queue      multiprocessing.Queue between this process and a child process, start
                method "fork" (the Linux default before 3.14, and the fastest to start).
Each peer runs in a child process of its own, so a peer that crashes or hangs loses only
its own figures.

Prints one JSON object:
  python                   version of the Python measured
  round_trips, messages    requested counts (the arguments)
  phase_budget_s           time one phase may take; a slow peer runs fewer iterations
  handoff_repeat           runs of the 64 MiB hand-off whose median is reported
  mp_start_method          multiprocessing start method of mp_queue
  interp_queue_module      implementation of the queues measured, with its version
  <peer>_pingpong_us       median round trip: A puts an int on `ping`, B gets it and puts it
                           on `pong`, A gets it (timed in A with time.perf_counter_ns)
  <peer>_pingpong_round_trips  round trips run
  <peer>_small_msgs_per_s  one-way throughput of small ints: count over the time from just
                           before A's first put to just after B's last get (B reports its
                           time.perf_counter(), one CLOCK_MONOTONIC across threads and
                           processes)
  <peer>_small_msgs        messages sent for that figure
  <peer>_kib_msgs_per_s    the same for 1 KiB bytes messages
  <peer>_kib_msgs          messages sent for that figure
  <peer>_64mib_ms          median time from just before A puts a 64 MiB bytes object to just
                           after B has got it
  <peer>_error             why a peer has no figures (the other peer is still reported)
  notes                    facts about the peers that bear on reading the figures, including
                           any count scaled down to fit the phase budget
Usage: python3 peers_channels.py [ROUND_TRIPS [MESSAGES]]   (defaults: 20000 200000)
       (each child runs `peers_channels.py --peer NAME ROUND_TRIPS MESSAGES`, which prints
       that peer's figures unprefixed)
"""
import importlib.metadata
import inspect
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import peer_venv

PEERS = ("interp_queue", "mp_queue")
DEFAULT_ROUND_TRIPS = 20000
DEFAULT_MESSAGES = 200000
MP_START_METHOD = "fork"
PHASE_BUDGET_S = 5.0
PROBE_MESSAGES = 2000
SMALL_PAYLOAD = 7
KIB_PAYLOAD = b"\x5a" * 1024
HANDOFF_BYTES = 64 << 20
HANDOFF_REPEAT = 5
PEER_TIMEOUT_S = 40
END_OF_PINGPONG = -1
SCRIPT = Path(__file__).resolve()


def serve(inbox, outbox):
    """Side B: carry out the phases that side A announces on `inbox`.

    ("pingpong",)  put each int got from inbox on outbox, until END_OF_PINGPONG arrives
    ("drain", n)   get n messages, then put the time.perf_counter() of the last get
    ("stop",)      return
    """
    while True:
        command = inbox.get()
        if command[0] == "pingpong":
            while (value := inbox.get()) != END_OF_PINGPONG:
                outbox.put(value)
        elif command[0] == "drain":
            for _ in range(command[1]):
                inbox.get()
            outbox.put(time.perf_counter())
        else:
            return


def measure_pingpong(ping, pong, round_trips):
    """Median round trip in microseconds and the number run (fewer past the phase budget)."""
    ping.put(("pingpong",))
    samples = []
    deadline = time.perf_counter_ns() + int(PHASE_BUDGET_S * 1e9)
    for value in range(round_trips):
        start = time.perf_counter_ns()
        ping.put(value)
        pong.get()
        end = time.perf_counter_ns()
        samples.append(end - start)
        if end > deadline:
            break
    ping.put(END_OF_PINGPONG)
    return statistics.median(samples) / 1e3, len(samples)


def one_way_s(ping, pong, payload, count):
    """Seconds from just before A's first put of `count` payloads to just after B's last get."""
    ping.put(("drain", count))
    start = time.perf_counter()
    for _ in range(count):
        ping.put(payload)
    return pong.get() - start


def measure_throughput(ping, pong, payload, messages):
    """Messages/s sending `payload` one way, and the count used.

    A probe run (which also warms up) sizes the measured run to fit the phase budget.
    """
    probe = min(messages, PROBE_MESSAGES)
    rate = probe / one_way_s(ping, pong, payload, probe)
    count = max(probe, min(messages, int(rate * PHASE_BUDGET_S)))
    return count / one_way_s(ping, pong, payload, count), count


def measure_handoff_ms(ping, pong):
    """Median milliseconds to hand a 64 MiB bytes object from A to B."""
    payload = b"\x5a" * HANDOFF_BYTES
    return statistics.median(
        one_way_s(ping, pong, payload, 1) for _ in range(HANDOFF_REPEAT)) * 1e3


def measure(ping, pong, round_trips, messages):
    """All figures of one peer whose side B serves `ping` and `pong`; stops side B."""
    results = {}
    results["pingpong_us"], results["pingpong_round_trips"] = measure_pingpong(
        ping, pong, round_trips)
    results["small_msgs_per_s"], results["small_msgs"] = measure_throughput(
        ping, pong, SMALL_PAYLOAD, messages)
    results["kib_msgs_per_s"], results["kib_msgs"] = measure_throughput(
        ping, pong, KIB_PAYLOAD, messages)
    results["64mib_ms"] = measure_handoff_ms(ping, pong)
    ping.put(("stop",))
    return results


def backport_requirements():
    """PyPI packages that provide PEP 734 queues on this Python (none from 3.14 on)."""
    if sys.version_info >= (3, 14):
        return []
    if sys.version_info >= (3, 13):
        return ["interpreters-pep-734"]
    return ["interpreters-pep-734", "interpreters-3-12"]


def import_interpreters():
    """The PEP 734 module, the keyword arguments for its create_queue(), and its name.

    The backport pickles every item unless a queue is created with syncobj=True, which
    passes shareable objects (ints and bytes among them) as they are, as
    concurrent.interpreters does on 3.14+; the payloads here are all shareable.
    """
    try:
        from concurrent import interpreters
    except ImportError:
        from interpreters_backport import interpreters
        version = importlib.metadata.version("interpreters-pep-734")
        return interpreters, {"syncobj": True}, f"interpreters_backport {version}"
    return interpreters, {}, f"concurrent.interpreters {sys.version.split()[0]}"


def interp_queue_notes(queue_type, queue_options):
    """Notes on the behaviour of the queue implementation that was measured."""
    notes = []
    delay = inspect.signature(queue_type.get).parameters.get("_delay")
    if delay is not None:
        notes.append(
            f"a blocking Queue.get() polls: while the queue is empty it sleeps "
            f"{delay.default * 1e3:g} ms between checks, so ping-pong measures that "
            f"sleep rather than the transfer")
    if queue_options.get("syncobj"):
        notes.append(
            "queues created with syncobj=True, so ints and bytes cross as shareable "
            "data; the backport's default (syncobj=False) pickles every item and is "
            "slower")
    return notes


def run_interp_queue(round_trips, messages):
    """Figures of PEP 734 queues between this interpreter and a subinterpreter."""
    interpreters, queue_options, module_name = import_interpreters()
    ping = interpreters.create_queue(**queue_options)
    pong = interpreters.create_queue(**queue_options)
    interp = interpreters.create()
    # A queue can only arrive in an interpreter that has imported its module.
    interp.exec(f"import {type(ping).__module__}")
    interp.prepare_main(inbox=ping, outbox=pong)
    side_b = threading.Thread(target=interp.exec, args=(
        f"import sys\n"
        f"sys.path.insert(0, {str(SCRIPT.parent)!r})\n"
        f"import {SCRIPT.stem}\n"
        f"{SCRIPT.stem}.serve(inbox, outbox)\n",))
    side_b.start()
    results = measure(ping, pong, round_trips, messages)
    side_b.join()
    interp.close()
    results["module"] = module_name
    results["notes"] = interp_queue_notes(type(ping), queue_options)
    return results


def run_mp_queue(round_trips, messages):
    """Figures of multiprocessing queues between this process and a child process."""
    context = multiprocessing.get_context(MP_START_METHOD)
    ping = context.Queue()
    pong = context.Queue()
    side_b = context.Process(target=serve, args=(ping, pong), daemon=True)
    side_b.start()
    results = measure(ping, pong, round_trips, messages)
    side_b.join()
    results["notes"] = [
        f"start method {MP_START_METHOD}; each item is pickled and a feeder thread "
        f"writes it to a pipe"]
    return results


PEER_RUNNERS = {"interp_queue": run_interp_queue, "mp_queue": run_mp_queue}


def describe_failure(returncode, stderr):
    """One line saying how a peer's child process failed."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if returncode < 0:
        failure = f"killed by {signal.Signals(-returncode).name}"
        # faulthandler lists the crashing thread's innermost frame first; importlib's
        # own frames say nothing about the cause.
        frames = [line.strip() for line in lines
                  if line.startswith("  File ") and "<frozen " not in line]
        return f"{failure} at {frames[0]}" if frames else failure
    return lines[-1] if lines else f"exit status {returncode}"


def run_peer(name, round_trips, messages):
    """Run one peer in a child process; return its figures and notes, or its error."""
    child = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", str(SCRIPT), "--peer", name,
         str(round_trips), str(messages)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
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


def scaled_down_notes(name, results, round_trips, messages):
    """Notes for the counts that a slow peer ran below the requested ones."""
    notes = []
    ran = results.get("pingpong_round_trips", round_trips)
    if ran < round_trips:
        notes.append(f"{name}: ping-pong ran {ran} of {round_trips} round trips "
                     f"(phase budget {PHASE_BUDGET_S:g} s)")
    for kind in ("small", "kib"):
        sent = results.get(f"{kind}_msgs", messages)
        if sent < messages:
            notes.append(f"{name}: {kind} throughput sent {sent} of {messages} messages "
                         f"(phase budget {PHASE_BUDGET_S:g} s)")
    return notes


def main():
    if sys.argv[1:2] == ["--peer"]:
        name, round_trips, messages = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(PEER_RUNNERS[name](round_trips, messages)))
        return

    round_trips = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_ROUND_TRIPS
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_MESSAGES
    notes = []
    requirements = backport_requirements()
    if requirements:
        try:
            peer_venv.reexec_in_venv(requirements)
        except (OSError, subprocess.CalledProcessError) as exc:
            notes.append(f"interp_queue: could not prepare the venv with "
                         f"{' '.join(requirements)}: {exc}")

    report = {
        "python": sys.version.split()[0],
        "round_trips": round_trips,
        "messages": messages,
        "phase_budget_s": PHASE_BUDGET_S,
        "handoff_repeat": HANDOFF_REPEAT,
        "mp_start_method": MP_START_METHOD,
    }
    for name in PEERS:
        results = run_peer(name, round_trips, messages)
        notes.extend(f"{name}: {note}" for note in results.pop("notes", []))
        notes.extend(scaled_down_notes(name, results, round_trips, messages))
        report.update({f"{name}_{key}": value for key, value in results.items()})
    report["notes"] = notes
    print(json.dumps(report))


if __name__ == "__main__":
    main()
