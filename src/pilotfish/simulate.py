"""`pilotfish simulate`: a workload on a simulated pilot of a real machine's shape.

The client, channel, agent, scheduler, events and journal are the real ones; only the
backend is simulated (backends/simulated.py). What it reports:

* the agent's throughput: scheduling decisions per second of agent busy time (wall
  clock, from the first submit to the last task end, less the time it sat waiting for
  the client), and end to end (tasks per wall-clock second of the whole run);
* the simulated makespan and the CPU and GPU utilization, from the session's journal
  (the same numbers `pilotfish report` shows);
* the agent's peak memory.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .backends.simulated import FLUX, SRUN
from .description import PilotDescription
from .metrics import Metrics, session_metrics
from .partitions import PartitionSpec
from .progress import wait_with_progress
from .session import Session
from .workloads.campaign import Campaign, submit_campaign
from .workloads.simulated import workload

# How tasks start (backends/simulated.py MODELS): by the pilot's agent, each an srun job
# step, each a Flux job (in `instances` instances), or Flux jobs and Dragon functions
VIAS = ("pilot", "srun", "flux", "flux+dragon")
# Whether the campaign's calls are functions each way (else `python -c` executables)
RUNS_FUNCTIONS = {"pilot": True, "srun": False, "flux": False, "flux+dragon": True}


def via_partitions(via: str, instances: int = 1, launch: tuple[float, float] | None = None
                   ) -> list[PartitionSpec]:
    """`launch`: (latency, rate) in place of the srun or Flux model's."""
    if via not in VIAS:
        raise ValueError(f"via is one of {', '.join(VIAS)}, not {via!r}")
    if via == "srun":
        return [PartitionSpec(backend="srun", name="srun", launch=launch)]
    if via == "flux":
        return [PartitionSpec(backend="flux", name="flux", instances=instances, launch=launch)]
    if via == "flux+dragon":  # (half the nodes each: executables, functions)
        return [PartitionSpec(backend="flux", name="flux", nodes=0.5, instances=instances,
                              launch=launch),
                PartitionSpec(backend="dragon", name="dragon")]
    return []


@dataclass
class SimulationResult:
    session_path: Path
    tasks: int
    wall_s: float  # first submit to the last task final, at the client
    agent: dict[str, float]  # the agent's own account (decisions, busy_s, max_rss_bytes)
    metrics: Metrics

    @property
    def decisions_per_s(self) -> float:
        return self.agent.get("decisions_per_s", 0.0)

    def lines(self) -> list[str]:
        m, a = self.metrics, self.agent
        window = m.exec_window_s or 0.0
        return [
            f"tasks                {self.tasks:,}  (done {m.n_done:,}, failed {m.n_failed:,})",
            f"agent throughput     {self.decisions_per_s:,.0f} decisions/s  "
            f"({a.get('decisions', 0):,.0f} decisions in {a.get('busy_s', 0):.2f} s busy)",
            f"end to end           {self.tasks / max(self.wall_s, 1e-9):,.0f} tasks/s  "
            f"({self.wall_s:.2f} s wall clock, client included)",
            f"simulated makespan   {m.makespan_s or 0:,.1f} s  "
            f"(execution window {window:,.1f} s)",
            f"CPU utilization      {_pct(m.core_utilization)}  (execution window; "
            f"{_pct(m.core_utilization_backlog)} while tasks waited)",
            f"GPU utilization      {_pct(m.gpu_utilization)}  (execution window; "
            f"{_pct(m.gpu_utilization_backlog)} while tasks waited)",
            f"agent peak memory    {a.get('max_rss_bytes', 0) / 2**20:,.0f} MiB",
            f"journal              pilotfish report {self.session_path}",
        ]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def via_text(via: str, instances: int = 1) -> str:
    """How `via` starts tasks, saying what is a model."""
    flux = (f"{instances} Flux instance{'s' * (instances > 1)} (modelled: "
            f"{FLUX.rate:.0f} jobs a second each, {FLUX.latency * 1000:.0f} ms each)")
    return {"pilot": "started by the pilot's agent",
            "srun": f"each an srun job step (modelled: at most {SRUN.rate:.0f} launches a "
                    f"second, {SRUN.latency * 1000:.0f} ms each)",
            "flux": f"executables as jobs of {flux}",
            "flux+dragon": f"executables as jobs of {flux}, functions on a Dragon partition's "
                           "workers (fed by the agent)"}[via]


def run_simulation(platform: str, nodes: int, workload_name: str, tasks: int,
                   duration: float = 10.0, seed: int = 0, sessions: str = "pilotfish-sessions",
                   progress: TextIO | bool | None = True, via: str = "pilot",
                   instances: int = 1, campaign: Campaign | None = None,
                   launch: tuple[float, float] | None = None) -> SimulationResult:
    """`progress`: where the progress bar goes (True: the stderr of the moment; False
    or None: nowhere). `via`: how tasks start (VIAS; through the modelled controllers
    of backends/simulated.py). The "campaign" workload is `campaign`, by default
    `Campaign.paper()` sized to the pilot (`tasks` is then its task count)."""
    if progress is True:
        progress = sys.stderr
    elif progress is False:
        progress = None
    desc = PilotDescription(platform=platform, nodes=nodes, backend="simulated",
                            heartbeat_timeout=30.0,
                            partitions=via_partitions(via, instances, launch))
    assert desc.cores_per_node is not None and desc.gpus_per_node is not None
    if workload_name == "campaign":
        campaign = campaign or Campaign.paper(nodes, desc.cores_per_node, desc.gpus_per_node)
        campaign = dataclasses.replace(campaign, functions=RUNS_FUNCTIONS[via])
        tasks = campaign.tasks
    with Session(path=sessions) as session:
        pilot = session.start_pilot(desc)
        t0 = time.monotonic()
        if campaign is not None:  # (its stages wait for their inputs in the agent)
            submit_campaign(session, campaign, pilot)
        else:  # One submit: the channel sends it in back-to-back messages, so the
            # simulated clock cannot start (backends/simulated.py) before the bag is in.
            # (With a Dragon partition, half the single-core tasks are functions.)
            session.submit(list(workload(workload_name, tasks, desc.cores_per_node,
                                         desc.gpus_per_node, duration, seed,
                                         functions=via == "flux+dragon")), pilot=pilot)
        if progress is not None:
            wait_with_progress(session, tasks, t0, progress)
        else:
            session.wait()
        wall = time.monotonic() - t0
    return SimulationResult(session.path, tasks, wall, pilot.stats,
                            session_metrics(session.path))  # type: ignore[arg-type]
