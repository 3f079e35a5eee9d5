"""Pilots on the local Slurm cluster (../shared/slurm): every node of an allocation used.

The cluster's four nodes are this one host: they are told apart by `SLURMD_NODENAME`.
Each test runs a client inside `salloc`, as a user would, and reads what it printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ..conftest import process_gone

_UNUSABLE = ("down", "drain", "drng", "fail", "unk", "inval", "maint", "boot", "futr")


def slurm_problem(command: str = "salloc", busy_ok: bool = False) -> str | None:
    """None if the local cluster can take a 4-node job started with `command`, else why
    not. `busy_ok`: nodes busy with others' jobs count (the job may wait for them)."""
    if shutil.which(command) is None or shutil.which("sinfo") is None:
        return ("no Slurm here: start the local cluster with "
                "../shared/slurm/start-local-slurm.sh --with-mpi")
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%D %t"], capture_output=True, text=True,
                             timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    usable = sum(int(line.split()[0]) for line in out.stdout.splitlines()
                 if (not line.split()[1].rstrip("*~#!%$@^-").startswith(_UNUSABLE)
                     if busy_ok else line.split()[1] in ("idle", "mix")))
    return None if usable >= 4 else f"the local cluster has {usable} usable nodes, not 4"


_WHY = slurm_problem()
pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def in_allocation(tmp_path: Path, body: str, nodes: int = 4, *args: str,
                  timeout: float = 150) -> Any:
    """Run a client (`body`, with `session` open and `out` a dict to fill) inside `salloc
    -N nodes` and return the `out` it printed as JSON."""
    script = tmp_path / "client.py"
    script.write_text("import json, os, sys, time\nimport pilotfish as pf\n"
                      "TD = pf.TaskDescription\nout = {}\n"
                      f"session = pf.Session(path={str(tmp_path)!r})\n"
                      + textwrap.dedent(body)
                      + "\nsession.close()\nprint('RESULT ' + json.dumps(out), flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(["salloc", f"-N{nodes}", "--exclusive", "--gpus-per-node=4", *args,
                           sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    return json.loads(lines[-1].removeprefix("RESULT "))


SHOW = 'echo "$SLURMD_NODENAME $PILOTFISH_NODE $PILOTFISH_RANK ${CUDA_VISIBLE_DEVICES-unset}"'


def test_a_pilot_in_an_allocation_runs_on_every_node(tmp_path: Path) -> None:
    out = in_allocation(tmp_path, f"""
pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local"))
show = {SHOW!r}
# Each holding a whole node's cores: each on a node of its own, at once.
whole = session.submit([TD(executable="/bin/sh", arguments=["-c", show + "; sleep 1"],
                           cores_per_rank=16, gpus_per_rank=1) for _ in range(4)])
spread = session.submit(TD(executable="/bin/sh", arguments=["-c", show], ranks=4,
                           ranks_per_node=1))
pids = session.submit([TD(function=os.getpid) for _ in range(8)])
assert session.wait(timeout=60)
out["hosts"] = list(pilot.description.hosts)
out["whole"] = [t.stdout for t in whole]
out["spread"] = spread.stdout
out["errors"] = [t.error for t in [*whole, spread, *pids] if t.error]
out["pids"] = [t.result() for t in pids]
""")
    assert out["hosts"] == ["node1", "node2", "node3", "node4"]
    assert out["errors"] == []
    # Each task ran on the node the scheduler chose: PILOTFISH_NODE i is host i.
    seen = sorted(tuple(line.split()) for line in out["whole"])
    assert seen == [("node1", "0", "0", "0"), ("node2", "1", "0", "0"),
                    ("node3", "2", "0", "0"), ("node4", "3", "0", "0")]
    ranks = sorted(tuple(line.split()) for line in out["spread"].splitlines())
    assert ranks == [("node1", "0", "0"), ("node2", "1", "1"), ("node3", "2", "2"),
                     ("node4", "3", "3")]  # one rank a node, told it asked for no GPU
    assert len(set(out["pids"])) >= 1


def test_a_service_on_a_node_is_found_by_tasks_on_others(tmp_path: Path) -> None:
    """A server on one node of the allocation, READY once its port accepts, reached from
    tasks that name it, wherever they run (the local cluster's nodes are all this host:
    its platform says so, and the service's address is the loopback's)."""
    out = in_allocation(tmp_path, """
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
session.start_pilot(pf.PilotDescription(platform="slurm-local"))
import tempfile
empty = tempfile.mkdtemp(dir=session.path)  # (it serves nothing of the session)
server = session.submit(TD(executable=sys.executable, name="web", arguments=[
    "-m", "http.server", str(port), "--directory", empty],
    cores_per_rank=16, service=pf.Service(port=port, timeout=60)))
fetch = ("import os, urllib.request as u; "
         "print(u.urlopen('http://' + os.environ['PILOTFISH_SERVICE_WEB'] + '/').status)")
clients = session.submit([TD(executable=sys.executable, arguments=["-c", fetch],
                             cores_per_rank=16, after=[server]) for _ in range(3)])
assert session.wait(clients, timeout=90)
out["server"] = (server.state.value, server.address)
out["clients"] = [(t.state.value, t.stdout, t.error, t.placement) for t in clients]
server.cancel()
""")
    state, address = out["server"]
    assert state == "READY" and address.startswith("127.0.0.1:")
    nodes = {p[0][0] for *_, p in out["clients"]}
    assert len(nodes) == 3  # whole nodes, all but the server's
    assert [c[:3] for c in out["clients"]] == [["DONE", "200\n", None]] * 3  # (JSON)


FIND_EXECUTOR = """
def executors(host=None, module=b"pilotfish.backends.nodes.executor"):
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{name}/cmdline", "rb").read()
            env = open(f"/proc/{name}/environ", "rb").read().split(b"\\0")
        except OSError:
            continue
        if cmd.split(b"\\0")[1:3] == [b"-m", module] \\
                and str(session.path).encode() in cmd \\
                and (host is None or f"SLURMD_NODENAME={host}".encode() in env):
            found.append(int(name))
    return found
"""


def test_each_node_starts_the_function_workers_its_calls_go_to(tmp_path: Path) -> None:
    """A node's workers started with it are its own (the scheduler's w16, w17 on the
    second node, ...), so 64 calls on 4 x 16 cores use 64 workers, none idle."""
    out = in_allocation(tmp_path, FIND_EXECUTOR + """
import time as t
session.start_pilot(pf.PilotDescription(platform="slurm-local"))
calls = session.submit([TD(function=t.sleep, args=(0.5,)) for _ in range(64)])
assert session.wait(calls, timeout=60)
out["states"] = sorted({c.state.value for c in calls})
out["workers"] = {host: len(executors(host, b"pilotfish.backends.functions.worker"))
                  for host in ("node1", "node2", "node3", "node4")}
""")
    assert out["states"] == ["DONE"]
    assert out["workers"] == {f"node{k}": 16 for k in range(1, 5)}, out["workers"]


def test_a_node_whose_executor_dies_is_lost_and_the_others_go_on(tmp_path: Path) -> None:
    out = in_allocation(tmp_path, FIND_EXECUTOR + """
pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local", heartbeat_timeout=2))
whole_node = dict(cores_per_rank=16)  # one such task a node
long = session.submit([TD(executable="/bin/sleep", arguments=["60"], **whole_node)
                       for _ in range(4)])
session.wait_for(long, pf.TaskState.RUNNING, timeout=30)
(victim,) = executors("node3")
out["workers"] = executors("node3", b"pilotfish.backends.functions.worker")
os.kill(victim, 9)
deadline, ended = time.time() + 20, []
while time.time() < deadline and not ended:  # (each wait times out: they run 60 s)
    session.wait(long, timeout=0.2)
    ended = [t for t in long if t.done()]
out["ended"] = [(t.state.value, t.error) for t in ended]
out["running"] = sum(t.state is pf.TaskState.RUNNING for t in long)
session.cancel([t for t in long if not t.done()])
show = "echo $SLURMD_NODENAME"
after = session.submit([TD(executable="/bin/sh", arguments=["-c", show], **whole_node)
                        for _ in range(6)])
assert session.wait(after, timeout=60)
out["after"] = [(t.state.value, (t.stdout or "").strip(), t.error) for t in after]
""")
    assert len(out["ended"]) == 1 and out["running"] == 3  # that node's task only
    state, error = out["ended"][0]
    assert state == "FAILED" and "node node3 lost: its executor was silent" in error
    assert {s for s, _, _ in out["after"]} == {"DONE"}, out["after"]
    assert {host for _, host, _ in out["after"]} <= {"node1", "node2", "node4"}
    assert out["workers"], "the node's function workers start with it"
    for pid in out["workers"]:  # they end with their executor, even one still starting
        assert process_gone(pid, 5)


def test_the_agent_gone_takes_its_executors_with_it(tmp_path: Path) -> None:
    out = in_allocation(tmp_path, FIND_EXECUTOR + """
pilot = session.start_pilot(pf.PilotDescription(platform="slurm-local", heartbeat_timeout=2))
t = session.submit(TD(executable="/bin/sleep", arguments=["60"]))
session.wait_for([t], pf.TaskState.RUNNING, timeout=30)
out["executors"] = executors()
os.kill(pilot.process.pid, 9)
session.wait([t], timeout=30)
out["task"] = (t.state.value, t.error, t.pid)
""")
    assert len(out["executors"]) == 4
    assert out["task"][0] == "FAILED" and "agent lost" in out["task"][1]
    for pid in out["executors"]:
        assert process_gone(pid, 15)  # the agent silent: they end their tasks and exit
    assert process_gone(out["task"][2], 5)
