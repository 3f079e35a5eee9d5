"""The one table of legal state moves, and which updates from the wire are stale."""

from __future__ import annotations

import itertools

import pytest

from pilotfish.states import (
    FINAL_STATES,
    InvalidTransition,
    TaskState,
    check_transition,
    is_legal,
    is_stale,
)

NEW, SUBMITTED, SCHEDULED, RUNNING = (
    TaskState.NEW, TaskState.SUBMITTED, TaskState.SCHEDULED, TaskState.RUNNING
)
DONE, FAILED, CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED
READY = TaskState.READY
FINALS = {DONE, FAILED, CANCELED}

# The whole table, written out: anything not listed is illegal.
LEGAL = {
    NEW: {SUBMITTED, SCHEDULED, RUNNING, READY, *FINALS},
    SUBMITTED: {SCHEDULED, RUNNING, READY, *FINALS},
    SCHEDULED: {SUBMITTED, RUNNING, READY, *FINALS},  # back to the queue: its worker lost
    RUNNING: {SUBMITTED, READY, *FINALS},  # to retry elsewhere: its partition was lost
    READY: {SUBMITTED, *FINALS},  # a service: restarted, or ended
    DONE: set(),
    FAILED: set(),
    CANCELED: set(),
}
ALL_PAIRS = list(itertools.product(TaskState, repeat=2))


def test_final_states() -> None:
    assert FINAL_STATES == FINALS
    assert {s for s in TaskState if s.final} == FINALS
    assert str(RUNNING) == "RUNNING" and TaskState("DONE") is DONE


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=lambda s: s.value)
def test_the_transition_table(old: TaskState, new: TaskState) -> None:
    assert is_legal(old, new) == (new in LEGAL[old])


@pytest.mark.parametrize("old", sorted(FINALS), ids=lambda s: s.value)
@pytest.mark.parametrize("new", list(TaskState), ids=lambda s: s.value)
def test_final_states_stay_final(old: TaskState, new: TaskState) -> None:
    with pytest.raises(InvalidTransition) as info:
        check_transition("t1", old, new)
    assert (info.value.uid, info.value.old, info.value.new) == ("t1", old, new)
    assert str(info.value) == f"t1: illegal transition {old} -> {new}"
    assert is_stale(old, new)


def test_check_transition_passes_legal_moves_and_raises_on_illegal_ones() -> None:
    for old, new in ALL_PAIRS:
        if new in LEGAL[old]:
            check_transition("t", old, new)
        else:
            with pytest.raises(InvalidTransition, match=f"illegal transition {old} -> {new}"):
                check_transition("t", old, new)


def test_an_illegal_move_is_a_bug_not_a_value_error() -> None:
    assert issubclass(InvalidTransition, RuntimeError)
    assert not issubclass(InvalidTransition, ValueError)
    with pytest.raises(InvalidTransition):
        check_transition("t", RUNNING, SCHEDULED)


def test_a_task_can_skip_states_and_end_from_any_live_state() -> None:
    assert is_legal(SUBMITTED, DONE)
    assert is_legal(NEW, RUNNING)
    for old in (NEW, SUBMITTED, SCHEDULED, RUNNING):
        assert is_legal(old, FAILED) and is_legal(old, CANCELED)


@pytest.mark.parametrize("state", list(TaskState), ids=lambda s: s.value)
def test_a_repeated_update_is_stale(state: TaskState) -> None:
    assert is_stale(state, state)


@pytest.mark.parametrize(
    ("old", "new"),
    [(RUNNING, SCHEDULED), (RUNNING, NEW), (SCHEDULED, NEW),
     (SUBMITTED, NEW), (DONE, RUNNING), (FAILED, DONE), (CANCELED, FAILED), (DONE, DONE)],
    ids=str,
)
def test_an_update_behind_what_we_know_is_stale(old: TaskState, new: TaskState) -> None:
    assert is_stale(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [(NEW, SUBMITTED), (SUBMITTED, RUNNING), (SCHEDULED, RUNNING), (RUNNING, DONE),
     (NEW, DONE), (SCHEDULED, SUBMITTED)],
    ids=str,
)
def test_an_update_that_moves_forward_is_not_stale(old: TaskState, new: TaskState) -> None:
    assert not is_stale(old, new)


def test_every_update_is_either_applied_or_dropped_never_raised() -> None:
    """The session applies what is not stale: that must always be a legal move."""
    for old, new in ALL_PAIRS:
        assert is_stale(old, new) != is_legal(old, new), (old, new)
