"""Batches for the CLI: one request per line of a JSON-lines file, fanned out over a folder of start images and
over several seeds, every request validated and planned before any video is made.

`generate --batch FILE.jsonl --init-image-dir DIR --seeds N` makes, for each line (or once, without a file), for
each image of the folder (or the line's own start image), N videos. A line's fields go over the command-line
flags; a line that names its own `init_image` is not fanned out over the folder. With `--seeds N` and a fixed
seed S the videos get S, S+1, ..., S+N-1; with seed -1 each draws its own. A filename shared by several videos
gets `-001`, `-002`, ... appended.

Errors name where they are: `--batch FILE line 3: duration: ...`, or `--init-image-dir DIR image b.png: ...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from framepack.errors import FieldError, UserError, validation_message
from framepack.request import GenerateRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_SEEDS = 1000


class BatchInvalid(UserError):
    """A batch refused as a whole: `where` says which line or image (and field) is at fault."""

    def __init__(self, where: str, message: str, field: str | None = None):
        super().__init__(f"{where}: {message}")
        self.where, self.field = where, field


@dataclass(frozen=True)
class BatchItem:
    """One video of a batch: the request fields, and where they came from (for messages)."""

    fields: dict[str, Any]
    where: str


def read_batch_file(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, request object) of each non-blank line of a JSON-lines file."""
    source = f"--batch {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BatchInvalid(source, f"cannot read it ({error})") from None
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except ValueError as error:
            raise BatchInvalid(f"{source} line {number}", f"not valid JSON ({error})") from None
        if not isinstance(fields, dict):
            raise BatchInvalid(f"{source} line {number}", "must be a JSON object of request fields")
        lines.append((number, fields))
    if not lines:
        raise BatchInvalid(source, "holds no request (one JSON object per line)")
    return lines


def folder_images(folder: Path) -> list[Path]:
    """The images of a folder (by suffix), sorted by name."""
    source = f"--init-image-dir {folder}"
    if not Path(folder).is_dir():
        raise BatchInvalid(source, "is not a folder")
    images = sorted(path for path in Path(folder).iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise BatchInvalid(source, f"holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return images


def fan_out(
    base: dict[str, Any],
    lines: list[tuple[int, dict[str, Any]]] | None,
    images: list[Path] | None,
    seeds: int | None,
    source: str = "--batch",
) -> list[BatchItem]:
    """The items of a batch: each line's fields over `base` (the flags), times each image (unless the line names
    its own start image), times `seeds` seeds."""
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise BatchInvalid("--seeds", f"{seeds}: allowed 1 to {MAX_SEEDS}")
    items = []
    for number, line in lines if lines is not None else [(None, {})]:
        where = f"{source} line {number}" if number is not None else ""
        fields = {**base, **line}
        for image in [None] if images is None or line.get("init_image") else images:
            with_image = {**fields, "init_image": str(image)} if image is not None else fields
            at = ", ".join(part for part in (where, f"image {image.name}" if image is not None else "") if part)
            first_seed = with_image.get("seed", GenerateRequest.model_fields["seed"].default)
            for index in range(seeds or 1):
                seeded = dict(with_image)
                if seeds and isinstance(first_seed, int) and not isinstance(first_seed, bool) and first_seed != -1:
                    seeded["seed"] = first_seed + index
                label = ", ".join(part for part in (at, f"seed {index + 1}/{seeds}" if seeds else "") if part)
                items.append(BatchItem(seeded, label or "the request"))
    return number_filenames(items)


def number_filenames(items: list[BatchItem]) -> list[BatchItem]:
    """A filename that several items share becomes `<name>-001`, `<name>-002`, ... in batch order."""
    counts: dict[str, int] = {}
    for item in items:
        name = item.fields.get("filename")
        if name:
            counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    numbered = []
    for item in items:
        name = item.fields.get("filename")
        if name and counts[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            item = BatchItem({**item.fields, "filename": f"{name}-{seen[name]:03d}"}, item.where)
        numbered.append(item)
    return numbered


def item_request(item: BatchItem) -> GenerateRequest:
    """The item's request; BatchInvalid naming where and the field when it is not valid."""
    try:
        return GenerateRequest(**item.fields)
    except ValidationError as error:
        first = error.errors()[0]["loc"] if error.errors() else ()
        raise BatchInvalid(item.where, validation_message(error), ".".join(map(str, first)) or None) from None
    except TypeError as error:  # a line's key that is not a valid keyword (e.g. a number as key)
        raise BatchInvalid(item.where, str(error)) from None


def named_error(item: BatchItem, error: Exception) -> Exception:
    """A user error of an item's plan or checks as BatchInvalid naming the item; anything else as it is."""
    if isinstance(error, ValidationError):
        return BatchInvalid(item.where, validation_message(error))
    if isinstance(error, FieldError):
        return BatchInvalid(item.where, str(error), error.field)
    if isinstance(error, UserError):
        return BatchInvalid(item.where, str(error))
    return error
