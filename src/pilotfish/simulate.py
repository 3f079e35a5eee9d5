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

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .description import PilotDescription
from .metrics import Metrics, session_metrics
from .partitions import PartitionSpec
from .progress import wait_with_progress
from .session import Session
from .workloads.simulated import workload

VIAS = ("pilot", "srun")


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


def run_simulation(platform: str, nodes: int, workload_name: str, tasks: int,
                   duration: float = 10.0, seed: int = 0, sessions: str = "pilotfish-sessions",
                   progress: TextIO | bool | None = True, via: str = "pilot"
                   ) -> SimulationResult:
    """`progress`: where the progress bar goes (True: the stderr of the moment; False
    or None: nowhere). `via`: "pilot" (the agent starts tasks at once) or "srun" (each
    task a job step, through the modelled controller of backends/simulated.py)."""
    if progress is True:
        progress = sys.stderr
    elif progress is False:
        progress = None
    if via not in VIAS:
        raise ValueError(f"via is one of {', '.join(VIAS)}, not {via!r}")
    partitions = [PartitionSpec(backend="srun", name="srun")] if via == "srun" else []
    desc = PilotDescription(platform=platform, nodes=nodes, backend="simulated",
                            heartbeat_timeout=30.0, partitions=partitions)
    assert desc.cores_per_node is not None and desc.gpus_per_node is not None
    work = workload(workload_name, tasks, desc.cores_per_node, desc.gpus_per_node, duration,
                    seed)
    with Session(path=sessions) as session:
        pilot = session.start_pilot(desc)
        t0 = time.monotonic()
        # One submit: the channel sends it in back-to-back messages, so the simulated
        # clock cannot start (see backends/simulated.py) before the whole bag is in.
        session.submit(list(work), pilot=pilot)
        if progress is not None:
            wait_with_progress(session, tasks, t0, progress)
        else:
            session.wait()
        wall = time.monotonic() - t0
    return SimulationResult(session.path, tasks, wall, pilot.stats,
                            session_metrics(session.path))  # type: ignore[arg-type]
