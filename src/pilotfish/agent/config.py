"""What the client tells a new agent (one JSON argument): its pilot, nodes and partitions."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


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
    partitions: list[tuple[str, str, int, int, str | None]] = dataclasses.field(
        default_factory=list)
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

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        return cls(**json.loads(text))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))
