"""The Slurm cases, inside one 4-node allocation of the local cluster (64 slots):
`python benchmarks/slurm.py [--runs 3] [--quick] [CASE ...]`.

Each run of a case is one `salloc -N4 --exclusive` that runs a case of
`pilotfish.bench.cluster` inside it (the experiments `pilotfish bench paper` makes
there), which prints its figures as JSON; we print each run, the medians and the
same-run ratios, as benchmarks/run.py does. Cases:

  s1        2,000 `/bin/true`: pilotfish over the 4 nodes (node executors), pilotfish's
            srun backend (every task a job step), and a plain driver launching `srun
            --exact` job steps with up to 64 in flight (the paper's baseline). Target:
            pilotfish >= 20x the driver's tasks/s.
  s2        1,024 `sleep 1` (ideal 16 s): utilization over the execution window, the same
            three (pilotfish: its own metric; the driver: task-seconds over 64 x its span),
            and a pilot on Flux (1 and 4 instances) and on Flux + Dragon (a quarter of the
            tasks functions). Target: pilotfish >= 99%.
  f2        2,000 `/bin/true` through a pilot whose one Flux partition spans the 4 nodes
            as 1 and 4 instances (brokers one per node, started and warmed before the
            clock starts), and half of them on Flux (3 nodes, 3 instances), half no-op
            functions on Dragon (1 node), against the s1 srun driver in the same
            allocation: tasks/s.
  c1        the IMPECCABLE-like campaign at the paper's shape (`cluster.campaign_shape`:
            2 iterations of 256 docking `sleep 0.2`, a 4-GPU training of 2 s, 512
            inference functions through a model server, 8 two-node GPU simulations of
            2 s, a selection): pilotfish (one pilot, dependencies resolved in the agent)
            against a plain driver that runs every task as an srun job step, stage after
            stage (inference as `python -c` steps, the model server a step of its own):
            makespan, and tasks started per second from the first start to the last.
            Targets (issue 18): makespan >= 30% shorter, throughput >= 4x.
  startup   a pilot inside the allocation until a task has run on each of its 4 nodes
            (all node executors up). Target: < 2 s.
  batch     (outside any allocation) a batch pilot of 4 nodes from `start_pilot` to
            ACTIVE (its job submitted, started, its agent connected back), and until a
            task has run on each node. Target: ACTIVE < 3 s on the idle cluster.

MPI tasks through the launchers (s3): benchmarks/slurm_mpi.py.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable

import pilotfish as pf
from pilotfish.bench.apart import case_parser, report, result, run_apart
from pilotfish.bench.cluster import CASES as CLUSTER
from pilotfish.bench.cluster import SALLOC, on_every_node, pilot

QUICK = "--quick" in sys.argv  # (smaller runs; passed on to each run)


def inside(case: str) -> Callable[[str], dict[str, float]]:
    return lambda tmp: CLUSTER[case](tmp, QUICK)


def inside_startup(tmp: str) -> dict[str, float]:
    with pf.Session(path=tmp) as session:
        start = time.perf_counter()
        pilot(session)
        ready = time.perf_counter() - start
        on_every_node(session)
        return {"all nodes": time.perf_counter() - start, "agent": ready}


def outside_batch(tmp: str) -> dict[str, float]:
    with pf.Session(path=tmp) as session:
        start = time.perf_counter()
        batch = session.start_pilot(pf.PilotDescription(platform="slurm-local", nodes=4,
                                                        mode="batch", runtime=600))
        assert batch.wait_active(120), batch.reason
        active = time.perf_counter() - start
        on_every_node(session)
        return {"active": active, "all nodes": time.perf_counter() - start}


CASES = {
    "s1": (inside("throughput"), "tasks/s", lambda r: r["pilotfish"] / r["srun driver"],
           "x the srun driver"),
    "s2": (inside("utilization"), "% utilization", lambda r: r["pilotfish"] / r["srun driver"],
           "x the srun driver's utilization"),
    "f2": (inside("flux"), "tasks/s", lambda r: max(v for k, v in r.items() if "flux" in k)
           / r["srun driver"], "x the srun driver (best instance count)"),
    "c1": (inside("campaign"), "s | tasks/s", lambda r: r["srun tasks/s"] and (
        r["pilotfish tasks/s"] / r["srun tasks/s"]), "x the srun driver's tasks/s"),
    "startup": (inside_startup, "s", lambda r: r["all nodes"], "s until a task ran on each node"),
    "batch": (outside_batch, "s", lambda r: r["active"], "s from submission to ACTIVE"),
}


def main() -> None:
    parser = case_parser(__doc__, CASES)
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    args = parser.parse_args()
    if args.inside:
        with tempfile.TemporaryDirectory(prefix="pilotfish-bench-") as tmp:
            result(CASES[args.inside][0](tmp))
        return
    for name in args.cases or list(CASES):
        _, unit, summary, what = CASES[name]
        where = [] if name == "batch" else SALLOC
        runs = [run_apart([*where, sys.executable, __file__, "--inside", name,
                           *(["--quick"] * QUICK)], name)
                for _ in range(args.runs)]
        report(name, runs, unit, summary, what)


if __name__ == "__main__":
    main()
