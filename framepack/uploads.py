"""Files a client uploads once and names in later requests as `upload:<id>`: received under a hidden temporary
name, checked (a real image or video within limits), kept under a random id until they expire.

The folder (`uploads_folder(jobs_dir)`, beside the job database) holds only

- `<id>.<format>`: the file; the name comes from the random id and the detected format, never from the client;
- `<id>.json`: its `UploadInfo`, written (under a hidden name, then renamed) before the file gets its name and
  removed after the file, so a visible file always has its record;
- `.<random>.part`: an upload being received; removed when it is refused, and by a sweep once it is stale.

How a job keeps its upload. The API's intake turns `upload:<id>` into the path of the file, which the engine reads
like any image or video path. Jobs keep images sent inline as base64 in their database row; for a video that is not
acceptable (hundreds of MB in SQLite), and copying the file for each job multiplies the disk it takes (a batch of a
hundred jobs over one video). So uploads are reference-counted instead: a sweep never removes an upload that a
queued or running job names (the caller's `in_use`), and removes it at the first sweep after the last such job
ended. An expired upload is refused to new requests at once; its files go at a sweep (at start and at every upload:
disk use grows only through uploads, so sweeping there bounds it) at least `REMOVAL_GRACE_SECONDS` after it expired,
so that a request which named it just before it expired is queued before the file can go.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from framepack.errors import FieldError, UserError
from framepack.images import MAX_IMAGE_PIXELS, load_image

logger = logging.getLogger(__name__)

MiB = 2**20
ID_BYTES = 16
ID_LENGTH = 2 * ID_BYTES  # hex digits
UPLOAD_ID = re.compile(rf"[0-9a-f]{{{ID_LENGTH}}}")
UPLOAD_FIELD = "file"  # the field errors about the uploaded file name (the multipart field's name)
PART_SUFFIX = ".part"
INFO_SUFFIX = ".json"
REMOVAL_GRACE_SECONDS = 300.0  # an expired upload's files stay at least this long after it expired
STALE_PART_SECONDS = 3600.0  # a temporary file not written for this long belongs to an upload that died

# Detected format -> the suffix of the stored file. Images: PIL's format names (only these are opened at all);
# videos: FFmpeg's demuxer names.
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "mkv", "avi": "avi"}
Format = Literal["png", "jpg", "webp", "gif", "bmp", "tif", "mp4", "mkv", "avi"]
Kind = Literal["image", "video"]
ALLOWED = "images (PNG, JPEG, WebP, GIF, BMP, TIFF) and videos (MP4/MOV, WebM/MKV, AVI)"


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be. `max_bytes` bounds every upload while it streams (videos); an image is refused
    past `max_image_bytes`. Uploads are kept `expire_seconds` after they arrive."""

    max_bytes: int = 512 * MiB
    max_image_bytes: int = 32 * MiB
    max_image_pixels: int = MAX_IMAGE_PIXELS  # the engine's own decode limit
    max_video_pixels: int = 3840 * 2160  # per frame: 4K UHD
    max_video_seconds: float = 600.0
    expire_seconds: float = 24 * 3600.0

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_image_bytes", "max_image_pixels", "max_video_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"upload limit {name} must be at least 1")
        for name in ("max_video_seconds", "expire_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"upload limit {name} must be a positive number of seconds")


class UploadInfo(BaseModel):
    """An accepted upload: what it is and until when requests may name it (`expires_at`, Unix seconds)."""

    id: str
    kind: Kind
    format: Format
    bytes: int
    width: int
    height: int
    frames: int | None = None  # videos: the video stream's frames (counted by demuxing, one packet per frame)
    duration: float | None = None  # videos: seconds
    created_at: float
    expires_at: float

    @property
    def filename(self) -> str:
        return f"{self.id}.{self.format}"


class UploadTooLarge(UserError):
    """An upload past its byte limit (HTTP 413); `limit` is that limit in bytes."""

    def __init__(self, limit: int, what: str = "an upload"):
        super().__init__(f"{UPLOAD_FIELD}: {what} may be at most {_size(limit)}")
        self.field, self.limit = UPLOAD_FIELD, limit


class UnsupportedUpload(FieldError):
    """Neither an image nor a video that can be decoded (HTTP 415)."""

    def __init__(self, detail: str):
        super().__init__(UPLOAD_FIELD, f"{detail}; allowed: {ALLOWED}")


class UploadDiskFull(UserError):
    """No space left in the uploads folder (HTTP 507); nothing was kept."""


def _disk_full(error: OSError, folder: Path) -> OSError | UploadDiskFull:
    """UploadDiskFull for a full disk or quota, else the error itself."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadDiskFull(f"no space left in {folder} for the upload; nothing was kept")
    return error


def uploads_folder(jobs_dir: Path | str) -> Path:
    """Where the uploads of the job service over `jobs_dir` live."""
    return Path(jobs_dir) / "uploads"


def _size(count: int) -> str:
    return f"{count / MiB:g} MiB ({count} bytes)" if count >= MiB else f"{count} bytes"


class IncomingFile:
    """An upload being received: a hidden file in the uploads folder, its bytes counted against `limit`."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit, self.size = path, limit, 0
        self._handle = open(path, "xb")  # noqa: SIM115 - closed by close() or discard()

    def write(self, data: bytes) -> None:
        """Append `data`; UploadTooLarge as soon as the upload passes the limit, UploadDiskFull on a full disk."""
        self.size += len(data)
        if self.size > self.limit:
            raise UploadTooLarge(self.limit)
        try:
            self._handle.write(data)
        except OSError as error:
            raise _disk_full(error, self.path.parent) from None

    def close(self) -> None:
        self._handle.close()

    def discard(self) -> None:
        """Close and remove the file (idempotent)."""
        self._handle.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Found:
    kind: Kind
    format: Format
    width: int
    height: int
    frames: int | None = None
    duration: float | None = None


class UploadStore:
    """The uploads in `folder` (see the module docstring), checked against `limits`, timed by `clock` (Unix
    seconds). Sweeps and deletions take `in_use`: the ids that queued or running jobs name, asked only when an
    upload is due to be removed. Safe to use from several threads: every step works on whole files by rename."""

    def __init__(
        self, folder: Path | str, limits: UploadLimits | None = None, *, clock: Callable[[], float] = time.time
    ):
        self.folder = Path(folder)
        self.limits = limits or UploadLimits()
        self.clock = clock

    # ---------------------------------------------------------------------------------------------- receiving

    def incoming(self) -> IncomingFile:
        """A new hidden temporary file to stream an upload into (the folder is made when missing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return IncomingFile(self.folder / f".{secrets.token_hex(8)}{PART_SUFFIX}", self.limits.max_bytes)

    def accept(self, incoming: IncomingFile) -> UploadInfo:
        """Check a received file and keep it under a new id. Refused (UploadTooLarge, UnsupportedUpload, or a
        FieldError naming `file` for one outside the limits): the file is removed and nothing is kept."""
        info_written = None
        try:
            incoming.close()
            if incoming.size == 0:
                raise FieldError(UPLOAD_FIELD, "the upload is empty; send the file's bytes")
            found = inspect_file(incoming.path, self.limits)
            now = self.clock()
            info = UploadInfo(
                id=secrets.token_hex(ID_BYTES),
                kind=found.kind,
                format=found.format,
                bytes=incoming.size,
                width=found.width,
                height=found.height,
                frames=found.frames,
                duration=found.duration,
                created_at=now,
                expires_at=now + self.limits.expire_seconds,
            )
            try:
                info_written = self._write_info(info)
                os.rename(incoming.path, self.folder / info.filename)
            except OSError as error:
                raise _disk_full(error, self.folder) from None
        except BaseException:
            incoming.discard()
            if info_written is not None:
                info_written.unlink(missing_ok=True)
            raise
        logger.info(
            "upload %s: %s %s, %d bytes, %dx%d", info.id, info.kind, info.format, info.bytes, info.width, info.height
        )
        return info

    # ---------------------------------------------------------------------------------------------- naming

    def get(self, upload_id: str) -> UploadInfo | None:
        """The upload while requests may name it; None when the id is malformed, unknown, expired or its file
        is gone."""
        if not UPLOAD_ID.fullmatch(upload_id):
            return None
        info = self._read_info(upload_id)
        if info is None or self.clock() >= info.expires_at:
            return None
        path = self.folder / info.filename
        return info if path.is_file() and not path.is_symlink() else None

    def resolve(self, upload_id: str, field: str, kind: Kind) -> Path:
        """The path of upload `upload_id` for request field `field`, which takes a `kind` upload; FieldError
        naming `field` when the id is malformed, unknown, expired or of the other kind."""
        if not UPLOAD_ID.fullmatch(upload_id):
            shown = upload_id if len(upload_id) <= 40 else upload_id[:40] + "..."
            raise FieldError(
                field,
                f"'upload:{shown}' is no upload id: 'upload:' takes the {ID_LENGTH} hex digits an upload answered",
            )
        info = self.get(upload_id)
        if info is None:
            hours = self.limits.expire_seconds / 3600
            raise FieldError(
                field,
                f"no upload {upload_id}: unknown, deleted or expired (uploads are kept {hours:g} h); upload again",
            )
        if info.kind != kind:
            raise FieldError(field, f"upload {upload_id} is {_a(info.kind)}; {field} takes {_a(kind)}")
        return self.folder / info.filename

    def named_in(self, values: Iterable[Any]) -> set[str]:
        """The ids of the uploads whose paths are among `values` (strings, and the strings in dicts and lists
        among them): what a job's request fields name."""
        found = set()
        for value in values:
            if isinstance(value, dict):
                found |= self.named_in(value.values())
            elif isinstance(value, list):
                found |= self.named_in(value)
            elif isinstance(value, str) and len(value) < 4096:
                path = Path(value)
                stem, _, suffix = path.name.partition(".")
                if path.parent == self.folder and UPLOAD_ID.fullmatch(stem) and suffix in _FORMATS:
                    found.add(stem)
        return found

    # ---------------------------------------------------------------------------------------------- removing

    def delete(self, upload_id: str, in_use: Callable[[], set[str]]) -> bool:
        """End an upload now: new requests cannot name it; its files go at once unless a queued or running job
        names it (then at the first sweep after). False when there is no such upload."""
        info = self.get(upload_id)
        if info is None:
            return False
        self._write_info(info.model_copy(update={"expires_at": self.clock()}))
        if upload_id not in in_use():
            self._remove(upload_id, info.filename)
        return True

    def sweep(self, in_use: Callable[[], set[str]]) -> int:
        """Remove the uploads expired for more than REMOVAL_GRACE_SECONDS that no job in `in_use()` names, stale
        temporary files and files without a record; returns how many uploads were removed."""
        if not self.folder.is_dir():
            return 0
        now, removed, used = self.clock(), 0, None
        for entry in list(os.scandir(self.folder)):
            stem, _, suffix = entry.name.partition(".")
            if entry.name.startswith("."):
                if entry.name.endswith(PART_SUFFIX) and time.time() - _mtime(entry) > STALE_PART_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
                continue
            if not UPLOAD_ID.fullmatch(stem):
                continue  # not an upload's
            if "." + suffix != INFO_SUFFIX:
                if not (self.folder / (stem + INFO_SUFFIX)).exists():
                    Path(entry.path).unlink(missing_ok=True)  # a file without its record
                continue
            info = self._read_info(stem)
            if info is None:
                self._remove(stem, None)
                continue
            if now < info.expires_at + REMOVAL_GRACE_SECONDS:
                continue
            if used is None:
                used = in_use()
            if stem not in used:
                self._remove(stem, info.filename)
                removed += 1
        if removed:
            logger.info("removed %d expired uploads from %s", removed, self.folder)
        return removed

    # ---------------------------------------------------------------------------------------------- records

    def _info_path(self, upload_id: str) -> Path:
        return self.folder / (upload_id + INFO_SUFFIX)

    def _read_info(self, upload_id: str) -> UploadInfo | None:
        try:
            info = UploadInfo.model_validate_json(self._info_path(upload_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as error:
            logger.warning("unreadable upload record %s (%s)", self._info_path(upload_id), error)
            return None
        return info if info.id == upload_id else None

    def _write_info(self, info: UploadInfo) -> Path:
        path = self._info_path(info.id)
        hidden = self.folder / f".{info.id}{INFO_SUFFIX}{PART_SUFFIX}"
        hidden.write_text(info.model_dump_json())
        os.replace(hidden, path)
        return path

    def _remove(self, upload_id: str, filename: str | None) -> None:
        """The file first, then its record (so a visible file always has one); a record unread: every file of
        the id."""
        names = [filename] if filename else [f"{upload_id}.{suffix}" for suffix in _FORMATS]
        for name in names:
            (self.folder / name).unlink(missing_ok=True)
        self._info_path(upload_id).unlink(missing_ok=True)


_FORMATS = (*IMAGE_FORMATS.values(), *VIDEO_FORMATS.values())


def _a(kind: str) -> str:
    return f"an {kind}" if kind == "image" else f"a {kind}"


def _mtime(entry: os.DirEntry) -> float:
    with contextlib.suppress(OSError):
        return entry.stat().st_mtime
    return time.time()


# ------------------------------------------------------------------------------------------------ checks


def inspect_file(path: Path, limits: UploadLimits) -> _Found:
    """What the file is: an image PIL opens, verifies and decodes, else a video PyAV opens with a video stream
    whose first frame decodes; UnsupportedUpload for anything else, UploadTooLarge for an image over its byte
    limit (before it is decoded), FieldError naming `file` outside the other limits."""
    image = _inspect_image(path, limits)
    return image if image is not None else _inspect_video(path, limits)


def _inspect_image(path: Path, limits: UploadLimits) -> _Found | None:
    """The image's format and size; None when PIL does not recognise one of IMAGE_FORMATS."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=tuple(IMAGE_FORMATS)) as image:
            image_format, (width, height) = image.format, image.size
            if path.stat().st_size > limits.max_image_bytes:
                raise UploadTooLarge(limits.max_image_bytes, "an image")
            if width * height <= limits.max_image_pixels:
                image.verify()
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:
        raise FieldError(UPLOAD_FIELD, f"image exceeds {limits.max_image_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise FieldError(UPLOAD_FIELD, f"a damaged image ({error})") from None
    if width * height > limits.max_image_pixels:
        raise FieldError(UPLOAD_FIELD, f"image of {width}x{height} exceeds {limits.max_image_pixels} pixels")
    load_image(str(path), UPLOAD_FIELD)  # decoded whole, as the engine will (ImageInputError naming `file`)
    return _Found("image", IMAGE_FORMATS[image_format], width, height)


def _inspect_video(path: Path, limits: UploadLimits) -> _Found:
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        raise UnsupportedUpload("not an image nor a video that can be opened") from None
    with container:
        demuxer = container.format.name
        if demuxer not in VIDEO_FORMATS:
            raise UnsupportedUpload(f"a file of the {demuxer!r} format")
        if not container.streams.video:
            raise UnsupportedUpload("a file without a video stream")
        stream = container.streams.video[0]
        _check_frame_size(stream.codec_context.width, stream.codec_context.height, limits)
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, OSError, ValueError) as error:
            raise FieldError(UPLOAD_FIELD, f"the video's first frame does not decode ({error})") from None
        if first is None:
            raise FieldError(UPLOAD_FIELD, "the video has no frame that decodes")
        width, height = first.width, first.height
        _check_frame_size(width, height, limits)
    frames, duration = _count_frames(path)
    if duration > limits.max_video_seconds:
        raise FieldError(UPLOAD_FIELD, f"video of {duration:.1f} s exceeds {limits.max_video_seconds:g} s")
    return _Found("video", VIDEO_FORMATS[demuxer], width, height, frames, round(duration, 6))


def _check_frame_size(width: int, height: int, limits: UploadLimits) -> None:
    if width * height > limits.max_video_pixels:
        raise FieldError(UPLOAD_FIELD, f"video of {width}x{height} exceeds {limits.max_video_pixels} pixels a frame")


def _count_frames(path: Path) -> tuple[int, float]:
    """The video stream's frames and seconds, from its packets (no decoding): one packet per frame, the
    duration from the first presentation time to the end of the last packet."""
    import av

    frames, start, end = 0, None, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's flush packet
                frames += 1
                if packet.pts is not None:
                    start = packet.pts if start is None else min(start, packet.pts)
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
            time_base = stream.time_base
            fallback = float(container.duration) / 1_000_000 if container.duration else 0.0
    except (av.FFmpegError, OSError, ValueError) as error:
        raise FieldError(UPLOAD_FIELD, f"the video cannot be read to its end ({error})") from None
    duration = float((end - start) * time_base) if start is not None and time_base else fallback
    return frames, duration
