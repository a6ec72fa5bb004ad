"""The frame sink protocol: what the section decoder streams into."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class FrameSink(Protocol):
    """Consumes uint8 [T, H, W, 3] frames in time order.

    `close()` finishes the output and returns its path (a file, or a folder of images), or None when the sink
    writes nothing to disk; `abort()` removes everything the sink wrote, so a failed job leaves nothing.
    """

    def write(self, frames: np.ndarray) -> None: ...

    def close(self) -> Path | None: ...

    def abort(self) -> None: ...


def close_sinks(sinks: list[FrameSink]) -> list[Path]:
    """Close every sink; the paths written, including those of sinks a composite sink (with `outputs`) wraps.

    If one close fails, the sinks not yet closed are aborted and the error propagates.
    """
    written: list[Path] = []
    for index, sink in enumerate(sinks):
        try:
            closed = sink.close()
        except BaseException:
            abort_sinks(sinks[index + 1 :])
            raise
        nested = getattr(sink, "outputs", None)
        written.extend(Path(path) for path in (nested if nested else [closed] if closed else []))
    return written


def abort_sinks(sinks: list[FrameSink]) -> None:
    """Abort every sink (each removes what it wrote); one failing must not stop the others cleaning up."""
    for sink in sinks:
        try:
            sink.abort()
        except Exception:
            logger.exception("aborting %r failed", sink)
