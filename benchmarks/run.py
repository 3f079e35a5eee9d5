"""The pilot's benchmark suite: `python benchmarks/run.py [--runs 3] [CASE ...]`.

Each case runs `--runs` times; we print the median and its ratio to a baseline measured
in the same run (the machines are shared and noisy: a same-run ratio means more than an
absolute time). Cases:

  e1       5,000 `/bin/true` tasks, 1 node x 64 virtual cores, vs a thread pool of
           `subprocess.Popen` spawning the same processes (target: ratio >= 0.70)
  e2       100,000 no-op function tasks, 1 node x 2 cores, vs
           `ProcessPoolExecutor(2).submit` (targets: >= 20,000 tasks/s, ratio >= 2)
  e3       1,024 `sleep 1` tasks, 1 node x 64 virtual cores: utilization over the
           execution window (target >= 99.5%); ratio: ideal 16 s / actual window
  chain    1,000 no-op functions, each taking the one before as its argument, on a
           1 x 2-core pilot: median ms from one's end to the next one's start, resolved
           in the agent, vs the same chain driven by the client (target: <= 2 ms)
  d1       20,000 no-op functions through a Dragon partition (1 node x 2 cores) with
           `functions="pool"`, vs the same Dragon pool driven directly by a plain
           script (target: ratio >= 0.90)
  d1-map   d1 against the same pool's `pool.map` over all 20,000 calls at once (no
           target: how far per-task tracking is from a pool's bulk path)
  d1-chunks  1,000,000 no-op calls through the same partition as `executor.map(...,
           chunksize=)` in the chunks `pool.map` makes, vs that `pool.map` (no target;
           20,000 calls take ~20 ms either way, too short to measure here)
  d1-workers  the same through the default Dragon partition (pilotfish's workers)
  h1       10,000 `/bin/true` + 50,000 no-op functions on a pilot of a built-in and a
           Dragon partition (1 node x 32 cores each), vs the same on the built-in
           partition alone (target: ratio > 1)
  h1-dragon  the h1 mix on the Dragon partition alone (slow: minutes per run); ratio:
           the hybrid's rate over it (target > 1)
  h2       its `sleep 1` variant, scaled to 640 + 1,920 tasks: utilization over the
           execution window (target >= 99%); ratio: tasks/s over the ideal 64/s
  startup  a local pilot ready for tasks (target < 1 s), vs starting `python -c pass`
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pilotfish as pf
from pilotfish.proctree import kill_group

TD = pf.TaskDescription


def noop(_: object = None) -> None:
    return None


def _session(tmp: str) -> pf.Session:
    return pf.Session(path=tmp)


def run_e1(tmp: str, n: int = 5_000) -> tuple[float, float]:
    """Tasks per second: pilotfish, and a 64-thread pool of Popen."""
    with _session(tmp) as session:
        session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=64))
        start = time.perf_counter()
        tasks = session.submit([TD(executable="/bin/true") for _ in range(n)])
        assert session.wait(timeout=600)
        ours = n / (time.perf_counter() - start)
        assert all(t.state is pf.TaskState.DONE for t in tasks)

    def spawn(_: int) -> int:
        return subprocess.Popen(["/bin/true"]).wait()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        list(pool.map(spawn, range(n)))
    baseline = n / (time.perf_counter() - start)
    return ours, baseline


def run_e2(tmp: str, n: int = 100_000) -> tuple[float, float]:
    """Tasks per second end to end (descriptions built, submitted, all results back)."""
    with _session(tmp) as session:
        session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
        session.submit(TD(function=noop)).result(timeout=60)  # workers up
        start = time.perf_counter()
        tasks = session.submit([TD(function=noop) for _ in range(n)])
        assert session.wait(timeout=600)
        ours = n / (time.perf_counter() - start)
        assert all(t.state is pf.TaskState.DONE for t in tasks)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pool.submit(noop).result()
        start = time.perf_counter()
        futures = [pool.submit(noop) for _ in range(n)]
        for f in futures:
            f.result()
        baseline = n / (time.perf_counter() - start)
    return ours, baseline


def inc(x: int) -> int:
    return x + 1


def _link_ms(chain: list[pf.Task]) -> float:
    """Median ms from one task's end (exec_stop) to the next one's start (RUNNING)."""
    events = [dict(t.events) for t in chain]
    return 1000 * statistics.median(b["RUNNING"] - a["exec_stop"]
                                    for a, b in itertools.pairwise(events))


def run_chain(tmp: str, n: int = 1_000) -> tuple[float, float]:
    """Per-link latency (ms) of a chain of `n` no-op functions, each taking the one
    before as its argument: resolved in the agent, and driven by the client (each
    submitted once the one before returned)."""
    with _session(tmp) as session:
        session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
        session.submit(TD(function=noop)).result(timeout=60)  # workers up
        gate = session.submit(TD(executable="/bin/sleep", arguments=["2"]))
        chain = [session.submit(TD(function=inc, args=(0,), after=[gate]))]
        for _ in range(n - 1):  # all submitted while the gate holds the first
            chain.append(session.submit(TD(function=inc, args=(chain[-1],))))
        assert chain[-1].result(timeout=600) == n
        ours = _link_ms(chain)
        driven = [session.submit(TD(function=inc, args=(0,)))]
        for _ in range(n - 1):
            driven.append(session.submit(TD(function=inc, args=(driven[-1].result(60),))))
        assert driven[-1].result(timeout=60) == n
        return ours, _link_ms(driven)


def run_e3(tmp: str, n: int = 1_024) -> tuple[float, float]:
    """Utilization over the execution window (%), and that window in seconds."""
    with _session(tmp) as session:
        session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=64))
        tasks = session.submit([TD(executable="/bin/sleep", arguments=["1"]) for _ in range(n)])
        assert session.wait(timeout=600)
        assert all(t.state is pf.TaskState.DONE for t in tasks)
        metrics = session.metrics()
    window = metrics.exec_window_end - metrics.exec_window_start
    return 100.0 * metrics.core_utilization, window


def run_startup(tmp: str) -> tuple[float, float]:
    """Seconds until a local pilot is ready, and seconds to start `python -c pass`."""
    with _session(tmp) as session:
        start = time.perf_counter()
        session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
        ours = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return ours, time.perf_counter() - start


def run_d1(tmp: str, n: int = 20_000, functions: str = "pool", baseline: str = "apply",
           chunked: bool = False) -> tuple[float, float]:
    """Function calls per second through a Dragon partition whose functions run in a
    Dragon pool (or `functions`), and through the same Dragon pool driven by a plain
    script (`dragon_pool.py`, in its `baseline` mode); both timed after start-up.
    `chunked`: the calls go through `executor.map` in the chunks `pool.map` makes, not
    as a task each."""
    workers = min(2, os.cpu_count() or 1)  # the pool size the partition gets here
    spec = pf.PartitionSpec(backend="dragon", functions=functions)
    with _session(tmp) as session:
        session.start_pilot(pf.PilotDescription(
            nodes=1, cores_per_node=workers, partitions=[spec]))
        session.submit(TD(function=noop)).result(timeout=120)  # the runtime is up
        chunksize = max(1, n // (4 * workers))
        if chunked:  # every pool worker has run a chunk once (the script's ran its noop)
            assert len(list(session.executor().map(noop, range(n), chunksize=chunksize))) == n
        start = time.perf_counter()
        if chunked:
            results = session.executor().map(noop, range(n), timeout=600,
                                             chunksize=chunksize)
            assert len(list(results)) == n
        else:
            tasks = session.submit([TD(function=noop) for _ in range(n)])
            assert session.wait(timeout=600)
            assert all(t.state is pf.TaskState.DONE for t in tasks)
        ours = n / (time.perf_counter() - start)
    return ours, _dragon_pool_rate(n, workers, baseline)


def _dragon_pool_rate(n: int, workers: int, mode: str) -> float:
    from pilotfish.backends.dragon.backend import SEGMENT_BYTES, launcher
    from pilotfish.backends.dragon.janitor import remove_segments, shm_entries

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dragon_pool.py")
    env = dict(os.environ, DRAGON_DEFAULT_SEG_SZ=str(SEGMENT_BYTES),
               DRAGON_INF_SEG_SZ=str(SEGMENT_BYTES))
    env["PATH"] = os.path.dirname(launcher()) + os.pathsep + env.get("PATH", "")
    shm = shm_entries()
    proc = subprocess.Popen([launcher(), "-s", script, str(n), str(workers), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, process_group=0)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        kill_group(proc.pid)
        remove_segments(proc.pid, shm)
    return float(out.split()[0])


def nap() -> None:
    time.sleep(1)


def _mix(tmp: str, partitions: list[str], n_exec: int, n_func: int, sleep: bool
         ) -> tuple[float, float]:
    """Tasks/s and core utilization (%) of a mix of executables and functions on a pilot
    of one 32-core node per partition (`partitions`: their backends; builtin alone needs
    none). `sleep`: every task sleeps 1 s, with a function worker per core."""
    specs = [pf.PartitionSpec(backend=b, nodes=1) for b in partitions]
    desc = pf.PilotDescription(nodes=len(partitions), cores_per_node=32,
                               partitions=specs if partitions != ["builtin"] else [],
                               function_workers=32 if sleep else None)
    argv = ["/bin/sleep", "1"] if sleep else ["/bin/true"]
    with _session(tmp) as session:
        session.start_pilot(desc)
        session.submit(TD(function=noop)).result(timeout=120)  # every runtime is up
        if len(partitions) > 1:  # each is named after its backend
            session.submit([TD(function=noop, partition=b) for b in partitions])
        assert session.wait(timeout=120)
        start = time.perf_counter()
        tasks = session.submit([TD(executable=argv[0], arguments=argv[1:])
                                for _ in range(n_exec)]
                               + [TD(function=nap if sleep else noop) for _ in range(n_func)])
        assert session.wait(timeout=1800)
        rate = (n_exec + n_func) / (time.perf_counter() - start)
        assert all(t.state is pf.TaskState.DONE for t in tasks)
        utilization = session.metrics().core_utilization
    return rate, 100.0 * utilization


def run_h1(tmp: str) -> tuple[float, float]:
    """Tasks/s of 10,000 executables + 50,000 functions on built-in + Dragon partitions,
    and of the same on the built-in partition alone."""
    both = _mix(tmp, ["builtin", "dragon"], 10_000, 50_000, sleep=False)[0]
    return both, _mix(tmp, ["builtin"], 10_000, 50_000, sleep=False)[0]


def run_h1_dragon(tmp: str) -> tuple[float, float]:
    """Tasks/s of the h1 mix on the Dragon partition alone, and on the hybrid pilot."""
    alone = _mix(tmp, ["dragon"], 10_000, 50_000, sleep=False)[0]
    return alone, _mix(tmp, ["builtin", "dragon"], 10_000, 50_000, sleep=False)[0]


def run_h2(tmp: str) -> tuple[float, float]:
    """Utilization (%) of 640 `sleep 1` executables + 1,920 one-second functions on
    built-in + Dragon partitions (2 x 32 cores: 40 s ideal), and its tasks/s."""
    rate, utilization = _mix(tmp, ["builtin", "dragon"], 640, 1_920, sleep=True)
    return utilization, rate


# name: (case, unit of its value, unit of its baseline, same-run ratio of value and baseline)
CASES: dict[str, tuple[Callable[[str], tuple[float, float]], str, str,
                       Callable[[float, float], float]]] = {
    "e1": (run_e1, "tasks/s", "Popen thread pool tasks/s", lambda a, b: a / b),
    "e2": (run_e2, "tasks/s", "ProcessPoolExecutor(2) tasks/s", lambda a, b: a / b),
    "e3": (run_e3, "% utilization", "s execution window (ideal 16 s)",
           lambda a, b: 16.0 / b),
    "chain": (run_chain, "ms per link", "ms per link driven by the client",
              lambda a, b: b / a),
    "d1": (run_d1, "tasks/s", "plain Dragon pool script tasks/s", lambda a, b: a / b),
    "d1-map": (lambda tmp: run_d1(tmp, baseline="map"), "tasks/s",
               "plain Dragon pool.map tasks/s", lambda a, b: a / b),
    "d1-chunks": (lambda tmp: run_d1(tmp, n=1_000_000, baseline="map", chunked=True),
                  "calls/s",
                  "plain Dragon pool.map calls/s", lambda a, b: a / b),
    "d1-workers": (lambda tmp: run_d1(tmp, functions="workers"), "tasks/s",
                   "plain Dragon pool script tasks/s", lambda a, b: a / b),
    "h1": (run_h1, "tasks/s", "tasks/s of the built-in partition alone", lambda a, b: a / b),
    "h1-dragon": (run_h1_dragon, "tasks/s", "tasks/s of the hybrid", lambda a, b: b / a),
    "h2": (run_h2, "% utilization", "tasks/s (ideal 64)", lambda a, b: b / 64),
    "startup": (run_startup, "s to ready", "s for python -c pass", lambda a, b: a / b),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of {', '.join(CASES)}")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    unknown = set(args.cases) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    args.cases = args.cases or list(CASES)
    print(f"pilotfish {pf.__version__}, python {sys.version.split()[0]}, {args.runs} runs each")
    with tempfile.TemporaryDirectory(prefix="pilotfish-bench-") as tmp:
        for name in args.cases:
            fn, unit, base_unit, ratio = CASES[name]
            ours, base = [], []
            for _ in range(args.runs):
                a, b = fn(tmp)
                ours.append(a)
                base.append(b)
                print(f"  {name}: {a:,.3f} {unit}  (baseline {b:,.3f} {base_unit})", flush=True)
            ratios = [ratio(a, b) for a, b in zip(ours, base, strict=True)]
            print(f"{name}: median {statistics.median(ours):,.3f} {unit}; baseline median "
                  f"{statistics.median(base):,.3f} {base_unit}; median same-run ratio "
                  f"{statistics.median(ratios):.2f}", flush=True)


if __name__ == "__main__":
    main()
