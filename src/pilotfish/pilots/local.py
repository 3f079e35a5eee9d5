"""Pilots on this machine (the `local` mode): an agent process of virtual nodes.

The agent runs in its own session: a terminal's Ctrl-C stays away from it and its tasks
(the client stops it with a message, and it exits by itself when the client process
ends), and when it is lost, everything it started is found by that session id and
killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from ..agent.config import AgentConfig
from ..files import private, private_dir
from ..proctree import kill_session, wait_fd


class LocalAgent:
    """An agent process on this machine, logging to `<sandbox>/agent.log`: one this client
    started, or (`adopt`) one a client before it started, found again."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.sandbox = private_dir(cfg.sandbox)
        self.dragon = any(p[1] == "dragon" for p in cfg.partitions)
        with open(self.sandbox / "agent.log", "ab", opener=private) as log:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", "pilotfish.agent", cfg.to_json()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cfg.sandbox,
            )
        self.pid = self.process.pid

    @classmethod
    def adopt(cls, pid: int, sandbox: Path, dragon: bool) -> LocalAgent:
        """The agent `pid` (not our child: an earlier client's)."""
        agent = cls.__new__(cls)
        agent.sandbox, agent.dragon, agent.process, agent.pid = sandbox, dragon, None, pid
        return agent

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the agent to exit; True if it did."""
        if self.process is not None:
            try:
                self.process.wait(max(0.0, timeout))
                return True
            except subprocess.TimeoutExpired:
                return False
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return True
        try:
            return wait_fd(fd, timeout)
        finally:
            os.close(fd)

    def kill(self) -> None:
        """SIGKILL the agent's process group (the agent and what is still in it)."""
        if self.process is not None and self.process.poll() is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def clean_up(self) -> None:
        """After a lost agent: kill everything of its session, and remove the `/dev/shm`
        segments its Dragon runtimes listed."""
        self.kill()
        kill_session(self.pid)
        if self.dragon:
            from ..backends.dragon.janitor import remove_listed_segments

            remove_listed_segments(self.sandbox)
