"""What the agent's Dragon backend and the executor inside the runtime say to each other
(msgpack via msgspec, over a ZeroMQ PAIR socket; see executor.py).

Tagged structs encoded as arrays, checked on arrival (`wire.Receiver`). Function tasks
end with the same `Result` records as in pilotfish's function workers, and the messages
that are the same (`Ready`, `Started`, `Done`, `Cancel`, `Stop`) are theirs.
"""

from __future__ import annotations

import msgspec

from ..functions.protocol import Cancel, Done, Outcome, Ready, Result, Started, Stop

__all__ = [
    "Calls", "Cancel", "Done", "Exec", "ExecTask", "Exited", "FromExecutor", "Functions",
    "Outcome", "PoolCall", "Rank", "Ready", "Requeued", "Result", "Signal", "StartWorker",
    "Started", "Stop", "ToExecutor",
]


class PoolCall(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A function task for the executor's Dragon pool."""

    uid: str
    key: str
    args_blob: bytes | None
    timeout: float | None
    env: dict[str, str] | None  # the task's and its GPU visibility variable, while it runs
    worker: int  # the agent's worker index: its tasks go as one pool call; -1: a one-off
    cwd: str | None = None  # the task's sandbox, while it runs
    inputs: dict[str, bytes] | None = None  # results standing for tasks among the args


class Rank(msgspec.Struct, array_like=True, frozen=True):
    """One rank of an executable: its command line, environment, node and cores."""

    argv: list[str]
    env: dict[str, str]
    node: int  # index into the runtime's hosts (modulo: virtual nodes)
    cpus: list[int]  # cores to bind it to; none: unbound


class ExecTask(msgspec.Struct, array_like=True, frozen=True):
    """An executable task: its ranks, where it runs and where its output goes."""

    uid: str
    ranks: list[Rank]
    cwd: str
    out: str
    err: str
    timeout: float | None
    pmi: str | None  # None, "cray" or "pmix": the ranks are an MPI process group


# ---- agent -> executor -----------------------------------------------------------------


class Functions(msgspec.Struct, array_like=True, tag=True):
    """Pickled functions, each sent once, before the first call of each."""

    blobs: dict[str, bytes]


class Calls(msgspec.Struct, array_like=True, tag=True):
    """Function tasks for the Dragon pool."""

    calls: list[PoolCall]


class Exec(msgspec.Struct, array_like=True, tag=True):
    """Executables to start as Dragon processes (or process groups)."""

    tasks: list[ExecTask]


class StartWorker(msgspec.Struct, array_like=True, tag=True):
    """Start one of pilotfish's function workers as a Dragon process (it talks to the
    agent directly); its output goes to `log`."""

    ident: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log: str
    node: int


class Signal(msgspec.Struct, array_like=True, tag=True):
    """Signal a function worker started by `StartWorker`."""

    ident: str
    signum: int


# ---- executor -> agent -----------------------------------------------------------------


class Requeued(msgspec.Struct, array_like=True, tag=True):
    """Tasks of a pool call whose worker died before running them: place them again."""

    uids: list[str]


class Exited(msgspec.Struct, array_like=True, tag=True):
    """A function worker ended (exit_code None: it never started)."""

    ident: str
    exit_code: int | None


ToExecutor = Functions | Calls | Exec | StartWorker | Signal | Cancel | Stop
FromExecutor = Ready | Started | Done | Requeued | Exited
