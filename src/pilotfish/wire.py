"""Decoding what arrives on a socket: typed messages, or None; a receiver never crashes.

Every process of pilotfish receives from sockets others can write to (a bug in a peer,
a stray connection): one undecodable message must not stop a client's session, an agent
or a worker. Each receiver decodes through a `Receiver`, which checks the message
against the receiver's message types (msgspec, in C: as fast as untyped decoding) and
drops what does not fit, counting it and logging the first few drops and then every
`LOG_EVERY`th, with where and why.

Well-formed messages that come too late to matter (a task's start after its end, the
results of a worker already replaced) are counted as `stale` by their receiver, not
logged: they are part of normal operation. `totals` adds up every receiver of this
process (the agent reports them with its stats).
"""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

import msgspec

log = logging.getLogger(__name__)

LOG_FIRST = 5  # drops logged one by one at first, per receiver
LOG_EVERY = 1000  # then every this many
_PREVIEW = 32  # bytes of a dropped message shown in the log

T = TypeVar("T")


class Totals:
    """Messages dropped and stale, over every receiver of this process."""

    dropped = 0
    stale = 0


totals = Totals()


class Receiver(Generic[T]):
    """Decodes the messages of one socket to `kind` (a tagged union of msgspec structs).

    `where` names the receiving end in logs ("client <- agents", "worker w3 <- agent").
    """

    def __init__(self, where: str, kind: Any) -> None:
        self.where = where
        self._decode = msgspec.msgpack.Decoder(kind).decode
        self.dropped = 0  # malformed, unknown or unexpected messages
        self.stale = 0  # well-formed ones, or parts of them, about what is already over

    def decode(self, data: bytes | memoryview) -> T | None:
        """The message, or None (counted and maybe logged) if it is not one of ours."""
        try:
            return self._decode(data)  # type: ignore[no-any-return]
        except Exception as exc:  # msgspec.DecodeError; never let anything out
            self.drop(str(exc) or repr(exc), data)
            return None

    def drop(self, why: str, data: Any = None) -> None:
        """Count a message this receiver cannot use; log the first few, then a sample."""
        self.dropped += 1
        totals.dropped += 1
        n = self.dropped
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("%s: dropped message #%d: %s%s", self.where, n, why, _preview(data))

    def note_stale(self, count: int = 1) -> None:
        """Count messages (or items of one) that came after what they are about ended."""
        self.stale += count
        totals.stale += count


def _preview(data: Any) -> str:
    """The start of a dropped message, for the log."""
    if not isinstance(data, bytes | bytearray | memoryview):
        return "" if data is None else f" (a {type(data).__name__}, not bytes)"
    size = len(data)
    more = "..." if size > _PREVIEW else ""
    return f" ({size} bytes: {bytes(data[:_PREVIEW])!r}{more})"
