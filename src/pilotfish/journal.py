"""The session store: one SQLite file holding pilots, tasks and every timestamped event.

Writes are batched by one writer thread (many rows per transaction), so the client's hot
path only appends to a queue. Schema:

- `session(key, value)`: session id, creation time, pilotfish version.
- `pilots(uid, description, nodes, cores_per_node, gpus_per_node, started, ready,
  stopped, state, error)`: times are Unix seconds.
- `tasks(id, uid, pilot, name, kind, cores, gpus, description, state, exit_code,
  error, NEW, SUBMITTED, SCHEDULED, RUNNING, exec_stop, final)`: `description` is the
  task's JSON wire form (a function's pickled arguments only up to 4 KiB:
  `session.JOURNAL_ARGS_MAX`); `cores`/`gpus` are its totals. The last six columns are the
  times of the lifecycle events, written when the task ends (NEW at submit): NEW (client
  submit), SUBMITTED (agent accepted), SCHEDULED (placed), RUNNING (execution starts),
  `exec_stop` (execution ends), and `final`, when the client learned its final state.
- `events(task, event, ts)`: `task` is `tasks.id`; every other event (`launch`: the agent
  starts spawning; `cancel_requested`; a lifecycle event that happened twice).
- Views `all_events(task, event, ts)` (both together, the final one named by the
  task's state) and `task_events(uid, event, ts)`.
- `functions(key, blob)`: each pickled function once.
- `input_groups(name, tasks)`: the `after` list many tasks of one submit share (a JSON
  list of uids), once; those tasks' descriptions name the group instead
  (`Submit.groups`).

One row per task and one UPDATE when it ends, rather than a row per event, keeps the
journal's cost per task low (it was a third of the client's work).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .files import FILE_MODE, private_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS session (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS pilots (
    uid TEXT PRIMARY KEY, description TEXT, nodes INTEGER, cores_per_node INTEGER,
    gpus_per_node INTEGER, started REAL, ready REAL, stopped REAL, state TEXT, error TEXT);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY, uid TEXT UNIQUE NOT NULL, pilot TEXT, name TEXT, kind TEXT,
    cores INTEGER, gpus REAL, description TEXT, state TEXT, exit_code INTEGER, error TEXT,
    NEW REAL, SUBMITTED REAL, SCHEDULED REAL, RUNNING REAL, exec_stop REAL, final REAL,
    partition TEXT, placement TEXT);
CREATE TABLE IF NOT EXISTS partitions (
    pilot TEXT, name TEXT, backend TEXT, first INTEGER, nodes INTEGER);
CREATE TABLE IF NOT EXISTS events (task INTEGER NOT NULL, event TEXT NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS functions (key TEXT PRIMARY KEY, blob BLOB);
CREATE TABLE IF NOT EXISTS input_groups (name TEXT PRIMARY KEY, tasks TEXT);
CREATE VIEW IF NOT EXISTS all_events AS
    SELECT id AS task, 'NEW' AS event, NEW AS ts FROM tasks WHERE NEW IS NOT NULL
    UNION ALL SELECT id, 'SUBMITTED', SUBMITTED FROM tasks WHERE SUBMITTED IS NOT NULL
    UNION ALL SELECT id, 'SCHEDULED', SCHEDULED FROM tasks WHERE SCHEDULED IS NOT NULL
    UNION ALL SELECT id, 'RUNNING', RUNNING FROM tasks WHERE RUNNING IS NOT NULL
    UNION ALL SELECT id, 'exec_stop', exec_stop FROM tasks WHERE exec_stop IS NOT NULL
    UNION ALL SELECT id, state, final FROM tasks WHERE final IS NOT NULL
    UNION ALL SELECT task, event, ts FROM events;
CREATE VIEW IF NOT EXISTS task_events AS
    SELECT tasks.uid AS uid, e.event AS event, e.ts AS ts
    FROM all_events AS e JOIN tasks ON tasks.id = e.task;
"""

# The lifecycle events kept as columns of `tasks`, in order (the last is the final state).
LIFECYCLE = ("SUBMITTED", "SCHEDULED", "RUNNING", "exec_stop")

_STOP = object()
log = logging.getLogger(__name__)


class _Mark:
    """A `mark` in the writer's queue."""

    __slots__ = ("key", "value")

    def __init__(self, key: str, value: int) -> None:
        self.key, self.value = key, value


class JournalError(RuntimeError):
    """Writes to the session's journal failed: what it holds is incomplete (the reason and
    how many writes were lost are in the message)."""


class Journal:
    """Append-only writer for one session's SQLite file (thread-safe, batched)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        private_dir(self.path.parent)
        # The owner's only (SQLite gives its -wal and -shm files the database's mode).
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, FILE_MODE))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._error: BaseException | None = None  # the first failure not yet reported
        self.lost = 0  # writes (statements x rows) that failed and are not in the file
        self.committed: dict[str, int] = {}  # marks (`mark`) that the file holds
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
        if "placement" not in columns:  # a session journaled before placements were
            db.execute("ALTER TABLE tasks ADD COLUMN placement TEXT")
        self._db = db
        self._thread = threading.Thread(target=self._run, name="pilotfish-journal", daemon=True)
        self._thread.start()

    # ---- writes (queued) --------------------------------------------------------------

    def write(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._queue.put((sql, rows))

    def set_session(self, **values: Any) -> None:
        self.write("INSERT OR REPLACE INTO session VALUES (?, ?)",
                   [(k, str(v)) for k, v in values.items()])

    def add_pilot(self, uid: str, description: str, nodes: int, cores: int, gpus: int,
                  started: float) -> None:
        self.write("INSERT INTO pilots (uid, description, nodes, cores_per_node, gpus_per_node,"
                   " started, state) VALUES (?, ?, ?, ?, ?, ?, 'STARTING')",
                   [(uid, description, nodes, cores, gpus, started)])

    def add_partitions(self, pilot: str, rows: Iterable[tuple[str, str, int, int]]) -> None:
        """A pilot's partitions: (name, backend, first node, nodes)."""
        self.write("INSERT INTO partitions VALUES (?, ?, ?, ?, ?)",
                   [(pilot, *row) for row in rows])

    def update_pilot(self, uid: str, **columns: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in columns)
        self.write(f"UPDATE pilots SET {names} WHERE uid = ?", [(*columns.values(), uid)])

    def add_tasks(self, rows: Sequence[tuple[int, str, str, str | None, str, int, float, str,
                                             float]]) -> None:
        """Rows of (id, uid, pilot, name, kind, cores, gpus, description JSON, NEW time)."""
        self.write("INSERT INTO tasks (id, uid, pilot, name, kind, cores, gpus, description,"
                   " NEW, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'NEW')", rows)

    def move_tasks(self, rows: Sequence[tuple[str, int]]) -> None:
        """Rows of (pilot, id) of tasks moved to another pilot before they were placed."""
        self.write("UPDATE tasks SET pilot = ? WHERE id = ?", rows)

    def add_events(self, rows: Sequence[tuple[int, str, float]]) -> None:
        self.write("INSERT INTO events VALUES (?, ?, ?)", rows)

    def progress_tasks(self, rows: Sequence[tuple[str, int]]) -> None:
        """Rows of (state, id) of tasks that moved on without ending (a task that ends
        quickly is journaled only when it ends)."""
        self.write("UPDATE tasks SET state = ? WHERE id = ?", rows)

    def finish_tasks(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows of (state, exit_code, error, SUBMITTED, SCHEDULED, RUNNING, exec_stop,
        final, partition, placement JSON, id) for tasks that reached a final state;
        unknowns are None."""
        self.write("UPDATE tasks SET state = ?, exit_code = ?, error = ?, SUBMITTED = ?,"
                   " SCHEDULED = ?, RUNNING = ?, exec_stop = ?, final = ?, partition = ?,"
                   " placement = ? WHERE id = ?", rows)

    def add_functions(self, items: Iterable[tuple[str, bytes]]) -> None:
        self.write("INSERT OR IGNORE INTO functions VALUES (?, ?)", list(items))

    def add_input_groups(self, items: Iterable[tuple[str, str]]) -> None:
        """(name, JSON list of task uids) of each input group."""
        self.write("INSERT OR IGNORE INTO input_groups VALUES (?, ?)", list(items))

    def mark(self, key: str, value: int) -> None:
        """Set `committed[key] = value` once everything written before is in the file (or
        lost with a failed write, which is reported): e.g. the last update batch of a
        pilot that the journal holds, which the agent may then forget."""
        self._queue.put(_Mark(key, value))

    # ---- control ----------------------------------------------------------------------

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything queued so far is committed."""
        if not self._thread.is_alive():  # closed: everything was committed then
            return
        done = threading.Event()
        self._queue.put(done)
        if not done.wait(timeout):
            raise TimeoutError(f"journal {self.path} did not flush within {timeout} s")
        self.check()

    def check(self) -> None:
        """Raise `JournalError` once for writes that failed since the last check."""
        error, self._error = self._error, None
        if error is not None:
            raise JournalError(f"journal {self.path}: {self.lost} write(s) lost so far; "
                               f"the first: {error}") from error

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued and close; `JournalError` if writes were lost."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"journal {self.path} did not close within {timeout} s")
            self._db.close()
        self.check()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            # Control items first: a write that fails must not swallow a flush or a stop.
            waiters = [op for op in batch if isinstance(op, threading.Event)]
            stop = any(op is _STOP for op in batch)
            writes = [op for op in batch if isinstance(op, tuple)]
            if not self._commit(writes):  # one bad row must not take its batch with it
                for op in writes:
                    if not self._commit([op]):
                        self.lost += len(op[1])
            for op in batch:
                if type(op) is _Mark:
                    self.committed[op.key] = op.value
            for waiter in waiters:
                waiter.set()

    def _commit(self, writes: list[tuple[str, Sequence[Sequence[Any]]]]) -> bool:
        try:
            self._db.execute("BEGIN")
            for sql, rows in writes:
                self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
            return True
        except Exception as exc:  # keep the thread alive: reported at the next check
            if self._error is None:
                self._error = exc
                log.error("journal %s: a write failed (%s); the session reports it at its "
                          "next submit, wait or close", self.path, exc)
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            return False


class UnreadableJournal(ValueError):
    """A path that holds no readable pilotfish journal; the message says why, in a line."""


def connect_readonly(session_dir: str | Path) -> sqlite3.Connection:
    """Open a session's journal for reading (metrics, reports), never writing to it.

    A journal in WAL mode needs its `-shm` file writable even to be read; where it is not
    (another user's session, a read-only file system), the journal and its WAL are read
    from a private copy. A missing, empty, truncated, corrupt or foreign file raises
    `UnreadableJournal` saying which.
    """
    path = Path(session_dir)
    if path.is_dir():
        path = path / "session.db"
    if not path.is_file():
        raise UnreadableJournal(f"no session journal at {path}")
    try:
        return _checked(sqlite3.connect(f"file:{path}?mode=ro", uri=True), path)
    except sqlite3.OperationalError:  # e.g. "unable to open database file": its -shm
        pass
    except sqlite3.DatabaseError as exc:
        raise UnreadableJournal(f"{path} is not a readable pilotfish journal: {exc}") from None
    return _read_copy(path)


def _read_copy(path: Path) -> sqlite3.Connection:
    """The journal read from a private copy of it and its WAL (in memory)."""
    with tempfile.TemporaryDirectory(prefix="pilotfish-journal-") as tmp:
        copy = Path(tmp) / "session.db"
        try:
            shutil.copyfile(path, copy)
            wal = path.with_name(path.name + "-wal")
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            db = sqlite3.connect(copy)
            memory = sqlite3.connect(":memory:")
            db.backup(memory)  # the WAL's contents included
            db.close()
        except (OSError, sqlite3.Error) as exc:
            raise UnreadableJournal(f"{path} cannot be read: {exc}") from None
    return _checked(memory, path)


def _checked(db: sqlite3.Connection, path: Path) -> sqlite3.Connection:
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.OperationalError:
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        raise UnreadableJournal(f"{path} is not a readable pilotfish journal: {exc}") from None
    if not {"session", "pilots", "tasks"} <= tables:
        db.close()
        raise UnreadableJournal(f"{path} is not a pilotfish journal (" + (
            "empty" if not tables else f"its tables: {', '.join(sorted(tables))}") + ")")
    db.row_factory = sqlite3.Row
    return db


def now() -> float:
    return time.time()
