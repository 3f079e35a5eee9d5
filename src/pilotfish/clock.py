"""The pilot's clock: the wall clock plus the jumps a simulation made.

The agent stamps every event with `Clock.now()`. On a real pilot nothing ever moves the
offset, so it is the wall clock. A simulated backend runs nothing: when no task is due
it makes the clock jump to the next task end (`jump_to`), and the offset it keeps tells
the client how far the pilot's time ran ahead. While a client is still submitting
(`hold`), the clock does not jump: a workload handed over in many messages starts as
one bag, as it would on a real machine, instead of trickling into a clock that raced
ahead.
"""

from __future__ import annotations

import time

HOLD = 0.5  # seconds of client silence before a simulation may jump ahead
CLIENT_WAIT = 2.0  # seconds a reactive client may take to answer its final updates


class Clock:
    __slots__ = ("_answer_by", "_awaited", "_client_seen", "_held_until", "jumps", "offset")

    def __init__(self) -> None:
        self.offset = 0.0  # seconds this clock runs ahead of the wall clock
        self.jumps = 0
        self._held_until = 0.0  # monotonic
        self._awaited = self._client_seen = 0  # final updates sent / answered
        self._answer_by = 0.0  # monotonic

    def now(self) -> float:
        return time.time() + self.offset

    def jump_to(self, when: float) -> None:
        """Move the clock ahead to `when` (a simulation with nothing to do until then)."""
        ahead = when - self.now()
        if ahead > 0:
            self.offset += ahead
            self.jumps += 1

    def hold(self) -> None:
        """Input arrived: no jump for the next HOLD seconds."""
        self._held_until = time.monotonic() + HOLD

    def await_client(self, finals: int) -> None:
        """A reactive client (one whose tasks have callbacks) was sent final updates, up
        to `finals`: no jump until it says it applied them and ran their callbacks (what
        they submit arrives first), or for CLIENT_WAIT seconds at most."""
        self._awaited = finals
        self._answer_by = time.monotonic() + CLIENT_WAIT

    def client_idle(self, seen: int) -> None:
        """The client applied `seen` final updates and ran their callbacks."""
        self._client_seen = max(self._client_seen, seen)

    def held_for(self) -> float:
        """Seconds until the clock may jump again (0: it may now)."""
        now = time.monotonic()
        held = self._held_until - now
        if self._client_seen < self._awaited:
            held = max(held, self._answer_by - now)
        return max(0.0, held)
