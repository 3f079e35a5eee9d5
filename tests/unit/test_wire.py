"""The one decoding helper (wire.Receiver) and the client <-> agent messages through it."""

from __future__ import annotations

import logging
from typing import Any, get_args

import msgspec
import pytest

from pilotfish import messages as m
from pilotfish import wire
from pilotfish.states import TaskState
from pilotfish.wire import Receiver

GARBAGE = [
    b"",  # empty
    b"\xc1" * 20,  # 0xc1 is never used in msgpack
    b"\x93\xa6Submit",  # truncated
    m.encode(("Submit", "not a list")),  # a known tag, the wrong fields
    m.encode(["NoSuchMessage", 1, 2]),  # an unknown tag
    m.encode({"a": 1}),  # not an array at all
    m.encode(m.Hello(m.WIRE_VERSION, 1, 0.0, 1, 1, 0)),  # well-formed, for the client
]


def test_messages_to_the_agent_round_trip() -> None:
    receiver: Receiver[m.ToAgent] = Receiver("test", m.ToAgent)
    spec = m.TaskSpec("task.0", "function", function_key="k", args_blob=b"\x80", timeout=2.0)
    for msg in (m.Submit([spec], {"k": b"blob"}), m.Cancel(["task.0"]), m.Heartbeat(1.5),
                m.Shutdown("bye")):
        assert receiver.decode(m.encode(msg)) == msg
    assert receiver.dropped == 0


def test_messages_to_the_client_round_trip() -> None:
    receiver: Receiver[m.ToClient] = Receiver("test", m.ToClient)
    update = m.TaskUpdate("task.0", "DONE", [("RUNNING", 1.0)], exit_code=0, result=b"r")
    for msg in (m.Hello(m.WIRE_VERSION, 1, 2.0, 3, 4, 5), m.Accepted(["task.0"], 1.0),
                m.Updates([update], 0.5), m.Heartbeat(1.0), m.Bye("done", {"x": 1.0})):
        assert receiver.decode(m.encode(msg)) == msg
    assert receiver.dropped == 0


@pytest.mark.parametrize("data", GARBAGE)
def test_what_is_not_a_message_for_the_agent_decodes_to_none_and_is_counted(
        data: bytes) -> None:
    receiver: Receiver[m.ToAgent] = Receiver("test", m.ToAgent)
    before = wire.totals.dropped
    assert receiver.decode(data) is None
    assert receiver.decode(memoryview(data)) is None  # as a ZeroMQ frame's buffer
    assert receiver.dropped == 2 and wire.totals.dropped == before + 2


def test_a_message_for_the_agent_is_dropped_by_the_client() -> None:
    receiver: Receiver[m.ToClient] = Receiver("test", m.ToClient)
    assert receiver.decode(m.encode(m.Submit([]))) is None
    assert receiver.decode(m.encode(m.Shutdown())) is None
    assert receiver.dropped == 2


def test_an_update_to_a_state_that_does_not_exist_is_dropped_with_its_message() -> None:
    # The session would look the state up and fail on the client's channel thread.
    receiver: Receiver[m.ToClient] = Receiver("test", m.ToClient)
    good = m.encode(m.Updates([m.TaskUpdate("task.0", "DONE")]))
    bad = good.replace(b"DONE", b"GONE")
    assert receiver.decode(good) is not None
    assert receiver.decode(bad) is None
    assert receiver.dropped == 1


def test_the_states_on_the_wire_are_the_task_states() -> None:
    assert set(get_args(m.StateName)) == {s.value for s in TaskState}


def test_anything_at_all_decodes_to_none_never_raises() -> None:
    receiver: Receiver[m.ToAgent] = Receiver("test", m.ToAgent)
    weird: list[Any] = ["a str", None, 42, object(), b"\x91" * 100_000]  # deep nesting
    for data in weird:
        assert receiver.decode(data) is None
    assert receiver.dropped == len(weird)


def test_drops_are_logged_at_first_then_sampled(caplog: pytest.LogCaptureFixture) -> None:
    receiver: Receiver[m.ToAgent] = Receiver("agent <- test", m.ToAgent)
    with caplog.at_level(logging.WARNING, logger="pilotfish.wire"):
        for _ in range(2 * wire.LOG_EVERY):
            receiver.decode(b"\xc1" * 40)
    logged = [r.getMessage() for r in caplog.records if r.name == "pilotfish.wire"]
    assert len(logged) == wire.LOG_FIRST + 2
    assert logged[0].startswith("agent <- test: dropped message #1: ")
    assert "40 bytes: b'\\xc1" in logged[0] and logged[0].endswith("...)")
    assert f"#{wire.LOG_EVERY}:" in logged[-2] and f"#{2 * wire.LOG_EVERY}:" in logged[-1]
    assert receiver.dropped == 2 * wire.LOG_EVERY


def test_drops_and_stale_messages_the_receiver_finds_itself_are_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    receiver: Receiver[m.ToAgent] = Receiver("test", m.ToAgent)
    before = wire.totals.stale
    with caplog.at_level(logging.WARNING, logger="pilotfish.wire"):
        receiver.drop("from nobody we know")
        receiver.note_stale()
        receiver.note_stale(3)
    assert receiver.dropped == 1 and receiver.stale == 4
    assert wire.totals.stale == before + 4
    assert [r.getMessage() for r in caplog.records] == [
        "test: dropped message #1: from nobody we know"]  # stale ones are not logged


def test_decoding_is_still_typed() -> None:
    receiver: Receiver[m.ToAgent] = Receiver("test", m.ToAgent)
    msg = receiver.decode(msgspec.msgpack.encode(["Cancel", ["a", "b"]]))
    assert isinstance(msg, m.Cancel) and msg.uids == ["a", "b"]
