"""Batch pilots (`mode="batch"`): a Slurm job that runs the pilot's agent, from a login node.

`Session.start_pilot` writes the agent's configuration to `<pilot>/agent.json` (0600),
submits a job that runs `python -m pilotfish.agent <pilot>/agent.json` on the job's first
node, and returns at once: the pilot is PENDING until its agent connects back (Hello).
The job asks for whole nodes (`--exclusive`), the pilot's `nodes`, its GPUs per node
(`--gpus-per-node`, so that job steps may use them), `runtime` as its time limit, `queue`
as its partition, `account`, and the description's `batch_directives` as extra `#SBATCH`
lines. Inside the job the agent reads its hosts from the job's environment and runs as in
an allocation (node executors: backends/nodes).

The pure parts (the job from a description, directives, the time-limit margin, which
pending reasons never resolve, what a job's end means) are functions here, unit-tested;
the I/O is at the edge, in `SlurmBatch`: jobs are submitted, watched and canceled
through PSI/J (`psij-python`, the `batch` extra), whose Slurm executor runs `sbatch`,
polls `squeue` and runs `scancel`. Two things PSI/J does not do are done here: it
reports a job that cannot start as QUEUED forever, so the pending reason is read with
`squeue -h -j ID -o "%i %T %r"` (through a swappable command runner) while a job waits,
and a reason that can never resolve fails the pilot at once; and its Slurm script has
no place for directives without a value (`--exclusive`), so the description's
directives are added to the script PSI/J generates as raw `#SBATCH` lines.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between looks at the queue (PSI/J's and ours) ...
POLL_VARIABLE = "PILOTFISH_BATCH_POLL"  # ... unless this says otherwise (a busy cluster)
POLL_ERRORS_TOLERATED = 60  # consecutive failed squeue polls before PSI/J fails the jobs
MARGIN_MAX, MARGIN_FRACTION = 30.0, 0.05  # the agent stops min(30 s, 5%) before the limit
CLIENT_HOST_VARIABLE = "PILOTFISH_CLIENT_HOST"  # where batch agents connect back to

# Directives pilotfish sets from the description's own fields, or needs for itself.
_OWN_OPTIONS = {
    "-N": "nodes", "--nodes": "nodes", "-t": "runtime", "--time": "runtime",
    "-p": "queue", "--partition": "queue", "-A": "account", "--account": "account",
    "-o": None, "--output": None, "-e": None, "--error": None, "-D": None, "--chdir": None,
}

# Pending reasons that never resolve by waiting: the job is canceled and the pilot fails.
# (`squeue` reasons; a per-job limit of a QOS or association, "...PerJob...", neither.)
_NEVER_STARTS = {
    "PartitionNodeLimit": "it asks more nodes than its partition allows (or than are up "
                          "there: some may be down or drained)",
    "PartitionTimeLimit": "its time limit (the pilot's runtime) is over its partition's",
    "BadConstraints": "its constraints cannot be satisfied",
    "InvalidAccount": "its account is invalid",
    "InvalidQOS": "its QOS is invalid",
    "DependencyNeverSatisfied": "a job it depends on cannot end as it requires",
}


# squeue's states of a job that holds nothing any more ("": not listed, or squeue failed).
_ENDED = frozenset(("", "CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", "NODE_FAIL",
                    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"))


# How PSI/J's messages begin when it fails a job because `squeue` kept failing, not
# because the job ended.
_POLL_FAILURES = ("Failed to poll for job status", "Error updating job statuses",
                  "Failed to update job status")


class BatchError(RuntimeError):
    """A batch job that could not be submitted; the message quotes the batch system."""


# ---- pure ---------------------------------------------------------------------------------


def check_directives(directives: Iterable[str]) -> tuple[str, ...]:
    """The description's extra `#SBATCH` lines, as sbatch options (`--begin=now+1hour`,
    `-C gpu`, `--exclusive`; a leading `#SBATCH` is dropped). Raises ValueError for what
    is not an option, or for an option pilotfish sets itself (name the field to use)."""
    out = []
    for text in directives:
        d = text.strip()
        if d.startswith("#SBATCH"):
            d = d[len("#SBATCH"):].strip()
        if not d.startswith("-"):
            raise ValueError(f"an sbatch option (--name=value or -X value), got {text!r}")
        option = d.split("=", 1)[0].split(None, 1)[0]
        if len(option) > 2 and not option.startswith("--"):  # -N4: the short form, joined
            option = option[:2]
        if option in _OWN_OPTIONS:
            field = _OWN_OPTIONS[option]
            raise ValueError(f"{text!r}: pilotfish sets {option} itself"
                             + (f" (from the description's {field!r})" if field else
                                " (the agent's log and sandbox)"))
        out.append(d)
    return tuple(out)


def stop_margin(runtime: float) -> float:
    """How long before its job's time limit a batch pilot's agent stops (ending its tasks
    with the reason), so that Slurm never kills it: 5% of the runtime, at most 30 s."""
    return min(MARGIN_MAX, MARGIN_FRACTION * runtime)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What the pilot's batch job asks for, and what it runs (a pure description)."""

    name: str
    nodes: int
    gpus_per_node: int
    time_limit: int | None  # seconds (Slurm rounds it up to whole minutes)
    queue: str | None
    account: str | None
    directives: tuple[str, ...]  # extra #SBATCH options
    executable: str
    arguments: tuple[str, ...]
    directory: str  # where the job starts (the pilot's sandbox)
    stdout: str
    stderr: str
    environment: tuple[tuple[str, str], ...] = ()


class Described(Protocol):
    """What a job is made from: a `PilotDescription`'s fields (named here so that this
    module, which descriptions use to check their directives, need not import them)."""

    @property
    def nodes(self) -> int | None: ...
    @property
    def gpus_per_node(self) -> int | None: ...
    @property
    def runtime(self) -> float | None: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def account(self) -> str | None: ...
    @property
    def batch_directives(self) -> Sequence[str]: ...


def job_request(desc: Described, *, pilot_uid: str, sandbox: str, config_path: str,
                executable: str, package_root: str, env: Mapping[str, str]) -> JobRequest:
    """The batch job of a pilot: its nodes, whole (`--exclusive`), with their GPUs; its
    runtime as the time limit; running `executable -m pilotfish.agent CONFIG` once, on
    the first node, with this pilotfish (`package_root`) first on its PYTHONPATH."""
    assert desc.nodes is not None and desc.gpus_per_node is not None
    path = ":".join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return JobRequest(
        name=f"pilotfish-{pilot_uid}", nodes=desc.nodes, gpus_per_node=desc.gpus_per_node,
        time_limit=math.ceil(desc.runtime) if desc.runtime is not None else None,
        queue=desc.queue, account=desc.account, directives=tuple(desc.batch_directives),
        executable=executable, arguments=("-m", "pilotfish.agent", config_path),
        directory=sandbox, stdout=f"{sandbox}/agent.out", stderr=f"{sandbox}/agent.log",
        environment=(("PYTHONPATH", path),))


def splice_directives(script: str, directives: Sequence[str]) -> str:
    """A batch script with `#SBATCH` lines added after its last one (so they win over
    what the script said before them)."""
    if not directives:
        return script
    lines = script.split("\n")
    last = max((i for i, line in enumerate(lines) if line.startswith("#SBATCH")), default=0)
    return "\n".join([*lines[:last + 1], *(f"#SBATCH {d}" for d in directives),
                      *lines[last + 1:]])


def never_starts(reason: str) -> str | None:
    """Why a job pending for `reason` (squeue's) can never start, or None if it may."""
    code = reason.split(",", 1)[0].strip()
    if code in _NEVER_STARTS:
        return _NEVER_STARTS[code]
    if "PerJob" in code and (code.startswith("QOS") or code.startswith("Assoc")):
        return "it is over a per-job limit of its QOS or association"
    return None


def parse_queue(out: str) -> dict[str, tuple[str, str]]:
    """`squeue -h -o "%i %T %r"` lines -> {job id: (state, reason)}."""
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split(None, 2)
        if len(parts) >= 2:
            jobs[parts[0]] = (parts[1], parts[2] if len(parts) == 3 else "")
    return jobs


def ended_text(state: str, exit_code: int | None, message: str | None) -> str:
    """What a job's end says, from PSI/J's final state (COMPLETED, FAILED, CANCELED)."""
    if state == "CANCELED":
        return "was canceled"
    if state == "COMPLETED":
        return "ended"
    why = f"exit code {exit_code}" if exit_code is not None else None
    if message:
        why = f"{why}; {message.strip()}" if why else message.strip()
    return f"failed ({why})" if why else "failed"


def client_host(env: Mapping[str, str], hostname: Callable[[], str] = socket.gethostname,
                resolve: Callable[[str], str] = socket.gethostbyname) -> str:
    """The address a batch pilot's agent connects back to: `PILOTFISH_CLIENT_HOST` if set
    (an IP address or a name), else the address this host's name resolves to (a login
    node's, which compute nodes reach). Raises BatchError if there is none."""
    given = env.get(CLIENT_HOST_VARIABLE, "").strip()
    name = given or hostname()
    try:
        return resolve(name)
    except OSError as exc:
        how = (f"{CLIENT_HOST_VARIABLE}={given!r}" if given else f"this host's name {name!r}")
        raise BatchError(f"{how} does not resolve to an address ({exc}): set "
                         f"{CLIENT_HOST_VARIABLE} to an address of this host that the compute "
                         "nodes can reach") from None


# ---- I/O: commands, and PSI/J -------------------------------------------------------------


Runner = Callable[[Sequence[str]], tuple[int, str]]


def run_command(argv: Sequence[str], timeout: float = 30.0) -> tuple[int, str]:
    """Run a Slurm command; (exit status, stdout and stderr)."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 255, str(exc)
    return done.returncode, done.stdout + done.stderr


@dataclass(frozen=True, slots=True)
class JobEvent:
    """What happened to a batch job: `pending` (`text`: Slurm's reason, now), `started`,
    `ended` (`text`: how, e.g. "failed (exit code 1)", "cannot start: ..."), or `lost`
    (PSI/J stopped watching it: squeue kept failing; it may still be queued or run)."""

    job_id: str
    kind: str
    text: str = ""


class BatchJob:
    """A submitted pilot job. `job_id` is Slurm's; `reason` is why it is pending."""

    def __init__(self, batch: SlurmBatch, psij_job: Any, on_event: Callable[[JobEvent], None]
                 ) -> None:
        self._batch = batch
        self.psij_job = psij_job
        self._on_event = on_event
        self.started = False
        self.ended: str | None = None  # how, once it ended
        self.reason: str | None = None  # Slurm's, while it is pending
        self._lock = threading.Lock()

    @property
    def job_id(self) -> str:
        """Slurm's job id ("" until submitted)."""
        return str(self.psij_job.native_id or "")

    def __repr__(self) -> str:
        state = self.ended or ("running" if self.started else "pending")
        return f"<BatchJob {self.job_id} {state}>"

    def _emit(self, kind: str, text: str = "") -> None:
        with self._lock:
            if self.ended is not None or (kind == "started" and self.started):
                return
            if kind == "started":
                self.started = True
            elif kind == "ended":
                self.ended = text
        try:
            self._on_event(JobEvent(self.job_id, kind, text))
        except Exception:
            log.exception("batch job %s: its %s event was not handled", self.job_id, kind)

    def cancel(self, wait: float = 0.0, grace: float = 0.0) -> bool:
        """Cancel the job (`scancel`; nothing if it has ended), then wait up to `wait`
        seconds until Slurm no longer holds it. `grace`: first wait that long for it to
        end by itself (its agent said goodbye). True if it is gone."""
        return self._batch.cancel(self, wait, grace)


class SlurmBatch:
    """A session's batch jobs: PSI/J's Slurm executor (its scripts and job files under
    `work_dir`), its status callbacks, and a thread reading the reasons of pending jobs."""

    def __init__(self, work_dir: Path, run: Runner = run_command,
                 poll_interval: float | None = None) -> None:
        from psij.executors.batch.slurm import SlurmExecutorConfig

        if poll_interval is None:
            poll_interval = float(os.environ.get(POLL_VARIABLE) or POLL_INTERVAL)
        self._run = run
        self._poll_interval = poll_interval
        config = SlurmExecutorConfig(
            work_directory=work_dir, queue_polling_interval=max(1, round(poll_interval)),
            initial_queue_polling_delay=1, queue_polling_error_threshold=POLL_ERRORS_TOLERATED)
        executor = _executor_class()(config)
        executor.set_job_status_callback(self._on_status)
        self._executor = executor
        self._jobs: dict[str, BatchJob] = {}  # by PSI/J's job id
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    def submit(self, request: JobRequest, on_event: Callable[[JobEvent], None]) -> BatchJob:
        """Submit the job (`sbatch`); raises BatchError with sbatch's message if refused."""
        from psij import Job, SubmitException

        psij_job = Job(_psij_spec(request))
        job = BatchJob(self, psij_job, on_event)
        with self._lock:
            self._jobs[psij_job.id] = job
        # (PSI/J's template names the job from an attribute its Job lacks: named here.)
        self._executor.directives[psij_job.id] = (f"--job-name={request.name}",
                                                  *request.directives)
        try:
            self._executor.submit(psij_job)
        except SubmitException as exc:
            with self._lock:
                del self._jobs[psij_job.id]
            raise BatchError(str(exc).strip() or "sbatch failed") from None
        finally:
            self._executor.directives.pop(psij_job.id, None)
        self._watch()
        return job

    def cancel(self, job: BatchJob, wait: float, grace: float = 0.0) -> bool:
        from psij import SubmitException

        if grace > 0 and self._gone(job, grace):  # it ended by itself
            return True
        if job.ended is None:
            try:
                self._executor.cancel(job.psij_job)
            except SubmitException as exc:  # ended meanwhile, or scancel failed: see below
                log.info("batch job %s: scancel: %s", job.job_id, exc)
        return self._gone(job, wait)

    def _gone(self, job: BatchJob, wait: float) -> bool:
        """Wait up to `wait` s until Slurm no longer holds the job (pending, running,
        completing); True if it does not."""
        deadline = time.monotonic() + wait
        while True:
            status, out = self._run(["squeue", "-h", "-j", job.job_id, "-o", "%i %T %r"])
            state = parse_queue(out).get(job.job_id, ("", ""))[0] if status == 0 else ""
            if state in _ENDED:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def close(self) -> None:
        """Stop watching (the jobs are the session's to cancel first)."""
        self._closed.set()

    # ---- PSI/J's callback thread, and ours ----------------------------------------------

    def _on_status(self, psij_job: Any, status: Any) -> None:
        job = self._jobs.get(psij_job.id)
        if job is None or not job.job_id:  # (QUEUED arrives inside submit: nothing to say)
            return
        state = status.state.name
        if state == "ACTIVE":
            job._emit("started")
        elif status.state.final:
            with self._lock:
                self._jobs.pop(psij_job.id, None)
            message = (status.message or "").strip()
            if state == "FAILED" and message.startswith(_POLL_FAILURES):
                log.warning("batch job %s: PSI/J stopped watching it: %s", job.job_id, message)
                job._emit("lost", f"could no longer be watched (squeue failed: "
                                  f"{message.splitlines()[-1] if message else ''})")
            else:
                job._emit("ended", ended_text(state, status.exit_code, status.message))

    def _watch(self) -> None:
        with self._lock:
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_pending, daemon=True,
                                                 name="pilotfish-batch-watch")
                self._watcher.start()

    def _watch_pending(self) -> None:
        """While jobs wait: their reasons, and an end for those that can never start."""
        while not self._closed.wait(self._poll_interval):
            with self._lock:
                waiting = {j.job_id: j for j in self._jobs.values()
                           if j.job_id and not j.started and j.ended is None}
            if not waiting:
                continue
            status, out = self._run(["squeue", "-h", "-j", ",".join(waiting), "-o",
                                     "%i %T %r"])
            if status != 0:
                log.info("squeue failed (%d): %s", status, out.strip())
                continue
            for job_id, (state, reason) in parse_queue(out).items():
                job = waiting.get(job_id)
                if job is None or state != "PENDING" or reason == job.reason:
                    continue
                job.reason = reason
                why = never_starts(reason)
                if why is None:
                    job._emit("pending", reason)
                    continue
                try:
                    self._executor.cancel(job.psij_job)
                except Exception as exc:
                    log.warning("batch job %s: scancel failed: %s", job_id, exc)
                job._emit("ended", f"cannot start: Slurm says {reason}: {why}")


def _psij_spec(request: JobRequest) -> Any:
    from datetime import timedelta

    from psij import JobAttributes, JobSpec, ResourceSpecV1

    custom: dict[str, object] = (
        {"slurm.gpus-per-node": str(request.gpus_per_node)} if request.gpus_per_node else {})
    attributes = JobAttributes(queue_name=request.queue, account=request.account,
                               custom_attributes=custom)
    # No runtime: no --time, the partition's default (not PSI/J's default of 10 minutes;
    # its constructor takes no None, its script template does).
    attributes.duration = (timedelta(seconds=request.time_limit)  # type: ignore[assignment]
                           if request.time_limit is not None else None)
    return JobSpec(
        executable=request.executable, arguments=list(request.arguments), name=request.name,
        directory=Path(request.directory), environment=dict(request.environment),
        stdout_path=Path(request.stdout), stderr_path=Path(request.stderr),
        resources=ResourceSpecV1(node_count=request.nodes, exclusive_node_use=True),
        attributes=attributes, launcher="single")


_EXECUTOR_CLASS: type | None = None


def _executor_class() -> type:
    """PSI/J's Slurm executor with two additions: the description's directives as raw
    `#SBATCH` lines (PSI/J writes custom attributes as `--key="value"`, which options
    without a value cannot take), and a message for every reason Slurm gives (PSI/J
    asserts that a failed job's reason is one it knows; when one is not, its polls fail,
    and after a few it fails every job it watches)."""
    global _EXECUTOR_CLASS
    if _EXECUTOR_CLASS is None:
        import io

        from packaging.version import Version
        from psij.executors.batch.slurm import SlurmJobExecutor

        class PilotSlurmExecutor(SlurmJobExecutor):  # type: ignore[misc]
            _NAME_ = "slurm"  # (what JobExecutor.get_instance would set)
            _VERSION_ = Version("0.0.1")

            def __init__(self, config: Any) -> None:
                super().__init__(config=config)
                self.directives: dict[str, Sequence[str]] = {}  # by PSI/J job id

            def generate_submit_script(self, job: Any, context: dict[str, object],
                                       submit_file: Any) -> None:
                text = io.StringIO()
                super().generate_submit_script(job, context, text)
                submit_file.write(splice_directives(text.getvalue(),
                                                    self.directives.get(job.id, ())))

            def _get_message(self, reason: str) -> str:
                return str(self._REASONS_MAP.get(reason, reason))

        _EXECUTOR_CLASS = PilotSlurmExecutor
    return _EXECUTOR_CLASS
