"""A task's stdout/stderr file, created without a name until it is worth one.

Creating two named files per task is the dearest part of launching a short executable on
a disk file system (and a metadata storm on a parallel one). So the file is opened with
`O_TMPFILE` in the sandbox, handed to the task, and linked to `<sandbox>/<uid>.out` once
it has content: checked when the task ends and every `PUBLISH_AFTER` seconds while it
runs (so `tail -f` works on long tasks). A silent task leaves no file at all, and its
still-empty unnamed file is reused for a later task: after warm-up, launching silent
tasks costs no file-system operation. Where `O_TMPFILE` is not supported, files are
named from the start.

(A detached daemon that a task left behind, outside its process group, and that writes
to its inherited stdout later, could write into a recycled file: kill your daemons.)
"""

from __future__ import annotations

import os

from ..files import FILE_MODE

PUBLISH_AFTER = 1.0  # seconds
POOL_LIMIT = 4096  # empty unnamed files kept for reuse, per directory
_NAMED_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC | os.O_CLOEXEC
_TMP_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | os.O_APPEND | os.O_CLOEXEC


class OutputFile:
    __slots__ = ("directory", "fd", "named", "path")

    def __init__(self, directory: str, path: str, fd: int, named: bool) -> None:
        self.directory, self.path, self.fd, self.named = directory, path, fd, named

    def publish_if_written(self) -> bool:
        """Name the file if it has content; True once it is named."""
        if not self.named and self.fd >= 0 and os.fstat(self.fd).st_size:
            self.publish()
        return self.named

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

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OutputFiles:
    """Opens output files, and recycles the unnamed ones that tasks left empty."""

    def __init__(self) -> None:
        self._free: dict[str, list[int]] = {}

    def open(self, directory: str, path: str) -> OutputFile:
        free = self._free.get(directory)
        if free:
            return OutputFile(directory, path, free.pop(), named=False)
        if hasattr(os, "O_TMPFILE"):
            try:
                return OutputFile(directory, path, os.open(directory, _TMP_FLAGS, FILE_MODE), False)
            except OSError:
                pass  # not supported on this file system: name it from the start
        return OutputFile(directory, path, os.open(path, _NAMED_FLAGS, FILE_MODE), named=True)

    def prefill(self, directory: str, count: int) -> None:
        """Make `count` unnamed files ahead, so that a first wave of tasks starts fast."""
        if not hasattr(os, "O_TMPFILE"):
            return
        free = self._free.setdefault(directory, [])
        try:
            while len(free) < min(count, POOL_LIMIT):
                free.append(os.open(directory, _TMP_FLAGS, FILE_MODE))
        except OSError:
            pass  # not supported here: files are made (named) per task instead

    def finish(self, output: OutputFile, tail_bytes: int) -> str:
        """Name the file if it has content, return its last `tail_bytes`, and let it go."""
        size = os.fstat(output.fd).st_size
        if size == 0 and not output.named:
            free = self._free.setdefault(output.directory, [])
            if len(free) < POOL_LIMIT:
                free.append(output.fd)
                output.fd = -1
                return ""
        tail = b""
        if size:
            output.publish()
            start = max(0, size - tail_bytes)
            tail = os.pread(output.fd, size - start, start)
        output.close()
        return tail.decode(errors="replace")

    def close(self) -> None:
        for fds in self._free.values():
            for fd in fds:
                os.close(fd)
        self._free.clear()


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
