"""SQLite persistence of jobs: one table, one row per job. An update writes only what a run changes: the request
(which can hold megabytes of base64 images), plan, summary, creation time and the digests of the image files the
request names (see `framepack.jobs.prepare`; no face sees them) are written once, at insert.

The store knows nothing about running jobs; the `JobManager` is the only writer. `seq` is a monotonic insertion
number that gives the FIFO order of the queue (timestamps can tie or go backwards); `queue_rank`, once the queue
was reordered, overrides it (queued jobs run in the order of `COALESCE(queue_rank, seq)`). A job's lease (`worker`,
`lease_expires_at`, `attempt`; see `framepack.jobs.manager`) is part of what a run changes. Beside the request the
store keeps its brief form (`framepack.jobs.models.brief_request`: images replaced by a note), so a listing
(`page`) never reads the images. A `settings` table holds the queue's own state (whether it is paused).

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
from framepack.jobs.models import ENDED_STATES, Job, JobErrorInfo, JobProgress, JobState, brief_request

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
    image_digests_json TEXT,
    request_brief_json TEXT,
    batch_id TEXT,
    queue_rank REAL,
    worker TEXT,
    lease_expires_at REAL,
    attempt INTEGER NOT NULL DEFAULT 0
)
"""
SETTINGS_SCHEMA = "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
INDEXES = (
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id)",
)
# Columns added after the first release, with their definition: a database made before them gets them on open.
ADDED_COLUMNS = {
    "image_digests_json": "TEXT",
    "request_brief_json": "TEXT",
    "batch_id": "TEXT",
    "queue_rank": "REAL",
    "worker": "TEXT",  # the lease: which worker runs the job (or ran it last),
    "lease_expires_at": "REAL",  # until when (renewed while it runs),
    "attempt": "INTEGER NOT NULL DEFAULT 0",  # and how many times a worker took it
}

FIXED_COLUMNS = (
    "request_json", "plan_json", "summary", "created_at", "image_digests_json", "request_brief_json", "batch_id",
)  # fmt: skip
CHANGING_COLUMNS = (
    "state", "progress_json", "outputs_json", "timings_json", "error_json", "started_at", "finished_at",
    "resumed_sections", "worker", "lease_expires_at", "attempt",
)  # fmt: skip
_COLUMNS = FIXED_COLUMNS + CHANGING_COLUMNS
INSERT = (
    f"INSERT INTO jobs (id, seq, {', '.join(_COLUMNS)}) "
    f"VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), {', '.join('?' * len(_COLUMNS))})"
)
# What a listing reads: every column but the request (its brief form stands in for it).
PAGE_COLUMNS = ("id", "state", "plan_json", "summary", "progress_json", "outputs_json", "timings_json", "error_json",
                "created_at", "started_at", "finished_at", "resumed_sections", "batch_id", "worker",
                "lease_expires_at", "attempt")  # fmt: skip
UPDATE = f"UPDATE jobs SET {', '.join(f'{column} = ?' for column in CHANGING_COLUMNS)} WHERE id = ?"


def _fixed_values(job: Job, image_digests: Mapping[str, str]) -> tuple:
    """The values in `FIXED_COLUMNS` order."""
    return (
        json.dumps(job.request),
        json.dumps(job.plan) if job.plan is not None else None,
        job.summary,
        job.created_at,
        json.dumps(dict(image_digests)),
        json.dumps(brief_request(job.request)),
        job.batch_id,
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
        job.worker,
        job.lease_expires_at,
        job.attempt,
    )


def _filters(states: tuple[JobState, ...] | None, batch_id: str | None) -> tuple[str, tuple]:
    """The WHERE clause (with its leading space, or empty) and parameters of a state and batch filter."""
    clauses, parameters = [], []
    if states is not None:
        clauses.append(f"state IN ({', '.join('?' * len(states))})" if states else "0")
        parameters += [JobState(state).value for state in states]
    if batch_id is not None:
        clauses.append("batch_id = ?")
        parameters.append(batch_id)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(parameters)


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
        batch_id=row["batch_id"],
        worker=row["worker"],
        lease_expires_at=row["lease_expires_at"],
        attempt=row["attempt"],
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
                    self._db.execute(SETTINGS_SCHEMA)
                    self._add_columns()
                    for index in INDEXES:
                        self._db.execute(index)
                    self._fill_briefs()
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

    def _fill_briefs(self) -> None:
        """Write the brief request of rows stored before briefs were kept (once per such database)."""
        rows = self._db.execute("SELECT id, request_json FROM jobs WHERE request_brief_json IS NULL").fetchall()
        if not rows:
            return
        self._db.execute("BEGIN")
        for row in rows:
            brief = json.dumps(brief_request(json.loads(row["request_json"])))
            self._db.execute("UPDATE jobs SET request_brief_json = ? WHERE id = ?", (brief, row["id"]))
        self._db.execute("COMMIT")
        logger.info("%s: kept the brief request of %d jobs stored before briefs were kept", self.path, len(rows))

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

    def insert_many(self, jobs: list[tuple[Job, Mapping[str, str]]]) -> None:
        """Add jobs (with their image digests) in one transaction: all of them or none."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for job, digests in jobs:
                    self._db.execute(INSERT, (job.id, *_fixed_values(job, digests), *_changing_values(job)))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def queued(self) -> list[Job]:
        """Queued jobs in queue order (insertion order unless the queue was reordered)."""
        return self._select(
            "SELECT * FROM jobs WHERE state = ? ORDER BY COALESCE(queue_rank, seq), seq", (JobState.QUEUED.value,)
        )

    def set_queue_order(self, job_ids: list[str]) -> None:
        """Persist the order of the queued jobs: `job_ids` run first to last."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE jobs SET queue_rank = ? WHERE id = ?", [(rank, job_id) for rank, job_id in enumerate(job_ids)]
            )
            self._db.execute("COMMIT")

    def page(
        self,
        states: tuple[JobState, ...] | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
        batch_id: str | None = None,
    ) -> list[Job]:
        """Jobs in `states` (all when None) of `batch_id` (any when None), by insertion order (newest first when
        asked), `offset` skipped and at most `limit`; their requests in brief form (no images are read)."""
        where, parameters = _filters(states, batch_id)
        columns = ", ".join(PAGE_COLUMNS)
        order = "DESC" if newest_first else "ASC"
        query = f"SELECT {columns}, request_brief_json AS request_json FROM jobs{where} ORDER BY seq {order}"
        query += " LIMIT ? OFFSET ?"
        return self._select(query, (*parameters, -1 if limit is None else limit, offset))

    def count(self, states: tuple[JobState, ...] | None = None, batch_id: str | None = None) -> int:
        """How many jobs are in `states` (all when None) of `batch_id` (any when None)."""
        where, parameters = _filters(states, batch_id)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs{where}", parameters).fetchone()[0]

    def expired(self, keep_jobs: int | None, ended_before: float | None) -> list[Job]:
        """Ended jobs beyond the newest `keep_jobs` ended ones, or that ended before `ended_before` (a time), in
        brief form, oldest first."""
        ended = tuple(state.value for state in ENDED_STATES)
        marks = ", ".join("?" * len(ended))
        columns = ", ".join(PAGE_COLUMNS)
        found: dict[str, Job] = {}
        select = f"SELECT {columns}, request_brief_json AS request_json FROM jobs WHERE state IN ({marks})"
        if keep_jobs is not None:
            query = f"{select} ORDER BY COALESCE(finished_at, created_at) DESC, seq DESC LIMIT -1 OFFSET ?"
            found.update((job.id, job) for job in self._select(query, (*ended, keep_jobs)))
        if ended_before is not None:
            query = f"{select} AND COALESCE(finished_at, created_at) < ?"
            found.update((job.id, job) for job in self._select(query, (*ended, ended_before)))
        return sorted(found.values(), key=lambda job: (job.finished_at or job.created_at, job.id))

    def delete(self, job_id: str) -> bool:
        """Remove a job's row; False when there was none."""
        with self._lock:
            return self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount == 1

    def setting(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row is not None else None

    def set_setting(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

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
