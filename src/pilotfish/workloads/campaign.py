"""An IMPECCABLE-like campaign: iterations of five dependent stages, as pilotfish tasks.

IMPECCABLE (drug discovery) iterates: dock many compounds (many short single-core
tasks), train a surrogate model on the scores (GPU ranks on one node), run inference
with it over candidates (many short Python functions, here through a model server run as
a service), simulate the best candidates (multi-node MPI with GPUs), and select what the
next iteration docks (here: the best scores, the inference calls' results passed to it
as arguments, through the agent). Each stage waits for the one before (task
dependencies, resolved in the agent); iteration i + 1 docks after iteration i's
selection.

`Campaign` holds the sizes and durations: the defaults are small and short, for a local
pilot or cluster (payloads sleep, and the model server is a real HTTP server);
`Campaign.paper()` takes the durations of the paper's stages and sizes them to a machine,
for a simulated pilot (no process runs there: the inference stage calls no server).
`pipelines` independent pipelines of `iterations` each run at once, sharing the pilot
(as IMPECCABLE runs them). With `functions=False` inference and selection are
executables (`python -c`), for backends that run no functions (srun). `submit_campaign`
submits the whole campaign at once (every stage's tasks wait for their inputs) and
returns its tasks by stage.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..description import TaskDescription
from ..messages import Service
from ..task import Task
from .payloads import infer, select

MODEL_SERVER = "pilotfish.workloads.payloads"  # run as `python -m`: the model server

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
    pipelines: int = 1  # independent pipelines of `iterations` each, run at once
    functions: bool = True  # inference and selection as functions, else executables

    @classmethod
    def paper(cls, nodes: int = 1024, cores_per_node: int = 56, gpus_per_node: int = 8,
              **sizes: Any) -> Campaign:
        """Stage durations of the paper's campaign (seconds), sized to `nodes` nodes of a
        simulated machine: each iteration docks two waves of the machine's cores, infers
        eight calls a GPU, trains on one node's GPUs and simulates on every node (4-node
        runs, a rank a GPU)."""
        cores, gpus = nodes * cores_per_node, nodes * gpus_per_node
        return dataclasses.replace(cls(
            docking=2 * cores, docking_s=30.0, training_ranks=gpus_per_node,
            training_s=1800.0, inference=8 * gpus, inference_s=5.0,
            simulations=max(1, nodes // 4), simulation_nodes=min(4, nodes),
            simulation_ranks_per_node=gpus_per_node, simulation_s=2700.0, selection_s=60.0,
            model_server=False), **sizes)

    @property
    def tasks(self) -> int:
        """Tasks in all (the model server not counted)."""
        per = self.docking + 1 + self.inference + self.simulations + 1
        return self.pipelines * self.iterations * per


def _sleep(seconds: float, name: str, after: Sequence[Task], **resources: Any
           ) -> TaskDescription:
    text = f"{seconds:g}"
    return TaskDescription(executable="/bin/sleep", arguments=[text], duration=seconds,
                           name=name, after=after, **resources)


# `infer` as a command: asks the model server (when there is one), then works
INFER = ("import os, time, urllib.request as u; a = os.environ.get('PILOTFISH_SERVICE_MODEL');"
         " a and u.urlopen(f'http://{a}/', timeout=10).read(); time.sleep(%g)")


def _call(c: Campaign, function: Any, args: tuple[Any, ...], code: str, name: str,
          seconds: float, after: Sequence[Task]) -> TaskDescription:
    """A function task, or the same work as a `python -c` executable."""
    if c.functions:
        return TaskDescription(function=function, args=args, name=name, duration=seconds,
                               after=after)
    return TaskDescription(executable=sys.executable, arguments=["-c", code], name=name,
                           duration=seconds, after=after)


def submit_campaign(session: Any, c: Campaign, pilot: Any = None,
                    port: int | None = None) -> dict[str, list[Task]]:
    """Submit the whole campaign (one pilot with GPUs: `pilot`, else the session's);
    returns its tasks by stage (and the model server as "service")."""
    out: dict[str, list[Task]] = {stage: [] for stage in STAGES}
    server: list[Task] = []
    if c.model_server:
        port = port or 18000 + os.getpid() % 2000
        server = [session.submit(TaskDescription(
            executable=sys.executable, name="model", service=Service(port=port),
            arguments=["-m", MODEL_SERVER, str(port)]), pilot=pilot)]
        out["service"] = server
    for p in range(c.pipelines):
        _submit_pipeline(session, c, pilot, server, p, out)
    return out


def _submit_pipeline(session: Any, c: Campaign, pilot: Any, server: list[Task], p: int,
                     out: dict[str, list[Task]]) -> None:
    # Each stage's tasks share one tuple of inputs (a description keeps it as it is: no
    # copy a task, which for 256 simulations after 65,536 calls was 16.7M references).
    selected: tuple[Task, ...] = ()
    for i in range(c.iterations):
        at = f"{p}.{i}"  # (a stage's tasks are named STAGE-PIPELINE.ITERATION)
        docking = session.submit([_sleep(c.docking_s, f"docking-{at}", selected)
                                  for _ in range(c.docking)], pilot=pilot)
        training = session.submit(_sleep(
            c.training_s, f"training-{at}", tuple(docking), ranks=c.training_ranks,
            ranks_per_node=c.training_ranks, gpus_per_rank=1), pilot=pilot)
        gate = (training, *server)
        inference = session.submit([_call(
            c, infer, (k, c.inference_s), INFER % c.inference_s, f"inference-{at}",
            c.inference_s, gate) for k in range(c.inference)], pilot=pilot)
        ranks = c.simulation_nodes * c.simulation_ranks_per_node
        inferred = tuple(inference)
        simulation = session.submit([_sleep(
            c.simulation_s, f"simulation-{at}", inferred, ranks=ranks,
            ranks_per_node=c.simulation_ranks_per_node, gpus_per_rank=1)
            for _ in range(c.simulations)], pilot=pilot)
        selection = session.submit(_call(  # (the inference results as its arguments)
            c, select, (i, c.selection_s, c.simulations, *inference),
            f"import time; time.sleep({c.selection_s:g})", f"selection-{at}",
            c.selection_s, tuple(simulation)), pilot=pilot)
        selected = (selection,)
        for stage, tasks in zip(STAGES, (docking, [training], inference, simulation,
                                         [selection]), strict=True):
            out[stage] += tasks
