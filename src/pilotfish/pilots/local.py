"""Starting an agent on this machine: the `local` platform (virtual nodes, cores, GPUs)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

from ..agent.agent import AgentConfig


def start_local_agent(cfg: AgentConfig) -> subprocess.Popen[bytes]:
    """Start `python -m pilotfish.agent` in its own session, logging to its sandbox.

    Its own session keeps a terminal's Ctrl-C away from it and its tasks: the client
    stops it with a message, and it exits by itself when the client process ends.
    """
    os.makedirs(cfg.sandbox, exist_ok=True)
    with open(os.path.join(cfg.sandbox, "agent.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pilotfish.agent", json.dumps(dataclasses.asdict(cfg))],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cfg.sandbox,
        )


def kill_session(sid: int, passes: int = 3) -> int:
    """SIGKILL every process of session `sid` (a local agent and all it started).

    The agent is a session leader, so its tasks and workers share its session id even
    after it died; this is how a client cleans up after a lost agent. Returns how many
    processes were signalled. (A task that made itself a new session escapes this.)
    """
    killed = 0
    for _ in range(passes):
        found = [pid for pid in _pids() if _session_of(pid) == sid]
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


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[3]) if fields[0] not in (b"Z", b"X") else None
