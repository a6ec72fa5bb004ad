"""Removing the outputs of a deleted job: only files the job wrote, only inside the output folder.

An output is removed when it is listed in the job's outputs as a path relative to the output folder, has no
hidden or '..' component, is (after resolving links) a regular file inside the real output folder, is not itself a
link, and was last written while the job ran (a file of the same name written later belongs to someone else). A
frames folder loses only the frame images of the job's stem; the folder goes when nothing else is left in it.
Everything else is kept and reported as kept.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from framepack.jobs.models import Job

logger = logging.getLogger(__name__)

MTIME_SLACK_S = 5.0  # file times and the job's recorded times come from different clocks' roundings


def _inside(output_dir: Path, relative: str) -> Path | None:
    """The path of `relative` inside the output folder, None when it is absolute, hidden or escapes it."""
    if not relative or os.path.isabs(relative) or "\\" in relative or "\x00" in relative:
        return None
    parts = relative.rstrip("/").split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    root = os.path.realpath(output_dir)
    path = os.path.join(root, *parts)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        return None
    return Path(path)


def _written_by(path: Path, job: Job) -> bool:
    """A regular file (not a link) last written while the job ran."""
    if path.is_symlink() or not path.is_file():
        return False
    modified = path.stat().st_mtime
    started = job.started_at if job.started_at is not None else job.created_at
    finished = job.finished_at if job.finished_at is not None else modified
    return started - MTIME_SLACK_S <= modified <= finished + MTIME_SLACK_S


def _remove_frames(folder: Path, stem: str, job: Job) -> bool:
    """Remove the job's frame images from its frames folder, and the folder when that empties it."""
    pattern = re.compile(rf"{re.escape(stem)}-\d{{5,}}\.(png|jpg)")
    for entry in folder.iterdir():
        if pattern.fullmatch(entry.name) and _written_by(entry, job):
            entry.unlink()
    if any(folder.iterdir()):
        return False
    folder.rmdir()
    return True


def remove_outputs(job: Job, output_dir: Path) -> tuple[list[str], list[str]]:
    """Remove what the ended `job` wrote (see the module docstring); (removed, kept) as the job listed them."""
    removed, kept = [], []
    stem = str(job.request.get("filename") or job.id)
    for output in job.outputs:
        path = _inside(output_dir, output)
        try:
            if path is None:
                done = False
            elif path.is_dir() and not path.is_symlink():
                done = path.name == stem and _remove_frames(path, stem, job)
            elif _written_by(path, job):
                path.unlink()
                done = True
            else:
                done = False
        except OSError as error:
            logger.warning("could not remove %s of job %s: %s", output, job.id, error)
            done = False
        (removed if done else kept).append(output)
    return removed, kept
