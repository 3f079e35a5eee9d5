"""A started pilot as the client holds it: description, agent or batch job, state."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Protocol

from .description import PilotDescription
from .pilots.batch import BatchJob
from .pilots.local import LocalAgent


class PilotOwner(Protocol):
    """What a pilot asks of its session."""

    def _cancel_pilot(self, pilot: Pilot, reason: str, timeout: float) -> None: ...


class Pilot:
    """A started pilot: its description, agent (a local process, or a batch job), and state.

    `state`: STARTING (a local agent starting) or PENDING (a batch pilot's job submitted,
    its agent not connected yet), then ACTIVE once its agent says hello, then DONE,
    FAILED or CANCELED; `reason` says why (while PENDING: the job's pending reason).
    """

    def __init__(self, uid: str, description: PilotDescription, sandbox: Path,
                 session: PilotOwner | None = None) -> None:
        self.uid = uid
        self.description = description
        self.sandbox = sandbox
        self.state = "STARTING"  # or PENDING -> ACTIVE -> DONE | FAILED | CANCELED
        self.reason: str | None = None
        self.agent: LocalAgent | None = None
        self.job: BatchJob | None = None  # a batch pilot's Slurm job
        self.submitted = time.monotonic()  # when start_pilot was called
        self.startup_time: float | None = None  # seconds from start_pilot to ACTIVE
        self.ready = threading.Event()  # ACTIVE, or ended without
        self.stopped = threading.Event()
        self._session = session
        self._lock = threading.Lock()
        self._ended = False  # its end is decided (stopped is set once it is recorded)
        self._canceling: str | None = None  # why cancel() stops it
        self.outstanding = 0  # tasks submitted to it and not final yet
        self.load = 0.0  # cores of those tasks (and of tasks on their way to it)
        self.finals_seen = 0  # final updates of its agent applied (see Updates.finals)
        self.reactive = False  # a simulated pilot told to wait for callbacks (m.Idle)
        self.simulated = description.backend == "simulated"  # (every partition, then)
        # Late binding across pilots: tasks may move to it, or from it to another.
        self.movable = not self.simulated
        self.stats: dict[str, float] = {}  # what its agent's work cost (when it ended)
        self.agent_pid: int | None = None  # as its agent said hello
        assert description.cores_per_node is not None and description.nodes is not None
        self.cores = description.nodes * description.cores_per_node

    def __repr__(self) -> str:
        return f"<Pilot {self.uid} {self.state}>"

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"

    @property
    def job_id(self) -> str | None:
        """A batch pilot's Slurm job id."""
        return self.job.job_id if self.job is not None else None

    def wait_active(self, timeout: float | None = None) -> bool:
        """Block until the pilot is ACTIVE (True), or ended without becoming so, or
        `timeout` seconds passed (False: see `state` and `reason`)."""
        self.ready.wait(timeout)
        return self.active

    def cancel(self, timeout: float = 10.0) -> None:
        """End the pilot: a pending batch pilot's job is canceled and its tasks end
        CANCELED; a running one stops (its tasks CANCELED), then its job is canceled.
        Its state becomes CANCELED (unless it had ended)."""
        if self._session is None:
            raise RuntimeError(f"{self.uid} belongs to no session")
        self._session._cancel_pilot(self, "pilot canceled", timeout)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The agent's process (on this machine)."""
        return self.agent.process if self.agent is not None else None
