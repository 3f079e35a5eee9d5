"""Nodes, cores, GPUs and slots: the exact bookkeeping of what is free (no I/O).

Cores are handed out lowest-index first from a per-node heap; GPUs are held as exact
fractions, so two ranks of 0.5 share one GPU and no GPU is ever over-committed.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from fractions import Fraction

ONE = Fraction(1)


@dataclass(frozen=True, slots=True)
class Shape:
    """What one task asks for: `ranks` x (`cores_per_rank` cores, `gpus_per_rank` GPUs)."""

    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: float = 0.0

    @property
    def cores(self) -> int:
        return self.ranks * self.cores_per_rank


@dataclass(frozen=True, slots=True)
class Slot:
    """Where a task runs: one node, and per rank its cores and its (GPU index, share)s."""

    node: int
    cores: tuple[tuple[int, ...], ...]
    gpus: tuple[tuple[tuple[int, Fraction], ...], ...] = ()

    def rank_gpu_ids(self, rank: int) -> list[int]:
        return [g for g, _ in self.gpus[rank]] if self.gpus else []

    @property
    def all_cores(self) -> list[int]:
        return [c for rank in self.cores for c in rank]


class NodeResources:
    """The free cores and GPU capacity of one node."""

    __slots__ = ("cores", "free_cores", "gpu_free", "gpus", "index")

    def __init__(self, index: int, cores: int, gpus: int) -> None:
        self.index = index
        self.cores = cores
        self.gpus = gpus
        self.free_cores: list[int] = list(range(cores))  # a heap
        self.gpu_free: list[Fraction] = [ONE] * gpus

    def allocate(self, shape: Shape) -> Slot | None:
        if len(self.free_cores) < shape.cores:
            return None
        plan: list[list[tuple[int, Fraction]]] | None = None
        if shape.gpus_per_rank:
            plan = self._gpu_plan(shape)
            if plan is None:
                return None
            for rank in plan:
                for g, share in rank:
                    self.gpu_free[g] -= share
        pop = heapq.heappop
        cores = tuple(
            tuple(pop(self.free_cores) for _ in range(shape.cores_per_rank))
            for _ in range(shape.ranks)
        )
        gpus = tuple(tuple(rank) for rank in plan) if plan else ()
        return Slot(self.index, cores, gpus)

    def take_core(self) -> int | None:
        """One core, for a function worker's lease."""
        return heapq.heappop(self.free_cores) if self.free_cores else None

    def give_core(self, core: int) -> None:
        heapq.heappush(self.free_cores, core)

    def release(self, slot: Slot) -> None:
        push = heapq.heappush
        for rank in slot.cores:
            for c in rank:
                push(self.free_cores, c)
        for rank_gpus in slot.gpus:
            for g, share in rank_gpus:
                self.gpu_free[g] += share

    def _gpu_plan(self, shape: Shape) -> list[list[tuple[int, Fraction]]] | None:
        """Pick GPUs for every rank without changing state, or None if they do not fit."""
        per_rank = Fraction(shape.gpus_per_rank).limit_denominator(1024)
        free = list(self.gpu_free)
        plan: list[list[tuple[int, Fraction]]] = []
        for _ in range(shape.ranks):
            if per_rank >= 1:
                whole = [g for g, f in enumerate(free) if f == ONE][: int(per_rank)]
                if len(whole) < per_rank:
                    return None
                for g in whole:
                    free[g] = Fraction(0)
                plan.append([(g, ONE) for g in whole])
            else:
                # Best fit: the fullest GPU that still has room keeps whole GPUs free.
                best = min(
                    (g for g, f in enumerate(free) if f >= per_rank),
                    key=lambda g: (free[g], g),
                    default=None,
                )
                if best is None:
                    return None
                free[best] -= per_rank
                plan.append([(best, per_rank)])
        return plan

    def can_ever_fit(self, shape: Shape) -> str | None:
        """None if an empty node of this kind could hold the shape, else the reason."""
        if shape.cores > self.cores:
            return (f"asks for {shape.cores} cores on one node ({shape.ranks} ranks x "
                    f"{shape.cores_per_rank}), a node has {self.cores}")
        if shape.gpus_per_rank:
            if self.gpus == 0:
                return f"asks for {shape.gpus_per_rank} GPUs per rank, the nodes have no GPU"
            per_rank = Fraction(shape.gpus_per_rank).limit_denominator(1024)
            if per_rank >= 1:
                need = shape.ranks * int(per_rank)
            else:
                sharing = int(1 / per_rank)
                need = -(-shape.ranks // sharing)
            if need > self.gpus:
                return (f"asks for {float(shape.ranks * per_rank):g} GPUs on one node "
                        f"({shape.ranks} ranks x {shape.gpus_per_rank:g}), a node has {self.gpus}")
        return None
