"""Tasks waiting for tasks of the same pilot (agent/waiting.py, pure)."""

from __future__ import annotations

import pickle

import pytest

from pilotfish.agent.waiting import Verdict, Waiting
from pilotfish.states import TaskState

DONE, FAILED, CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED


def test_a_task_waits_for_every_input_then_goes() -> None:
    w = Waiting()
    assert w.add("c", ["a", "b"], {"a", "b"}) is None
    assert w.end("a", DONE, None, b"ra", None) == []
    assert w.end("b", DONE, None, None, 0) == [Verdict("c", True)]
    assert w.result("a") == b"ra" and pickle.loads(w.result("b")) == 0  # an exit code
    assert w.blocked == {} and w.dependents == {}


def test_a_failed_or_canceled_input_ends_its_waiters_once() -> None:
    w = Waiting()
    w.add("c", ["a", "b"], {"a", "b"})
    w.add("d", ["b"], {"b"})
    assert w.end("a", FAILED, "Traceback\nValueError: no", None, None) == [
        Verdict("c", False, FAILED, "input a failed: ValueError: no")]
    assert w.end("b", CANCELED, "canceled", None, None) == [
        Verdict("d", False, CANCELED, "input b was canceled")]  # c: ended already


def test_inputs_that_ended_or_are_unknown_give_a_verdict_at_once() -> None:
    w = Waiting()
    w.end("a", DONE, None, b"r", None)
    w.end("f", FAILED, None, None, 1)
    assert w.add("x", ["a"], set()) == Verdict("x", True)
    assert w.add("y", ["a", "f"], set()) == Verdict("y", False, FAILED, "input f failed")
    verdict = w.add("z", ["gone"], set())
    assert verdict is not None and not verdict.ready and "not a task of this pilot" in (
        verdict.why or "")


def test_outcomes_are_kept_until_the_client_has_seen_them() -> None:
    w = Waiting()
    for uid in "abc":
        w.end(uid, DONE, None, uid.encode(), None)
    w.sent(["a", "b"])  # c ended, its final update not sent yet
    w.seen(1)
    assert set(w.ended) == {"b", "c"}
    w.heartbeat(2)  # a heartbeat's count is used at the next one (a second later)
    assert set(w.ended) == {"b", "c"}
    w.heartbeat(2)
    assert set(w.ended) == {"c"}
    with pytest.raises(KeyError):
        w.result("a")


def test_tasks_naming_a_group_wait_for_its_inputs_held_once() -> None:
    """A shared `after` comes as a group: its inputs are held once, not once a task."""
    w = Waiting()
    inputs = [f"i{k}" for k in range(100)]
    w.add_group("g", inputs, set(inputs))
    for k in range(50):
        assert w.add(f"t{k}", ["g"], set(inputs)) is None
    assert sum(len(d) for d in w.dependents.values()) == 100 + 50  # not 50 x 100
    verdicts = [v for name in inputs for v in w.end(name, DONE, None, None, 0)]
    assert sorted(verdicts) == sorted(Verdict(f"t{k}", True) for k in range(50))
    assert w.blocked == {} and w.dependents == {}
    assert w.add("late", ["g"], set()) == Verdict("late", True)  # (a later chunk's task)


def test_a_groups_broken_input_ends_its_tasks_naming_that_input() -> None:
    w = Waiting()
    w.add_group("g", ["a", "b"], {"a", "b"})
    w.add("t1", ["g"], {"a", "b"})
    w.add("t2", ["g"], {"a", "b"})
    w.end("t2", CANCELED, "canceled", None, None)  # (canceled while it waited)
    assert w.end("a", FAILED, "Traceback\nOSError: disk", None, None) == [
        Verdict("t1", False, FAILED, "input a failed: OSError: disk")]
    assert w.add("late", ["g"], {"b"}) == Verdict("late", False, FAILED,
                                                  "input a failed: OSError: disk")
    assert w.end("b", DONE, None, None, 0) == []


def test_a_group_whose_inputs_ended_already_gives_its_tasks_a_verdict_at_once() -> None:
    w = Waiting()
    w.end("a", DONE, None, None, 0)
    w.add_group("g", ["a"], set())
    assert w.add("t", ["g"], set()) == Verdict("t", True)
    w.end("f", CANCELED, "canceled", None, None)
    w.add_group("h", ["a", "f"], set())
    assert w.add("u", ["h"], set()) == Verdict("u", False, CANCELED, "input f was canceled")


def test_an_arguments_result_is_kept_for_its_task_though_the_client_saw_it_end() -> None:
    """The client's count of finals forgets ended outcomes; a task still waiting keeps
    the results it takes as arguments, from those that ended before it arrived too."""
    w = Waiting()
    w.end("early", DONE, None, b"e", None)
    w.sent(["early"])
    assert w.add("c", ["early", "a", "b"], {"a", "b"}, arguments=["early", "a"]) is None
    w.end("a", DONE, None, b"ra", None)
    w.sent(["a"])
    w.seen(2)  # both outcomes forgotten
    assert "a" not in w.ended and "early" not in w.ended
    assert w.end("b", DONE, None, b"rb", None) == [Verdict("c", True)]
    assert w.results("c") == {"early": b"e", "a": b"ra"}  # (not b's: an `after` only)
    assert w.results("c") == {}


def test_a_waiting_task_that_ends_drops_what_it_kept() -> None:
    w = Waiting()
    w.add("c", ["a", "b"], {"a", "b"}, arguments=["a", "b"])
    w.end("a", DONE, None, b"ra", None)
    w.end("c", CANCELED, "canceled", None, None)
    assert w.results("c") == {}
    w.add("d", ["x", "y"], {"x", "y"}, arguments=["x"])
    w.end("x", DONE, None, b"rx", None)
    w.end("y", FAILED, "boom", None, None)
    assert w.results("d") == {}
