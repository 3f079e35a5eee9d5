"""A session only its owner can touch: its files are private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import zmq

import pilotfish as pf
from pilotfish.keys import Keys

TD = pf.TaskDescription


def _mode(path: Path | str) -> int:
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


def _cmdlines() -> dict[int, str]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    found[int(name)] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                pass
    return found


def test_a_peer_without_the_keys_gets_nothing_and_changes_nothing(session: pf.Session) -> None:
    """As the attacker did before: read a worker's address off its command line (anyone
    can), connect under its identity, and listen for the next tasks' code and arguments."""
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=1))
    assert session.submit(TD(function=pow, args=(2, 3))).result(timeout=30) == 8
    worker = next(cmd for cmd in _cmdlines().values()
                  if "pilotfish.backends.functions.worker" in cmd and str(session.path) in cmd)
    address = next(arg for arg in worker.split() if arg.startswith("tcp://"))
    thief = zmq.Context.instance().socket(zmq.DEALER)
    thief.setsockopt(zmq.IDENTITY, b"w0")
    thief.setsockopt(zmq.LINGER, 0)
    thief.connect(address)
    try:
        thief.send(b"anything")
        tasks = session.submit([TD(function=pow, args=(3, i)) for i in range(20)])
        assert [t.result(timeout=30) for t in tasks] == [3 ** i for i in range(20)]
        assert thief.poll(1000) == 0  # it received nothing
    finally:
        thief.close()


def test_no_key_is_ever_in_a_command_line(session: pf.Session) -> None:
    session.start_pilot(pf.PilotDescription(nodes=1, cores_per_node=2))
    assert session.submit(TD(function=pow, args=(2, 3))).result(timeout=30) == 8
    keys = Keys.load(session.keys_file)
    assert _mode(session.keys_file) == 0o600
    secrets = [k.decode() for k in (keys.server_secret, keys.client_secret,
                                    keys.server_public, keys.client_public)]
    ours = [cmd for cmd in _cmdlines().values() if str(session.path) in cmd]
    assert any("pilotfish.agent" in cmd for cmd in ours)
    assert any("functions.worker" in cmd for cmd in ours)
    assert not [cmd for cmd in ours if any(s in cmd for s in secrets)]
