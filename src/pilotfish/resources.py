"""Nodes, cores, GPUs, memory and slots: exact bookkeeping of what is free (no I/O).

A node's free cores are a bitmask (the lowest free ids are handed out first), its whole
free GPUs another; a GPU shared by fractional ranks (1/2, 1/4, ...) keeps its free share
as an exact `Fraction`, so no GPU is ever over-committed and releasing restores exactly.
`NodeIndex` buckets nodes by (free cores, whole free GPUs) with a bitmask of the
non-empty buckets, so finding a node that fits costs a few integer operations whatever
the number of nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

ONE = Fraction(1)
ZERO = Fraction(0)


class Shape:
    """What one task asks for: `ranks` x (cores, GPUs, MiB), `ranks_per_node` (0: any).

    Immutable and hashable (shapes group queues); the derived values the allocator needs
    on every decision are computed once here.
    """

    __slots__ = ("_hash", "_key", "cores_per_rank", "gpus_per_rank", "mem_per_rank", "ranks",
                 "ranks_per_node", "share", "simple", "whole_gpus")

    def __init__(self, ranks: int = 1, cores_per_rank: int = 1, gpus_per_rank: float = 0.0,
                 ranks_per_node: int = 0, mem_per_rank: int = 0) -> None:
        self.ranks, self.cores_per_rank, self.gpus_per_rank = ranks, cores_per_rank, gpus_per_rank
        self.ranks_per_node, self.mem_per_rank = ranks_per_node, mem_per_rank
        # Whole GPUs per rank (0 for none or a fraction); the share of one when a fraction.
        self.whole_gpus = int(gpus_per_rank) if gpus_per_rank >= 1 else 0
        g = gpus_per_rank
        self.share = Fraction(g).limit_denominator(1024) if 0 < g < 1 else ZERO
        # One rank that any node of the right index bucket holds: no need to look closer.
        self.simple = ranks == 1 and not mem_per_rank and not self.share
        self._key = (ranks, cores_per_rank, gpus_per_rank, ranks_per_node, mem_per_rank)
        self._hash = hash(self._key)

    @property
    def cores(self) -> int:
        return self.ranks * self.cores_per_rank

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shape) and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return "Shape(" + ", ".join(map(repr, self._key)) + ")"


@dataclass(frozen=True, slots=True)
class NodeLayout:
    """What a node looks like to the processes on it (from the platform profile)."""

    core_ids: tuple[int, ...]  # the physical id of each usable core, by core index
    gpus: int = 0
    gpu_env: str | None = "CUDA_VISIBLE_DEVICES"  # ROCR_VISIBLE_DEVICES on ROCm, ...
    first_node: int = 0  # slots count nodes from 0 within a partition; the pilot from here


class Slot(NamedTuple):
    """Where a task runs, per rank: its node, its cores there, its (GPU, share)s, its MiB."""

    nodes: tuple[int, ...]
    cores: tuple[tuple[int, ...], ...]
    gpus: tuple[tuple[tuple[int, Fraction], ...], ...] = ()
    mem: int = 0

    @property
    def node(self) -> int:
        return self.nodes[0]

    @property
    def node_set(self) -> list[int]:
        return sorted(set(self.nodes))

    def placement(self, first: int) -> list[tuple[int, list[int], list[int]]]:
        """Per node (numbered from `first`, the partition's first node on the pilot): the
        cores and GPUs the task holds there (messages.Placement)."""
        return [(first + node, cores,
                 list(dict.fromkeys(g for r in ranks for g in self.rank_gpu_ids(r))))
                for node, ranks, cores in self.parts()]

    def rank_gpu_ids(self, rank: int) -> list[int]:
        return [g for g, _ in self.gpus[rank]] if self.gpus else []

    def parts(self) -> Iterator[tuple[int, list[int], list[int]]]:
        """(node, ranks on it, all their cores) for each node of the slot, in order."""
        by_node: dict[int, tuple[list[int], list[int]]] = {}
        for rank, (node, cores) in enumerate(zip(self.nodes, self.cores, strict=True)):
            ranks, all_cores = by_node.setdefault(node, ([], []))
            ranks.append(rank)
            all_cores.extend(cores)
        for node, (ranks, all_cores) in by_node.items():
            yield node, ranks, all_cores


class Node:
    """The free cores, GPUs and memory of one node, and who may use it."""

    __slots__ = (
        "cores",
        "free",
        "gpus",
        "index",
        "key",
        "load",
        "mem",
        "mem_free",
        "n_free",
        "n_whole",
        "owner",
        "partial",
        "pool",
        "whole",
    )

    def __init__(self, index: int, cores: int, gpus: int, mem: int) -> None:
        self.index = index
        self.cores, self.gpus, self.mem = cores, gpus, mem
        self.free = (1 << cores) - 1  # bit i: core i is free
        self.n_free = cores
        self.whole = (1 << gpus) - 1  # bit g: GPU g is wholly free
        self.n_whole = gpus
        self.partial: dict[int, Fraction] = {}  # GPU -> free share, for shared GPUs
        self.mem_free = mem
        self.load = 0  # task parts and worker leases holding resources here
        self.owner: str | None = None  # an exclusive tag holding this node
        self.pool: NodeIndex | None = None  # the index it is in; None while drained
        self.key = -1  # its bucket in `pool`

    @property
    def empty(self) -> bool:
        return self.load == 0

    def share_room(self, share: Fraction) -> int:
        """How many ranks of GPU share `share` (1/k) fit on this node's GPUs now."""
        room = self.n_whole * round(1 / share)
        for free in self.partial.values():
            room += free // share
        return int(room)

    def max_ranks(self, shape: Shape) -> int:
        """How many ranks of `shape` fit here now."""
        n = self.n_free // shape.cores_per_rank
        if shape.mem_per_rank:
            n = min(n, self.mem_free // shape.mem_per_rank)
        whole = shape.whole_gpus
        if whole:
            n = min(n, self.n_whole // whole)
        elif shape.gpus_per_rank:
            n = min(n, self.share_room(shape.share))
        return n

    def fits(self, shape: Shape, ranks: int) -> bool:
        if self.n_free < ranks * shape.cores_per_rank:
            return False
        if shape.mem_per_rank and self.mem_free < ranks * shape.mem_per_rank:
            return False
        whole = shape.whole_gpus
        if whole:
            return self.n_whole >= ranks * whole
        if shape.gpus_per_rank:
            return self.share_room(shape.share) >= ranks
        return True

    def take(self, shape: Shape, ranks: int) -> tuple[list[tuple[int, ...]],
                                                      list[tuple[tuple[int, Fraction], ...]]]:
        """Take cores and GPUs for `ranks` ranks (the caller checked `fits`)."""
        m = self.free
        cpr = shape.cores_per_rank
        cores: list[tuple[int, ...]] = []
        for _ in range(ranks):
            rank: list[int] = []
            for _ in range(cpr):
                low = m & -m
                m ^= low
                rank.append(low.bit_length() - 1)
            cores.append(tuple(rank))
        self.free = m
        self.n_free -= ranks * cpr
        self.mem_free -= ranks * shape.mem_per_rank
        self.load += 1
        gpus: list[tuple[tuple[int, Fraction], ...]] = []
        whole = shape.whole_gpus
        if whole:
            w = self.whole
            for _ in range(ranks):
                rank_gpus = []
                for _ in range(whole):
                    low = w & -w
                    w ^= low
                    rank_gpus.append((low.bit_length() - 1, ONE))
                gpus.append(tuple(rank_gpus))
            self.whole = w
            self.n_whole -= ranks * whole
        elif shape.gpus_per_rank:
            share = shape.share
            for _ in range(ranks):
                gpus.append(((self._take_share(share), share),))
        return cores, gpus

    def _take_share(self, share: Fraction) -> int:
        # Best fit: the fullest shared GPU with room keeps whole GPUs whole.
        best = min((g for g, free in self.partial.items() if free >= share),
                   key=lambda g: (self.partial[g], g), default=None)
        if best is None:
            low = self.whole & -self.whole
            best = low.bit_length() - 1
            self.whole ^= low
            self.n_whole -= 1
            self.partial[best] = ONE
        left = self.partial[best] - share
        if left:
            self.partial[best] = left
        else:
            del self.partial[best]
        return best

    def give(self, cores: list[int], gpus: list[tuple[int, Fraction]], mem: int) -> None:
        """Give back one task part's cores, GPU shares and memory."""
        for c in cores:
            self.free |= 1 << c
        self.n_free += len(cores)
        self.mem_free += mem
        self.load -= 1
        for g, share in gpus:
            if share == ONE:
                self.whole |= 1 << g
                self.n_whole += 1
                continue
            free = self.partial.get(g, ZERO) + share
            if free == ONE:
                del self.partial[g]
                self.whole |= 1 << g
                self.n_whole += 1
            else:
                self.partial[g] = free

    def take_core(self) -> int:
        low = self.free & -self.free
        self.free ^= low
        self.n_free -= 1
        self.load += 1
        return low.bit_length() - 1

    def give_core(self, core: int) -> None:
        self.free |= 1 << core
        self.n_free += 1
        self.load -= 1


class NodeIndex:
    """Nodes bucketed by (free cores, whole free GPUs); a bitmask marks non-empty buckets.

    Bucket key = free_cores * (gpus + 1) + whole_free_gpus, so the lowest set bit of
    `nonempty & eligible(c, g)` is the best fit for c cores and g GPUs: the node with the
    fewest free cores that still has room, which keeps empty nodes empty for big tasks.
    """

    def __init__(self, cores: int, gpus: int) -> None:
        self.stride = gpus + 1
        self.buckets: list[dict[int, Node]] = [{} for _ in range((cores + 1) * self.stride)]
        self.nonempty = 0
        self.partial: dict[int, Node] = {}  # nodes with a shared GPU that has room
        self._eligible: dict[tuple[int, int], int] = {}
        self.size = 0

    def eligible(self, cores: int, gpus: int) -> int:
        """The mask of buckets whose nodes have at least `cores` cores and `gpus` GPUs."""
        mask = self._eligible.get((cores, gpus))
        if mask is None:
            mask = 0
            top = len(self.buckets) // self.stride
            for c in range(cores, top):
                for g in range(gpus, self.stride):
                    mask |= 1 << (c * self.stride + g)
            self._eligible[(cores, gpus)] = mask
        return mask

    def add(self, node: Node) -> None:
        key = node.n_free * self.stride + node.n_whole
        self.buckets[key][node.index] = node
        self.nonempty |= 1 << key
        node.key, node.pool = key, self
        if node.partial:
            self.partial[node.index] = node
        self.size += 1

    def remove(self, node: Node) -> None:
        bucket = self.buckets[node.key]
        del bucket[node.index]
        if not bucket:
            self.nonempty &= ~(1 << node.key)
        self.partial.pop(node.index, None)
        node.pool, node.key = None, -1
        self.size -= 1

    def update(self, node: Node) -> None:
        """Move a node whose free resources changed to its new bucket."""
        key = node.n_free * self.stride + node.n_whole
        old = node.key
        if key != old:
            bucket = self.buckets[old]
            del bucket[node.index]
            if not bucket:
                self.nonempty ^= 1 << old
            self.buckets[key][node.index] = node
            self.nonempty |= 1 << key
            node.key = key
        if node.partial:
            self.partial[node.index] = node
        elif self.partial:
            self.partial.pop(node.index, None)

    def keys(self, mask: int, descending: bool = False) -> Iterator[int]:
        """The non-empty bucket keys within `mask`, fewest free first (or most free)."""
        m = self.nonempty & mask
        if descending:
            while m:
                key = m.bit_length() - 1
                m ^= 1 << key
                yield key
        else:
            while m:
                low = m & -m
                m ^= low
                yield low.bit_length() - 1

    def count(self, mask: int) -> int:
        return sum(len(self.buckets[k]) for k in self.keys(mask))

    def bucket_cores(self, key: int) -> int:
        return key // self.stride

    def bucket_gpus(self, key: int) -> int:
        return key % self.stride
