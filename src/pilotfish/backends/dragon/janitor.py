"""Dragon's `/dev/shm` segments: which belong to a runtime, and removing what it left.

Dragon names a runtime's segments after its launcher's pid and leaves them behind when it
is killed; its own clean-up tool would remove every segment of the user (other
partitions' and other sessions' too), so pilotfish removes only what it can prove is its
own: new since the runtime started, named after it, or unused by any process.
"""

from __future__ import annotations

import os


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def segments_of(launcher_pid: int, before: set[str]) -> list[str]:
    """The `/dev/shm` segments of the runtime started by `launcher_pid`.

    Dragon names them DD<launcher pid mod 1000, 4 digits>...; only those that appeared
    since `before` are this runtime's (others may be another partition's).
    """
    prefix = f"DD{launcher_pid % 1000:04d}"
    return sorted(name for name in shm_entries() - before if name.startswith(prefix))


def remove_segments(launcher_pid: int, before: set[str]) -> None:
    """Remove a stopped runtime's segments, and Dragon segments that appeared while it
    ran and that no process maps any more: a runtime that crashes can leave some not
    named after it (e.g. `DDD6zu3c9yj2e_0429423430D` where PMIx could not start), and a
    live runtime maps all of its own."""
    _unlink(segments_of(launcher_pid, before))
    new = {name for name in shm_entries() - before if name.startswith("DD") and _ours(name)}
    _unlink(sorted(new - _in_use(new)))


def _ours(name: str) -> bool:
    try:
        return os.stat(os.path.join("/dev/shm", name)).st_uid == os.getuid()
    except OSError:
        return False


def _in_use(names: set[str]) -> set[str]:
    """Those of these `/dev/shm` entries that some process maps or holds open."""
    if not names:
        return set()  # (no need to read every process's maps)
    wanted = {os.path.join("/dev/shm", name): name for name in names}
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                paths = [line.partition(" /dev/shm/")[2].rstrip("\n") for line in f]
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue  # it ended (or is not ours: then neither are its segments)
        for path in paths:
            if path:
                found.add("/dev/shm/" + path.removesuffix(" (deleted)"))
        for fd in fds:
            try:
                found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass  # closed meanwhile
    return {name for path, name in wanted.items() if path in found}


def _unlink(names: list[str]) -> None:
    for name in names:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass


def remove_listed_segments(sandbox: str | os.PathLike[str]) -> None:
    """Remove the segments that the Dragon runtimes of a pilot whose agent died had made
    (listed in its sandbox once each runtime was up: Dragon makes them as it starts)."""
    try:
        entries = list(os.scandir(sandbox))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("dragon-") and entry.name.endswith(".segments"):
            with open(entry.path) as f:
                _unlink([name for name in f.read().split() if name.startswith("DD")])
            os.unlink(entry.path)
