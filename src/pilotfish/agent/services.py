"""Readiness checks of service tasks, run by the agent's shell on its reactor's timers.

A service is READY once its check passes: a port that accepts a connection on its node
(a connect of at most `CONNECT_TIMEOUT`), a file that exists, or a command that exits 0
(one at a time, started again each `interval`; killed by its process group when the
service ends or its time is up). The check is tried every `interval` seconds for up to
`timeout` seconds; the outcome goes to the core as an event (`ServiceReady`,
`ServiceNotReady`). Checks stop when the task is no longer running (`alive` says).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable

from ..messages import Service
from ..proctree import kill_group
from ..reactor import Reactor
from .events import ServiceNotReady, ServiceReady

CONNECT_TIMEOUT = 0.05  # seconds a port check may block the agent, at most


class ServiceChecks:
    def __init__(self, reactor: Reactor, emit: Callable[[object], None],
                 alive: Callable[[str], bool]) -> None:
        self.reactor, self.emit, self.alive = reactor, emit, alive
        self._commands: dict[str, subprocess.Popen[bytes]] = {}  # uid -> its check running

    def watch(self, uid: str, service: Service, host: str) -> None:
        """Check a service that just started on `host` until it is READY or its time is up."""
        deadline = time.monotonic() + service.timeout
        address = f"{host}:{service.port}" if service.port is not None else host

        def check() -> None:
            if not self.alive(uid):
                self._stop_command(uid)
                return
            passed = self._passes(uid, service, host)
            if passed:
                self.emit(ServiceReady(uid, time.time(), address))
            elif time.monotonic() >= deadline:
                self._stop_command(uid)
                self.emit(ServiceNotReady(uid, f"service not ready within "
                                               f"{service.timeout:g} s ({_what(service)})"))
            else:
                self.reactor.call_later(service.interval, check)

        self.reactor.call_later(0.0, check)

    def stop(self) -> None:
        for uid in list(self._commands):
            self._stop_command(uid)

    def _passes(self, uid: str, service: Service, host: str) -> bool:
        if service.port is not None:
            try:
                with socket.create_connection((host, service.port), CONNECT_TIMEOUT):
                    return True
            except OSError:
                return False
        if service.file is not None:
            return os.path.exists(service.file)
        assert service.command is not None
        running = self._commands.get(uid)
        if running is None:
            try:
                self._commands[uid] = subprocess.Popen(
                    service.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, process_group=0)
            except OSError:
                return False  # (not there yet, say: tried again)
            return False
        code = running.poll()
        if code is None:
            return False
        del self._commands[uid]
        return code == 0

    def _stop_command(self, uid: str) -> None:
        running = self._commands.pop(uid, None)
        if running is not None and running.poll() is None:
            kill_group(running.pid)
            running.wait(5)


def _what(service: Service) -> str:
    if service.port is not None:
        return f"port {service.port} never accepted a connection"
    if service.file is not None:
        return f"{service.file} never appeared"
    return f"{' '.join(service.command or [])} never exited 0"
