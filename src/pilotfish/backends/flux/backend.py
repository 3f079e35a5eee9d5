"""The Flux backend: one Flux instance per partition slice, driven through Flux's Python API.

`start` attaches to the instance at `uri` (e.g. `FLUX_URI` inside a Flux allocation) or
starts one (`flux start` over the slice's hosts under `srun`, or on this host) and opens
a thread that owns the `flux.Flux` handle (handles are not thread-safe) and runs its
reactor (`FluxDriver`): it submits the tasks the agent placed (`flux.job.submit_async`,
ids taken as they come back), cancels with `flux.job.cancel_async`, and follows every job
through the job-manager journal, whose events `FluxJobTracker` turns into task events.
Those cross to the agent's loop through a queue and a wake-up pipe.

Flux places each job on cores and GPUs itself. The agent's scheduler hands the instance
up to twice what fits (feed-ahead, `scheduler.py`): Flux starts the next job the moment a
core frees, while tasks beyond that can still go to other partitions. If the instance
dies or cannot be reached, the agent hears `PartitionLost` and fails or moves its tasks.
"""

from __future__ import annotations

import functools
import os
import queue
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from ...files import private, private_dir, read_tail
from ...launchers import srun_per_node
from ...messages import Placement
from ...partitions import Partition
from ...proctree import kill_group
from ...reactor import Reactor
from ...states import TaskState
from ..base import (
    BackendEvent,
    BuildContext,
    DispatchedTask,
    NodeLost,
    PartitionLost,
    PlacedTask,
    TaskFinished,
    TaskLost,
)
from . import flux_command, unavailable
from .jobs import FluxJobTracker, JobRequest, job_request, placement_from_r

T = TypeVar("T")
Command = tuple[str, Any]  # ("submit", [JobRequest]), ("cancel", [uid]) or ("stop", None)

START_TIMEOUT = 120.0  # seconds for `flux start` to print its URI
LOST_INSTANCE_WAIT = 10.0  # seconds the brokers of a lost instance get to end
LOST_NODE_WAIT = 2.0  # seconds a task lost with a node waits for Flux to say which node
_URI_SCRIPT = 'echo "$FLUX_URI"; exec cat >/dev/null'  # runs until its stdin closes
# Over hosts: the local URI (used where its socket is on the agent's host: the agent runs
# on the partition's first node) and the remote one (ssh://, otherwise).
_REMOTE_URI_SCRIPT = ('echo "$FLUX_URI $(flux uri --remote "$FLUX_URI")"; '
                      'exec cat >/dev/null')


def start_command(hosts: Sequence[str] | None, flux: str = "flux",
                  config: str | None = None) -> list[str]:
    """The command that starts an instance and prints its URI (one line) on stdout.

    With `hosts`, one broker per host under `srun`, bootstrapped through PMI2 (it prints
    the local and the remote URI, `pick_uri`); without, one broker on this host. The
    instance lives until the command's stdin closes. `config`: a config folder (its
    resources).
    """
    start = [flux, "start", *([f"-o,--config-path={config}"] if config else [])]
    if not hosts:
        return [*start, "sh", "-c", _URI_SCRIPT]
    return srun_per_node(hosts, [*start, "sh", "-c", _REMOTE_URI_SCRIPT],
                         stdin_rank=0, whole=True, mpi="pmi2")


def pick_uri(line: str) -> str:
    """The URI to connect to from what the start command printed: the local one where
    its socket is on this host, else the remote one."""
    uris = line.split()
    local = uris[0].removeprefix("local://")
    if len(uris) == 1 or (uris[0].startswith("local://") and os.path.exists(local)):
        return uris[0]
    return uris[1]


def jobspec(flux_job: Any, request: JobRequest) -> Any:
    """A `JobspecV1` for one task (`from_command` takes every field we set: given no
    environment it would copy the agent's whole `os.environ` into each job)."""
    spec = flux_job.JobspecV1.from_command(
        request.command, num_tasks=request.num_tasks, cores_per_task=request.cores_per_task,
        gpus_per_task=request.gpus_per_task, num_nodes=request.num_nodes,
        duration=request.duration or None, environment=request.environment,
        cwd=request.cwd, name=request.name, output=request.stdout, error=request.stderr)
    for name, value in request.shell_options.items():
        spec.setattr_shell_option(name, value)
    return spec


@dataclass(frozen=True, slots=True)
class Resources:
    """What an instance is given, whatever hwloc sees: one broker per host, each with
    `cores` cores and `gpus` GPUs (a local pilot: one broker holding all of its
    partition's virtual nodes)."""

    hosts: tuple[str, ...]
    cores: int
    gpus: int


def resource_config(flux: str, resources: Resources, directory: str) -> str:
    """A config folder making an instance use exactly `resources` (an R from `flux R
    encode`, `noverify`: the host's own topology is not checked against it); its path."""
    private_dir(directory)
    ranks = "0" if len(resources.hosts) == 1 else f"0-{len(resources.hosts) - 1}"
    argv = [flux, "R", "encode", f"--ranks={ranks}",
            f"--cores=0-{resources.cores - 1}", f"--hosts={','.join(resources.hosts)}"]
    if resources.gpus:
        argv.append(f"--gpus=0-{resources.gpus - 1}")
    encoded = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if encoded.returncode != 0:
        raise RuntimeError(f"`{shlex.join(argv)}` failed: {encoded.stderr.strip()}")
    with open(os.path.join(directory, "R.json"), "w", opener=private) as f:
        f.write(encoded.stdout)
    with open(os.path.join(directory, "resource.toml"), "w", opener=private) as f:
        f.write(f'[resource]\npath = "{os.path.join(directory, "R.json")}"\nnoverify = true\n')
    return directory


class Mailbox(Generic[T]):
    """A queue between two threads whose reader sleeps on `fd` (in a reactor): `put`
    wakes it, `take` gives all that is in."""

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[T] = queue.SimpleQueue()
        self.fd, self._wake = os.pipe()
        os.set_blocking(self._wake, False)

    def put(self, item: T) -> None:
        self._items.put(item)
        try:
            os.write(self._wake, b"x")
        except BlockingIOError:
            pass  # a full pipe already wakes the reader

    def take(self) -> list[T]:
        os.read(self.fd, 65536)
        items = []
        while True:
            try:
                items.append(self._items.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._wake)


def build(context: BuildContext, partition: Partition) -> FluxBackend:
    # Inside a Flux allocation a single Flux partition uses that instance.
    fluxes = [p for p in context.partitions if p.backend == "flux"]
    uri = os.environ.get("FLUX_URI") if len(fluxes) == 1 else None
    layout = context.node_layout(partition)
    gpu_env = layout.gpu_env or "" if layout.gpus else ""
    cores = len(layout.core_ids)
    placer = functools.partial(placement_from_r, first=partition.first, cores_per_node=cores,
                               gpus_per_node=layout.gpus, virtual=not context.hosts)
    if context.hosts:  # real nodes: a broker on each of the partition's
        hosts = context.hosts[partition.first:partition.first + partition.nodes]
        return FluxBackend(partition.name, context.task_sandbox, context.sandbox, uri=uri,
                           hosts=hosts, gpu_env=gpu_env, first_node=partition.first,
                           resources=Resources(tuple(hosts), cores, layout.gpus),
                           placer=placer)
    resources = Resources((socket.gethostname(),), partition.nodes * cores,
                          partition.nodes * layout.gpus)
    return FluxBackend(partition.name, context.task_sandbox, context.sandbox, uri=uri,
                       resources=resources, gpu_env=gpu_env,
                       placer=None if uri else placer)  # (an outer instance: its own shape)


class FluxBackend:
    workers_per_node = 0  # it runs no functions

    def __init__(self, name: str, sandbox: str, log_dir: str, uri: str | None = None,
                 hosts: Sequence[str] | None = None, resources: Resources | None = None,
                 gpu_env: str = "", first_node: int | None = None,
                 placer: Callable[[Mapping[str, Any]], Placement] | None = None) -> None:
        self.name = name
        self.placer = placer  # a job's R -> where it ran on the pilot
        self.first_node = first_node  # real nodes: the pilot's index of broker 0's
        self.gpu_env = gpu_env  # tells ranks their GPUs (RANK_SCRIPT); "": no GPUs here
        self.resources = resources  # None: what the brokers find (hwloc)
        self.virtual = resources is not None and not hosts
        self.sandbox = sandbox
        self.log_dir = log_dir
        self.uri = uri
        self.hosts = list(hosts) if hosts else None
        self._env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
        self._commands: Mailbox[Command] = Mailbox()  # agent -> the Flux thread
        self._events: Mailbox[BackendEvent] = Mailbox()  # the Flux thread -> agent
        self._reactor: Reactor | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._emit: Callable[[BackendEvent], None] = lambda e: None

    # ---- life (agent thread) ----------------------------------------------------------

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._emit, self._reactor = emit, reactor
        reactor.add_reader(self._events.fd, self._deliver)
        self._thread = threading.Thread(target=self._run, name=f"flux-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._commands.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)
        self._end_instance(timeout)
        if self._reactor is not None:
            self._reactor.remove_reader(self._events.fd)
        self._commands.close()
        self._events.close()

    # ---- tasks (agent thread) ---------------------------------------------------------

    def launch(self, tasks: Sequence[PlacedTask]) -> None:
        requests, failed = [], []
        for placed in tasks:
            try:
                requests.append(job_request(placed.spec, self.sandbox, self._env,
                                            virtual=self.virtual, gpu_env=self.gpu_env,
                                            first_node=self.first_node))
            except ValueError as exc:  # routing keeps these away; a bug if it happens
                failed.append(TaskFinished(placed.spec.uid, TaskState.FAILED, None,
                                           time.time(), error=str(exc)))
        for event in failed:
            self._emit(event)
        if requests:
            self._commands.put(("submit", requests))

    def dispatch(self, tasks: Sequence[DispatchedTask]) -> None:
        raise RuntimeError("Flux partitions run no Python functions (routing keeps them away)")

    def cancel(self, uids: Sequence[str]) -> None:
        self._commands.put(("cancel", list(uids)))

    def _deliver(self) -> None:
        for event in self._events.take():
            self._emit(event)

    # ---- the Flux thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            why = unavailable()  # (puts the install's bindings on sys.path if need be)
            if why is not None:
                raise RuntimeError(why)
            import flux
            import flux.job

            handle = flux.Flux(self.uri or self._start_instance())
        except Exception as exc:
            self._events.put(PartitionLost(self.name, f"cannot reach a Flux instance: {exc}"))
            return
        driver = FluxDriver(self.name, handle, flux.job, self._commands, self._events.put,
                            self.placer)
        try:
            driver.run()
        except Exception as exc:  # the instance went away, or a bug: say so, once
            self._events.put(PartitionLost(self.name, f"the Flux instance failed: {exc!r}"))
        else:
            if driver.stopped:
                return
            self._events.put(PartitionLost(self.name, "the Flux instance went away"))
        self._end_instance(LOST_INSTANCE_WAIT, lost=True)

    def _end_instance(self, timeout: float, lost: bool = False) -> None:
        """End the instance this backend started, if any: closing the initial program's
        stdin shuts it down; a lost one (its leader dead) is ended by SIGTERM to `srun`,
        which passes it to every broker of the step (an orphaned broker would hold its
        node); then whatever is left of the process group is killed."""
        proc = self._proc
        if proc is None:
            return
        if lost and self.hosts and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        if proc.stdin is not None and not proc.stdin.closed:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        kill_group(proc.pid)

    def _start_instance(self) -> str:
        """Start `flux start` in its own process group and read the URI it prints."""
        flux = flux_command() or "flux"
        config = None
        if self.resources is not None:
            config = resource_config(flux, self.resources,
                                     os.path.join(self.log_dir, f"flux-{self.name}"))
        command = start_command(self.hosts, flux, config)
        with open(os.path.join(self.log_dir, f"flux-{self.name}.log"), "ab") as log:
            self._proc = subprocess.Popen(command, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=log, cwd=self.sandbox,
                                          process_group=0)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT)
        line = self._proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            raise RuntimeError(f"`{shlex.join(command)}` printed no URI "
                               f"within {START_TIMEOUT:g} s; see flux-{self.name}.log")
        return pick_uri(line)


class FluxDriver:
    """The Flux thread's side: runs Flux's reactor until told to stop, never polling.

    Commands from the agent (submit, cancel, stop) wake it through a pipe; submit replies,
    the job-manager journal and the resource journal (streaming RPCs; a broker that goes
    offline is a lost node) come through the handle. Submits are
    asynchronous, so a burst of single-task submits costs no round trip each.
    """

    JOURNAL = "job-manager.events-journal"
    RESOURCES = "resource.journal"

    def __init__(self, name: str, handle: Any, flux_job: Any, commands: Mailbox[Command],
                 post: Callable[[BackendEvent], None],
                 placer: Callable[[Mapping[str, Any]], Placement] | None = None) -> None:
        self.name = name
        self.handle = handle
        self.flux_job = flux_job
        self.commands = commands
        self.post = post
        self.tracker = FluxJobTracker(placer)
        self.ids: dict[str, int] = {}  # uid -> Flux job id, until it ends
        self.outputs: dict[str, tuple[str, str]] = {}  # uid -> its stdout, stderr files
        self.canceled: set[str] = set()  # canceled before their ids were known
        self.lost: list[TaskLost] = []  # held until their node is known lost (`_resources`)
        self.lost_timer: Any = None
        self.stopped = False

    def run(self) -> None:
        """Until `stop` (returns), the instance goes away (returns, not stopped) or a
        callback fails (raises)."""
        from flux.constants import FLUX_POLLIN, FLUX_RPC_STREAMING

        journal = self.handle.rpc(self.JOURNAL, {"full": False}, 0, FLUX_RPC_STREAMING)
        journal.then(self._journal)
        resources = self.handle.rpc(self.RESOURCES, {}, 0, FLUX_RPC_STREAMING)
        resources.then(self._resources)
        watcher = self.handle.fd_watcher_create(self.commands.fd, self._wake,
                                                events=FLUX_POLLIN)
        watcher.start()
        try:
            self.handle.reactor_run()
        finally:
            watcher.stop()

    def _wake(self, handle: Any, watcher: Any, fd: int, revents: int, args: Any) -> None:
        for kind, payload in self.commands.take():
            if kind == "stop":
                self.stopped = True
                handle.reactor_stop()
                return
            if kind == "submit":
                self._submit(payload)
            elif kind == "cancel":
                for uid in payload:
                    if uid in self.ids:
                        self.flux_job.cancel_async(handle, self.ids[uid])
                    elif uid in self.outputs:  # submitted, its id still to come
                        self.canceled.add(uid)

    def _submit(self, requests: list[JobRequest]) -> None:
        self.tracker.submitting(len(requests))
        for request in requests:
            self.outputs[request.name] = (request.stdout, request.stderr)
            future = self.flux_job.submit_async(self.handle, jobspec(self.flux_job, request),
                                                urgency=request.urgency)
            future.then(self._submitted, request.name)

    def _submitted(self, future: Any, uid: str) -> None:
        try:
            jobid = int(future.get_id())
        except OSError as exc:
            self.tracker.refused()
            self.outputs.pop(uid, None)
            self.canceled.discard(uid)
            self.post(TaskFinished(uid, TaskState.FAILED, None, time.time(),
                                   error=f"Flux refused the job: {exc}"))
            return
        self.ids[uid] = jobid
        if uid in self.canceled:
            self.canceled.discard(uid)
            self.flux_job.cancel_async(self.handle, jobid)
        for outcome in self.tracker.submitted(jobid, uid):
            self._report(outcome)

    def _journal(self, future: Any) -> None:
        """One journal response: one job's new events."""
        try:
            response = future.get()
        except OSError as exc:
            raise RuntimeError(f"the job-manager journal failed: {exc}") from exc
        future.reset()
        jobid, r = response.get("id", -1), response.get("R")
        for entry in response.get("events", ()):
            outcome = self.tracker.event(jobid, entry["name"], entry["timestamp"],
                                         entry.get("context", {}), r)
            if outcome is not None:
                self._report(outcome)

    def _resources(self, future: Any) -> None:
        """Resource events: a broker (rank = node of the slice) that went offline is a
        lost node; its jobs end with a node-failure exception (`TaskLost`)."""
        from flux.idset import decode

        try:
            response = future.get()
        except OSError as exc:
            raise RuntimeError(f"the resource journal failed: {exc}") from exc
        future.reset()
        for event in response.get("events", ()):
            if event.get("name") == "offline":
                for rank in decode(event.get("context", {}).get("idset", "")):
                    self.post(NodeLost(self.name, rank, f"its Flux broker (rank {rank}) "
                                                        "went offline"))
                self._release_lost()

    def _release_lost(self, *_: Any) -> None:
        """Report the tasks lost with a node, once the node is known lost (or after
        `LOST_NODE_WAIT`): placed again before, Flux would put them on the dead node."""
        lost, self.lost = self.lost, []
        if self.lost_timer is not None:
            self.lost_timer.stop()
            self.lost_timer = None
        for event in lost:
            self.post(event)

    def _report(self, outcome: BackendEvent) -> None:
        if isinstance(outcome, TaskLost):  # its node failed: Flux says offline just after
            self.ids.pop(outcome.uid, None)
            self.outputs.pop(outcome.uid, None)
            self.lost.append(outcome)
            if self.lost_timer is None:
                self.lost_timer = self.handle.timer_watcher_create(LOST_NODE_WAIT,
                                                                   self._release_lost)
                self.lost_timer.start()
            return
        if isinstance(outcome, TaskFinished):
            self.ids.pop(outcome.uid, None)
            out, err = self.outputs.pop(outcome.uid, ("", ""))
            outcome = msgspec.structs.replace(outcome, stdout=read_tail(out) or "",
                                              stderr=read_tail(err) or "")
        self.post(outcome)
