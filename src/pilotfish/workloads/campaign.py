"""An IMPECCABLE-like campaign: iterations of five dependent stages, as pilotfish tasks.

IMPECCABLE (drug discovery) iterates: dock many compounds (many short single-core
tasks), train a surrogate model on the scores (GPU ranks on one node), run inference
with it over candidates (many short Python functions, here through a model server run as
a service), simulate the best candidates (multi-node MPI with GPUs), and select what the
next iteration docks. Each stage waits for the one before (task dependencies, resolved
in the agent); iteration i + 1 docks after iteration i's selection.

`Campaign` holds the sizes and durations: the defaults are small and short, for a local
pilot or cluster (payloads sleep, and the model server is a real HTTP server);
`Campaign.paper()` takes the durations of the paper's stages, for a simulated pilot (no
process runs there: the inference stage calls no server). `submit_campaign` submits the
whole campaign at once (every stage's tasks wait for their inputs) and returns its
tasks by stage.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..description import TaskDescription
from ..messages import Service
from ..task import Task

STAGES = ("docking", "training", "inference", "simulation", "selection")


@dataclass(frozen=True)
class Campaign:
    iterations: int = 2
    docking: int = 64  # single-core tasks per iteration
    docking_s: float = 0.5
    training_ranks: int = 2  # on one node, one GPU each
    training_s: float = 2.0
    inference: int = 128  # function calls per iteration
    inference_s: float = 0.05
    simulations: int = 4  # MPI tasks per iteration
    simulation_nodes: int = 2
    simulation_ranks_per_node: int = 2  # one GPU each
    simulation_s: float = 2.0
    selection_s: float = 0.1
    model_server: bool = True  # inference calls a model server (a service task)

    @classmethod
    def paper(cls, **sizes: Any) -> Campaign:
        """Stage durations of the paper's campaign (seconds), for a simulated pilot."""
        return dataclasses.replace(cls(
            docking_s=30.0, training_s=1800.0, inference_s=5.0, simulation_s=2700.0,
            selection_s=60.0, training_ranks=8, simulation_ranks_per_node=8,
            model_server=False), **sizes)

    @property
    def tasks(self) -> int:
        """Tasks in all (the model server not counted)."""
        per = self.docking + 1 + self.inference + self.simulations + 1
        return self.iterations * per


def infer(candidate: int, seconds: float) -> float:
    """One inference call: asks the model server (when there is one), then works."""
    address = os.environ.get("PILOTFISH_SERVICE_MODEL")
    if address:
        with urllib.request.urlopen(f"http://{address}/", timeout=10) as reply:
            reply.read()
    time.sleep(seconds)
    return (candidate * 7919 % 1000) / 1000.0  # a score


def select(iteration: int, seconds: float) -> int:
    time.sleep(seconds)
    return iteration


def _sleep(seconds: float, name: str, after: Sequence[Task], **resources: Any
           ) -> TaskDescription:
    text = f"{seconds:g}"
    return TaskDescription(executable="/bin/sleep", arguments=[text], duration=seconds,
                           name=name, after=list(after), **resources)


def submit_campaign(session: Any, c: Campaign, pilot: Any = None,
                    port: int | None = None) -> dict[str, list[Task]]:
    """Submit the whole campaign (one pilot with GPUs: `pilot`, else the session's);
    returns its tasks by stage (and the model server as "service")."""
    out: dict[str, list[Task]] = {stage: [] for stage in STAGES}
    server: list[Task] = []
    if c.model_server:  # (it serves an empty directory: nothing of the session)
        port = port or 18000 + os.getpid() % 2000
        empty = tempfile.mkdtemp(prefix="model-", dir=session.path)
        server = [session.submit(TaskDescription(
            executable=sys.executable, name="model", service=Service(port=port),
            arguments=["-m", "http.server", str(port), "--directory", empty]), pilot=pilot)]
        out["service"] = server
    selected: list[Task] = []
    for i in range(c.iterations):
        docking = session.submit([_sleep(c.docking_s, f"docking-{i}", selected)
                                  for _ in range(c.docking)], pilot=pilot)
        training = session.submit(_sleep(
            c.training_s, f"training-{i}", docking, ranks=c.training_ranks,
            ranks_per_node=c.training_ranks, gpus_per_rank=1), pilot=pilot)
        inference = session.submit([TaskDescription(
            function=infer, args=(k, c.inference_s), name=f"inference-{i}",
            duration=c.inference_s, after=[training, *server]) for k in range(c.inference)],
            pilot=pilot)
        ranks = c.simulation_nodes * c.simulation_ranks_per_node
        simulation = session.submit([_sleep(
            c.simulation_s, f"simulation-{i}", inference, ranks=ranks,
            ranks_per_node=c.simulation_ranks_per_node, gpus_per_rank=1)
            for _ in range(c.simulations)], pilot=pilot)
        selection = session.submit(TaskDescription(
            function=select, args=(i, c.selection_s), name=f"selection-{i}",
            duration=c.selection_s, after=simulation), pilot=pilot)
        selected = [selection]
        for stage, tasks in zip(STAGES, (docking, [training], inference, simulation,
                                         [selection]), strict=True):
            out[stage] += tasks
    return out
