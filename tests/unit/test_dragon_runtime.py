"""What pilotfish reads from a Dragon runtime's output, and what it removes after it."""

from __future__ import annotations

import mmap
import os

from pilotfish.backends.dragon.backend import abnormal_termination
from pilotfish.backends.dragon.janitor import remove_segments, shm_entries

# The end of a runtime's output when PMIx could not start (dragonhpc 0.15, recorded).
CRASH = """\
+++ Abnormal Termination of Dragon run-time with message:
ls main loop exception: Unable to initialize PMIx server for launch of MPI application
Traceback (most recent call last):
  File ".../dragon/localservices/server.py", line 1123, in run
    self.main_loop(ls_in)
RuntimeError: Unable to initialize PMIx server for launch of MPI application

warning: 6 leftover files in /dev/shm:
"""


def test_the_message_of_an_abnormal_termination_is_found() -> None:
    assert abnormal_termination("earlier output\n" + CRASH) == (
        "ls main loop exception: Unable to initialize PMIx server for launch of MPI "
        "application")


def test_no_message_without_an_abnormal_termination() -> None:
    assert abnormal_termination("") is None
    assert abnormal_termination("+++ head proc exited, code 0\n") is None
    assert abnormal_termination(CRASH.splitlines()[0]) is None  # cut off after the marker


def test_segments_a_crashed_runtime_left_are_removed_and_those_in_use_kept() -> None:
    before = shm_entries()
    names = [f"DDDpilotfish-test-{what}-{os.getpid()}" for what in ("left", "open", "mapped")]
    paths = [os.path.join("/dev/shm", name) for name in names]
    for path in paths:
        with open(path, "wb") as f:
            f.write(bytes(4096))
    held = open(paths[1], "rb")  # noqa: SIM115
    with open(paths[2], "r+b") as f:
        mapped = mmap.mmap(f.fileno(), 4096)
    try:
        remove_segments(launcher_pid=1, before=before)  # a runtime that made none of them
        assert [os.path.exists(path) for path in paths] == [False, True, True]
    finally:
        held.close()
        mapped.close()
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
