"""The agent core as event sequences: no process, socket or clock of its own."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pilotfish.agent.core import (
    BALANCE_INTERVAL,
    FLUSH_INTERVAL,
    PROGRESS_INTERVAL,
    AgentCore,
    PartitionSetup,
)
from pilotfish.agent.events import (
    Action,
    CancelRequested,
    CancelTasks,
    CaughtUp,
    DispatchTasks,
    LaunchTasks,
    NodeLost,
    PartitionLost,
    ReleaseRequested,
    SendAccepted,
    SendReleased,
    SendUpdates,
    StopRequested,
    TaskFinished,
    TaskLost,
    TaskRequeued,
    TasksSubmitted,
    TaskStarted,
    Tick,
    WarmWorkers,
)
from pilotfish.backends import registry
from pilotfish.messages import TaskSpec, TaskUpdate
from pilotfish.partitions import Partition
from pilotfish.routing import RoutingPolicy
from pilotfish.scheduler import Dequeued, Scheduler
from pilotfish.states import TaskState, is_stale

DONE, FAILED, CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class ToA(RoutingPolicy):
    """Every task that partition "a" can run goes there."""

    def choose(self, traits, able, load):  # type: ignore[no-untyped-def]
        return next((p for p in able if p.name == "a"), able[0])


def make_core(*partitions: tuple[str, str, int], cores: int = 2, workers: int = 1,
              router: RoutingPolicy | None = None) -> tuple[AgentCore, FakeClock]:
    """A core over partitions (name, backend, nodes) of `cores`-core nodes."""
    clock = FakeClock()
    setups, first = [], 0
    for name, backend, nodes in partitions or (("builtin", "builtin", 1),):
        sched = Scheduler(nodes, cores, 0, workers)
        setups.append(PartitionSetup(Partition(name, backend, first, nodes), sched,
                                     registry.get(backend).abilities))
        first += nodes
    return AgentCore(setups, router or RoutingPolicy(), clock=clock, monotonic=clock), clock


def exe(uid: str, **fields: object) -> TaskSpec:
    return TaskSpec(uid, "executable", "/bin/true", **fields)  # type: ignore[arg-type]


def fn(uid: str, **fields: object) -> TaskSpec:
    return TaskSpec(uid, "function", function_key="k", **fields)  # type: ignore[arg-type]


def of(kind: type, actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if type(a) is kind]


def launched(actions: Sequence[Action], partition: str | None = None) -> list[str]:
    return [t.spec.uid for a in actions if isinstance(a, LaunchTasks)
            and partition in (None, a.partition) for t in a.tasks]


def updates(actions: Sequence[Action]) -> dict[str, TaskUpdate]:
    return {u.uid: u for a in actions if isinstance(a, SendUpdates) for u in a.updates}


def done(uid: str, clock: FakeClock, state: TaskState = DONE, **fields: object) -> TaskFinished:
    return TaskFinished(uid, state, clock.t - 1, clock.t, **fields)  # type: ignore[arg-type]


def test_a_task_is_accepted_launched_and_reported_once_it_ends() -> None:
    core, clock = make_core()
    submitted = TasksSubmitted([exe("a")])
    acts = core.handle(submitted)
    assert acts == [SendAccepted(["a"], clock.t, submitted), acts[1]]
    launch = acts[1]
    assert isinstance(launch, LaunchTasks) and launch.partition == "builtin"
    assert launched(acts) == ["a"] and launch.cause is submitted  # every action: its cause
    assert core.handle(TaskStarted("a", clock.t, pid=42)) == []  # progress is held back
    ended = done("a", clock, exit_code=0)
    assert core.handle(ended) == []  # final updates wait for the shell to catch up ...
    acts = core.handle(CaughtUp())
    assert [type(a) for a in acts] == [SendUpdates]
    update = updates(acts)["a"]
    assert update.state == "DONE" and update.exit_code == 0 and update.pid == 42
    assert [e for e, _ in update.events] == ["SCHEDULED", "RUNNING", "exec_stop"]
    assert update.partition == "builtin"
    assert core.unfinished == 0 and core.tasks == {}


def test_final_updates_go_after_the_flush_interval_without_catching_up() -> None:
    core, clock = make_core()
    core.handle(TasksSubmitted([exe("a")]))
    assert core.handle(done("a", clock)) == []
    due = core.next_due()
    assert due is not None and due <= clock.t + FLUSH_INTERVAL
    clock.t += FLUSH_INTERVAL * 1.01
    assert list(updates(core.handle(Tick()))) == ["a"]
    assert core.next_due() is None


def test_progress_goes_only_for_tasks_that_linger() -> None:
    core, clock = make_core(cores=1)
    core.handle(TasksSubmitted([exe("a"), exe("b")]))  # b waits for a's core
    core.handle(TaskStarted("a", clock.t))
    assert core.handle(CaughtUp()) == []  # nothing lingered yet
    clock.t += PROGRESS_INTERVAL * 1.01
    acts = core.handle(Tick())
    assert {u: x.state for u, x in updates(acts).items()} == {"a": "RUNNING"}
    assert core.tasks["b"].state is TaskState.SUBMITTED
    acts = core.handle(done("a", clock))
    assert launched(acts) == ["b"]  # a's core freed: b placed at once, in the same round


def test_cancel_dequeues_what_waits_and_asks_the_backend_for_what_runs() -> None:
    core, clock = make_core(cores=1)
    core.handle(TasksSubmitted([exe("running"), exe("queued")]))
    cancel = CancelRequested(["running", "queued", "unknown"])
    acts = core.handle(cancel)
    assert of(CancelTasks, acts) == [CancelTasks("builtin", ["running"], cancel)]
    acts = core.handle(CaughtUp())
    assert updates(acts)["queued"].state == "CANCELED"
    acts = core.handle(done("running", clock, CANCELED, error="canceled"), CaughtUp())
    assert updates(acts)["running"].state == "CANCELED"
    assert launched(acts) == []


def test_release_gives_back_only_what_is_still_queued() -> None:
    """Late binding across pilots: the client asks tasks back; those placed stay."""
    core, clock = make_core(cores=1)
    core.handle(TasksSubmitted([exe("running"), exe("queued"), exe("kept")]))
    release = ReleaseRequested(["running", "queued", "unknown"])
    acts = core.handle(release)
    assert of(SendReleased, acts) == [SendReleased(["queued"], clock.t, release)]
    assert set(core.tasks) == {"running", "kept"} and core.unfinished == 2
    acts = core.handle(done("running", clock), CaughtUp())
    assert launched(acts) == ["kept"]  # "queued" left: it is never placed here
    assert set(updates(acts)) == {"running"}


def test_a_task_waits_outside_the_scheduler_for_its_inputs() -> None:
    core, clock = make_core(cores=2, workers=2)
    acts = core.handle(TasksSubmitted([fn("a"), fn("b", after=["a"], inputs={"a": None}),
                                       exe("c", after=["a"]), exe("d", after=["a"])]))
    dispatched = [t.spec.uid for a in of(DispatchTasks, acts) for t in a.tasks]  # type: ignore[attr-defined]
    assert dispatched == ["a"] and launched(acts) == []  # b, c, d wait (cores are free)
    core.handle(CancelRequested(["d"]))  # in no scheduler: it ends at once
    acts = core.handle(done("a", clock, result=b"\x80\x04K*."))
    dispatched = [t for a in of(DispatchTasks, acts) for t in a.tasks]  # type: ignore[attr-defined]
    assert [t.spec.uid for t in dispatched] == ["b"] and launched(acts) == ["c"]
    assert dispatched[0].spec.inputs == {"a": b"\x80\x04K*."}  # a's result, filled in
    acts = core.handle(CaughtUp())
    assert updates(acts)["d"].state == "CANCELED"


def test_workers_start_early_for_function_tasks_that_wait_for_inputs() -> None:
    """While calls wait for their inputs, the workers they will be fed to start (in the
    order the scheduler leases them), once each; an executable that waits warms none."""
    core, clock = make_core(("builtin", "builtin", 3), cores=4, workers=4)
    acts = core.handle(TasksSubmitted([exe("gate"),
                                       *[fn(f"f{k}", after=["gate"]) for k in range(5)]]))
    (warm,) = of(WarmWorkers, acts)
    assert warm.partition == "builtin"  # type: ignore[attr-defined]
    assert warm.workers == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 1)]  # type: ignore[attr-defined]
    acts = core.handle(TasksSubmitted([fn(f"g{k}", after=["gate"]) for k in range(2)]))
    (more,) = of(WarmWorkers, acts)
    assert more.workers == [(5, 1), (6, 1)]  # type: ignore[attr-defined]
    assert of(WarmWorkers, core.handle(TasksSubmitted([exe("x", after=["gate"])]))) == []
    acts = core.handle(done("gate", clock))
    fed = {t.worker for a in of(DispatchTasks, acts) for t in a.tasks}  # type: ignore[attr-defined]
    assert len(fed) == 7 and len(fed - {0, 1, 2, 3, 4, 5, 6}) <= 1  # (x took a core)


def test_late_results_of_ended_tasks_are_ignored() -> None:
    core, clock = make_core()
    core.handle(TasksSubmitted([exe("a")]))
    core.handle(StopRequested("bye"))
    assert core.handle(done("a", clock), TaskStarted("a", clock.t), TaskRequeued("a")) == []


def test_plain_functions_are_dispatched_to_workers() -> None:
    core, _ = make_core(cores=2, workers=2)
    acts = core.handle(TasksSubmitted([fn("f"), fn("big", cores_per_rank=2)]))
    dispatches = of(DispatchTasks, acts)
    assert [t.spec.uid for a in dispatches for t in a.tasks] == ["f"]  # type: ignore[attr-defined]
    assert launched(acts) == []  # "big" needs both cores: it waits for f's worker's core


def test_a_worker_lost_before_its_task_started_gets_it_placed_again() -> None:
    core, _ = make_core(workers=1)
    core.handle(TasksSubmitted([fn("f")]))
    requeued = TaskRequeued("f")
    acts = core.handle(requeued)
    assert [t.spec.uid for a in of(DispatchTasks, acts) for t in a.tasks] == ["f"]  # type: ignore[attr-defined]
    assert all(a.cause is requeued for a in of(DispatchTasks, acts))  # type: ignore[attr-defined]


def test_a_task_no_partition_can_run_fails_at_once_with_why() -> None:
    core, _ = make_core(("flux", "flux", 1), ("dragon", "dragon", 1))
    acts = core.handle(TasksSubmitted([exe("half", gpus_per_rank=0.5),
                                       exe("pinned", partition="nowhere")]), CaughtUp())
    ups = updates(acts)
    assert ups["half"].state == "FAILED" and "cannot share a GPU" in (ups["half"].error or "")
    assert "no partition 'nowhere'" in (ups["pinned"].error or "")
    assert ups["half"].partition is None  # it ran nowhere


def test_routing_sends_each_kind_where_it_runs_best() -> None:
    core, _ = make_core(("flux", "flux", 1), ("dragon", "dragon", 1), ("builtin", "builtin", 1),
                        cores=4)
    acts = core.handle(TasksSubmitted([exe("mpi", ranks=2), fn("f", cores_per_rank=2),
                                       exe("single")]))
    assert launched(acts, "flux") == ["mpi"]
    assert launched(acts, "dragon") == ["f"]
    assert launched(acts, "builtin") == ["single"]  # flux is busier (per core) by then


def test_a_lost_partitions_tasks_move_if_they_may_retry_else_fail() -> None:
    # Executables go to the built-in partition "a" first; Dragon's "b" takes them only
    # when nothing else can (and late binding never moves them there).
    core, clock = make_core(("a", "builtin", 1), ("b", "dragon", 1), cores=4)
    core.handle(TasksSubmitted([exe("keep", partition="a"), exe("retry", retries=1),
                                exe("once")]))
    assert {t.part.name for t in core.tasks.values()} == {"a"}
    core.handle(TaskStarted("keep", clock.t), TaskStarted("retry", clock.t))
    lost = PartitionLost("a", "runtime died")
    acts = core.handle(lost, CaughtUp())
    ups = updates(acts)
    assert ups["keep"].state == ups["once"].state == "FAILED"
    assert ups["keep"].error == "partition 'a' lost: runtime died"
    assert launched(acts, "b") == ["retry"]  # placed again elsewhere, from the start
    assert all(a.cause is lost for a in of(LaunchTasks, acts))  # type: ignore[attr-defined]
    assert "retry" not in ups or ups["retry"].state == "SUBMITTED"
    assert [e for e, _ in core.tasks["retry"].events][-2:] == ["requeued", "SCHEDULED"]
    # Lost again: its one retry is spent.
    core.handle(PartitionLost("a", "again"))  # (a partition is lost once)
    acts = core.handle(PartitionLost("b", "runtime died too"), CaughtUp())
    assert updates(acts)["retry"].error == "partition 'b' lost: runtime died too"
    # A task pinned to a lost partition later says so.
    acts = core.handle(TasksSubmitted([exe("late", partition="a")]), CaughtUp())
    assert updates(acts)["late"].error == "no partition for it: partition 'a' lost: runtime died"


def test_queued_tasks_of_a_lost_partition_move_too() -> None:
    core, _ = make_core(("a", "builtin", 1), ("b", "dragon", 1), cores=1)
    core.handle(TasksSubmitted([exe("running", partition="a"), exe("queued", retries=1)]))
    assert core.tasks["queued"].state is TaskState.SUBMITTED  # waiting for a's core
    acts = core.handle(PartitionLost("a", "gone"), CaughtUp())
    assert updates(acts)["running"].state == "FAILED"
    assert launched(acts, "b") == ["queued"]


def test_every_partition_lost_says_so() -> None:
    core, _ = make_core(("a", "builtin", 1))
    core.handle(PartitionLost("a", "crashed"))
    acts = core.handle(TasksSubmitted([exe("x")]), CaughtUp())
    assert updates(acts)["x"].error == "no partition for it: every partition was lost: " \
        "'a': crashed"


def test_an_idle_partition_takes_queued_work_from_a_backlogged_one() -> None:
    core, clock = make_core(("a", "builtin", 1), ("b", "builtin", 1), cores=1, router=ToA())
    acts = core.handle(TasksSubmitted([exe(f"t{i}") for i in range(6)]))
    assert launched(acts, "a") == ["t0"]
    assert launched(acts, "b") == ["t5"]  # the newest queued ones move (half, at most)
    assert [u for u, t in core.tasks.items() if t.part.name == "b"] == ["t4", "t5"]
    # The next look comes after BALANCE_INTERVAL, not before.
    assert launched(core.handle(done("t5", clock))) == ["t4"]  # b's own queue first
    clock.t += BALANCE_INTERVAL * 1.01
    acts = core.handle(done("t4", clock))
    assert launched(acts, "b") == ["t3"]


def test_pinned_tasks_stay_where_they_were_pinned() -> None:
    core, clock = make_core(("a", "builtin", 1), ("b", "builtin", 1), cores=1)
    acts = core.handle(TasksSubmitted([exe(f"p{i}", partition="a") for i in range(4)]))
    clock.t += BALANCE_INTERVAL * 1.01
    acts += core.handle(Tick())
    assert launched(acts, "b") == []
    assert all(t.part.name == "a" for t in core.tasks.values())


def test_a_stop_ends_every_unfinished_task_and_launches_nothing() -> None:
    core, clock = make_core(cores=1)
    core.handle(TasksSubmitted([exe("running"), exe("queued")]))
    stop = StopRequested("shutdown requested", canceled=True)
    acts = core.handle(stop, done("running", clock))  # its end arrived with the stop
    assert launched(acts) == []  # queued's freed core is not given out any more
    ups = updates(acts)
    assert ups["running"].state == "DONE"
    assert ups["queued"].state == "CANCELED"
    assert ups["queued"].error == "pilot stopped: shutdown requested"
    assert all(a.cause is stop for a in acts)  # type: ignore[union-attr]
    acts = core.handle(TasksSubmitted([exe("after")]))
    assert launched(acts) == [] and updates(acts)["after"].state == "CANCELED"


def test_resent_tasks_are_taken_once() -> None:
    core, _ = make_core()
    core.handle(TasksSubmitted([exe("a")]))
    acts = core.handle(TasksSubmitted([exe("a")]))
    assert acts == [SendAccepted([], acts[0].ts, acts[0].cause)]  # type: ignore[union-attr]


def test_events_and_actions_of_different_kinds_never_compare_equal() -> None:
    assert Dequeued("a") != TaskRequeued("a")
    assert CaughtUp() != Tick()
    assert LaunchTasks("p", [], Tick()) != DispatchTasks("p", [], Tick())


def test_the_core_refuses_what_it_does_not_know() -> None:
    core, _ = make_core()
    with pytest.raises(TypeError, match="takes no"):
        core.handle("submit")  # type: ignore[arg-type]


def test_a_task_lost_with_what_ran_it_runs_again_if_its_retries_allow() -> None:
    core, clock = make_core(cores=1)
    core.handle(TasksSubmitted([exe("once"), exe("twice", retries=1)]))
    core.handle(TaskStarted("once", clock.t))
    lost = TaskLost("once", "its node executor died")
    acts = core.handle(lost, CaughtUp())
    assert updates(acts)["once"].error == "its node executor died"
    assert launched(acts) == ["twice"]  # the freed core goes to the next task
    acts = core.handle(TaskStarted("twice", clock.t), TaskLost("twice", "died"))
    assert launched(acts) == ["twice"]  # again, from the start
    assert [e for e, _ in core.tasks["twice"].events][-2:] == ["requeued", "SCHEDULED"]
    acts = core.handle(TaskLost("twice", "died again"), CaughtUp())
    assert updates(acts)["twice"].error == "died again"  # its one retry is spent


def test_a_task_seen_running_then_requeued_says_so_before_its_new_progress() -> None:
    """The client saw it RUNNING: a SCHEDULED update would be stale there, and dropped with
    its `requeued` event; it first hears the move back to SUBMITTED (found by the
    function workers' fault test: a task that ran twice had `attempt` 1)."""
    core, clock = make_core(cores=1)
    core.handle(TasksSubmitted([exe("t", retries=1)]))
    core.handle(TaskStarted("t", clock.t))
    clock.t += PROGRESS_INTERVAL * 1.01
    assert updates(core.handle(Tick()))["t"].state == "RUNNING"  # the client saw it
    core.handle(TaskLost("t", "its worker died"))  # placed again at once: SCHEDULED
    clock.t += PROGRESS_INTERVAL * 1.01
    sent = [u for a in core.handle(Tick()) if isinstance(a, SendUpdates) for u in a.updates]
    assert [(u.state, [e for e, _ in u.events]) for u in sent] == [
        ("SUBMITTED", ["requeued"]), ("SCHEDULED", ["SCHEDULED"])]
    seen = TaskState.RUNNING
    for u in sent:  # as the client applies them
        assert not is_stale(seen, TaskState(u.state))
        seen = TaskState(u.state)


def test_a_lost_node_takes_no_more_tasks() -> None:
    core, clock = make_core(("a", "builtin", 2), cores=1)
    acts = core.handle(TasksSubmitted([exe("x"), exe("y"), exe("z"),
                                       exe("wide", ranks=2, ranks_per_node=1)]))
    node_of = {t.spec.uid: t.slot.nodes[0] for a in of(LaunchTasks, acts)
               for t in a.tasks}  # type: ignore[attr-defined]
    assert sorted(node_of.values()) == [0, 1]
    acts = core.handle(NodeLost("a", 1, "its executor died"), CaughtUp())
    wide = updates(acts)["wide"]
    assert "can never fit any more (node 1 lost)" in (wide.error or "")
    # The backend reports the node's task lost; its core is not given out again.
    on_one = next(u for u, n in node_of.items() if n == 1)
    assert launched(core.handle(TaskLost(on_one, "node 1 lost"))) == []
    on_zero = next(u for u, n in node_of.items() if n == 0)
    assert launched(core.handle(done(on_zero, clock))) == ["z"]


def test_a_lost_task_that_no_longer_fits_its_partition_moves_or_fails() -> None:
    core, _ = make_core(("a", "builtin", 2), ("b", "builtin", 2), cores=1, router=ToA())
    wide = {"ranks": 2, "ranks_per_node": 1, "retries": 1}
    core.handle(TasksSubmitted([exe("moves", **wide)]))
    assert core.tasks["moves"].part.name == "a"
    core.handle(NodeLost("a", 1, "its executor died"))
    acts = core.handle(TaskLost("moves", "node 1 lost"))
    assert launched(acts, "b") == ["moves"]  # a has one node left: b runs it
    core, _ = make_core(("a", "builtin", 2), cores=1)
    core.handle(TasksSubmitted([exe("fails", **wide)]))
    core.handle(NodeLost("a", 1, "its executor died"))
    acts = core.handle(TaskLost("fails", "node 1 lost"), CaughtUp())
    assert updates(acts)["fails"].error == (
        "node 1 lost; cannot run again: no partition can run it: a (builtin) needs 2 nodes "
        "(2 ranks, 1 per node), there are 1")
