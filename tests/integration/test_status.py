"""`pilotfish status` and `pilotfish sessions`: read from the journal, while a session runs
and after it ended, as another terminal would."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

import pilotfish as pf
from pilotfish.cli import main
from pilotfish.status import read_status, watch

TD = pf.TaskDescription


def test_status_of_a_running_then_ended_session(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    session = pf.Session(path=tmp_path)
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=4))
    quick = session.submit([TD(executable="/bin/true") for _ in range(3)])
    assert session.wait(quick, timeout=30)
    slow = session.submit(TD(executable="/bin/sleep", arguments=["30"]))
    assert session.wait_for([slow], pf.TaskState.RUNNING, timeout=30)
    session.journal.flush()
    live = read_status(session.path)
    assert live.client_running and not live.ended
    assert live.counts == {"queued": 0, "scheduled": 0, "running": 1, "DONE": 3,
                           "FAILED": 0, "CANCELED": 0}
    assert [(p.uid, p.state) for p in live.pilots] == [("pilot.0000", "ACTIVE")]
    assert "builtin (1 nodes, builtin)" in live.pilots[0].partitions

    # --watch refreshes until the session ends (here: closed from another thread).
    threading.Timer(1.0, session.close).start()
    out = io.StringIO()
    started = time.monotonic()
    last = watch(session.path, 0.2, Console(file=out, width=100), timeout=30)
    assert last.ended and time.monotonic() - started < 20
    assert last.counts["CANCELED"] == 1 and slow.state is pf.TaskState.CANCELED
    assert "pilot.0000" in out.getvalue()

    assert main(["status", str(session.path)]) == 0
    shown = capsys.readouterr().out
    assert session.uid in shown and "ended" in shown and "DONE" in shown
    assert main(["sessions", "--sessions", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert session.uid in listed and "ended" in listed
    assert main(["status", "--sessions", str(tmp_path / "none")]) == 2
    assert "no sessions in" in capsys.readouterr().err
