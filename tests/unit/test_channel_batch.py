"""The channel and a batch pilot's link (no Slurm needed): no start-up timeout while the
job waits; lost at once with the job's reason when it ends before its agent said hello;
a start-up timeout from the job's start; messages queued for the agent until it comes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import zmq

from pilotfish import channel as channel_module
from pilotfish import messages as m
from pilotfish.channel import Channel
from pilotfish.keys import Keys
from pilotfish.wire import Receiver


class Recorder:
    def __init__(self) -> None:
        self.lost: dict[str, str] = {}
        self.messages: list[tuple[str, Any]] = []
        self.changed = threading.Condition()

    def on_message(self, pilot: str, msg: Any) -> None:
        with self.changed:
            self.messages.append((pilot, msg))
            self.changed.notify_all()

    def on_lost(self, pilot: str, reason: str) -> None:
        with self.changed:
            self.lost[pilot] = reason
            self.changed.notify_all()

    def wait(self, what: Any, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(what, timeout)


@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channel_module, "STARTUP_TIMEOUT", 0.2)
    monkeypatch.setattr(channel_module, "JOB_STARTUP_TIMEOUT", 0.2)
    monkeypatch.setattr(channel_module, "HEARTBEAT_INTERVAL", 0.05)


def test_a_pending_batch_link_waits_without_a_start_up_timeout(short_timeouts: None) -> None:
    seen = Recorder()
    chan = Channel(seen.on_message, seen.on_lost, lambda *a: None, Keys.generate())
    try:
        chan.open("local", 5.0)
        chan.open("queued", 5.0, awaiting_job=True)
        chan.open("failed", 5.0, awaiting_job=True)
        chan.open("started", 5.0, awaiting_job=True)
        assert seen.wait(lambda: "local" in seen.lost, 5)
        assert seen.lost["local"].startswith("agent lost: no heartbeat")
        chan.job_ended("failed", "its batch job 7 cannot start: Slurm says PartitionNodeLimit")
        chan.job_started("started")
        assert seen.wait(lambda: {"failed", "started"} <= set(seen.lost), 5)
        assert seen.lost["failed"] == "its batch job 7 cannot start: Slurm says PartitionNodeLimit"
        assert seen.lost["started"].startswith("agent lost: no heartbeat")  # never said hello
        time.sleep(0.5)
        assert "queued" not in seen.lost  # its job has not started: it may wait for hours
    finally:
        chan.close()


def test_what_is_sent_to_a_pending_pilot_goes_when_its_agent_connects() -> None:
    seen = Recorder()
    keys = Keys.generate()
    chan = Channel(seen.on_message, seen.on_lost, lambda *a: None, keys)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        address = chan.open("p", 5.0, awaiting_job=True)
        spec = m.TaskSpec("task.000001", "executable", "/bin/true")
        chan.send("p", m.Submit([spec], {}))
        time.sleep(0.3)  # (queued: no agent)
        agent = ctx.socket(zmq.DEALER)
        keys.connect(agent)
        agent.connect(address)
        agent.send(m.encode(m.Hello(m.WIRE_VERSION, 1, time.time(), 1, 1, 0)))
        assert agent.poll(5000)
        got = Receiver("test", m.ToAgent).decode(agent.recv())
        assert isinstance(got, m.Submit) and [t.uid for t in got.tasks] == ["task.000001"]
        assert seen.wait(lambda: seen.messages, 5)
        assert isinstance(seen.messages[0][1], m.Hello)
        agent.close(0)
    finally:
        chan.close()
        ctx.term()
