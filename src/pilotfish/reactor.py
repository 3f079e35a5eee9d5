"""A minimal single-threaded event loop over ZeroMQ sockets, file descriptors and timers.

The agent waits on everything at once (the client socket, function workers, pidfds of
running processes, deadlines) in one `zmq.Poller`; nothing polls with a sleep.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, cast

import zmq

Handle = Any  # a zmq.Socket or an int file descriptor
IDLE_POLL_INTERVAL = 0.001  # seconds


class Reactor:
    def __init__(self) -> None:
        self._poller = zmq.Poller()
        self._callbacks: dict[Handle, Callable[[], None]] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._pending: set[int] = set()
        self._cancelled: set[int] = set()
        self._counter = itertools.count()
        # Called when nothing is ready: each returns 0 if it did work, else the seconds
        # until it wants to be called again (None: no wish). A simulated clock jumps here.
        self._idle: list[Callable[[], float | None]] = []
        # Called just before the loop would block: each returns True if it made work
        # that must be done first (then it does not block). Held-back output goes here.
        self._before_wait: list[Callable[[], bool]] = []
        self.waited = 0.0  # seconds spent blocked waiting, for the agent's busy time
        self._polled = 0.0  # monotonic time of the last poll

    def add_reader(self, handle: Handle, callback: Callable[[], None]) -> None:
        self._callbacks[handle] = callback
        self._poller.register(handle, zmq.POLLIN)

    def remove_reader(self, handle: Handle) -> None:
        if self._callbacks.pop(handle, None) is not None:
            self._poller.unregister(handle)

    def _poll(self, timeout_ms: int, now: float) -> list[tuple[Any, int]]:
        self._polled = now
        return self._poller.poll(timeout_ms)

    def add_idle(self, callback: Callable[[], float | None]) -> None:
        self._idle.append(callback)

    def add_before_wait(self, callback: Callable[[], bool]) -> None:
        self._before_wait.append(callback)

    def call_at(self, when: float, callback: Callable[[], None]) -> int:
        """Run `callback` at monotonic time `when`; returns an id for `cancel_timer`."""
        timer_id = next(self._counter)
        heapq.heappush(self._timers, (when, timer_id, callback))
        self._pending.add(timer_id)
        return timer_id

    def call_later(self, delay: float, callback: Callable[[], None]) -> int:
        return self.call_at(time.monotonic() + delay, callback)

    def cancel_timer(self, timer_id: int) -> None:
        if timer_id in self._pending:  # a timer that already ran needs nothing
            self._cancelled.add(timer_id)

    def run_once(self, max_wait: float) -> None:
        """Wait up to `max_wait` seconds (less if a timer is due), then run what is ready."""
        now = time.monotonic()
        wait = max_wait
        while self._timers and self._timers[0][1] in self._cancelled:
            timer_id = heapq.heappop(self._timers)[1]
            self._cancelled.discard(timer_id)
            self._pending.discard(timer_id)
        if self._timers:
            wait = min(wait, max(0.0, self._timers[0][0] - now))
        ready = None
        if self._idle and wait > 0:
            # Before idle work (a simulated clock's jump), look at the sockets, but at
            # most every IDLE_POLL_INTERVAL: thousands of jumps a second need not each
            # pay for a poll.
            ready = [] if now - self._polled < IDLE_POLL_INTERVAL else self._poll(0, now)
        if not ready and wait > 0:
            # What is held back goes first (a simulation's jump must not move the time
            # of updates held across it), then idle work, if that made none.
            if any([hook() for hook in self._before_wait]):
                wait = 0.0
            for idle in self._idle if wait > 0 else ():
                hint = idle()
                if hint is not None:
                    wait = min(wait, hint)
            if wait > 0:
                start = time.monotonic()
                ready = self._poll(max(1, int(wait * 1000)), start)
                self.waited += time.monotonic() - start
            else:
                ready = []  # an idle callback did work: the caller deals with it first
        elif ready is None:
            ready = self._poll(0, now)
        for handle, _ in ready:
            callback = self._callbacks.get(handle)
            if callback is not None:
                callback()
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, timer_id, callback = heapq.heappop(self._timers)
            self._pending.discard(timer_id)
            if timer_id in self._cancelled:
                self._cancelled.discard(timer_id)
            else:
                callback()


def readable(sock: zmq.Socket) -> bool:  # type: ignore[type-arg]
    """True if a message can be received now (cheaper than a zero-timeout poll)."""
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)
