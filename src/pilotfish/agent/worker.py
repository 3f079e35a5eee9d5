"""A persistent function worker: runs Python function tasks one at a time, in order.

Started once per pilot by the built-in backend (`python -m pilotfish.agent.worker ADDR
IDENT`), it receives batches of tasks over ZeroMQ and sends results back in batches,
flushing at least every few milliseconds so results do not wait behind long tasks.

A timer (SIGALRM) fires `ANNOUNCE_AFTER` into every task: if the task still runs, the
worker sends the results it holds and says the task is RUNNING; the same timer enforces
the task's timeout. Cancelling the running task uses SIGUSR1 after a cancel message.
Both raise inside the task's own code (between bytecodes, or when a blocking call such as
`time.sleep` is interrupted); code stuck in C without checking signals is not
interrupted. (So a task should not use SIGALRM or `setitimer` itself.)
"""

from __future__ import annotations

import mmap
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
ANNOUNCE_AFTER = 0.01  # a task still running after this is announced as RUNNING

# Outcomes reported per task.
OK, ERROR, CANCELED, TIMEOUT = 0, 1, 2, 3


class _Interrupt(BaseException):
    """Raised inside a task's code by a signal; BaseException so user code rarely eats it."""

    def __init__(self, outcome: int) -> None:
        self.outcome = outcome


class FunctionWorker:
    def __init__(self, address: str, ident: str, counter_path: str | None = None) -> None:
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
        self.current_start = 0.0
        self.deadline: float | None = None  # of the current task's timeout
        self.announced = False
        self.results: list[tuple[Any, ...]] = []  # finished, not yet sent
        self.in_task = False
        self.stopping = False
        # Tasks started so far, in a file the agent reads if this worker dies.
        self.started = 0
        self.counter: mmap.mmap | None = None
        if counter_path:
            with open(counter_path, "r+b") as f:
                self.counter = mmap.mmap(f.fileno(), 8)

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

    def _send_results(self) -> None:
        if self.results:
            self.sock.send(encode_plain(("done", self.results)))
            self.results = []

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.in_task:
            return  # the loop is between tasks (maybe inside zmq): it checks by itself
        # Safe to use the socket: the main thread is in user code, not in a zmq call.
        if signum == signal.SIGALRM:
            now = time.time()
            if self.deadline is not None and now >= self.deadline - 0.001:
                raise _Interrupt(TIMEOUT)
            if not self.announced:
                self.announced = True
                self._send_results()
                self.sock.send(encode_plain(("started", self.current, self.current_start)))
            if self.deadline is not None:
                signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - now))
            return
        # The agent sends the
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
        self.started += 1  # counts every task taken, in dispatch order
        if self.counter is not None:
            self.counter[:8] = self.started.to_bytes(8, "little")
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
        self.announced = False
        start = self.current_start = time.time()
        self.deadline = start + timeout if timeout else None
        signal.setitimer(signal.ITIMER_REAL, min(ANNOUNCE_AFTER, timeout or ANNOUNCE_AFTER))
        try:
            self.in_task = True
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
        first_result = 0.0
        while not self.stopping:
            if not self.queue:
                self._send_results()
                if not self.sock.poll(1000):
                    if os.getppid() != parent:
                        return  # the agent is gone
                    continue
            self._drain()
            while self.queue and not self.stopping:
                result = self._run_one(*self.queue.popleft())
                self.results.append(result)
                if len(self.results) == 1:
                    first_result = result[5]
                elif result[5] - first_result > FLUSH_INTERVAL:
                    self._send_results()
                if readable(self.sock):
                    self._drain()
        self._send_results()


_OURS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # pilotfish's files


def _format(exc: BaseException) -> str:
    """The traceback as the user wants it: from their code on, not from the worker's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and \
            tb.tb_frame.f_code.co_filename.startswith(_OURS):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()


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
    worker = FunctionWorker(args[0], args[1], args[2] if len(args) > 2 else None)
    try:
        worker.run()
    finally:
        worker.sock.close(linger=2000)
        worker.ctx.term()


if __name__ == "__main__":
    main()
