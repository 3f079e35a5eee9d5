"""The paper's experiments on a real Slurm allocation of 4 nodes (the local cluster: 16
CPUs a node, 64 slots): `python -m pilotfish.bench.cluster CASE [--quick]`, run inside
`salloc -N4 --exclusive --gpus-per-node=4`; prints its figures (`apart.result`).

Each case measures pilotfish and the paper's baseline, a plain driver that launches
every task as an `srun --exact` job step with up to 64 in flight, in the same
allocation and the same run (so their ratio means something on a shared machine):

  throughput    `/bin/true` tasks: pilotfish (node executors), its srun backend (every
                task a job step), the srun driver: tasks/s; and one step alone (s)
  utilization   `sleep 1` tasks: core utilization over the execution window, through
                the same three and through RUNTIMES (Flux + Dragon: a quarter of them
                `time.sleep(1)` functions)
  flux          `/bin/true` through RUNTIMES: a Flux partition of 1 and of 4 instances
                (one broker a node), and Flux (3 nodes) with Dragon (1 node) for half of
                them as no-op functions: tasks/s
  campaign      the IMPECCABLE-like campaign (workloads/campaign.py): pilotfish (one
                pilot, dependencies resolved in the agent; on one built-in partition,
                then on Flux, Dragon and built-in partitions routed by kind) against the
                driver running every task as a job step, stage after stage: makespan,
                tasks started per second from the first start to the last, and the
                most started in any second
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pilotfish as pf
from pilotfish.bench.apart import result
from pilotfish.metrics import compute_metrics, load, peak_rate
from pilotfish.workloads.campaign import (
    INFER,
    MODEL_SERVER,
    STAGES,
    Campaign,
    submit_campaign,
)

TD = pf.TaskDescription
SLOTS = 64  # 4 nodes x 16 CPUs
SALLOC = ["salloc", "-N4", "--exclusive", "--gpus-per-node=4"]


def pilot(session: pf.Session, backend: str = "builtin", **kw: Any) -> pf.Pilot:
    return session.start_pilot(pf.PilotDescription(platform="slurm-local", backend=backend,
                                                   **kw))


def on_every_node(session: pf.Session) -> None:
    """A task filling each node has run (so every node executor is up)."""
    run(session, [TD(executable="/bin/true", cores_per_rank=16) for _ in range(4)], 120)


def utilization(session: pf.Session, n: int) -> float:
    """The product's core utilization over the last `n` tasks: not the warm-up tasks
    that ran just before, whose start would open the window."""
    session.journal.flush()
    data = load(session.path)
    tasks = sorted(data.tasks, key=lambda t: t.id)[-n:]
    return compute_metrics(tasks, data.pilots, data.last_event).core_utilization or 0.0


def run(session: pf.Session, descriptions: list[pf.TaskDescription],
        timeout: float = 900) -> float:
    """Submit them all, wait until all are done (each DONE): seconds."""
    start = time.perf_counter()
    tasks = session.submit(descriptions)
    assert session.wait(tasks, timeout=timeout)
    bad = [t.error for t in tasks if t.state is not pf.TaskState.DONE]
    assert not bad, bad[:3]
    return time.perf_counter() - start


def srun_driver(argv: list[str], n: int) -> tuple[float, list[tuple[float, float]]]:
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


def both_backends(tmp: str, command: list[str], n: int,
                  figure: Callable[[pf.Session, float], float]) -> dict[str, float]:
    """`n` tasks of `command` through a pilot on the built-in backend (node executors),
    then the srun backend: `figure(session, seconds)` of each."""
    out = {}
    for backend, name in (("builtin", "pilotfish"), ("srun", "srun backend")):
        with pf.Session(path=f"{tmp}/{backend}") as session:
            pilot(session, backend)
            on_every_node(session)
            seconds = run(session, [TD(executable=command[0], arguments=command[1:])
                                    for _ in range(n)])
            out[name] = figure(session, seconds)
    return out


def throughput(tmp: str, quick: bool = False) -> dict[str, float]:
    """Tasks/s of each; and one step's latency alone (`STEP_LATENCY`, for the srun
    model's check: bench/paper.py)."""
    n = 500 if quick else 2_000
    out = both_backends(tmp, ["/bin/true"], n, lambda _, seconds: n / seconds)
    seconds, _ = srun_driver(["/bin/true"], n)
    alone = sorted(srun_driver(["/bin/true"], 1)[0] for _ in range(9))[4]  # (the median)
    return {**out, "srun driver": n / seconds, STEP_LATENCY: alone}


STEP_LATENCY = "srun step alone s"


def utilization_tasks(quick: bool) -> int:
    return 256 if quick else 1_024


def utilization_case(tmp: str, quick: bool = False) -> dict[str, float]:
    """Utilization of `sleep 1` tasks through each (Flux + Dragon: a quarter of them
    `time.sleep(1)` functions, on its quarter of the nodes)."""
    n = utilization_tasks(quick)

    def busy(session: pf.Session, _: float) -> float:
        return 100 * utilization(session, n)

    out = both_backends(tmp, ["/bin/sleep", "1"], n, busy)
    out |= on_runtimes(tmp, n, TD(executable="/bin/sleep", arguments=["1"]),
                       TD(function=time.sleep, args=(1.0,)), 4, busy)
    _, spans = srun_driver(["/bin/sleep", "1"], n)
    window = max(e for _, e in spans) - min(s for s, _ in spans)
    return {**out, "srun driver": 100.0 * n * 1.0 / (SLOTS * window)}


def noop() -> None:
    """A no-op function task (the Flux + Dragon case's functions)."""


def _warm(session: pf.Session, p: pf.Pilot) -> None:
    """A task in every partition (brokers and runtimes up, workers warm)."""
    run(session, [TD(function=noop, partition=part.name) if part.backend == "dragon"
                  else TD(executable="/bin/true", partition=part.name)
                  for part in p.description.layout], 120)


# A pilot on runtime partitions: Flux as 1 and 4 instances over the 4 nodes; Flux (3
# nodes, an instance each) with Dragon (1 node) for the functions
RUNTIMES = {
    "flux x1": [pf.PartitionSpec(backend="flux")],
    "flux x4": [pf.PartitionSpec(backend="flux", instances=4)],
    "flux + dragon": [pf.PartitionSpec(backend="flux", nodes=3, instances=3),
                      pf.PartitionSpec(backend="dragon", nodes=1)]}


def on_runtimes(tmp: str, n: int, executable: pf.TaskDescription,
                call: pf.TaskDescription, every: int,
                figure: Callable[[pf.Session, float], float]) -> dict[str, float]:
    """`n` tasks through each of RUNTIMES, started and warmed first (on Flux alone all
    `executable`; with Dragon every `every`th a `call`): `figure(session, seconds)` of
    each. Nothing where Flux or Dragon is missing."""
    out: dict[str, float] = {}
    if runtimes_unavailable() is not None:
        return out
    for name, partitions in RUNTIMES.items():
        with pf.Session(path=f"{tmp}/{name.replace(' ', '')}") as session:
            _warm(session, pilot(session, partitions=partitions))
            dragon = "dragon" in name
            tasks = [call if dragon and k % every == 0 else executable for k in range(n)]
            out[name] = figure(session, run(session, tasks))
    return out


def flux(tmp: str, quick: bool = False) -> dict[str, float]:
    """Tasks/s through each of RUNTIMES (Flux + Dragon: half no-op functions)."""
    n = 500 if quick else 2_000
    out = on_runtimes(tmp, n, TD(executable="/bin/true"), TD(function=noop), 2,
                      lambda _, seconds: n / seconds)
    seconds, _ = srun_driver(["/bin/true"], n)
    return {**out, "srun driver": n / seconds}


def campaign_shape(quick: bool = False) -> Campaign:
    """The campaign at the paper's shape, scaled to 64 slots: many short docking tasks
    and inference calls around a short training and 2-node simulations."""
    if quick:
        return Campaign(iterations=1, docking=128, docking_s=0.2, training_ranks=4,
                        training_s=1.0, inference=128, inference_s=0.02, simulations=4,
                        simulation_nodes=2, simulation_ranks_per_node=2, simulation_s=1.0,
                        selection_s=0.1)
    return Campaign(iterations=2, docking=256, docking_s=0.2, training_ranks=4,
                    training_s=2.0, inference=512, inference_s=0.02, simulations=8,
                    simulation_nodes=2, simulation_ranks_per_node=2, simulation_s=2.0,
                    selection_s=0.1)


# The campaign on runtime partitions, routed by kind: docking on Flux and the built-in
# backend, training and simulations (multi-rank) on Flux, inference on Dragon
PARTITIONS = [pf.PartitionSpec(backend="flux", nodes=2), pf.PartitionSpec(backend="dragon",
              nodes=1), pf.PartitionSpec(backend="builtin", nodes=1)]


def runtimes_unavailable() -> str | None:
    """Why the campaign cannot run on PARTITIONS here, or None."""
    from pilotfish.backends.dragon import unavailable as no_dragon
    from pilotfish.backends.flux import unavailable as no_flux

    return no_flux() or no_dragon()


def campaign(tmp: str, quick: bool = False, c: Campaign | None = None) -> dict[str, float]:
    """The campaign through pilotfish (one built-in partition; then Flux, Dragon and
    built-in partitions, where Flux and Dragon are here) and through the srun driver."""
    c = c or campaign_shape(quick)
    out = campaign_on(f"{tmp}/pilot", c, "pilotfish")
    if runtimes_unavailable() is None:
        out |= campaign_on(f"{tmp}/partitions", c, "partitions", partitions=PARTITIONS)
    return {**out, **campaign_by_srun(c)}


def campaign_on(path: str, c: Campaign, who: str, **pilot_kw: Any) -> dict[str, float]:
    with pf.Session(path=path) as session:
        p = pilot(session, **pilot_kw)
        if "partitions" in pilot_kw:
            _warm(session, p)  # (a task in each: runtimes up)
        else:
            on_every_node(session)
        start = time.perf_counter()
        stages = submit_campaign(session, c)
        work = [t for s in STAGES for t in stages[s]]
        assert session.wait(work, timeout=900)
        makespan = time.perf_counter() - start
        bad = [t.error for t in work if t.state is not pf.TaskState.DONE]
        assert not bad, bad[:3]
        starts = [dict(t.events)["RUNNING"] for t in work]
        for service in stages["service"]:
            service.cancel()
    return rates(who, makespan, starts)


def rates(who: str, makespan: float, starts: list[float]) -> dict[str, float]:
    """A campaign's figures: makespan, tasks started per second from the first start to
    the last, and the most started in any second."""
    return {f"{who} makespan": makespan,
            f"{who} tasks/s": len(starts) / (max(starts) - min(starts)),
            f"{who} peak tasks/s": peak_rate(starts) or 0.0}


def campaign_by_srun(c: Campaign) -> dict[str, float]:
    """The same campaign as job steps only, each stage once the one before ended (the
    paper's baseline), up to SLOTS steps in flight."""
    port = 19000 + time.time_ns() % 1000
    host = subprocess.run(["scontrol", "show", "hostnames"], capture_output=True, text=True,
                          check=True).stdout.split()[0]  # (of this allocation)
    node = subprocess.run(["scontrol", "-o", "show", "node", host], capture_output=True,
                          text=True, check=True).stdout
    address = node.split("NodeAddr=", 1)[1].split()[0]  # (node names need not resolve)
    server = subprocess.Popen(["srun", "-N1", "-n1", f"-w{host}", "--exact",
                               "--gpus-per-node=0", sys.executable, "-m", MODEL_SERVER,
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "PILOTFISH_SERVICE_MODEL": f"{address}:{port}"}  # (as pilotfish's)
    one = ["-N1", "-n1", "--gpus-per-node=0"]
    sim_ranks = c.simulation_nodes * c.simulation_ranks_per_node
    stages = [
        ([*one, "sleep", str(c.docking_s)], c.docking),
        (["-N1", f"-n{c.training_ranks}", f"--gpus={c.training_ranks}", "sleep",
          str(c.training_s)], 1),
        ([*one, sys.executable, "-c", INFER % c.inference_s], c.inference),
        ([f"-N{c.simulation_nodes}", f"-n{sim_ranks}",
          f"--ntasks-per-node={c.simulation_ranks_per_node}", f"--gpus={sim_ranks}",
          "sleep", str(c.simulation_s)], c.simulations),
        ([*one, sys.executable, "-c", f"import time; time.sleep({c.selection_s})"], 1)]

    def step(argv: list[str]) -> float:
        began = time.time()
        for _ in range(20):  # (the server's port may not accept yet: a step retries)
            if subprocess.run(["srun", "--exact", *argv], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env).returncode == 0:
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
    return rates("srun", makespan, starts)


CASES: dict[str, Callable[..., dict[str, float]]] = {
    "throughput": throughput, "utilization": utilization_case, "flux": flux,
    "campaign": campaign}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=list(CASES))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pilotfish-bench-") as tmp:
        result(CASES[args.case](tmp, args.quick))


if __name__ == "__main__":
    main()
