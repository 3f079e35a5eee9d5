"""The journal's writer thread: a failed write is reported, never a hang, never silent.

(A flush or stop queued in the same batch as a failing write used to be skipped, so the
flush waited out its timeout; whether they share a batch depends on timing.)"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from pilotfish.cli import main
from pilotfish.journal import Journal, JournalError, UnreadableJournal, connect_readonly
from pilotfish.metrics import session_metrics


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


def _journal_with_tasks(path: Path, n: int = 3) -> Journal:
    journal = Journal(path / "session.db")
    journal.set_session(uid="s")
    journal.add_pilot("pilot.0000", "{}", 1, 2, 0, 1.0)
    journal.add_tasks([(i, f"task.{i:06d}", "pilot.0000", None, "executable", 1, 0.0, "{}",
                        1.0) for i in range(1, n + 1)])
    journal.flush()
    return journal


@pytest.mark.parametrize(("make", "says"), [
    (None, "no session journal at"),
    (b"", "is not a pilotfish journal (empty)"),
    (b"\x00garbage" * 100, "is not a readable pilotfish journal: file is not a database"),
    ("truncated", "is not a readable pilotfish journal"),
    ("foreign", "is not a pilotfish journal (its tables: other)"),
])
def test_a_report_on_what_is_no_journal_says_why_in_a_line(
        tmp_path: Path, make: bytes | str | None, says: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    where = tmp_path / "s"
    where.mkdir()
    db = where / "session.db"
    if isinstance(make, bytes):
        db.write_bytes(make)
    elif make == "truncated":
        _journal_with_tasks(tmp_path / "whole").close()
        db.write_bytes((tmp_path / "whole" / "session.db").read_bytes()[:3000])
    elif make == "foreign":
        other = sqlite3.connect(db)
        other.execute("CREATE TABLE other (x)")
        other.close()
    with pytest.raises(UnreadableJournal, match=re.escape(says)):
        connect_readonly(where)
    assert main(["report", str(where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pilotfish report: ") and says.split(" (")[0] in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("without_shm", [False, True])
def test_a_live_journal_it_cannot_write_to_is_read_whole(tmp_path: Path,
                                                         without_shm: bool) -> None:
    """A session still writing (its WAL holds the latest rows), seen through a read-only
    mount, as another user or a read-only file system sees it: read whole, left as is.
    Without its `-shm` file (which SQLite would have to create) it is read from a copy."""
    shared, view = tmp_path / "shared", tmp_path / "view"
    journal = _journal_with_tasks(shared, n=5)  # left open: its WAL is live
    if without_shm:
        (shared / "session.db-shm").unlink()
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(shared), str(view)],
                             capture_output=True, text=True) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        journal.close()
        pytest.skip("a read-only bind mount cannot be made here (needs root and mount)")
    try:
        (view / "probe").touch()
    except OSError:
        pass  # read-only indeed
    else:
        subprocess.run(["umount", "-l", str(view)], check=False)
        journal.close()
        pytest.skip("bind mounts are not read-only here")
    try:
        assert (shared / "session.db-wal").stat().st_size > 0
        files = [shared / "session.db", shared / "session.db-wal"]
        before = [p.read_bytes() for p in files]
        db = connect_readonly(view)
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 5
        db.close()
        assert session_metrics(view).n_tasks == 5
        assert [p.read_bytes() for p in files] == before
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
        journal.close()
