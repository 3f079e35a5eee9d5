"""The Flux backend: one Flux instance per partition slice, driven through Flux's Python API.

`start` attaches to the instance at `uri` (e.g. `FLUX_URI` inside a Flux allocation) or
starts one (`flux start` over the slice's hosts under `srun`, or on this host) and opens
a thread that owns the `flux.Flux` handle (handles are not thread-safe): it submits
the tasks the agent placed in bulk (`flux.job.submit_async`, then the ids), cancels with
`flux.job.cancel_async`, and follows every job through one `flux.job.JournalConsumer`,
whose events `FluxJobTracker` turns into task events. Those cross to the agent's loop
through a queue and a wake-up pipe.

Flux places each job on cores and GPUs itself; the agent's scheduler only meters what it
hands to the instance to the partition's capacity, so Flux's queue never holds more than
fits and tasks it has not received can still go to other partitions. If the instance
dies or cannot be reached, the agent hears `PartitionLost` and fails or moves its tasks.
"""

from __future__ import annotations

import os
import queue
import select
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from ...files import private, private_dir, read_tail
from ...launchers import srun_per_node
from ...partitions import Partition
from ...proctree import kill_group
from ...reactor import Reactor
from ...states import TaskState
from ..base import (
    BackendEvent,
    BuildContext,
    DispatchedTask,
    PartitionLost,
    PlacedTask,
    TaskFinished,
)
from . import flux_command, unavailable
from .jobs import FluxJobTracker, JobRequest, job_request

START_TIMEOUT = 120.0  # seconds for `flux start` to print its URI
POLL_SECONDS = 0.005  # the Flux thread's longest wait for journal events between submits
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


def build(context: BuildContext, partition: Partition) -> FluxBackend:
    # Inside a Flux allocation a single Flux partition uses that instance.
    fluxes = [p for p in context.partitions if p.backend == "flux"]
    uri = os.environ.get("FLUX_URI") if len(fluxes) == 1 else None
    layout = context.node_layout(partition)
    gpu_env = layout.gpu_env or "" if layout.gpus else ""
    if context.hosts:  # real nodes: a broker on each of the partition's
        hosts = context.hosts[partition.first:partition.first + partition.nodes]
        return FluxBackend(partition.name, context.task_sandbox, context.sandbox, uri=uri,
                           hosts=hosts, gpu_env=gpu_env, first_node=partition.first,
                           resources=Resources(tuple(hosts), len(layout.core_ids),
                                               layout.gpus))
    resources = Resources((socket.gethostname(),), partition.nodes * len(layout.core_ids),
                          partition.nodes * layout.gpus)
    return FluxBackend(partition.name, context.task_sandbox, context.sandbox, uri=uri,
                       resources=resources, gpu_env=gpu_env)


class FluxBackend:
    workers_per_node = 0  # it runs no functions

    def __init__(self, name: str, sandbox: str, log_dir: str, uri: str | None = None,
                 hosts: Sequence[str] | None = None, resources: Resources | None = None,
                 gpu_env: str = "", first_node: int | None = None) -> None:
        self.name = name
        self.first_node = first_node  # real nodes: the pilot's index of broker 0's
        self.gpu_env = gpu_env  # tells ranks their GPUs (RANK_SCRIPT); "": no GPUs here
        self.resources = resources  # None: what the brokers find (hwloc)
        self.virtual = resources is not None and not hosts
        self.sandbox = sandbox
        self.log_dir = log_dir
        self.uri = uri
        self.hosts = list(hosts) if hosts else None
        self._env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "")}
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._events: queue.SimpleQueue[BackendEvent] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)  # a full pipe already wakes the agent
        self._reactor: Reactor | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._emit: Callable[[BackendEvent], None] = lambda e: None
        self._outputs: dict[str, tuple[str, str]] = {}  # uid -> its stdout, stderr files

    # ---- life (agent thread) ----------------------------------------------------------

    def start(self, reactor: Reactor, emit: Callable[[BackendEvent], None]) -> None:
        self._emit, self._reactor = emit, reactor
        reactor.add_reader(self._wake_r, self._deliver)
        self._thread = threading.Thread(target=self._run, name=f"flux-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._commands.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()  # the initial program ends: the instance shuts down
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            kill_group(self._proc.pid)
        if self._reactor is not None:
            self._reactor.remove_reader(self._wake_r)
        os.close(self._wake_r)
        os.close(self._wake_w)

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
        os.read(self._wake_r, 65536)
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._emit(event)

    # ---- the Flux thread --------------------------------------------------------------

    def _post(self, event: BackendEvent) -> None:
        self._events.put(event)
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _run(self) -> None:
        try:
            why = unavailable()  # (puts the install's bindings on sys.path if need be)
            if why is not None:
                raise RuntimeError(why)
            import flux
            import flux.job

            handle = flux.Flux(self.uri or self._start_instance())
            consumer = flux.job.JournalConsumer(handle, full=False).start()
        except Exception as exc:
            self._post(PartitionLost(self.name, f"cannot reach a Flux instance: {exc}"))
            return
        tracker = FluxJobTracker()
        ids: dict[str, int] = {}
        try:
            while self._serve_commands(flux.job, handle, tracker, ids):
                self._follow(consumer, tracker, ids)
        except Exception as exc:  # the instance went away, or a bug: say so, once
            self._post(PartitionLost(self.name, f"the Flux instance failed: {exc!r}"))

    def _serve_commands(self, flux_job: Any, handle: Any, tracker: FluxJobTracker,
                        ids: dict[str, int]) -> bool:
        """Submit and cancel what the agent asked for; False once told to stop."""
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return True
            if kind == "stop":
                return False
            if kind == "submit":
                futures = [(r.name, flux_job.submit_async(handle, jobspec(flux_job, r),
                                                          urgency=r.urgency))
                           for r in payload]
                self._outputs.update((r.name, (r.stdout, r.stderr)) for r in payload)
                for uid, future in futures:  # all sent first: one round trip for the batch
                    try:
                        jobid = int(future.get_id())
                    except OSError as exc:
                        self._post(TaskFinished(uid, TaskState.FAILED, None, time.time(),
                                                error=f"Flux refused the job: {exc}"))
                        continue
                    tracker.submitted(jobid, uid)
                    ids[uid] = jobid
            elif kind == "cancel":
                for uid in payload:
                    if uid in ids:
                        flux_job.cancel_async(handle, ids[uid])

    def _follow(self, consumer: Any, tracker: FluxJobTracker, ids: dict[str, int]) -> None:
        """Turn the journal events that are in (waiting up to POLL_SECONDS) into task events."""
        timeout = POLL_SECONDS
        while True:
            try:
                event = consumer.poll(timeout)
            except TimeoutError:
                return
            if event is None:
                raise RuntimeError("the job-manager journal stream ended")
            timeout = 0.0
            outcome = tracker.event(int(event.jobid), event.name, event.timestamp,
                                    event.context)
            if isinstance(outcome, TaskFinished):
                ids.pop(outcome.uid, None)
                out, err = self._outputs.pop(outcome.uid, ("", ""))
                outcome = msgspec.structs.replace(outcome, stdout=read_tail(out) or "",
                                                  stderr=read_tail(err) or "")
            if outcome is not None:
                self._post(outcome)

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
