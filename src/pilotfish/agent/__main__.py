"""Entry point of the agent process: `python -m pilotfish.agent CONFIG` (the config as JSON,
or the path of a JSON file: config.py)."""

from __future__ import annotations

import os
import signal
import sys
from typing import TextIO

from .config import JOB_TASK_VARIABLES, AgentConfig
from .shell import Agent


class LogStream:
    """The agent's log (its stdout and stderr): a write that fails (a full disk) is
    dropped, never raised into the agent's loop, which would end a pilot for want of a
    log line; the reason then reaches the tasks, not only a file nobody can write."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            pass

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def main() -> int:
    sys.stdout = sys.stderr = LogStream(sys.stderr)  # type: ignore[assignment]
    cfg = AgentConfig.load(sys.argv[1])
    if cfg.batch_job:  # in its Slurm job: the job's nodes are the pilot's
        cfg = cfg.in_job(os.environ)
        for name in JOB_TASK_VARIABLES:
            os.environ.pop(name, None)
    agent = Agent(cfg)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop("agent terminated (SIGTERM)"))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    profile = os.environ.get("PILOTFISH_PROFILE_AGENT")
    if profile:  # a developer's switch: cProfile the agent's whole run into this file
        import cProfile

        profiler = cProfile.Profile()
        reason = profiler.runcall(agent.run)
        profiler.dump_stats(profile)
    else:
        reason = agent.run()
    print(f"agent {cfg.pilot_uid} stopped: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
