"""The campaign's Python payloads, in a module of their own: a function worker imports
the module of each function it runs, and this one needs nothing of pilotfish (the
campaign module would bring the client's descriptions along, ~0.1 s a worker)."""

from __future__ import annotations

import os
import time


def infer(candidate: int, seconds: float) -> float:
    """One inference call: asks the model server (when there is one), then works."""
    address = os.environ.get("PILOTFISH_SERVICE_MODEL")
    if address:
        import urllib.request

        with urllib.request.urlopen(f"http://{address}/", timeout=10) as reply:
            reply.read()
    time.sleep(seconds)
    return (candidate * 7919 % 1000) / 1000.0  # a score


def select(iteration: int, seconds: float) -> int:
    time.sleep(seconds)
    return iteration
