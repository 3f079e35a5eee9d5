"""Turning a function call's outcome into a `Result`: shared by the function workers
(worker.py) and the Dragon executor's pool (dragon/executor.py), so both report
errors, tracebacks and unserialisable return values alike."""

from __future__ import annotations

import io
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any

import cloudpickle
import msgspec

from ...files import TAIL_BYTES, private
from ...messages import TASK_REF
from .protocol import Outcome, Result

# pilotfish's backends: the frames of the worker and of the executor that called the task
_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_OK, _ERROR = Outcome.OK, Outcome.ERROR  # (an enum member's lookup costs ~70 ns a task)
# Where a function's output files go when it has no sandbox: the pilot's default task
# sandbox, which the pool gives its workers (and Dragon its executor) in the environment.
TASKS_DIR_ENV = "PILOTFISH_TASKS_DIR"


def format_error(exc: BaseException) -> str:
    """The traceback as the user wants it: from their code on, not from the worker's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and \
            tb.tb_frame.f_code.co_filename.startswith(_OURS):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


def pickle_exception(exc: BaseException) -> bytes | None:
    """The exception pickled (cloudpickle for classes defined in `__main__`), or None."""
    for dumps in (pickle.dumps, cloudpickle.dumps):
        try:
            return dumps(exc, protocol=_PROTOCOL)
        except Exception:
            pass
    return None


def failed(uid: str, exc: BaseException, start: float | None, stop: float) -> Result:
    """A task whose function (or its unpickling) raised `exc`."""
    return Result(uid, _ERROR, pickle_exception(exc), format_error(exc), start, stop)


def returned(uid: str, value: Any, start: float, stop: float) -> Result:
    """A task whose function returned `value`: OK with it pickled (cloudpickle if plain
    pickle cannot), or an ERROR if neither can serialise it."""
    try:
        return Result(uid, _OK, pickle.dumps(value, protocol=_PROTOCOL), None, start, stop)
    except Exception:
        pass
    try:
        return Result(uid, _OK, cloudpickle.dumps(value, protocol=_PROTOCOL), None, start,
                      stop)
    except Exception as exc:
        msg = f"return value of type {type(value).__name__} cannot be serialised: {exc}"
        return Result(uid, _ERROR, pickle_exception(TypeError(msg)), msg, start, stop)


def load_arguments(blob: bytes | None, inputs: dict[str, bytes] | None
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's (args, kwargs); each task among them becomes its result (`inputs`)."""
    if not blob:
        return (), {}
    if not inputs:
        return pickle.loads(blob)  # type: ignore[no-any-return]
    return _ArgumentsUnpickler(io.BytesIO(blob), inputs).load()  # type: ignore[no-any-return]


class _ArgumentsUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, inputs: dict[str, bytes]) -> None:
        super().__init__(file)
        self.inputs = inputs
        self.loaded: dict[str, Any] = {}  # a task named twice is one object

    def persistent_load(self, pid: Any) -> Any:
        kind, uid = pid
        if kind != TASK_REF or uid not in self.inputs:
            raise pickle.UnpicklingError(f"no result for the argument {pid!r}")
        if uid not in self.loaded:
            self.loaded[uid] = pickle.loads(self.inputs[uid])
        return self.loaded[uid]


def entered(env: dict[str, str] | None, cwd: str | None) -> Callable[[], None]:
    """Set a task's environment and working directory; return what puts them back."""
    saved = {k: os.environ.get(k) for k in env or ()}
    old_cwd = os.getcwd() if cwd else None
    if cwd:
        os.makedirs(cwd, exist_ok=True)
        os.chdir(cwd)
    if env:
        os.environ.update(env)

    def leave() -> None:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if old_cwd is not None:
            os.chdir(old_cwd)

    return leave


class Captured:
    """A call's prints: `sys.stdout` and `sys.stderr` are buffers while it runs (output
    written to the file descriptors themselves, by C code or child processes, is not
    caught: it goes to the worker's log). What it printed is kept as an executable's
    output is: `<sandbox>/<uid>.out` and `.err`, made only when there is something to
    keep, and its tails in the result."""

    __slots__ = ("err", "out", "saved")

    def __init__(self) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()

    def __enter__(self) -> Captured:
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.out, self.err
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self.saved

    def into(self, result: Result, sandbox: str | None) -> Result:
        """`result` with the tails of what the call printed ("" when it printed none),
        all of it saved in `sandbox` (else the pilot's task sandbox, else here)."""
        out, err = self.out.getvalue(), self.err.getvalue()
        if out or err:
            where = sandbox or os.environ.get(TASKS_DIR_ENV) or "."
            for text, suffix in ((out, ".out"), (err, ".err")):
                if text:
                    _save(os.path.join(where, result.uid + suffix), text)
        return msgspec.structs.replace(result, stdout=out[-TAIL_BYTES:],
                                       stderr=err[-TAIL_BYTES:])


def _save(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8", errors="replace", opener=private) as f:
            f.write(text)
    except OSError:
        pass  # (a full disk, a sandbox gone: the tails still come back)
