"""Tasks that change pilot: queued ones to pilots with room, stopped ones to live pilots.

Two ways a task leaves the pilot it was sent to, both the client's doing (no agent
talks to another):

- Late binding across pilots: when a pilot has room (it is new, or its tasks ended) and
  another a backlog, `moves.plan_moves` picks tasks; the backlogged agent is asked to
  give them back (`Release`, one request per pilot at a time) and answers with those it
  had not placed (`Released`); they are submitted to their new pilot.
- Retries across pilots: a task its pilot's end stopped (the pilot was canceled, lost,
  or ran out of time) goes to another live pilot it fits while its `retries` allow, as
  a task of a lost partition does inside a pilot; an event `requeued` counts the attempt.

Tasks submitted with `pilot=`, and simulated pilots (their own clocks), never move.
Methods run on the session's channel thread, except `cancel_requested`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from . import messages as m
from .description import PilotDescription, TaskDescription
from .journal import Journal
from .moves import Candidate, PilotLoad, plan_moves
from .pilot import Pilot
from .states import TaskState
from .task import Task

STOPPED = "pilot stopped"  # how the agent's updates begin for tasks its stop ended


class Relocator:
    """The session's pilots and unfinished tasks, shared; `send` reaches an agent,
    `end_tasks` ends tasks from the client's side, `closed` says the session is closing."""

    def __init__(self, pilots: dict[str, Pilot], live: dict[str, Task],
                 send: Callable[[str, m.Release | m.Submit], None], journal: Journal,
                 end_tasks: Callable[[list[str], TaskState, str], None],
                 closed: Callable[[], bool]) -> None:
        self.pilots, self.live, self.send, self.journal = pilots, live, send, journal
        self.end_tasks, self.closed = end_tasks, closed
        self._moving: dict[str, str] = {}  # uid asked back -> the pilot it goes to
        self._asked: dict[str, list[str]] = {}  # pilot -> uids asked back from it
        self._canceled: set[str] = set()  # asked back, then canceled by the user
        self._lock = threading.Lock()
        self._nothing_to_move = False  # a look found nothing: until tasks or pilots change

    @property
    def moving(self) -> set[str]:
        """Tasks asked back from their pilot, not yet given back."""
        with self._lock:
            return set(self._moving)

    def changed(self) -> None:
        """Tasks were submitted or a pilot started: the next look may find moves."""
        self._nothing_to_move = False

    # ---- late binding ----------------------------------------------------------------

    def rebalance(self) -> None:
        """Ask pilots with a backlog to give back queued tasks that pilots with room can
        run; `released` moves what comes back."""
        if self._nothing_to_move or self.closed():
            return
        pilots = self._targets()
        if len(pilots) < 2:
            return
        try:
            plan = plan_moves([PilotLoad(p.uid, p.cores, p.load) for p in pilots],
                              self._movable, self._fits)
        except RuntimeError:  # tasks submitted meanwhile (`_live` changed): next time
            return
        if not plan and any(p.load < p.cores for p in pilots) and any(
                p.load > p.cores for p in pilots):
            self._nothing_to_move = True  # nothing fits where there is room
        for source, moves in plan.items():
            with self._lock:
                for uid, target in moves:
                    self._moving[uid] = target
                    self.pilots[target].load += self.live[uid].cores  # on its way there
                self._asked[source] = [uid for uid, _ in moves]
            self.send(source, m.Release([uid for uid, _ in moves]))

    def released(self, source: Pilot, uids: list[str], ts: float) -> None:
        """`source` gave these back: each goes where it was planned to (or, if that pilot
        ended, to the live one with the most room); the others stay at `source`."""
        given = set(uids)
        with self._lock:
            asked = self._asked.pop(source.uid, [])
            plan = {uid: self._moving.pop(uid) for uid in asked if uid in self._moving}
            canceled = self._canceled & given
            self._canceled -= set(asked)
        moves: list[tuple[Task, Pilot]] = []
        for uid, target_uid in plan.items():
            task, target = self.live.get(uid), self.pilots[target_uid]
            if task is None:
                continue  # it ended meanwhile
            target.load -= task.cores  # no longer on its way
            if uid in given and uid not in canceled:
                moves.append((task, target if target in self._targets()
                              else self._roomiest(task, source) or source))
        self._move(source, moves, "released", ts)
        if canceled:
            self.end_tasks(sorted(canceled), TaskState.CANCELED, "canceled")
        self.changed()
        self.rebalance()

    def cancel_requested(self, task: Task) -> None:
        """The user canceled a task (any thread): one on its way ends where it arrives."""
        with self._lock:
            if task.uid in self._moving:
                self._canceled.add(task.uid)

    def pilot_ended(self, pilot: Pilot) -> None:
        """What was asked back from an ended pilot ended with it: its room is free."""
        with self._lock:
            for uid in self._asked.pop(pilot.uid, []):
                target = self._moving.pop(uid, None)
                if target is not None and (task := self.live.get(uid)) is not None:
                    self.pilots[target].load -= task.cores

    # ---- retries ---------------------------------------------------------------------

    def may_retry(self, task: Task, error: str | None) -> bool:
        """Whether a task its pilot's end stopped (`error` says so) goes to another pilot."""
        source = self.pilots[task.pilot]
        return (error is not None and error.startswith(STOPPED)
                and source._canceling is not None and self._retryable(task, source)
                and self._roomiest(task, source) is not None)

    def retry(self, tasks: list[Task], source: Pilot) -> list[Task]:
        """Send the tasks whose retries allow to other live pilots ("requeued"); return
        the others."""
        moves, rest = [], []
        for task in tasks:
            target = self._roomiest(task, source) if self._retryable(task, source) else None
            if target is None:
                rest.append(task)
            else:
                moves.append((task, target))
                target.load += task.cores  # counted as it goes: the next finds less room
        for task, target in moves:
            target.load -= task.cores  # (`_move` counts it for good)
        self._move(source, moves, "requeued", time.time())
        return rest

    def _retryable(self, task: Task, source: Pilot) -> bool:
        d = task.description
        return (d is not None and not task.pinned and task.attempt <= d.retries
                and not d.depends_on and source.movable and not self.closed())

    # ---- helpers ---------------------------------------------------------------------

    def _targets(self) -> list[Pilot]:
        """Pilots tasks may go to: live, not ending, not simulated."""
        return [p for p in self.pilots.values()
                if p.active and p.movable and p._canceling is None and not p._ended]

    def _roomiest(self, task: Task, source: Pilot) -> Pilot | None:
        d = task.description
        able = [p for p in self._targets() if p is not source and d is not None
                and fits(d, p.description)]
        return max(able, key=lambda p: p.cores - p.load, default=None)

    def _movable(self, pilot_uid: str) -> Iterator[Candidate]:
        """A pilot's tasks that may move, newest first: queued as far as the client knows,
        not pinned to it, not on their way already."""
        if pilot_uid in self._asked:
            return
        for task in reversed(self.live.values()):
            d = task.description
            if (task.pilot == pilot_uid and task.state is TaskState.SUBMITTED
                    and not task.pinned and d is not None and not d.depends_on
                    and task.uid not in self._moving):
                yield Candidate(task.uid, task.cores)

    def _fits(self, uid: str, pilot_uid: str) -> bool:
        d = self.live[uid].description
        return d is not None and fits(d, self.pilots[pilot_uid].description)

    def _move(self, source: Pilot, moves: list[tuple[Task, Pilot]], event: str,
              ts: float) -> None:
        """Hand tasks to their new pilots: counts, journal, one message per pilot."""
        specs: dict[str, list[m.TaskSpec]] = {}
        functions: dict[str, dict[str, bytes]] = {}
        rows = []
        for task, target in moves:
            d = task.description
            assert d is not None
            source.outstanding -= 1
            source.load -= task.cores
            target.outstanding += 1
            target.load += task.cores
            task.pilot, task.state = target.uid, TaskState.NEW
            task.events.append((event, ts))
            rows.append((target.uid, task.id))
            specs.setdefault(target.uid, []).append(d.to_spec(task.uid))
            if d.function_key is not None and d.function_blob is not None:
                functions.setdefault(target.uid, {})[d.function_key] = d.function_blob
        self.journal.move_tasks(rows)
        for target_uid, sent in specs.items():
            self.send(target_uid, m.Submit(sent, functions.get(target_uid, {})))


def fits(d: TaskDescription, pilot: PilotDescription) -> bool:
    """Whether a task could ever run on a pilot of this shape (cores, GPUs, nodes, the
    partition it names); the agent says exactly why not where it cannot."""
    assert pilot.cores_per_node and pilot.gpus_per_node is not None and pilot.nodes
    if d.partition is not None and d.partition not in {p.name for p in pilot.layout}:
        return False
    per_node = pilot.cores_per_node // d.cores_per_rank
    if d.gpus_per_rank:
        per_node = min(per_node, int(pilot.gpus_per_node / d.gpus_per_rank))
    return per_node >= 1 and d.ranks <= per_node * pilot.nodes
