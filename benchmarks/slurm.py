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
  c1        the IMPECCABLE-like campaign (pilotfish.workloads.campaign, 2 iterations of
            128 docking `sleep 0.5`, a 4-GPU training, 256 inference functions through a
            model server, 8 two-node GPU simulations, a selection): pilotfish (one pilot,
            dependencies resolved in the agent) against a plain driver that runs every
            task as an srun job step, stage after stage (inference as `python -c` steps,
            the model server a step of its own): makespan, and tasks started per second
            from the first start to the last. Targets (issue 18): makespan >= 30%
            shorter, throughput >= 4x.
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
from pilotfish.workloads.campaign import STAGES, Campaign, submit_campaign

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


CAMPAIGN = Campaign(iterations=2, docking=128, docking_s=0.5, training_ranks=4,
                    training_s=2.0, inference=256, inference_s=0.05, simulations=8,
                    simulation_nodes=2, simulation_ranks_per_node=2, simulation_s=2.0,
                    selection_s=0.1)


def inside_c1(tmp: str) -> dict[str, float]:
    c = CAMPAIGN
    with pf.Session(path=f"{tmp}/pilot") as session:
        _pilot(session)
        _on_every_node(session)
        start = time.perf_counter()
        stages = submit_campaign(session, c)
        work = [t for s in STAGES for t in stages[s]]
        assert session.wait(work, timeout=900)
        makespan = time.perf_counter() - start
        bad = [t.error for t in work if t.state is not pf.TaskState.DONE]
        assert not bad, bad[:3]
        starts = [dict(t.events)["RUNNING"] for t in work]
    ours = {"pilotfish makespan": makespan,
            "pilotfish tasks/s": len(work) / (max(starts) - min(starts))}
    return {**ours, **_campaign_by_srun(c)}


def _campaign_by_srun(c: Campaign) -> dict[str, float]:
    """The same campaign as job steps only, each stage once the one before ended (the
    paper's baseline), up to SLOTS steps in flight."""
    port = 19000 + time.time_ns() % 1000
    host = subprocess.run(["scontrol", "show", "hostnames"], capture_output=True, text=True,
                          check=True).stdout.split()[0]  # (of this allocation)
    node = subprocess.run(["scontrol", "-o", "show", "node", host], capture_output=True,
                          text=True, check=True).stdout
    address = node.split("NodeAddr=", 1)[1].split()[0]  # (node names need not resolve)
    server = subprocess.Popen(["srun", "-N1", "-n1", f"-w{host}", "--exact",
                               "--gpus-per-node=0", sys.executable, "-m", "http.server",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    infer = (f"import urllib.request as u, time; u.urlopen('http://{address}:{port}/', "
             f"timeout=30).read(); time.sleep({c.inference_s})")
    one = ["-N1", "-n1", "--gpus-per-node=0"]
    sim_ranks = c.simulation_nodes * c.simulation_ranks_per_node
    stages = [
        ([*one, "sleep", str(c.docking_s)], c.docking),
        (["-N1", f"-n{c.training_ranks}", f"--gpus={c.training_ranks}", "sleep",
          str(c.training_s)], 1),
        ([*one, sys.executable, "-c", infer], c.inference),
        ([f"-N{c.simulation_nodes}", f"-n{sim_ranks}",
          f"--ntasks-per-node={c.simulation_ranks_per_node}", f"--gpus={sim_ranks}",
          "sleep", str(c.simulation_s)], c.simulations),
        ([*one, sys.executable, "-c", f"import time; time.sleep({c.selection_s})"], 1)]

    def step(argv: list[str]) -> float:
        began = time.time()
        for _ in range(20):  # (the server's port may not accept yet: a step retries)
            if subprocess.run(["srun", "--exact", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0:
                return began
            time.sleep(0.1)
        raise RuntimeError(f"srun {' '.join(argv)} kept failing")

    try:
        starts: list[float] = []
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(SLOTS) as pool:
            for _ in range(c.iterations):
                for argv, n in stages:
                    starts += pool.map(step, [argv] * n)
        makespan = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(30)
    return {"srun makespan": makespan,
            "srun tasks/s": len(starts) / (max(starts) - min(starts))}


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
    "c1": (inside_c1, "s | tasks/s", lambda r: r["srun tasks/s"] and (
        r["pilotfish tasks/s"] / r["srun tasks/s"]), "x the srun driver's tasks/s"),
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
