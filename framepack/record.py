"""The record a finished job leaves (sidecar JSON, or the metadata embedded in a video or raw frames file), read
back: what `python -m framepack info` prints and the tab's "load settings from a video" uses."""

from __future__ import annotations

import json
from pathlib import Path

from framepack.errors import FieldError


def read_record(path: Path) -> dict:
    """The generation record of an output: a sidecar JSON itself, a raw file's metadata, or a video's metadata
    (else its sidecar)."""
    from framepack.video.raw import RawFrames

    if not path.is_file():
        raise FieldError("video", f"{path} does not exist")
    if path.suffix == ".json":
        try:
            record = json.loads(path.read_text())
        except ValueError:
            record = None
        if not isinstance(record, dict) or "request" not in record:
            raise FieldError("video", f"{path.name} is not a FramePack sidecar")
        return record
    if path.suffix == ".safetensors":
        with RawFrames(path) as raw:
            if raw.request:
                return raw.request
        raise FieldError("video", f"{path} carries no FramePack request metadata")
    import av

    try:
        with av.open(str(path)) as container:
            comment = container.metadata.get("comment") or container.metadata.get("COMMENT")
        if comment:
            return json.loads(comment)
    except (av.error.FFmpegError, ValueError):
        pass
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    raise FieldError("video", f"{path} carries no FramePack metadata and has no sidecar {sidecar.name}")
