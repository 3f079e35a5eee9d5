"""Simulated Frontier-sized pilots: `python benchmarks/simulate.py [--runs 3] [CASE ...]`.

The whole pilot (client, agent, scheduler, events, journal) is real; the backend is the
simulated one (tasks take their duration on a virtual clock). Each case runs `--runs`
times; we print medians and the ratio to a baseline measured in the same run.

  null    1,000,000 single-core 0 s tasks on 9,408 Frontier nodes: agent scheduling
          decisions per second of agent busy time (target >= 50,000).
  hybrid  200,000 IMPECCABLE-like tasks on 9,408 Frontier nodes: decisions/s (target
          >= 10,000) and CPU/GPU utilization while tasks waited (target > 99%).
  memory  1,000,000 `sleep 3600` tasks in flight on 9,408 Frontier nodes: the agent's
          peak resident memory (target < 4 GiB).

Baselines: for null and hybrid, the scheduler alone (the same `Scheduler` fed the same
tasks by a bare event loop on a virtual clock: no agent, no messages), so the ratio is
the share of the scheduler's own speed the whole agent keeps. For memory, a bare Python
process holding the same 1,000,000 decoded task specs: the floor any agent pays.
"""

from __future__ import annotations

import argparse
import heapq
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pilotfish as pf
from pilotfish.resources import Shape
from pilotfish.scheduler import Launch, Request, Scheduler
from pilotfish.simulate import run_simulation
from pilotfish.workloads.simulated import workload

NODES = 9408


def scheduler_alone(name: str, n: int) -> float:
    """Decisions per second of the bare scheduler on the same workload (a virtual clock)."""
    desc = pf.PilotDescription(platform="frontier", nodes=NODES, backend="simulated")
    assert desc.cores_per_node is not None and desc.gpus_per_node is not None
    sched = Scheduler(NODES, desc.cores_per_node, desc.gpus_per_node, 1, desc.mem_per_node)
    shapes: dict[tuple[Any, ...], Shape] = {}
    requests, durations = [], {}
    for i, d in enumerate(workload(name, n, desc.cores_per_node, desc.gpus_per_node)):
        key = (d.ranks, d.cores_per_rank, d.gpus_per_rank, d.ranks_per_node or 0, d.mem_per_rank)
        shape = shapes.get(key) or shapes.setdefault(key, Shape(*key))
        requests.append(Request(f"task.{i:06d}", i, shape, d.priority))
        durations[requests[-1].uid] = d.duration or 0.0
    start = time.perf_counter()
    ends: list[tuple[float, str]] = []
    now, decisions = 0.0, 0
    actions = sched.submit(requests, now)
    while True:
        for a in actions:
            decisions += 1
            if type(a) is Launch:
                heapq.heappush(ends, (now + durations[a.uid], a.uid))
        if not ends:
            break
        now = ends[0][0]
        done = []
        while ends and ends[0][0] <= now:
            _, uid = heapq.heappop(ends)
            done.append((uid, durations[uid]))
        actions = sched.completed(done, now)
    return decisions / (time.perf_counter() - start)


def run_null(tmp: str, n: int = 1_000_000) -> dict[str, float]:
    result = run_simulation("frontier", NODES, "null", n, sessions=tmp, progress=None)
    assert result.metrics.n_done == n
    return {"decisions/s": result.decisions_per_s, "baseline": scheduler_alone("null", n)}


def run_hybrid(tmp: str, n: int = 200_000) -> dict[str, float]:
    result = run_simulation("frontier", NODES, "hybrid", n, sessions=tmp, progress=None)
    m = result.metrics
    assert m.n_done == n
    return {"decisions/s": result.decisions_per_s,
            "cpu util waiting %": 100 * (m.core_utilization_backlog or 0),
            "gpu util waiting %": 100 * (m.gpu_utilization_backlog or 0),
            "cpu util window %": 100 * (m.core_utilization or 0),
            "gpu util window %": 100 * (m.gpu_utilization or 0),
            "makespan s": m.makespan_s or 0.0,
            "baseline": scheduler_alone("hybrid", n)}


_FLOOR = """
import resource, msgspec
from pilotfish import messages as m
specs = [m.TaskSpec(f"task.{i:06d}", "executable", "sleep", ["3600"], duration=3600.0)
         for i in range({n})]
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def run_memory(tmp: str, n: int = 1_000_000) -> dict[str, float]:
    """Peak agent memory with all n tasks in flight (the pilot stops before any ends)."""
    desc = pf.PilotDescription(platform="frontier", nodes=NODES, backend="simulated",
                               heartbeat_timeout=30.0)
    work = workload("sleep", n, 56, 8, duration=3600.0)
    with pf.Session(path=tmp) as session:
        pilot = session.start_pilot(desc)
        tasks = session.submit(list(work), pilot=pilot)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:  # every task accepted: all n are in flight
            if sum(1 for t in tasks if t.state is not pf.TaskState.NEW) == n:
                break
            session.wait(timeout=1.0)
    floor = subprocess.run([sys.executable, "-c", _FLOOR.replace("{n}", str(n))],
                           capture_output=True, text=True, check=True)
    return {"agent MiB": pilot.stats["max_rss_bytes"] / 2**20,
            "baseline": int(floor.stdout) / 2**20}


CASES: dict[str, tuple[Callable[[str], dict[str, float]], str, str]] = {
    "null": (run_null, "decisions/s", "scheduler alone decisions/s"),
    "hybrid": (run_hybrid, "decisions/s", "scheduler alone decisions/s"),
    "memory": (run_memory, "agent MiB", "MiB of bare task specs"),
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
    print(f"pilotfish {pf.__version__}, python {sys.version.split()[0]}, {args.runs} runs each")
    for name in args.cases or list(CASES):
        fn, unit, base_unit = CASES[name]
        runs: list[dict[str, float]] = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="pilotfish-sim-") as tmp:
                result = fn(tmp)
            runs.append(result)
            print("  " + name + ": " + ", ".join(f"{k} {v:,.2f}" for k, v in result.items()),
                  flush=True)
        medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        ratio = statistics.median(r[unit] / r["baseline"] for r in runs)
        print(f"{name}: median " + ", ".join(f"{k} {v:,.2f}" for k, v in medians.items())
              + f"; median same-run ratio to {base_unit}: {ratio:.2f}", flush=True)
    print(f"(benchmark process peak memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:,.0f} MiB)")


if __name__ == "__main__":
    main()
