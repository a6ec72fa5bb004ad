"""`python -m framepack jobs backup`: a consistent copy of the job database, taken while a server may be writing it.

SQLite's online backup API copies a snapshot of one read transaction (in WAL mode the server's writes go on
meanwhile). The copy is written under a hidden temporary name in the target's folder, checked, switched out of WAL
mode (a single self-contained file) and only then renamed to the target, so a failed backup leaves nothing behind.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from framepack.errors import UserError
from framepack.jobs.store import is_damage, quick_check

SIDE_FILES = ("-journal", "-wal", "-shm")  # what SQLite may leave next to a database file


class BackupError(UserError):
    """The backup was refused or failed; nothing was written."""


def backup_jobs(source: Path, target: Path, force: bool = False) -> int:
    """Copy the job database `source` to `target` and return how many jobs the copy holds. Refuses an existing
    `target` unless `force`, and never writes over the source."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise BackupError(f"no job database at {source} (give the server's --data-dir)")
    if target.is_dir():
        raise BackupError(f"{target} is a folder; give the backup's file name")
    if not target.parent.is_dir():
        raise BackupError(f"the folder {target.parent} does not exist")
    if target.resolve() in [source.resolve()] + [source.resolve().with_name(source.name + s) for s in SIDE_FILES]:
        raise BackupError(f"{target} is the live job database itself; back it up to another file")
    if target.exists() and not force:
        raise BackupError(f"{target} exists; pass --force to replace it")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        jobs = _copy(source, partial)
        _publish(partial, target, force)
    except (sqlite3.Error, OSError) as error:
        if isinstance(error, sqlite3.DatabaseError) and is_damage(error):
            raise BackupError(f"the job database {source} is damaged ({error}); nothing was written") from None
        raise BackupError(f"backup of {source} to {target} failed, nothing was written: {error}") from None
    finally:
        for path in [partial] + [partial.with_name(partial.name + suffix) for suffix in SIDE_FILES]:
            path.unlink(missing_ok=True)
    return jobs


def _copy(source: Path, partial: Path) -> int:
    """Back `source` up into the new file `partial`; the job count of the copy."""
    # mode=rw: never create a database where there was none; a reader of a WAL database needs write access to -shm
    reader = sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True)
    try:
        copy = sqlite3.connect(str(partial))
        try:
            reader.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal to forget
            damage = quick_check(copy)
            if damage is not None:
                raise BackupError(f"the job database {source} is damaged ({damage}); nothing was written")
            try:
                (jobs,) = copy.execute("SELECT COUNT(*) FROM jobs").fetchone()
            except sqlite3.OperationalError:
                raise BackupError(f"{source} holds no job table; nothing was written") from None
        finally:
            copy.close()
    finally:
        reader.close()
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    return jobs


def _publish(partial: Path, target: Path, force: bool) -> None:
    """Rename the finished copy to `target`; without `force`, never over a file that appeared meanwhile."""
    if force:
        os.replace(partial, target)
        return
    try:
        os.link(partial, target)  # fails if target exists, atomically
    except FileExistsError:
        raise BackupError(f"{target} exists; pass --force to replace it") from None
    except OSError:  # a file system without hard links
        if target.exists():
            raise BackupError(f"{target} exists; pass --force to replace it") from None
        os.replace(partial, target)
