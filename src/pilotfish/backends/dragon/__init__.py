"""The Dragon backend: a Dragon runtime per partition (backend.py), the executor that runs
inside it (executor.py), the messages between them (protocol.py), and the `/dev/shm`
janitor.

Importing this package loads nothing of Dragon: `unavailable()` says whether it can run.
"""

from __future__ import annotations

import os
import sys


def launcher() -> str:
    """The `dragon` command of this Python's environment."""
    return os.path.join(os.path.dirname(sys.executable), "dragon")


def unavailable() -> str | None:
    """None if Dragon can be used here, else why not."""
    try:
        import dragon  # noqa: F401
    except ImportError:
        return "the dragonhpc package is not installed (pip install 'pilotfish[dragon]')"
    if not os.path.exists(launcher()):
        return f"the dragon launcher is not at {launcher()}"
    return None
