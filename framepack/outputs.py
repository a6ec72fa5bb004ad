"""Output files of a job: their names, the temporary names they are written under, and the commit that renames
them into place together.

Every output of a job (video, raw frames, frames folder, sidecar JSON) is first written complete under a hidden
temporary name beside its final one (`.{stem}.partial{suffix}`, the frames folder `.{stem}.partial`). Only when
all are complete does `OutputCommit.commit` rename them, one after the other; a failure in that phase removes
the ones already renamed, so the outputs appear together or none remains. A rename never replaces an existing
file or folder: a name that appeared meanwhile fails the job (`OutputExists`) and is left as it is.

Disk full (ENOSPC, EDQUOT) anywhere on the way is reported as `DiskFull`, naming the folder and its free space.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import shutil
import sys
import time
import typing
from pathlib import Path
from typing import Literal

from framepack.errors import UserError

logger = logging.getLogger(__name__)

TEMPORARY_MARK = ".partial"
Container = Literal["mp4", "webm", "mkv", "mov"]  # the video containers a request may choose, by file suffix
CONTAINERS: tuple[str, ...] = typing.get_args(Container)
VIDEO_SUFFIXES = tuple(f".{container}" for container in CONTAINERS)
RAW_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
IMAGE_SUFFIX = ".png"  # the one image of single-frame inference
FINAL_SUFFIXES = (*VIDEO_SUFFIXES, RAW_SUFFIX, SIDECAR_SUFFIX, IMAGE_SUFFIX)
FRAME_NAME_SUFFIXES = ("-00000.png", "-00000.jpg")  # frames `{stem}-{index:05d}.png`; 600 s at 120 fps is 72,000
MAX_NAME_BYTES = 200  # every name made from a stem (temporary names included) stays within this many bytes
DISK_FULL_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_UNSUPPORTED_ERRNOS = frozenset(
    code for code in (errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", None), errno.EOPNOTSUPP) if code
)


def default_stem(seed: int, unique: str, when: float | None = None) -> str:
    """The one naming rule for outputs a request leaves unnamed, on every face: `framepack-<date>-<time>-<seed>-<id>`,
    the local time the job was submitted (or the CLI run started), its seed and the first 8 characters of `unique`
    (the job id in the queue, a random id in the CLI), so that names sort by time and never clash."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return f"framepack-{stamp}-{seed}-{unique[:8]}"


def partial_name(stem: str, suffix: str = "") -> str:
    """The hidden temporary name of the output `{stem}{suffix}` (suffix '' for the frames folder)."""
    return f".{stem}{TEMPORARY_MARK}{suffix}"


def partial_path(path: Path) -> Path:
    """Hidden temporary name beside the final file `path`, renamed into place on success."""
    return path.with_name(partial_name(path.stem, path.suffix))


def derived_names(stem: str) -> list[str]:
    """Every file or folder name the outputs of `stem` can take: final and temporary names, and the frame files
    inside the frames folder."""
    finals = [stem + suffix for suffix in FINAL_SUFFIXES]
    temporaries = [partial_name(stem, suffix) for suffix in ("", *FINAL_SUFFIXES)]
    return [stem, *finals, *temporaries, *(stem + suffix for suffix in FRAME_NAME_SUFFIXES)]


NAME_EXTRA_BYTES = max(len(name.encode("utf-8")) for name in derived_names(""))  # 21: ".{stem}.partial.safetensors"
MAX_STEM_BYTES = MAX_NAME_BYTES - NAME_EXTRA_BYTES


def output_names(stem: str) -> list[str]:
    """The final names the outputs of `stem` take, whatever the settings: the frames folder, a video of any
    container, the raw file and the sidecar."""
    return [stem, *(stem + suffix for suffix in FINAL_SUFFIXES)]


def existing_names(folder: Path, names: list[str]) -> list[str]:
    """Those of `names` that exist in `folder` (as anything: file, folder, link, even a dangling one)."""
    return [name for name in names if os.path.lexists(folder / name)]


class OutputExists(UserError):
    """An output name is taken by a file that is not this job's; nothing of the job was kept (HTTP 409)."""

    field = "filename"

    def __init__(self, folder: Path, names: list[str], during_commit: bool = False):
        self.folder, self.names, self.during_commit = Path(folder), list(names), during_commit
        listed = ", ".join(repr(name) for name in self.names)
        if during_commit:
            message = (
                f"filename: {listed} appeared in the output folder while the job ran; it was left as it is and "
                "nothing of this job was kept; submit again with another filename"
            )
        else:
            message = f"filename: an output named {listed} exists already; choose another filename or remove it"
        super().__init__(message)


class DiskFull(UserError):
    """No space left (ENOSPC, or a quota): names the folder and its free space; nothing of the job was kept."""

    def __init__(self, folder: Path, free_bytes: int | None):
        self.folder, self.free_bytes = Path(folder), free_bytes
        free = "free space unknown" if free_bytes is None else f"{format_bytes(free_bytes)} free"
        super().__init__(
            f"disk full: no space left in {self.folder} ({free}); nothing of this job was kept. "
            "Free some space, then try again (the same filename is accepted)."
        )


def format_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'; under 1 KiB in bytes."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the file system of `folder` (or of its nearest existing parent); None when unknown."""
    for candidate in (Path(folder), *Path(folder).parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def disk_full(error: BaseException, folder: Path) -> DiskFull | None:
    """A DiskFull for `error` when it (or an exception it was raised from) is an ENOSPC/EDQUOT OSError, else None.
    The folder is that of the file the error names, or `folder`."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return current
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            where = Path(current.filename).parent if isinstance(current.filename, (str, os.PathLike)) else Path(folder)
            return DiskFull(where, free_bytes(where))
        current = current.__cause__ or current.__context__
    return None


@functools.cache  # the C library does not change while the process runs
def _renameat2():
    """libc's renameat2 (Linux, glibc 2.28+), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename the file or folder `source` to `target`; FileExistsError when `target` exists, which stays intact.

    Linux: renameat2(RENAME_NOREPLACE), atomic. Elsewhere (or on a file system without it): a file is hard-linked
    to `target` (fails if it exists) and then unlinked; Windows' rename never replaces. Only where neither works
    (a POSIX folder, or no hard links) is `target` checked just before a plain rename; a POSIX rename of a folder
    still fails on a non-empty target folder or a file, so at worst an empty folder is replaced.
    """
    source_bytes, target_bytes = os.fsencode(source), os.fsencode(target)
    function = _renameat2()
    if function is not None:
        if function(_AT_FDCWD, source_bytes, _AT_FDCWD, target_bytes, _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _UNSUPPORTED_ERRNOS:
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if os.name == "nt":
        os.rename(source, target)  # raises FileExistsError when target exists
        return
    if not os.path.isdir(source) or os.path.islink(source):
        try:
            os.link(source, target)
        except FileExistsError:
            raise
        except OSError as error:
            logger.debug("no hard link for %s (%s); checked rename", target, error)
        else:
            os.unlink(source)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_bytes_atomically(data: bytes, target: Path, temporary: Path) -> None:
    """Write `data` to `temporary`, then rename it to `target`, so a reader never sees half a file. A Python write,
    so a full disk is an OSError naming the temporary file, which is then removed."""
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(temporary)) from error
    os.replace(temporary, target)


def place_output(temporary: Path, final: Path, commit: OutputCommit | None) -> Path:
    """A sink's finished output: staged for `commit` (renamed later with the job's other outputs) or, without
    one, renamed into place now; `final` either way."""
    if commit is not None:
        commit.stage(temporary, final)
    else:
        os.replace(temporary, final)
    return final


class OutputCommit:
    """The outputs of one job, complete under temporary names, renamed into place together.

    Sinks `stage` their finished temporary file or folder with its final path; `commit()` renames every staged
    output without replacing anything, and on any failure removes the outputs it already renamed and every
    temporary, so all appear or none. `discard()` removes every staged temporary (a failed or cancelled job).
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, final)

    def stage(self, temporary: Path, final: Path) -> None:
        self._staged.append((Path(temporary), Path(final)))

    @property
    def finals(self) -> list[Path]:
        return [final for _temporary, final in self._staged]

    def commit(self) -> list[Path]:
        """Rename every staged output into place; the final paths. OutputExists when one of the names is taken
        (that file is left as it is); any other error propagates. Either way nothing of this job remains."""
        done: list[Path] = []
        try:
            for temporary, final in self._staged:
                try:
                    rename_no_replace(temporary, final)
                except FileExistsError as error:
                    raise OutputExists(final.parent, [final.name], during_commit=True) from error
                done.append(final)
        except BaseException:
            for final in reversed(done):  # these were renamed from our temporaries: they are ours to remove
                remove_path(final)
            self.discard()
            raise
        self._staged = []
        logger.info("outputs in place: %s", ", ".join(str(path) for path in done))
        return done

    def discard(self) -> None:
        for temporary, _final in self._staged:
            remove_path(temporary)
        self._staged = []
