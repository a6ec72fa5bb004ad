"""Frames as individual images (PNG or JPEG) in a folder that appears complete or not at all."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from framepack.errors import FieldError
from framepack.outputs import OutputCommit, partial_name, place_output

logger = logging.getLogger(__name__)

FORMATS = {"png": "png", "jpeg": "jpg", "jpg": "jpg"}
SUBSAMPLING = ("4:4:4", "4:2:2", "4:2:0")
PNG_COMPRESS_LEVEL = 3  # 1..3 cost about the same and are far faster than Pillow's default 6 for a few % size


def frame_file_name(stem: str, index: int, extension: str) -> str:
    """The file name of frame `index` of an exported sequence: `{stem}-{index:05d}.{extension}`."""
    return f"{stem}-{index:05d}.{extension}"


class FrameExportSink:
    """Writes each frame as `{stem}-{index:05d}.png` (lossless) or `.jpg`, numbered contiguously from `start_number`.

    The images go to a hidden `.{stem}.partial` folder beside `folder/stem`; `close()` renames it into place (with
    `commit`: stages it, see `VideoEncoderSink`) and returns `folder/stem`, `abort()` deletes it, so a cancelled
    job leaves nothing. FFmpeg's image2 demuxer reads the sequence back, for example at 30 fps:

        ffmpeg -framerate 30 -start_number 0 -i folder/stem/stem-%05d.png -c:v libx264 -pix_fmt yuv420p out.mp4

    (`-start_number` can be left out when the first index is 0..4; image2 only probes that far by itself.)
    """

    def __init__(
        self,
        folder: Path | str,
        stem: str,
        fmt: str = "png",
        quality: int = 90,
        start_number: int = 0,
        subsampling: str = "4:2:0",
        commit: OutputCommit | None = None,
    ):
        key = fmt.lower() if isinstance(fmt, str) else fmt
        if key not in FORMATS:
            raise FieldError("frames_format", f"{fmt!r}; allowed png, jpeg (or jpg)")
        if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
            raise FieldError("jpeg_quality", f"{quality!r}; allowed integers 1..100")
        if subsampling not in SUBSAMPLING:
            raise FieldError("jpeg_subsampling", f"{subsampling!r}; allowed {', '.join(SUBSAMPLING)}")
        if not isinstance(start_number, int) or start_number < 0:
            raise ValueError(f"start_number must be a non-negative integer, got {start_number!r}")
        if not stem or Path(stem).name != stem or stem.startswith("."):
            raise ValueError(f"stem must be a plain, non-hidden file name, got {stem!r}")

        self.extension = FORMATS[key]
        self.quality, self.subsampling, self.stem = quality, subsampling, stem
        self.path = Path(folder) / stem
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise FieldError("filename", f"{self.path} already exists; choose another file name or remove it")
        self.partial = self.path.with_name(partial_name(stem))
        self.commit = commit
        shutil.rmtree(self.partial, ignore_errors=True)  # left over by a process that died mid-export
        self.partial.mkdir(parents=True)
        self.next_number = start_number
        self.frames = 0
        self._size: tuple[int, int] | None = None

    def name(self, index: int) -> str:
        return frame_file_name(self.stem, index, self.extension)

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {list(frames.shape)}")
        if self._size is None:
            self._size = frames.shape[1:3]
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size changed from {self._size} to {frames.shape[1:3]} within one sequence")
        for pixels in frames:
            image = Image.fromarray(np.ascontiguousarray(pixels))
            target = self.partial / self.name(self.next_number)
            if self.extension == "png":
                image.save(target, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            else:
                image.save(target, format="JPEG", quality=self.quality, subsampling=self.subsampling)
            self.next_number += 1
            self.frames += 1

    def close(self) -> Path:
        logger.info("finished %d %s frames for %s", self.frames, self.extension.upper(), self.path)
        return place_output(self.partial, self.path, self.commit)

    def abort(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
