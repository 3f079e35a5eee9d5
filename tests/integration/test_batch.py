"""Batch pilots on the local Slurm cluster (../shared/slurm): a job submitted from a plain
process (not in an allocation), its agent on the job's first node, its nodes all used.

No job of a test may be left in the queue: after each, any job started from its
directory is canceled and the test errs. Others' jobs may hold the cluster: the pilots'
jobs then wait (WAIT), so the timeouts are long; on an idle cluster a test takes seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest

import pilotfish as pf

from .test_slurm import slurm_problem

TD = pf.TaskDescription


# (Nodes busy with others' jobs serve too: the pilots' jobs wait for them.)
_WHY = slurm_problem("sbatch", busy_ok=True) or (
    None if find_spec("psij") else "no PSI/J here: pip install 'pilotfish[batch]'")
WAIT = 400.0  # seconds a test's job may wait for nodes others' jobs hold
pytestmark = [pytest.mark.timeout(600), pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def jobs_under(path: Path) -> list[str]:
    """Jobs Slurm still holds whose working directory is under `path`."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %Z"], capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].startswith(str(path))]


@pytest.fixture(autouse=True)
def no_job_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run as a plain process (no Slurm job around it); leave no job behind."""
    for name in list(os.environ):
        if name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    yield
    left = jobs_under(tmp_path)
    if left:
        subprocess.run(["scancel", *left], check=False)
        pytest.fail(f"jobs left behind (now canceled): {left}")


@pytest.fixture
def session(tmp_path: Path) -> Iterator[pf.Session]:
    with pf.Session(path=tmp_path) as s:
        yield s


def batch(**fields: object) -> pf.PilotDescription:
    return pf.PilotDescription(platform="slurm-local", mode="batch", **fields)  # type: ignore[arg-type]


def job_state(job_id: str) -> str:
    """squeue's state of a job still held ("": none), or, once it ended, scontrol's."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                         text=True).stdout.strip()
    return out


def final_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "")


SHOW = 'echo "$SLURMD_NODENAME $PILOTFISH_NODE $PILOTFISH_RANK"'


def test_a_batch_pilot_runs_tasks_submitted_while_pending_on_every_node(
        session: pf.Session) -> None:
    t0 = time.monotonic()
    pilot = session.start_pilot(batch(nodes=4, runtime=300))
    returned = time.monotonic() - t0
    assert pilot.state == "PENDING" and pilot.job_id
    # Submitted while PENDING: they wait in the client, and go when its agent connects.
    whole = session.submit([TD(executable="/bin/sh", arguments=["-c", SHOW],
                               cores_per_rank=16, gpus_per_rank=1) for _ in range(4)])
    spread = session.submit(TD(executable="/bin/sh", arguments=["-c", SHOW], ranks=4,
                               ranks_per_node=1))
    calls = session.submit([TD(function=pow, args=(2, i)) for i in range(8)])
    waited = [t.state for t in [*whole, spread, *calls]]
    reasons = set()
    deadline = time.monotonic() + WAIT
    while not pilot.wait_active(0.2) and time.monotonic() < deadline:
        reasons.add(pilot.reason)
    assert pilot.active, pilot.reason
    print(f"\nbatch pilot: start_pilot returned in {returned:.3f} s; submit to ACTIVE in "
          f"{pilot.startup_time:.2f} s (job {pilot.job_id}; pending reasons seen: "
          f"{sorted(r for r in reasons if r) or 'none'})")
    assert returned < 2.0
    assert pf.TaskState.NEW in waited  # (not sent before the agent was there)
    assert session.wait(timeout=60)
    assert [t.error for t in [*whole, spread, *calls] if t.error] == []
    seen = sorted(tuple((t.stdout or "").split()) for t in whole)
    assert seen == [("node1", "0", "0"), ("node2", "1", "0"), ("node3", "2", "0"),
                    ("node4", "3", "0")]
    ranks = sorted(tuple(line.split()) for line in (spread.stdout or "").splitlines())
    assert ranks == [("node1", "0", "0"), ("node2", "1", "1"), ("node3", "2", "2"),
                     ("node4", "3", "3")]
    assert [t.result() for t in calls] == [2 ** i for i in range(8)]
    if not any("pending: " in (r or "") for r in reasons):  # it did not wait for nodes
        assert pilot.startup_time is not None and pilot.startup_time < 3.0
    job = pilot.job_id
    assert job is not None
    session.close()
    assert pilot.state == "DONE" and job_state(job) == ""
    assert final_state(job) == "COMPLETED"  # its agent ended, and with it the job


def test_a_job_that_can_never_start_fails_its_pilot_at_once(session: pf.Session) -> None:
    pilot = session.start_pilot(batch(nodes=9))  # the partition has 4
    task = session.submit(TD(executable="/bin/true"))
    assert not pilot.wait_active(15)
    assert pilot.state == "FAILED" and pilot.stopped.is_set()
    assert f"its batch job {pilot.job_id} cannot start: Slurm says PartitionNodeLimit" in (
        pilot.reason or "")
    assert session.wait([task], timeout=5)
    assert task.state is pf.TaskState.FAILED and task.error == pilot.reason
    assert job_state(pilot.job_id or "") == ""


def test_a_pending_pilot_canceled_ends_with_its_tasks_and_its_job(session: pf.Session) -> None:
    pilot = session.start_pilot(batch(nodes=1, batch_directives=["--begin=now+1hour"]))
    tasks = session.submit([TD(executable="/bin/true") for _ in range(3)])
    deadline = time.monotonic() + 10
    while "BeginTime" not in (pilot.reason or "") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pilot.state == "PENDING"
    assert pilot.reason == f"batch job {pilot.job_id} pending: BeginTime"
    session.cancel(tasks[:1])  # a task of a pending pilot: CANCELED at once
    assert session.wait(tasks[:1], timeout=1) and tasks[0].state is pf.TaskState.CANCELED
    pilot.cancel()
    assert pilot.state == "CANCELED" and pilot.reason == f"{pilot.uid}: pilot canceled"
    assert session.wait(tasks, timeout=1)
    assert {t.state for t in tasks} == {pf.TaskState.CANCELED}
    assert tasks[1].error == pilot.reason
    assert job_state(pilot.job_id or "") == ""  # canceled, and gone
    with pytest.raises(RuntimeError, match="is not an active or pending pilot"):
        session.submit(TD(executable="/bin/true"), pilot=pilot)


def test_a_job_canceled_before_its_agent_connected_fails_its_pilot(session: pf.Session) -> None:
    pilot = session.start_pilot(batch(nodes=1, batch_directives=["--begin=now+1hour"]))
    task = session.submit(TD(executable="/bin/true"))
    subprocess.run(["scancel", pilot.job_id or ""], check=True)  # (an operator, say)
    assert pilot.stopped.wait(15)
    assert pilot.state == "FAILED"
    assert pilot.reason == f"its batch job {pilot.job_id} was canceled"
    assert session.wait([task], timeout=5) and task.state is pf.TaskState.FAILED
    assert task.error == pilot.reason


def test_the_runtime_is_the_time_limit_and_the_agent_ends_first(session: pf.Session) -> None:
    pilot = session.start_pilot(batch(nodes=1, runtime=8))
    long = session.submit(TD(executable="/bin/sleep", arguments=["100"]))
    assert pilot.wait_active(WAIT), pilot.reason
    limit = subprocess.run(["squeue", "-h", "-j", pilot.job_id or "", "-o", "%l"],
                           capture_output=True, text=True).stdout.strip()
    assert limit == "1:00"  # 8 s, as Slurm keeps it: in whole minutes
    t0 = time.monotonic()
    assert pilot.stopped.wait(30)
    took = time.monotonic() - t0
    reason = "pilot runtime of 8 s exceeded (the job's time limit)"
    assert pilot.state == "DONE" and pilot.reason == reason
    assert long.state is pf.TaskState.FAILED and long.error == f"pilot stopped: {reason}"
    assert took < 8  # the margin: 5% (0.4 s) before the limit, counted from the agent's start
    deadline = time.monotonic() + 10
    while job_state(pilot.job_id or "") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert final_state(pilot.job_id or "") == "COMPLETED"  # not TIMEOUT: Slurm killed nothing


def test_closing_the_session_cancels_its_jobs(session: pf.Session) -> None:
    running = session.start_pilot(batch(nodes=1))
    pending = session.start_pilot(batch(nodes=1, batch_directives=["--begin=now+1hour"]))
    busy = session.submit(TD(executable="/bin/sleep", arguments=["100"]), pilot=running)
    waiting = session.submit(TD(executable="/bin/true"), pilot=pending)
    assert running.wait_active(WAIT), running.reason
    assert session.wait_for([busy], pf.TaskState.RUNNING, timeout=30)
    jobs = [running.job_id or "", pending.job_id or ""]
    session.close()
    assert (running.state, pending.state) == ("DONE", "CANCELED")
    assert busy.state is pf.TaskState.CANCELED and "session closed" in (busy.error or "")
    assert waiting.state is pf.TaskState.CANCELED
    assert [job_state(j) for j in jobs] == ["", ""]


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command in `cwd` (its jobs' working directory); past WAIT, interrupt it as
    Ctrl-C would (its session closes, canceling its jobs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


DEMO = [sys.executable, "-m", "pilotfish.cli", "run", "--platform", "slurm-local", "--tasks",
        "200", "--sessions"]


def test_pilotfish_run_on_slurm_local_runs_the_demo_as_a_batch_pilot(tmp_path: Path) -> None:
    out = run_cli([*DEMO, str(tmp_path), "--nodes", "2"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "batch job" in out.stdout and "(batch, job " in out.stdout
    assert "tasks: 200 DONE, 0 FAILED, 0 CANCELED" in out.stdout


def test_pilotfish_run_on_slurm_local_in_an_allocation_uses_it(tmp_path: Path) -> None:
    out = run_cli(["salloc", "-N4", "--exclusive", "--gpus-per-node=4", *DEMO, str(tmp_path)],
                  tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(allocation, on node1,node2,node3,node4): 4 node(s)" in out.stdout
    assert "tasks: 200 DONE, 0 FAILED, 0 CANCELED" in out.stdout
