"""One image as the output (single-frame inference): a PNG that carries the generation record."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from framepack.outputs import OutputCommit, partial_path, place_output, remove_path

logger = logging.getLogger(__name__)

RECORD_KEY = "framepack"  # the PNG text chunk that holds the record's embedded JSON


class ImageSink:
    """Takes exactly one frame and writes it as a PNG with `record` (JSON text) in its `framepack` text chunk, under
    a temporary name renamed into place on `close()` (with `commit`: staged for the job's commit)."""

    def __init__(self, path: Path | str, record: str, commit: OutputCommit | None = None):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.record, self.commit = record, commit
        self.frame: np.ndarray | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, frames: np.ndarray) -> None:
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 [T, H, W, 3] frames, got {frames.dtype} {list(frames.shape)}")
        if self.frame is not None or frames.shape[0] != 1:
            raise ValueError("an image output takes exactly one frame")
        self.frame = frames[0].copy()

    def close(self) -> Path:
        if self.frame is None:
            raise ValueError("an image output got no frame")
        info = PngImagePlugin.PngInfo()
        info.add_text(RECORD_KEY, self.record)
        Image.fromarray(self.frame).save(self.partial, format="PNG", pnginfo=info)
        logger.info("finished the image %s", self.path)
        return place_output(self.partial, self.path, self.commit)

    def abort(self) -> None:
        remove_path(self.partial)


def image_record_text(path: Path | str) -> str | None:
    """The record text a PNG written by `ImageSink` carries; None for an image without one."""
    try:
        with Image.open(path) as image:
            return image.info.get(RECORD_KEY) if isinstance(image.info.get(RECORD_KEY), str) else None
    except OSError:
        return None
