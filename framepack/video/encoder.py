"""Frames to a video file with PyAV (bundled FFmpeg); the file appears complete or not at all."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import av
import numpy as np

from framepack.outputs import OutputCommit, partial_path, place_output
from framepack.video.codecs import CONTAINER_FORMATS, EncoderError, check_names, parse_codec_options, pixel_format
from framepack.video.scheduling import drop_realtime_scheduling

logger = logging.getLogger(__name__)


class VideoEncoderSink:
    """Streams uint8 RGB frames into a video: H.264 yuv420p by default, each encoder's best pixel format.

    `comment` is the text of the container's comment tag (FramePack's outputs: `GenerationRecord.embed()`).
    Writes to a hidden partial file; `close()` renames it into place (with `commit`: stages it there, for
    `OutputCommit.commit` to rename with the job's other outputs), `abort()` deletes it.
    """

    def __init__(
        self,
        path: Path | str,
        fps: int,
        width: int,
        height: int,
        codec: str = "libx264",
        container: str = "mp4",
        options: str = "crf:16",
        comment: str | None = None,
        commit: OutputCommit | None = None,
    ):
        if width % 2 or height % 2:
            raise EncoderError("resolution", f"{width}x{height}: width and height must be even for yuv420p")
        check_names(codec, container)
        parsed = parse_codec_options(options, codec)  # the probe's allowlist, before any file is opened
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.commit = commit
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frames = 0
        self._container = av.open(str(self.partial), mode="w", format=CONTAINER_FORMATS[container])
        try:
            if comment:
                self._container.metadata["comment"] = comment
            self._stream = self._container.add_stream(codec, rate=fps)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = pixel_format(codec)
            self._stream.options = parsed
        except Exception as error:
            self.abort()
            if isinstance(error, EncoderError):
                raise
            raise EncoderError("codec", f"cannot open encoder {codec!r}: {error}") from error

    def write(self, frames: np.ndarray) -> None:
        for pixels in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
            self._container.mux(self._stream.encode(frame))
            if not self.frames:  # the encoder opens on its first frame, and SVT-AV1 starts real-time threads then
                drop_realtime_scheduling()
            self.frames += 1

    def close(self) -> Path:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        logger.info("finished %s (%d frames)", self.path, self.frames)
        return place_output(self.partial, self.path, self.commit)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # the file is deleted either way
            self._container.close()
        self.partial.unlink(missing_ok=True)
