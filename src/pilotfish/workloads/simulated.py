"""Synthetic workloads for simulated pilots (`pilotfish simulate`), each of a documented shape.

Every task is `sleep N` with `duration=N`, so a workload also runs for real on the
built-in backend. GPU tasks bind `cores_per_gpu` cores to each GPU (the node's cores
divided by its GPUs: 7 on Frontier), the usual binding on GPU machines.

* `null`: single-core tasks of 0 s: pure scheduling and event-path cost.
* `sleep`: single-core tasks of a fixed duration (default 10 s).
* `hybrid`: a campaign modelled on IMPECCABLE (drug discovery: docking, ML inference,
  ML training and MD simulation stages run as one ensemble). By task count:

  =========  =====  ==========================================  ===========  ========
  stage      share  shape                                       duration     priority
  =========  =====  ==========================================  ===========  ========
  docking     88%   1 core                                      10-60 s      0
  inference    8%   1 GPU + its cores                           60-300 s     1
  training     2%   8 ranks x (1 GPU + its cores), one node     1200-2400 s  2
  simulation   2%   2, 4, 8 or 16 nodes x 8 ranks (1 GPU each)  1800-3600 s  3
  =========  =====  ==========================================  ===========  ========

  Bigger and longer tasks get higher priorities, so they start first and the short ones
  fill the gaps and the end (how such campaigns are run to keep the machine busy).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator

from ..description import TaskDescription

WORKLOADS = ("null", "sleep", "hybrid")  # (and "campaign": workloads/campaign.py)


def _sleep(seconds: float, name: str, **resources: object) -> TaskDescription:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return TaskDescription(executable="sleep", arguments=[text], duration=float(text), name=name,
                           **resources)  # type: ignore[arg-type]


def null_tasks(n: int) -> Iterator[TaskDescription]:
    task = _sleep(0, "null")
    for _ in range(n):
        yield task  # descriptions are immutable: one serves every task


def sleep_tasks(n: int, duration: float = 10.0) -> Iterator[TaskDescription]:
    task = _sleep(duration, "sleep")
    for _ in range(n):
        yield task


def hybrid_tasks(n: int, cores_per_node: int, gpus_per_node: int,
                 seed: int = 0) -> Iterator[TaskDescription]:
    """The IMPECCABLE-like mix above, shuffled in submission order."""
    if gpus_per_node < 1:
        raise ValueError("the hybrid workload needs GPUs: use a platform that has them")
    cores_per_gpu = max(1, cores_per_node // gpus_per_node)
    rng = random.Random(seed)
    per_node = gpus_per_node

    def docking() -> TaskDescription:
        return _sleep(rng.uniform(10, 60), "docking")

    def inference() -> TaskDescription:
        return _sleep(rng.uniform(60, 300), "inference", cores_per_rank=cores_per_gpu,
                      gpus_per_rank=1, priority=1)

    def training() -> TaskDescription:
        return _sleep(rng.uniform(1200, 2400), "training", ranks=per_node,
                      cores_per_rank=cores_per_gpu, gpus_per_rank=1, ranks_per_node=per_node,
                      priority=2)

    def simulation() -> TaskDescription:
        nodes = rng.choice((2, 4, 8, 16))
        return _sleep(rng.uniform(1800, 3600), f"simulation-{nodes}n", ranks=nodes * per_node,
                      cores_per_rank=cores_per_gpu, gpus_per_rank=1, ranks_per_node=per_node,
                      priority=3)

    stages: list[tuple[float, Callable[[], TaskDescription]]] = [
        (0.02, simulation), (0.02, training), (0.08, inference)]
    counts = [round(n * share) for share, _ in stages]
    kinds = [make for (_, make), count in zip(stages, counts, strict=True) for _ in range(count)]
    kinds += [docking] * (n - len(kinds))
    rng.shuffle(kinds)
    for make in kinds:
        yield make()


def with_calls(tasks: Iterator[TaskDescription]) -> Iterator[TaskDescription]:
    """Every other single-core task as a Python function of the same duration (`time.sleep`):
    for pilots whose functions go to a partition of their own (Flux + Dragon)."""
    for k, task in enumerate(tasks):
        if k % 2 and task.ranks == 1 and not task.gpus_per_rank and task.duration is not None:
            yield TaskDescription(function=time.sleep, args=(task.duration,), name=task.name,
                                  duration=task.duration, priority=task.priority)
        else:
            yield task


def workload(name: str, n: int, cores_per_node: int, gpus_per_node: int,
             duration: float = 10.0, seed: int = 0, functions: bool = False
             ) -> Iterator[TaskDescription]:
    """The workload `name`; `functions`: half its single-core tasks as functions."""
    if name == "null":
        tasks = null_tasks(n)
    elif name == "sleep":
        tasks = sleep_tasks(n, duration)
    elif name == "hybrid":
        tasks = hybrid_tasks(n, cores_per_node, gpus_per_node, seed)
    else:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    return with_calls(tasks) if functions else tasks
