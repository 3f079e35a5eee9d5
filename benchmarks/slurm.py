"""The Slurm cases, inside one 4-node allocation of the local cluster (64 slots):
`python benchmarks/slurm.py [--runs 3] [CASE ...]`.

Each run of a case is one `salloc -N4 --exclusive` that runs this file again inside it
(`--inside CASE`), which prints its figures as JSON; we print each run, the medians and
the same-run ratios, as benchmarks/run.py does. Cases:

  s1        2,000 `/bin/true`: pilotfish over the 4 nodes (node executors), pilotfish's
            srun backend (every task a job step), and a plain driver launching `srun
            --exact` job steps with up to 64 in flight (the paper's baseline). Target:
            pilotfish >= 20x the driver's tasks/s.
  s2        1,024 `sleep 1` (ideal 16 s): utilization over the execution window, the same
            three (pilotfish: its own metric; the driver: task-seconds over 64 x its span).
            Target: pilotfish >= 99%.
  f2        2,000 `/bin/true` through a pilot whose one Flux partition spans the 4 nodes
            as 1, 2 and 4 instances (brokers one per node, started and warmed before the
            clock starts), against the s1 srun driver in the same allocation: tasks/s.
  startup   a pilot inside the allocation until a task has run on each of its 4 nodes
            (all node executors up). Target: < 2 s.
  batch     (outside any allocation) a batch pilot of 4 nodes from `start_pilot` to
            ACTIVE (its job submitted, started, its agent connected back), and until a
            task has run on each node. Target: ACTIVE < 3 s on the idle cluster.

MPI tasks through the launchers (s3): benchmarks/slurm_mpi.py.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from apart import case_parser, report, result, run_apart

import pilotfish as pf
from pilotfish.metrics import compute_metrics, load

TD = pf.TaskDescription
SLOTS = 64  # 4 nodes x 16 CPUs


def _pilot(session: pf.Session, backend: str = "builtin") -> pf.Pilot:
    return session.start_pilot(pf.PilotDescription(platform="slurm-local", backend=backend))


def _on_every_node(session: pf.Session) -> None:
    """A task filling each node has run (so every node executor is up)."""
    tasks = session.submit([TD(executable="/bin/true", cores_per_rank=16) for _ in range(4)])
    assert session.wait(tasks, timeout=120)
    assert all(t.state is pf.TaskState.DONE for t in tasks), [t.error for t in tasks]


def _utilization(session: pf.Session) -> float:
    """The product's core utilization over the one-core tasks only: not the warm-up
    tasks (16 cores each) that ran just before, whose start would open the window."""
    session.journal.flush()
    data = load(session.path)
    tasks = [t for t in data.tasks if t.cores == 1]
    return compute_metrics(tasks, data.pilots, data.last_event).core_utilization or 0.0


def _run(session: pf.Session, descriptions: list[pf.TaskDescription]) -> float:
    """Submit them all, wait until all are done: seconds."""
    start = time.perf_counter()
    tasks = session.submit(descriptions)
    assert session.wait(tasks, timeout=900)
    bad = [t.error for t in tasks if t.state is not pf.TaskState.DONE]
    assert not bad, bad[:3]
    return time.perf_counter() - start


def _srun_driver(argv: list[str], n: int) -> tuple[float, list[tuple[float, float]]]:
    """Run `n` job steps of `argv`, up to SLOTS at a time: seconds, and each step's
    (start, end) as the driver saw it. (`--gpus-per-node=0`: else each step would take
    the allocation's `--gpus-per-node=4` from the environment, all of its node's GPUs,
    and only 4 steps would run at once: "Requested nodes are busy".)"""
    def step(_: int) -> tuple[float, float]:
        start = time.time()
        subprocess.run(["srun", "-N1", "-n1", "--exact", "--gpus-per-node=0", *argv], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return start, time.time()

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(SLOTS) as pool:
        spans = list(pool.map(step, range(n)))
    return time.perf_counter() - t0, spans


def _both_backends(tmp: str, command: list[str], n: int,
                   figure: Callable[[pf.Session, float], float]) -> dict[str, float]:
    """`n` tasks of `command` through a pilot on the built-in backend (node executors),
    then the srun backend: `figure(session, seconds)` of each."""
    out = {}
    for backend, name in (("builtin", "pilotfish"), ("srun", "srun backend")):
        with pf.Session(path=f"{tmp}/{backend}") as session:
            _pilot(session, backend)
            _on_every_node(session)
            seconds = _run(session, [TD(executable=command[0], arguments=command[1:])
                                     for _ in range(n)])
            out[name] = figure(session, seconds)
    return out


def inside_s1(tmp: str, n: int = 2_000) -> dict[str, float]:
    out = _both_backends(tmp, ["/bin/true"], n, lambda _, seconds: n / seconds)
    seconds, _ = _srun_driver(["/bin/true"], n)
    return {**out, "srun driver": n / seconds}


def inside_s2(tmp: str, n: int = 1_024) -> dict[str, float]:
    out = _both_backends(tmp, ["/bin/sleep", "1"], n,
                         lambda session, _: 100 * _utilization(session))
    _, spans = _srun_driver(["/bin/sleep", "1"], n)
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    return {**out, "srun driver": 100.0 * n * 1.0 / (SLOTS * window)}


def inside_f2(tmp: str, n: int = 2_000) -> dict[str, float]:
    out = {}
    for k in (1, 2, 4):
        with pf.Session(path=f"{tmp}/flux{k}") as session:
            pilot = session.start_pilot(pf.PilotDescription(
                platform="slurm-local", partitions=[pf.PartitionSpec(backend="flux",
                                                                     instances=k)]))
            warm = session.submit([TD(executable="/bin/true", partition=p.name)
                                   for p in pilot.description.layout])
            assert session.wait(warm, timeout=120)
            assert all(t.state is pf.TaskState.DONE for t in warm), [t.error for t in warm]
            seconds = _run(session, [TD(executable="/bin/true") for _ in range(n)])
            out[f"flux x{k}"] = n / seconds
    seconds, _ = _srun_driver(["/bin/true"], n)
    return {**out, "srun driver": n / seconds}


def inside_startup(tmp: str) -> dict[str, float]:
    with pf.Session(path=tmp) as session:
        start = time.perf_counter()
        _pilot(session)
        ready = time.perf_counter() - start
        _on_every_node(session)
        return {"all nodes": time.perf_counter() - start, "agent": ready}


def outside_batch(tmp: str) -> dict[str, float]:
    with pf.Session(path=tmp) as session:
        start = time.perf_counter()
        pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local", nodes=4,
                                                        mode="batch", runtime=600))
        assert pilot.wait_active(120), pilot.reason
        active = time.perf_counter() - start
        _on_every_node(session)
        return {"active": active, "all nodes": time.perf_counter() - start}


CASES = {
    "s1": (inside_s1, "tasks/s", lambda r: r["pilotfish"] / r["srun driver"],
           "x the srun driver"),
    "s2": (inside_s2, "% utilization", lambda r: r["pilotfish"] / r["srun driver"],
           "x the srun driver's utilization"),
    "f2": (inside_f2, "tasks/s", lambda r: max(v for k, v in r.items() if "flux" in k)
           / r["srun driver"], "x the srun driver (best instance count)"),
    "startup": (inside_startup, "s", lambda r: r["all nodes"], "s until a task ran on each node"),
    "batch": (outside_batch, "s", lambda r: r["active"], "s from submission to ACTIVE"),
}


def main() -> None:
    parser = case_parser(__doc__, CASES)
    args = parser.parse_args()
    if args.inside:
        with tempfile.TemporaryDirectory(prefix="pilotfish-bench-") as tmp:
            result(CASES[args.inside][0](tmp))
        return
    for name in args.cases or list(CASES):
        _, unit, summary, what = CASES[name]
        where = [] if name == "batch" else ["salloc", "-N4", "--exclusive", "--gpus-per-node=4"]
        runs = [run_apart([*where, sys.executable, __file__, "--inside", name], name)
                for _ in range(args.runs)]
        report(name, runs, unit, summary, what)

if __name__ == "__main__":
    main()
