"""Starting an agent on this machine: the `local` platform (virtual nodes, cores, GPUs)."""

from __future__ import annotations

import dataclasses
import json
import os
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
