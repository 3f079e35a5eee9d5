"""Shared fixtures: sessions in a temporary directory, and helpers to watch processes."""

from __future__ import annotations

import os
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import pilotfish as pf


@pytest.fixture
def session(tmp_path: Path) -> Iterator[pf.Session]:
    with pf.Session(path=tmp_path) as s:
        yield s


@pytest.fixture
def pilot(session: pf.Session) -> pf.Pilot:
    return session.start_pilot(pf.PilotDescription(nodes=2, cores_per_node=8, gpus_per_node=4))


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that fills up (needs root and mount; skipped elsewhere)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("a small tmpfs cannot be mounted here (needs root and mount): "
                    + (mounted.stderr.strip() if mounted else "not root"))
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def process_gone(pid: int, timeout: float) -> bool:
    """Wait (on a pidfd, no sleeping) until process `pid` has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready) or _zombie(pid)
    finally:
        os.close(fd)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _processes() -> Iterator[tuple[int, list[str], str]]:
    """(pid, the fields of /proc/PID/stat after the command name, command line) of every
    process that is still there when read."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        yield int(name), fields, cmdline


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of `pid`."""
    return [(p, cmdline) for p, fields, cmdline in _processes() if int(fields[1]) == pid]


def in_session(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes (not zombies) of process session `sid`:
    a local agent is a session leader, so this is everything it started that is left."""
    return [(p, cmdline) for p, fields, cmdline in _processes()
            if fields[0] not in ("Z", "X") and int(fields[3]) == sid]
