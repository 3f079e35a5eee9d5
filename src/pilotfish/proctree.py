"""Process trees by session or process-group id: how they are found and ended (Linux /proc)."""

from __future__ import annotations

import os
import select
import signal
import socket

# Fields of /proc/PID/stat, counted after the command name.
_PGRP, _SESSION, START_TIME = 2, 3, 19


def kill_session(sid: int, passes: int = 3) -> int:
    """SIGKILL every process of session `sid` (a local agent and all it started).

    The agent is a session leader, so its tasks and workers share its session id even
    after it died; this is how a client cleans up after a lost agent. Returns how many
    processes were signalled. (A task that made itself a new session escapes this.)
    """
    return _kill_where(_SESSION, sid, passes)


def kill_group(pgid: int, passes: int = 3) -> int:
    """SIGKILL every process of process group `pgid`, even after its leader died."""
    return _kill_where(_PGRP, pgid, passes)


def _kill_where(field: int, value: int, passes: int) -> int:
    killed = 0
    for _ in range(passes):
        found = [pid for pid in _pids() if stat_field(pid, field) == value]
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        if not found:
            break
    return killed


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def stat_field(pid: int, field: int) -> int | None:
    """A field of /proc/PID/stat (counted after the command name); None if the process
    is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[field]) if fields[0] not in (b"Z", b"X") else None


def wait_fd(fd: int, timeout: float) -> bool:
    """Wait until a pidfd is readable (its process exited), up to `timeout` seconds."""
    ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
    return bool(ready)


def this_process() -> str:
    """'HOST PID START' of this process: who it is, even after its pid is reused."""
    return f"{socket.gethostname()} {os.getpid()} {stat_field(os.getpid(), START_TIME)}"


def is_running(who: str) -> bool | None:
    """Whether the process `this_process()` described still runs (None: on another host,
    which cannot be told from here)."""
    host, pid, start = who.split()
    if host != socket.gethostname():
        return None
    return str(stat_field(int(pid), START_TIME)) == start
