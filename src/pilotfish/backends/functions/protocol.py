"""What the agent and its function workers say to each other (msgpack via msgspec).

Messages are tagged structs encoded as arrays: about as small and as fast to encode and
decode as plain tuples (the hot path of function tasks), but checked on arrival
(`wire.Receiver`). Per-task records (`Call`, `Result`) are frozen and untracked by the
garbage collector (`gc=False`: they hold no containers that could form cycles).

`Result` is also what a Dragon executor reports for its tasks (dragon/protocol.py).
"""

from __future__ import annotations

import enum

import msgspec

from ...states import TaskState


class Outcome(enum.IntEnum):
    """How a task ended, as its worker saw it."""

    OK = 0
    ERROR = 1
    CANCELED = 2
    TIMEOUT = 3


STATES: dict[Outcome, TaskState] = {
    Outcome.OK: TaskState.DONE,
    Outcome.ERROR: TaskState.FAILED,
    Outcome.CANCELED: TaskState.CANCELED,
    Outcome.TIMEOUT: TaskState.FAILED,
}
"""The final state of a task that ended with each outcome."""


class Call(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A function task: call the function `key` with the pickled (args, kwargs), with
    `env` set in `os.environ` and in the directory `cwd` (made if need be) while it runs."""

    uid: str
    key: str
    args_blob: bytes | None
    timeout: float | None
    env: dict[str, str] | None = None
    cwd: str | None = None
    inputs: dict[str, bytes] | None = None  # results standing for tasks among the args


class Result(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """How a task ended: its pickled return value (or exception), error text, times."""

    uid: str
    outcome: Outcome
    result: bytes | None
    error: str | None
    exec_start: float | None  # None: it never started
    exec_stop: float
    exit_code: int | None = None  # an executable's (Dragon); None for functions
    stdout: str | None = None  # a function's prints (their tail), while it ran
    stderr: str | None = None


# ---- agent -> worker -------------------------------------------------------------------


class Run(msgspec.Struct, array_like=True, tag=True):
    """Run these calls in order, after those already queued; `functions` holds the
    pickled functions this worker has not been sent before."""

    calls: list[Call]
    functions: dict[str, bytes] = {}


class Cancel(msgspec.Struct, array_like=True, tag=True):
    """Do not run these tasks; interrupt the one running (a SIGUSR1 follows)."""

    uids: list[str]


class Stop(msgspec.Struct, array_like=True, tag=True):
    """Send the results held and exit."""


# ---- worker -> agent -------------------------------------------------------------------


class Ready(msgspec.Struct, array_like=True, tag=True):
    """The worker is up and takes tasks."""

    pid: int


class Started(msgspec.Struct, array_like=True, tag=True):
    """The task has been running for a while (the worker's announcer thread)."""

    uid: str
    ts: float


class Done(msgspec.Struct, array_like=True, tag=True):
    """Tasks that ended, in the order they ran."""

    results: list[Result]


ToWorker = Run | Cancel | Stop
FromWorker = Ready | Started | Done
