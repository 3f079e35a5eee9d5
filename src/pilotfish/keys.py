"""A session's keys: every socket of a session is authenticated and encrypted (CurveZMQ).

The client makes two key pairs per session, a server pair and a client pair, and keeps
them in `<session>/keys` (the owner's only). Every socket that binds (the client's
socket for each agent, an agent's sockets for its function workers and its Dragon
executors) is a CURVE server with the server pair, and the ZAP handler of its process
(`Gatekeeper`) admits only peers that prove they hold the client pair; every socket
that connects uses the client pair. A peer without the keys file reaches nothing: its
handshake is refused before any message is delivered, so nothing it sends is decoded,
let alone unpickled. The keys travel to agents and workers as the path of that file,
never in their arguments or environment.

(As Parsl's HTEX does, with ZeroMQ's own CURVE and pyzmq's authenticator thread: no
hand-written cryptography.)
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import zmq

from .files import FILE_MODE

log = logging.getLogger(__name__)


class KeysError(RuntimeError):
    """A keys file that cannot be read or used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Keys:
    """The session's two CURVE key pairs (Z85-encoded, as ZeroMQ takes them)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> Keys:
        if not zmq.has("curve"):
            raise KeysError("this ZeroMQ has no CURVE security (libzmq without libsodium)")
        return cls(*zmq.curve_keypair(), *zmq.curve_keypair())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the keys to a new file only its owner can read."""
        path = Path(path)
        data = json.dumps({k: getattr(self, k).decode() for k in self.__slots__}).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keys:
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
            return cls(**{k: data[k].encode() for k in cls.__slots__})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeysError(f"cannot read the session's keys from {path}: {exc!r}") from None

    def serve(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make a socket (before it binds) a CURVE server of this session."""
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def connect(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        """Make a socket (before it connects) a CURVE client of this session."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret


class Gatekeeper:
    """The ZAP handler of one ZeroMQ context: it admits only peers holding the session's
    client key, and counts (and logs) those it refuses. Start it before binding."""

    def __init__(self, context: zmq.Context, keys: Keys) -> None:  # type: ignore[type-arg]
        from zmq.auth.thread import ThreadAuthenticator  # (workers, which only connect,
                                                         # need not load it)
        self.keys = keys
        self.refused = 0
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve_callback("*", credentials_provider=self)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """pyzmq's hook: is this (Z85) client key ours?"""
        if hmac.compare_digest(client_key, self.keys.client_public):
            return True
        self.refused += 1
        if self.refused <= 5 or self.refused % 1000 == 0:
            log.warning("refused a connection from a peer without this session's keys "
                        "(%d refused so far)", self.refused)
        return False

    def stop(self) -> None:
        self._auth.stop()
