"""A session only its owner can touch: its files are private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pilotfish as pf

TD = pf.TaskDescription


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_sessions_files_are_its_owners_only(tmp_path: Path) -> None:
    old = os.umask(0o022)  # a permissive umask, as on many login nodes
    try:
        with pf.Session(path=tmp_path) as session:
            pilot = session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
            task = session.submit(TD(executable="/bin/sh", arguments=["-c", "echo out; echo e >&2"],
                                     environment={"TOKEN": "secret"}))
            assert task.result(timeout=30) == 0
            session.journal.flush()
            root = session.path
            assert _mode(root) == 0o700
            for name in ("session.db", "session.db-wal"):
                assert _mode(root / name) == 0o600, name
            assert _mode(pilot.sandbox) == 0o700
            assert _mode(pilot.sandbox / "agent.log") == 0o600
            for suffix in (".out", ".err"):
                assert _mode(pilot.sandbox / "tasks" / f"{task.uid}{suffix}") == 0o600
        assert _mode(pilot.sandbox / "agent-stats.json") == 0o600
    finally:
        os.umask(old)
