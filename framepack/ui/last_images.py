"""The images of the tab's last-used settings, kept as files so that a reload brings them back.

The last-used settings (`framepack.ui.presets`) hold request fields; images would be megabytes of base64 there.
So on Generate the request's images (init, end, keyframes) are written as PNG files to one folder, and the
last-used settings name those files; on reload they are read back. An image that cannot be read back any more is
left empty and named in a note, so an FLF2V setup never silently becomes T2V.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from framepack.images import load_image
from framepack.request import GenerateRequest
from framepack.ui.controls import image_to_source

logger = logging.getLogger(__name__)

LABELS = {"init_image": "init image", "end_image": "end image"}


class LastImages:
    """The image files of the last-used settings in `folder`."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)

    def save(self, request: GenerateRequest) -> dict[str, Any]:
        """Write the request's images as files (replacing the previous ones) and return the fields naming them:
        init_image, end_image (a path or None) and keyframes ({section: path})."""
        self.folder.mkdir(parents=True, exist_ok=True)
        wanted: dict[str, str] = {}
        fields: dict[str, Any] = {"init_image": None, "end_image": None, "keyframes": {}}
        for name in ("init_image", "end_image"):
            source = getattr(request, name)
            if source:
                fields[name] = self._write(f"{name}.png", load_image(source, name))
                wanted[f"{name}.png"] = fields[name]
        for index, source in sorted(request.keyframes.items()):
            path = self._write(f"keyframe-{index}.png", load_image(source, f"keyframes.{index}"))
            fields["keyframes"][str(index)] = path
            wanted[f"keyframe-{index}.png"] = path
        for stale in self.folder.glob("*.png"):
            if stale.name not in wanted:
                stale.unlink(missing_ok=True)
        return fields

    def _write(self, name: str, picture: Image.Image) -> str:
        path = self.folder / name
        temporary = self.folder / f".{name}.partial"
        picture.save(temporary, format="PNG")
        os.replace(temporary, path)
        return str(path)

    @staticmethod
    def restore(fields: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """(control values of the images the last-used fields name, the images that could not be read back)."""
        values: dict[str, Any] = {}
        lost = []
        for name in ("init_image", "end_image"):
            source = fields.get(name)
            values[name] = _read(source) if source else None
            if source and values[name] is None:
                lost.append(LABELS[name])
        keyframes = []
        for index, source in sorted((fields.get("keyframes") or {}).items(), key=lambda item: int(item[0])):
            picture = _read(source)
            if picture is None:
                lost.append(f"keyframe of section {index}")
            else:  # embedded: a queued job must not depend on a file the next Generate replaces
                keyframes.append([int(index), image_to_source(picture)])
        values["keyframes"] = keyframes
        return values, lost


def _read(source: str) -> Image.Image | None:
    try:
        return load_image(str(source))
    except Exception as error:  # noqa: BLE001 - a file that is gone or damaged is reported by the caller
        logger.info("could not restore the last-used image %s: %s", source, error)
        return None
