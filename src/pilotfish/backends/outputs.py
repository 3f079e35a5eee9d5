"""A task's stdout/stderr file, created without a name until it is worth one.

Creating two named files per task is the dearest part of launching a short executable on
a disk file system (and a metadata storm on a parallel one). So the file is opened with
`O_TMPFILE` in the sandbox, handed to the task, and linked to `<sandbox>/<uid>.out` only
when the task ended having written something, or has been running `PUBLISH_AFTER`
seconds (so `tail -f` works on long tasks). A silent short task leaves no file at all.
Where `O_TMPFILE` is not supported, the file is named from the start.
"""

from __future__ import annotations

import os

PUBLISH_AFTER = 1.0  # seconds
_NAMED_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_CLOEXEC
_TMP_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


class OutputFile:
    __slots__ = ("fd", "named", "path")

    def __init__(self, directory: str, path: str) -> None:
        self.path = path
        self.named = False
        if hasattr(os, "O_TMPFILE"):
            try:
                self.fd = os.open(directory, _TMP_FLAGS, 0o644)
                return
            except OSError:
                pass  # not supported here: fall back to a named file
        self.fd = os.open(path, _NAMED_FLAGS, 0o644)
        self.named = True

    def publish(self) -> None:
        """Give the file its name (replacing an older file of that name)."""
        if self.named or self.fd < 0:
            return
        try:
            _link(self.fd, self.path)
        except FileExistsError:
            os.unlink(self.path)
            _link(self.fd, self.path)
        self.named = True

    def finish(self, tail_bytes: int) -> str:
        """Name the file if it has content, close it, and return its last `tail_bytes`."""
        size = os.fstat(self.fd).st_size
        tail = b""
        if size:
            self.publish()
            start = max(0, size - tail_bytes)
            tail = os.pread(self.fd, size - start, start)
        self.close()
        return tail.decode(errors="replace")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _link(fd: int, path: str) -> None:
    """linkat(2) with AT_SYMLINK_FOLLOW on /proc/self/fd/N: how an O_TMPFILE gets a name.

    (`os.link` only calls linkat, rather than link, when given a dir fd; the fd is
    ignored for absolute paths.)
    """
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", os.path.abspath(path), src_dir_fd=root,
                follow_symlinks=True)
    finally:
        os.close(root)
