"""Properties of the scheduler over random event sequences.

The test keeps its own model of who holds which core and which GPU share, built only from
the actions the scheduler returns, and checks it against the rules independently of
`Scheduler.validate()` (which is also called after every step).
"""

from __future__ import annotations

import math
from collections import Counter
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
RUNTIMES = [0.0, 1e-6, 0.001, 0.05, 10.0]


def never_fits(shape: Shape, cores: int, gpus: int) -> bool:
    """Could an empty node of the pilot hold the shape? Worked out independently."""
    if shape.cores > cores:
        return True
    g = Fraction(shape.gpus_per_rank)
    if g == 0:
        return False
    if g >= 1:
        return shape.ranks * g > gpus
    return math.ceil(shape.ranks / (1 / g)) > gpus


@dataclass
class Model:
    nodes: int
    cores: int
    gpus: int
    workers_per_node: int
    requests: dict[str, Request] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)  # queued placed done failed dequeued
    outcomes: Counter[str] = field(default_factory=Counter)  # placed/failed/dequeued, per uid
    entries: Counter[str] = field(default_factory=Counter)  # submitted or requeued, per uid
    requeued: set[str] = field(default_factory=set)
    core_owner: dict[tuple[int, int], str] = field(default_factory=dict)
    gpu_used: dict[tuple[int, int], Fraction] = field(default_factory=dict)
    placement: dict[str, Action] = field(default_factory=dict)
    worker_core: dict[int, tuple[int, int]] = field(default_factory=dict)
    worker_tasks: dict[int, set[str]] = field(default_factory=dict)

    def of(self, status: str) -> list[str]:
        return sorted(u for u, s in self.status.items() if s == status)

    # ---- the actions, checked one by one ------------------------------------------------

    def apply(self, actions: list[Action], *, failable: set[str] = frozenset(),
              cancelable: set[str] = frozenset()) -> None:
        for a in actions:
            assert self.status.get(a.uid) == "queued", f"{a} for a task that is {self.status}"
            self.outcomes[a.uid] += 1
            if isinstance(a, Launch):
                self._launch(a)
            elif isinstance(a, Dispatch):
                self._dispatch(a)
            elif isinstance(a, Fail):
                assert a.uid in failable, f"{a} outside the submit of that task"
                assert never_fits(self.requests[a.uid].shape, self.cores, self.gpus), a
                assert "can never fit" in a.reason
                self.status[a.uid] = "failed"
            else:
                assert isinstance(a, Dequeued)
                assert a.uid in cancelable, f"{a} was not asked for"
                self.status[a.uid] = "dequeued"

    def _check_fifo(self, uid: str) -> None:
        """Tasks of one priority and shape (never requeued) are placed in submission order."""
        req = self.requests[uid]
        if uid in self.requeued:
            return
        for other in self.of("queued"):
            if other == uid:
                continue
            o = self.requests[other]
            if (o.priority, o.pooled, o.shape) == (req.priority, req.pooled, req.shape):
                assert other in self.requeued or o.seq > req.seq, f"{uid} overtook {other}"

    def _launch(self, a: Launch) -> None:
        req = self.requests[a.uid]
        shape, slot = req.shape, a.slot
        assert not req.pooled
        assert 0 <= slot.node < self.nodes
        assert len(slot.cores) == shape.ranks
        assert all(len(rank) == shape.cores_per_rank for rank in slot.cores)
        for c in slot.all_cores:
            assert 0 <= c < self.cores
            assert (slot.node, c) not in self.core_owner, f"core {c} given twice: {a}"
            self.core_owner[slot.node, c] = a.uid
        per_rank = Fraction(shape.gpus_per_rank)
        if per_rank == 0:
            assert slot.gpus == ()
        else:
            assert len(slot.gpus) == shape.ranks
            for rank in slot.gpus:
                ids = [g for g, _ in rank]
                assert len(ids) == len(set(ids))
                assert sum(share for _, share in rank) == per_rank
                for g, share in rank:
                    assert 0 <= g < self.gpus and share > 0
                    used = self.gpu_used.get((slot.node, g), Fraction(0)) + share
                    assert used <= 1, f"GPU {g} over-committed: {a}"
                    self.gpu_used[slot.node, g] = used
        self._check_fifo(a.uid)
        self.status[a.uid] = "placed"
        self.placement[a.uid] = a

    def _dispatch(self, a: Dispatch) -> None:
        req = self.requests[a.uid]
        assert req.pooled
        assert 0 <= a.worker < self.nodes * self.workers_per_node
        assert a.node == a.worker // self.workers_per_node
        tasks = self.worker_tasks.setdefault(a.worker, set())
        if a.worker in self.worker_core:
            assert self.worker_core[a.worker] == (a.node, a.core)
        else:
            assert not tasks
            assert 0 <= a.core < self.cores
            assert (a.node, a.core) not in self.core_owner, f"leased a held core: {a}"
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
            for c in a.slot.all_cores:
                assert self.core_owner.pop((a.slot.node, c)) == uid
            for rank in a.slot.gpus:
                for g, share in rank:
                    self.gpu_used[a.slot.node, g] -= share
        else:
            assert isinstance(a, Dispatch)
            tasks = self.worker_tasks[a.worker]
            tasks.remove(uid)
            if not tasks:  # the worker's queue drained: the core goes back
                del self.core_owner[self.worker_core.pop(a.worker)]

    # ---- the state between steps --------------------------------------------------------

    def check(self, sched: Scheduler) -> None:
        sched.validate()
        assert sched.queued == len(self.of("queued"))
        assert sched.placed == len(self.of("placed"))
        assert len(self.core_owner) <= self.nodes * self.cores
        for used in self.gpu_used.values():
            assert 0 <= used <= 1
        # The scheduler's own view agrees with what its actions said.
        for n, node in enumerate(sched.nodes):
            free = {c for c in range(self.cores) if (n, c) not in self.core_owner}
            assert sorted(node.free_cores) == sorted(free)
            for g in range(self.gpus):
                assert node.gpu_free[g] == 1 - self.gpu_used.get((n, g), Fraction(0))
        # Nothing is left waiting that could be placed now (no lost wake-up).
        for uid in self.of("queued"):
            req = self.requests[uid]
            if req.pooled:
                depth = sched.prefetch_depth
                assert all(len(self.worker_tasks.get(w, ())) >= depth for w in self.worker_core)
                for w in range(self.nodes * self.workers_per_node):
                    if w not in self.worker_core:
                        node = w // self.workers_per_node
                        assert all((node, c) in self.core_owner for c in range(self.cores))
            else:
                assert not any(self._fits_now(n, req.shape) for n in range(self.nodes)), uid

    def _fits_now(self, node: int, shape: Shape) -> bool:
        free = sum((node, c) not in self.core_owner for c in range(self.cores))
        if free < shape.cores:
            return False
        g = Fraction(shape.gpus_per_rank)
        gpu_free = [1 - self.gpu_used.get((node, i), Fraction(0)) for i in range(self.gpus)]
        if g == 0:
            return True
        if g >= 1:
            return sum(f == 1 for f in gpu_free) >= shape.ranks * g
        return sum(f // g for f in gpu_free) >= shape.ranks


# ---- the random event sequences ------------------------------------------------------------

pilots = st.tuples(
    st.integers(1, 3),  # nodes
    st.integers(4, 16),  # cores per node
    st.integers(0, 4),  # GPUs per node
    st.integers(1, 3),  # function workers per node
)
task_specs = st.one_of(
    st.tuples(
        st.integers(1, 4), st.integers(1, 4), st.sampled_from(GPU_SHARES), st.just(False),
        st.integers(-2, 2),
    ),
    # A plain function task: the shape the agent marks `pooled` (1 rank x 1 core, no GPU).
    st.tuples(st.just(1), st.just(1), st.just(0.0), st.just(True), st.integers(-2, 2)),
)
picks = st.lists(st.integers(0, 1_000), min_size=1, max_size=4)
submits = st.tuples(st.just("submit"), st.lists(task_specs, min_size=1, max_size=8))
operations = st.one_of(
    submits,
    submits,  # twice as likely: keep the pilot busy and the queue non-empty
    st.tuples(st.just("complete"), picks, st.sampled_from(RUNTIMES)),
    st.tuples(st.just("cancel"), picks, st.booleans()),
    st.tuples(st.just("requeue"), picks),
)


def pick(uids: list[str], indices: list[int]) -> list[str]:
    return sorted({uids[i % len(uids)] for i in indices}) if uids else []


def run(pilot: tuple[int, int, int, int], ops: list, drain: bool = True) -> None:
    nodes, cores, gpus, workers = pilot
    sched = Scheduler(nodes, cores, gpus, workers)
    model = Model(nodes, cores, gpus, workers)
    seq = 0
    for op in ops:
        kind = op[0]
        if kind == "submit":
            batch = []
            for ranks, cpr, g, pooled, priority in op[1]:
                seq += 1
                req = Request(f"t{seq}", seq, Shape(ranks, cpr, g), priority, pooled)
                model.requests[req.uid] = req
                model.status[req.uid] = "queued"
                model.entries[req.uid] += 1
                batch.append(req)
            model.apply(sched.submit(batch), failable={r.uid for r in batch})
        elif kind == "complete":
            done = pick(model.of("placed"), op[1])
            for uid in done:
                model.release(uid)
                model.status[uid] = "done"
            model.apply(sched.completed([(u, op[2]) for u in done]))
        elif kind == "cancel":
            # Mostly queued tasks; else any task ever submitted, or one never seen.
            asked = pick(model.of("queued") if op[2] else [*model.requests, "ghost"], op[1])
            queued = set(model.of("queued"))
            actions = sched.cancel(asked)
            assert all(isinstance(a, Dequeued) for a in actions)
            assert {a.uid for a in actions} == queued & set(asked)
            model.apply(actions, cancelable=set(asked))
        else:
            back = pick(model.of("placed"), op[1])
            for uid in back:
                model.release(uid)
                model.status[uid] = "queued"
                model.entries[uid] += 1
                model.requeued.add(uid)
            model.apply(sched.requeue([model.requests[u] for u in back]))
        model.check(sched)

    if not drain:
        return
    # Completing everything places everything still queued, and then leaves nothing held.
    while model.of("placed"):
        done = model.of("placed")
        for uid in done:
            model.release(uid)
            model.status[uid] = "done"
        model.apply(sched.completed([(u, 0.001) for u in done]))
        model.check(sched)
    assert model.of("queued") == []
    for uid in model.requests:  # each submission or requeue came out exactly once
        assert model.outcomes[uid] == model.entries[uid], uid
        assert model.status[uid] in ("done", "failed", "dequeued")
    assert (sched.queued, sched.placed) == (0, 0)
    for node in sched.nodes:
        assert sorted(node.free_cores) == list(range(cores))
        assert node.gpu_free == [1] * gpus
    assert all(w.core is None and w.queued == 0 for w in sched.workers)
    assert model.core_owner == {}
    sched.validate()


SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(pilots, st.lists(operations, min_size=8, max_size=40))
def test_random_event_sequences_keep_every_invariant(pilot, ops) -> None:
    run(pilot, ops)


@SETTINGS
@given(pilots, st.lists(st.tuples(st.just("submit"), st.lists(task_specs, min_size=1,
                                                              max_size=8)), max_size=6))
def test_submitting_alone_never_overcommits_and_everything_drains(pilot, ops) -> None:
    run(pilot, ops)


def test_the_model_catches_a_double_booked_core() -> None:
    """The checker above is not vacuous: it rejects a core given twice."""
    model = Model(1, 4, 0, 1)
    for seq, uid in enumerate(("a", "b")):
        model.requests[uid] = Request(uid, seq, Shape(1, 1))
        model.status[uid] = "queued"
    sched = Scheduler(1, 4)
    (launch,) = sched.submit([model.requests["a"]])
    model.apply([launch])
    try:
        model.apply([Launch("b", launch.slot)])
    except AssertionError as exc:
        assert "given twice" in str(exc)
    else:
        raise AssertionError("a core given twice went unnoticed")
