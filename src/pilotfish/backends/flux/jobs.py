"""Tasks as Flux jobs, and Flux job events as task events (pure: no `flux` import).

These are the parts of the Flux backend that can be tested where Flux cannot run:

* `job_request` turns a task into what `flux.job.JobspecV1.from_command` and the
  jobspec's attributes need (command, tasks, cores and GPUs per task, nodes, working
  directory, environment, output files, time limit) plus the submit urgency.
* `FluxJobTracker` follows the events of the job-manager journal (submit, alloc, start,
  exception, finish, clean, ...; RFC 21) and says when a task started and how it ended.

Flux places tasks itself: with `ranks_per_node` it is asked for ceil(ranks / rpn) nodes
and spreads the ranks evenly over them (5 ranks at 2 per node: 2, 2, 1, as pilotfish
would; 6 ranks at 4 per node: 3 and 3 where pilotfish would place 4 and 2). On virtual
nodes (a local pilot: one broker holds all of a partition's nodes) it is asked for no
node count, and binds no cores (their ids are not this host's); each rank gets its own
GPUs (`gpu-affinity=per-task`) everywhere.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...messages import Placement, TaskSpec
from ...states import TaskState
from ..base import BackendEvent, TaskFinished, TaskLost, TaskStarted

URGENCY_DEFAULT, URGENCY_MAX = 16, 31  # Flux: 0 holds a job, 31 expedites it
NODE_FAILURE = "node failure"  # how job-exec's exception for a lost broker begins
HOLD_SECONDS = 60.0  # the longest an event of a job whose id is awaited is held

# Run by every rank as `sh -c RANK_SCRIPT pilotfish GPU_VARIABLE FIRST_NODE COMMAND...`:
# tells it its rank and its task's size as every backend does (PILOTFISH_RANK,
# PILOTFISH_RANKS), its GPUs through the platform's variable (GPU_VARIABLE; empty: leave
# it alone; Flux names them in CUDA_VISIBLE_DEVICES, "-1" for none, told here as empty)
# and on real nodes its node (PILOTFISH_NODE: FIRST_NODE, the pilot's index of the
# instance's broker 0, plus the rank of the broker running it, which ends its FLUX_URI,
# local:///.../local-N; FIRST_NODE empty on virtual nodes: unknown, left unset).
RANK_SCRIPT = """\
export PILOTFISH_RANK="$FLUX_TASK_RANK" PILOTFISH_RANKS="$FLUX_JOB_SIZE"
gpus=${CUDA_VISIBLE_DEVICES-}
[ "$gpus" != -1 ] || gpus=
[ -z "$1" ] || export "$1=$gpus"
[ -z "$2" ] || export PILOTFISH_NODE=$(($2 + ${FLUX_URI##*-}))
shift 2
exec "$@"
"""


def urgency(priority: int) -> int:
    """Flux urgency for a task priority: 16 is the default; never 0 (a hold)."""
    return max(1, min(URGENCY_MAX - 1, URGENCY_DEFAULT + priority))


@dataclass(frozen=True, slots=True)
class JobRequest:
    command: list[str]
    num_tasks: int
    cores_per_task: int
    gpus_per_task: int | None
    num_nodes: int | None
    cwd: str
    environment: dict[str, str]
    stdout: str
    stderr: str
    duration: float  # seconds; 0: no limit
    urgency: int
    name: str
    shell_options: dict[str, str] = field(default_factory=dict)


def job_request(spec: TaskSpec, sandbox: str, base_env: Mapping[str, str],
                virtual: bool = False, gpu_env: str = "",
                first_node: int | None = None) -> JobRequest:
    """The Flux job for an executable task; ValueError for what Flux cannot run.
    `virtual`: the instance's cores are virtual (see above); `gpu_env`: the variable that
    tells a rank its GPUs on nodes that have some; `first_node`: on real nodes, the
    pilot's index of the instance's first (RANK_SCRIPT)."""
    if spec.kind != "executable" or spec.executable is None:
        raise ValueError(f"{spec.uid}: Flux runs executables, not {spec.kind} tasks")
    gpus = spec.gpus_per_rank
    if gpus and gpus != int(gpus):
        raise ValueError(f"{spec.uid}: Flux cannot share a GPU ({gpus:g} per rank)")
    cwd = spec.sandbox or sandbox
    env = dict(base_env)
    env.update(spec.environment)
    env["PILOTFISH_TASK_ID"] = spec.uid
    rpn = spec.ranks_per_node
    options = {"gpu-affinity": "per-task"}
    if virtual:
        options["cpu-affinity"] = "off"
    command = [spec.executable, *spec.arguments]
    if spec.ranks == 1 and not gpus and first_node is None:
        # All that RANK_SCRIPT would say is known here: no `sh` to start (it cost 12% of
        # the tasks/s of 2,000 `/bin/true`). Flux leaves the GPU variable alone.
        env.update(PILOTFISH_RANK="0", PILOTFISH_RANKS="1")
        if gpu_env:
            env[gpu_env] = ""
        options["gpu-affinity"] = "off"
    else:
        command = ["/bin/sh", "-c", RANK_SCRIPT, "pilotfish", gpu_env,
                   "" if first_node is None else str(first_node), *command]
    return JobRequest(
        command=command, num_tasks=spec.ranks,
        cores_per_task=spec.cores_per_rank, gpus_per_task=int(gpus) or None,
        num_nodes=math.ceil(spec.ranks / rpn) if rpn and not virtual else None, cwd=cwd,
        environment=env,
        stdout=os.path.join(cwd, spec.uid + ".out"), stderr=os.path.join(cwd, spec.uid + ".err"),
        duration=float(spec.timeout or 0.0), urgency=urgency(spec.priority), name=spec.uid,
        shell_options=options)


def _ids(text: str) -> list[int]:
    """The ids of an RFC 22 idset string ("0-3,5")."""
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        ids.extend(range(int(low), int(high or low) + 1))
    return ids


def placement_from_r(r: Mapping[str, Any], first: int, cores_per_node: int,
                     gpus_per_node: int, virtual: bool) -> Placement:
    """Where Flux put a job (its R, RFC 20) as pilot nodes, cores and GPUs. On real nodes
    broker rank k is the partition's node k; on virtual nodes one broker holds all of
    them, its cores and GPUs numbered node after node."""
    out: dict[int, tuple[list[int], list[int]]] = {}
    for entry in r.get("execution", {}).get("R_lite", []):
        children = entry.get("children", {})
        cores, gpus = _ids(children.get("core", "")), _ids(children.get("gpu", ""))
        for rank in _ids(str(entry.get("rank", ""))):
            if not virtual:
                held = out.setdefault(first + rank, ([], []))
                held[0].extend(cores)
                held[1].extend(gpus)
                continue
            for core in cores:
                out.setdefault(first + core // cores_per_node, ([], []))[0].append(
                    core % cores_per_node)
            for gpu in gpus:
                out.setdefault(first + gpu // max(1, gpus_per_node), ([], []))[1].append(
                    gpu % max(1, gpus_per_node))
    return [(node, cores, gpus) for node, (cores, gpus) in sorted(out.items())]


_Held = tuple[str, float, Mapping[str, object], Mapping[str, Any] | None]  # an event


@dataclass(slots=True)
class _Job:
    uid: str
    placement: Placement | None = None  # from its R, at alloc
    start: float | None = None
    finish: float | None = None
    status: int | None = None  # wait status
    exception: tuple[str, str] | None = None  # (type, note) of the fatal one


@dataclass
class FluxJobTracker:
    """Maps Flux job ids to tasks and turns their journal events into task events.

    Submits are asynchronous: a job's first events can arrive before its id does. While
    ids are awaited, events of unknown jobs are held and replayed once the id is known;
    when none is awaited, what is held belongs to other users' jobs and is dropped.
    """

    placer: Callable[[Mapping[str, Any]], Placement] | None = None  # R -> placement
    jobs: dict[int, _Job] = field(default_factory=dict)
    awaited: int = 0  # submits whose job ids are not known yet
    early: dict[int, list[_Held]] = field(default_factory=dict)

    def submitting(self, count: int) -> None:
        self.awaited += count

    def submitted(self, jobid: int, uid: str) -> list[BackendEvent]:
        """A submit's id is known: what its events held so far mean for the task."""
        self.jobs[jobid] = _Job(uid)
        held = self.early.pop(jobid, [])
        self._settle()
        return [e for e in (self.event(jobid, *args) for args in held) if e is not None]

    def refused(self) -> None:
        """A submit ended without a job."""
        self._settle()

    def _settle(self) -> None:
        self.awaited = max(0, self.awaited - 1)
        if not self.awaited:
            self.early.clear()

    def uid(self, jobid: int) -> str | None:
        job = self.jobs.get(jobid)
        return job.uid if job else None

    def event(self, jobid: int, name: str, timestamp: float,
              context: Mapping[str, object],
              r: Mapping[str, Any] | None = None) -> BackendEvent | None:
        """One journal event (`r`: the job's R, with its alloc event); returns what it
        means for the task, if anything yet."""
        job = self.jobs.get(jobid)
        if job is None:  # not one of ours, or its id not known yet
            if self.awaited:
                self._hold(jobid, (name, timestamp, context, r))
            return None
        if job.finish is not None:  # ended: only Flux's clean-up events are left
            if name == "clean":
                del self.jobs[jobid]
            return None
        if name == "alloc" and r is not None and self.placer is not None:
            job.placement = self.placer(r)
        elif name == "start":
            job.start = timestamp
            return TaskStarted(job.uid, timestamp, placement=job.placement)
        if name == "exception" and context.get("severity", 0) == 0 and job.exception is None:
            job.exception = (str(context.get("type", "")), str(context.get("note", "")))
        elif name == "finish":  # its processes are gone, their outputs written: it ended
            job.finish = timestamp  # (Flux frees its resources just after: a job submitted
            status = context.get("status")  # now waits for them in Flux's queue)
            job.status = status if isinstance(status, int) else None
            return self._outcome(job, timestamp)
        elif name == "clean":  # the last event of every job: one that never ran ends here
            del self.jobs[jobid]
            return self._outcome(job, timestamp)
        return None

    def _hold(self, jobid: int, event: _Held) -> None:
        """Hold an event of a job not known yet; drop what was held over `HOLD_SECONDS`
        before it (other users' jobs: the ids of ours come back sooner)."""
        early = self.early
        early.setdefault(jobid, []).append(event)
        oldest = next(iter(early))  # first held first; one a call keeps up, never a walk
        if early[oldest][0][1] < event[1] - HOLD_SECONDS:
            del early[oldest]

    @staticmethod
    def _outcome(job: _Job, clean: float) -> TaskFinished | TaskLost:
        stop = job.finish if job.finish is not None else clean
        code = os.waitstatus_to_exitcode(job.status) if job.status is not None else None
        state, error = TaskState.FAILED, None
        if job.exception is not None:
            kind, note = job.exception
            if kind == "cancel":
                state, error = TaskState.CANCELED, "canceled"
            elif kind == "timeout":
                error = "timed out (Flux ended it at its time limit)"
            elif kind == "exec" and note.startswith(NODE_FAILURE):  # not its own doing
                return TaskLost(job.uid, f"Flux lost a node under it: {note}")
            else:
                error = f"Flux job exception {kind!r}" + (f": {note}" if note else "")
        elif code == 0:
            state = TaskState.DONE
        elif code is None:
            error = "the Flux job ended without an exit status"
        elif code < 0:
            error = f"killed by signal {-code}"
        else:
            error = f"exit code {code}"
        return TaskFinished(job.uid, state, job.start, stop, exit_code=code, error=error)
