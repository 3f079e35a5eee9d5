"""A persistent function worker: runs Python function tasks one at a time, in order.

Started once per pilot by the built-in backend (`python -m pilotfish.agent.worker ADDR
IDENT`), it receives batches of tasks over ZeroMQ and sends results back in batches,
flushing at least every few milliseconds so results do not wait behind long tasks.

Timeouts use SIGALRM; cancelling the running task uses SIGUSR1 after a cancel message.
Both raise inside the task's own code (between bytecodes, or when a blocking call such as
`time.sleep` is interrupted); code stuck in C without checking signals is not interrupted.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from typing import Any

import cloudpickle
import zmq

from ..messages import decode_plain, encode_plain
from .reactor import readable

FLUSH_INTERVAL = 0.002  # seconds a finished result may wait to share a message
CANCEL_MESSAGE_WAIT_MS = 1000
ANNOUNCE_AFTER = 0.01  # a task that ran longer makes the worker announce the next start

# Outcomes reported per task.
OK, ERROR, CANCELED, TIMEOUT = 0, 1, 2, 3


class _Interrupt(BaseException):
    """Raised inside a task's code by a signal; BaseException so user code rarely eats it."""

    def __init__(self, outcome: int) -> None:
        self.outcome = outcome


class FunctionWorker:
    def __init__(self, address: str, ident: str) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, ident.encode())
        self.sock.setsockopt(zmq.LINGER, 2000)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(address)
        self.functions: dict[str, Any] = {}
        self.blobs: dict[str, bytes] = {}
        self.queue: deque[tuple[str, str, bytes | None, float | None]] = deque()
        self.canceled: set[str] = set()
        self.current: str | None = None
        self.in_task = False
        self.stopping = False

    # ---- messages ---------------------------------------------------------------------

    def _handle(self, raw: bytes) -> None:
        msg = decode_plain(raw)
        kind = msg[0]
        if kind == "run":
            self.blobs.update(msg[2])
            self.queue.extend(msg[1])
        elif kind == "cancel":
            self.canceled.update(msg[1])
        elif kind == "stop":
            self.stopping = True

    def _drain(self) -> None:
        while readable(self.sock):
            self._handle(self.sock.recv())

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.in_task:
            return  # the loop is between tasks (maybe inside zmq): it checks by itself
        if signum == signal.SIGALRM:
            raise _Interrupt(TIMEOUT)
        # Safe: the main thread is in user code, not in a zmq call. The agent sends the
        # cancel message before the signal, but the signal may overtake it: wait for it.
        if self.sock.poll(CANCEL_MESSAGE_WAIT_MS):
            self._drain()
        if self.current in self.canceled:
            raise _Interrupt(CANCELED)

    # ---- running ----------------------------------------------------------------------

    def _function(self, key: str) -> Any:
        fn = self.functions.get(key)
        if fn is None:
            fn = self.functions[key] = pickle.loads(self.blobs.pop(key))
        return fn

    def _run_one(self, uid: str, key: str, args_blob: bytes | None,
                 timeout: float | None) -> tuple[Any, ...]:
        start = time.time()
        if uid in self.canceled:
            self.canceled.discard(uid)
            return (uid, CANCELED, None, "canceled before it started", start, start)
        try:
            fn = self._function(key)
            args, kwargs = pickle.loads(args_blob) if args_blob else ((), {})
        except Exception as exc:
            return (uid, ERROR, _pickle_exception(exc), _format(exc), start, time.time())
        self.current = uid
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            self.in_task = True
            start = time.time()
            value = fn(*args, **kwargs)
            self.in_task = False
            stop = time.time()
        except _Interrupt as intr:
            self.in_task = False
            stop = time.time()
            reason = f"timed out after {timeout} s" if intr.outcome == TIMEOUT else "canceled"
            return (uid, intr.outcome, None, reason, start, stop)
        except BaseException as exc:
            self.in_task = False
            stop = time.time()
            return (uid, ERROR, _pickle_exception(exc), _format(exc), start, stop)
        finally:
            self.in_task = False
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
            self.current = None
            self.canceled.discard(uid)
        try:
            blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            try:
                blob = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                msg = f"return value of type {type(value).__name__} cannot be serialised: {exc}"
                return (uid, ERROR, _pickle_exception(TypeError(msg)), msg, start, stop)
        return (uid, OK, blob, None, start, stop)

    def run(self) -> None:
        signal.signal(signal.SIGALRM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.sock.send(encode_plain(("ready", os.getpid())))
        parent = os.getppid()
        results: list[tuple[Any, ...]] = []
        first_result = 0.0
        while not self.stopping:
            announce = False
            if not self.queue:
                if results:
                    self.sock.send(encode_plain(("done", results)))
                    results = []
                if not self.sock.poll(1000):
                    if os.getppid() != parent:
                        return  # the agent is gone
                    continue
                announce = True
            self._drain()
            while self.queue and not self.stopping:
                uid, key, args_blob, timeout = self.queue.popleft()
                if announce:
                    # After idling or a long task, the next may be long too: say it runs.
                    self.sock.send(encode_plain(("started", uid, time.time())))
                results.append(self._run_one(uid, key, args_blob, timeout))
                now = results[-1][5]
                announce = now - results[-1][4] > ANNOUNCE_AFTER
                if len(results) == 1:
                    first_result = now
                if announce or now - first_result > FLUSH_INTERVAL:
                    self.sock.send(encode_plain(("done", results)))
                    results = []
                if readable(self.sock):
                    self._drain()
        if results:
            self.sock.send(encode_plain(("done", results)))


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


def _pickle_exception(exc: BaseException) -> bytes | None:
    for dumps in (pickle.dumps, cloudpickle.dumps):  # cloudpickle: classes in __main__
        try:
            return dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            pass
    return None


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the agent dies, however it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return  # the agent died before we asked to follow it
    worker = FunctionWorker(args[0], args[1])
    try:
        worker.run()
    finally:
        worker.sock.close(linger=2000)
        worker.ctx.term()


if __name__ == "__main__":
    main()
