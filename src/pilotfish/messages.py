"""What crosses ZeroMQ between client and agent (msgpack via msgspec).

Every message is a batch: many tasks per `Submit`, many updates per `Updates`. Structs
are encoded as arrays (no field names on the wire) and tagged by type; `WIRE_VERSION`
is checked when the agent says hello. Receivers decode `ToAgent` and `ToClient` through
a `wire.Receiver`, which drops what does not fit. The agent's own wires are in
backends/functions/protocol.py and backends/dragon/protocol.py; all share `encode`.
"""

from __future__ import annotations

from typing import Literal

import msgspec

WIRE_VERSION = 5  # 2: Release/Released (moves between pilots); 3: dependencies; 4: services;
# 5: input groups (Submit.groups)


# How a task among a function's arguments is pickled: a persistent id (TASK_REF, uid),
# which the worker's unpickler turns into that task's result (`TaskSpec.inputs`).
TASK_REF = "pilotfish.task"


class Service(msgspec.Struct, frozen=True, kw_only=True):
    """What makes a long-running task a service, READY once its check passes: a `port`
    that accepts connections on its node, a `file` that appears, or a `command` that
    exits 0; tried every `interval` seconds, for up to `timeout` seconds (then it fails).
    Tasks naming it in `after` start once it is READY and find it in their environment:
    `PILOTFISH_SERVICE_<NAME>` (its name, else its uid, upper-cased) is `host:port` (a
    port check), else its host."""

    port: int | None = None
    file: str | None = None
    command: list[str] | None = None
    timeout: float = 60.0
    interval: float = 0.1


class TaskSpec(msgspec.Struct, array_like=True, frozen=True):
    """A task description on the wire (and in the journal)."""

    uid: str
    kind: str  # "executable" | "function"
    executable: str | None = None
    arguments: list[str] = []
    environment: dict[str, str] = {}
    sandbox: str | None = None
    function_key: str | None = None
    args_blob: bytes | None = None
    ranks: int = 1
    cores_per_rank: int = 1
    gpus_per_rank: float = 0.0
    priority: int = 0
    timeout: float | None = None
    name: str | None = None
    tags: dict[str, str] = {}
    ranks_per_node: int | None = None
    mem_per_rank: int = 0
    duration: float | None = None
    partition: str | None = None
    retries: int = 0  # placements elsewhere allowed when its partition is lost
    launcher: str | None = None  # a name of launchers.LAUNCHERS (None: the platform's)
    # Dependencies: tasks on this pilot to wait for (each must end DONE), and the results
    # standing for tasks among a function's arguments (None: the agent fills it in from
    # the task it waits for; bytes: the client's, of a task already done).
    after: list[str] = []
    inputs: dict[str, bytes | None] = {}
    service: Service | None = None


class Submit(msgspec.Struct, array_like=True, tag=True):
    tasks: list[TaskSpec]
    functions: dict[str, bytes] = {}  # pickled functions not sent to this agent before
    seen: int = 0  # final updates of this agent the client had applied (see Updates.finals)
    # Inputs many tasks share, sent once: a task whose `after` names a group waits for all
    # of its names (a stage of 256 tasks after one of 65,536: 65,536 names, not 16.7M).
    groups: dict[str, list[str]] = {}


class Cancel(msgspec.Struct, array_like=True, tag=True):
    uids: list[str]


class Release(msgspec.Struct, array_like=True, tag=True):
    """Give back those of these tasks that are still queued (not placed): the client
    moves them to a pilot with room (late binding across pilots)."""

    uids: list[str]


class Released(msgspec.Struct, array_like=True, tag=True):
    """The answer to a `Release`: the tasks that were still queued have left this agent
    (at `ts`); the others stay and run here."""

    uids: list[str]
    ts: float


class Idle(msgspec.Struct, array_like=True, tag=True):
    """To a simulated pilot's agent: the client applied `seen` of its final updates and
    ran their tasks' callbacks. The first makes the agent wait for the next ones before
    its clock jumps ahead: what callbacks submit starts when it would have (clock.py)."""

    seen: int


class Heartbeat(msgspec.Struct, array_like=True, tag=True):
    ts: float
    acked: int = 0  # from a client: the last `Updates.seq` its journal holds
    seen: int = 0  # from a client: final updates of this agent it has applied


class Shutdown(msgspec.Struct, array_like=True, tag=True):
    reason: str = ""


class Hello(msgspec.Struct, array_like=True, tag=True):
    """The agent is up and ready for tasks."""

    version: int
    pid: int
    ts: float
    nodes: int
    cores_per_node: int
    gpus_per_node: int


class Accepted(msgspec.Struct, array_like=True, tag=True):
    """The agent took these tasks in at `ts`: they are SUBMITTED."""

    uids: list[str]
    ts: float


# A TaskState's value (states.py), checked as it is decoded: an update the client could
# not apply is dropped with its message, never raised on the client's channel thread.
StateName = Literal["NEW", "SUBMITTED", "SCHEDULED", "RUNNING", "READY", "DONE", "FAILED",
                    "CANCELED"]


# Where a task ran: per node of the pilot (its index), the node's cores (0 .. cores per
# node - 1) and GPUs the task held there.
Placement = list[tuple[int, list[int], list[int]]]


class TaskUpdate(msgspec.Struct, array_like=True, omit_defaults=True):
    """A task's new state with every event since the last update, and its outcome."""

    uid: str
    state: StateName
    events: list[tuple[str, float]] = []
    exit_code: int | None = None
    error: str | None = None
    result: bytes | None = None  # pickled return value, or pickled exception
    stdout: str | None = None
    stderr: str | None = None
    pid: int | None = None  # process group of a running executable (for clean-up)
    partition: str | None = None  # where it ran (in final updates)
    placement: Placement | None = None  # (in final updates of tasks that were placed)
    address: str | None = None  # a READY service's (PILOTFISH_SERVICE_<NAME>)


class Updates(msgspec.Struct, array_like=True, tag=True):
    updates: list[TaskUpdate]
    clock_offset: float = 0.0  # the agent's clock minus the wall clock (simulated pilots)
    seq: int = 0  # numbered from 1 where the agent keeps them until acknowledged
    # Final updates in this message. The agent keeps the outcomes of ended tasks until
    # the client says (`seen`) it applied them: a task sent meanwhile may depend on one.
    finals: int = 0


class Attach(msgspec.Struct, array_like=True, tag=True):
    """To an agent whose client ended (on its attach socket): a new client listens at
    `address`; connect there and resend what it may have missed."""

    address: str
    client_pid: int | None = None  # on the agent's host: watched, as the first client's


class Bye(msgspec.Struct, array_like=True, tag=True):
    """The agent is exiting; `reason` says why; `stats` is what its work cost."""

    reason: str
    stats: dict[str, float] = {}


ToAgent = Submit | Cancel | Release | Idle | Heartbeat | Shutdown
ToClient = Hello | Accepted | Released | Updates | Heartbeat | Bye

encode = msgspec.msgpack.Encoder().encode
