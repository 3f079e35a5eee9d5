"""Late binding across pilots, planned (moves.py): what moves where."""

from __future__ import annotations

from collections.abc import Iterable

from pilotfish.moves import LOOK_AT, Candidate, PilotLoad, plan_moves


def queued(tasks: dict[str, list[Candidate]]):  # type: ignore[no-untyped-def]
    def newest_first(pilot: str) -> Iterable[Candidate]:
        return iter(tasks.get(pilot, []))
    return newest_first


def everywhere(task: str, pilot: str) -> bool:
    return True


def test_a_backlog_fills_the_room_of_others_most_room_first() -> None:
    pilots = [PilotLoad("small", 4, 40.0), PilotLoad("mid", 16, 10.0),
              PilotLoad("big", 112, 0.0)]
    backlog = [Candidate(f"t{i}", 1) for i in range(39, 3, -1)]  # newest first
    plan = plan_moves(pilots, queued({"small": backlog}), everywhere)
    moves = plan["small"]
    assert len(moves) == 36  # its whole backlog (40 tasks on 4 cores), no more
    assert moves[0] == ("t39", "big")  # the newest first, to the most room
    assert {target for _, target in moves} == {"big"}  # 112 free cores take all 36


def test_never_more_than_the_room_nor_what_does_not_fit() -> None:
    pilots = [PilotLoad("a", 4, 20.0), PilotLoad("b", 8, 6.0)]
    tasks = {"a": [Candidate("wide", 4), Candidate("x", 1), Candidate("y", 1),
                   Candidate("z", 1)]}
    plan = plan_moves(pilots, queued(tasks), lambda task, pilot: task != "y")
    assert plan == {"a": [("x", "b"), ("z", "b")]}  # 2 free cores; y does not fit b


def test_no_room_or_no_backlog_no_moves() -> None:
    full = [PilotLoad("a", 4, 8.0), PilotLoad("b", 4, 4.0)]
    assert plan_moves(full, queued({"a": [Candidate("t", 1)]}), everywhere) == {}
    idle = [PilotLoad("a", 4, 2.0), PilotLoad("b", 4, 0.0)]
    assert plan_moves(idle, queued({"a": [Candidate("t", 1)]}), everywhere) == {}


def test_a_plan_looks_at_a_bounded_number_of_tasks() -> None:
    looked: list[str] = []

    def newest_first(pilot: str) -> Iterable[Candidate]:
        for i in range(10 * LOOK_AT):
            looked.append(pilot)
            yield Candidate(f"t{i}", 1)

    plan = plan_moves([PilotLoad("a", 1, 1e9), PilotLoad("b", 1e9, 0.0)],  # type: ignore[arg-type]
                      newest_first, lambda task, pilot: False)
    assert plan == {} and len(looked) <= LOOK_AT + 1
