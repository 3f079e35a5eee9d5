"""Where a task fits: exact placement over indexed nodes, with tags and drained nodes (no I/O).

Nodes live in pools (`NodeIndex`): the general pool, and one pool per `exclusive` tag
that holds nodes it claimed (a node is claimed when empty, and returns to the general
pool when it is empty again). A `colocate` group is bound to the nodes of its first
task; later tasks of the group are placed on those nodes only. Drained nodes are held
out of every pool for one waiting task (a reservation, see scheduler.py) until it fits.

How ranks spread: a single-rank task uses one node; with `ranks_per_node` each node gets
exactly that many (the last the rest); otherwise all ranks go on one node if one has
room, else over the nodes with the most room, as few as possible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from .resources import Node, NodeIndex, Shape, Slot

Plan = list[tuple[Node, int]]  # (node, ranks placed on it)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Allocator:
    def __init__(self, nodes: int, cores: int, gpus: int = 0, mem: int = 0,
                 spare: int = 0) -> None:
        self.cores, self.gpus, self.mem = cores, gpus, mem
        # `spare` nodes after the real ones: room to place on, never counted in what can
        # ever fit (a runtime that places tasks itself queues what they hold).
        self.nodes = [Node(i, cores, gpus, mem) for i in range(nodes + spare)]
        self.spare = spare
        self.general = NodeIndex(cores, gpus)
        for node in self.nodes:
            self.general.add(node)
        self.exclusive: dict[str, NodeIndex] = {}
        self.groups: dict[str, tuple[int, ...]] = {}  # colocate tag -> its nodes
        self.drained: set[int] = set()
        self.lost: set[int] = set()  # nodes that died: out of every pool for good
        # Bucket keys that nodes moved into by gaining room, since the scheduler last
        # looked: a task blocked on buckets none of these is in stays blocked.
        self.gained = 0
        self._masks: dict[Shape, int] = {}  # simple shape -> the buckets that hold it
        self.drained_gained = False  # a drained node gained room since last looked at
        self._full_key = cores * (gpus + 1) + gpus  # the bucket of empty nodes

    # ---- what can never fit -----------------------------------------------------------

    def rank_limit(self, shape: Shape) -> tuple[int, str]:
        """How many ranks of `shape` an empty node holds, and the resource that limits it."""
        limits = [(self.cores // shape.cores_per_rank,
                   f"{self.cores} cores / {shape.cores_per_rank} per rank")]
        if shape.whole_gpus:
            limits.append((self.gpus // shape.whole_gpus,
                           f"{self.gpus} GPUs / {shape.whole_gpus} per rank"))
        elif shape.gpus_per_rank:
            limits.append((self.gpus * round(1 / shape.share),
                           f"{self.gpus} GPUs / {shape.gpus_per_rank:g} per rank"))
        if shape.mem_per_rank:
            limits.append((self.mem // shape.mem_per_rank,
                           f"{self.mem} MiB / {shape.mem_per_rank} MiB per rank"))
        return min(limits)

    def never_fits(self, shape: Shape, colocate: str | None = None) -> str | None:
        """None if the pilot (or the colocate group's nodes) could ever hold it, else why."""
        if shape.cores_per_rank > self.cores:
            return f"asks for {shape.cores_per_rank} cores per rank, a node has {self.cores}"
        if shape.gpus_per_rank and not self.gpus:
            return f"asks for {shape.gpus_per_rank:g} GPUs per rank, the nodes have no GPU"
        if shape.whole_gpus > self.gpus:
            return f"asks for {shape.whole_gpus} GPUs per rank, a node has {self.gpus}"
        if shape.mem_per_rank > self.mem:
            return f"asks for {shape.mem_per_rank} MiB per rank, a node has {self.mem} MiB"
        group = self.groups.get(colocate) if colocate is not None else None
        nodes = (len(group) if group is not None else len(self.nodes) - self.spare) - len(
            self.lost.intersection(group) if group is not None else self.lost)
        where = f"colocate group {colocate!r} has" if group is not None else "there are"
        per_node, why = self.rank_limit(shape)
        if shape.ranks_per_node:
            on_one = min(shape.ranks_per_node, shape.ranks)
            if on_one > per_node:
                return (f"asks for {on_one} ranks per node, a node holds at most {per_node} "
                        f"({why})")
            need = _ceil_div(shape.ranks, shape.ranks_per_node)
            if need > nodes:
                return (f"needs {need} nodes ({shape.ranks} ranks, {shape.ranks_per_node} per "
                        f"node), {where} {nodes}")
        elif shape.ranks > per_node * nodes:
            return (f"asks for {shape.ranks} ranks, {where} {nodes} node(s) holding at most "
                    f"{per_node} each ({why})")
        return None

    def nodes_needed(self, shape: Shape) -> int:
        """The fewest nodes that can hold the task: empty ones, filled as far as it may."""
        if shape.ranks_per_node:
            return _ceil_div(shape.ranks, shape.ranks_per_node)
        return _ceil_div(shape.ranks, max(1, self.rank_limit(shape)[0]))

    # ---- placement ----------------------------------------------------------------------

    def place(self, shape: Shape, colocate: str | None = None,
              exclusive: str | None = None) -> Slot | None:
        """Place a task now, or return None if it does not fit at the moment."""
        if shape.simple and colocate is None and exclusive is None:
            # The hot path: any node in the best-fit bucket holds one such rank.
            pool = self.general
            mask = self._masks.get(shape)
            if mask is None:
                mask = self._masks[shape] = pool.eligible(shape.cores_per_rank,
                                                          shape.whole_gpus)
            m = pool.nonempty & mask
            if not m:
                return None
            old = (m & -m).bit_length() - 1
            bucket = pool.buckets[old]
            node = next(iter(bucket.values()))
            if shape.cores_per_rank == 1 and not shape.whole_gpus:
                # One core: `Node.take_core` and `NodeIndex.update`, inlined (the hottest
                # lines of a simulation of a million tasks).
                free = node.free
                low = free & -free
                node.free = free ^ low
                node.n_free -= 1
                node.load += 1
                index = node.index
                del bucket[index]
                if not bucket:
                    pool.nonempty ^= 1 << old
                key = node.key = old - pool.stride
                pool.buckets[key][index] = node
                pool.nonempty |= 1 << key
                return Slot((index,), ((low.bit_length() - 1,),))
            cores, gpus = node.take(shape, 1)
            pool.update(node)
            return Slot((node.index,), (cores[0],), (gpus[0],) if gpus else ())
        if colocate is not None:
            group = self.groups.get(colocate)
            if group is not None:
                nodes = [self.nodes[i] for i in group if i not in self.drained]
                return self._place_on(nodes, shape, exclusive)
        if exclusive is None:
            slot = self._commit(self._plan(self.general, shape), shape, None)
        else:
            slot = self._place_exclusive(shape, exclusive)
        if slot is not None and colocate is not None:
            self.groups[colocate] = tuple(slot.node_set)
        return slot

    def retry_mask(self, shape: Shape, colocate: str | None = None,
                   exclusive: str | None = None) -> int | None:
        """The buckets a node must enter (`gained`) before a task that did not fit might;
        None when the index does not tell (memory, shared GPUs, tags)."""
        if colocate is not None or exclusive is not None or not (
                shape.share == 0 and not shape.mem_per_rank):
            return None
        ranks, rpn = shape.ranks, shape.ranks_per_node
        per_node = ranks if ranks == 1 or rpn >= ranks else (rpn or 1)
        return self.general.eligible(per_node * shape.cores_per_rank,
                                     per_node * shape.whole_gpus)

    def release(self, slot: Slot) -> None:
        nodes = self.nodes
        per_rank = slot.mem
        for index, ranks, cores in slot.parts():
            node = nodes[index]
            gpus = [g for r in ranks for g in slot.gpus[r]] if slot.gpus else []
            node.give(cores, gpus, per_rank * len(ranks))
            self._changed(node)

    def release_single(self, slot: Slot) -> None:
        """`release` for a slot on one node (the common case, without the grouping)."""
        node = self.nodes[slot.nodes[0]]
        pool = node.pool
        if pool is self.general and not slot.gpus and not slot.mem and len(slot.cores[0]) == 1:
            # One core back: `Node.give_core` and `NodeIndex.update`, inlined.
            node.free |= 1 << slot.cores[0][0]
            node.n_free += 1
            node.load -= 1
            old, index = node.key, node.index
            bucket = pool.buckets[old]
            del bucket[index]
            if not bucket:
                pool.nonempty ^= 1 << old
            key = node.key = old + pool.stride
            pool.buckets[key][index] = node
            pool.nonempty |= 1 << key
            self.gained |= 1 << key
            return
        gpus = [g for rank in slot.gpus for g in rank] if slot.gpus else []
        node.give([c for rank in slot.cores for c in rank], gpus, slot.mem * len(slot.nodes))
        self._changed(node)

    def has_free_core(self) -> bool:
        """Whether a node of the general pool has a free core (from the bucket mask)."""
        return bool(self.general.nonempty & self.general.eligible(1, 0))

    def lease_core(self, index: int) -> int | None:
        """One core of node `index` for a function worker, if it is free and unclaimed."""
        node = self.nodes[index]
        if node.pool is not self.general or not node.n_free:
            return None
        core = node.take_core()
        self.general.update(node)
        return core

    def return_core(self, index: int, core: int) -> None:
        node = self.nodes[index]
        node.give_core(core)
        self._changed(node)

    # ---- reservations -------------------------------------------------------------------

    def drain(self, shape: Shape, colocate: str | None = None,
              exclusive: str | None = None) -> list[int]:
        """Hold out of every pool the nodes a waiting task will get, those with most room."""
        group = self.groups.get(colocate) if colocate is not None else None
        count = self.nodes_needed(shape)
        # Busy nodes are candidates too (draining is for waiting until they empty), but
        # not those of another exclusive tag.
        if group is not None:
            candidates = [self.nodes[i] for i in group if self.nodes[i].pool is not None]
        else:
            pools = [self.general]
            if exclusive is not None and exclusive in self.exclusive:
                pools.insert(0, self.exclusive[exclusive])
            candidates = []
            for pool in pools:  # at most `count` from each, most room first
                for key in pool.keys(pool.eligible(0, 0), descending=True):
                    candidates.extend(islice(pool.buckets[key].values(),
                                             count - len(candidates)))
                    if len(candidates) >= count:
                        break
        candidates = [n for n in candidates if n.owner in (None, exclusive)]
        if len(candidates) < count:
            return []  # too few nodes it may use now: no reservation (yet)
        candidates.sort(key=lambda n: -n.n_free)
        chosen = candidates[:count]
        for node in chosen:
            assert node.pool is not None
            node.pool.remove(node)
            self.drained.add(node.index)
        self.drained_gained = True  # they may have room already: look at once
        return [n.index for n in chosen]

    def place_drained(self, indexes: list[int], shape: Shape, colocate: str | None = None,
                      exclusive: str | None = None) -> Slot | None:
        group = self.groups.get(colocate) if colocate is not None else None
        if group is not None:  # bound while the nodes drained: only its nodes will do
            indexes = [i for i in indexes if i in group]
        indexes = [i for i in indexes if i not in self.lost]
        slot = self._place_on([self.nodes[i] for i in indexes], shape, exclusive)
        if slot is not None and colocate is not None and colocate not in self.groups:
            self.groups[colocate] = tuple(slot.node_set)
        return slot

    def undrain(self, indexes: Iterable[int]) -> None:
        for i in indexes:
            if i in self.drained:
                self.drained.discard(i)
                if i in self.lost:
                    continue
                node = self.nodes[i]
                if node.owner is not None and node.empty:
                    node.owner = None
                self._pool_of(node).add(node)
                self.gained |= 1 << node.key

    def lose(self, index: int) -> None:
        """A node that died: out of every pool for good, and no longer counted in what can
        ever fit. (What held it is released as its tasks are reported lost.)"""
        if index in self.lost:
            return
        self.lost.add(index)
        node = self.nodes[index]
        if node.pool is not None:
            node.pool.remove(node)

    # ---- internals ----------------------------------------------------------------------

    def _pool_of(self, node: Node) -> NodeIndex:
        if node.owner is None:
            return self.general
        pool = self.exclusive.get(node.owner)
        if pool is None:
            pool = self.exclusive[node.owner] = NodeIndex(self.cores, self.gpus)
        return pool

    def _changed(self, node: Node) -> None:
        """Re-index a node after a release (drained nodes stay out of the pools)."""
        pool = node.pool
        if pool is None:
            self.drained_gained = True
            return
        if node.owner is not None and node.empty:
            pool.remove(node)
            node.owner = None
            self.general.add(node)
        else:
            pool.update(node)
        self.gained |= 1 << node.key

    def _allowed(self, node: Node, exclusive: str | None) -> bool:
        if exclusive is None:
            return node.owner is None
        return node.owner == exclusive or (node.owner is None and node.empty)

    def _place_exclusive(self, shape: Shape, tag: str) -> Slot | None:
        pool = self.exclusive.get(tag)
        if pool is not None and pool.size:
            slot = self._commit(self._plan(pool, shape), shape, tag)
            if slot is not None:
                return slot
        empties = self.general.buckets[self._full_key]
        if not empties:
            return None
        claim = islice(empties.values(), self.nodes_needed(shape))
        plan = self._plan_nodes(
            [*(self._nodes_by_room(pool) if pool is not None else ()), *claim],
            shape, try_one=True)
        return self._commit(plan, shape, tag)

    def _place_on(self, nodes: list[Node], shape: Shape, exclusive: str | None) -> Slot | None:
        allowed = [n for n in nodes if self._allowed(n, exclusive)]
        allowed.sort(key=lambda n: n.n_free)  # best fit first
        return self._commit(self._plan_nodes(allowed, shape, try_one=True), shape, exclusive)

    def _nodes_by_room(self, pool: NodeIndex, descending: bool = False) -> Iterator[Node]:
        for key in pool.keys(pool.eligible(1, 0), descending):
            yield from pool.buckets[key].values()

    def _plan(self, pool: NodeIndex, shape: Shape) -> Plan | None:
        """Pick nodes from an index: best fit for one node, most room first to spread."""
        ranks, rpn = shape.ranks, shape.ranks_per_node
        if ranks == 1 or (rpn and rpn >= ranks):
            return self._plan_one(pool, shape, ranks)
        if rpn:
            return self._plan_per_node(pool, shape, rpn)
        plan = self._plan_one(pool, shape, ranks)
        return plan if plan is not None else self._plan_spread(pool, shape)

    def _index_mask(self, pool: NodeIndex, shape: Shape, ranks: int) -> int:
        cores = ranks * shape.cores_per_rank
        if shape.whole_gpus:
            return pool.eligible(cores, ranks * shape.whole_gpus)
        if shape.gpus_per_rank:  # shared GPUs: nodes with whole ones here, shared ones apart
            return pool.eligible(cores, min(pool.stride - 1,
                                            _ceil_div(ranks, round(1 / shape.share))))
        return pool.eligible(cores, 0)

    def _plan_one(self, pool: NodeIndex, shape: Shape, ranks: int) -> Plan | None:
        if shape.gpus_per_rank and not shape.whole_gpus:
            for node in pool.partial.values():
                if node.fits(shape, ranks):
                    return [(node, ranks)]
        buckets = pool.buckets
        for key in pool.keys(self._index_mask(pool, shape, ranks)):
            for node in buckets[key].values():
                if node.fits(shape, ranks):
                    return [(node, ranks)]
        return None

    def _plan_per_node(self, pool: NodeIndex, shape: Shape, rpn: int) -> Plan | None:
        need = _ceil_div(shape.ranks, rpn)
        mask = self._index_mask(pool, shape, rpn)
        if not (shape.gpus_per_rank and not shape.whole_gpus) and pool.count(mask) < need:
            return None  # not enough nodes with room, without looking at any
        candidates: Iterable[Node] = (n for k in pool.keys(mask) for n in pool.buckets[k].values())
        if shape.gpus_per_rank and not shape.whole_gpus:
            candidates = [*pool.partial.values(), *candidates]
        return self._plan_nodes(candidates, shape)

    def _plan_spread(self, pool: NodeIndex, shape: Shape) -> Plan | None:
        mask = self._index_mask(pool, shape, 1)
        if not shape.gpus_per_rank and not shape.mem_per_rank:
            cpr = shape.cores_per_rank
            room = sum(len(pool.buckets[k]) * (pool.bucket_cores(k) // cpr)
                       for k in pool.keys(mask))
            if room < shape.ranks:
                return None  # not enough room in all, without looking at any node
        candidates: Iterable[Node] = (n for k in pool.keys(mask, descending=True)
                                      for n in pool.buckets[k].values())
        if shape.gpus_per_rank and not shape.whole_gpus:
            candidates = [*pool.partial.values(), *candidates]
        return self._plan_nodes(candidates, shape)

    def _plan_nodes(self, candidates: Iterable[Node], shape: Shape,
                    try_one: bool = False) -> Plan | None:
        """Plan over nodes in order of preference, each used once."""
        ranks, rpn = shape.ranks, shape.ranks_per_node
        plan: Plan = []
        seen: set[int] = set()
        left = ranks
        if try_one and ranks > 1 and not rpn:  # all on one node if one has room, else spread
            nodes = list(candidates)
            for node in nodes:
                if node.fits(shape, ranks):
                    return [(node, ranks)]
            candidates = sorted(nodes, key=lambda n: -n.max_ranks(shape))
        for node in candidates:
            if node.index in seen:
                continue
            seen.add(node.index)
            if rpn:
                n = min(rpn, left)
                if not node.fits(shape, n):
                    continue
            else:
                n = min(node.max_ranks(shape), left)
                if not n:
                    continue
            plan.append((node, n))
            left -= n
            if not left:
                return plan
        return None

    def _commit(self, plan: Plan | None, shape: Shape, exclusive: str | None) -> Slot | None:
        """Take what a plan picked; claim empty nodes for an exclusive tag."""
        if plan is None:
            return None
        nodes: list[int] = []
        cores: list[tuple[int, ...]] = []
        gpus: list[tuple[tuple[int, object], ...]] = []
        for node, n in plan:
            if exclusive is not None and node.owner is None:
                pool = node.pool
                if pool is not None:
                    pool.remove(node)
                    node.owner = exclusive
                    self._pool_of(node).add(node)
                else:
                    node.owner = exclusive  # drained for this task: claimed when it leaves
            node_cores, node_gpus = node.take(shape, n)
            if node.pool is not None:
                node.pool.update(node)
            nodes.extend([node.index] * n)
            cores.extend(node_cores)
            gpus.extend(node_gpus)
        return Slot(tuple(nodes), tuple(cores), tuple(gpus) if gpus else (),  # type: ignore[arg-type]
                    shape.mem_per_rank)
