"""The client's handle on one task: a `concurrent.futures.Future` with a state and events.

Deviations from `Future`, on purpose:

* `cancel()` asks the agent to cancel a queued or *running* task and returns True if the
  task was not final yet; the task becomes CANCELED when the agent confirms (or ends
  DONE/FAILED if it finished first).
* The future's condition variable is created on first use (a wait, a callback), not
  per task: a session of 100,000 tasks that nobody waits on one by one stays cheap.
* `result()` of an executable is its exit code; a non-zero exit raises `TaskFailed`.
* Done-callbacks run on the session's callback thread, not on the thread that completed
  the task: a slow callback cannot stall the session's messaging.
"""

from __future__ import annotations

import concurrent.futures
import linecache
import pickle
import re
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, Protocol

from .description import TaskDescription
from .messages import Placement
from .states import TaskState


class Canceller(Protocol):
    """Who a task asks to cancel it (its session), and tells of its callbacks."""

    def cancel(self, tasks: Iterable[Task]) -> None: ...

    def _watched(self, task: Task) -> None: ...

_CONDITION_LOCK = threading.Lock()


class TaskFailed(Exception):
    """A task ended FAILED: a non-zero exit, a timeout, a launch error or a lost agent."""

    def __init__(self, uid: str, reason: str, exit_code: int | None = None,
                 stderr: str | None = None) -> None:
        message = f"task {uid} failed: {reason}"
        if stderr:
            message += "\n--- stderr (tail) ---\n" + stderr.rstrip()
        super().__init__(message)
        self.uid, self.reason, self.exit_code, self.stderr = uid, reason, exit_code, stderr


class RemoteError(Exception):
    """A function's exception that could not be rebuilt in the client (its text is kept)."""


class RemoteTraceback(Exception):
    """Carries the remote traceback text; set as `__cause__` of a function's exception."""

    def __str__(self) -> str:
        return str(self.args[0])


class Task(Future):  # type: ignore[type-arg]
    # Defaults live on the class: a session creates many tasks, most never set these.
    state = TaskState.NEW
    exit_code: int | None = None
    error: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    pid: int | None = None
    partition: str | None = None  # where it ran, once it ended
    placement: Placement | None = None  # ... and on what (pilot nodes, cores, GPUs)
    pinned = False  # submitted to a pilot the user chose: it never moves to another
    address: str | None = None  # a READY service's: host:port (a port check), else host
    _pilotfish_task = True  # (how descriptions know a Task among a function's arguments)
    _state = PENDING
    _result: Any = None
    _exception: BaseException | None = None

    def __init__(self, uid: str, seq: int, description: TaskDescription | None, pilot: str,
                 session: Canceller, kind: str | None = None) -> None:
        # Future.__init__ is skipped on purpose: it builds a Condition (and two lists) per
        # future; here they are made on first use (see _condition, _waiters).
        self.uid = uid
        self.id = seq
        self.description = description  # None: a task an earlier client submitted
        self.kind = kind or (description.kind if description is not None else "executable")
        self.pilot = pilot
        self._session = session
        self.events: list[tuple[str, float]] = []

    def add_done_callback(self, fn: Any) -> None:
        super().add_done_callback(fn)
        if not self.state.final:
            self._session._watched(self)  # (a simulated pilot waits for callbacks)

    def __reduce__(self) -> Any:
        raise TypeError(f"{self.uid} cannot be pickled: a task among a function's "
                        "arguments stands for its result (TaskDescription does that)")

    @property
    def cores(self) -> int:
        """The cores it asked for (0 for a task an earlier client submitted)."""
        d = self.description
        return d.ranks * d.cores_per_rank if d is not None else 0

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        return self.__dict__.setdefault("_waiter_list", [])

    @property
    def _done_callbacks(self) -> list[Any]:  # type: ignore[override]
        return self.__dict__.setdefault("_callback_list", [])

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond: threading.Condition | None = self.__dict__.get("_cond")
        if cond is None:
            with _CONDITION_LOCK:
                cond = self.__dict__.get("_cond")
                if cond is None:
                    cond = self.__dict__["_cond"] = threading.Condition()
        return cond

    def __repr__(self) -> str:
        return f"<Task {self.uid} {self.state.value}>"

    # Lock-free reads: the state attribute is replaced atomically.
    def done(self) -> bool:
        return self.state.final

    def cancelled(self) -> bool:
        return self.state is TaskState.CANCELED

    def running(self) -> bool:
        return self.state is TaskState.RUNNING

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._late(timeout)) from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            raise concurrent.futures.TimeoutError(self._late(timeout)) from None

    def _late(self, timeout: float | None) -> str:
        return f"{self.uid} not done within {timeout:g} s (it is {self.state.value})"

    def cancel(self) -> bool:
        if self.state.final:
            return False
        self._session.cancel([self])
        return True

    @property
    def attempt(self) -> int:
        """Which run of the task this is (or was): 1, plus one for each time it was placed
        again after what ran it was lost (as its `retries` allow)."""
        return 1 + sum(1 for name, _ in self.events if name == "requeued")

    # ---- called by the session's channel thread ---------------------------------------

    def _resolve(self, state: TaskState, blob: bytes | None) -> tuple[TaskState, bool]:
        """Set the outcome from the agent's final update and wake whoever waits.

        Returns the final state (a result that cannot be unpickled here turns DONE into
        FAILED) and whether done-callbacks are waiting to be run (by the caller's
        callback thread, never by the channel thread).
        """
        result: Any = None
        exception: BaseException | None = None
        if state is TaskState.DONE:
            if self.kind == "executable":
                result = self.exit_code
            elif blob:
                try:
                    result = _load(blob)
                except Exception as exc:
                    state = TaskState.FAILED
                    self.error = f"its result cannot be unpickled in the client: {exc!r}"
                    exception = TaskFailed(self.uid, self.error)
        elif state is TaskState.CANCELED:
            result, exception = None, None
        else:
            result, exception = None, self._failure(blob)
        # Set the outcome first, then look for a condition: a waiter that creates one
        # after this look sees the outcome already set (the GIL orders the two), and one
        # that created it before is notified below. So most tasks take no lock at all.
        self._result, self._exception = result, exception
        self._state = CANCELLED_AND_NOTIFIED if state is TaskState.CANCELED else FINISHED
        self.state = state
        cond = self.__dict__.get("_cond")
        if cond is None:  # nobody waits, no callback: no one to notify
            return state, False
        with cond:
            for waiter in self._waiters:
                if state is TaskState.CANCELED:
                    waiter.add_cancelled(self)
                elif exception is not None:
                    waiter.add_exception(self)
                else:
                    waiter.add_result(self)
            cond.notify_all()
        return state, bool(self._done_callbacks)

    def _failure(self, blob: bytes | None) -> BaseException:
        reason = self.error or "failed"
        if self.kind == "executable" or blob is None:
            return TaskFailed(self.uid, reason, self.exit_code, self.stderr)
        try:
            exc = _load(blob)
        except Exception:
            return RemoteError(reason)
        if not isinstance(exc, BaseException):
            return RemoteError(reason)
        function = self.description.function if self.description is not None else None
        exc.__cause__ = RemoteTraceback(with_source(reason, function))
        exc.add_note(f"(raised by task {self.uid}: its remote traceback is above)")
        return exc


_DYNAMIC_FRAME = re.compile(r'(\s*)File "<dynamic-code>", line (\d+), in (.+)$')


def with_source(text: str, function: Any) -> str:
    """A remote traceback with the frames of functions sent by value (from `__main__` or
    a notebook: cloudpickle names their file "<dynamic-code>") given back the file of the
    submitted function and their source lines, which this process can read."""
    path = getattr(getattr(function, "__code__", None), "co_filename", None)
    if not path or "<dynamic-code>" not in text:
        return text
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        frame = _DYNAMIC_FRAME.match(line)
        if frame is None:
            out.append(line)
            continue
        indent, number, name = frame.groups()
        out.append(f'{indent}File "{path}", line {number}, in {name}')
        source = linecache.getline(path, int(number)).strip()
        after = lines[i + 1] if i + 1 < len(lines) else ""
        shown = after.startswith(indent + "  ") and not after.lstrip().startswith("File ")
        if source and not shown:
            out.append(f"{indent}  {source}")
    return "\n".join(out)


def _load(blob: bytes) -> Any:
    return pickle.loads(blob)
