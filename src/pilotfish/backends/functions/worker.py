"""A persistent function worker: runs Python function tasks one at a time, in order.

Started by a backend's function pool (`python -m pilotfish.backends.functions.worker
ADDRESS IDENT COUNTER KEYS_FILE`), it connects with the session's keys (keys.py), receives
batches of tasks over ZeroMQ and sends results back in batches (the messages are in
protocol.py), flushing at least every few milliseconds so
results do not wait behind long tasks. A message it cannot decode is dropped and logged
(to its log file), never fatal.

A task still running `ANNOUNCE_AFTER` after it started is announced as RUNNING, with the
results the worker holds, by a thread with a socket of its own (`_Announcer`): a signal
would cut the task's blocking C calls short (EINTR; e.g. libc `sleep` returns early).
Signals are kept for what must interrupt the task: its timeout (SIGALRM, from
`setitimer`, only for tasks that have one) and a cancel (SIGUSR1, after a cancel
message). Both raise inside the task's own code (between bytecodes, or when a blocking
call such as `time.sleep` is interrupted); code stuck in C without checking signals is
not interrupted. (So a task with a timeout should not use SIGALRM or `setitimer`
itself.)
"""

from __future__ import annotations

import mmap
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from typing import Any

import zmq

from ...keys import Keys
from ...messages import encode
from ...reactor import readable
from ...wire import Receiver
from .calls import Captured, entered, failed, load_arguments, returned
from .protocol import Call, Cancel, Done, Outcome, Ready, Result, Run, Started, Stop, ToWorker

FLUSH_INTERVAL = 0.002  # seconds a finished result may wait to share a message
CANCEL_MESSAGE_WAIT_MS = 1000
ANNOUNCE_AFTER = 0.01  # a task still running after this is announced as RUNNING
ANNOUNCER_SUFFIX = "+announcer"  # the announcer's identity: the worker's, then this
PARENT_PID_ENV = "PILOTFISH_WORKER_PARENT"  # the pid of the process that started a worker


class _Interrupt(BaseException):
    """Raised inside a task's code by a signal; BaseException so user code rarely eats it."""

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class FunctionWorker:
    def __init__(self, address: str, ident: str, counter_path: str | None, keys: Keys) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.keys = keys
        self.sock = _connect(self.ctx, address, ident, keys)
        self.receiver: Receiver[ToWorker] = Receiver(f"function worker {ident}", ToWorker)
        self.functions: dict[str, Any] = {}
        self.blobs: dict[str, bytes] = {}
        self.queue: deque[Call] = deque()
        self.canceled: set[str] = set()
        self.deadline: float | None = None  # of the current task's timeout
        # The running task as (number, uid, start), read by the announcer; None between.
        self.running: tuple[int, str, float] | None = None
        self._results: list[Result] = []  # finished, not yet sent
        self._results_lock = threading.Lock()  # the announcer sends them too
        self.in_task = False
        self.stopping = False
        # Tasks started so far, in a file the agent reads if this worker dies.
        self.started = 0
        self.counter: mmap.mmap | None = None
        if counter_path:
            with open(counter_path, "r+b") as f:
                self.counter = mmap.mmap(f.fileno(), 8)
        self.announcer = _Announcer(self, address, ident)

    # ---- messages ---------------------------------------------------------------------

    def _handle(self, raw: bytes) -> None:
        msg = self.receiver.decode(raw)
        if type(msg) is Run:
            self.blobs.update(msg.functions)
            self.queue.extend(msg.calls)
        elif type(msg) is Cancel:
            self.canceled.update(msg.uids)
        elif type(msg) is Stop:
            self.stopping = True

    def _drain(self) -> None:
        while readable(self.sock):
            self._handle(self.sock.recv())

    def _hold(self, result: Result) -> int:
        """Keep a finished task's result for the next message; return how many are held."""
        with self._results_lock:
            self._results.append(result)
            return len(self._results)

    def take_results(self) -> list[Result]:
        with self._results_lock:
            results, self._results = self._results, []
        return results

    def _send_results(self) -> None:
        results = self.take_results()
        if results:
            self.sock.send(encode(Done(results)))

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.in_task:
            return  # the loop is between tasks (maybe inside zmq): it checks by itself
        if signum == signal.SIGALRM:
            now = time.time()
            if self.deadline is not None and now >= self.deadline - 0.001:
                raise _Interrupt(Outcome.TIMEOUT)
            if self.deadline is not None:  # early (the clock moved): wait again
                signal.setitimer(signal.ITIMER_REAL, max(0.001, self.deadline - now))
            return
        # Safe to use the socket: the main thread is in user code, not in a zmq call. The
        # agent sends the cancel message before the signal, but the signal may overtake
        # it: wait for it.
        if self.sock.poll(CANCEL_MESSAGE_WAIT_MS):
            self._drain()
        if self.running is not None and self.running[1] in self.canceled:
            raise _Interrupt(Outcome.CANCELED)

    # ---- running ----------------------------------------------------------------------

    def _function(self, key: str) -> Any:
        fn = self.functions.get(key)
        if fn is None:
            fn = self.functions[key] = pickle.loads(self.blobs.pop(key))
        return fn

    def _run_one(self, call: Call) -> Result:
        uid, timeout = call.uid, call.timeout
        self.started += 1  # counts every task taken, in dispatch order
        if self.counter is not None:
            self.counter[:8] = self.started.to_bytes(8, "little")
        start = time.time()
        if uid in self.canceled:
            self.canceled.discard(uid)
            return Result(uid, Outcome.CANCELED, None, "canceled before it started", start,
                          start)
        try:
            fn = self._function(call.key)
            args, kwargs = load_arguments(call.args_blob, call.inputs)
            leave = entered(call.env, call.cwd) if call.env or call.cwd else None
        except Exception as exc:
            return failed(uid, exc, start, time.time())
        start = time.time()
        self.running = (self.started, uid, start)
        self.deadline = start + timeout if timeout else None
        if timeout:
            signal.setitimer(signal.ITIMER_REAL, timeout)
        capture = Captured()
        try:
            self.in_task = True
            with capture:
                value = fn(*args, **kwargs)
            self.in_task = False
            stop = time.time()
        except _Interrupt as intr:
            self.in_task = False
            stop = time.time()
            reason = (f"timed out after {timeout} s" if intr.outcome == Outcome.TIMEOUT
                      else "canceled")
            return capture.into(Result(uid, intr.outcome, None, reason, start, stop), call.cwd)
        except BaseException as exc:
            self.in_task = False
            return capture.into(failed(uid, exc, start, time.time()), call.cwd)
        finally:
            self.in_task = False
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if leave is not None:
                leave()
            self.running = None
            self.announcer.task_ended(self.started)
            self.canceled.discard(uid)
        return capture.into(returned(uid, value, start, stop), call.cwd)

    def run(self, parent: int | None = None) -> None:
        """Run calls until told to stop, or until `parent` (the pid that started this
        worker; default: its parent now) is no longer its parent."""
        signal.signal(signal.SIGALRM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.announcer.start()
        self.sock.send(encode(Ready(os.getpid())))
        parent = parent or os.getppid()
        first_result = 0.0
        while not self.stopping:
            if not self.queue:
                self._send_results()
                self.announcer.busy.clear()
                if not self.sock.poll(1000):
                    if os.getppid() != parent:
                        return  # the agent is gone
                    continue
            self._drain()
            if self.queue and not self.announcer.busy.is_set():
                self.announcer.busy.set()
            while self.queue and not self.stopping:
                result = self._run_one(self.queue.popleft())
                if self._hold(result) == 1:
                    first_result = result.exec_stop
                elif result.exec_stop - first_result > FLUSH_INTERVAL:
                    self._send_results()
                if readable(self.sock):
                    self._drain()
        self._send_results()

    def close(self) -> bool:
        """Close the sockets; False if the announcer did not stop (then leave zmq be)."""
        stopped = self.announcer.stop()
        self.sock.close(linger=2000)
        return stopped


class _Announcer:
    """Says the worker's task is RUNNING once it has run `ANNOUNCE_AFTER`, sending the
    results held before it first, so they do not wait behind a long task.

    A thread with a socket of its own (zmq sockets are not thread-safe). It sleeps while
    the worker is idle (`busy` clear) and, once it has announced a task, until that task
    ends, so a worker busy with long tasks wakes it once a task, and with short ones at
    most every `ANNOUNCE_AFTER`.
    """

    def __init__(self, worker: FunctionWorker, address: str, ident: str) -> None:
        self.worker = worker
        self.sock = _connect(worker.ctx, address, ident + ANNOUNCER_SUFFIX, worker.keys)
        self.busy = threading.Event()
        self._ended = threading.Event()
        self._announced = -1  # number of the task announced last
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="announcer", daemon=True)

    def start(self) -> None:
        # The task's timeout and cancel signals must reach the main thread, which runs
        # the task: the announcer's thread is born with them blocked.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGUSR1})
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def task_ended(self, number: int) -> None:
        if self._announced == number:
            self._ended.set()

    def stop(self) -> bool:
        self._closing = True
        self.busy.set()
        self._ended.set()
        self._thread.join(2.0)
        if self._thread.is_alive():
            return False
        self.sock.close(linger=2000)
        return True

    def _loop(self) -> None:
        while not self._closing:
            self.busy.wait()
            running = self.worker.running
            if running is None or running[0] == self._announced:
                time.sleep(ANNOUNCE_AFTER)
                continue
            number, uid, start = running
            wait = start + ANNOUNCE_AFTER - time.time()
            if wait > 0:
                time.sleep(wait)
                continue
            self._ended.clear()
            self._announced = number
            results = self.worker.take_results()
            if results:
                self.sock.send(encode(Done(results)))
            self.sock.send(encode(Started(uid, start)))
            while self.worker.running is running and not self._closing:
                self._ended.wait(0.1)  # a timeout: the task may end as it is announced


def _connect(ctx: zmq.Context[zmq.Socket[bytes]], address: str, ident: str,
             keys: Keys) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, ident.encode())
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, 0)
    keys.connect(sock)
    sock.connect(address)
    return sock


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
    # The pid that started us, as it said: os.getppid() read now, after the imports,
    # may already be init's if the agent died meanwhile (then we would wait forever).
    parent = int(os.environ.pop(PARENT_PID_ENV, 0)) or os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return  # the agent died before we asked to follow it
    address, ident, counter, keys_file = args
    worker = FunctionWorker(address, ident, counter, Keys.load(keys_file))
    try:
        worker.run(parent)
    finally:
        if worker.close():
            worker.ctx.term()


if __name__ == "__main__":
    main()
