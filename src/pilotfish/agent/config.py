"""What the client tells a new agent: its pilot, nodes and partitions.

The agent's one argument is this as JSON (local pilots), or the path of a file holding
it (batch pilots: `<pilot>/agent.json`, 0600, on the file system the job shares).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..pilots.slurm import current_allocation

# What sbatch sets from the task counts PSI/J always writes (one task a node) and srun
# would take as its defaults: a batch pilot's agent drops them, so its job steps (node
# executors, multi-node tasks) start as in an allocation of whole nodes.
JOB_TASK_VARIABLES = ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_NTASKS_PER_NODE")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    client_address: str
    pilot_uid: str
    sandbox: str
    nodes: int
    cores_per_node: int
    gpus_per_node: int
    workers_per_node: int
    function_workers: int | None = None  # the user's explicit choice, if any
    routing: str | None = None  # base64 of the pickled RoutingPolicy (None: the default)
    mem_per_node: int = 0  # MiB
    core_ids: list[int] | None = None  # physical id of each usable core (None: 0, 1, ...)
    gpu_env: str | None = "CUDA_VISIBLE_DEVICES"  # how a rank is told its GPUs
    backend: str = "builtin"  # or "simulated"
    partitions: list[tuple[str, str, int, int, str | None, list[float] | None]] = (
        dataclasses.field(default_factory=list))
    reserve_after: float = 30.0  # seconds a passed-over task waits for a reservation
    heartbeat_timeout: float = 5.0
    runtime: float | None = None
    parent_pid: int | None = None  # exit at once if this process ends (local pilots)
    python_path: list[str] = dataclasses.field(default_factory=list)  # for function workers
    backends: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # registered
    keys_file: str = ""  # the session's keys (keys.py): never in argv themselves
    detach_grace: float = 0.0  # seconds to run on without a client, waiting for a new one
    hosts: list[str] = dataclasses.field(default_factory=list)  # real nodes (empty: virtual)
    launcher: str = "srun"  # the platform's, for ranks spanning real nodes (launchers.py)
    interface: str = ""  # the platform's: where node executors connect ("": the host's name)
    batch_job: bool = False  # runs as a batch job: its hosts come from the job's environment
    runtime_margin: float = 0.0  # stop this long before `runtime` ends (a job's time limit)

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        return cls(**json.loads(text))

    @classmethod
    def load(cls, argument: str) -> AgentConfig:
        """From the agent's argument: JSON itself, or the path of a file holding it."""
        if argument.lstrip().startswith("{"):
            return cls.from_json(argument)
        with open(argument, encoding="utf-8") as f:
            return cls.from_json(f.read())

    def in_job(self, env: Mapping[str, str]) -> AgentConfig:
        """A batch pilot's config inside its job: the job's first `nodes` hosts (the
        client could not know them when it submitted). Raises ValueError outside a job or
        in one with fewer nodes."""
        allocation = current_allocation(env)
        if allocation is None:
            raise ValueError("a batch pilot's agent runs inside its Slurm job (SLURM_JOB_ID "
                             "is not set)")
        if len(allocation.hosts) < self.nodes:
            raise ValueError(f"Slurm job {allocation.job_id} has {len(allocation.hosts)} "
                             f"nodes, the pilot needs {self.nodes}")
        return dataclasses.replace(self, hosts=list(allocation.hosts[:self.nodes]))

    @property
    def stop_after(self) -> float | None:
        """Seconds from the agent's start until it stops for its runtime (None: never)."""
        return None if not self.runtime else max(0.0, self.runtime - self.runtime_margin)

    @property
    def runtime_reason(self) -> str:
        return (f"pilot runtime of {self.runtime:g} s exceeded"
                + (" (the job's time limit)" if self.batch_job else ""))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))
