"""Forged and malformed messages on live sockets: real agents and real function workers
drop and count them, and keep working."""

from __future__ import annotations

import operator
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import zmq

import pilotfish as pf
from pilotfish import TaskDescription as TD
from pilotfish import TaskState
from pilotfish import messages as m
from pilotfish.backends.base import BackendEvent, TaskFinished
from pilotfish.backends.functions.pool import FunctionPool
from pilotfish.backends.functions.protocol import Done, Outcome, Ready, Result
from pilotfish.reactor import Reactor

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


# ---- the function workers' socket, with a real pool and real workers, in this process ----


def _spec(uid: str, a: int, b: int) -> m.TaskSpec:
    return m.TaskSpec(uid, "function", function_key="mul", args_blob=pickle.dumps(((a, b), {})))


def test_forged_messages_to_the_function_pool_and_its_workers_change_nothing(
        tmp_path: Path) -> None:
    reactor = Reactor()
    events: list[BackendEvent] = []
    pool = FunctionPool(str(tmp_path), {"mul": pickle.dumps(operator.mul)}, [])
    pool.start(reactor, events.append)

    def run_until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert time.monotonic() < deadline, f"timed out; events: {events}"
            reactor.run_once(0.05)

    def finished() -> dict[str, TaskFinished]:
        return {e.uid: e for e in events if isinstance(e, TaskFinished)}

    intruder = zmq.Context.instance().socket(zmq.DEALER)
    intruder.setsockopt(zmq.IDENTITY, b"w7")  # not a worker (yet)
    intruder.setsockopt(zmq.LINGER, 0)
    intruder.connect(pool.address)
    try:
        intruder.send(JUNK)
        intruder.send_multipart([b"two", b"frames"])
        forged = Result("t1", Outcome.OK, pickle.dumps(99), None, 1.0, 2.0)
        intruder.send(m.encode(Done([forged])))  # a result for a task it never ran
        intruder.send(m.encode(Ready(1)))
        pool.dispatch([(_spec("t1", 6, 7), "w0"), (_spec("t2", 2, 3), "w0")])
        run_until(lambda: len(finished()) == 2 and pool.receiver.dropped == 2)
        # To the worker itself (as the pool would send it): junk, and a message for the pool.
        pool._sock.send_multipart([b"w0", JUNK])
        pool._sock.send_multipart([b"w0", m.encode(Ready(1))])
        pool.dispatch([(_spec("t3", 4, 5), "w0")])
        run_until(lambda: len(finished()) == 3)
    finally:
        intruder.close(0)
        pool.stop(5)
    ended = finished()
    assert {uid: e.state for uid, e in ended.items()} == dict.fromkeys(
        ["t1", "t2", "t3"], TaskState.DONE)
    assert [pickle.loads(ended[u].result or b"") for u in ("t1", "t2", "t3")] == [42, 6, 20]
    assert pool.receiver.dropped == 2  # the junk and the two frames
    assert pool.receiver.stale == 2  # well-formed, from a worker the pool does not have
    assert "w7" not in pool._workers
    log = (tmp_path / "worker.builtin.w0.log").read_text()
    assert "function worker w0: dropped message #1: MessagePack data is malformed" in log
    assert "function worker w0: dropped message #2: Invalid value 'Ready'" in log
