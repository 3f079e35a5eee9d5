"""The agent: the process inside a pilot that places tasks and drives the backend.

One thread, one `Reactor`: client messages in, scheduler decisions out to the backend,
backend events back through the scheduler, state updates batched to the client.
A submitted batch is acknowledged at once with one `Accepted` message (the tasks are
SUBMITTED). Updates of tasks that ended go out at the end of every loop turn. A progress
update (SCHEDULED, RUNNING) goes out only for a task that stayed in that state for
`PROGRESS_INTERVAL`: a task that finishes sooner costs a single update.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import pickle
import resource
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from .. import messages as m
from ..backends.base import (
    Backend,
    BackendEvent,
    BackendLost,
    DispatchedTask,
    PlacedTask,
    TaskFinished,
    TaskRequeued,
    TaskStarted,
)
from ..backends.builtin import BuiltinBackend
from ..backends.dragon.backend import DragonBackend
from ..backends.flux.backend import FluxBackend
from ..backends.processes import NodeLayout
from ..backends.simulated import SimulatedBackend
from ..gcpause import without_gc
from ..partitions import Partition
from ..reactor import Reactor, readable
from ..resources import Shape
from ..routing import Reject, RoutingPolicy, TaskTraits, steal_count, why_not
from ..scheduler import Action, Dequeued, Dispatch, Fail, Launch, Request, Scheduler
from ..states import TaskState, check_transition
from .config import AgentConfig

PROGRESS_INTERVAL = 0.05  # seconds
HEARTBEAT_INTERVAL = 1.0
MAX_UPDATES_PER_MESSAGE = 10_000
POLL_INTERVAL = 0.001  # seconds: while events keep coming, look at sockets this often
MESSAGES_PER_TURN = 4  # client messages (of up to 5,000 tasks) taken per loop turn
SIM_FLUSH_INTERVAL, SIM_FLUSH_BATCH = 0.01, 10_000  # simulated pilots: seconds, updates
BALANCE_INTERVAL = 0.01  # seconds between looks (a look may scan 2 x STEAL_MAX tasks)
LOOK_BACKOFF_MAX = 0.5  # seconds: a partition that found nothing it could take looks less
STOP_TIMEOUT = 1.0  # grace for tasks and workers at shutdown, each; then SIGKILL

SUBMITTED, SCHEDULED, RUNNING = TaskState.SUBMITTED, TaskState.SCHEDULED, TaskState.RUNNING


def _load_router(cfg: AgentConfig) -> RoutingPolicy:
    """The user's routing policy (its class may live in the client's modules), or the
    default one."""
    if not cfg.routing:
        return RoutingPolicy()
    sys.path.extend(p for p in cfg.python_path if p and p not in sys.path)
    router = pickle.loads(base64.b64decode(cfg.routing))
    assert isinstance(router, RoutingPolicy)
    return router


@dataclass(slots=True)
class AgentStats:
    """What the agent's work cost it: decisions, and the wall-clock time it was busy.

    Busy time runs from the first submit to the last task end the agent reported, less
    the time it sat waiting for input: what a faster client could not have shortened.
    """

    decisions: int = 0
    first_submit: float | None = None  # monotonic
    last_final: float = 0.0
    waited_at_submit: float = 0.0
    waited_at_final: float = 0.0

    def to_dict(self, waited_now: float) -> dict[str, float]:
        if self.first_submit is None:
            active = busy = 0.0
        else:
            if not self.last_final:  # nothing ended yet: count until now
                self.last_final, self.waited_at_final = time.monotonic(), waited_now
            active = self.last_final - self.first_submit
            busy = max(active - (self.waited_at_final - self.waited_at_submit), 1e-9)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"decisions": self.decisions, "active_s": active, "busy_s": busy,
                "decisions_per_s": self.decisions / busy if busy else 0.0,
                "max_rss_bytes": rss}


class _Lingering:
    """Tasks with progress not yet sent, and since when (monotonic), oldest first.

    A dict gives membership; a deque keeps the order (times only grow), pruned lazily,
    so that finding what is due never walks over tasks that left long ago.
    """

    __slots__ = ("order", "since")

    def __init__(self) -> None:
        self.since: dict[str, float] = {}
        self.order: deque[tuple[float, str]] = deque()

    def __bool__(self) -> bool:
        return bool(self.since)

    def add(self, uid: str, since: float) -> None:
        if uid not in self.since:
            self.since[uid] = since
            self.order.append((since, uid))

    def discard(self, uid: str) -> None:
        self.since.pop(uid, None)

    def oldest(self) -> float | None:
        order, since = self.order, self.since
        while order and since.get(order[0][1]) != order[0][0]:
            order.popleft()
        return order[0][0] if order else None

    def pop_due(self, cutoff: float) -> list[str]:
        """The tasks lingering since `cutoff` or before (all of them if cutoff is inf)."""
        order, since = self.order, self.since
        due = []
        while order:
            t, uid = order[0]
            if since.get(uid) != t:
                order.popleft()
                continue
            if t > cutoff:
                break
            order.popleft()
            del since[uid]
            due.append(uid)
        return due


class _Partition:
    """One partition at run time: its nodes' scheduler and the backend that runs them."""

    def __init__(self, layout: Partition, scheduler: Scheduler, backend: Backend,
                 pool_functions: bool) -> None:
        self.layout = layout
        self.name = layout.name
        self.scheduler = scheduler
        self.backend = backend
        self.pool_functions = pool_functions  # plain functions go to function workers
        self.cores = max(1, layout.nodes * scheduler.alloc.cores)
        self.lost: str | None = None  # why its runtime died; then it takes no more tasks
        self.look_interval = BALANCE_INTERVAL  # late binding: between its looks for work
        self.next_look = 0.0  # monotonic


class _Task:
    __slots__ = ("events", "outcome", "part", "pid", "request", "retried", "routed", "spec",
                 "state")

    def __init__(self, spec: m.TaskSpec, request: Request, part: _Partition) -> None:
        self.spec = spec
        self.request = request
        self.part = part
        self.state = SUBMITTED
        self.events: list[tuple[str, float]] = []  # since the last update sent
        self.outcome: TaskFinished | None = None
        self.pid: int | None = None
        self.retried = 0  # times placed again after its partition was lost
        self.routed = True  # False: no partition could take it (it ran nowhere)


def _request(spec: m.TaskSpec, seq: int, shape: Shape, part: _Partition) -> Request:
    """What the partition's scheduler places for a task."""
    tags = spec.tags
    if tags and ("colocate" in tags or "exclusive" in tags):  # other tags are labels
        return Request(spec.uid, seq, shape, spec.priority, False, tags.get("colocate"),
                       tags.get("exclusive"))
    pooled = (part.pool_functions and spec.kind == "function" and shape.simple
              and shape.cores_per_rank == 1 and not shape.gpus_per_rank)
    return Request(spec.uid, seq, shape, spec.priority, pooled)


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
        self.task_sandbox = os.path.join(cfg.sandbox, "tasks")
        self.clock: Callable[[], float] = time.time  # the backends' clock: stamps events
        self._simulated: SimulatedBackend | None = None
        if cfg.backend == "simulated":  # one virtual machine: every partition shares it
            self._simulated = SimulatedBackend()
            self.clock = self._simulated.now
        layouts = [Partition(*p) for p in cfg.partitions] or [
            Partition(cfg.backend, cfg.backend, 0, cfg.nodes)]
        self.partitions = {p.name: self._make_partition(p) for p in layouts}
        self.router = _load_router(cfg)
        self._layouts = layouts
        # With one partition that runs anything, tasks need no routing.
        only = next(iter(self.partitions.values()))
        self._only = only if len(layouts) == 1 and only.layout.backend in (
            "builtin", "simulated") else None
        self.stats = AgentStats()
        self.tasks: dict[str, _Task] = {}
        self._final: dict[str, None] = {}  # uids with a final update to send
        # uid -> when its unsent progress began (monotonic), oldest first
        self._progress = _Lingering()
        self._flushed = 0.0  # monotonic time of the last flush
        self._inbox: list[BackendEvent] = []
        self._seq = 0
        self._shapes: dict[tuple[int, int, float, int, int], Shape] = {}
        self._last_heard = time.monotonic()
        self._balanced = 0.0  # monotonic time partitions were last balanced
        self._stop_reason: str | None = None
        self._tell_client = True

    def _make_partition(self, layout: Partition) -> _Partition:
        cfg = self.cfg
        workers = cfg.workers_per_node
        dragon_pool = layout.backend == "dragon" and layout.functions == "pool"
        if dragon_pool and self._simulated is None and cfg.function_workers is None:
            # Idle Dragon pool workers spin (no-op calls through Pool(8) on 2 CPUs ran 30x
            # slower than through Pool(2)): unless told otherwise, no more than the CPUs.
            workers = max(1, min(workers, (os.cpu_count() or 1) // layout.nodes))
        scheduler = Scheduler(layout.nodes, cfg.cores_per_node, cfg.gpus_per_node,
                              workers, cfg.mem_per_node, cfg.reserve_after)
        if self._simulated is not None:
            return _Partition(layout, scheduler, self._simulated, False)
        nodes = NodeLayout(tuple(cfg.core_ids or range(cfg.cores_per_node)),
                           cfg.gpus_per_node, cfg.gpu_env, layout.first)
        if layout.backend == "flux":
            # Inside a Flux allocation a single Flux partition uses that instance.
            fluxes = [p for p in cfg.partitions if Partition(*p).backend == "flux"]
            uri = os.environ.get("FLUX_URI") if len(fluxes) == 1 else None
            flux = FluxBackend(layout.name, self.task_sandbox, cfg.sandbox, uri=uri)
            return _Partition(layout, scheduler, flux, False)
        if layout.backend == "dragon":
            dragon = DragonBackend(layout.name, self.task_sandbox, nodes, self.functions,
                                   cfg.sandbox, layout.nodes, workers, cfg.python_path,
                                   dragon_pool=dragon_pool)
            return _Partition(layout, scheduler, dragon, True)
        # Workers the user asked for are started with the pilot; by default, on first use.
        backend = BuiltinBackend(self.task_sandbox, nodes, self.functions,
                                 log_dir=cfg.sandbox, python_path=cfg.python_path,
                                 cores=layout.nodes * cfg.cores_per_node,
                                 prestart=layout.nodes * workers if cfg.function_workers else 0,
                                 name=layout.name)
        return _Partition(layout, scheduler, backend, True)

    @property
    def backends(self) -> list[Backend]:
        """Each backend once (the partitions of a simulated pilot share one)."""
        unique: dict[int, Backend] = {}
        for part in self.partitions.values():
            unique.setdefault(id(part.backend), part.backend)
        return list(unique.values())

    # ---- main loop --------------------------------------------------------------------

    def run(self) -> str:
        cfg = self.cfg
        os.makedirs(self.task_sandbox, exist_ok=True)
        os.chdir(self.task_sandbox)  # tasks in the default sandbox spawn fastest
        for backend in self.backends:
            backend.start(self.reactor, self._inbox.append)
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
        polled = 0.0
        try:
            while self._stop_reason is None:
                now = time.monotonic()
                if self._inbox and now - polled < POLL_INTERVAL:
                    self._on_backend_events()  # more to do: sockets and timers can wait
                    continue
                wait = 0.0 if self._inbox else HEARTBEAT_INTERVAL
                flush_at = self._next_flush()
                if flush_at is not None:
                    wait = max(0.0, min(wait, flush_at - now))
                self.reactor.run_once(wait)
                polled = now
                if self._inbox:
                    self._on_backend_events()
                if (self._final or self._progress) and self._flush_due():
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
        for backend in self.backends:
            backend.stop(STOP_TIMEOUT)
        state = TaskState.CANCELED if reason == "shutdown requested" else TaskState.FAILED
        now = self.clock()
        for uid, task in list(self.tasks.items()):
            if not task.state.final:
                self._finish(task, TaskFinished(uid, state, None, now, error=f"pilot stopped: "
                                                f"{reason}"))
        stats = self.stats.to_dict(self.reactor.waited)
        if self._simulated is not None:
            stats["clock_offset"] = self._simulated.offset
            stats["clock_jumps"] = self._simulated.jumped
        try:
            with open(os.path.join(self.cfg.sandbox, "agent-stats.json"), "w") as f:
                json.dump(stats, f)
        except OSError:
            pass
        if self._tell_client:
            self._flush(force=True)
            self._send(m.Bye(reason, stats))
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
        """Take a few messages, then let the loop see to the backend's events: a burst of
        submits must not hold back the ends of the tasks already running."""
        self._last_heard = time.monotonic()
        for _ in range(MESSAGES_PER_TURN):
            if not readable(self.client):
                break
            msg = m.decode_to_agent(self.client.recv(copy=False).buffer)
            if isinstance(msg, m.Submit):
                self._on_submit(msg)
            elif isinstance(msg, m.Cancel):
                self._on_cancel(msg.uids)
            elif isinstance(msg, m.Shutdown):
                self.stop("shutdown requested")

    def _on_submit(self, msg: m.Submit) -> None:
        if self.stats.first_submit is None:
            self.stats.first_submit = time.monotonic()
            self.stats.waited_at_submit = self.reactor.waited
        if self._simulated is not None:
            self._simulated.hold()
        self.functions.update(msg.functions)
        accepted: list[str] = []
        per_partition: dict[str, list[Request]] = {}
        rejected: list[tuple[_Task, str]] = []
        shapes = self._shapes
        tasks = self.tasks
        seq = self._seq
        load: dict[str, float] = {}  # unfinished tasks per core, kept up to date as we route
        for spec in msg.tasks:
            if spec.uid in tasks:
                continue  # a resent submit: already known
            key = (spec.ranks, spec.cores_per_rank, spec.gpus_per_rank,
                   spec.ranks_per_node or 0, spec.mem_per_rank)
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = Shape(*key)
            seq += 1
            tags = spec.tags
            part, reason = self._only, None
            if part is None or spec.partition is not None or (tags and "partition" in tags):
                routed = self._route(spec, load)
                if isinstance(routed, str):
                    part, reason = self._first, routed
                else:
                    part = routed
            request = _request(spec, seq, shape, part)
            task = tasks[spec.uid] = _Task(spec, request, part)
            accepted.append(spec.uid)
            if reason is None:
                per_partition.setdefault(part.name, []).append(request)
            else:
                task.routed = False
                rejected.append((task, reason))
        self._seq = seq
        now = self.clock()
        self._send(m.Accepted(accepted, now))
        for task, reason in rejected:
            self._finish(task, TaskFinished(task.spec.uid, TaskState.FAILED, None, now,
                                            error=f"no partition for it: {reason}"))
        for name, requests in per_partition.items():
            part = self.partitions[name]
            self._apply(part, part.scheduler.submit(requests, now))

    @property
    def _first(self) -> _Partition:
        return next(iter(self.partitions.values()))

    def _route(self, spec: m.TaskSpec, load: dict[str, float]) -> _Partition | str:
        """The partition for a task, or why none can run it; counts it in `load`."""
        pinned = spec.partition or (spec.tags.get("partition") if spec.tags else None)
        lost = {p.name: p.lost for p in self.partitions.values() if p.lost is not None}
        if pinned in lost:
            return f"partition {pinned!r} lost: {lost[pinned]}"
        if not self._layouts:
            return "every partition was lost: " + "; ".join(
                f"{name!r}: {reason}" for name, reason in lost.items())
        traits = TaskTraits(spec.kind, spec.ranks, spec.gpus_per_rank, pinned)
        if not load:
            for p in self.partitions.values():
                load[p.name] = (p.scheduler.queued + p.scheduler.placed) / p.cores
        shape = Shape(spec.ranks, spec.cores_per_rank, spec.gpus_per_rank,
                      spec.ranks_per_node or 0, spec.mem_per_rank)

        def too_small(p: Partition) -> str | None:
            return self.partitions[p.name].scheduler.alloc.never_fits(shape)

        choice = self.router.route(traits, self._layouts, load, too_small)
        if isinstance(choice, Reject):
            return choice.reason
        part = self.partitions[choice]
        load[choice] += 1 / part.cores
        return part

    def _on_cancel(self, uids: Sequence[str]) -> None:
        per_partition: dict[str, list[str]] = {}
        for uid in uids:
            task = self.tasks.get(uid)
            if task is not None and not task.state.final:
                per_partition.setdefault(task.part.name, []).append(uid)
        for name, live in per_partition.items():
            part = self.partitions[name]
            actions = part.scheduler.cancel(live, self.clock())
            self._apply(part, actions)
            dequeued = {a.uid for a in actions if type(a) is Dequeued}
            placed = [u for u in live if u not in dequeued]
            if placed:
                part.backend.cancel(placed)

    # ---- decisions and outcomes -------------------------------------------------------

    def _apply(self, part: _Partition, actions: Sequence[Action]) -> None:
        now = self.clock()
        self.stats.decisions += len(actions)
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
                progress.add(action.uid, since)
                dispatches.append(DispatchedTask(task.spec, action.worker, action.node,
                                                 action.core))
            elif type(action) is Launch:
                _move(task, SCHEDULED)
                task.events.append(("SCHEDULED", now))
                progress.add(action.uid, since)
                launches.append(PlacedTask(task.spec, action.slot))
            elif type(action) is Fail:
                self._finish(task, TaskFinished(action.uid, TaskState.FAILED, None, now,
                                                error=action.reason))
            elif type(action) is Dequeued:
                self._finish(task, TaskFinished(action.uid, TaskState.CANCELED, None, now,
                                                error="canceled"))
        if dispatches:
            part.backend.dispatch(dispatches)
        if launches:
            part.backend.launch(launches)

    @without_gc
    def _on_backend_events(self) -> None:
        """One round: what the backend reported, and what it lets the scheduler place.

        Events those placements cause wait for the next round, after the main loop has
        looked at its sockets and timers again: a chain of instant tasks (a simulation)
        never keeps the agent from its heartbeats.
        """
        if self._inbox:
            batch = self._inbox[:]
            self._inbox.clear()
            completed: dict[str, list[tuple[str, float]]] = {}  # by partition
            requeue: dict[str, list[Request]] = {}
            for event in batch:
                task = self.tasks.get(event.uid)
                if task is None or task.state.final:
                    if type(event) is BackendLost:
                        self._lose(self.partitions[event.partition], event.reason)
                    continue
                if type(event) is TaskFinished:
                    start = event.exec_start
                    done = completed.get(task.part.name)
                    if done is None:
                        done = completed[task.part.name] = []
                    done.append((event.uid, event.exec_stop - start if start else 0.0))
                    self._finish(task, event)
                elif type(event) is TaskStarted:
                    _move(task, RUNNING)
                    task.pid = event.pid
                    if event.launch_ts is not None:
                        task.events.append(("launch", event.launch_ts))
                    task.events.append(("RUNNING", event.ts))
                    self._progress.add(event.uid, time.monotonic())
                elif type(event) is TaskRequeued:
                    _move(task, SUBMITTED)
                    requeue.setdefault(task.part.name, []).append(task.request)
            now = self.clock()
            for name in completed.keys() | requeue.keys():
                part = self.partitions[name]
                actions = part.scheduler.completed(completed.get(name, ()), now)
                if name in requeue:
                    actions.extend(part.scheduler.requeue(requeue[name], now))
                self._apply(part, actions)
            if self._only is None and time.monotonic() - self._balanced >= BALANCE_INTERVAL:
                self._balanced = time.monotonic()
                self._balance()

    def _balance(self) -> None:
        """Late binding: each partition may take queued tasks it can run from the most
        backlogged other one (`routing.steal_count` says how many). Pinned tasks stay."""
        live = [p for p in self.partitions.values() if p.lost is None]
        if len(live) < 2:
            return
        now = time.monotonic()
        for thief in live:
            if now < thief.next_look:
                continue
            victim = max((p for p in live if p is not thief), key=lambda p: p.scheduler.queued)
            n = steal_count(thief.scheduler.queued, thief.scheduler.alloc.has_free_core(),
                            thief.cores, victim.scheduler.queued, victim.cores)
            if n:
                slots_only = thief.scheduler.queued > 0
                movable = functools.partial(self._movable, source=victim, to=thief,
                                            slots_only=slots_only)
                taken = victim.scheduler.take_queued(n, movable, 2 * n)
                if taken:
                    self._move_to(thief, [self.tasks[r.uid] for r in taken])
                # Nothing it could take (say, a backlog of executables an idle Dragon
                # partition does not take): look less often, not 2 x n tasks every 10 ms.
                thief.look_interval = (BALANCE_INTERVAL if taken else
                                       min(2 * thief.look_interval, LOOK_BACKOFF_MAX))
                thief.next_look = now + thief.look_interval

    def _movable(self, request: Request, source: _Partition, to: _Partition,
                 slots_only: bool) -> bool:
        spec = self.tasks[request.uid].spec
        if slots_only and spec.kind == "function" and to.pool_functions and (
                _request(spec, 0, request.shape, to).pooled):
            return False  # it would wait for the same few workers
        if spec.partition is not None or (spec.tags and "partition" in spec.tags):
            return False
        traits = TaskTraits(spec.kind, spec.ranks, spec.gpus_per_rank)
        return why_not(traits, to.layout.backend) is None and (
            self.router.may_move(traits, source.layout, to.layout)) and (
            to.scheduler.alloc.never_fits(request.shape) is None)

    def _move_to(self, part: _Partition, tasks: list[_Task]) -> None:
        """Queue tasks (queued or placed elsewhere before) on `part`, from the start."""
        requests = []
        for task in tasks:
            task.part = part
            task.request = _request(task.spec, task.request.seq, task.request.shape, part)
            requests.append(task.request)
        self._apply(part, part.scheduler.submit(requests, self.clock()))

    def _lose(self, part: _Partition, reason: str) -> None:
        """A partition's runtime died: move its unfinished tasks that may retry, fail the rest.

        The partition takes no new tasks; the others keep running.
        """
        if part.lost is not None:
            return
        part.lost = reason
        self._layouts = [p for p in self._layouts if p.name != part.name]
        self._only = None
        now = self.clock()
        why = f"partition {part.name!r} lost: {reason}"
        load: dict[str, float] = {}
        per_partition: dict[str, list[_Task]] = {}
        for task in [t for t in self.tasks.values() if t.part is part and not t.state.final]:
            spec = task.spec
            routed = self._route(spec, load) if task.retried < spec.retries else why
            if isinstance(routed, str):
                error = why if routed == why else f"{why}; cannot run elsewhere: {routed}"
                self._finish(task, TaskFinished(spec.uid, TaskState.FAILED, None, now,
                                                error=error))
                continue
            self._progress.discard(spec.uid)
            if task.state is not SUBMITTED:  # placed again from the start, on other nodes
                _move(task, SUBMITTED)
            task.retried += 1
            task.events.append(("requeued", now))
            per_partition.setdefault(routed.name, []).append(task)
        for name, moved in per_partition.items():
            self._move_to(self.partitions[name], moved)

    def _finish(self, task: _Task, outcome: TaskFinished) -> None:
        if outcome.exec_start is not None:
            if task.state is not RUNNING:
                task.events.append(("RUNNING", outcome.exec_start))
            task.events.append(("exec_stop", outcome.exec_stop))
        _move(task, outcome.state)
        task.outcome = outcome
        self._final[outcome.uid] = None

    def _next_flush(self) -> float | None:
        """When (monotonic) updates held back must go out, if any are."""
        due = None
        oldest = self._progress.oldest()
        if oldest is not None:
            due = oldest + PROGRESS_INTERVAL
        if self._simulated is not None and (self._final or due is not None):
            due = max(due or 0.0, self._flushed + SIM_FLUSH_INTERVAL)
        return due

    def _flush_due(self) -> bool:
        """Always, but on a simulated pilot: there the clock jumps from one task end to the
        next, and an update message per jump would cost more than the jump itself."""
        return (self._simulated is None or len(self._final) >= SIM_FLUSH_BATCH
                or time.monotonic() - self._flushed >= SIM_FLUSH_INTERVAL)

    @without_gc
    def _flush(self, force: bool = False) -> None:
        self._flushed = time.monotonic()
        updates: list[m.TaskUpdate] = []
        tasks = self.tasks
        if self._final:
            self.stats.last_final = time.monotonic()
            self.stats.waited_at_final = self.reactor.waited
        for uid in self._final:
            task = tasks.pop(uid)
            o = task.outcome
            assert o is not None
            updates.append(m.TaskUpdate(uid, task.state.value, task.events, o.exit_code,
                                        o.error, o.result, o.stdout, o.stderr, task.pid,
                                        task.part.name if task.routed else None))
            self._progress.discard(uid)
        self._final.clear()
        cutoff = math.inf if force else time.monotonic() - PROGRESS_INTERVAL
        for uid in self._progress.pop_due(cutoff):
            task = tasks[uid]
            updates.append(m.TaskUpdate(uid, task.state.value, task.events, pid=task.pid))
            task.events = []
        offset = self._simulated.offset if self._simulated is not None else 0.0
        for i in range(0, len(updates), MAX_UPDATES_PER_MESSAGE):
            self._send(m.Updates(updates[i:i + MAX_UPDATES_PER_MESSAGE], offset))
