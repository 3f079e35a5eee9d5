"""Forged and malformed messages on live sockets: real agents drop and count them, and
keep working."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
import pytest
import zmq

import pilotfish as pf
from pilotfish import TaskDescription as TD
from pilotfish import TaskState
from pilotfish import messages as m

pytestmark = pytest.mark.timeout(60)

JUNK = b"\xc1" * 20  # 20 bytes no msgpack decoder takes (0xc1 is never used)


def wait_until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _bad_state_update() -> bytes:
    """Updates, well-formed but for a state no task has."""
    return m.encode(m.Updates([m.TaskUpdate("task.000000", "DONE")])).replace(b"DONE", b"GONE")


def test_the_client_drops_what_it_cannot_decode_and_the_session_keeps_working(
        session: pf.Session, pilot: pf.Pilot) -> None:
    assert session.submit(TD(function=pow, args=(2, 5))).result(timeout=30) == 32
    assert session.dropped_messages == 0
    intruder = zmq.Context.instance().socket(zmq.DEALER)
    intruder.connect(session._channel._links[pilot.uid].address)
    intruder.send(JUNK)  # this crashed the client's channel thread: every task failed
    intruder.send(m.encode(m.Submit([])))  # well-formed, but a message for an agent
    intruder.send(_bad_state_update())
    intruder.close(linger=2000)
    wait_until(lambda: session.dropped_messages == 3)
    # The client's DEALER socket deals its messages out to every peer: let it see the
    # intruder leave before anything that matters is sent.
    time.sleep(0.2)
    tasks = session.submit([TD(function=pow, args=(2, i)) for i in range(20)]
                           + [TD(executable="/bin/echo", arguments=["still here"])])
    assert session.wait(tasks, timeout=30)
    assert all(t.state is TaskState.DONE for t in tasks), [t.error for t in tasks]
    assert [t.result() for t in tasks[:20]] == [2 ** i for i in range(20)]
    assert pilot.active and session.dropped_messages == 3


def test_the_agent_drops_what_it_cannot_decode_and_its_pilot_keeps_working(
        session: pf.Session, pilot: pf.Pilot) -> None:
    # Through the session's own socket, in order with the tasks that follow.
    session._channel.send(pilot.uid, msgspec.Raw(JUNK))  # stopped the pilot: "agent error"
    session._channel.send(pilot.uid, m.Hello(m.WIRE_VERSION, 1, 0.0, 1, 1, 0))  # for a client
    tasks = session.submit([TD(function=pow, args=(3, i)) for i in range(20)]
                           + [TD(executable="/bin/true")])
    assert session.wait(tasks, timeout=30)
    assert all(t.state is TaskState.DONE for t in tasks), [t.error for t in tasks]
    session.close()
    assert pilot.state == "DONE"
    assert pilot.stats["messages_dropped"] == 2
    log = (pilot.sandbox / "agent.log").read_text()
    assert "agent <- client: dropped message #1: MessagePack data is malformed" in log
    assert "agent <- client: dropped message #2: Invalid value 'Hello'" in log
