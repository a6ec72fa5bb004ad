"""The job database in operators' hands: damaged files refused with one line that says what to do, new and empty
files logged, a clean shutdown that leaves every job in `jobs.db` alone (WAL checkpointed), and
`python -m framepack jobs backup` (SQLite online backup) while a server writes."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from api_live_server import PREFIX, LiveServer, free_port, wait_for_job
from helpers import FAST, tiny_home

from framepack.jobs.models import Job, JobState
from framepack.jobs.store import CorruptStore, JobStore
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parents[1]
# Sixty sections of 100 uncached steps (about a minute here): still sampling long after it starts (the tests stop
# the server while it runs, so its length costs nothing), writing progress rows all the while. At 100 steps a CI
# machine saw it reach its last windows' decode while a backup ran.
SLOW = {**FAST, "latent_window_size": 1, "steps": 100, "duration": 8.0, "cache": "none", "seed": 7}


@pytest.fixture
def home(tiny_model_dir, tmp_path):
    return tiny_home(tiny_model_dir, tmp_path / "home")


def framepack(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMEPACK_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "framepack", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def stored_jobs(path: Path) -> dict[str, str]:
    """job id -> state, read from the database file alone (immutable: no -wal or -shm is read or made)."""
    assert not path.with_name(path.name + "-wal").exists()
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return dict(db.execute("SELECT id, state FROM jobs ORDER BY seq").fetchall())
    finally:
        db.close()


def write_store(path: Path, jobs: int) -> list[str]:
    """A real job database with `jobs` queued jobs (prompts of 4 KB, so it spans many pages), closed."""
    store = JobStore(path)
    ids = [f"job{index:03d}" for index in range(jobs)]
    for index, job_id in enumerate(ids):
        request = {"prompt": f"{index} " + "kite " * 800, "keyframes": {}}
        store.insert(Job(id=job_id, state=JobState.QUEUED, request=request, created_at=float(index)))
    store.close()
    return ids


def damage(path: Path, kind: str) -> None:
    """Turn `path` into a damaged job database of the given kind."""
    if kind == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    elif kind == "not sqlite":
        path.write_text('{"jobs": []}\n')
    else:
        write_store(path, 40)
        data = path.read_bytes()
        if kind == "truncated":
            path.write_bytes(data[: len(data) // 2])
        else:  # "damaged page": the first table page overwritten; the header still reads
            path.write_bytes(data[:4096] + os.urandom(4096) + data[8192:])


DAMAGE = ["garbage", "not sqlite", "truncated", "damaged page"]


# ------------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_store_is_refused_with_one_line_and_left_as_it_was(tmp_path, kind, caplog):
    path = tmp_path / "data" / "jobs.db"
    path.parent.mkdir()
    damage(path, kind)
    before = path.read_bytes()
    with pytest.raises(CorruptStore) as refused:
        JobStore(path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is not a usable job database (")
    assert refused.value.move_aside in message and message.count("mv ") == 1
    assert "jobs backup" in message  # the other choice
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["jobs.db"]

    # The printed command works: the file goes aside untouched and the next start is an empty, created queue.
    subprocess.run(refused.value.move_aside, shell=True, check=True)
    (aside,) = [p for p in path.parent.iterdir() if p.name.startswith("jobs.db.corrupt-")]
    assert aside.read_bytes() == before and not path.exists()
    with caplog.at_level(logging.INFO, logger="framepack.jobs.store"):
        store = JobStore(path)
    assert store.list() == []
    assert f"created the job database {path}" in caplog.text
    store.close()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "not sqlite"])
def test_serve_with_a_damaged_store_exits_2_with_one_line_naming_the_file(home, tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    damage(data / "jobs.db", kind)
    result = framepack("serve", "--port", str(free_port()), "--data-dir", str(data), home=home)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    naming = [line for line in result.stderr.splitlines() if str(data / "jobs.db") in line]
    assert len(naming) == 1, result.stderr
    assert naming[0].startswith(f"error: {data / 'jobs.db'} is not a usable job database")
    assert f"mv {data / 'jobs.db'} {data / 'jobs.db'}.corrupt-" in naming[0] and "jobs backup" in naming[0]


def test_new_empty_and_existing_stores_are_logged(tmp_path, caplog):
    path = tmp_path / "jobs.db"
    with caplog.at_level(logging.INFO, logger="framepack.jobs.store"):
        JobStore(path).close()
        assert f"created the job database {path}" in caplog.text
        caplog.clear()
        write_store(path, 2)
        caplog.clear()
        JobStore(path).close()
        assert f"opened the job database {path}: 2 jobs (2 queued)" in caplog.text
        caplog.clear()
        empty = tmp_path / "empty" / "jobs.db"
        empty.parent.mkdir()
        empty.write_bytes(b"")
        JobStore(empty).close()
    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == f"{empty} is empty (0 bytes): starting an empty queue"


def test_serve_logs_an_empty_0_byte_store(home, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs.db").write_bytes(b"")
    server = LiveServer(home, data, tmp_path / "server.log").start()
    try:
        assert httpx.get(f"{server.url}{PREFIX}/jobs").json() == {"jobs": []}
        assert server.stop() == 0
        assert f"WARNING framepack.jobs.store: {data / 'jobs.db'} is empty (0 bytes): starting an empty queue" in (
            server.log_path.read_text()
        )
    finally:
        server.kill()


# ------------------------------------------------------------------------------------------- clean shutdown


def test_a_closed_manager_leaves_every_job_in_jobs_db_alone(make_manager, tmp_path):
    manager = make_manager(start=False)
    submitted = [manager.submit(GenerateRequest(**{**FAST, "prompt": f"kite {index}"})).id for index in range(3)]
    assert manager.close() is True
    manager.close()  # a second close does nothing
    copy = tmp_path / "copy" / "jobs.db"
    copy.parent.mkdir()
    shutil.copy(tmp_path / "data" / "jobs.db", copy)  # the file alone, as a naive backup takes it
    assert stored_jobs(copy) == dict.fromkeys(submitted, "queued")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_after_a_clean_shutdown_a_copy_of_jobs_db_alone_holds_every_job(home, tmp_path, sig):
    data = tmp_path / "data"
    server = LiveServer(home, data, tmp_path / "server.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            finished = client.post(PREFIX, json=FAST).json()["id"]
            running = client.post(f"{PREFIX}/jobs", json=SLOW).json()["id"]
            queued = client.post(f"{PREFIX}/jobs", json=FAST).json()["id"]
            wait_for_job(client, running, until=lambda job: job["progress"]["done_steps"] > 0)
        # uvicorn re-raises SIGTERM after its shutdown: the process ends by that signal, the lifespan having run
        assert server.stop(sig=sig) == (0 if sig == signal.SIGINT else -signal.SIGTERM)
    finally:
        server.kill()
    copy = tmp_path / "copy" / "jobs.db"
    copy.parent.mkdir()
    shutil.copy(data / "jobs.db", copy)
    # the interrupted job stays running (it resumes at the next start), the queued one queued
    assert stored_jobs(copy) == {finished: "finished", running: "running", queued: "queued"}
    wal = data / "jobs.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0


# ------------------------------------------------------------------------------------------- backup


def test_backup_refuses_what_it_must_and_leaves_nothing_half_written(tmp_path):
    home = tmp_path / "home"
    ids = write_store(home / "server" / "jobs.db", 3)  # the default data folder of `serve`
    target = tmp_path / "backups" / "jobs-backup.db"
    target.parent.mkdir()

    made = framepack("jobs", "backup", str(target), home=home)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"copied 3 jobs from {home / 'server' / 'jobs.db'} to {target}"
    assert stored_jobs(target) == dict.fromkeys(ids, "queued")

    target.write_bytes(b"an older backup")
    again = framepack("jobs", "backup", str(target), home=home)
    assert again.returncode == 2 and again.stderr == f"error: {target} exists; pass --force to replace it\n"
    assert target.read_bytes() == b"an older backup"
    forced = framepack("jobs", "backup", str(target), "--force", home=home)
    assert forced.returncode == 0, forced.stderr
    assert stored_jobs(target) == dict.fromkeys(ids, "queued")

    live = home / "server" / "jobs.db"
    same = framepack("jobs", "backup", str(live), "--force", home=home)
    assert same.returncode == 2 and "is the live job database itself" in same.stderr
    missing = framepack("jobs", "backup", str(tmp_path / "b.db"), "--data-dir", str(tmp_path / "nowhere"), home=home)
    assert missing.returncode == 2
    nowhere = tmp_path / "nowhere" / "jobs.db"
    assert missing.stderr == f"error: no job database at {nowhere} (give the server's --data-dir)\n"
    (tmp_path / "damaged").mkdir()
    damage(tmp_path / "damaged" / "jobs.db", "damaged page")
    damaged = framepack("jobs", "backup", str(tmp_path / "c.db"), "--data-dir", str(tmp_path / "damaged"), home=home)
    assert damaged.returncode == 2 and "is damaged" in damaged.stderr and "Traceback" not in damaged.stderr
    assert sorted(p.name for p in target.parent.iterdir()) == ["jobs-backup.db"]
    assert not (tmp_path / "b.db").exists() and not (tmp_path / "c.db").exists()
    assert not (tmp_path / "nowhere").exists()


def test_backup_of_a_live_server_while_a_job_writes(home, tmp_path):
    data = tmp_path / "data"
    server = LiveServer(home, data, tmp_path / "server.log").start()
    target = tmp_path / "backup.db"
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            finished = client.post(PREFIX, json=FAST).json()
            assert finished["state"] == "finished", finished
            running = client.post(f"{PREFIX}/jobs", json=SLOW).json()["id"]
            # progress reaches the database at most every 0.5 s: wait until the live database (WAL read) has some
            deadline = time.monotonic() + 120
            while progress_steps(data / "jobs.db", running, live=True) == 0:
                assert time.monotonic() < deadline, "the running job wrote no progress to the database in 120 s"
                time.sleep(0.1)
            made = framepack("jobs", "backup", str(target), "--data-dir", str(data), home=home)
            after = client.get(f"{PREFIX}/jobs/{running}").json()
            assert after["state"] == "running", "the job ended before the backup did; make SLOW slower"
            assert made.returncode == 0, made.stderr
            assert made.stdout.strip() == f"copied 2 jobs from {data / 'jobs.db'} to {target}"
            assert sorted(path.name for path in tmp_path.iterdir() if "backup" in path.name) == ["backup.db"]
            # the server goes on writing the running job's progress
            copied_steps = progress_steps(target, running)
            wait_for_job(client, running, until=lambda job: job["progress"]["done_steps"] > copied_steps + 1)
        assert server.stop() == 0
    finally:
        server.kill()

    backup = sqlite3.connect(f"{target.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        assert backup.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert target.read_bytes()[18:20] == b"\x01\x01"  # rollback journal, not WAL (2, 2): one file, no -wal
        rows = {row[0]: row[1:] for row in backup.execute("SELECT id, state, outputs_json FROM jobs")}
    finally:
        backup.close()
    assert set(rows) == {finished["id"], running}
    assert rows[finished["id"]][0] == "finished" and rows[running][0] == "running"
    assert [Path(p).name for p in json.loads(rows[finished["id"]][1])] == [Path(p).name for p in finished["outputs"]]
    assert finished["filename"] in finished["outputs"]
    # the live database moved on after the copy; the copy is the snapshot it was
    assert progress_steps(data / "jobs.db", running) > copied_steps > 0
    assert stored_jobs(data / "jobs.db") == {finished["id"]: "finished", running: "running"}


def progress_steps(path: Path, job_id: str, live: bool = False) -> int:
    """The running job's done steps: from the database file alone, or (`live`) as a reader of the live database
    sees them, its write-ahead log included."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro{'' if live else '&immutable=1'}", uri=True)
    try:
        (progress,) = db.execute("SELECT progress_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        db.close()
    return json.loads(progress)["done_steps"]
