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
  startup  a local pilot ready for tasks (target < 1 s), vs starting `python -c pass`
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import pilotfish as pf

TD = pf.TaskDescription


def noop() -> None:
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


# name: (case, unit of its value, unit of its baseline, same-run ratio of value and baseline)
CASES: dict[str, tuple[Callable[[str], tuple[float, float]], str, str,
                       Callable[[float, float], float]]] = {
    "e1": (run_e1, "tasks/s", "Popen thread pool tasks/s", lambda a, b: a / b),
    "e2": (run_e2, "tasks/s", "ProcessPoolExecutor(2) tasks/s", lambda a, b: a / b),
    "e3": (run_e3, "% utilization", "s execution window (ideal 16 s)",
           lambda a, b: 16.0 / b),
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
