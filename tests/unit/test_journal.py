"""The journal's writer thread: a failed write is reported, never a hang.

(A flush or stop queued in the same batch as a failing write used to be skipped, so the
flush waited out its timeout; whether they share a batch depends on timing.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from pilotfish.journal import Journal


def test_a_failed_write_is_reported_at_flush_and_later_writes_still_land(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "session.db")
    journal.write("INSERT INTO session VALUES (?, ?)", [("a", "1", "one too many")])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="failed"):
        journal.flush(timeout=10)
    assert time.monotonic() - started < 5  # reported, not waited out
    journal.set_session(b="2")
    journal.close(timeout=10)  # the stop after a failure is not lost either
    db = sqlite3.connect(tmp_path / "session.db")
    assert dict(db.execute("SELECT key, value FROM session")) == {"b": "2"}
    db.close()
