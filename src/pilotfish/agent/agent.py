"""The agent: the process inside a pilot that places tasks and drives the backend.

One thread, one `Reactor`: client messages in, scheduler decisions out to the backend,
backend events back through the scheduler, state updates batched to the client.
A submitted batch is acknowledged at once with one `Accepted` message (the tasks are
SUBMITTED). Updates of tasks that ended go out at the end of every loop turn. A progress
update (SCHEDULED, RUNNING) goes out only for a task that stayed in that state for
`PROGRESS_INTERVAL`: a task that finishes sooner costs a single update.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from .. import messages as m
from ..backends.base import (
    Backend,
    BackendEvent,
    DispatchedTask,
    PlacedTask,
    TaskFinished,
    TaskRequeued,
    TaskStarted,
)
from ..backends.builtin import BuiltinBackend
from ..gcpause import without_gc
from ..resources import Shape
from ..scheduler import Action, Dequeued, Dispatch, Fail, Launch, Request, Scheduler
from ..states import TaskState, check_transition
from .reactor import Reactor, readable

PROGRESS_INTERVAL = 0.05  # seconds
HEARTBEAT_INTERVAL = 1.0
MAX_UPDATES_PER_MESSAGE = 10_000
STOP_TIMEOUT = 1.0  # grace for tasks and workers at shutdown, each; then SIGKILL

SUBMITTED, SCHEDULED, RUNNING = TaskState.SUBMITTED, TaskState.SCHEDULED, TaskState.RUNNING


@dataclass(frozen=True, slots=True)
class AgentConfig:
    client_address: str
    pilot_uid: str
    sandbox: str
    nodes: int
    cores_per_node: int
    gpus_per_node: int
    workers_per_node: int
    heartbeat_timeout: float = 5.0
    runtime: float | None = None
    parent_pid: int | None = None  # exit at once if this process ends (local pilots)
    python_path: list[str] = dataclasses.field(default_factory=list)  # for function workers

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        return cls(**json.loads(text))


class _Task:
    __slots__ = ("events", "outcome", "pid", "request", "spec", "state")

    def __init__(self, spec: m.TaskSpec, request: Request) -> None:
        self.spec = spec
        self.request = request
        self.state = SUBMITTED
        self.events: list[tuple[str, float]] = []  # since the last update sent
        self.outcome: TaskFinished | None = None
        self.pid: int | None = None


def _move(task: _Task, state: TaskState) -> None:
    """Change a task's state through the one transition table; a bad move is a bug."""
    check_transition(task.spec.uid, task.state, state)
    task.state = state


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.reactor = Reactor()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.client = self._ctx.socket(zmq.DEALER)
        self.client.setsockopt(zmq.LINGER, 2000)
        self.client.setsockopt(zmq.SNDHWM, 0)  # never block on a slow client: queue
        self.client.connect(cfg.client_address)
        self.functions: dict[str, bytes] = {}
        self.scheduler = Scheduler(cfg.nodes, cfg.cores_per_node, cfg.gpus_per_node,
                                   cfg.workers_per_node)
        self.task_sandbox = os.path.join(cfg.sandbox, "tasks")
        self.backend: Backend = BuiltinBackend(self.task_sandbox, cfg.gpus_per_node,
                                               self.functions, log_dir=cfg.sandbox,
                                               python_path=cfg.python_path,
                                               cores=cfg.nodes * cfg.cores_per_node)
        self.tasks: dict[str, _Task] = {}
        self._final: dict[str, None] = {}  # uids with a final update to send
        # uid -> when its unsent progress began (monotonic), oldest first
        self._progress: dict[str, float] = {}
        self._inbox: list[BackendEvent] = []
        self._seq = 0
        self._shapes: dict[tuple[int, int, float], Shape] = {}
        self._last_heard = time.monotonic()
        self._stop_reason: str | None = None
        self._tell_client = True

    # ---- main loop --------------------------------------------------------------------

    def run(self) -> str:
        cfg = self.cfg
        os.makedirs(self.task_sandbox, exist_ok=True)
        os.chdir(self.task_sandbox)  # tasks in the default sandbox spawn fastest
        self.backend.start(self.reactor, self._inbox.append)
        self.reactor.add_reader(self.client, self._on_client)
        if cfg.parent_pid:
            try:
                parent = os.pidfd_open(cfg.parent_pid)
                self.reactor.add_reader(parent, lambda: self._lost_client("client process exited"))
            except ProcessLookupError:
                return "client process exited before the agent started"
        self._heartbeat()
        if cfg.runtime:
            self.reactor.call_later(
                cfg.runtime, lambda: self.stop(f"pilot runtime of {cfg.runtime:g} s exceeded"))
        self._send(m.Hello(m.WIRE_VERSION, os.getpid(), time.time(), cfg.nodes,
                           cfg.cores_per_node, cfg.gpus_per_node))
        try:
            while self._stop_reason is None:
                wait = HEARTBEAT_INTERVAL
                if self._progress:
                    due = next(iter(self._progress.values())) + PROGRESS_INTERVAL
                    wait = max(0.0, min(wait, due - time.monotonic()))
                self.reactor.run_once(wait)
                if self._inbox:
                    self._on_backend_events()
                if self._final or self._progress:
                    self._flush()
        except Exception as exc:  # a bug: say so, stop everything, fail the tasks
            traceback.print_exc()
            self.stop(f"agent error: {exc!r} (see agent.log)")
        self._shutdown()
        return self._stop_reason or "stopped"

    def stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _shutdown(self) -> None:
        reason = self._stop_reason or "stopped"
        for event in self._inbox:  # outcomes that arrived with the stop still count
            task = self.tasks.get(event.uid)
            if type(event) is TaskFinished and task is not None and not task.state.final:
                self._finish(task, event)
        self._inbox.clear()
        self.backend.stop(STOP_TIMEOUT)
        state = TaskState.CANCELED if reason == "shutdown requested" else TaskState.FAILED
        now = time.time()
        for uid, task in list(self.tasks.items()):
            if not task.state.final:
                self._finish(task, TaskFinished(uid, state, None, now, error=f"pilot stopped: "
                                                f"{reason}"))
        if self._tell_client:
            self._flush(force=True)
            self._send(m.Bye(reason))
        self.client.close(linger=2000 if self._tell_client else 0)

    def _heartbeat(self) -> None:
        silent = time.monotonic() - self._last_heard
        if silent > self.cfg.heartbeat_timeout:
            self._lost_client(f"client lost: no message for {silent:.1f} s")
            return
        self._send(m.Heartbeat(time.time()))
        self.reactor.call_later(HEARTBEAT_INTERVAL, self._heartbeat)

    def _lost_client(self, reason: str) -> None:
        self._tell_client = False
        self.stop(reason)

    def _send(self, message: Any) -> None:
        self.client.send(m.encode(message))

    # ---- from the client --------------------------------------------------------------

    @without_gc
    def _on_client(self) -> None:
        self._last_heard = time.monotonic()
        while readable(self.client):
            msg = m.decode_to_agent(self.client.recv(copy=False).buffer)
            if isinstance(msg, m.Submit):
                self._on_submit(msg)
            elif isinstance(msg, m.Cancel):
                self._on_cancel(msg.uids)
            elif isinstance(msg, m.Shutdown):
                self.stop("shutdown requested")

    def _on_submit(self, msg: m.Submit) -> None:
        self.functions.update(msg.functions)
        requests = []
        shapes = self._shapes
        for spec in msg.tasks:
            if spec.uid in self.tasks:
                continue  # a resent submit: already known
            key = (spec.ranks, spec.cores_per_rank, spec.gpus_per_rank)
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = Shape(*key)
            pooled = spec.kind == "function" and key == (1, 1, 0.0)
            self._seq += 1
            request = Request(spec.uid, self._seq, shape, spec.priority, pooled)
            self.tasks[spec.uid] = _Task(spec, request)
            requests.append(request)
        self._send(m.Accepted([r.uid for r in requests], time.time()))
        self._apply(self.scheduler.submit(requests))
        if self._inbox:
            self._on_backend_events()

    def _on_cancel(self, uids: Sequence[str]) -> None:
        live = [u for u in uids if u in self.tasks and not self.tasks[u].state.final]
        actions = self.scheduler.cancel(live)
        self._apply(actions)
        dequeued = {a.uid for a in actions}
        placed = [u for u in live if u not in dequeued]
        if placed:
            self.backend.cancel(placed)

    # ---- decisions and outcomes -------------------------------------------------------

    def _apply(self, actions: Sequence[Action]) -> None:
        now = time.time()
        since = time.monotonic()
        progress = self._progress
        launches: list[PlacedTask] = []
        dispatches: list[DispatchedTask] = []
        tasks = self.tasks
        for action in actions:
            task = tasks[action.uid]
            if type(action) is Dispatch:
                _move(task, SCHEDULED)
                task.events.append(("SCHEDULED", now))
                progress.setdefault(action.uid, since)
                dispatches.append(DispatchedTask(task.spec, action.worker, action.node,
                                                 action.core))
            elif type(action) is Launch:
                _move(task, SCHEDULED)
                task.events.append(("SCHEDULED", now))
                progress.setdefault(action.uid, since)
                launches.append(PlacedTask(task.spec, action.slot))
            elif type(action) is Fail:
                self._finish(task, TaskFinished(action.uid, TaskState.FAILED, None, now,
                                                error=action.reason))
            elif type(action) is Dequeued:
                self._finish(task, TaskFinished(action.uid, TaskState.CANCELED, None, now,
                                                error="canceled"))
        if dispatches:
            self.backend.dispatch(dispatches)
        if launches:
            self.backend.launch(launches)

    @without_gc
    def _on_backend_events(self) -> None:
        while self._inbox:
            batch = self._inbox[:]
            self._inbox.clear()
            completed: list[tuple[str, float]] = []
            requeue: list[Request] = []
            for event in batch:
                task = self.tasks.get(event.uid)
                if task is None or task.state.final:
                    continue
                if type(event) is TaskFinished:
                    start = event.exec_start
                    completed.append((event.uid, event.exec_stop - start if start else 0.0))
                    self._finish(task, event)
                elif type(event) is TaskStarted:
                    _move(task, RUNNING)
                    task.pid = event.pid
                    if event.launch_ts is not None:
                        task.events.append(("launch", event.launch_ts))
                    task.events.append(("RUNNING", event.ts))
                    self._progress.setdefault(event.uid, time.monotonic())
                elif type(event) is TaskRequeued:
                    _move(task, SUBMITTED)
                    requeue.append(task.request)
            actions = self.scheduler.completed(completed)
            if requeue:
                actions.extend(self.scheduler.requeue(requeue))
            self._apply(actions)

    def _finish(self, task: _Task, outcome: TaskFinished) -> None:
        if outcome.exec_start is not None:
            if task.state is not RUNNING:
                task.events.append(("RUNNING", outcome.exec_start))
            task.events.append(("exec_stop", outcome.exec_stop))
        _move(task, outcome.state)
        task.outcome = outcome
        self._final[outcome.uid] = None

    @without_gc
    def _flush(self, force: bool = False) -> None:
        updates: list[m.TaskUpdate] = []
        tasks = self.tasks
        for uid in self._final:
            task = tasks.pop(uid)
            o = task.outcome
            assert o is not None
            updates.append(m.TaskUpdate(uid, task.state.value, task.events, o.exit_code,
                                        o.error, o.result, o.stdout, o.stderr, task.pid))
            self._progress.pop(uid, None)
        self._final.clear()
        cutoff = time.monotonic() - PROGRESS_INTERVAL
        due = []
        for uid, since in self._progress.items():
            if since > cutoff and not force:
                break
            due.append(uid)
        for uid in due:
            del self._progress[uid]
            task = tasks[uid]
            updates.append(m.TaskUpdate(uid, task.state.value, task.events, pid=task.pid))
            task.events = []
        for i in range(0, len(updates), MAX_UPDATES_PER_MESSAGE):
            self._send(m.Updates(updates[i:i + MAX_UPDATES_PER_MESSAGE]))
