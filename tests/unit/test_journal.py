"""The journal's writer thread: a failed write is reported, never a hang, never silent.

(A flush or stop queued in the same batch as a failing write used to be skipped, so the
flush waited out its timeout; whether they share a batch depends on timing.)"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from pilotfish.journal import Journal, JournalError


def test_a_failed_write_is_reported_at_flush_and_later_writes_still_land(
        tmp_path: Path) -> None:
    journal = Journal(tmp_path / "session.db")
    journal.write("INSERT INTO session VALUES (?, ?)", [("a", "1", "one too many")])
    started = time.monotonic()
    with pytest.raises(JournalError, match="1 write"):
        journal.flush(timeout=10)
    assert time.monotonic() - started < 5  # reported, not waited out
    journal.set_session(b="2")
    journal.close(timeout=10)  # the stop after a failure is not lost either
    db = sqlite3.connect(tmp_path / "session.db")
    assert dict(db.execute("SELECT key, value FROM session")) == {"b": "2"}
    db.close()


def test_a_bad_write_does_not_take_the_rest_of_its_batch_with_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "session.db")
    journal.set_session(before="1")
    journal.write("INSERT INTO session VALUES (?, ?)", [("a", "1", "one too many")])
    journal.set_session(after="2")
    with pytest.raises(JournalError, match="Incorrect number of bindings"):
        journal.close(timeout=10)  # close reports what was lost, too
    assert journal.lost == 1
    db = sqlite3.connect(tmp_path / "session.db")
    assert dict(db.execute("SELECT key, value FROM session")) == {"before": "1", "after": "2"}
    db.close()


def test_a_full_disk_is_raised_to_the_user_with_the_reason(tiny_disk: Path) -> None:
    journal = Journal(tiny_disk / "session.db")
    rows = [(i, f"task.{i:06d}", "pilot.0000", None, "executable", 1, 0.0, "x" * 200, 0.0)
            for i in range(5000)]  # about 1.5 MB: far more than the disk
    journal.add_tasks(rows)
    with pytest.raises(JournalError, match="full"):
        journal.flush(timeout=30)
    assert journal.lost > 0
    journal.flush(timeout=30)  # reported once: the user may go on (and is told again)
    journal.add_tasks([(i + 5000, *row[1:]) for i, row in enumerate(rows)])
    with pytest.raises(JournalError, match="full"):
        journal.close(timeout=30)
