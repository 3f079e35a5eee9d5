"""A session's files are its owner's only: directories 0700, files 0600.

Modes are asked for when a file or directory is made (`os.open`, `mkdir`), so a stricter
umask still applies; nothing is made first and narrowed later.
"""

from __future__ import annotations

import os
from pathlib import Path

FILE_MODE, DIR_MODE = 0o600, 0o700


def private(path: str, flags: int) -> int:
    """An `opener` for `open()`: new files are the owner's only."""
    return os.open(path, flags, FILE_MODE)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make a directory (and its missing parents) the owner's only; return it."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path
