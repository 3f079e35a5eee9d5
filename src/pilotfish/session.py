"""The user's entry point: a session holds pilots, submits tasks, waits, reports.

The `submit` contract (after PSI/J): if `submit` raises, nothing was submitted or
journaled; if it returns, every later problem (a task that can never fit, a lost agent,
a timeout) arrives as the task's state change to FAILED with a reason, never as a hang.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import itertools
import json
import logging
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, overload

import msgspec
import zmq

from . import messages as m
from .agent.config import AgentConfig
from .backends import registry
from .channel import JOB_END_GRACE, Channel
from .dependencies import Held, Plan, plan
from .description import PilotDescription, TaskDescription
from .files import DIR_MODE, private, private_dir, read_tail
from .gcpause import without_gc
from .journal import LIFECYCLE, Journal, connect_readonly
from .keys import Keys
from .partitions import PartitionSpec
from .pilot import Pilot as Pilot  # (re-exported: its home before)
from .pilots.batch import BatchError, JobEvent, SlurmBatch, client_host, job_request
from .pilots.batch import stop_margin as batch_stop_margin
from .pilots.local import LocalAgent
from .proctree import this_process
from .relocation import STOPPED, Relocator, fits
from .states import PILOT_LIVE_STATES, TaskState, is_stale
from .task import Task

__version__ = "0.1.0"
log = logging.getLogger(__name__)

_STATES = {s.value: s for s in TaskState}
_ORDER = {s: i for i, s in enumerate(TaskState)}  # NEW < SUBMITTED < ... < RUNNING < final
_LIFECYCLE = frozenset(LIFECYCLE)
_json_encode = msgspec.json.Encoder().encode
# A function's arguments are journaled with its description up to this size (pickled):
# larger ones (arrays, chunks of a map) would make the journal their size again, and more.
JOURNAL_ARGS_MAX = 4096
GROUP_MIN = 16  # a longer `after` that tasks of one submit share goes once (Submit.groups)


def _tasks(call: str, tasks: Iterable[Task]) -> list[Task]:
    """`tasks` as a list, each one a Task (else a TypeError naming the first that is not)."""
    if isinstance(tasks, Task):
        raise TypeError(f"{call} takes a list of tasks, got one Task ({tasks.uid}): "
                        "pass [task]")
    items = list(tasks)
    for i, t in enumerate(items):
        if not isinstance(t, Task):
            raise TypeError(f"{call} takes Task objects (from submit); item {i} is "
                            f"{t!r} ({type(t).__name__})")
    return items

class Session:
    """Pilots, tasks and their journal (`<path>/<uid>/session.db`).

    Use as a context manager; leaving it (or `close()`) cancels whatever still runs and
    stops the pilots. Call `wait()` first to let the tasks finish.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, uid: str | None = None
                 ) -> None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.uid = uid or f"pf.{stamp}.{secrets.token_hex(3)}"
        self.path = Path(path if path is not None else "pilotfish-sessions") / self.uid
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(mode=DIR_MODE)  # the owner's only: tasks' environments are in it
        self._open(Keys.generate().save(self.path / "keys"))
        self.journal.set_session(uid=self.uid, created=time.time(), version=__version__,
                                 client=this_process())

    def _open(self, keys_file: Path) -> None:
        """What a new and an attached session both start with."""
        self.journal = Journal(self.path / "session.db")
        self.pilots: dict[str, Pilot] = {}
        self.attached: list[Task] = []  # unfinished tasks an attach found (`attach`)
        self.stale_updates = 0  # repeated or out-of-date updates dropped
        self._live: dict[str, Task] = {}  # tasks not final yet
        self._seq = 0
        self._lock = threading.Lock()
        self._updating = threading.Lock()
        self._done = threading.Condition()  # notified whenever tasks reach a final state
        # ... and on other state changes while someone waits for one (`wait_for`)
        self._state_waiters = 0
        self._held = Held()  # tasks waiting for tasks of other pilots
        self._relocator = Relocator(  # tasks that change pilot
            self.pilots, self._live, lambda pilot, msg: self._channel.send(pilot, msg),
            self.journal, self._end_tasks, lambda: self._closed)
        self._callbacks = CallbackThread()
        self._closed = False
        self._batch: SlurmBatch | None = None  # the session's batch jobs (made on first use)
        self.keys_file = keys_file
        self._channel = Channel(self._on_message, self._on_lost, self._on_dropped,
                                Keys.load(self.keys_file),
                                acked=lambda pilot: self.journal.committed.get(pilot, 0),
                                seen=lambda pilot: self.pilots[pilot].finals_seen)

    @classmethod
    def attach(cls, path: str | os.PathLike[str], timeout: float = 30.0) -> Session:
        """Take over a session whose client ended while its pilots ran on
        (`PilotDescription(detach_grace=...)`).

        Each of its pilots still waiting for a client reconnects to this one and reports
        what happened meanwhile: tasks that ended, with their results, and the state of
        the others, which are followed to their end (`session.attached` lists them; no
        task runs twice). Pilots that did not wait, or do not answer within `timeout`
        seconds, are ended in the journal, and their unfinished tasks fail with the
        reason. The journal is brought up to date as the updates come in.
        """
        session = cls.__new__(cls)
        session.path = Path(path)
        keys = session.path / "keys"
        if not (session.path / "session.db").is_file() or not keys.is_file():
            raise FileNotFoundError(f"no pilotfish session at {session.path} (a session "
                                    "directory holds session.db and keys)")
        session.uid = session.path.name
        pilots, tasks, last = _unfinished(session.path)
        session._open(keys)
        session.journal.set_session(client=this_process())
        session._seq = last
        for uid, recorded, state in pilots:
            pilot = session.pilots[uid] = Pilot(uid, _pilot_description(recorded),
                                                session.path / uid, session)
            pilot.state = state
            if state not in PILOT_LIVE_STATES:
                pilot.ready.set()
                pilot.stopped.set()
        with session._done:
            for seq, uid, pilot_uid, kind in tasks:
                task = Task(uid, seq, None, pilot_uid, session, kind)
                session._live[uid] = task
                session.attached.append(task)
                session.pilots[pilot_uid].outstanding += 1
        for pilot in session.pilots.values():
            if not pilot.stopped.is_set():
                session._reattach(pilot, timeout)
        return session

    def _reattach(self, pilot: Pilot, timeout: float) -> None:
        """Ask a pilot's agent to report to this client; end it if it cannot."""
        pilot.state, pilot.ready = "STARTING", threading.Event()
        door = pilot.sandbox / "agent.address"
        if not door.is_file():
            self._end_pilot(pilot, "FAILED", "its client ended, and it did not wait for "
                            "another (detach_grace was 0) or stopped waiting")
            return
        address = self._channel.open(pilot.uid, pilot.description.heartbeat_timeout)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            knock = ctx.socket(zmq.DEALER)
            Keys.load(self.keys_file).connect(knock)
            knock.connect(door.read_text().strip())
            knock.send(m.encode(m.Attach(address, os.getpid())))
            knock.close(linger=int(timeout * 1000))
        finally:
            ctx.term()
        if not pilot.ready.wait(timeout) or not pilot.active or pilot.agent_pid is None:
            self._channel.close_link(pilot.uid)
            self._end_pilot(pilot, "FAILED", f"its agent did not answer within {timeout:g} "
                            "s (it had stopped waiting for a client, or is gone)")
            return
        pilot.agent = LocalAgent.adopt(pilot.agent_pid, pilot.sandbox, any(
            p.backend == "dragon" for p in pilot.description.layout))
        self._channel.watch_process(pilot.uid, pilot.agent_pid)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Session {self.uid} at {self.path}>"

    # ---- pilots -----------------------------------------------------------------------

    def start_pilot(self, description: PilotDescription | None = None,
                    timeout: float = 60.0) -> Pilot:
        """Start a pilot and return once its agent is ready for tasks (`timeout`).

        A batch pilot (`mode="batch"`) returns at once, PENDING: its Slurm job is
        submitted, and it turns ACTIVE when the job starts and its agent connects back
        (`pilot.wait_active()`). Tasks submitted meanwhile wait for it. If sbatch
        refuses the job, this raises RuntimeError with sbatch's message."""
        self._check_open()
        desc = description or PilotDescription()
        if not isinstance(desc, PilotDescription):
            raise TypeError(f"start_pilot takes a PilotDescription, got {type(desc).__name__}")
        batch = desc.mode == "batch"
        try:  # where its agent will connect to: an address the compute nodes reach
            host = client_host(os.environ) if batch else "127.0.0.1"
        except BatchError as exc:
            raise RuntimeError(str(exc)) from None
        uid = f"pilot.{len(self.pilots):04d}"
        pilot = Pilot(uid, desc, self.path / uid, self)
        assert desc.cores_per_node is not None and desc.gpus_per_node is not None
        assert desc.nodes is not None
        recorded = {**asdict(desc), "routing": type(desc.routing).__qualname__
                    if desc.routing is not None else None}
        self.journal.add_pilot(uid, _json_encode(recorded).decode(), desc.nodes,
                               desc.cores_per_node, desc.gpus_per_node, time.time())
        self.journal.add_partitions(uid, [(p.name, p.backend, p.first, p.nodes)
                                          for p in desc.layout])
        self.pilots[uid] = pilot
        address = self._channel.open(uid, desc.heartbeat_timeout, host, awaiting_job=batch)
        cfg = AgentConfig(
            client_address=address, pilot_uid=uid, sandbox=str(pilot.sandbox.resolve()),
            nodes=desc.nodes, cores_per_node=desc.cores_per_node,
            gpus_per_node=desc.gpus_per_node, workers_per_node=desc.workers_per_node,
            function_workers=desc.function_workers,
            routing=base64.b64encode(blob).decode() if (blob := desc.routing_blob) else None,
            mem_per_node=desc.mem_per_node or 0, core_ids=list(desc.core_ids),
            gpu_env=desc.profile.gpu_env or "CUDA_VISIBLE_DEVICES", backend=desc.backend,
            reserve_after=desc.reserve_after,
            partitions=[(p.name, p.backend, p.first, p.nodes, p.functions,
                         list(p.launch) if p.launch else None) for p in desc.layout],
            heartbeat_timeout=desc.heartbeat_timeout, runtime=desc.runtime,
            parent_pid=None if batch else os.getpid(),  # (a batch agent's client is elsewhere)
            python_path=[os.path.abspath(p) for p in sys.path if p == "" or os.path.isdir(p)],
            backends=[entry.to_dict() for entry in registry.registered()],
            keys_file=str(self.keys_file.resolve()), detach_grace=desc.detach_grace,
            hosts=list(desc.hosts), launcher=desc.profile.launcher, batch_job=batch,
            interface=desc.profile.interface,
            runtime_margin=batch_stop_margin(desc.runtime) if batch and desc.runtime else 0.0,
        )
        if batch:
            self._submit_job(pilot, cfg)
            return pilot
        pilot.agent = LocalAgent(cfg)
        self._channel.watch_process(uid, pilot.agent.pid)
        log = pilot.sandbox / "agent.log"
        if not pilot.ready.wait(timeout):
            self._kill_agent(pilot)
            raise TimeoutError(f"{uid}: agent not ready within {timeout} s "
                               f"({_last_line(log)}); see {log}")
        if not pilot.active:
            self._kill_agent(pilot)
            raise RuntimeError(f"{uid}: agent failed to start: {pilot.reason} "
                               f"({_last_line(log)}); see {log}")
        return pilot

    def _submit_job(self, pilot: Pilot, cfg: AgentConfig) -> None:
        """A batch pilot: its config to `<pilot>/agent.json` (0600), its job submitted."""
        import pilotfish

        sandbox = private_dir(pilot.sandbox)
        config = sandbox / "agent.json"
        with open(config, "w", opener=private) as f:
            f.write(cfg.to_json())
        request = job_request(
            pilot.description, pilot_uid=pilot.uid, sandbox=cfg.sandbox,
            config_path=str(config.resolve()), executable=sys.executable,
            package_root=str(Path(pilotfish.__file__).resolve().parent.parent), env=os.environ)
        pilot.state = pilot.reason = "PENDING"
        self.journal.update_pilot(pilot.uid, state="PENDING")
        try:
            if self._batch is None:
                self._batch = SlurmBatch(self.path / "batch")
            pilot.job = self._batch.submit(request, lambda e: self._on_job_event(pilot, e))
        except (BatchError, OSError) as exc:
            self._channel.close_link(pilot.uid)
            self._end_pilot(pilot, "FAILED", f"its batch job was not submitted: {exc}")
            raise RuntimeError(f"{pilot.uid}: sbatch refused the pilot's job: {exc}") from None
        with pilot._lock:
            if pilot.state == "PENDING":
                pilot.reason = f"batch job {pilot.job_id} submitted"

    def _on_job_event(self, pilot: Pilot, event: JobEvent) -> None:
        """A batch pilot's job changed (on a PSI/J or watcher thread)."""
        if event.kind == "pending":
            if pilot.state == "PENDING":
                pilot.reason = f"batch job {event.job_id} pending: {event.text}"
        elif event.kind == "started":
            self._channel.job_started(pilot.uid)
        elif event.kind == "ended":
            self._channel.job_ended(pilot.uid, f"its batch job {event.job_id} {event.text}")
        elif event.kind == "lost" and pilot.state == "PENDING":  # (once active, its
            if pilot.job is not None:                            # heartbeats tell)
                pilot.job.cancel()
            self._channel.job_ended(pilot.uid, f"its batch job {event.job_id} {event.text}; "
                                    "canceled")

    def _cancel_pilot(self, pilot: Pilot, reason: str, timeout: float) -> None:
        """End a pilot (`Pilot.cancel`, `close`): see `Pilot.cancel`."""
        with pilot._lock:
            ended = pilot._ended
            pending = not ended and pilot.state == "PENDING"
            if not ended:
                pilot._canceling = reason
        if pending:  # no agent yet: the pilot ends here, its job is canceled
            self._channel.close_link(pilot.uid)
            self._end_pilot(pilot, "CANCELED", f"{pilot.uid}: {reason}", TaskState.CANCELED)
        elif not ended:
            self._channel.send(pilot.uid, m.Shutdown(reason))
            if not self._wait_stopped(pilot, time.monotonic() + timeout, timeout):
                self._kill_agent(pilot)
                self._on_lost(pilot.uid, "agent did not stop within the timeout; killed")
        if pilot.job is not None and not pilot.job.cancel(
                wait=timeout, grace=0.0 if pending else JOB_END_GRACE):
            log.warning("%s: its batch job %s did not end within %g s of scancel", pilot.uid,
                        pilot.job_id, timeout)

    # ---- tasks ------------------------------------------------------------------------

    @overload
    def submit(self, descriptions: TaskDescription, pilot: Pilot | str | None = None
               ) -> Task: ...

    @overload
    def submit(self, descriptions: Iterable[TaskDescription],
               pilot: Pilot | str | None = None) -> list[Task]: ...

    def submit(self, descriptions: TaskDescription | Iterable[TaskDescription],
               pilot: Pilot | str | None = None) -> Task | list[Task]:
        """Submit one task or many (one batch); returns Task futures at once.

        Raises `JournalError` (and submits nothing) if journal writes failed since the
        last submit, wait or close: the session's record is incomplete."""
        single = isinstance(descriptions, TaskDescription)
        descs: list[TaskDescription] = (
            [descriptions] if single else list(descriptions))  # type: ignore[list-item,arg-type]
        for i, d in enumerate(descs):
            if not isinstance(d, TaskDescription):
                raise TypeError(f"submit takes TaskDescription objects; item {i} is "
                                f"{type(d).__name__}")
            for t in d.depends_on:
                if t._session is not self:
                    raise ValueError(f"item {i} depends on {t.uid}, a task of another "
                                     "session")
        targets = self._spread(descs, self._pick_pilot(pilot) if pilot is not None else None)
        self.journal.check()
        tasks = self._submit(descs, targets, pinned=pilot is not None)
        return tasks[0] if single else tasks

    def _spread(self, descs: list[TaskDescription], pilot: Pilot | None) -> list[Pilot]:
        """Each task's pilot: the one given, else the active pilot (pending ones if none
        is active) with the fewest unfinished tasks per core among those it fits, task by
        task: a batch spreads over the pilots by free capacity."""
        if pilot is not None:
            return [pilot] * len(descs)
        self._check_open()
        live = ([p for p in self.pilots.values() if p.active]
                or [p for p in self.pilots.values() if p.state == "PENDING"])
        if not live:
            raise RuntimeError("no active pilot: call session.start_pilot() first")
        if len(live) == 1:
            return live * len(descs)
        load = {p.uid: p.outstanding / p.cores for p in live}
        targets = []
        for d in descs:
            near = {t.pilot for t in d.depends_on if not t.state.final}
            if len(near) == 1 and (p := self.pilots[near.pop()]) in live and fits(
                    d, p.description):  # where its inputs are: the agent resolves them
                targets.append(p)
                continue
            able = [p for p in live if fits(d, p.description)] or live  # (none: it fails
            best = min(able, key=lambda p: load[p.uid])                  # there, saying why)
            load[best.uid] += d.ranks * d.cores_per_rank / best.cores
            targets.append(best)
        return targets

    def _pick_pilot(self, pilot: Pilot | str) -> Pilot:
        """The pilot given (or its uid): active, or a pending batch pilot (the tasks wait
        for it)."""
        self._check_open()
        if isinstance(pilot, str) and pilot in self.pilots:
            pilot = self.pilots[pilot]
        elif pilot is not None and not isinstance(pilot, Pilot):
            raise TypeError(f"submit's pilot must be a Pilot of this session or its uid "
                            f"({', '.join(self.pilots) or 'none started'}), got {pilot!r}")
        if pilot.uid not in self.pilots or pilot.state not in ("ACTIVE", "PENDING"):
            raise RuntimeError(f"{pilot.uid} is not an active or pending pilot of this "
                               f"session ({pilot.state}: {pilot.reason})")
        return pilot

    @without_gc
    def _submit(self, descs: list[TaskDescription], pilots: list[Pilot],
                pinned: bool = False) -> list[Task]:
        """Journal the tasks, then send each pilot its own in one message. `pinned`: the
        user chose the pilot (the tasks never move to another)."""
        now = time.time()
        specs: dict[str, list[m.TaskSpec]] = {}
        ordered: list[tuple[str, Any]] = []  # (pilot, spec), in submission order
        tasks: list[Task] = []
        rows = []
        functions: dict[str, dict[str, bytes]] = {}  # pilot -> key -> function
        unsendable: dict[str, str] = {}  # uid -> why
        with self._lock:
            first = self._seq + 1
            self._seq += len(descs)
        deferred: list[tuple[int, Task, str | None]] = []  # tasks with inputs, their group
        groups: dict[tuple[Any, ...], str] = {}  # a long `after` many tasks share -> its name
        for seq, d, pilot in zip(range(first, first + len(descs)), descs, pilots,
                                 strict=True):
            uid = f"task.{seq:06d}"
            pid = pilot.uid
            group = None
            if len(d.after) >= GROUP_MIN and not d.inputs:  # (its hash: the tasks' ids)
                group = groups.setdefault(tuple(d.after), f"{uid}+after")
                spec = d.to_spec(uid, [group], {})  # (journaled so: the group once, below)
            else:
                spec = d.to_spec(uid)
            if d.function_key is not None:
                assert d.function_blob is not None  # the channel sends each once per pilot
                functions.setdefault(pid, {})[d.function_key] = d.function_blob
            task = Task(uid, seq, d, pid, self)
            task.pinned = pinned
            task.events.append(("NEW", now))
            tasks.append(task)
            journaled = spec
            if spec.args_blob is not None and len(spec.args_blob) > JOURNAL_ARGS_MAX:
                journaled = msgspec.structs.replace(spec, args_blob=None)
            try:
                description = _json_encode(journaled).decode()
                if d.depends_on:
                    deferred.append((len(ordered), task, group))
                ordered.append((pid, spec))
            except Exception as exc:  # descriptions are checked to encode: should one
                description = "{}"  # still not, it fails alone (below)
                unsendable[uid] = f"cannot be sent to the agent: {exc}"
            rows.append((seq, uid, pid, d.name, spec.kind, d.ranks * d.cores_per_rank,
                         d.ranks * d.gpus_per_rank, description, now))
        if functions:
            self.journal.add_functions(list({k: f for per_pilot in functions.values()
                                             for k, f in per_pilot.items()}.items()))
        self.journal.add_tasks(rows)
        if groups:
            self.journal.add_input_groups([(name, json.dumps([t.uid for t in after]))
                                           for after, name in groups.items()])
        with self._done:
            for task in tasks:
                self._live[task.uid] = task
            for pilot, d in zip(pilots, descs, strict=True):
                pilot.outstanding += 1
                pilot.load += d.ranks * d.cores_per_rank
        self._relocator.changed()
        ended: list[tuple[str, TaskState, str]] = []
        planned: dict[tuple[str, str], Plan] = {}  # (group, pilot) -> its tasks' plan
        sent_groups: dict[str, dict[str, list[str]]] = {}  # pilot -> group -> names
        with self._updating:  # inputs cannot end while planned, nor `seen` grow
            for i, task, group in deferred:
                pid, spec = ordered[i]
                how = self._plan(task, pid, group, planned, sent_groups)
                if isinstance(how, tuple):
                    ended.append((task.uid, *how))
                ordered[i] = (pid, None if isinstance(how, tuple) else how)
            for pid, spec_or_none in ordered:
                if spec_or_none is not None:
                    specs.setdefault(pid, []).append(spec_or_none)
            for pid, sent in specs.items():  # (queued in the order `seen` was read)
                self._channel.send(pid, m.Submit(sent, functions.get(pid, {}),
                                                 seen=self.pilots[pid].finals_seen,
                                                 groups=sent_groups.get(pid, {})))
        for uid, why in unsendable.items():
            self._end_tasks([uid], TaskState.FAILED, why)
        for uid, state, why in ended:
            self._end_tasks([uid], state, why)
        return tasks

    def _plan(self, task: Task, pid: str, group: str | None = None,
              planned: dict[tuple[str, str], Plan] | None = None,
              sent_groups: dict[str, dict[str, list[str]]] | None = None
              ) -> m.TaskSpec | tuple[TaskState, str] | None:
        """A task with inputs, for pilot `pid`: its spec (the agent resolves the rest),
        how it ends (an input failed), or None: held until inputs elsewhere end. The
        tasks of a `group` (the same long `after`) share one plan, and the names the
        agent waits for go once, in `sent_groups`."""
        d = task.description
        assert d is not None
        p = None if group is None or planned is None else planned.get((group, pid))
        if p is None:
            p = plan(d, pid, self._relocator.moving)
            if group is not None and planned is not None:
                planned[group, pid] = p
        if p.ends is not None:
            return p.ends
        if p.waits_for:
            self._held.hold(task, p.waits_for)
            return None
        if group is not None and sent_groups is not None and p.after:
            sent_groups.setdefault(pid, {})[group] = p.after
            return d.to_spec(task.uid, [group], p.inputs)
        return d.to_spec(task.uid, p.after, p.inputs)

    def cancel(self, tasks: Iterable[Task]) -> None:
        """Cancel queued or running tasks; each ends CANCELED unless it finished first
        (at once for the tasks of a pending batch pilot)."""
        by_pilot: dict[str, list[str]] = {}
        now = time.time()
        rows = []
        held: list[str] = []  # waiting here for inputs elsewhere: they end here
        for t in _tasks("cancel", tasks):
            if not t.state.final:
                rows.append((t.id, "cancel_requested", now))
                with self._updating:
                    if self._held.release(t.uid) is not None:
                        held.append(t.uid)
                        continue
                by_pilot.setdefault(t.pilot, []).append(t.uid)
                self._relocator.cancel_requested(t)
        self.journal.add_events(rows)
        self._end_tasks(held, TaskState.CANCELED, "canceled")
        for pilot, uids in by_pilot.items():
            self._channel.send(pilot, m.Cancel(uids))  # (queued for a pending pilot: its
            if self.pilots[pilot].state == "PENDING":  # agent must not run them either)
                self._end_tasks(uids, TaskState.CANCELED, "canceled")

    def wait(self, tasks: Iterable[Task] | None = None, timeout: float | None = None) -> bool:
        """Block until the tasks (default: all submitted so far but services, which run
        until canceled or their pilot ends) are final.

        Returns True when they all are, False if `timeout` seconds passed first. Raises
        `JournalError` if journal writes failed meanwhile (the tasks still ran).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = ([t for t in list(self._live.values())
                    if t.description is None or t.description.service is None]
                   if tasks is None else _tasks("wait", tasks))
        i = 0
        with self._done:
            while True:
                while i < len(pending) and pending[i].state.final:
                    i += 1
                if i == len(pending):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._done.wait(remaining)
        self.journal.check()
        return i == len(pending)

    def wait_for(self, tasks: Iterable[Task], state: TaskState | str,
                 timeout: float | None = None) -> bool:
        """Block until every task has reached `state` (is in it or past it: RUNNING has
        reached SCHEDULED) or is final.

        Returns True when they all have, False if `timeout` seconds passed first. A task
        that ended without reaching `state` (a queued task canceled, one that failed to
        launch) counts as arrived: look at its state. Woken by the updates as they arrive,
        not by polling.
        """
        target = _ORDER[TaskState(state)]
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = _tasks("wait_for", tasks)
        i = 0
        with self._done:
            self._state_waiters += 1  # the channel thread now notifies every state change
            try:
                while True:
                    while i < len(pending) and (pending[i].state.final
                                                or _ORDER[pending[i].state] >= target):
                        i += 1
                    if i == len(pending):
                        return True
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._done.wait(remaining)
            finally:
                self._state_waiters -= 1

    def as_completed(self, tasks: Iterable[Task], timeout: float | None = None
                     ) -> Iterator[Task]:
        futures: list[concurrent.futures.Future[Any]] = list(tasks)
        return concurrent.futures.as_completed(futures, timeout)  # type: ignore[return-value]

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not final yet."""
        return len(self._live)

    @property
    def dropped_messages(self) -> int:
        """Messages from the agents that could not be decoded, dropped and logged (beside
        `stale_updates`: well-formed updates that came too late)."""
        return self._channel.receiver.dropped

    def executor(self, pilot: Pilot | None = None) -> PilotExecutor:
        """A `concurrent.futures.Executor` whose calls run as function tasks on the pilot."""
        return PilotExecutor(self, pilot)

    # ---- metrics ----------------------------------------------------------------------

    def metrics(self, by: str | None = None) -> Any:
        """Throughput, utilization, makespan and overheads, computed from the journal."""
        from .metrics import session_metrics

        self.journal.flush()
        return session_metrics(self.path, by=by)

    # ---- shutdown ---------------------------------------------------------------------

    @staticmethod
    def _wait_stopped(pilot: Pilot, deadline: float, timeout: float) -> bool:
        """Wait for a stopping pilot until `deadline`, extended while it keeps reporting
        tasks ended: a pilot canceling a million tasks is busy, not stuck."""
        left = pilot.outstanding
        while not pilot.stopped.wait(max(0.0, min(1.0, deadline - time.monotonic()))):
            if pilot.outstanding < left:
                left = pilot.outstanding
                deadline = max(deadline, time.monotonic() + timeout)
            elif time.monotonic() >= deadline:
                return False
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Stop every pilot (tasks still running are canceled), cancel the batch jobs of
        pilots still pending or running (and wait until Slurm holds none), and close the
        journal."""
        if self._closed:
            return
        self._closed = True
        for pilot in self.pilots.values():
            if pilot.active:
                self._channel.send(pilot.uid, m.Shutdown("session closed"))
            elif pilot.state == "PENDING":
                self._cancel_pilot(pilot, "session closed", timeout)
        deadline = time.monotonic() + timeout
        for pilot in self.pilots.values():
            if not self._wait_stopped(pilot, deadline, timeout):
                self._kill_agent(pilot)
                self._on_lost(pilot.uid, "agent did not stop within the timeout; killed")
            if pilot.agent is not None and not pilot.agent.wait(
                    max(0.1, deadline - time.monotonic())):
                pilot.agent.kill()
                pilot.agent.wait(5)
            if pilot.job is not None and not pilot.job.cancel(  # (ended by itself, mostly)
                    wait=max(1.0, deadline - time.monotonic()), grace=JOB_END_GRACE):
                log.warning("%s: its batch job %s did not end within the timeout of scancel",
                            pilot.uid, pilot.job_id)
        if self._batch is not None:
            self._batch.close()
        self._channel.close()
        self._fail_live(None, TaskState.CANCELED, "session closed")
        self._callbacks.close(timeout)
        self.journal.set_session(closed=time.time())  # (`pilotfish status`: it ended)
        self.journal.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"session {self.uid} is closed")

    @staticmethod
    def _kill_agent(pilot: Pilot) -> None:
        if pilot.agent is not None:
            pilot.agent.kill()
        if pilot.job is not None:  # a batch pilot's: its job (what its agent started ends
            pilot.job.cancel()     # with it)

    # ---- called on the channel thread -------------------------------------------------

    def _on_message(self, pilot_uid: str, msg: Any) -> None:
        pilot = self.pilots[pilot_uid]
        if isinstance(msg, m.Updates):
            finished = self._apply_updates(msg.updates, msg.clock_offset, pilot, msg.finals)
            if msg.seq:  # the agent keeps the batch until the journal holds it
                self.journal.mark(pilot_uid, msg.seq)
            if finished:  # room for tasks waiting elsewhere
                self._relocator.rebalance()
            if pilot.reactive and msg.finals:  # answered once their callbacks ran
                seen = pilot.finals_seen
                self._callbacks.then(lambda: self._channel.send(pilot_uid, m.Idle(seen)))
        elif isinstance(msg, m.Accepted):
            self._accept(msg.uids, msg.ts)
        elif isinstance(msg, m.Released):
            self._relocator.released(pilot, msg.uids, msg.ts)
        elif isinstance(msg, m.Hello):
            with pilot._lock:
                if pilot._ended:  # (a pending pilot canceled as its agent connected)
                    return
                if msg.version != m.WIRE_VERSION:
                    pilot.state = "FAILED"
                    pilot.reason = f"agent speaks wire version {msg.version}"
                else:
                    pilot.state, pilot.reason = "ACTIVE", None
                    pilot.agent_pid = msg.pid
                    pilot.startup_time = time.monotonic() - pilot.submitted
            self.journal.update_pilot(pilot_uid, ready=time.time(), state=pilot.state)
            if not pilot.active:  # an agent of another version: it ends here
                self._channel.close_link(pilot_uid)
                self._kill_agent(pilot)
                self._end_pilot(pilot, "FAILED", pilot.reason or "")
            pilot.ready.set()
            self._relocator.changed()
            self._relocator.rebalance()  # a new pilot has room
        elif isinstance(msg, m.Bye):
            pilot.stats = msg.stats
            canceled = pilot._canceling is not None
            self._end_pilot(pilot, "CANCELED" if canceled else "DONE", msg.reason)

    def _on_dropped(self, pilot_uid: str, uids: list[str], reason: str | None) -> None:
        """Tasks that could not be sent (their pilot ended first, or `reason`) fail."""
        if reason is None:
            pilot = self.pilots[pilot_uid]
            reason = f"{pilot_uid} ended before the task reached it ({pilot.reason})"
        self._end_tasks(uids, TaskState.FAILED, reason)

    def _on_lost(self, pilot_uid: str, reason: str) -> None:
        pilot = self.pilots[pilot_uid]
        if pilot._ended:
            return
        if pilot.agent is not None:  # it, and everything it started
            pilot.agent.clean_up()
        if pilot.job is not None:
            if pilot.agent_pid is None and (log_end := _log_end(pilot.sandbox / "agent.log")):
                reason += f" (its agent.log ends: {log_end})"
            pilot.job.cancel()
        self._end_pilot(pilot, "FAILED", reason)

    def _end_pilot(self, pilot: Pilot, state: str, reason: str,
                   tasks: TaskState = TaskState.FAILED) -> None:
        """The pilot ended (once: later ends are ignored); its unfinished tasks end as
        `tasks` with the reason."""
        with pilot._lock:
            if pilot._ended:
                return
            pilot._ended = True
            pilot.state, pilot.reason = state, reason
        self._relocator.pilot_ended(pilot)
        # A simulated pilot's clock ran ahead of the wall clock: its end is on that clock.
        stopped = time.time() + pilot.stats.get("clock_offset", 0.0)
        self.journal.update_pilot(pilot.uid, stopped=stopped, state=state, error=reason)
        mine = [t for t in list(self._live.values()) if t.pilot == pilot.uid]
        rest = self._relocator.retry(mine, pilot)  # as their retries allow
        self._end_tasks([t.uid for t in rest], tasks, reason)
        pilot.ready.set()
        pilot.stopped.set()

    def _fail_live(self, pilot_uid: str | None, state: TaskState, reason: str) -> None:
        """End every unfinished task (of one pilot, or all) with `state` and `reason`."""
        self._end_tasks([t.uid for t in list(self._live.values())
                         if pilot_uid in (None, t.pilot)], state, reason)

    def _end_tasks(self, uids: list[str], state: TaskState, reason: str) -> None:
        """End tasks from the client's side, as the agent's final updates would."""
        if uids:
            self._apply_updates([m.TaskUpdate(uid, state.value, error=reason) for uid in uids])

    def _accept(self, uids: list[str], ts: float) -> None:
        live = self._live
        event = ("SUBMITTED", ts)
        for uid in uids:
            task = live.get(uid)
            if task is not None and task.state is TaskState.NEW:
                task.state = TaskState.SUBMITTED
                task.events.append(event)  # journaled with the others when it ends
        if self._state_waiters:
            with self._done:
                self._done.notify_all()

    def _apply_updates(self, updates: list[m.TaskUpdate], clock_offset: float = 0.0,
                       sender: Pilot | None = None, finals: int = 0) -> int:
        """Apply updates (from `sender`'s agent: `finals` final ones); return how many
        tasks they ended."""
        # The channel thread applies the agent's updates; a user thread ends tasks of a
        # lost pilot: one at a time, or a task could be ended twice.
        with self._updating:
            ended = self._apply_updates_locked(updates, clock_offset)
            if sender is not None:
                sender.finals_seen += finals  # (read with `_updating` held, by submit)
            return ended

    @without_gc
    def _apply_updates_locked(self, updates: list[m.TaskUpdate], clock_offset: float) -> int:
        now = time.time() + clock_offset  # final states are stamped on the pilot's clock
        event_rows: list[tuple[int, str, float]] = []
        finish_rows: list[tuple[Any, ...]] = []
        progress_rows: list[tuple[str, int]] = []  # (state, id): `pilotfish status` reads them
        live = self._live
        finished = 0
        moved = False  # a task changed to a state that is not final
        callbacks: list[Task] = []
        retried: list[tuple[Task, m.TaskUpdate]] = []  # stopped with their pilot
        ended_uids: list[str] = []
        for u in updates:
            task = live.get(u.uid)
            state = _STATES[u.state]
            if task is None or (state is not task.state and is_stale(task.state, state)):
                self.stale_updates += 1
                continue
            if u.events:
                task.events.extend(u.events)
            if u.pid:
                task.pid = u.pid
            if state.final and u.error is not None and u.error.startswith(STOPPED) and (
                    self._relocator.may_retry(task, u.error)):
                retried.append((task, u))
            elif state.final:
                task.exit_code, task.error = u.exit_code, u.error
                task.partition, task.placement = u.partition, u.placement
                d = task.description
                if d is not None and d.kind == "executable":  # never ran: "", not None
                    task.stdout, task.stderr = u.stdout or "", u.stderr or ""
                else:
                    task.stdout, task.stderr = u.stdout, u.stderr
                state, has_callbacks = task._resolve(state, u.result)
                task.events.append((state.value, now))
                finish_rows.append(_journal_row(task, now, event_rows))
                del live[u.uid]
                ended_uids.append(u.uid)
                owner = self.pilots[task.pilot]
                owner.outstanding -= 1
                owner.load -= task.cores
                finished += 1
                if has_callbacks:
                    callbacks.append(task)
            else:
                task.state = state
                if u.address is not None:
                    task.address = u.address
                moved = True
                progress_rows.append((state.value, task.id))
        self.journal.add_events(event_rows)
        self.journal.progress_tasks(progress_rows)
        self.journal.finish_tasks(finish_rows)
        if finished or (moved and self._state_waiters):
            with self._done:
                self._done.notify_all()
        if callbacks:
            self._callbacks.run(callbacks)
        if len(self._held) and ended_uids:
            finished += self._release_held(ended_uids)
        if retried:  # those that found no pilot end as the agent said
            update_of = {task.uid: u for task, u in retried}
            by_source: dict[str, list[Task]] = {}
            for task, _ in retried:
                by_source.setdefault(task.pilot, []).append(task)
            for source, stopped in by_source.items():
                rest = self._relocator.retry(stopped, self.pilots[source])
                for u in (update_of[t.uid] for t in rest):
                    u.events = []  # (kept already)
                finished += self._apply_updates_locked([update_of[t.uid] for t in rest],
                                                       clock_offset)
        return finished

    def _watched(self, task: Task) -> None:
        """A callback was added to a task: its simulated pilot becomes reactive (it waits
        for the client's answer to its final updates before its clock jumps)."""
        pilot = self.pilots.get(task.pilot)
        if pilot is not None and pilot.simulated and not pilot.reactive:
            pilot.reactive = True
            self._channel.send(pilot.uid, m.Idle(pilot.finals_seen))

    def _release_held(self, ended: list[str]) -> int:
        """Tasks held for inputs elsewhere that ended: each goes to its pilot now (with
        their results), or ends (an input failed; its pilot ended). With `_updating`
        held; returns how many ended."""
        specs: dict[str, list[m.TaskSpec]] = {}
        functions: dict[str, dict[str, bytes]] = {}
        ends: list[m.TaskUpdate] = []
        for task in self._held.ended(ended):
            pilot = self.pilots[task.pilot]
            if task.state.final:
                continue
            if not pilot.active:
                ends.append(m.TaskUpdate(task.uid, TaskState.FAILED.value, error=(
                    f"{pilot.uid} ended before this task's inputs did ({pilot.reason})")))
                continue
            how = self._plan(task, pilot.uid)
            if isinstance(how, tuple):
                ends.append(m.TaskUpdate(task.uid, how[0].value, error=how[1]))
            elif how is not None:
                specs.setdefault(pilot.uid, []).append(how)
                d = task.description
                if d is not None and d.function_key is not None and d.function_blob:
                    functions.setdefault(pilot.uid, {})[d.function_key] = d.function_blob
        for pid, sent in specs.items():
            self._channel.send(pid, m.Submit(sent, functions.get(pid, {}),
                                             seen=self.pilots[pid].finals_seen))
        return self._apply_updates_locked(ends, 0.0) if ends else 0



def _unfinished(path: Path) -> tuple[list[tuple[str, str, str]], list[tuple[int, str, str, str]],
                                     int]:
    """From a session's journal: its pilots (uid, recorded description, state), its tasks
    not known to have ended (id, uid, pilot, kind), and the last task id."""
    db = connect_readonly(path)
    try:
        pilots = [tuple(r) for r in db.execute(
            "SELECT uid, description, state FROM pilots ORDER BY uid")]
        tasks = [tuple(r) for r in db.execute(
            "SELECT id, uid, pilot, kind FROM tasks WHERE state NOT IN"
            " ('DONE', 'FAILED', 'CANCELED') ORDER BY id")]
        last = db.execute("SELECT IFNULL(MAX(id), 0) FROM tasks").fetchone()[0]
    finally:
        db.close()
    return pilots, tasks, int(last)  # type: ignore[return-value]


def _pilot_description(recorded: str) -> PilotDescription:
    """A pilot's description as the journal recorded it (its routing policy, pickled to
    its agent, is not needed again)."""
    fields = json.loads(recorded)
    for derived in ("routing", "hosts"):
        fields.pop(derived, None)
    fields["partitions"] = [PartitionSpec(**p) for p in fields.get("partitions", ())]
    if fields.get("mode") not in (None, "local"):  # not checked again from here: its
        fields["mode"] = "local"                   # nodes are where its agent runs
    return PilotDescription(**fields)


def _last_line(log: Path) -> str:
    """The last line an agent wrote to its log (a failed start ends with its cause)."""
    end = _log_end(log)
    return f"its log ends: {end}" if end else "its log is empty or unreadable"


def _log_end(log: Path) -> str | None:
    lines = (read_tail(str(log)) or "").strip().splitlines()
    return lines[-1] if lines else None


def _journal_row(task: Task, final: float, extra: list[tuple[int, str, float]]
                 ) -> tuple[Any, ...]:
    """The `finish_tasks` row of a task that ended; its other events go to `extra`."""
    times: dict[str, float] = {}
    for name, ts in task.events[1:-1]:  # NEW is journaled at submit, the final state below
        if name in _LIFECYCLE and name not in times:
            times[name] = ts
        else:
            extra.append((task.id, name, ts))
    get = times.get
    placement = _json_encode(task.placement).decode() if task.placement else None
    return (task.state.value, task.exit_code, task.error, get("SUBMITTED"), get("SCHEDULED"),
            get("RUNNING"), get("exec_stop"), final, task.partition, placement, task.id)


class CallbackThread:
    """Runs tasks' done-callbacks in order, off the channel thread (started on first use)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[Task] | Callable[[], None] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None

    def run(self, tasks: list[Task]) -> None:
        self._put(tasks)

    def then(self, action: Callable[[], None]) -> None:
        """Run `action` once the callbacks queued so far have run."""
        self._put(action)

    def _put(self, item: list[Task] | Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="pilotfish-callbacks",
                                            daemon=True)
            self._thread.start()
        self._queue.put(item)

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if callable(item):
                item()
                continue
            for task in item:
                task._invoke_callbacks()  # type: ignore[attr-defined]  # logs exceptions

    def close(self, timeout: float) -> None:
        """Let queued callbacks run (up to `timeout` s), then stop."""
        if self._thread is not None:
            self._queue.put(None)
            if self._thread is not threading.current_thread():  # closed from a callback
                self._thread.join(timeout)


CHUNKS_PER_CORE, MAX_CHUNK = 4, 1000  # `map` without a chunksize (PilotExecutor.map)
PRUNE_AT = 1024  # tasks an executor holds before it lets the finished ones go


class PilotExecutor(concurrent.futures.Executor):
    """`concurrent.futures.Executor` over a session: each call is one function task, or,
    through `map` with a `chunksize`, each chunk of calls."""

    def __init__(self, session: Session, pilot: Pilot | None = None) -> None:
        self._session = session
        self._pilot = pilot
        self._tasks: list[Task] = []  # for shutdown(wait): finished ones pruned now and then
        self._prune_at = PRUNE_AT
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Task:
        return self._submit([TaskDescription(function=fn, args=args, kwargs=kwargs)])[0]

    def _submit(self, descriptions: list[TaskDescription]) -> list[Task]:
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        tasks = self._session.submit(descriptions, pilot=self._pilot)
        self._tasks.extend(tasks)
        if len(self._tasks) >= self._prune_at:  # (as concurrent.futures executors do, it
            self._tasks = [t for t in self._tasks if not t.done()]  # lets finished ones go)
            self._prune_at = max(PRUNE_AT, 2 * len(self._tasks))
        return tasks

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int | None = None) -> Iterator[Any]:
        """`fn` over the iterables' items, in order, as `ProcessPoolExecutor.map`: all
        tasks are submitted at once (in one batch), `chunksize` calls to a task. A call
        that raises fails its whole chunk: the error is raised where the chunk's first
        result would be. Without a `chunksize`, each core gets about `CHUNKS_PER_CORE`
        chunks of at most `MAX_CHUNK` calls: a million tiny calls become a thousand tasks
        (each task costs the pilot tens of microseconds, a call in a chunk well under
        one), a hundred slow ones stay a task each, spread over the cores."""
        if chunksize is not None and (isinstance(chunksize, bool) or not isinstance(
                chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be an int >= 1 (or None: chosen for you), "
                             f"got {chunksize!r}")
        calls = list(iterables[0] if len(iterables) == 1 else zip(*iterables, strict=False))
        if chunksize is None:
            chunksize = max(1, min(MAX_CHUNK, len(calls) // (CHUNKS_PER_CORE * self._cores())))
        if chunksize == 1:
            descriptions = [TaskDescription(function=fn, args=args if len(iterables) > 1
                                            else (args,)) for args in calls]
        else:  # one iterable: its items are the arguments (not 1-tuples of them)
            chunked = _Chunk(fn, spread=len(iterables) > 1)
            descriptions = [TaskDescription(function=chunked, args=(calls[i:i + chunksize],))
                            for i in range(0, len(calls), chunksize)]
        tasks = self._submit(descriptions)
        end = None if timeout is None else time.monotonic() + timeout
        return self._results(tasks, end, chunksize > 1)

    def _cores(self) -> int:
        """The cores that may run this executor's calls: its pilot's, else the session's
        live pilots'."""
        pilots = [self._pilot] if self._pilot is not None else [
            p for p in self._session.pilots.values() if p.active or p.state == "PENDING"]
        return max(1, sum(p.cores for p in pilots))

    def _results(self, tasks: list[Task], end: float | None, chunked: bool) -> Iterator[Any]:
        tasks.reverse()  # each task is let go once its results are given out
        task = None
        try:
            while tasks:
                task = tasks.pop()
                left = None if end is None else max(0.0, end - time.monotonic())
                if chunked:
                    yield from task.result(timeout=left)
                else:
                    yield task.result(timeout=left)
                task = None
        finally:  # stopped early (an error, a timeout, or the caller): drop the rest
            rest = [t for t in (*tasks, *([task] if task else [])) if not t.done()]
            self._session.cancel(rest)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True
        if cancel_futures:
            self._session.cancel([t for t in self._tasks if not t.done()])
        if wait:
            self._session.wait(self._tasks)


class _Chunk:
    """A task that makes several calls of one function (`PilotExecutor.map`)."""

    pickle_once = True  # never changes: one pickling serves all of a map's chunks

    def __init__(self, fn: Callable[..., Any], spread: bool) -> None:
        self.fn = fn
        self.spread = spread  # each call's arguments come as a tuple, else as one item

    def __call__(self, calls: list[Any]) -> list[Any]:
        if self.spread:
            return list(itertools.starmap(self.fn, calls))
        return list(map(self.fn, calls))
