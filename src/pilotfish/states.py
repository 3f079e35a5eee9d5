"""Task states and the one table of legal moves between them.

Finer points of a task's life (launch, exec start, exec stop) are events with timestamps,
not states; only the coarse states below are tracked and checked.
"""

from __future__ import annotations

import enum


class TaskState(enum.StrEnum):
    NEW = "NEW"
    SUBMITTED = "SUBMITTED"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    READY = "READY"  # a service whose readiness check passed
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.CANCELED})
# A pilot's states before it ends (then DONE, FAILED or CANCELED), as journaled.
PILOT_LIVE_STATES = ("STARTING", "PENDING", "ACTIVE")

_ORDER = {s: i for i, s in enumerate(TaskState)}

# Legal forward moves. Any non-final state may end in FAILED or CANCELED; a task may skip
# intermediate states (a fast task can be reported SUBMITTED -> DONE in one update).
_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.NEW: frozenset(
        {TaskState.SUBMITTED, TaskState.SCHEDULED, TaskState.RUNNING, TaskState.READY,
         *FINAL_STATES}
    ),
    TaskState.SUBMITTED: frozenset({TaskState.SCHEDULED, TaskState.RUNNING, TaskState.READY,
                                    *FINAL_STATES}),
    # A placed task may go back to the queue when its worker is lost before it started.
    TaskState.SCHEDULED: frozenset({TaskState.SUBMITTED, TaskState.RUNNING, TaskState.READY,
                                    *FINAL_STATES}),
    # ... and a running one when its partition's runtime died and it may retry elsewhere.
    TaskState.RUNNING: frozenset({TaskState.SUBMITTED, TaskState.READY, *FINAL_STATES}),
    # A service stays READY until it ends, or goes back to the queue to be restarted.
    TaskState.READY: frozenset({TaskState.SUBMITTED, *FINAL_STATES}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.CANCELED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A core bug: a state move that the transition table forbids."""

    def __init__(self, uid: str, old: TaskState, new: TaskState) -> None:
        super().__init__(f"{uid}: illegal transition {old} -> {new}")
        self.uid, self.old, self.new = uid, old, new


def is_legal(old: TaskState, new: TaskState) -> bool:
    return new in _TRANSITIONS[old]


def check_transition(uid: str, old: TaskState, new: TaskState) -> None:
    """Raise `InvalidTransition` unless `old -> new` is in the table."""
    if new not in _TRANSITIONS[old]:
        raise InvalidTransition(uid, old, new)


def is_stale(old: TaskState, new: TaskState) -> bool:
    """True for an update from the wire that is repeated or behind what we know.

    Such updates are dropped (and counted), not raised: messages may be reordered or
    replayed, and a final state must stay final.
    """
    return old.final or new is old or (_ORDER[new] < _ORDER[old] and not is_legal(old, new))
