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
