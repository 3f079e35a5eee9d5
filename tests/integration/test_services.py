"""Service tasks: READY once their check passes, waited for by the tasks naming them,
restarted per their retries, stopped when canceled or when their pilot ends."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

import pilotfish as pf

TD = pf.TaskDescription
READY, DONE, FAILED, CANCELED = (pf.TaskState.READY, pf.TaskState.DONE, pf.TaskState.FAILED,
                                 pf.TaskState.CANCELED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def names(task: pf.Task) -> list[str]:
    return [e for e, _ in task.events]


def test_a_server_is_ready_when_its_port_accepts_and_clients_find_it(
        session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    port = free_port()
    server = session.submit(TD(
        executable=sys.executable, name="web",
        arguments=["-c", f"import time, http.server as h; time.sleep(0.5); h.test("
                         f"h.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')"],
        service=pf.Service(port=port, timeout=30)))
    client = session.submit(TD(executable=sys.executable, after=[server], arguments=[
        "-c", "import os, urllib.request as u; a = os.environ['PILOTFISH_SERVICE_WEB'];"
              " print(a, u.urlopen(f'http://{a}/').status)"]))
    assert client.result(timeout=60) == 0
    assert client.stdout == f"127.0.0.1:{port} 200\n"
    assert server.state is READY and server.address == f"127.0.0.1:{port}"
    assert dict(server.events)["READY"] <= dict(client.events)["RUNNING"]
    assert session.wait(timeout=10)  # services are not waited for by default
    server.cancel()
    assert session.wait([server], timeout=10) and server.state is CANCELED
    assert names(server).count("RUNNING") == 1


def test_file_and_command_checks_and_a_service_that_never_gets_ready(
        session: pf.Session, tmp_path: Path) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    flag = tmp_path / "up"
    by_file = session.submit(TD(executable="/bin/sh", arguments=[
        "-c", f"sleep 0.3; touch {flag}; sleep 60"], service=pf.Service(file=str(flag))))
    by_command = session.submit(TD(executable="/bin/sleep", arguments=["60"],
                                   service=pf.Service(command=["test", "-e", str(flag)])))
    never = session.submit(TD(executable="/bin/sleep", arguments=["60"], service=pf.Service(
        file=str(tmp_path / "never"), timeout=0.5)))
    waiter = session.submit(TD(executable="/bin/true", after=[never]))
    assert session.wait_for([by_file, by_command], READY, timeout=30)
    assert session.wait([never, waiter], timeout=30)
    assert never.state is FAILED and "not ready within 0.5 s" in (never.error or "")
    assert waiter.state is FAILED and never.uid in (waiter.error or "")
    session.cancel([by_file, by_command])
    assert session.wait([by_file, by_command], timeout=10)


def test_a_service_that_dies_is_restarted_per_its_retries(session: pf.Session,
                                                           tmp_path: Path) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    runs = tmp_path / "runs"
    flaky = session.submit(TD(executable="/bin/sh", retries=2, arguments=[
        "-c", f"echo run >> {runs}; sleep 0.3; exit 3"], service=pf.Service(
            command=["true"])))
    assert session.wait([flaky], timeout=30)
    assert flaky.state is FAILED and flaky.attempt == 3  # its two retries, used
    assert runs.read_text().count("run") == 3
    assert names(flaky).count("READY") == 3


def test_bad_services_are_refused(session: pf.Session) -> None:
    with pytest.raises(ValueError, match="one readiness check"):
        TD(executable="/bin/true", service=pf.Service(port=1, file="/x"))
    with pytest.raises(ValueError, match="not a function"):
        TD(function=abs, args=(1,), service=pf.Service(port=80))
    with pytest.raises(TypeError, match="must be a pilotfish Service"):
        TD(executable="/bin/true", service={"port": 80})  # type: ignore[arg-type]
