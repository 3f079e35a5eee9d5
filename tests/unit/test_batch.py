"""Batch pilots, the pure parts: the job from a description, directives, the time-limit
margin, pending reasons, what a job's end says, the client's address, the agent's config
inside its job (pilots/batch.py, agent/config.py)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time

import pytest

from pilotfish.agent.config import AgentConfig
from pilotfish.description import InvalidDescription, PilotDescription
from pilotfish.pilots.batch import (
    BatchError,
    check_directives,
    client_host,
    ended_text,
    job_request,
    never_starts,
    parse_queue,
    splice_directives,
    stop_margin,
)

needs_sbatch = pytest.mark.skipif(shutil.which("sbatch") is None,
                                  reason="no sbatch here: batch descriptions are refused")


def test_directives_are_sbatch_options_and_not_those_pilotfish_sets() -> None:
    assert check_directives(["--begin=now+1hour", "#SBATCH --qos=debug", " -C gpu ",
                             "--exclusive"]) == ("--begin=now+1hour", "--qos=debug", "-C gpu",
                                                 "--exclusive")
    with pytest.raises(ValueError, match="an sbatch option"):
        check_directives(["begin=now"])
    for own, field in (("--nodes=2", "nodes"), ("-N4", "nodes"), ("-N 4", "nodes"),
                       ("--time=10", "runtime"), ("-t 5", "runtime"),
                       ("--partition=debug", "queue"), ("-A p1", "account")):
        with pytest.raises(ValueError, match=f"from the description's '{field}'"):
            check_directives([own])
    with pytest.raises(ValueError, match="agent's log and sandbox"):
        check_directives(["--output=x.log"])
    with pytest.raises(InvalidDescription, match=r"batch_directives: .*pilotfish sets --time"):
        PilotDescription(platform="slurm-local", mode="local", batch_directives=["--time=5"])


def test_the_agent_stops_5_percent_before_the_time_limit_at_most_30_s() -> None:
    assert stop_margin(20) == pytest.approx(1.0)
    assert stop_margin(600) == 30.0
    assert stop_margin(86400) == 30.0


@needs_sbatch
def test_the_job_of_a_description() -> None:
    desc = PilotDescription(platform="slurm-local", mode="batch", nodes=4, runtime=90.5,
                            queue="debug", account="p1", batch_directives=["--qos=high"])
    job = job_request(desc, pilot_uid="pilot.0001", sandbox="/s/pilot.0001",
                      config_path="/s/pilot.0001/agent.json", executable="/venv/bin/python",
                      package_root="/src", env={"PYTHONPATH": "/mine"})
    assert (job.name, job.nodes, job.gpus_per_node, job.time_limit) == (
        "pilotfish-pilot.0001", 4, 4, 91)  # whole seconds, rounded up
    assert (job.queue, job.account, job.directives) == ("debug", "p1", ("--qos=high",))
    assert job.executable == "/venv/bin/python"
    assert job.arguments == ("-m", "pilotfish.agent", "/s/pilot.0001/agent.json")
    assert (job.directory, job.stderr) == ("/s/pilot.0001", "/s/pilot.0001/agent.log")
    assert dict(job.environment) == {"PYTHONPATH": "/src:/mine"}
    plain = job_request(PilotDescription(platform="slurm-local", mode="batch",
                                         gpus_per_node=0),
                        pilot_uid="p", sandbox="/s", config_path="/s/a.json", executable="py",
                        package_root="/src", env={})
    assert (plain.nodes, plain.gpus_per_node, plain.time_limit) == (1, 0, None)
    assert dict(plain.environment) == {"PYTHONPATH": "/src"}


@needs_sbatch
def test_a_batch_description_is_checked() -> None:
    with pytest.raises(InvalidDescription, match="detach_grace: a batch pilot cannot be "
                                                 "reattached"):
        PilotDescription(platform="slurm-local", mode="batch", detach_grace=60)


def test_directives_go_after_the_scripts_own() -> None:
    script = "#!/bin/bash\n#SBATCH --nodes=2\n\n#SBATCH --export=ALL\n\nexport A=1\nrun\n"
    assert splice_directives(script, ["--begin=now+1hour", "--exclusive"]) == (
        "#!/bin/bash\n#SBATCH --nodes=2\n\n#SBATCH --export=ALL\n#SBATCH --begin=now+1hour\n"
        "#SBATCH --exclusive\n\nexport A=1\nrun\n")
    assert splice_directives(script, []) == script


def test_pending_reasons_that_never_resolve() -> None:
    assert "more nodes than its partition" in (never_starts("PartitionNodeLimit") or "")
    assert "time limit" in (never_starts("PartitionTimeLimit") or "")
    assert never_starts("QOSMaxNodePerJobLimit") is not None
    assert never_starts("AssocMaxWallDurationPerJobLimit") is not None
    for waits in ("Resources", "Priority", "BeginTime", "Dependency", "JobHeldUser",
                  "ReqNodeNotAvail, UnavailableNodes:node3", "QOSGrpNodeLimit", "None", ""):
        assert never_starts(waits) is None, waits


def test_squeue_lines() -> None:
    out = ("41 PENDING PartitionNodeLimit\n42 RUNNING None\n"
           "43 PENDING ReqNodeNotAvail, UnavailableNodes:node[3-4]\n\n")
    assert parse_queue(out) == {"41": ("PENDING", "PartitionNodeLimit"),
                                "42": ("RUNNING", "None"),
                                "43": ("PENDING", "ReqNodeNotAvail, UnavailableNodes:node[3-4]")}


def test_what_a_jobs_end_says() -> None:
    assert ended_text("CANCELED", None, None) == "was canceled"
    assert ended_text("COMPLETED", 0, None) == "ended"
    assert ended_text("FAILED", 1, None) == "failed (exit code 1)"
    assert ended_text("FAILED", None, "The job exhausted its time limit.") == (
        "failed (The job exhausted its time limit.)")
    assert ended_text("FAILED", 2, "boom\n") == "failed (exit code 2; boom)"


def test_the_address_agents_connect_back_to() -> None:
    table = {"login1": "10.1.2.3", "ib-login1": "10.9.9.9", "10.0.0.7": "10.0.0.7"}

    def resolve(name: str) -> str:
        if name not in table:
            raise OSError("unknown host")
        return table[name]

    assert client_host({}, lambda: "login1", resolve) == "10.1.2.3"
    assert client_host({"PILOTFISH_CLIENT_HOST": "ib-login1"}, lambda: "login1",
                       resolve) == "10.9.9.9"
    assert client_host({"PILOTFISH_CLIENT_HOST": "10.0.0.7"}, lambda: "x", resolve) == "10.0.0.7"
    with pytest.raises(BatchError, match="set PILOTFISH_CLIENT_HOST"):
        client_host({}, lambda: "nowhere", resolve)


def test_the_agents_config_from_a_file_and_inside_its_job(tmp_path) -> None:
    cfg = AgentConfig(client_address="tcp://10.0.0.1:5", pilot_uid="pilot.0000",
                      sandbox=str(tmp_path), nodes=2, cores_per_node=16, gpus_per_node=4,
                      workers_per_node=2, runtime=600.0, batch_job=True, runtime_margin=30.0)
    path = tmp_path / "agent.json"
    path.write_text(cfg.to_json())
    assert AgentConfig.load(str(path)) == cfg
    assert AgentConfig.load(cfg.to_json()) == cfg  # (local pilots: inline JSON)
    assert json.loads(cfg.to_json())["batch_job"] is True
    inside = cfg.in_job({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "node[1-4]"})
    assert inside.hosts == ["node1", "node2"]
    assert inside.stop_after == 570.0
    assert inside.runtime_reason == "pilot runtime of 600 s exceeded (the job's time limit)"
    with pytest.raises(ValueError, match="runs inside its Slurm job"):
        cfg.in_job({})
    with pytest.raises(ValueError, match="has 1 nodes, the pilot needs 2"):
        cfg.in_job({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "node1"})
    local = AgentConfig(client_address="", pilot_uid="p", sandbox="", nodes=1,
                        cores_per_node=1, gpus_per_node=0, workers_per_node=1, runtime=5.0)
    assert local.stop_after == 5.0 and local.runtime_reason == "pilot runtime of 5 s exceeded"


class _FakeExecutor:
    def __init__(self) -> None:
        self.canceled: list[str] = []

    def cancel(self, job: object) -> None:
        self.canceled.append(job.native_id)  # type: ignore[attr-defined]


class _FakeJob:
    def __init__(self, native_id: str) -> None:
        self.id, self.native_id = f"psij-{native_id}", native_id


class _FakeStatus:
    def __init__(self, name: str, final: bool, exit_code: int | None = None,
                 message: str | None = None) -> None:
        self.state = type("State", (), {"name": name, "final": final})()
        self.exit_code, self.message = exit_code, message


@pytest.mark.skipif(importlib.util.find_spec("psij") is None, reason="no PSI/J here")
def test_the_jobs_events_from_psij_and_from_squeue(tmp_path) -> None:
    """SlurmBatch's own logic, its commands and PSI/J's executor replaced."""
    from pilotfish.pilots.batch import BatchJob, SlurmBatch

    queue = {"out": ""}
    batch = SlurmBatch(tmp_path, run=lambda argv: (0, queue["out"]), poll_interval=0.05)
    fake = _FakeExecutor()
    batch._executor = fake  # type: ignore[assignment]
    events: list[tuple[str, str, str]] = []
    jobs = {}
    for native in ("41", "42", "43"):
        psij_job = _FakeJob(native)
        job = jobs[native] = BatchJob(batch, psij_job, lambda e: events.append(
            (e.job_id, e.kind, e.text)))
        batch._jobs[psij_job.id] = job
    try:
        queue["out"] = "41 PENDING Resources\n42 PENDING PartitionNodeLimit\n43 RUNNING None\n"
        batch._watch()
        deadline = time.monotonic() + 5
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)  # (the same reasons again: nothing more)
        assert sorted(events) == [
            ("41", "pending", "Resources"),
            ("42", "ended", "cannot start: Slurm says PartitionNodeLimit: it asks more nodes "
                            "than its partition allows (or than are up there: some may be "
                            "down or drained)")]
        assert fake.canceled == ["42"]
        events.clear()
        batch._on_status(jobs["43"].psij_job, _FakeStatus("ACTIVE", False))
        batch._on_status(jobs["43"].psij_job, _FakeStatus("COMPLETED", True, 0))
        batch._on_status(jobs["42"].psij_job, _FakeStatus("CANCELED", True))  # (said: ended)
        batch._on_status(jobs["41"].psij_job, _FakeStatus(
            "FAILED", True, None, "Failed to poll for job status: Traceback ...\nOSError"))
        assert events == [("43", "started", ""), ("43", "ended", "ended"),
                          ("41", "lost", "could no longer be watched (squeue failed: OSError)")]
    finally:
        batch.close()


def test_the_demos_pilot(monkeypatch) -> None:
    from pilotfish.cli import build_parser, run_description

    for name in ("SLURM_JOB_ID", "SLURM_JOBID"):
        monkeypatch.delenv(name, raising=False)
    local = run_description(build_parser().parse_args(["run"]))
    assert (local.mode, local.nodes, local.cores_per_node, local.gpus_per_node) == (
        "local", 2, 16, 4)
    if shutil.which("sbatch") is not None:
        batch = run_description(build_parser().parse_args(
            ["run", "--platform", "slurm-local", "--runtime", "600"]))
        assert (batch.mode, batch.nodes, batch.runtime) == ("batch", 1, 600.0)
