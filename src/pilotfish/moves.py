"""Late binding across pilots: which queued tasks go from a backlogged pilot to one with
room (pure: no I/O; the session asks the agents and moves what they give back).

A pilot's load is the cores of the tasks it holds and has not finished; a pilot whose
load exceeds its cores has a backlog, one whose load is under them has room. The newest
tasks of a backlog go first (they would wait longest), each to the pilot with the most
room that it fits; never more than the backlog, never more than the room. The agent
gives back only the tasks it has not placed yet; the others stay where they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

LOOK_AT = 1_000  # tasks of one backlog looked at per plan, at most


class PilotLoad(NamedTuple):
    uid: str
    cores: int
    load: float  # cores of its unfinished tasks (and of those on their way to it)


class Candidate(NamedTuple):
    uid: str
    cores: int


def plan_moves(pilots: Sequence[PilotLoad],
               newest_first: Callable[[str], Iterable[Candidate]],
               fits: Callable[[str, str], bool]) -> dict[str, list[tuple[str, str]]]:
    """{source pilot: [(task uid, target pilot), ...]}: moves that fill the room of the
    pilots with room from the backlogs of the others. `newest_first(pilot)` yields a
    pilot's movable tasks (queued, not pinned), newest first; `fits(task, pilot)` says
    whether a task can run on a pilot."""
    room = {p.uid: p.cores - p.load for p in pilots if p.load < p.cores}
    if not room:
        return {}
    plan: dict[str, list[tuple[str, str]]] = {}
    backlogs = sorted((p for p in pilots if p.load > p.cores),
                      key=lambda p: p.load - p.cores, reverse=True)
    for source in backlogs:
        excess = source.load - source.cores
        for looked, task in enumerate(newest_first(source.uid)):
            if excess <= 0 or not room or looked >= LOOK_AT:
                break
            if task.cores > excess:
                continue
            target = max((t for t, free in room.items() if free >= task.cores
                          and fits(task.uid, t)), key=lambda t: room[t], default=None)
            if target is None:
                continue
            plan.setdefault(source.uid, []).append((task.uid, target))
            excess -= task.cores
            room[target] -= task.cores
            if room[target] <= 0:
                del room[target]
    return plan
