"""The demo workload of `pilotfish run`: a small hybrid mix of executables and functions."""

from __future__ import annotations

import random

from ..description import TaskDescription


def monte_carlo_pi(samples: int, seed: int) -> float:
    """A short CPU-bound Python function task."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def demo_tasks(n: int = 2000, gpus_per_node: int = 0) -> list[TaskDescription]:
    """`n` tasks: 70% Python functions, the rest executables of several shapes.

    Executables: short `sleep`s on one core, 4-rank tasks of 2 cores per rank, and (when
    the pilot has GPUs) tasks with one GPU and with half a GPU per rank.
    """
    tasks: list[TaskDescription] = []
    for i in range(n):
        kind = i % 10
        if kind < 7:
            tasks.append(TaskDescription(function=monte_carlo_pi, args=(2_000, i),
                                         name=f"pi-{i}", tags={"kind": "function"}))
        elif kind == 7:
            tasks.append(TaskDescription(executable="/bin/sleep", arguments=["0.1"],
                                         name=f"sleep-{i}", tags={"kind": "executable"}))
        elif kind == 8:
            tasks.append(TaskDescription(executable="/bin/sh", arguments=[
                "-c", 'echo "rank $PILOTFISH_RANK of $PILOTFISH_RANKS"; sleep 0.1'],
                ranks=4, cores_per_rank=2, name=f"ranks-{i}", tags={"kind": "multi-rank"}))
        elif gpus_per_node:
            tasks.append(TaskDescription(executable="/bin/sh", arguments=[
                "-c", 'echo "GPU $CUDA_VISIBLE_DEVICES"; sleep 0.1'],
                ranks=2, gpus_per_rank=0.5 if i % 20 == 9 else 1, name=f"gpu-{i}",
                tags={"kind": "gpu"}))
        else:
            tasks.append(TaskDescription(executable="/bin/true", name=f"true-{i}",
                                         tags={"kind": "executable"}))
    return tasks

