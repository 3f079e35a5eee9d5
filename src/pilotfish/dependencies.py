"""Task dependencies as the client sees them: what the agent resolves, what it does.

A task waits for the tasks in its `after` and for those among its function's arguments
(each stands for its result). For the pilot a task goes to, each such input is:

- unfinished on that pilot: its agent waits for it and fills in its result, without a
  round trip through the client (agent/waiting.py);
- DONE already: its result goes with the task (pickled here);
- FAILED or CANCELED: the task ends at once, the same way, naming that input;
- unfinished on another pilot (or moving between pilots): the client holds the task
  until every input has ended, then sends it with their results (`Held`).

A task can only name tasks submitted before it: there are no cycles.
"""

from __future__ import annotations

import pickle
from collections.abc import Container
from typing import NamedTuple

import cloudpickle

from .description import TaskDescription
from .states import TaskState
from .task import Task

DONE, FAILED, CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED


class Plan(NamedTuple):
    after: list[str]  # for the agent to wait for
    inputs: dict[str, bytes | None]  # results (None: the agent's to fill in)
    waits_for: list[Task]  # unfinished elsewhere: the client holds the task
    ends: tuple[TaskState, str] | None  # an input failed or was canceled


def plan(d: TaskDescription, pilot: str, moving: Container[str]) -> Plan:
    """Where each of a task's inputs stands, for a task going to `pilot`."""
    after: list[str] = []
    inputs: dict[str, bytes | None] = {}
    waits_for: list[Task] = []
    arguments = {t.uid for t in d.inputs}
    for t in d.depends_on:
        if t.state is DONE:
            if t.uid in arguments:
                blob = result_blob(t)
                if blob is None:
                    return Plan([], {}, [], (FAILED, f"input {t.uid}: its result cannot be "
                                                     "pickled for this task"))
                inputs[t.uid] = blob
        elif t.state.final:
            return Plan([], {}, [], ended_input(t))
        elif t.description is not None and t.description.service is not None and (
                t.pilot != pilot):
            return Plan([], {}, [], (FAILED, f"input {t.uid} is a service of {t.pilot}: a "
                                             "task naming it runs on the same pilot"))
        elif t.pilot == pilot and t.uid not in moving:
            after.append(t.uid)
            if t.uid in arguments:
                inputs[t.uid] = None
        else:
            waits_for.append(t)
    return Plan(after, inputs, waits_for, None)


def ended_input(t: Task) -> tuple[TaskState, str]:
    """How a task ends when its input `t` ended without DONE (as the agent says it)."""
    if t.state is CANCELED:
        return CANCELED, f"input {t.uid} was canceled"
    lines = (t.error or "").strip().splitlines()
    return FAILED, f"input {t.uid} failed" + (f": {lines[-1]}" if lines else "")


def result_blob(t: Task) -> bytes | None:
    """A DONE task's result pickled for another task (an executable's: its exit code)."""
    value = t.exit_code if t.kind == "executable" else t._result
    for dumps in (pickle.dumps, cloudpickle.dumps):
        try:
            return dumps(value, protocol=pickle.HIGHEST_PROTOCOL)  # type: ignore[no-any-return]
        except Exception:
            pass
    return None


class Held:
    """Tasks the client holds until their inputs on other pilots have ended."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Task, set[str]]] = {}  # task -> inputs unfinished
        self._by_input: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(self, task: Task, inputs: list[Task]) -> None:
        self._waiting[task.uid] = (task, {t.uid for t in inputs})
        for t in inputs:
            self._by_input.setdefault(t.uid, []).append(task.uid)

    def ended(self, uids: list[str]) -> list[Task]:
        """These tasks ended: the held tasks that wait for nothing more now."""
        free = []
        for uid in uids:
            for waiter in self._by_input.pop(uid, ()):
                entry = self._waiting.get(waiter)
                if entry is None:
                    continue
                entry[1].discard(uid)
                if not entry[1]:
                    del self._waiting[waiter]
                    free.append(entry[0])
        return free

    def release(self, uid: str) -> Task | None:
        """Stop holding a task (canceled, or its pilot ended)."""
        entry = self._waiting.pop(uid, None)
        return entry[0] if entry is not None else None
