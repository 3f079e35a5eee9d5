"""Tasks that wait for other tasks of the same pilot (pure: no I/O).

A task with `after` waits, outside every scheduler, until each task it names has ended;
then it is placed (all DONE) or ends at once (one FAILED or CANCELED: so does it, the
reason naming that input). The outcomes of ended tasks are kept until the client says it
has applied their final updates (`seen`): a task it sends before then may name one, and
from then on it resolves such names itself. Results are kept with them: a function's
argument standing for a task's result is filled in from here.

Inputs many tasks share come once, as a group (`Submit.groups`): the group waits for its
names as a task would, and the tasks naming it wait for the group alone, so a stage of
256 tasks after one of 65,536 costs 65,536 entries here, not 16.7 million.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Collection, Container, Iterable
from typing import NamedTuple

from ..states import TaskState

DONE, FAILED, CANCELED = TaskState.DONE, TaskState.FAILED, TaskState.CANCELED
KEEP_RESOLVED = 4096  # groups' verdicts kept for tasks of a later chunk of their submit


class Ended(NamedTuple):
    state: TaskState
    error: str | None
    result: bytes | None  # a function's pickled return value
    exit_code: int | None  # an executable's (its result, as a task's argument)


class Verdict(NamedTuple):
    """A task that waits no more: `ready` to be placed, or ending as `state` with `why`."""

    uid: str
    ready: bool
    state: TaskState = DONE
    why: str | None = None


class Waiting:
    def __init__(self) -> None:
        self.blocked: dict[str, set[str]] = {}  # task -> the inputs it still waits for
        self.dependents: dict[str, list[str]] = {}  # input -> tasks waiting for it
        self.ended: dict[str, Ended] = {}  # outcomes the client may not have seen yet
        self.ready: dict[str, str] = {}  # READY services -> their address
        self._sent: deque[str] = deque()  # ended tasks, in the order their finals left
        self._forgotten = 0  # finals the client has seen: their outcomes are dropped
        self._last_beat = 0  # what the last heartbeat said the client had seen
        self._groups: set[str] = set()  # groups still waiting (each in `blocked` too)
        # Results a waiting task takes as arguments, kept as its inputs end: their
        # outcomes may be forgotten (`seen`) before its last input ends.
        self._wants: dict[str, set[str]] = {}  # task -> inputs whose results it takes
        self._kept: dict[str, dict[str, bytes]] = {}  # task -> those results so far
        self._resolved: dict[str, Verdict] = {}  # the last groups' verdicts, oldest first

    def add_group(self, group: str, names: Iterable[str], live: Container[str]) -> None:
        """Inputs shared by the tasks that will name `group` in their `after`."""
        verdict = self.add(group, names, live)
        if verdict is None:
            self._groups.add(group)
        else:
            self._resolve(verdict)

    def add(self, uid: str, after: Iterable[str], live: Container[str],
            arguments: Collection[str] = ()) -> Verdict | None:
        """A task arrived naming `after`: None while it waits, else its verdict now.
        `arguments`: those of them whose results it takes (`results` gives them)."""
        pending: set[str] = set()
        for name in after:
            ended = self.ended.get(name)
            if ended is not None:
                if ended.state is not DONE:
                    self._forget(uid)
                    return _broken(uid, name, ended)
                if name in arguments:
                    self._kept.setdefault(uid, {})[name] = self.result(name)
            elif name in self.ready:
                continue  # a service, up
            elif name in live or name in self._groups:
                pending.add(name)
            elif name in self._resolved:  # a group whose inputs ended
                verdict = self._resolved[name]
                if not verdict.ready:
                    return Verdict(uid, False, verdict.state, verdict.why)
            else:  # (the client sends only names of this pilot's tasks it saw unfinished)
                return Verdict(uid, False, FAILED, f"input {name} is not a task of this "
                                                   "pilot, or ended too long ago")
        if not pending:
            return Verdict(uid, True)
        if arguments:
            self._wants[uid] = pending.intersection(arguments)
        self.blocked[uid] = pending
        for name in pending:
            self.dependents.setdefault(name, []).append(uid)
        return None

    def end(self, uid: str, state: TaskState, error: str | None, result: bytes | None,
            exit_code: int | None) -> list[Verdict]:
        """A task ended: keep its outcome; return the verdicts of the tasks that waited
        for it and wait for nothing else now (or fail because of it)."""
        ended = self.ended[uid] = Ended(state, error, result, exit_code)
        self._forget(uid)  # (a waiting task that ended: canceled, stopped)
        self.ready.pop(uid, None)
        return self._satisfied(uid, ended if state is not DONE else None)

    def up(self, uid: str, address: str) -> list[Verdict]:
        """A service is READY: the tasks waiting for nothing else now go."""
        self.ready[uid] = address
        return self._satisfied(uid, None)

    def _satisfied(self, uid: str, broken: Ended | None) -> list[Verdict]:
        """The verdicts of the tasks waiting for `uid`, which now counts as there (or,
        `broken`, ends them)."""
        verdicts = []
        for waiter in self.dependents.pop(uid, ()):
            pending = self.blocked.get(waiter)
            if pending is None:
                continue  # it ended already (another input failed, or it was canceled)
            if broken is not None:
                self._forget(waiter)
                verdict = _broken(waiter, uid, broken)
            else:
                if uid in self._wants.get(waiter, ()):
                    self._kept.setdefault(waiter, {})[uid] = self.result(uid)
                pending.discard(uid)
                if pending:
                    continue
                del self.blocked[waiter]
                verdict = Verdict(waiter, True)
            if waiter in self._groups:  # its tasks go (or end) with it
                verdicts += self._resolve(verdict)
            else:
                verdicts.append(verdict)
        return verdicts

    def _resolve(self, verdict: Verdict) -> list[Verdict]:
        """A group's inputs are all there (or one broke): the verdicts of its tasks."""
        group = verdict.uid
        self._groups.discard(group)
        self._resolved[group] = verdict
        if len(self._resolved) > KEEP_RESOLVED:
            del self._resolved[next(iter(self._resolved))]
        if verdict.ready:
            return self._satisfied(group, None)
        out = []
        for waiter in self.dependents.pop(group, ()):
            if self._forget(waiter):
                out.append(Verdict(waiter, False, verdict.state, verdict.why))
        return out

    def _forget(self, uid: str) -> bool:
        """A task waits no more (it ends, or an input broke): drop what it waited with;
        False if it was not waiting."""
        self._wants.pop(uid, None)
        self._kept.pop(uid, None)
        return self.blocked.pop(uid, None) is not None

    def down(self, uid: str) -> None:
        """A service restarts: tasks naming it from now on wait for it to be READY again."""
        self.ready.pop(uid, None)

    def results(self, uid: str) -> dict[str, bytes]:
        """The results a task that waits no more takes as arguments (once)."""
        self._wants.pop(uid, None)
        return self._kept.pop(uid, {})

    def result(self, uid: str) -> bytes:
        """An ended task's result, pickled: a function's return value, an executable's
        exit code."""
        ended = self.ended[uid]
        if ended.result is not None:
            return ended.result
        return pickle.dumps(ended.exit_code, protocol=pickle.HIGHEST_PROTOCOL)

    def sent(self, uids: Iterable[str]) -> None:
        """These tasks' final updates left for the client, in this order."""
        self._sent.extend(uids)

    def heartbeat(self, finals: int) -> None:
        """A heartbeat says the client applied `finals` final updates. Forgotten: those
        the previous heartbeat said, a second ago. (A task the client sent before then,
        naming one of these, has arrived since: same socket, in order. One sent after
        it counted them resolves them itself. A submit says its own count, in order.)"""
        self.seen(self._last_beat)
        self._last_beat = max(self._last_beat, finals)

    def seen(self, finals: int) -> None:
        """The client has applied this many final updates: forget those outcomes."""
        sent = self._sent
        while self._forgotten < finals and sent:
            self.ended.pop(sent.popleft(), None)
            self._forgotten += 1


def _broken(uid: str, name: str, ended: Ended) -> Verdict:
    if ended.state is CANCELED:
        return Verdict(uid, False, CANCELED, f"input {name} was canceled")
    first = (ended.error or "").strip().splitlines()
    why = f": {first[-1]}" if first else ""
    return Verdict(uid, False, FAILED, f"input {name} failed{why}")
