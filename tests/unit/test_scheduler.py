"""The scheduler as a spec: event sequences in, the exact actions out.

Every scheduler a test builds through the `make` fixture is checked with `validate()` after
the test (no core held twice, no core lost, GPU shares add up, worker leases consistent).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from fractions import Fraction

import pytest

from pilotfish.resources import Shape, Slot
from pilotfish.scheduler import (
    MAX_PREFETCH,
    MIN_PREFETCH,
    Dequeued,
    Dispatch,
    Fail,
    Launch,
    Request,
    Scheduler,
    SchedulerError,
)

HALF, QUARTER, ONE = Fraction(1, 2), Fraction(1, 4), Fraction(1)

_seq = itertools.count(1)


def task(uid: str, ranks: int = 1, cores: int = 1, gpus: float = 0.0, priority: int = 0) -> Request:
    """A task with its own processes: `ranks` x (`cores` cores, `gpus` GPUs)."""
    return Request(uid, next(_seq), Shape(ranks, cores, gpus), priority)


def fn(uid: str, priority: int = 0) -> Request:
    """A plain function task, for a function worker."""
    return Request(uid, next(_seq), Shape(), priority, pooled=True)


def on(node: int, *ranks: tuple[int, ...], gpus: tuple[tuple[tuple[int, Fraction], ...], ...] = ()
       ) -> Slot:
    return Slot((node,) * len(ranks), tuple(ranks), gpus)


def launched(actions: list) -> list[str]:
    return [a.uid for a in actions if isinstance(a, Launch)]


@pytest.fixture
def make() -> Iterator:
    made: list[Scheduler] = []

    def make(nodes: int = 1, cores: int = 4, gpus: int = 0, workers: int = 1) -> Scheduler:
        sched = Scheduler(nodes, cores, gpus, workers)
        made.append(sched)
        return sched

    yield make
    for sched in made:
        sched.validate()


# ---- the validator itself -----------------------------------------------------------------


def test_validate_catches_a_double_booked_core() -> None:
    sched = Scheduler(1, 4)
    sched.submit([task("a", cores=2)])
    sched.validate()
    node = sched.alloc.nodes[0]
    node.free |= 1  # core 0 is also in a's slot
    node.n_free += 1
    with pytest.raises(SchedulerError, match="double-booked"):
        sched.validate()


def test_validate_catches_an_overcommitted_gpu() -> None:
    sched = Scheduler(1, 4, 1)
    sched.submit([task("a", gpus=0.5)])
    sched.validate()
    sched.alloc.nodes[0].partial[0] += HALF
    with pytest.raises(SchedulerError, match="GPU 0"):
        sched.validate()


# ---- exact placement -----------------------------------------------------------------------


def test_cores_are_given_lowest_first_and_ranks_get_their_own_cores(make) -> None:
    sched = make(cores=8)
    assert sched.submit([task("a", cores=2), task("b", ranks=2)]) == [
        Launch("a", on(0, (0, 1))),
        Launch("b", on(0, (2,), (3,))),
    ]
    assert sched.completed([("a", 1.0)]) == []
    # The freed cores 0 and 1 are the lowest, so the next task gets them first.
    assert sched.submit([task("c", cores=3)]) == [Launch("c", on(0, (0, 1, 4)))]


def test_a_full_node_places_nothing_until_cores_are_freed(make) -> None:
    sched = make(cores=4)
    assert sched.submit([task("a", ranks=4), task("b")]) == [
        Launch("a", on(0, (0,), (1,), (2,), (3,)))
    ]
    assert (sched.queued, sched.placed) == (1, 1)
    assert sched.completed([("a", 1.0)]) == [Launch("b", on(0, (0,)))]
    assert (sched.queued, sched.placed) == (0, 1)


def test_tasks_go_to_the_first_node_with_room(make) -> None:
    sched = make(nodes=2, cores=4)
    assert sched.submit([task("a", cores=3), task("b", cores=3), task("c")]) == [
        Launch("a", on(0, (0, 1, 2))),
        Launch("b", on(1, (0, 1, 2))),
        Launch("c", on(0, (3,))),
    ]


def test_a_multi_rank_task_goes_whole_on_one_node_when_one_has_room(make) -> None:
    sched = make(nodes=2, cores=4)
    assert launched(sched.submit([task("a", cores=2), task("b", cores=2, ranks=1)])) == ["a", "b"]
    # a and b are both on node 0; node 1 is empty and takes the 2 x 2 task whole.
    assert sched.submit([task("c", ranks=2, cores=2)]) == [Launch("c", on(1, (0, 1), (2, 3)))]
    assert sched.completed([("a", 1.0)]) == []
    # Two cores free on node 0 and none on node 1: four ranks do not fit, even spread.
    assert sched.submit([task("d", ranks=4)]) == []
    assert sched.completed([("b", 1.0)]) == [Launch("d", on(0, (0,), (1,), (2,), (3,)))]


# ---- order: priority, FIFO, backfill --------------------------------------------------------


def test_higher_priority_is_placed_first(make) -> None:
    sched = make(cores=1)
    assert launched(sched.submit([task("blocker")])) == ["blocker"]
    assert sched.submit([task("low", priority=-1), task("mid"), task("high", priority=2)]) == []
    assert sched.completed([("blocker", 1.0)]) == [Launch("high", on(0, (0,)))]
    assert sched.completed([("high", 1.0)]) == [Launch("mid", on(0, (0,)))]
    assert sched.completed([("mid", 1.0)]) == [Launch("low", on(0, (0,)))]


def test_a_later_higher_priority_task_overtakes_earlier_ones(make) -> None:
    sched = make(cores=1)
    sched.submit([task("blocker"), task("first")])
    assert sched.submit([task("urgent", priority=1)]) == []
    assert launched(sched.completed([("blocker", 1.0)])) == ["urgent"]
    assert launched(sched.completed([("urgent", 1.0)])) == ["first"]


def test_same_priority_and_shape_is_first_come_first_served(make) -> None:
    sched = make(cores=1)
    sched.submit([task("blocker")])
    sched.submit([task(u) for u in "abcde"])
    order = []
    running = "blocker"
    for _ in range(5):
        (action,) = sched.completed([(running, 1.0)])
        running = action.uid
        order.append(running)
    assert order == list("abcde")


def test_across_shapes_the_oldest_task_that_fits_goes_first(make) -> None:
    sched = make(cores=4)
    sched.submit([task("blocker", cores=4)])
    sched.submit([task("x", cores=2), task("y"), task("z", cores=2)])
    assert sched.completed([("blocker", 1.0)]) == [
        Launch("x", on(0, (0, 1))),
        Launch("y", on(0, (2,))),
    ]
    assert sched.completed([("x", 1.0)]) == [Launch("z", on(0, (0, 1)))]


def test_greedy_backfill_a_big_task_does_not_block_a_small_one(make) -> None:
    sched = make(cores=4)
    assert launched(sched.submit([task("a", cores=3)])) == ["a"]
    assert sched.submit([task("big", cores=4)]) == []
    assert sched.submit([task("small")]) == [Launch("small", on(0, (3,)))]


def test_backfill_never_reorders_tasks_of_the_same_shape(make) -> None:
    sched = make(cores=4)
    sched.submit([task("a", cores=3), task("big1", cores=4), task("small"), task("big2", cores=4)])
    assert launched(sched.completed([("a", 1.0), ("small", 1.0)])) == ["big1"]
    assert launched(sched.completed([("big1", 1.0)])) == ["big2"]


def test_a_blocked_high_priority_task_does_not_block_lower_priorities(make) -> None:
    sched = make(cores=4)
    sched.submit([task("a", cores=2)])
    assert sched.submit([task("big", cores=4, priority=5), task("low", priority=-5)]) == [
        Launch("low", on(0, (2,)))
    ]


# ---- tasks that can never fit ---------------------------------------------------------------


def test_too_many_cores_fails_at_once_naming_the_numbers(make) -> None:
    sched = make(nodes=2, cores=4)
    (fail,) = sched.submit([task("wide", ranks=9)])
    assert isinstance(fail, Fail) and fail.uid == "wide"
    assert "9 ranks" in fail.reason and "2 node(s)" in fail.reason
    assert "at most 4 each (4 cores / 1 per rank)" in fail.reason
    (fat,) = sched.submit([task("fat", cores=5)])
    assert "5 cores per rank, a node has 4" in fat.reason
    assert (sched.queued, sched.placed) == (0, 0)


def test_gpus_on_a_gpu_less_pilot_fail_at_once(make) -> None:
    sched = make(cores=4, gpus=0)
    (fail,) = sched.submit([task("g", gpus=0.5)])
    assert fail.uid == "g"
    assert "GPU" in fail.reason and "no GPU" in fail.reason and "0.5" in fail.reason


def test_too_many_gpus_fail_at_once_naming_the_numbers(make) -> None:
    sched = make(cores=8, gpus=2)
    (whole,) = sched.submit([task("w", ranks=3, gpus=1)])
    assert "3 ranks" in whole.reason and "(2 GPUs / 1 per rank)" in whole.reason
    (fat,) = sched.submit([task("f", gpus=3)])
    assert "3 GPUs per rank, a node has 2" in fat.reason
    sched1 = make(cores=8, gpus=1)
    (frac,) = sched1.submit([task("f", ranks=3, gpus=0.5)])
    assert "at most 2 each (1 GPUs / 0.5 per rank)" in frac.reason


def test_shapes_that_just_fit_are_not_failed(make) -> None:
    sched = make(cores=4, gpus=2)
    assert launched(sched.submit([task("a", ranks=4, gpus=0.5)])) == ["a"]
    sched.completed([("a", 1.0)])
    assert launched(sched.submit([task("b", ranks=2, cores=2, gpus=1)])) == ["b"]


def test_a_failed_task_does_not_stop_the_others_and_is_never_placed(make) -> None:
    sched = make(cores=2)
    actions = sched.submit([task("bad", cores=3), task("good", cores=2), task("later")])
    assert actions[0] == Fail("bad", actions[0].reason)
    assert actions[1:] == [Launch("good", on(0, (0, 1)))]
    assert sched.queued == 1
    assert launched(sched.completed([("good", 1.0)])) == ["later"]
    assert sched.completed([("later", 1.0)]) == []


# ---- cancel ---------------------------------------------------------------------------------


def test_canceled_queued_tasks_are_dequeued_and_never_placed(make) -> None:
    sched = make(cores=1)
    sched.submit([task("blocker"), task("a"), task("b"), fn("f")])
    assert sched.cancel(["a", "f"]) == [Dequeued("a"), Dequeued("f")]
    assert sched.queued == 1
    assert sched.completed([("blocker", 1.0)]) == [Launch("b", on(0, (0,)))]
    assert sched.completed([("b", 1.0)]) == []
    assert sched.placed == 0


def test_cancel_ignores_placed_unknown_and_already_canceled_tasks(make) -> None:
    sched = make(cores=1)
    sched.submit([task("running"), task("waiting")])
    assert sched.cancel(["running", "nobody"]) == []
    assert sched.cancel(["waiting"]) == [Dequeued("waiting")]
    assert sched.cancel(["waiting"]) == []
    assert sched.placed == 1


def test_take_queued_gives_up_the_newest_movable_tasks_and_never_places_them(make) -> None:
    sched = make(cores=1)
    sched.submit([task("running"), task("a"), task("pinned"), task("b"), task("c")])
    taken = sched.take_queued(2, lambda r: r.uid != "pinned", look_at=10)
    assert [r.uid for r in taken] == ["c", "b"]
    assert sched.queued == 2
    assert [r.uid for r in sched.take_queued(5, lambda r: True, look_at=1)] == ["pinned"]
    assert sched.completed([("running", 1.0)]) == [Launch("a", on(0, (0,)))]
    assert sched.completed([("a", 1.0)]) == []  # nothing else: the rest moved away


def test_take_queued_leaves_a_reserved_task_on_its_nodes(make) -> None:
    sched = Scheduler(2, 2, reserve_after=0.0)
    sched.submit([task("x", cores=2), task("y", cores=1)], now=0.0)
    sched.submit([task("big", ranks=2, cores=2), task("small")], now=0.0)
    sched.completed([("y", 1.0)], now=1.0)  # small placed past big: big gets a reservation
    assert sched.reserved is not None and sched.reserved[0] == "big"
    assert [r.uid for r in sched.take_queued(5, lambda r: True, look_at=5)] == []
    sched.validate()


def test_a_reservation_made_before_its_colocate_group_was_bound_elsewhere_is_dropped(
        ) -> None:
    sched = Scheduler(4, 4, reserve_after=0.0)
    sched.submit([task("f0", cores=4), task("f1", cores=2), task("f2", cores=3),
                  task("f3", cores=3)])  # nodes 0-3: 0, 2, 1 and 1 cores free
    x = Request("x", next(_seq), Shape(1, 4), colocate="a")
    assert launched(sched.submit([x, task("z")])) == ["z"]  # x passed over: node 1 drained
    assert sched.reserved == ("x", [1])
    y = Request("y", next(_seq), Shape(1, 1), colocate="a")
    assert sched.submit([y]) == [Launch("y", on(3, (3,)))]  # binds group a to node 3
    assert sched.completed([("f1", 1.0)], now=1.0) == []  # node 1 is of no use to x
    assert sched.reserved is None
    actions = sched.completed([("f3", 1.0), ("y", 1.0)], now=2.0)
    assert [(a.uid, a.slot.nodes) for a in actions if isinstance(a, Launch)] == [("x", (3,))]
    sched.validate()


def test_a_canceled_head_does_not_block_the_group(make) -> None:
    sched = make(cores=2)
    sched.submit([task("blocker", cores=2), task("a", cores=2), task("b", cores=2)])
    sched.cancel(["a"])
    assert sched.completed([("blocker", 1.0)]) == [Launch("b", on(0, (0, 1)))]


# ---- GPUs -----------------------------------------------------------------------------------


def test_two_half_gpu_ranks_share_one_gpu(make) -> None:
    sched = make(cores=4, gpus=1)
    assert sched.submit([task("a", gpus=0.5), task("b", gpus=0.5), task("c", gpus=0.5)]) == [
        Launch("a", on(0, (0,), gpus=(((0, HALF),),))),
        Launch("b", on(0, (1,), gpus=(((0, HALF),),))),
    ]
    assert sched.completed([("a", 1.0)]) == [Launch("c", on(0, (0,), gpus=(((0, HALF),),)))]


def test_four_quarter_gpu_ranks_share_one_gpu(make) -> None:
    sched = make(cores=8, gpus=1)
    (action,) = sched.submit([task("q", ranks=4, gpus=0.25)])
    assert action == Launch("q", on(0, (0,), (1,), (2,), (3,), gpus=(((0, QUARTER),),) * 4))
    assert [action.slot.rank_gpu_ids(r) for r in range(4)] == [[0]] * 4
    assert sched.submit([task("more", gpus=0.25)]) == []  # the GPU is fully shared out


def test_fractional_shares_pack_onto_one_gpu_to_keep_whole_gpus_free(make) -> None:
    sched = make(cores=4, gpus=2)
    sched.submit([task("a", gpus=0.5)])
    assert sched.submit([task("b", gpus=0.5), task("w", gpus=1)]) == [
        Launch("b", on(0, (1,), gpus=(((0, HALF),),))),
        Launch("w", on(0, (2,), gpus=(((1, ONE),),))),
    ]


def test_whole_gpus_per_rank(make) -> None:
    sched = make(cores=8, gpus=4)
    (action,) = sched.submit([task("m", ranks=2, gpus=2)])
    two_each = (((0, ONE), (1, ONE)), ((2, ONE), (3, ONE)))
    assert action == Launch("m", on(0, (0,), (1,), gpus=two_each))
    assert action.slot.rank_gpu_ids(0) == [0, 1]
    assert action.slot.rank_gpu_ids(1) == [2, 3]
    # No GPU left: a GPU task waits, a CPU-only task still runs.
    assert sched.submit([task("g", gpus=1), task("cpu")]) == [Launch("cpu", on(0, (2,)))]


def test_a_whole_gpu_is_not_given_while_part_of_it_is_shared(make) -> None:
    sched = make(cores=4, gpus=1)
    sched.submit([task("a", gpus=0.5)])
    assert sched.submit([task("w", gpus=1)]) == []
    assert sched.completed([("a", 1.0)]) == [Launch("w", on(0, (0,), gpus=(((0, ONE),),)))]


# ---- function workers ---------------------------------------------------------------------


def test_a_worker_leases_a_core_only_while_it_has_tasks(make) -> None:
    sched = make(cores=2, workers=1)
    assert sched.submit([fn("f1"), fn("f2")]) == [Dispatch("f1", 0, 0, 0), Dispatch("f2", 0, 0, 0)]
    assert sched.workers[0].core == 0
    # The leased core is not free: a two-core executable has to wait ...
    assert sched.submit([task("exe", cores=2)]) == []
    # ... while the worker still has a task queued ...
    assert sched.completed([("f1", 0.001)]) == []
    # ... and gets the core as soon as the worker's queue drains.
    assert sched.completed([("f2", 0.001)]) == [Launch("exe", on(0, (0, 1)))]
    assert sched.workers[0].core is None


def test_busy_workers_spread_work_by_leasing_idle_ones(make) -> None:
    sched = make(nodes=1, cores=4, workers=2)
    assert sched.submit([fn("f1"), fn("f2"), fn("f3")]) == [
        Dispatch("f1", 0, 0, 0),
        Dispatch("f2", 1, 0, 1),
        Dispatch("f3", 0, 0, 0),
    ]
    assert sched.submit([task("e", cores=2)]) == [Launch("e", on(0, (2, 3)))]


def test_a_worker_leases_on_its_own_node(make) -> None:
    sched = make(nodes=2, cores=1, workers=1)
    assert launched(sched.submit([task("e")])) == ["e"]
    assert sched.submit([fn("f")]) == [Dispatch("f", 1, 1, 0)]


def test_function_tasks_wait_when_no_core_can_be_leased(make) -> None:
    sched = make(cores=1, workers=1)
    sched.submit([task("e")])
    assert sched.submit([fn("f")]) == []
    assert sched.completed([("e", 1.0)]) == [Dispatch("f", 0, 0, 0)]


def test_function_tasks_follow_priority_with_executables(make) -> None:
    sched = make(cores=1, workers=1)
    sched.submit([task("blocker")])
    sched.submit([fn("f_low", priority=-1), task("e_high", priority=1)])
    assert sched.completed([("blocker", 1.0)]) == [Launch("e_high", on(0, (0,)))]
    assert sched.completed([("e_high", 1.0)]) == [Dispatch("f_low", 0, 0, 0)]


def dispatched_at_once(sched: Scheduler, n: int) -> int:
    return sum(isinstance(a, Dispatch) for a in sched.submit([fn(f"p{i}") for i in range(n)]))


def test_prefetch_is_shallow_for_short_tasks(make) -> None:
    sched = make(cores=1, workers=1)
    for i in range(30):
        sched.submit([fn(f"short{i}")])
        sched.completed([(f"short{i}", 0.1)])
    assert sched.prefetch_depth == MIN_PREFETCH
    assert dispatched_at_once(sched, 50) == MIN_PREFETCH


def test_long_tasks_are_not_fed_ahead(make) -> None:
    # A long task queued behind a running one could start at once on a core that frees
    # first: at the end of a run, a whole task's time lost.
    sched = make(cores=1, workers=1)
    for i in range(30):
        sched.submit([fn(f"long{i}")])
        sched.completed([(f"long{i}", 10.0)])
    assert sched.prefetch_depth == 1
    assert dispatched_at_once(sched, 50) == 1


def test_prefetch_is_deep_for_tiny_tasks(make) -> None:
    sched = make(cores=1, workers=1)
    for i in range(60):
        sched.submit([fn(f"tiny{i}")])
        sched.completed([(f"tiny{i}", 0.0)])
    assert sched.prefetch_depth == MAX_PREFETCH
    assert dispatched_at_once(sched, MAX_PREFETCH + 50) == MAX_PREFETCH


def test_prefetch_depth_follows_the_runtime(make) -> None:
    sched = make(cores=1, workers=1)
    start = sched.prefetch_depth
    assert MIN_PREFETCH < start < MAX_PREFETCH
    assert dispatched_at_once(sched, 3 * start) == start
    for i in range(3 * start):  # each completion lets the next ones through, in order
        sched.completed([(f"p{i}", 0.0)])
    assert (sched.queued, sched.placed) == (0, 0)
    deeper = sched.prefetch_depth
    assert deeper > start
    # Only completed function tasks count, executables do not move the estimate.
    sched.submit([task("exe")])
    sched.completed([("exe", 1000.0)])
    assert sched.prefetch_depth == deeper


# ---- requeue --------------------------------------------------------------------------------


def test_a_requeued_task_is_placed_again(make) -> None:
    sched = make(cores=1)
    a = task("a")
    sched.submit([a, task("b")])
    assert sched.requeue([a]) == [Launch("a", on(0, (0,)))]  # ahead of b, which was waiting
    assert sched.completed([("a", 1.0)]) == [Launch("b", on(0, (0,)))]


def test_a_requeued_task_competes_by_priority_and_can_be_canceled(make) -> None:
    sched = make(cores=1)
    a = task("a")
    assert launched(sched.submit([a])) == ["a"]
    assert sched.submit([task("h", priority=5)]) == []
    assert sched.requeue([a]) == [Launch("h", on(0, (0,)))]
    assert (sched.queued, sched.placed) == (1, 1)
    assert sched.cancel(["a"]) == [Dequeued("a")]
    assert sched.completed([("h", 1.0)]) == []


def test_a_requeued_function_task_frees_and_retakes_the_worker(make) -> None:
    sched = make(cores=2, workers=1)
    f = fn("f")
    sched.submit([f])
    sched.submit([task("e", cores=2)])
    # Requeued, f gives its core back, and being older than e it is placed again first.
    assert sched.requeue([f]) == [Dispatch("f", 0, 0, 0)]
    assert sched.completed([("f", 0.001)]) == [Launch("e", on(0, (0, 1)))]


def test_requeued_tasks_keep_their_order(make) -> None:
    sched = make(cores=2)
    a, b = task("a"), task("b")
    sched.submit([a, b, task("c")])
    sched.submit([task("h", priority=1)])
    # Both cores come free, h takes one, and of a and b the older goes first.
    assert sched.requeue([b, a]) == [Launch("h", on(0, (0,))), Launch("a", on(0, (1,)))]
    assert launched(sched.completed([("h", 1.0)])) == ["b"]


def test_a_lost_node_takes_no_more_tasks_and_what_can_never_fit_fails() -> None:
    sched = Scheduler(2, 2)
    assert [a.uid for a in sched.submit([task("a"), task("b"), task("c"), task("d")])] == [
        "a", "b", "c", "d"]
    wide = Request("wide", next(_seq), Shape(2, 2, 0.0, 1))  # a rank on each node
    assert sched.submit([wide, task("e")]) == []
    actions = sched.lose_node(1)
    assert actions == [Fail("wide", actions[0].reason)]  # type: ignore[union-attr]
    assert "node 1 lost" in actions[0].reason  # type: ignore[union-attr]
    # What ran on node 1 ends (lost); its cores never come back into use.
    on_one = [u for u in "abcd" if sched._slots[u][0].nodes == (1,)]
    assert sched.completed([(u, 0.0) for u in on_one]) == []
    on_zero = next(u for u in "abcd" if u not in on_one)
    assert [a.uid for a in sched.completed([(on_zero, 1.0)])] == ["e"]
    sched.validate()
    assert sched.alloc.never_fits(Shape(3, 1)) is not None  # 1 node of 2 cores is left


def test_spare_nodes_feed_a_runtime_ahead_but_never_change_what_fits() -> None:
    sched = Scheduler(1, 4, workers_per_node=0, spare_nodes=1)
    actions = sched.submit([task(f"t{i}") for i in range(10)])
    assert [type(a) for a in actions] == [Launch] * 8  # twice what fits is handed over
    assert sched.queued == 2
    (wide,) = sched.submit([Request("wide", next(_seq), Shape(2, 4, ranks_per_node=1))])
    assert isinstance(wide, Fail) and "there are 1" in wide.reason  # one real node
    sched.completed([("t0", 1.0)])
    assert sched.queued == 1
