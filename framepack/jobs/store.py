"""SQLite persistence of jobs: one table, one row per job. An update writes only what a run changes: the request
(which can hold megabytes of base64 images), plan, summary, creation time and the digests of the image files the
request names (see `framepack.jobs.prepare`; no face sees them) are written once, at insert.

The store knows nothing about running jobs; the `JobManager` is the only writer. `seq` is a monotonic insertion
number that gives the FIFO order of the queue (timestamps can tie or go backwards).

Operators: opening checks the file (`PRAGMA quick_check`) and refuses a damaged one with one line that says what to
do; it logs whether the database was created, found empty (0 bytes) or opened with jobs. `close()` checkpoints the
write-ahead log into the file, so after a clean shutdown `jobs.db` alone holds every job.
"""

from __future__ import annotations

import json
import logging
import shlex
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from framepack.errors import UserError
from framepack.jobs.models import Job, JobErrorInfo, JobProgress, JobState

logger = logging.getLogger(__name__)

STORE_FILE = "jobs.db"  # the database's name in a data folder

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    state TEXT NOT NULL,
    request_json TEXT NOT NULL,
    plan_json TEXT,
    summary TEXT,
    progress_json TEXT NOT NULL,
    outputs_json TEXT NOT NULL,
    timings_json TEXT NOT NULL,
    error_json TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    resumed_sections INTEGER NOT NULL DEFAULT 0,
    image_digests_json TEXT
)
"""
# Columns added after the first release, with their definition: a database made before them gets them on open.
ADDED_COLUMNS = {"image_digests_json": "TEXT"}

FIXED_COLUMNS = ("request_json", "plan_json", "summary", "created_at", "image_digests_json")
CHANGING_COLUMNS = (
    "state", "progress_json", "outputs_json", "timings_json", "error_json", "started_at", "finished_at",
    "resumed_sections",
)  # fmt: skip
_COLUMNS = FIXED_COLUMNS + CHANGING_COLUMNS
INSERT = (
    f"INSERT INTO jobs (id, seq, {', '.join(_COLUMNS)}) "
    f"VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), {', '.join('?' * len(_COLUMNS))})"
)
UPDATE = f"UPDATE jobs SET {', '.join(f'{column} = ?' for column in CHANGING_COLUMNS)} WHERE id = ?"


def _fixed_values(job: Job, image_digests: Mapping[str, str]) -> tuple:
    """The values in `FIXED_COLUMNS` order."""
    return (
        json.dumps(job.request),
        json.dumps(job.plan) if job.plan is not None else None,
        job.summary,
        job.created_at,
        json.dumps(dict(image_digests)),
    )


def _changing_values(job: Job) -> tuple:
    """The values in `CHANGING_COLUMNS` order."""
    return (
        job.state.value,
        job.progress.model_dump_json(),
        json.dumps(job.outputs),
        json.dumps(job.timings),
        job.error.model_dump_json() if job.error is not None else None,
        job.started_at,
        job.finished_at,
        job.resumed_sections,
    )


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        request=json.loads(row["request_json"]),
        plan=json.loads(row["plan_json"]) if row["plan_json"] is not None else None,
        summary=row["summary"],
        progress=JobProgress.model_validate_json(row["progress_json"]),
        outputs=json.loads(row["outputs_json"]),
        timings=json.loads(row["timings_json"]),
        error=JobErrorInfo.model_validate_json(row["error_json"]) if row["error_json"] is not None else None,
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        resumed_sections=row["resumed_sections"],
    )


class StoreError(UserError):
    """The job database cannot be opened (a permission, a folder in its place...)."""


class CorruptStore(StoreError):
    """The job database is damaged or not a SQLite file: one line naming it, the `mv` that moves it aside (with its
    write-ahead log) and the other choice, restoring a backup."""

    def __init__(self, path: Path, reason: str):
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        moves = [f"mv {shlex.quote(str(path))} {shlex.quote(str(aside))}"]
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            moves.append(f"mv {shlex.quote(str(wal))} {shlex.quote(str(aside) + '-wal')}")
        super().__init__(
            f"{path} is not a usable job database ({reason}). Either move it aside and start with an empty queue: "
            f"{' && '.join(moves)} -- or move it aside and copy a backup (from `python -m framepack jobs backup`) "
            f"to {path}; then start again."
        )
        self.path, self.reason, self.move_aside = path, reason, " && ".join(moves)


def quick_check(db: sqlite3.Connection) -> str | None:
    """What PRAGMA quick_check (about 0.1 s per 100 MB) finds wrong, in one short line; None when nothing.
    Unreadable files raise instead (DatabaseError)."""
    rows = [str(row[0]) for row in db.execute("PRAGMA quick_check").fetchall()]
    if rows == ["ok"]:
        return None
    lines = [line for row in rows for line in row.splitlines() if line.strip() and not line.startswith("***")]
    return f"quick_check: {lines[0][:200] if lines else 'failed'}"


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """SQLITE_CORRUPT ("database disk image is malformed") and SQLITE_NOTADB ("file is not a database") raise the
    base DatabaseError; locks, I/O and permissions raise its subclass OperationalError."""
    return type(error) is sqlite3.DatabaseError


class JobStore:
    """Jobs in one SQLite file (WAL mode), safe to use from several threads of one process.

    Raises CorruptStore for a damaged file and StoreError for one that cannot be opened (one line each).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.is_file() else None
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open the job database {self.path}: {error}") from None
        self._db.row_factory = sqlite3.Row
        try:
            with self._lock:
                damage = quick_check(self._db)  # before anything writes (journal_mode would)
                if damage is None:
                    self._db.execute("PRAGMA journal_mode=WAL")
                    self._db.execute("PRAGMA synchronous=NORMAL")
                    self._db.execute(SCHEMA)
                    self._add_columns()
                    counts = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                self._db.close()
                raise StoreError(f"cannot open the job database {self.path}: {error}") from None
            damage = str(error)
        if damage is not None:
            self._db.close()
            raise CorruptStore(self.path, damage)
        if size is None:
            logger.info("created the job database %s (an empty queue)", self.path)
        elif size == 0:
            logger.warning("%s is empty (0 bytes): starting an empty queue", self.path)
        else:
            states = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
            logger.info("opened the job database %s: %d jobs (%s)", self.path, sum(counts.values()), states or "none")

    def _add_columns(self) -> None:
        """Give a database made by an earlier version the columns added since (`ADDED_COLUMNS`)."""
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)").fetchall()}
        for column, definition in ADDED_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {definition}")

    def insert(self, job: Job, image_digests: Mapping[str, str] | None = None) -> None:
        """Add a new job at the end of the insertion order, with the digests of the image files its request names
        (`framepack.jobs.prepare.image_digests`)."""
        with self._lock:
            self._db.execute(INSERT, (job.id, *_fixed_values(job, image_digests or {}), *_changing_values(job)))

    def image_digests(self, job_id: str) -> dict[str, str] | None:
        """The image digests stored with the job; None for a job stored before they were kept."""
        with self._lock:
            row = self._db.execute("SELECT image_digests_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return json.loads(row[0]) if row is not None and row[0] is not None else None

    def update(self, job: Job) -> None:
        """Write what a run changes (state, progress, outputs, timings, error, times) of an existing job."""
        with self._lock:
            cursor = self._db.execute(UPDATE, (*_changing_values(job), job.id))
        if cursor.rowcount != 1:
            raise KeyError(f"no job {job.id} in {self.path}")

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row is not None else None

    def list(self) -> list[Job]:
        """Every job, oldest first."""
        return self._select("SELECT * FROM jobs ORDER BY seq")

    def queued(self) -> list[Job]:
        """Queued jobs in FIFO order."""
        return self._select("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (JobState.QUEUED.value,))

    def running(self) -> list[Job]:
        """Jobs marked running, oldest first (after a restart: jobs a killed process left behind)."""
        return self._select("SELECT * FROM jobs WHERE state = ? ORDER BY seq", (JobState.RUNNING.value,))

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database file and empty it; False when a reader kept it busy."""
        with self._lock:
            return self._checkpoint()

    def close(self) -> None:
        """Checkpoint (so the database file alone holds every job) and close; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._checkpoint()
            finally:
                self._db.close()

    def _checkpoint(self) -> bool:
        busy, _log_pages, _copied = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            logger.warning("%s: a reader kept the write-ahead log busy; the file alone may lack recent jobs", self.path)
        return not busy

    def _select(self, query: str, parameters: tuple = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(query, parameters).fetchall()
        return [_job(row) for row in rows]


class FolderLock:
    """One owner of a folder at a time, across processes: an exclusive lock on `<folder>/manager.lock` where the OS
    has flock (POSIX; not enforced elsewhere). Two job managers over one folder would both resume, and run, the
    same jobs, so the second one's `acquire()` raises RuntimeError naming the folder."""

    def __init__(self, folder: Path, owner: str):
        self.folder, self.owner = Path(folder), owner
        self._handle: IO[str] | None = None  # the open lock file while held

    def acquire(self) -> None:
        """Take the lock (nothing when this object holds it already)."""
        try:
            import fcntl
        except ImportError:  # Windows: not enforced
            return
        if self._handle is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.folder / "manager.lock", "a+")  # noqa: SIM115 (held open while the lock is held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RuntimeError(
                f"another {self.owner} (this or another process) is running over {self.folder}; "
                "only one may run jobs from a data folder"
            ) from None
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None
