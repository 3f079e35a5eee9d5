"""The executor inside a Dragon runtime:
`dragon -s PYTHON -m pilotfish.backends.dragon.executor ADDRESS WORKERS CALLS_DIR KEYS_FILE`.

It connects back to the agent's Dragon backend over ZeroMQ and runs what it is sent:
Python functions in a Dragon `multiprocessing` pool of WORKERS processes (none if 0;
each pool call leaves a marker in CALLS_DIR while it runs, see call_many),
executables as Dragon processes (their output appended to the task's files), and
pilotfish's own function workers as Dragon processes (they talk to the agent directly;
see backend.py for when). It reports each task's end with its times,
and exits when told to stop. (The runtime runs in the agent's process session: if the
agent dies, the client ends that whole session, this runtime included.)

The messages both ways are the tagged structs of protocol.py: from the agent `Functions`,
`Calls` (for the pool), `Exec`, `StartWorker`, `Signal`, `Cancel`, `Stop`; to the agent
`Ready`, `Started` (an executable), `Done` (`Result` records, as from a function worker,
with an executable's exit code), `Requeued` (a dead pool worker's other tasks) and
`Exited` (a function worker). A message that cannot be decoded is dropped and logged
(to the runtime's log), never fatal.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import pickle
import queue
import shutil
import socket
import sys
import threading
import time
from typing import Any

import msgspec
import zmq

from pilotfish.backends.dragon.protocol import (
    Calls,
    Cancel,
    Done,
    Exec,
    ExecTask,
    Exited,
    Functions,
    Outcome,
    PoolCall,
    Rank,
    Ready,
    Requeued,
    Result,
    Signal,
    Started,
    StartWorker,
    Stop,
    ToExecutor,
)
from pilotfish.backends.functions.calls import (
    Captured,
    entered,
    failed,
    load_arguments,
    returned,
)
from pilotfish.backends.processes import KILL_GRACE
from pilotfish.keys import Keys
from pilotfish.messages import encode
from pilotfish.proctree import START_TIME, stat_field
from pilotfish.wire import Receiver

_functions: dict[str, Any] = {}  # per pool worker: unpickled functions by key
WATCH_INTERVAL = 0.5  # seconds between looks for pool workers that died


def call_many(marker: str, blobs: dict[str, bytes], calls: list[PoolCall]) -> list[Result]:
    """Run function tasks one after the other in a pool worker: a Dragon pool call costs
    about 2.4 ms of its own (400 no-op calls/s through Pool(2) on 2 CPUs), so the tasks
    the agent fed ahead to one worker in one message go as one call (they would have run
    one after the other there anyway; their results come back together).

    The worker writes who it is to `marker` (a line), then a byte as it starts each
    task: the pool never reports a worker that died, and the executor's watchdog then
    fails the task it was running and gives the others back to be placed again (those
    it ran too: their results died with it), as the built-in function pool does."""
    results = []
    with open(marker, "wb", buffering=0) as f:
        f.write(_whoami().encode() + b"\n")
        for c in calls:
            f.write(b".")
            results.append(call(c, blobs[c.key]))
    return results


def _whoami() -> str:
    """'PID START': a process id and its start time (a reused pid has another)."""
    return f"{os.getpid()} {stat_field(os.getpid(), START_TIME)}"


def _has_died(marker: str) -> tuple[int, int] | None:
    """The pid of the pool worker that took this call and has died since, and how many
    of the call's tasks it had started; else None."""
    try:
        with open(marker, "rb") as f:
            who, _, started = f.read().partition(b"\n")
            pid, start = who.split()
    except (OSError, ValueError):
        return None  # not taken yet, or being written
    if str(stat_field(int(pid), START_TIME)) == start.decode():
        return None
    return int(pid), len(started)


def call(task: PoolCall, blob: bytes) -> Result:
    """Run one function task (its function pickled in `blob`) in a pool worker.

    The task's `env` (with its GPU visibility variable) and `cwd` apply while it runs."""
    start = time.time()
    leave = None
    capture = Captured()
    try:
        if task.env or task.cwd:
            leave = entered(task.env, task.cwd)
        fn = _functions.get(task.key)
        if fn is None:
            fn = _functions[task.key] = pickle.loads(blob)
        args, kwargs = load_arguments(task.args_blob, task.inputs)
        start = time.time()
        with capture:
            value = fn(*args, **kwargs)
    except BaseException as exc:
        return capture.into(failed(task.uid, exc, start, time.time()), task.cwd)
    finally:
        if leave is not None:
            leave()
    return capture.into(returned(task.uid, value, start, time.time()), task.cwd)


class Executor:
    def __init__(self, address: str, workers: int, calls_dir: str, keys: Keys) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PAIR)
        self.sock.setsockopt(zmq.LINGER, 1000)
        keys.connect(self.sock)
        self.sock.connect(address)
        self.receiver: Receiver[ToExecutor] = Receiver("Dragon executor <- agent", ToExecutor)
        self.pool = mp.Pool(workers) if workers else None
        self.calls_dir = calls_dir  # markers of the pool calls in flight (call_many)
        self.in_flight: dict[str, list[str]] = {}  # marker -> its call's task uids
        self.next_call = 0
        self.next_watch = 0.0  # monotonic
        self.workers: dict[str, Any] = {}  # function worker ident -> dragon Process
        self.exits: queue.SimpleQueue[tuple[str, int | None]] = queue.SimpleQueue()
        self.blobs: dict[str, bytes] = {}
        self.results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()  # results from other threads wake the loop
        self.deadlines: dict[str, tuple[float, float]] = {}  # uid -> when it ends, timeout
        self.calls: set[str] = set()  # functions running in the pool
        self.procs: dict[str, Any] = {}  # running executable uid -> dragon Process
        self.killed: dict[str, tuple[Outcome, str]] = {}  # uid -> why we killed it
        self.hard_kills: dict[str, float] = {}  # uid -> when SIGKILL follows its SIGTERM
        self.dropped: set[str] = set()  # pool calls already reported: ignore their result
        self.stopping = False
        self.woken = False  # a wake-up byte is in the pipe, unread
        # Processes start on a thread of their own: a Dragon process start takes tens of
        # ms, which would hold back every function result behind it.
        self.launches: queue.SimpleQueue[ExecTask | StartWorker | None] = queue.SimpleQueue()
        self.unlaunched: set[str] = set()  # queued to start; canceled ones leave it early
        self.launching: str | None = None  # the task the launcher thread is starting
        self.launch_lock = threading.Lock()  # over the three above and `procs`
        self.started: queue.SimpleQueue[tuple[str, float]] = queue.SimpleQueue()
        self.hosts = _hostnames()  # a task's node index picks its host (modulo: virtual nodes)

    def _post(self, result: Result) -> None:
        self.results.put(result)
        self._wake()

    def _wake(self) -> None:
        if not self.woken:  # one wake-up per batch of results, not one write per result
            self.woken = True
            os.write(self.wake_w, b"x")

    def run(self) -> None:
        threading.Thread(target=self._launch_loop, daemon=True).start()
        self.sock.send(encode(Ready(os.getpid())))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self.wake_r, zmq.POLLIN)
        while not self.stopping:
            due = [d for d, _ in self.deadlines.values()] + list(self.hard_kills.values())
            wait = max(0.0, min(due) - time.time()) if due else 1.0
            ready = dict(poller.poll(int(min(wait, 1.0) * 1000) + 1))
            if self.wake_r in ready:
                os.read(self.wake_r, 65536)
                self.woken = False  # before the results are taken: a later one wakes again
            while self.sock.poll(0):
                self._handle(self.receiver.decode(self.sock.recv()))
            self._expire()
            if self.in_flight and time.monotonic() >= self.next_watch:
                self.next_watch = time.monotonic() + WATCH_INTERVAL
                self._watch_pool()
            self._send_results()
        self.launches.put(None)
        if self.pool is not None:
            self.pool.terminate()
            shutil.rmtree(self.calls_dir, ignore_errors=True)
        for proc in [*self.procs.values(), *self.workers.values()]:
            proc.kill()

    def _handle(self, msg: ToExecutor | None) -> None:
        if type(msg) is Calls:
            self._call(msg.calls)
        elif type(msg) is Functions:
            self.blobs.update(msg.blobs)
        elif type(msg) is Exec:
            for task in msg.tasks:
                self.unlaunched.add(task.uid)
                self.launches.put(task)
        elif type(msg) is StartWorker:
            self.launches.put(msg)
        elif type(msg) is Signal:
            worker = self.workers.get(msg.ident)
            if worker is None:  # it has exited
                self.receiver.note_stale()
                return
            try:
                worker.send_signal(msg.signum)
            except Exception as exc:  # no such signal, or the process ended meanwhile
                self.receiver.drop(f"cannot signal worker {msg.ident}: {exc!r}")
        elif type(msg) is Cancel:
            for uid in msg.uids:
                if not self._kill(uid, Outcome.CANCELED, "canceled"):
                    self.receiver.note_stale()  # it has ended
        elif type(msg) is Stop:
            self.stopping = True

    def _call(self, calls: list[PoolCall]) -> None:
        """Hand function tasks to the pool: one pool call per agent worker's share."""
        if self.pool is None:  # the agent runs its own workers here: a call is a mistake
            self.receiver.drop(f"{len(calls)} calls for a pool this executor does not have")
            return
        now = time.time()
        chunks: dict[object, list[PoolCall]] = {}
        for c in calls:
            if c.key not in self.blobs:  # never sent: the agent sends each function first
                self.receiver.drop(f"a call of function {c.key!r}, which never came")
                self._post(Result(c.uid, Outcome.ERROR, None, "its function never reached "
                                  "the Dragon executor", None, now))
                continue
            self.calls.add(c.uid)
            if c.timeout:
                self.deadlines[c.uid] = (now + c.timeout, c.timeout)
            group = c.worker if c.worker >= 0 else c.uid  # a one-off: a pool call of its own
            chunks.setdefault(group, []).append(c)
        for chunk in chunks.values():
            blobs = {c.key: self.blobs[c.key] for c in chunk}
            marker = os.path.join(self.calls_dir, str(self.next_call))
            self.next_call += 1
            uids = [c.uid for c in chunk]
            self.in_flight[marker] = uids
            self.pool.apply_async(call_many, (marker, blobs, chunk),
                                  callback=functools.partial(self._called, marker))

    def _called(self, marker: str, results: list[Result]) -> None:
        for result in results:
            self.results.put(result)
        self._done_call(marker)
        self._wake()

    def _done_call(self, marker: str) -> None:
        self.in_flight.pop(marker, None)
        try:
            os.unlink(marker)
        except OSError:
            pass

    def _watch_pool(self) -> None:
        """End the tasks of pool calls whose worker died (the pool never says): the one
        it was running fails, the others go back to the agent to be placed again."""
        for marker, uids in list(self.in_flight.items()):
            died = _has_died(marker)
            if died is None:
                continue
            pid, started = died
            self._done_call(marker)
            running = uids[started - 1] if started else None
            if running is not None:
                self._post(Result(running, Outcome.ERROR, None, f"the Dragon pool worker "
                                  f"running it died (pid {pid})", None, time.time()))
            others = [uid for uid in uids if uid != running]
            requeued = [uid for uid in others if uid not in self.dropped]
            self.dropped.difference_update(others)
            for uid in requeued:
                self.calls.discard(uid)
                self.deadlines.pop(uid, None)
            if requeued:
                self.sock.send(encode(Requeued(requeued)))

    def _launch_loop(self) -> None:
        """The launcher thread: executables and function workers, in order."""
        while (item := self.launches.get()) is not None:
            if isinstance(item, StartWorker):
                self._start_worker(item)
            else:
                self._start_process(item)

    def _start_process(self, task: ExecTask) -> None:
        """Start one task: a Dragon Process, one per rank, or (for PMI) a ProcessGroup."""
        uid, ranks, cwd, out, err, pmi = (task.uid, task.ranks, task.cwd, task.out, task.err,
                                          task.pmi)
        with self.launch_lock:
            if uid not in self.unlaunched:
                return  # canceled while it waited
            self.unlaunched.discard(uid)
            self.launching = uid
        start = time.time()
        try:
            if len(ranks) == 1:
                proc: Any = self._template(ranks[0], cwd, out, err, template=False)
                proc.start()
            elif pmi is None:
                proc = _Ranks([self._template(rank, cwd, out, err, template=False)
                               for rank in ranks])
                proc.start()
            else:
                from dragon.native.process import Process as DragonProcess
                from dragon.native.process_group import ProcessGroup

                group = ProcessGroup(pmi=pmi, ignore_error_on_exit=True)
                for rank in ranks:
                    group.add_process(1, self._template(rank, cwd, out, err, template=True))
                group.init()
                group.start()
                # Its ranks are watched and signalled one by one, as those of any task:
                # the group's own join failed inside Dragon after a kill (0.15).
                proc = _Ranks([DragonProcess(None, ident=puid) for puid in group.puids],
                              group)
        except Exception as exc:
            with self.launch_lock:
                self.launching = None
            self._post(Result(uid, Outcome.ERROR, None,
                              f"cannot start the process in Dragon: {exc}", None, time.time()))
            return
        with self.launch_lock:
            self.launching = None
            self.procs[uid] = proc
            killed = uid in self.killed  # canceled while it started
        if killed:
            self._terminate(uid, proc)
        elif task.timeout:
            self.deadlines[uid] = (start + task.timeout, task.timeout)
        self.started.put((uid, start))
        self._wake()
        threading.Thread(target=self._wait, args=(uid, proc, start), daemon=True).start()

    def _start_worker(self, worker: StartWorker) -> None:
        ident, log = worker.ident, worker.log
        try:
            rank = Rank(worker.argv, worker.env, worker.node, [])
            proc = self._template(rank, worker.cwd, log, log, template=False)
            proc.start()
        except Exception as exc:
            with open(log, "a") as f:
                print(f"cannot start the worker in Dragon: {exc}", file=f)
            self._exited(ident, None)
            return
        self.workers[ident] = proc
        threading.Thread(target=self._wait_worker, args=(ident, proc), daemon=True).start()

    def _wait_worker(self, ident: str, proc: Any) -> None:
        proc.join()
        self._exited(ident, proc.returncode)

    def _exited(self, ident: str, code: int | None) -> None:
        self.exits.put((ident, code))
        self._wake()

    def _template(self, rank: Rank, cwd: str, out: str, err: str, template: bool) -> Any:
        """A Dragon process (or template) for one rank, placed on its node and cores."""
        from dragon.infrastructure.policy import Policy
        from dragon.native.process import Process as DragonProcess
        from dragon.native.process import ProcessTemplate

        argv, env, node, cpus = rank.argv, rank.env, rank.node, rank.cpus
        # The shell appends the rank's output to the task's files (Dragon's own stdout
        # would go to the launcher's), then becomes the rank.
        shell = ["-c", 'exec "$0" "$@" >>"$PILOTFISH_OUT" 2>>"$PILOTFISH_ERR"', *argv]
        env = {**env, "PILOTFISH_OUT": out, "PILOTFISH_ERR": err}
        policy = Policy(placement=Policy.Placement.HOST_NAME,
                        host_name=self.hosts[node % len(self.hosts)], cpu_affinity=cpus)
        make = ProcessTemplate if template else DragonProcess
        return make(target="/bin/sh", args=shell, cwd=cwd, env=env, policy=policy)

    def _wait(self, uid: str, proc: Any, start: float) -> None:
        try:
            if isinstance(proc, _Ranks):
                code = self._wait_ranks(uid, proc)
            else:
                proc.join()
                code = proc.returncode
        except Exception as exc:  # never leave the task running for the agent
            self.killed.setdefault(uid, (Outcome.ERROR, f"Dragon failed while it ran: {exc!r}"))
            code = -1
            try:
                proc.kill()
            except Exception:
                pass
        self._post(Result(uid, Outcome.OK if code == 0 else Outcome.ERROR, None, None, start,
                          time.time(), code))
        if isinstance(proc, _Ranks) and proc.group is not None:
            try:
                proc.group.close()  # its tear-down takes ~0.2 s: not part of the task's time
            except Exception:
                pass

    def _wait_ranks(self, uid: str, ranks: _Ranks) -> int:
        """Wait for a multi-rank task; its first failing rank's exit code. A rank that
        fails gets the others killed, as on the built-in backend (the rest of an MPI job
        whose rank died would wait for it forever)."""
        from dragon.globalservices.process import multi_join

        running = {proc.puid for proc in ranks.procs}
        failed = 0
        while running:  # (a bounded wait: the loop also outlives a missed exit)
            exited, _ = multi_join(list(running), timeout=5.0, join_all=False)
            for puid, code in exited or []:
                running.discard(puid)
                if code != 0 and not failed:
                    failed = code
                    if running:
                        why = f"a rank failed with exit code {code}; the other ranks were killed"
                        self.killed.setdefault(uid, (Outcome.ERROR, why))
                        ranks.kill()
        return failed

    def _kill(self, uid: str, why: Outcome, reason: str) -> bool:
        """End a task with this outcome and reason; False if no such task is running."""
        self.deadlines.pop(uid, None)
        with self.launch_lock:
            proc = self.procs.get(uid)
            unlaunched = uid in self.unlaunched
            self.unlaunched.discard(uid)  # the launcher thread skips it
            if uid == self.launching:
                self.killed[uid] = (why, reason)  # ended once it has started
        if unlaunched:
            self._post(Result(uid, why, None, reason, None, time.time()))
        elif proc is not None:
            self.killed[uid] = (why, reason)
            self._terminate(uid, proc)
        elif uid in self.calls:
            # A pool task cannot be stopped: it ends now for the agent, and its worker's
            # result is dropped when it comes.
            self.calls.discard(uid)
            self.dropped.add(uid)
            self.sock.send(encode(Done([Result(uid, why, None, reason, None, time.time())])))
        else:
            return uid in self.killed  # (starting: ended once it has)
        return True

    def _terminate(self, uid: str, proc: Any) -> None:
        """SIGTERM now, SIGKILL in KILL_GRACE seconds if it has not ended (`_expire`)."""
        self.hard_kills[uid] = time.time() + KILL_GRACE
        proc.terminate()

    def _expire(self) -> None:
        now = time.time()
        for uid, (deadline, timeout) in list(self.deadlines.items()):
            if deadline <= now:
                self._kill(uid, Outcome.TIMEOUT, f"timed out after {timeout} s")
        for uid, when in list(self.hard_kills.items()):
            if when <= now:
                del self.hard_kills[uid]
                with self.launch_lock:
                    proc = self.procs.get(uid)
                if proc is not None:
                    proc.kill()

    def _send_results(self) -> None:
        while not self.started.empty():
            self.sock.send(encode(Started(*self.started.get_nowait())))
        done = []
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                break
            uid = result.uid
            if uid in self.dropped:
                self.dropped.discard(uid)
                continue
            killed = self.killed.pop(uid, None)
            if killed is not None:
                result = msgspec.structs.replace(result, outcome=killed[0], error=killed[1])
            self.procs.pop(uid, None)
            self.hard_kills.pop(uid, None)
            self.calls.discard(uid)
            self.deadlines.pop(uid, None)
            done.append(result)
        if done:
            self.sock.send(encode(Done(done)))
        while not self.exits.empty():
            ident, code = self.exits.get_nowait()
            self.workers.pop(ident, None)
            self.sock.send(encode(Exited(ident, code)))


class _Ranks:
    """A multi-rank task's ranks, signalled together: a Dragon process per rank, or
    those of the ProcessGroup that PMI needs (`group`, closed once they ended). A group
    costs ~0.6 s more to set up and tear down: a 2-rank `sleep 0.1` took 0.75 s in one,
    0.13 s without."""

    def __init__(self, procs: list[Any], group: Any = None) -> None:
        self.procs = procs
        self.group = group

    def start(self) -> None:
        try:
            for proc in self.procs:
                proc.start()
        except Exception:
            self.kill()  # the ranks that did start
            raise

    def terminate(self) -> None:
        self._signal("terminate")

    def kill(self) -> None:
        self._signal("kill")

    def _signal(self, how: str) -> None:
        for proc in self.procs:
            try:
                getattr(proc, how)()
            except Exception:
                pass  # that rank has ended


def _hostnames() -> list[str]:
    from dragon.native.machine import Node, System

    return [Node(h).hostname for h in System().nodes] or [socket.gethostname()]


def main(argv: list[str]) -> None:
    import dragon  # noqa: F401  (registers the "dragon" start method)

    mp.set_start_method("dragon")
    # Run as the importable module, not as __main__, so the pool's workers find `call`.
    from pilotfish.backends.dragon import executor as dragon_executor

    address, workers, calls_dir, keys_file = argv
    dragon_executor.Executor(address, int(workers), calls_dir, Keys.load(keys_file)).run()


if __name__ == "__main__":
    main(sys.argv[1:])
