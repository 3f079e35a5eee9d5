"""The Flux backend's pure parts: jobspec arguments, and journal events to task outcomes.

The event sequences below are those of the job-manager journal (Flux RFC 21) for a job
that succeeds, fails, is killed, canceled queued or running, and times out.
"""

from __future__ import annotations

import pytest

from pilotfish.backends.base import TaskFinished, TaskLost, TaskStarted
from pilotfish.backends.flux.backend import jobspec, pick_uri, start_command
from pilotfish.backends.flux.jobs import (
    RANK_SCRIPT,
    FluxJobTracker,
    job_request,
    placement_from_r,
    urgency,
)
from pilotfish.messages import TaskSpec
from pilotfish.states import TaskState

QUEUED = [("submit", {}), ("validate", {}), ("depend", {}), ("priority", {"priority": 16})]
RAN = [("alloc", {}), ("start", {})]
ENDED = [("release", {"ranks": "all", "final": True}), ("free", {}), ("clean", {})]


def replay(events: list[tuple[str, dict]]) -> list:
    tracker = FluxJobTracker()
    tracker.submitted(42, "task.000001")
    out = []
    for ts, (name, context) in enumerate(events, start=100):
        result = tracker.event(42, name, float(ts), context)
        if result is not None:
            out.append(result)
    assert tracker.jobs == {}  # forgotten once clean
    return out


def test_a_job_that_succeeds() -> None:
    started, done = replay(QUEUED + RAN + [("finish", {"status": 0})] + ENDED)
    assert started == TaskStarted("task.000001", 105.0)
    assert isinstance(done, TaskFinished)
    assert (done.state, done.exit_code, done.error) == (TaskState.DONE, 0, None)
    assert (done.exec_start, done.exec_stop) == (105.0, 106.0)


@pytest.mark.parametrize(("status", "code", "error"), [
    (256 * 3, 3, "exit code 3"), (9, -9, "killed by signal 9")])
def test_a_job_that_fails(status: int, code: int, error: str) -> None:
    _, done = replay(QUEUED + RAN + [("finish", {"status": status})] + ENDED)
    assert (done.state, done.exit_code, done.error) == (TaskState.FAILED, code, error)


def test_a_job_canceled_in_the_queue_never_started() -> None:
    (done,) = replay([*QUEUED, ("exception", {"type": "cancel", "severity": 0, "note": ""}),
                      ("clean", {})])
    assert (done.state, done.error, done.exec_start) == (TaskState.CANCELED, "canceled", None)


def test_a_running_job_canceled() -> None:
    _, done = replay(QUEUED + RAN + [("exception", {"type": "cancel", "severity": 0}),
                                     ("finish", {"status": 15})] + ENDED)
    assert (done.state, done.exit_code) == (TaskState.CANCELED, -15)


def test_a_job_past_its_time_limit() -> None:
    _, done = replay(QUEUED + RAN + [
        ("exception", {"type": "timeout", "severity": 0, "note": "resource allocation expired"}),
        ("finish", {"status": 9})] + ENDED)
    assert done.state is TaskState.FAILED and "timed out" in done.error


def test_non_fatal_exceptions_and_other_jobs_are_ignored() -> None:
    _, done = replay(QUEUED + RAN + [("exception", {"type": "io", "severity": 1}),
                                     ("finish", {"status": 0})] + ENDED)
    assert done.state is TaskState.DONE
    assert FluxJobTracker().event(7, "start", 1.0, {}) is None


def test_a_job_that_could_not_run() -> None:
    (done,) = replay([*QUEUED, ("exception", {"type": "alloc", "severity": 0,
                                              "note": "unsatisfiable request"}),
                      ("clean", {})])
    assert done.state is TaskState.FAILED
    assert done.error == "Flux job exception 'alloc': unsatisfiable request"


def test_job_request_translates_the_task() -> None:
    spec = TaskSpec("task.000007", "executable", "lmp", ["-in", "in.lj"], {"OMP": "7"}, None,
                    ranks=16, cores_per_rank=7, gpus_per_rank=1.0, priority=3, timeout=600.0,
                    ranks_per_node=8)
    req = job_request(spec, "/sandbox", {"PATH": "/bin"})
    # Every rank through RANK_SCRIPT (its rank, its size, its GPUs told as everywhere).
    assert req.command == ["/bin/sh", "-c", RANK_SCRIPT, "pilotfish", "", "", "lmp", "-in",
                           "in.lj"]
    assert job_request(spec, "/s", {}, first_node=4).command[5] == "4"  # real nodes
    assert job_request(spec, "/s", {}, gpu_env="ROCR_VISIBLE_DEVICES").command[4] == (
        "ROCR_VISIBLE_DEVICES")
    assert (req.num_tasks, req.cores_per_task, req.gpus_per_task, req.num_nodes) == (
        16, 7, 1, 2)
    assert req.environment == {"PATH": "/bin", "OMP": "7", "PILOTFISH_TASK_ID": "task.000007"}
    assert (req.cwd, req.stdout) == ("/sandbox", "/sandbox/task.000007.out")
    assert (req.duration, req.urgency, req.name) == (600.0, 19, "task.000007")
    plain = job_request(TaskSpec("t", "executable", "true", sandbox="/own"), "/sandbox", {})
    assert (plain.gpus_per_task, plain.num_nodes, plain.duration, plain.cwd) == (
        None, None, 0.0, "/own")
    # One rank, no GPU, a virtual node: told in its environment, started directly.
    one = job_request(TaskSpec("t", "executable", "true"), "/s", {}, gpu_env="GPUS")
    assert one.command == ["true"] and one.shell_options == {"gpu-affinity": "off"}
    assert (one.environment["PILOTFISH_RANK"], one.environment["PILOTFISH_RANKS"],
            one.environment["GPUS"]) == ("0", "1", "")
    # On real nodes its node is known only where it runs.
    assert job_request(TaskSpec("t", "executable", "true"), "/s", {},
                       first_node=0).command[:2] == ["/bin/sh", "-c"]
    # Virtual nodes: one broker holds them all (no node count), their core ids are not
    # this host's (no binding).
    virtual = job_request(spec, "/sandbox", {}, virtual=True)
    assert (virtual.num_tasks, virtual.num_nodes) == (16, None)
    assert virtual.shell_options == {"gpu-affinity": "per-task", "cpu-affinity": "off"}


def test_what_flux_cannot_run_is_refused() -> None:
    with pytest.raises(ValueError, match="not function tasks"):
        job_request(TaskSpec("t", "function"), "/s", {})
    with pytest.raises(ValueError, match="cannot share a GPU"):
        job_request(TaskSpec("t", "executable", "x", gpus_per_rank=0.5), "/s", {})


def test_urgency_keeps_clear_of_hold_and_expedite() -> None:
    assert [urgency(p) for p in (0, 5, 100, -15, -100)] == [16, 21, 30, 1, 1]


# ---- the I/O side's pure helpers (backends/flux/backend.py) ------------------------------------


def test_the_local_uri_is_used_where_its_socket_is_here(tmp_path) -> None:
    (tmp_path / "local-0").touch()
    here = f"local://{tmp_path}/local-0"
    assert pick_uri(f"{here} ssh://n1{tmp_path}/local-0") == here
    assert pick_uri("local:///elsewhere/local-0 ssh://n1/elsewhere/local-0") == (
        "ssh://n1/elsewhere/local-0")
    assert pick_uri(here) == here  # (one broker on this host: one URI)


def test_instances_start_on_this_host_or_over_their_hosts_under_srun() -> None:
    local = start_command(None)
    assert local[:3] == ["flux", "start", "sh"] and 'echo "$FLUX_URI"' in local[-1]
    configured = start_command(None, "/opt/flux/bin/flux", "/pilot/flux-p")
    assert configured[:4] == ["/opt/flux/bin/flux", "start", "-o,--config-path=/pilot/flux-p",
                              "sh"]
    spread = start_command(["n1", "n2"])
    assert spread[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                          "--nodelist=n1,n2"]
    assert "--mpi=pmi2" in spread and "--whole" in spread  # PMI bootstrap, whole nodes
    assert spread[spread.index("flux"):][:2] == ["flux", "start"]
    assert "flux uri --remote" in spread[-1]  # reachable from the agent's node


class _RecordingJobspec:
    """Stands in for flux.job.JobspecV1 where Flux is absent: records the arguments of
    `from_command` (flux-core's signature: command, num_tasks, cores_per_task,
    gpus_per_task, num_nodes, exclusive, duration, environment, env_expand, cwd,
    rlimits, name, input, output, error, ...)."""

    def __init__(self, arguments: dict[str, object]) -> None:
        self.arguments = arguments
        self.shell_options: dict[str, object] = {}

    def setattr_shell_option(self, name: str, value: object) -> None:
        self.shell_options[name] = value

    @classmethod
    def from_command(cls, command: list[str], **arguments: object) -> _RecordingJobspec:
        return cls({"command": command, **arguments})


def test_a_task_becomes_a_jobspec_with_its_resources_files_and_limits() -> None:
    spec = TaskSpec("task.000007", "executable", "/bin/app", ["-n", "3"], {"A": "1"},
                    "/work", ranks=6, cores_per_rank=2, gpus_per_rank=1.0, timeout=30.0,
                    ranks_per_node=3, priority=2)
    request = job_request(spec, "/sandbox", {"PATH": "/bin"})
    js = jobspec(type("flux_job", (), {"JobspecV1": _RecordingJobspec}), request)
    assert js.arguments == {
        "command": ["/bin/sh", "-c", RANK_SCRIPT, "pilotfish", "", "", "/bin/app", "-n", "3"],
        "num_tasks": 6, "cores_per_task": 2,
        "gpus_per_task": 1, "num_nodes": 2, "duration": 30.0, "cwd": "/work",
        "environment": {"PATH": "/bin", "A": "1", "PILOTFISH_TASK_ID": "task.000007"},
        "name": "task.000007", "output": "/work/task.000007.out",
        "error": "/work/task.000007.err"}
    assert js.shell_options == {"gpu-affinity": "per-task"}  # each rank its own GPUs
    assert request.urgency == 18
    untimed = job_request(TaskSpec("t", "executable", "/bin/true"), "/sandbox", {})
    assert jobspec(type("flux_job", (), {"JobspecV1": _RecordingJobspec}),
                   untimed).arguments["duration"] is None  # no limit


def test_events_that_come_before_the_job_id_are_held_until_it_does() -> None:
    tracker = FluxJobTracker()
    tracker.submitting(2)
    assert tracker.event(42, "submit", 100.0, {}) is None
    assert tracker.event(42, "start", 101.0, {}) is None  # id 42 not known yet: held
    assert tracker.event(7, "start", 101.5, {}) is None  # someone else's job: held too
    assert tracker.submitted(42, "task.000001") == [TaskStarted("task.000001", 101.0)]
    assert tracker.early == {7: [("start", 101.5, {}, None)]}  # one id still awaited
    tracker.refused()  # the other submit failed: no id awaited, what is held is not ours
    assert tracker.early == {} and tracker.awaited == 0
    assert tracker.event(7, "finish", 102.0, {"status": 0}) is None
    assert tracker.early == {}  # nothing awaited: not held
    done = tracker.event(42, "finish", 103.0, {"status": 0})
    assert isinstance(done, TaskFinished) and done.state is TaskState.DONE


def test_events_held_too_long_are_dropped_and_ended_jobs_hold_nothing() -> None:
    tracker = FluxJobTracker()
    tracker.submitting(1)
    tracker.event(7, "submit", 100.0, {})  # another user's job, while ours is awaited
    tracker.event(8, "submit", 161.0, {})
    assert list(tracker.early) == [8]  # 7's were held over HOLD_SECONDS
    tracker.submitted(42, "task.000001")
    tracker.event(42, "finish", 170.0, {"status": 0})
    tracker.submitting(1)
    assert tracker.event(42, "free", 171.0, {}) is None and tracker.early == {}
    assert tracker.event(42, "clean", 172.0, {}) is None and tracker.jobs == {}


def test_where_flux_put_a_job_in_pilot_nodes() -> None:
    r = {"version": 1, "execution": {"R_lite": [
        {"rank": "0-1", "children": {"core": "2-3", "gpu": "1"}}]}}
    # Real nodes: broker rank k is the partition's node k (here from pilot node 4).
    assert placement_from_r(r, first=4, cores_per_node=8, gpus_per_node=2,
                            virtual=False) == [(4, [2, 3], [1]), (5, [2, 3], [1])]
    # Virtual nodes: one broker, its cores and GPUs numbered node after node.
    one = {"execution": {"R_lite": [{"rank": "0", "children": {"core": "6-9", "gpu": "3"}}]}}
    assert placement_from_r(one, first=2, cores_per_node=8, gpus_per_node=2,
                            virtual=True) == [(2, [6, 7], []), (3, [0, 1], [1])]
    tracker = FluxJobTracker(placer=lambda r: placement_from_r(r, 0, 8, 2, virtual=False))
    tracker.submitted(42, "task.000001")
    assert tracker.event(42, "alloc", 1.0, {}, r) is None
    started = tracker.event(42, "start", 2.0, {})
    assert isinstance(started, TaskStarted) and started.placement == [
        (0, [2, 3], [1]), (1, [2, 3], [1])]


def test_a_job_that_lost_a_node_is_a_lost_task_not_a_failure() -> None:
    _, lost = replay(QUEUED + RAN + [
        ("exception", {"type": "exec", "severity": 0,
                       "note": "node failure on node4 (rank 1)"}),
        ("finish", {"status": 9})] + ENDED)
    assert lost == TaskLost("task.000001", "Flux lost a node under it: node failure on node4 "
                                           "(rank 1)")
