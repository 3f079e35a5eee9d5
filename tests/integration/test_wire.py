"""Forged and malformed messages on live sockets: real agents and real function workers
drop and count them, and keep working."""

from __future__ import annotations

import operator
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import pilotfish as pf
from pilotfish import TaskDescription as TD
from pilotfish import TaskState
from pilotfish import messages as m
from pilotfish.backends.base import BackendEvent, TaskFinished
from pilotfish.backends.functions.pool import FunctionPool
from pilotfish.backends.functions.protocol import Done, Outcome, Ready, Result
from pilotfish.keys import Gatekeeper, Keys
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


def _intrude(address: str, keys: Keys | None, messages: list[bytes]) -> None:
    """Connect to `address` (with `keys`: as a CURVE client) and send `messages`; return
    once the handshake ended, one way or the other."""
    intruder = zmq.Context.instance().socket(zmq.DEALER)
    intruder.setsockopt(zmq.LINGER, 2000)
    if keys is not None:
        keys.connect(intruder)
    monitor = intruder.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                          | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                          | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    intruder.connect(address)
    for data in messages:
        intruder.send(data)
    assert monitor.poll(10_000), "no handshake"
    recv_monitor_message(monitor)
    intruder.disable_monitor()
    monitor.close(0)
    intruder.close()


@pytest.mark.parametrize("keys", ["none", "its own", "the session's"])
def test_the_client_drops_what_it_cannot_decode_and_the_session_keeps_working(
        session: pf.Session, pilot: pf.Pilot, keys: str) -> None:
    """A peer without the session's keys is refused before anything it sends arrives
    (without CURVE, or with a key pair of its own); one with them (a buggy process of our
    own) gets its malformed messages dropped."""
    assert session.submit(TD(function=pow, args=(2, 5))).result(timeout=30) == 32
    assert session.dropped_messages == 0
    address = session._channel._links[pilot.uid].address
    ours = Keys.load(session.keys_file)
    other = Keys.generate()
    held = {"none": None, "the session's": ours,  # its own pair, knowing the server's key:
            "its own": Keys(ours.server_public, b"", other.client_public,
                            other.client_secret)}[keys]
    junk = [JUNK,  # this crashed the client's channel thread: every task failed
            m.encode(m.Submit([])),  # well-formed, but a message for an agent
            _bad_state_update()]
    _intrude(address, held, junk)
    expected = 3 if keys == "the session's" else 0
    if expected:
        wait_until(lambda: session.dropped_messages == expected)
    if keys == "its own":
        assert session._channel.gatekeeper.refused == 1
    # The client's DEALER socket deals its messages out to every peer: let it see the
    # intruder leave before anything that matters is sent.
    time.sleep(0.2)
    tasks = session.submit([TD(function=pow, args=(2, i)) for i in range(20)]
                           + [TD(executable="/bin/echo", arguments=["still here"])])
    assert session.wait(tasks, timeout=30)
    assert all(t.state is TaskState.DONE for t in tasks), [t.error for t in tasks]
    assert [t.result() for t in tasks[:20]] == [2 ** i for i in range(20)]
    assert pilot.active and session.dropped_messages == expected


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


@pytest.fixture
def keys_file(tmp_path: Path) -> Iterator[str]:
    """The session's keys, and this process's ZAP handler (as an agent has one)."""
    path = Keys.generate().save(tmp_path / "keys")
    gatekeeper = Gatekeeper(zmq.Context.instance(), Keys.load(path))
    yield str(path)
    gatekeeper.stop()


def test_forged_messages_to_the_function_pool_and_its_workers_change_nothing(
        tmp_path: Path, keys_file: str) -> None:
    """From a peer that holds the session's keys (a buggy one of our own processes)."""
    reactor = Reactor()
    events: list[BackendEvent] = []
    pool = FunctionPool(str(tmp_path), {"mul": pickle.dumps(operator.mul)}, [], keys_file)
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
    Keys.load(keys_file).connect(intruder)
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


def test_a_task_that_cannot_be_sent_fails_alone(session: pf.Session, pilot: pf.Pilot,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Descriptions are checked to encode; should one still not, it fails with the reason
    and the tasks sent with it run."""
    to_spec = pf.TaskDescription.to_spec

    def broken(d: pf.TaskDescription, uid: str) -> m.TaskSpec:
        spec = to_spec(d, uid)
        return msgspec.structs.replace(spec, environment={"X": "\udc80"}) if d.name else spec

    monkeypatch.setattr(pf.TaskDescription, "to_spec", broken)
    tasks = session.submit([TD(executable="/bin/true"), TD(executable="/bin/true", name="bad"),
                            TD(function=pow, args=(2, 2))])
    assert session.wait(tasks, timeout=30)
    assert [t.state for t in tasks] == [TaskState.DONE, TaskState.FAILED, TaskState.DONE]
    assert (tasks[1].error or "").startswith("cannot be sent to the agent: ")
    assert pilot.active
