"""Small pictures of jobs for queue listings: the first frame of a video, an image, a section preview."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 160  # the longer side, in pixels


def fit(pixels: np.ndarray | Image.Image, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """uint8 [H, W, 3] whose longer side is at most `size`, aspect ratio kept."""
    picture = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    picture = picture.convert("RGB")
    picture.thumbnail((size, size))
    return np.asarray(picture)


def video_thumbnail(path: Path, size: int = THUMBNAIL_SIZE) -> np.ndarray | None:
    """The first frame of a video file, fitted to `size`; None when it cannot be decoded."""
    import av

    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return fit(frame.to_ndarray(format="rgb24"), size)
    except (OSError, av.FFmpegError, IndexError) as error:
        logger.debug("no thumbnail from %s: %s", path, error)
    return None


def image_thumbnail(source: str, size: int = THUMBNAIL_SIZE) -> np.ndarray | None:
    """A request's image (path or base64), fitted to `size`; None when it cannot be read."""
    from framepack.images import load_image

    try:
        return fit(load_image(source), size)
    except Exception as error:  # noqa: BLE001 - a listing shows no picture rather than failing
        logger.debug("no thumbnail from a request image: %s", error)
        return None
