"""Output names of queued jobs: a `filename` is reserved when its job is submitted, for every face.

A name is taken while a queued or running job will write it in the same folder, or while any output of that stem
(a video of any container, the raw file, the sidecar or the frames folder) exists there. Jobs without a filename
are named by `framepack.outputs.default_stem` (time, seed and job id) and never clash.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from framepack.jobs.models import Job, JobConflict
from framepack.outputs import existing_names, output_names

logger = logging.getLogger(__name__)


def output_folder(request: dict, default: Path) -> Path:
    """The folder a job's outputs go to: its request's output_dir, else `default`."""
    return Path(request["output_dir"]) if request.get("output_dir") else default


def name_key(folder: Path, stem: str) -> tuple[str, str]:
    """What makes two output names the same: the real folder and the stem (case-folded where the OS folds)."""
    return os.path.normcase(os.path.realpath(folder)), os.path.normcase(stem)


def check_output_name(request: dict, live: list[Job], default: Path) -> None:
    """JobConflict naming "filename" when one of the `live` (queued or running) jobs will write the request's
    output name in the same folder, or a file or folder of that name (any output) exists there."""
    stem, folder = request["filename"], output_folder(request, default)
    key = name_key(folder, stem)
    for job in live:
        other = job.request.get("filename")
        if other and name_key(output_folder(job.request, default), other) == key:
            raise JobConflict(
                f"filename: {stem!r} is taken by job {job.id} ({job.state.value}), which will write it; choose "
                "another filename or leave it out",
                field="filename",
            )
    taken = existing_names(folder, output_names(stem))
    if taken:
        raise JobConflict(
            f"filename: an output named {taken[0]!r} exists already; choose another filename or leave it out",
            field="filename",
        )


def remove_partial_outputs(request: dict, default: Path) -> None:
    """Hidden partial outputs (".<stem>.partial*") a killed process left in the job's output folder."""
    stem = request.get("filename")
    folder = output_folder(request, default)
    if not stem or not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name.startswith(f".{stem}.partial"):
            logger.info("removing stale partial output %s", path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
