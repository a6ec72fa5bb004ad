"""SQLite persistence of jobs: one table, one row per job. An update writes only what a run changes: the request
(which can hold megabytes of base64 images), plan, summary and creation time are written once, at insert.

The store knows nothing about running jobs; the `JobManager` is the only writer. `seq` is a monotonic insertion
number that gives the FIFO order of the queue (timestamps can tie or go backwards).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from framepack.jobs.models import Job, JobErrorInfo, JobProgress, JobState

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
    resumed_sections INTEGER NOT NULL DEFAULT 0
)
"""

FIXED_COLUMNS = ("request_json", "plan_json", "summary", "created_at")
CHANGING_COLUMNS = (
    "state", "progress_json", "outputs_json", "timings_json", "error_json", "started_at", "finished_at",
    "resumed_sections",
)  # fmt: skip
INSERT = (
    f"INSERT INTO jobs (id, seq, {', '.join(FIXED_COLUMNS + CHANGING_COLUMNS)}) "
    f"VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), {', '.join('?' * len(FIXED_COLUMNS + CHANGING_COLUMNS))})"
)
UPDATE = f"UPDATE jobs SET {', '.join(f'{column} = ?' for column in CHANGING_COLUMNS)} WHERE id = ?"


def _fixed_values(job: Job) -> tuple:
    """The values in `FIXED_COLUMNS` order."""
    return (
        json.dumps(job.request),
        json.dumps(job.plan) if job.plan is not None else None,
        job.summary,
        job.created_at,
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


class JobStore:
    """Jobs in one SQLite file (WAL mode), safe to use from several threads of one process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)

    def insert(self, job: Job) -> None:
        """Add a new job at the end of the insertion order."""
        with self._lock:
            self._db.execute(INSERT, (job.id, *_fixed_values(job), *_changing_values(job)))

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

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _select(self, query: str, parameters: tuple = ()) -> list[Job]:
        with self._lock:
            rows = self._db.execute(query, parameters).fetchall()
        return [_job(row) for row in rows]
