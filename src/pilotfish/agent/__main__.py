"""Entry point of the agent process: `python -m pilotfish.agent CONFIG_JSON`."""

from __future__ import annotations

import os
import signal
import sys

from .config import AgentConfig
from .shell import Agent


def main() -> int:
    cfg = AgentConfig.from_json(sys.argv[1])
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
