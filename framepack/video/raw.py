"""Raw frames as a safetensors file: lossless, streamable, and readable by any safetensors tool.

A raw file holds one tensor, "frames", uint8 [T, H, W, 3] (RGB, time order), and string metadata:

    format   "framepack-raw-frames"     version  "1"
    fps      "30" (a number)            width, height, frames (T)
    request  a JSON object: in FramePack's outputs the job's record (framepack/record.py, its embedded part)
    plus any extra strings the writer passed (codec settings, ...)

It is a standard safetensors file (`safetensors.safe_open`, `safetensors.numpy.load_file`), so frames can be
re-encoded later with other settings without generating again. Because the frame count is known before the first
frame exists, the writer puts the header first and appends frames as they arrive: memory stays flat for any
length, and the reader streams chunks back with plain file reads for the same reason.

Files written by other tools (for example the SD.Next FramePack extension) that hold a "frames" uint8
[T, H, W, 3] tensor without our metadata are read too; their `fps` is None and the caller must supply it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from framepack.errors import UserError
from framepack.outputs import OutputCommit, partial_path, place_output
from framepack.safetensors_header import read_header as read_safetensors_header

logger = logging.getLogger(__name__)

FORMAT = "framepack-raw-frames"
VERSION = "1"
TENSOR = "frames"
LAYOUT = "uint8 [T, H, W, 3]"
RESERVED_KEYS = ("format", "version", "fps", "width", "height", "frames", "request")


class RawFileError(UserError, ValueError):
    """A file that cannot be read as raw frames; the message names the file and what is wrong."""


def fps_text(fps: float) -> str:
    """30 -> '30', 29.97 -> '29.97': integral rates without a trailing '.0', others exactly (repr round-trips)."""
    return str(int(fps)) if float(fps).is_integer() else repr(float(fps))


def safetensors_header(shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    """The 8-byte little-endian length plus the JSON header for one U8 tensor at offset 0.

    The JSON is padded with spaces to a multiple of 8 bytes, as the safetensors spec asks, so the data is aligned.
    """
    header = {
        "__metadata__": metadata,
        TENSOR: {"dtype": "U8", "shape": list(shape), "data_offsets": [0, math.prod(shape)]},
    }
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


class RawFramesSink:
    """Streams uint8 [T, H, W, 3] frames into a raw safetensors file of exactly `frames` frames.

    Writes the header up front and the frame bytes as they come, to a hidden partial file; `close()` checks the
    count and renames it into place (with `commit`: stages it, see `VideoEncoderSink`), `abort()` deletes it.
    `request` (any JSON-able dict) is stored as JSON in the "request" key; `metadata` adds extra string keys (they
    may not replace the keys this format defines).
    """

    def __init__(
        self,
        path: Path | str,
        fps: float,
        width: int,
        height: int,
        frames: int,
        metadata: dict[str, str] | None = None,
        request: dict | None = None,
        commit: OutputCommit | None = None,
    ):
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        for name, value in (("width", width), ("height", height), ("frames", frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        extra = dict(metadata or {})
        clashes = sorted(set(extra) & set(RESERVED_KEYS))
        if clashes:
            raise ValueError(f"metadata keys {clashes} are reserved by the raw format")
        bad = [key for key, value in extra.items() if not isinstance(key, str) or not isinstance(value, str)]
        if bad:
            raise ValueError(f"metadata must map strings to strings; not so for {bad}")

        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.commit = commit
        self.shape = (frames, height, width, 3)
        self.frames = 0
        header = {
            "format": FORMAT,
            "version": VERSION,
            "fps": fps_text(fps),
            "width": str(width),
            "height": str(height),
            "frames": str(frames),
            "request": json.dumps(request if request is not None else {}, separators=(",", ":")),
            **extra,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")
        try:
            self._file.write(safetensors_header(self.shape, header))
        except BaseException:
            self.abort()
            raise

    def write(self, frames: np.ndarray) -> None:
        total, height, width, _ = self.shape
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.shape[1:] != (height, width, 3):
            got = f"{frames.dtype} {list(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise ValueError(f"{self.path.name}: expected uint8 [T, {height}, {width}, 3] frames, got {got}")
        if self.frames + frames.shape[0] > total:
            written = self.frames + frames.shape[0]
            raise ValueError(f"{self.path.name}: this write makes {written} frames of {total} announced")
        self._file.write(memoryview(np.ascontiguousarray(frames)).cast("B"))
        self.frames += frames.shape[0]

    def close(self) -> Path:
        total = self.shape[0]
        if self.frames != total:
            self.abort()
            raise ValueError(f"{self.path.name}: {self.frames} of {total} announced frames were written; nothing kept")
        self._file.close()
        logger.info("finished %s (%d frames, %d bytes)", self.path, total, self.partial.stat().st_size)
        return place_output(self.partial, self.path, self.commit)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is deleted either way
            self._file.close()
        self.partial.unlink(missing_ok=True)


class RawFrames:
    """Reads a raw frames file chunk by chunk, never holding the whole video.

    `width`, `height` and `count` come from the tensor shape; `fps` from the metadata, or None for files that
    lack it (other tools' files): the caller must then supply the rate. `request` is the stored request dict, or
    None. Use as a context manager, or call `close()`.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if not self.path.is_file():
            raise self._error("no such file" if not self.path.exists() else "not a file")
        self._file = open(self.path, "rb")
        try:
            self._read_header()
        except BaseException:
            self._file.close()
            raise

    def _error(self, problem: str) -> RawFileError:
        return RawFileError(f"{self.path}: {problem}")

    def _read_header(self) -> None:
        not_safetensors = self._error(f"not a safetensors file; expected a raw frames file holding '{TENSOR}' {LAYOUT}")
        try:
            header, data_start, size = read_safetensors_header(self._file)
        except ValueError:
            raise not_safetensors from None

        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._error("safetensors metadata must map strings to strings")
        self.metadata: dict[str, str] = dict(metadata)
        if TENSOR not in header:
            found = ", ".join(sorted(header)) or "none"
            raise self._error(f"no '{TENSOR}' tensor (found: {found}); expected '{TENSOR}' {LAYOUT}")
        info = header[TENSOR]
        try:
            dtype, shape = info["dtype"], [int(n) for n in info["shape"]]
            begin, end = (int(n) for n in info["data_offsets"])
        except (TypeError, KeyError, ValueError):
            raise not_safetensors from None
        if begin < 0 or end < begin:
            raise not_safetensors
        if len(shape) != 4 or shape[-1] != 3:
            raise self._error(f"'{TENSOR}' has shape {shape}; expected {LAYOUT}")
        if dtype != "U8":
            raise self._error(f"'{TENSOR}' has dtype {dtype}; expected {LAYOUT}")
        if end - begin != math.prod(shape) or data_start + end > size:
            raise self._error(f"'{TENSOR}' data is truncated or inconsistent with its shape {shape}")

        self.count, self.height, self.width = shape[0], shape[1], shape[2]
        self._offset = data_start + begin
        version = self.metadata.get("version")
        if self.metadata.get("format") == FORMAT and version != VERSION:
            raise self._error(f"raw format version {version!r} is not supported (this reads {VERSION!r})")
        self.fps: float | None = None
        if "fps" in self.metadata:
            try:
                self.fps = float(self.metadata["fps"])
            except ValueError:
                self.fps = math.nan
            if not (math.isfinite(self.fps) and self.fps > 0):
                raise self._error(f"fps metadata {self.metadata['fps']!r} is not a positive number")
        self.request: dict | None = None
        if "request" in self.metadata:
            try:
                self.request = json.loads(self.metadata["request"])
            except json.JSONDecodeError:
                raise self._error("request metadata is not valid JSON") from None
            if not isinstance(self.request, dict):
                raise self._error("request metadata is not a JSON object")

    def iter_chunks(self, chunk: int = 64) -> Iterator[np.ndarray]:
        """Yields the frames in order as fresh uint8 [n, H, W, 3] arrays of at most `chunk` frames.

        Plain positioned reads, not a memory map: mapped pages that were read count towards the process's
        resident memory until the kernel reclaims them, so a mapped read of a long video looks like loading it.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        frame_bytes = self.height * self.width * 3
        for start in range(0, self.count, chunk):
            n = min(chunk, self.count - start)
            frames = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
            self._file.seek(self._offset + start * frame_bytes)
            got = self._file.readinto(memoryview(frames).cast("B")) or 0
            if got != frames.nbytes:
                raise self._error(f"file ended early, at frame {start + got // frame_bytes} of {self.count}")
            yield frames

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RawFrames:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
