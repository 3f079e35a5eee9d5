"""Properties of the scheduler over random event sequences (hypothesis).

The test keeps its own model of who holds which core, GPU share and MiB of every node,
built only from the actions the scheduler returns, and checks them against the rules
independently of `Scheduler.validate()` (which is also called after every step):
nothing is given twice or beyond capacity, ranks follow `ranks_per_node`, tags are
obeyed, groups stay first come first served, only tasks that can never fit fail, no
task waits while it would fit (unless nodes are drained for a reservation), and
completing everything leaves the pilot as it started.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilotfish.resources import Shape
from pilotfish.scheduler import (
    MAX_PREFETCH,
    Action,
    Dequeued,
    Dispatch,
    Fail,
    Launch,
    Request,
    Scheduler,
)

GPU_SHARES = [0.0, 0.25, 0.5, 1.0, 2.0]
MEMS = [0, 512, 2048]
TAGS: list[tuple[str | None, str | None]] = [
    (None, None), (None, None), (None, None),  # mostly untagged
    ("a", None), ("b", None), (None, "x"), (None, "y"), ("a", "x")]
RESERVE_AFTER = 10.0


@dataclass
class Pilot:
    nodes: int
    cores: int
    gpus: int
    mem: int
    workers: int


def rank_limit(shape: Shape, p: Pilot) -> int:
    """Ranks of `shape` an empty node holds, worked out independently."""
    n = p.cores // shape.cores_per_rank
    g = Fraction(shape.gpus_per_rank)
    if g >= 1:
        n = min(n, p.gpus // int(g))
    elif g > 0:
        n = min(n, p.gpus * int(1 / g))
    if shape.mem_per_rank:
        n = min(n, p.mem // shape.mem_per_rank)
    return n


def never_fits(shape: Shape, p: Pilot, nodes: int) -> bool:
    per_node = rank_limit(shape, p)
    if per_node == 0:
        return True
    if shape.ranks_per_node:
        return (min(shape.ranks_per_node, shape.ranks) > per_node
                or math.ceil(shape.ranks / shape.ranks_per_node) > nodes)
    return shape.ranks > per_node * nodes


@dataclass
class Model:
    p: Pilot
    requests: dict[str, Request] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # queued placed done failed dequeued
    outcomes: Counter[str] = field(default_factory=Counter)
    entries: Counter[str] = field(default_factory=Counter)
    requeued: set[str] = field(default_factory=set)
    core_owner: dict[tuple[int, int], str] = field(default_factory=dict)
    gpu_used: dict[tuple[int, int], Fraction] = field(default_factory=dict)
    mem_used: Counter[int] = field(default_factory=Counter)
    on_node: dict[int, Counter[str]] = field(default_factory=dict)  # node -> uids' parts
    placement: dict[str, Action] = field(default_factory=dict)
    groups: dict[str, set[int]] = field(default_factory=dict)  # colocate tag -> its nodes
    worker_core: dict[int, tuple[int, int]] = field(default_factory=dict)
    worker_tasks: dict[int, set[str]] = field(default_factory=dict)

    def of(self, status: str) -> list[str]:
        return sorted(u for u, s in self.status.items() if s == status)

    def exclusive_on(self, node: int) -> set[str | None]:
        """The exclusive tags (None: untagged or a worker lease) of what holds the node."""
        tags: set[str | None] = {self.requests[u].exclusive
                                 for u in self.on_node.get(node, Counter())}
        if any(n == node for n, _ in self.worker_core.values()):
            tags.add(None)
        return tags

    # ---- the actions, checked one by one ----------------------------------------------

    def apply(self, actions: list[Action], drained: set[int], *,
              failable: set[str] = frozenset(), cancelable: set[str] = frozenset()) -> None:
        for a in actions:
            assert self.status.get(a.uid) == "queued", f"{a} for a task that is {self.status}"
            self.outcomes[a.uid] += 1
            if isinstance(a, Launch):
                self._launch(a, drained)
            elif isinstance(a, Dispatch):
                assert a.node not in drained, f"{a}: a lease on a drained node"
                self._dispatch(a)
            elif isinstance(a, Fail):
                req = self.requests[a.uid]
                group = self.groups.get(req.colocate) if req.colocate else None
                if group is None:
                    assert a.uid in failable, f"{a} outside the submit of that task"
                    assert never_fits(req.shape, self.p, self.p.nodes), a
                else:
                    assert never_fits(req.shape, self.p, len(group)), a
                assert "can never fit" in a.reason
                self.status[a.uid] = "failed"
            else:
                assert isinstance(a, Dequeued)
                assert a.uid in cancelable, f"{a} was not asked for"
                self.status[a.uid] = "dequeued"

    def _check_fifo(self, uid: str) -> None:
        req = self.requests[uid]
        if uid in self.requeued:
            return
        key = (req.priority, req.pooled, req.shape, req.colocate, req.exclusive)
        for other in self.of("queued"):
            o = self.requests[other]
            if other != uid and (o.priority, o.pooled, o.shape, o.colocate, o.exclusive) == key:
                assert other in self.requeued or o.seq > req.seq, f"{uid} overtook {other}"

    def _launch(self, a: Launch, drained: set[int]) -> None:
        req = self.requests[a.uid]
        shape, slot = req.shape, a.slot
        assert not req.pooled
        assert len(slot.nodes) == len(slot.cores) == shape.ranks
        per_node = Counter(slot.nodes)
        if shape.ranks == 1:
            assert len(per_node) == 1
        if shape.ranks_per_node:
            counts = sorted(per_node.values())
            assert counts[-1] <= shape.ranks_per_node, a
            assert sum(1 for c in counts if c != shape.ranks_per_node) <= 1, a
            assert len(per_node) == math.ceil(shape.ranks / shape.ranks_per_node), a
        for node in per_node:
            assert 0 <= node < self.p.nodes
            assert node not in drained or (a.uid == self._reserved), f"{a}: on drained {node}"
            tags = self.exclusive_on(node)
            if req.exclusive is None:
                assert tags <= {None}, f"{a}: untagged on a node held by {tags}"
            else:
                assert tags <= {req.exclusive}, f"{a}: {req.exclusive} on a node held by {tags}"
        if req.colocate is not None:
            group = self.groups.setdefault(req.colocate, set(per_node))
            assert set(per_node) <= group, f"{a}: off its group's nodes {group}"
        for rank, node in enumerate(slot.nodes):
            assert len(slot.cores[rank]) == shape.cores_per_rank
            for c in slot.cores[rank]:
                assert 0 <= c < self.p.cores
                assert (node, c) not in self.core_owner, f"core {c} given twice: {a}"
                self.core_owner[node, c] = a.uid
            self.mem_used[node] += shape.mem_per_rank
            assert self.mem_used[node] <= self.p.mem, f"memory over-committed: {a}"
        per_rank = Fraction(shape.gpus_per_rank)
        if per_rank == 0:
            assert slot.gpus == ()
        else:
            assert len(slot.gpus) == shape.ranks
            for rank, gpus in enumerate(slot.gpus):
                ids = [g for g, _ in gpus]
                assert len(ids) == len(set(ids))
                assert sum(share for _, share in gpus) == per_rank
                for g, share in gpus:
                    assert 0 <= g < self.p.gpus and share > 0
                    key = (slot.nodes[rank], g)
                    self.gpu_used[key] = self.gpu_used.get(key, Fraction(0)) + share
                    assert self.gpu_used[key] <= 1, f"GPU {g} over-committed: {a}"
        for node in per_node:
            self.on_node.setdefault(node, Counter())[a.uid] += 1
        self._check_fifo(a.uid)
        self.status[a.uid] = "placed"
        self.placement[a.uid] = a

    _reserved: str | None = None

    def _dispatch(self, a: Dispatch) -> None:
        req = self.requests[a.uid]
        assert req.pooled
        w = self.p.workers
        assert 0 <= a.worker < self.p.nodes * w and a.node == a.worker // w
        tasks = self.worker_tasks.setdefault(a.worker, set())
        if a.worker in self.worker_core:
            assert self.worker_core[a.worker] == (a.node, a.core)
        else:
            assert not tasks
            assert (a.node, a.core) not in self.core_owner, f"leased a held core: {a}"
            assert self.exclusive_on(a.node) <= {None}, f"{a}: lease on an exclusive node"
            self.core_owner[a.node, a.core] = f"worker {a.worker}"
            self.worker_core[a.worker] = (a.node, a.core)
        tasks.add(a.uid)
        assert len(tasks) <= MAX_PREFETCH
        self._check_fifo(a.uid)
        self.status[a.uid] = "placed"
        self.placement[a.uid] = a

    def release(self, uid: str) -> None:
        a = self.placement.pop(uid)
        if isinstance(a, Launch):
            slot = a.slot
            for rank, node in enumerate(slot.nodes):
                for c in slot.cores[rank]:
                    assert self.core_owner.pop((node, c)) == uid
                self.mem_used[node] -= self.requests[uid].shape.mem_per_rank
                for g, share in slot.gpus[rank] if slot.gpus else ():
                    self.gpu_used[node, g] -= share
            for node in set(slot.nodes):
                del self.on_node[node][uid]
        else:
            assert isinstance(a, Dispatch)
            tasks = self.worker_tasks[a.worker]
            tasks.remove(uid)
            if not tasks:  # the worker's queue drained: the core goes back
                del self.core_owner[self.worker_core.pop(a.worker)]

    # ---- the state between steps ------------------------------------------------------

    def check(self, sched: Scheduler) -> None:
        sched.validate()
        assert sched.queued == len(self.of("queued"))
        assert sched.placed == len(self.of("placed"))
        for n, node in enumerate(sched.alloc.nodes):
            free = {c for c in range(self.p.cores) if (n, c) not in self.core_owner}
            assert {c for c in range(self.p.cores) if node.free >> c & 1} == free
            assert node.mem_free == self.p.mem - self.mem_used[n]
        if sched.reserved is not None:
            return  # drained nodes may hold back tasks that would fit
        for uid in self.of("queued"):  # nothing waits that could be placed now
            req = self.requests[uid]
            if req.pooled:
                depth = sched.prefetch_depth
                assert all(len(self.worker_tasks.get(w, ())) >= depth for w in self.worker_core)
                for w in range(self.p.nodes * self.p.workers):
                    node = w // self.p.workers
                    if w not in self.worker_core and self.exclusive_on(node) <= {None}:
                        assert all((node, c) in self.core_owner for c in range(self.p.cores))
            else:
                assert not self._fits_now(req), f"{uid} waits but fits: {req}"

    def _room(self, node: int, shape: Shape) -> int:
        """Ranks of `shape` that fit on `node` now."""
        n = sum((node, c) not in self.core_owner for c in range(self.p.cores))
        n //= shape.cores_per_rank
        if shape.mem_per_rank:
            n = min(n, (self.p.mem - self.mem_used[node]) // shape.mem_per_rank)
        g = Fraction(shape.gpus_per_rank)
        free = [1 - self.gpu_used.get((node, i), Fraction(0)) for i in range(self.p.gpus)]
        if g >= 1:
            n = min(n, sum(f == 1 for f in free) // int(g))
        elif g > 0:
            n = min(n, sum(int(f // g) for f in free))
        return n

    def _fits_now(self, req: Request) -> bool:
        allowed = range(self.p.nodes)
        if req.colocate in self.groups:
            allowed = sorted(self.groups[req.colocate])  # type: ignore[assignment]
        nodes = [n for n in allowed
                 if self.exclusive_on(n) <= ({req.exclusive} if req.exclusive else {None})
                 and (req.exclusive is None or not self.exclusive_on(n) - {req.exclusive})]
        if req.exclusive is not None:
            nodes = [n for n in nodes if None not in self.exclusive_on(n)]
        shape = req.shape
        rooms = [self._room(n, shape) for n in nodes]
        if shape.ranks == 1 or (shape.ranks_per_node and shape.ranks_per_node >= shape.ranks):
            return any(r >= shape.ranks for r in rooms)
        if shape.ranks_per_node:
            need = math.ceil(shape.ranks / shape.ranks_per_node)
            return sum(r >= shape.ranks_per_node for r in rooms) >= need
        return sum(rooms) >= shape.ranks


# ---- the random event sequences ----------------------------------------------------------

pilots = st.builds(Pilot, st.integers(1, 4), st.integers(4, 12), st.integers(0, 4),
                   st.sampled_from([4096, 8192]), st.integers(1, 2))
task_specs = st.one_of(
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.sampled_from(GPU_SHARES),
              st.integers(0, 3), st.sampled_from(MEMS), st.sampled_from(TAGS),
              st.just(False), st.integers(-1, 1)),
    # A plain function task: the shape the agent marks `pooled`.
    st.tuples(st.just(1), st.just(1), st.just(0.0), st.just(0), st.just(0),
              st.just((None, None)), st.just(True), st.integers(-1, 1)),
)
picks = st.lists(st.integers(0, 1_000), min_size=1, max_size=4)
submits = st.tuples(st.just("submit"), st.lists(task_specs, min_size=1, max_size=8))
operations = st.one_of(
    submits,
    submits,  # twice as likely: keep the pilot busy and the queue non-empty
    st.tuples(st.just("complete"), picks, st.sampled_from([0.0, 0.001, 10.0])),
    st.tuples(st.just("cancel"), picks, st.booleans()),
    st.tuples(st.just("requeue"), picks),
    st.tuples(st.just("wait"), st.sampled_from([1.0, 6.0, 11.0])),
)


def pick(uids: list[str], indices: list[int]) -> list[str]:
    return sorted({uids[i % len(uids)] for i in indices}) if uids else []


def run(p: Pilot, ops: list) -> Scheduler:
    sched = Scheduler(p.nodes, p.cores, p.gpus, p.workers, p.mem, reserve_after=RESERVE_AFTER)
    model = Model(p)
    seq, now = 0, 0.0

    def step(call: Callable[..., list[Action]], *args: object, **kw: set[str]
             ) -> list[Action]:
        """Make a call; check its actions. Nodes drained for the same task before and
        after the call were drained all through it: nothing else may land there."""
        before = sched.reserved
        actions = call(*args)
        after = sched.reserved
        model._reserved = after[0] if after else None
        drained = set(after[1]) if after and before == after else set()
        model.apply(actions, drained, **kw)
        return actions

    for op in ops:
        kind = op[0]
        if kind == "submit":
            batch = []
            for ranks, cpr, g, rpn, mem, (colocate, exclusive), pooled, prio in op[1]:
                seq += 1
                req = Request(f"t{seq:03d}", seq, Shape(ranks, cpr, g, rpn, mem), prio, pooled,
                              colocate, exclusive)
                model.requests[req.uid] = req
                model.status[req.uid] = "queued"
                model.entries[req.uid] += 1
                batch.append(req)
            step(sched.submit, batch, now, failable={r.uid for r in batch})
        elif kind == "complete":
            done = pick(model.of("placed"), op[1])
            for uid in done:
                model.release(uid)
                model.status[uid] = "done"
            step(sched.completed, [(u, op[2]) for u in done], now)
        elif kind == "cancel":
            asked = pick(model.of("queued") if op[2] else [*model.requests, "ghost"], op[1])
            queued = set(model.of("queued"))
            actions = step(sched.cancel, asked, now, cancelable=set(asked))
            assert {a.uid for a in actions if isinstance(a, Dequeued)} == queued & set(asked)
        elif kind == "requeue":
            back = pick(model.of("placed"), op[1])
            for uid in back:
                model.release(uid)
                model.status[uid] = "queued"
                model.entries[uid] += 1
                model.requeued.add(uid)
            step(sched.requeue, [model.requests[u] for u in back], now)
        else:
            now += op[1]
            step(sched.schedule, now)
        model.check(sched)

    # Completing everything places everything still queued, and then leaves nothing held.
    while model.of("placed"):
        done = model.of("placed")
        for uid in done:
            model.release(uid)
            model.status[uid] = "done"
        now += 1.0
        step(sched.completed, [(u, 0.001) for u in done], now)
        model.check(sched)
    assert model.of("queued") == []
    for uid in model.requests:  # each submission or requeue came out exactly once
        assert model.outcomes[uid] == model.entries[uid], uid
        assert model.status[uid] in ("done", "failed", "dequeued")
    assert (sched.queued, sched.placed, sched.reserved) == (0, 0, None)
    for node in sched.alloc.nodes:
        assert node.free == (1 << p.cores) - 1 and node.n_free == p.cores
        assert node.whole == (1 << p.gpus) - 1 and not node.partial
        assert node.mem_free == p.mem and node.load == 0 and node.owner is None
    assert not sched.alloc.drained
    assert all(pool.size == 0 for pool in sched.alloc.exclusive.values())
    assert all(w.core is None and w.queued == 0 for w in sched.workers)
    assert model.core_owner == {}
    sched.validate()
    return sched


SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(pilots, st.lists(operations, min_size=8, max_size=40))
def test_random_event_sequences_keep_every_invariant(p: Pilot, ops: list) -> None:
    run(p, ops)


@SETTINGS
@given(pilots, st.lists(submits, max_size=6))
def test_submitting_alone_never_overcommits_and_everything_drains(p: Pilot, ops: list) -> None:
    run(p, ops)


SMALL = (1, 1, 0.0, 0, 0, (None, None), False, 0)
BIG = (2, 4, 0.0, 1, 0, (None, None), False, 0)  # two whole nodes


def test_a_big_task_in_a_stream_of_small_ones_gets_a_reservation_and_starts() -> None:
    """The sequences reach reservations: the model checks them like the rest."""
    ops: list = [("submit", [SMALL] * 8), ("submit", [BIG])]
    for _ in range(6):  # every 6 s one small task ends and a new one takes its core
        ops += [("wait", 6.0), ("complete", [0], 1.0), ("submit", [SMALL])]
    sched = run(Pilot(2, 4, 0, 4096, 1), ops)
    assert sched.reserved is None  # served, and the big task ran


def test_the_reservation_holds_its_nodes_until_the_task_fits() -> None:
    sched = Scheduler(2, 4, reserve_after=RESERVE_AFTER)
    small = [Request(f"s{i}", i, Shape()) for i in range(8)]
    big = Request("big", 100, Shape(2, 4, 0.0, 1))
    assert len(sched.submit(small, 0.0)) == 8
    assert sched.submit([big], 0.0) == []
    seq = 200
    for t in range(1, 8):
        seq += 1
        sched.completed([(f"s{t - 1}", 1.0)], 2.0 * t)
        sched.submit([Request(f"n{t}", seq, Shape())], 2.0 * t)
    reserved = sched.reserved
    assert reserved is not None and reserved[0] == "big" and sorted(reserved[1]) == [0, 1]
    # Drained: what ends now frees cores that nothing but the big task may take.
    before = sched.queued
    placed = sched.completed([("s7", 1.0)], 20.0)
    assert placed == [] and sched.queued == before
    sched.validate()


def test_the_model_catches_a_double_booked_core() -> None:
    """The checker above is not vacuous: it rejects a core given twice."""
    model = Model(Pilot(1, 4, 0, 4096, 1))
    for seq, uid in enumerate(("a", "b")):
        model.requests[uid] = Request(uid, seq, Shape(1, 1))
        model.status[uid] = "queued"
    sched = Scheduler(1, 4, 0, 1, 4096)
    (launch,) = sched.submit([model.requests["a"]])
    model.apply([launch], set())
    try:
        model.apply([Launch("b", launch.slot)], set())
    except AssertionError as exc:
        assert "given twice" in str(exc)
    else:
        raise AssertionError("a core given twice went unnoticed")


def test_a_reservation_on_part_of_its_colocate_group_holds() -> None:
    """Found by these sequences: a task of a colocate group of two nodes needing one got
    its reservation on one of them, which was dropped at the next pass (as if the group
    had moved off those nodes) and made again after other work had landed there: the
    drained node kept taking other tasks, and the waiting one could starve."""
    small = (1, 1, 0.0, 0, 0, (None, None), False, 0)
    ops: list = [("submit", [small]), ("submit", [small]),
                 ("submit", [(1, 1, 0.25, 0, 0, (None, None), False, 0)]),
                 ("submit", [(2, 1, 0.0, 1, 0, ("a", None), False, 0)]),  # group a: 2 nodes
                 ("submit", [(1, 1, 0.0, 0, 0, ("a", "x"), False, 0), small]),
                 ("wait", 11.0),  # the exclusive one waited: it gets a reservation
                 ("submit", [(1, 1, 0.0, 0, 0, (None, None), True, 0)]),
                 ("requeue", [124])]  # a function's lease freed on the drained node
    run(Pilot(2, 4, 0, 4096, 1), ops)
