"""Client <-> agent messaging: one I/O thread per session, ZeroMQ, batches, heartbeats.

Every agent's socket is authenticated and encrypted with the session's keys (keys.py).
User threads never touch a socket: they queue messages and poke a pipe. The channel
thread sends them (merging queued submits into large batches), receives the agents'
batched updates and hands them to the session, sends a heartbeat to every agent each
second, and declares an agent lost when it stays silent past its heartbeat timeout or
its local process exits.

A batch pilot's agent connects when its job starts, which may be hours after the link
opened: until then (`awaiting_job`) no start-up timeout applies and what is sent to it
waits in order. The session says when the job started (from then on its agent has
JOB_STARTUP_TIMEOUT to say hello) and when it ended: before hello, the agent is lost at
once with the job's reason; after, unless it says goodbye within JOB_END_GRACE.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import messages as m
from .gcpause import without_gc
from .keys import Gatekeeper, Keys
from .reactor import readable
from .wire import Receiver

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 1.0
RETRY_INTERVAL = 0.05  # how soon to retry messages an unconnected socket would not take
STARTUP_TIMEOUT = 30.0  # an agent that has not said hello yet may take this long
JOB_STARTUP_TIMEOUT = 120.0  # ... one whose batch job started (Python from a shared file system)
JOB_END_GRACE = 3.0  # a batch job ended: its agent's goodbye may still be on its way
MAX_TASKS_PER_MESSAGE = 5_000


@dataclass(slots=True)
class AgentLink:
    pilot: str
    socket: zmq.Socket  # type: ignore[type-arg]
    address: str
    heartbeat_timeout: float
    last_heard: float = field(default_factory=time.monotonic)
    last_sent: float = 0.0
    pidfd: int | None = None
    hello: m.Hello | None = None
    closed: bool = False
    stopping: bool = False  # Shutdown sent: the session's close() times the agent out
    batch: bool = False  # a batch pilot's: its agent starts with its job
    awaiting_job: bool = False  # ... which has not started yet: no start-up timeout
    job_ended: tuple[float, str] | None = None  # (when, why) after hello: lost after the grace
    sent_functions: set[str] = field(default_factory=set)
    unsent: deque[bytes] = field(default_factory=deque)  # the socket would have blocked


class Channel:
    def __init__(
        self,
        on_message: Callable[[str, Any], None],
        on_lost: Callable[[str, str], None],
        on_dropped: Callable[[str, list[str], str | None], None],
        keys: Keys,
        acked: Callable[[str], int] = lambda pilot: 0,
        seen: Callable[[str], int] = lambda pilot: 0,
    ) -> None:
        # All three are called on the channel thread with the pilot's uid and: a decoded
        # message; the reason the agent was lost; a Submit that can no longer be sent.
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_dropped = on_dropped
        self._acked = acked  # a pilot's last update batch the session holds (heartbeats say)
        self._seen = seen  # final updates of a pilot's agent applied (heartbeats say)
        self._closed = False
        # A context of our own: its ZAP handler admits only holders of the session's keys.
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.keys = keys
        self.gatekeeper = Gatekeeper(self._ctx, keys)
        self._links: dict[str, AgentLink] = {}
        self.receiver: Receiver[m.ToClient] = Receiver("client <- agents", m.ToClient)
        self._outbox: deque[tuple[str, Any]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._signaled = False
        self._stopping = False
        self._lock = threading.Lock()  # guards _links against the user threads
        self._thread = threading.Thread(target=self._run, name="pilotfish-channel", daemon=True)
        self._poller = zmq.Poller()
        self._poller.register(self._wake_r, zmq.POLLIN)
        self._thread.start()

    # ---- called from user threads -----------------------------------------------------

    def open(self, pilot: str, heartbeat_timeout: float, host: str = "127.0.0.1",
             awaiting_job: bool = False) -> str:
        """Bind a socket on `host` (an IP address) for a new agent to connect to; returns
        its address. `awaiting_job`: the agent starts with a batch job (`job_started`)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # queue rather than block; sends never wait
        self.keys.serve(sock)
        port = sock.bind_to_random_port(f"tcp://{host}")
        link = AgentLink(pilot, sock, f"tcp://{host}:{port}", heartbeat_timeout,
                         batch=awaiting_job, awaiting_job=awaiting_job)
        with self._lock:
            self._links[pilot] = link
        self._post(pilot, ("open", None))
        return link.address

    def close_link(self, pilot: str) -> None:
        """Stop listening for this pilot's agent (its pilot ended without it)."""
        self._post(pilot, ("close", None))

    def watch_process(self, pilot: str, pid: int) -> None:
        """Declare the agent lost as soon as this local process exits."""
        self._post(pilot, ("watch", pid))

    def job_started(self, pilot: str) -> None:
        """The pilot's batch job runs: its agent has JOB_STARTUP_TIMEOUT to say hello."""
        self._post(pilot, ("job_started", None))

    def job_ended(self, pilot: str, reason: str) -> None:
        """The pilot's batch job ended: an agent that never said hello is lost at once with
        `reason`; one that did, unless its goodbye arrives within JOB_END_GRACE."""
        self._post(pilot, ("job_ended", reason))

    def send(self, pilot: str, message: Any) -> None:
        self._post(pilot, message)

    def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._poke()
        self._thread.join(timeout)

    def _post(self, pilot: str, item: Any) -> None:
        self._outbox.append((pilot, item))
        self._poke()

    def _poke(self) -> None:
        if not self._signaled and not self._closed:
            self._signaled = True
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # closed meanwhile

    # ---- the channel thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._loop_once()
        except Exception:  # a bug: fail every task rather than hang
            log.exception("pilotfish channel thread crashed")
            for link in list(self._links.values()):
                if not link.closed:
                    self._lose(link, "client channel crashed (see log)")
        finally:
            self._closed = True
            for pilot, item in self._outbox:
                if isinstance(item, m.Submit):
                    self._on_dropped(pilot, [t.uid for t in item.tasks], None)
            for link in self._links.values():
                link.socket.close(linger=0)
                if link.pidfd is not None:
                    os.close(link.pidfd)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.gatekeeper.stop()
            self._ctx.term()

    def _loop_once(self) -> None:
        # (What waits for an agent that has not said hello goes when it does.)
        blocked = any(link.unsent and not link.closed and link.hello is not None
                      for link in self._links.values())
        wait = RETRY_INTERVAL if blocked else HEARTBEAT_INTERVAL
        events = dict(self._poller.poll(int(wait * 1000)))
        if self._wake_r in events:
            self._signaled = False
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        self._send_outbox()
        for link in list(self._links.values()):
            if link.closed:
                continue
            if link.unsent:
                self._retry_unsent(link)
            if events.get(link.socket):
                self._receive(link)
            if link.pidfd is not None and events.get(link.pidfd):
                self._lose(link, "agent process exited")
        self._check_heartbeats()

    def _send_outbox(self) -> None:
        submits: dict[str, list[m.Submit]] = {}
        while self._outbox:
            pilot, item = self._outbox.popleft()
            link = self._links.get(pilot)
            if link is None or link.closed:
                if isinstance(item, m.Submit):
                    self._on_dropped(pilot, [t.uid for t in item.tasks], None)
                continue
            if isinstance(item, m.Submit):
                submits.setdefault(pilot, []).append(item)
                continue
            self._flush_submits(link, submits.pop(pilot, []))  # keep the order per pilot
            if isinstance(item, tuple) and item[0] == "open":
                self._poller.register(link.socket, zmq.POLLIN)
            elif isinstance(item, tuple) and item[0] == "close":
                self._close_link(link)
            elif isinstance(item, tuple) and item[0] == "watch":
                try:
                    link.pidfd = os.pidfd_open(item[1])
                    self._poller.register(link.pidfd, zmq.POLLIN)
                except ProcessLookupError:
                    self._lose(link, "agent process exited")
            elif isinstance(item, tuple) and item[0] == "job_started":
                if link.awaiting_job:
                    link.awaiting_job = False
                    link.last_heard = time.monotonic()
            elif isinstance(item, tuple) and item[0] == "job_ended":
                if link.hello is None:
                    self._close_link(link)
                    self._on_lost(link.pilot, item[1])
                else:
                    link.job_ended = (time.monotonic(), item[1])
            else:
                if isinstance(item, m.Shutdown):
                    link.stopping = True
                self._send(link, m.encode(item))
        for pilot, batch in submits.items():
            self._flush_submits(self._links[pilot], batch)

    @staticmethod
    def _send(link: AgentLink, data: bytes) -> None:
        """Send without ever blocking: what the socket will not take now waits in order."""
        if not link.unsent:
            try:
                link.socket.send(data, zmq.NOBLOCK)
                return
            except zmq.Again:  # no agent connected (gone, or not yet)
                pass
        link.unsent.append(data)

    @staticmethod
    def _retry_unsent(link: AgentLink) -> None:
        while link.unsent:
            try:
                link.socket.send(link.unsent[0], zmq.NOBLOCK)
            except zmq.Again:
                return
            link.unsent.popleft()

    def _flush_submits(self, link: AgentLink, batch: list[m.Submit]) -> None:
        """Send queued submits in large messages, each function only once per agent."""
        if not batch:
            return
        tasks = [t for sub in batch for t in sub.tasks]
        seen = min(sub.seen for sub in batch)  # (what the first of them had applied)
        sent = link.sent_functions
        functions = {k: v for sub in batch for k, v in sub.functions.items() if k not in sent}
        sent.update(functions)
        groups = {k: v for sub in batch for k, v in sub.groups.items()}  # (in the first)
        for i in range(0, len(tasks), MAX_TASKS_PER_MESSAGE):
            chunk = tasks[i:i + MAX_TASKS_PER_MESSAGE]
            fns, shared = (functions, groups) if i == 0 else ({}, {})
            try:
                data = m.encode(m.Submit(chunk, fns, seen, shared))
            except Exception:  # descriptions are checked to encode: a task that still
                chunk = self._drop_unencodable(link, chunk)  # does not fails alone
                data = m.encode(m.Submit(chunk, fns, seen, shared))
            Channel._send(link, data)

    def _drop_unencodable(self, link: AgentLink, tasks: list[m.TaskSpec]) -> list[m.TaskSpec]:
        """The tasks that encode; each that does not fails with the reason."""
        good = []
        for spec in tasks:
            try:
                m.encode(spec)
                good.append(spec)
            except Exception as exc:
                self._on_dropped(link.pilot, [spec.uid], f"cannot be sent to the agent: {exc}")
        return good

    @without_gc
    def _receive(self, link: AgentLink) -> None:
        link.last_heard = time.monotonic()
        sock = link.socket
        while readable(sock):
            msg = self.receiver.decode(sock.recv(copy=False).buffer)
            if msg is None or isinstance(msg, m.Heartbeat):
                continue
            if isinstance(msg, m.Hello):
                link.hello = msg
                link.awaiting_job = False
                self._retry_unsent(link)  # what waited for it (the agent is connected now)
            self._on_message(link.pilot, msg)
            if isinstance(msg, m.Bye):
                self._close_link(link)
                return

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for link in list(self._links.values()):
            if link.closed:
                continue
            if link.job_ended is not None and now - link.job_ended[0] > JOB_END_GRACE:
                self._lose(link, link.job_ended[1])
                continue
            if link.awaiting_job:  # its batch job has not started: nothing to time
                continue
            silent = now - link.last_heard
            limit = (link.heartbeat_timeout if link.hello is not None else
                     JOB_STARTUP_TIMEOUT if link.batch else STARTUP_TIMEOUT)
            if silent > limit and not link.stopping:
                self._lose(link, f"no heartbeat for {silent:.1f} s")
                continue
            if link.hello is not None and now - link.last_sent >= HEARTBEAT_INTERVAL:
                link.last_sent = now
                self._send(link, m.encode(m.Heartbeat(time.time(), self._acked(link.pilot),
                                                      self._seen(link.pilot))))

    def _lose(self, link: AgentLink, reason: str) -> None:
        self._close_link(link)
        self._on_lost(link.pilot, f"agent lost: {reason}")

    def _close_link(self, link: AgentLink) -> None:
        if link.closed:
            return
        link.closed = True
        self._poller.unregister(link.socket)
        if link.pidfd is not None:
            self._poller.unregister(link.pidfd)
