"""The agent process: a thin shell of I/O around the agent core (core.py).

One thread, one `Reactor`: it reads the client's messages and the backends' events,
hands them to `AgentCore.handle`, and performs the actions it returns (launch, dispatch
and cancel on a partition's backend; messages to the client). It also sends and checks
heartbeats, stops the pilot when its runtime is over, and builds each partition's
backend from the registry (backends/registry.py).
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import zmq

from .. import messages as m
from ..backends import registry
from ..backends.base import Backend, BuildContext
from ..clock import Clock
from ..files import private
from ..gcpause import without_gc
from ..keys import Gatekeeper, Keys
from ..partitions import Partition
from ..reactor import Reactor, readable
from ..routing import RoutingPolicy
from ..scheduler import Scheduler
from ..states import TaskState
from ..wire import Receiver
from ..wire import totals as wire_totals
from .config import AgentConfig
from .core import AgentCore, PartitionSetup
from .events import (
    Action,
    CancelRequested,
    CancelTasks,
    CaughtUp,
    DispatchTasks,
    LaunchTasks,
    ReleaseRequested,
    SendAccepted,
    SendReleased,
    SendUpdates,
    StopRequested,
    TasksSubmitted,
    Tick,
    WarmWorkers,
    WatchService,
)
from .link import AttachPoint, ClientLink
from .services import ServiceChecks

HEARTBEAT_INTERVAL = 1.0
POLL_INTERVAL = 0.001  # seconds: while events keep coming, look at sockets this often
MESSAGES_PER_TURN = 4  # client messages (of up to 5,000 tasks) taken per loop turn
STOP_TIMEOUT = 1.0  # grace for tasks and workers at shutdown, each; then SIGKILL


def _load_router(cfg: AgentConfig) -> RoutingPolicy:
    """The user's routing policy (its class may live in the client's modules), or the
    default one."""
    if not cfg.routing:
        return RoutingPolicy()
    router = pickle.loads(base64.b64decode(cfg.routing))
    assert isinstance(router, RoutingPolicy)
    return router


@dataclass(slots=True)
class AgentStats:
    """What the agent's work cost it: decisions, and the wall-clock time it was busy.

    Busy time runs from the first submit to the last task end the agent reported, less
    the time it sat waiting for input: what a faster client could not have shortened.
    """

    first_submit: float | None = None  # monotonic
    last_final: float = 0.0
    waited_at_submit: float = 0.0
    waited_at_final: float = 0.0

    def to_dict(self, decisions: int, waited_now: float) -> dict[str, float]:
        if self.first_submit is None:
            active = busy = 0.0
        else:
            if not self.last_final:  # nothing ended yet: count until now
                self.last_final, self.waited_at_final = time.monotonic(), waited_now
            active = self.last_final - self.first_submit
            busy = max(active - (self.waited_at_final - self.waited_at_submit), 1e-9)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"decisions": decisions, "active_s": active, "busy_s": busy,
                "decisions_per_s": decisions / busy if busy else 0.0,
                "max_rss_bytes": rss}


def build_backends(cfg: AgentConfig, context: BuildContext, layouts: Sequence[Partition]
                   ) -> tuple[dict[str, Backend], list[PartitionSetup]]:
    """Each partition's backend (from the registry) and what the core needs of it.

    A simulated pilot runs every partition on the simulated backend, which models what
    each partition's own backend can run; routing follows the partition's own backend.
    """
    backends: dict[str, Backend] = {}
    setups = []
    for layout in layouts:
        declared = registry.get(layout.backend)
        running = registry.get("simulated") if cfg.backend == "simulated" else declared
        backend: Backend = running.load().build(context, layout)
        # A runtime that places tasks itself is fed a partition's worth ahead.
        spare = layout.nodes if running.abilities.places_itself else 0
        scheduler = Scheduler(layout.nodes, cfg.cores_per_node, cfg.gpus_per_node,
                              backend.workers_per_node, cfg.mem_per_node, cfg.reserve_after,
                              spare)
        abilities = replace(declared.abilities,
                            function_workers=running.abilities.function_workers)
        backends[layout.name] = backend
        setups.append(PartitionSetup(layout, scheduler, abilities))
    return backends, setups


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        for data in cfg.backends:  # backends the client registered at run time
            registry.register(registry.BackendEntry.from_dict(data))
        sys.path.extend(p for p in cfg.python_path if p and p not in sys.path)
        self.reactor = Reactor()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self.keys = Keys.load(cfg.keys_file)
        # Its backends' sockets (workers, executors) admit only holders of the keys.
        self.gatekeeper = Gatekeeper(self._ctx, self.keys)
        self.link = ClientLink(self.reactor, self.keys, cfg.client_address,
                               retain=cfg.detach_grace > 0, on_readable=self._on_client)
        self.attach_point: AttachPoint | None = None  # made in run(), where detachable
        self.from_client: Receiver[m.ToAgent] = Receiver("agent <- client", m.ToAgent)
        self.functions: dict[str, bytes] = {}
        self.task_sandbox = os.path.join(cfg.sandbox, "tasks")
        self.clock = Clock()
        layouts = [Partition(*p[:5], (p[5][0], p[5][1]) if p[5] else None)
                   for p in cfg.partitions] or [
            Partition(cfg.backend, cfg.backend, 0, cfg.nodes)]
        context = BuildContext(
            sandbox=cfg.sandbox, task_sandbox=self.task_sandbox,
            cores_per_node=cfg.cores_per_node, gpus_per_node=cfg.gpus_per_node,
            core_ids=tuple(cfg.core_ids or range(cfg.cores_per_node)), gpu_env=cfg.gpu_env,
            workers_per_node=cfg.workers_per_node, function_workers=cfg.function_workers,
            python_path=cfg.python_path, functions=self.functions, clock=self.clock,
            partitions=layouts, keys=self.keys, keys_file=cfg.keys_file,
            hosts=tuple(cfg.hosts), heartbeat_timeout=cfg.heartbeat_timeout,
            launcher=cfg.launcher, interface=cfg.interface)
        self.backends, setups = build_backends(cfg, context, layouts)
        self.core = AgentCore(setups, _load_router(cfg), clock=self.clock.now)
        self.stats = AgentStats()
        self._inbox: list[Any] = []  # backends' events, and service checks'
        self.services = ServiceChecks(self.reactor, self._inbox.append, self._running)
        self._last_heard = time.monotonic()
        self._stop_reason: str | None = None
        self._canceled = False  # stopped by the client (Shutdown)
        self._tell_client = True
        self._reactive = False  # the client answers final updates (`Idle`)
        self._finals_sent = 0
        self._client_pidfd: int | None = None
        self._give_up: int | None = None  # the timer ending a detached pilot

    def _host_of(self, node: int) -> str:
        """Where a service on pilot node `node` is reached: its host name, or this host
        where nodes are virtual or every node is this host (the platform's interface is
        the loopback: the local cluster, whose node names do not resolve)."""
        hosts = self.cfg.hosts
        if node >= len(hosts) or self.cfg.interface == "lo":
            return "127.0.0.1"
        return hosts[node]

    def _running(self, uid: str) -> bool:
        task = self.core.tasks.get(uid)
        return task is not None and task.state is TaskState.RUNNING

    @property
    def unique_backends(self) -> list[Backend]:
        """Each backend once (the partitions of a simulated pilot share one)."""
        return list({id(b): b for b in self.backends.values()}.values())

    # ---- main loop --------------------------------------------------------------------

    def run(self) -> str:
        cfg = self.cfg
        os.makedirs(self.task_sandbox, exist_ok=True)
        os.chdir(self.task_sandbox)  # tasks in the default sandbox spawn fastest
        for backend in self.unique_backends:
            backend.start(self.reactor, self._inbox.append)
        self.reactor.add_before_wait(self._caught_up)
        if cfg.detach_grace > 0:
            self.attach_point = AttachPoint(self.reactor, self.keys, cfg.sandbox,
                                            self._on_attach)
        if cfg.parent_pid and not self._watch_client(cfg.parent_pid):
            return "client process exited before the agent started"
        self._heartbeat()
        if cfg.stop_after is not None:  # (a batch job's: its margin before the time limit)
            self.reactor.call_later(cfg.stop_after, lambda: self.stop(cfg.runtime_reason))
        self._send(m.Hello(m.WIRE_VERSION, os.getpid(), time.time(), cfg.nodes,
                           cfg.cores_per_node, cfg.gpus_per_node))
        polled = 0.0
        try:
            while self._stop_reason is None:
                now = time.monotonic()
                if self._inbox and now - polled < POLL_INTERVAL:
                    self._handle_inbox()  # more to do: sockets and timers can wait
                    continue
                wait = 0.0 if self._inbox else HEARTBEAT_INTERVAL
                due = self.core.next_due()
                if due is not None:
                    wait = max(0.0, min(wait, due - now))
                self.reactor.run_once(wait)
                polled = now
                self._handle_inbox()
        except Exception as exc:  # a bug: say so, stop everything, fail the tasks
            traceback.print_exc()
            self.stop(f"agent error: {exc!r} (see agent.log)")
        self._shutdown()
        return self._stop_reason or "stopped"

    def stop(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _handle_inbox(self) -> None:
        """What the backends reported, and time passing (updates may be due).

        Events those actions cause wait for the next round, after the main loop has
        looked at its sockets and timers again: a chain of instant tasks (a simulation)
        never keeps the agent from its heartbeats.
        """
        events: list[Any] = self._inbox[:]
        self._inbox.clear()
        events.append(Tick())
        self._execute(self.core.handle(*events))

    def _caught_up(self) -> bool:
        """About to wait: what the core holds back goes now. True if that made work."""
        self._execute(self.core.handle(CaughtUp()))
        return bool(self._inbox)

    def _execute(self, actions: list[Action]) -> None:
        backends = self.backends
        for action in actions:
            if type(action) is LaunchTasks:
                backends[action.partition].launch(action.tasks)
            elif type(action) is DispatchTasks:
                backends[action.partition].dispatch(action.tasks)
            elif type(action) is SendUpdates:
                if action.finals:
                    self.stats.last_final = time.monotonic()
                    self.stats.waited_at_final = self.reactor.waited
                    self._finals_sent += action.finals
                    if self._reactive:
                        self.clock.await_client(self._finals_sent)
                self._send(m.Updates(action.updates, self.clock.offset,
                                     finals=action.finals))
            elif type(action) is SendAccepted:
                self._send(m.Accepted(action.uids, action.ts))
            elif type(action) is CancelTasks:
                backends[action.partition].cancel(action.uids)
            elif type(action) is SendReleased:
                self._send(m.Released(action.uids, action.ts))
            elif type(action) is WatchService:
                self.services.watch(action.uid, action.service, self._host_of(action.node))
            elif type(action) is WarmWorkers:
                warm = getattr(backends[action.partition], "warm", None)
                if warm is not None:  # (backends with function workers to start early)
                    warm(action.workers)

    def _shutdown(self) -> None:
        reason = self._stop_reason or "stopped"
        # Outcomes that arrived with the stop still count; nothing more is launched.
        stop = StopRequested(reason, canceled=self._canceled)
        actions = self.core.handle(stop, *self._inbox)
        self._inbox.clear()
        if self._tell_client:
            self._execute(actions)
        self.services.stop()
        for backend in self.unique_backends:
            backend.stop(STOP_TIMEOUT)
        stats = self.stats.to_dict(self.core.decisions, self.reactor.waited)
        stats["clock_offset"], stats["clock_jumps"] = self.clock.offset, self.clock.jumps
        # Messages this process dropped (client, workers, runtimes) or found stale.
        stats["messages_dropped"], stats["messages_stale"] = wire_totals.dropped, wire_totals.stale
        try:
            with open(os.path.join(self.cfg.sandbox, "agent-stats.json"), "w",
                      opener=private) as f:
                json.dump(stats, f)
        except OSError:
            pass
        if self._tell_client:
            self._send(m.Bye(reason, stats))
        self.link.close(linger=2000 if self._tell_client and self.link.attached else 0)
        if self.attach_point is not None:
            self.attach_point.close()
        self.gatekeeper.stop()

    def _heartbeat(self) -> None:
        self.reactor.call_later(HEARTBEAT_INTERVAL, self._heartbeat)
        if not self.link.attached:
            return
        silent = time.monotonic() - self._last_heard
        if silent > self.cfg.heartbeat_timeout:
            self._lost_client(f"client lost: no message for {silent:.1f} s")
            return
        self._send(m.Heartbeat(time.time()))

    def _watch_client(self, pid: int) -> bool:
        """Hear at once when the client process (on this host) ends; False if it has."""
        if self._client_pidfd is not None:
            self.reactor.remove_reader(self._client_pidfd)
            os.close(self._client_pidfd)
            self._client_pidfd = None
        try:
            self._client_pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        self.reactor.add_reader(self._client_pidfd,
                                lambda: self._lost_client("client process exited"))
        return True

    def _lost_client(self, reason: str) -> None:
        """The client is gone: stop, or (with `detach_grace`) run on and wait for a new
        one that long."""
        if self._client_pidfd is not None:
            self.reactor.remove_reader(self._client_pidfd)
            os.close(self._client_pidfd)
            self._client_pidfd = None
        grace = self.cfg.detach_grace
        if grace <= 0:
            self._tell_client = False
            self.stop(reason)
            return
        if not self.link.attached:
            return
        self.link.detach()
        print(f"{reason}: running on, waiting up to {grace:g} s for a client to attach",
              file=sys.stderr, flush=True)

        def give_up() -> None:
            self._tell_client = False
            self.stop(f"{reason}; no client attached within {grace:g} s")

        self._give_up = self.reactor.call_later(grace, give_up)

    def _on_attach(self, msg: m.Attach) -> None:
        """A new client: reconnect to it, say hello, resend what it may have missed and
        the state of every unfinished task."""
        if self._stop_reason is not None:
            return
        if self._give_up is not None:
            self.reactor.cancel_timer(self._give_up)
            self._give_up = None
        print(f"client attached from {msg.address}", file=sys.stderr, flush=True)
        self.link.attach(msg.address)
        self._last_heard = time.monotonic()
        if msg.client_pid is not None and not self._watch_client(msg.client_pid):
            self._lost_client("client process exited")
            return
        cfg = self.cfg
        self._send(m.Hello(m.WIRE_VERSION, os.getpid(), time.time(), cfg.nodes,
                           cfg.cores_per_node, cfg.gpus_per_node))
        self._send(m.Updates(self.core.snapshot(), self.clock.offset))

    def _send(self, message: Any) -> None:
        self.link.send(message)

    # ---- from the client --------------------------------------------------------------

    @without_gc
    def _on_client(self) -> None:
        """Take a few messages, then let the loop see to the backend's events: a burst of
        submits must not hold back the ends of the tasks already running."""
        self._last_heard = time.monotonic()
        sock = self.link.socket
        for _ in range(MESSAGES_PER_TURN):
            if not readable(sock):
                break
            msg = self.from_client.decode(sock.recv(copy=False).buffer)
            if isinstance(msg, m.Submit):
                if self.stats.first_submit is None:
                    self.stats.first_submit = time.monotonic()
                    self.stats.waited_at_submit = self.reactor.waited
                self.clock.hold()  # a simulation waits for the rest of the bag
                self.functions.update(msg.functions)
                self._execute(self.core.handle(TasksSubmitted(msg.tasks, msg.seen, msg.groups)))
            elif isinstance(msg, m.Cancel):
                self._execute(self.core.handle(CancelRequested(msg.uids)))
            elif isinstance(msg, m.Release):
                self._execute(self.core.handle(ReleaseRequested(msg.uids)))
            elif isinstance(msg, m.Heartbeat):
                self.link.acked(msg.acked)
                self.core.client_seen(msg.seen)
            elif isinstance(msg, m.Idle):  # a reactive client (simulation: clock.py)
                self._reactive = True
                self.clock.client_idle(msg.seen)
            elif isinstance(msg, m.Shutdown):  # the client's: its tasks end CANCELED
                self._canceled = self._stop_reason is None
                self.stop(f"shutdown requested ({msg.reason})" if msg.reason
                          else "shutdown requested")
