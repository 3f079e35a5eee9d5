"""The agent's end of the link to its client, and the door a new client comes in by.

A pilot with `detach_grace` outlives a client that disappears (a crash, a lost login
node) for that long, running its tasks: the link is *detached*. A new client
(`Session.attach`) knocks at the pilot's attach socket (`AttachPoint`, its address in
`<pilot>/agent.address`, the owner's only) with the address it listens at, and the link
reconnects there. Nothing is lost in between: each `Updates` message is numbered and
kept until the client says (in its heartbeats) that its journal holds it, and kept ones
are sent again to a new client; what comes twice is dropped by the client as stale.
While detached, results over `RETAIN_RESULTS_MAX` bytes in all are not kept: their tasks
are reported FAILED with that reason.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from .. import messages as m
from ..files import private
from ..keys import Keys
from ..reactor import Reactor, readable
from ..wire import Receiver

log = logging.getLogger(__name__)

RETAIN_RESULTS_MAX = 256 * 2**20  # bytes of results kept for a client that may come back


class ClientLink:
    """The DEALER socket to the client, with the numbering and keeping of updates (when
    `retain`: a pilot that may be reattached)."""

    def __init__(self, reactor: Reactor, keys: Keys, address: str, retain: bool,
                 on_readable: Callable[[], None]) -> None:
        self._reactor = reactor
        self._keys = keys
        self._on_readable = on_readable
        self.retain = retain
        self.attached = True
        self._seq = 0
        self._kept: deque[m.Updates] = deque()
        self._kept_results = 0  # bytes of results in `_kept`
        self.socket = self._connect(address)

    def _connect(self, address: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.setsockopt(zmq.SNDHWM, 0)  # never block on a slow client: queue
        self._keys.connect(sock)
        sock.connect(address)
        self._reactor.add_reader(sock, self._on_readable)
        return sock

    def send(self, message: Any) -> None:
        """Send now if attached; updates are numbered and kept until acknowledged."""
        if self.retain and type(message) is m.Updates:
            self._seq += 1
            message.seq = self._seq
            self._keep(message)
        if self.attached:
            self.socket.send(m.encode(message))

    def _keep(self, message: m.Updates) -> None:
        size = sum(len(u.result) for u in message.updates if u.result)
        if size and self._kept_results + size > RETAIN_RESULTS_MAX:
            message = m.Updates([_without_result(u) if u.result else u
                                 for u in message.updates], message.clock_offset, message.seq)
            size = 0
        self._kept.append(message)
        self._kept_results += size

    def acked(self, seq: int) -> None:
        """The client's journal holds every update up to batch `seq`: forget them."""
        kept = self._kept
        while kept and kept[0].seq <= seq:
            self._kept_results -= sum(len(u.result) for u in kept.popleft().updates
                                      if u.result)

    def detach(self) -> None:
        self.attached = False

    def attach(self, address: str) -> None:
        """Reconnect to a new client and send it every update not acknowledged."""
        self.close(linger=0)
        self.socket = self._connect(address)
        self.attached = True
        for message in self._kept:
            self.socket.send(m.encode(message))

    def close(self, linger: int) -> None:
        self._reactor.remove_reader(self.socket)
        self.socket.close(linger=linger)


def _without_result(update: m.TaskUpdate) -> m.TaskUpdate:
    size = len(update.result or b"")
    return msgspec.structs.replace(
        update, state="FAILED", result=None,
        error=f"its result ({size:,} bytes) was not kept while no client was attached "
              f"(over {RETAIN_RESULTS_MAX // 2**20} MiB of results)")


class AttachPoint:
    """The socket a new client knocks at (CURVE, the session's keys): its address is in
    `<pilot sandbox>/agent.address`; each `Attach` goes to `on_attach`."""

    def __init__(self, reactor: Reactor, keys: Keys, sandbox: str,
                 on_attach: Callable[[m.Attach], None]) -> None:
        self._reactor = reactor
        self._on_attach = on_attach
        self.receiver: Receiver[m.Attach] = Receiver("agent <- attaching client", m.Attach)
        self.socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        keys.serve(self.socket)
        port: int = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.path = os.path.join(sandbox, "agent.address")
        with open(self.path + ".tmp", "w", opener=private) as f:
            f.write(self.address)
        os.replace(self.path + ".tmp", self.path)
        reactor.add_reader(self.socket, self._on_message)

    def _on_message(self) -> None:
        while readable(self.socket):
            frames = self.socket.recv_multipart()
            msg = self.receiver.decode(frames[-1]) if len(frames) == 2 else None
            if msg is not None:
                self._on_attach(msg)
            elif len(frames) != 2:
                self.receiver.drop(f"{len(frames)} frames", frames[-1])

    def close(self) -> None:
        self._reactor.remove_reader(self.socket)
        self.socket.close(0)
        try:
            os.unlink(self.path)
        except OSError:
            pass
