"""A session's files: the owner's only (directories 0700, files 0600), and their tails.

Modes are asked for when a file or directory is made (`os.open`, `mkdir`), so a stricter
umask still applies; nothing is made first and narrowed later.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE, DIR_MODE = 0o600, 0o700
TAIL_BYTES = 4096  # what a task keeps of its stdout and stderr


def private(path: str, flags: int) -> int:
    """An `opener` for `open()`: new files are the owner's only."""
    return os.open(path, flags, FILE_MODE)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make a directory (and its missing parents) the owner's only; return it."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def read_tail(path: str) -> str | None:
    """The last TAIL_BYTES of an output file another runtime wrote (None: empty, absent)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            return f.read().decode(errors="replace") or None
    except OSError:
        return None
