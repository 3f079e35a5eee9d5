"""The scheduler's invariants, checked from scratch (slow: for tests and debugging).

Every core is free, held by exactly one task rank or leased by one worker; every GPU's
shares add up to one; memory adds up; each node is in the pool its owner says, in the
bucket its free room says; exclusive nodes hold only their tag's tasks; colocated tasks
are on their group's nodes.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction
from typing import Any

from .resources import ONE, Node


class SchedulerError(RuntimeError):
    """A broken invariant of the scheduler: a bug."""


def check_scheduler(s: Any) -> None:
    """Raise SchedulerError naming the first broken invariant of a `Scheduler` (which
    imports this module: its private parts are read here, so it is not imported back)."""
    alloc = s.alloc
    n = len(alloc.nodes)
    held: list[list[int]] = [[] for _ in range(n)]
    gpu_used: list[Counter[int]] = [Counter() for _ in range(n)]
    mem_used = [0] * n
    parts = [0] * n
    for uid, (slot, req) in s._slots.items():
        if len(slot.nodes) != req.shape.ranks or len(slot.cores) != req.shape.ranks:
            raise SchedulerError(f"{uid}: slot has {len(slot.nodes)} ranks, asked "
                                 f"{req.shape.ranks}")
        for index in set(slot.nodes):
            parts[index] += 1
            owner = alloc.nodes[index].owner
            if owner != req.exclusive:
                raise SchedulerError(f"{uid} (exclusive {req.exclusive!r}) on node {index} "
                                     f"owned by {owner!r}")
        if req.colocate is not None and not set(slot.nodes) <= set(alloc.groups[req.colocate]):
            raise SchedulerError(f"{uid}: off its colocate group's nodes")
        rpn = req.shape.ranks_per_node
        if rpn:
            per_node = Counter(slot.nodes)
            if sorted(per_node.values())[-1] > rpn or sum(
                    1 for c in per_node.values() if c != rpn) > 1:
                raise SchedulerError(f"{uid}: ranks per node {dict(per_node)}, asked {rpn}")
        for rank, index in enumerate(slot.nodes):
            if len(slot.cores[rank]) != req.shape.cores_per_rank:
                raise SchedulerError(f"{uid} rank {rank}: {slot.cores[rank]} cores")
            held[index].extend(slot.cores[rank])
            mem_used[index] += slot.mem
            if slot.gpus:
                if sum(share for _, share in slot.gpus[rank]) != Fraction(
                        req.shape.gpus_per_rank).limit_denominator(1024):
                    raise SchedulerError(f"{uid} rank {rank}: GPUs {slot.gpus[rank]}")
                for g, share in slot.gpus[rank]:
                    gpu_used[index][g] += share  # type: ignore[assignment]
            elif req.shape.gpus_per_rank:
                raise SchedulerError(f"{uid}: asked GPUs, got none")
    for w in s.workers:
        if (w.core is None) != (w.queued == 0):
            raise SchedulerError(f"worker {w.index}: core {w.core} with {w.queued} queued")
        if w.core is not None:
            held[w.node].append(w.core)
            parts[w.node] += 1
            if alloc.nodes[w.node].owner is not None:
                raise SchedulerError(f"worker {w.index} leases a core of an exclusive node")
    counted = Counter(w.index for w in s._pooled.values())
    if any(counted[w.index] != w.queued for w in s.workers):
        raise SchedulerError("worker queue counts disagree with dispatched tasks")
    for node in alloc.nodes:
        i = node.index
        free = [c for c in range(node.cores) if node.free >> c & 1]
        if node.free >> node.cores or len(free) != node.n_free:
            raise SchedulerError(f"node {i}: free mask {node.free:b} vs count {node.n_free}")
        if sorted(held[i] + free) != list(range(node.cores)):
            raise SchedulerError(f"node {i}: cores double-booked or lost: {sorted(held[i])}")
        for g in range(node.gpus):
            whole = bool(node.whole >> g & 1)
            free_share = ONE if whole else node.partial.get(g, Fraction(0))
            if whole and g in node.partial:
                raise SchedulerError(f"node {i} GPU {g}: whole and shared")
            if not 0 <= free_share <= ONE or free_share + gpu_used[i][g] != ONE:
                raise SchedulerError(f"node {i} GPU {g}: free {free_share}, used "
                                     f"{gpu_used[i][g]}")
        if bin(node.whole).count("1") != node.n_whole or node.whole >> node.gpus:
            raise SchedulerError(f"node {i}: whole GPU mask disagrees with its count")
        if node.mem_free + mem_used[i] != node.mem or node.mem_free < 0:
            raise SchedulerError(f"node {i}: memory free {node.mem_free}, used {mem_used[i]}")
        if node.load != parts[i]:
            raise SchedulerError(f"node {i}: load {node.load}, holds {parts[i]} parts")
        _check_indexed(s, node)
    res = s._reservation
    drained = set(res.nodes) if res else set()
    if alloc.drained != drained:
        raise SchedulerError(f"drained {sorted(alloc.drained)}, reservation {sorted(drained)}")


def _check_indexed(s: Any, node: Node) -> None:
    alloc = s.alloc
    i = node.index
    if i in alloc.lost:
        if node.pool is not None:
            raise SchedulerError(f"node {i}: lost but in a pool")
        return
    if i in alloc.drained:
        if node.pool is not None:
            raise SchedulerError(f"node {i}: drained but in a pool")
        return
    if node.owner is not None and node.empty:
        raise SchedulerError(f"node {i}: empty but still owned by {node.owner!r}")
    pool = alloc.general if node.owner is None else alloc.exclusive.get(node.owner)
    if node.pool is not pool or pool is None:
        raise SchedulerError(f"node {i}: in the wrong pool")
    key = node.n_free * pool.stride + node.n_whole
    if node.key != key or pool.buckets[key].get(i) is not node:
        raise SchedulerError(f"node {i}: in bucket {node.key}, belongs in {key}")
    if not pool.nonempty >> key & 1:
        raise SchedulerError(f"node {i}: bucket {key} not marked non-empty")
    if bool(node.partial) != (i in pool.partial):
        raise SchedulerError(f"node {i}: shared-GPU index out of date")
    for other in [alloc.general, *alloc.exclusive.values()]:
        if other is not pool and any(i in b for b in other.buckets):
            raise SchedulerError(f"node {i}: in two pools")
