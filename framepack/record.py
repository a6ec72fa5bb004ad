"""The record a generation leaves: what made it, embedded in its outputs and written beside them.

Every output carries the embedded part (`GenerationRecord.embed`): a video in its container's `comment` tag, a
raw frames file in its `request` metadata key, a single-frame PNG in its `framepack` text chunk. The sidecar
`<stem>.json` is the whole record: the embedded part plus the full plan, the timings and the output paths. The
record's request re-creates the video (the seed as resolved); images given as file paths are kept by path, images
given as base64 are left out and listed.

Reading takes any of them (`GenerationRecord.read`): a sidecar itself, a raw file's metadata, a PNG's text chunk, or
a video's `comment` tag, else the sidecar beside the video. Records written by earlier versions read as they were
written (tests/fixtures/records holds files made before this module existed). No torch here; PyAV is imported only
to read a video's tag.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from framepack import __version__
from framepack.errors import FieldError
from framepack.images import is_file_path
from framepack.outputs import IMAGE_SUFFIX, SIDECAR_SUFFIX, OutputCommit, partial_path
from framepack.plan import Plan
from framepack.request import IMAGE_FIELDS, GenerateRequest
from framepack.video.image import image_record_text
from framepack.video.raw import RawFrames

LIBRARIES = ("torch", "diffusers", "transformers", "av")  # whose versions a record names
SIDECAR_ONLY = ("plan_detail", "timings", "outputs")  # fields the sidecar has and the embedded record leaves out
COMPACT = (",", ":")


class GenerationRecord(BaseModel):
    """What made an output. Fields a record was read without stay unset and are not written back; unknown fields
    (of a later version) are kept."""

    model_config = ConfigDict(extra="allow")

    generator: str  # "framepack <version>"
    versions: dict[str, str] = {}  # of the libraries that computed it (LIBRARIES), where installed
    request: dict[str, Any]  # the request's fields as JSON, the seed as resolved, base64 images left out
    images_not_stored: list[str] = []  # the image fields left out: IMAGE_FIELDS' names, "keyframes.<index>"
    plan: str  # the plan's one-line summary
    self_test_model: bool = False  # made with the random-weight self-test model: the video is noise
    warnings: list[str] = []  # what the run said that the request does not show (e.g. the enhancer was missing)
    parent: str | None = (
        None  # the job it continues or re-rolls (continue_job / reroll_job); unset for a job of its own
    )
    parent_kind: str | None = None  # "continue" or "reroll"
    plan_detail: Plan | None = None  # sidecar only: the whole plan
    timings: dict[str, int | float] | None = None  # sidecar only: seconds per stage and section, cache call counts
    outputs: list[str] | None = None  # sidecar only: the output paths

    @classmethod
    def of(cls, request: GenerateRequest, plan: Plan, warnings: list[str] | None = None) -> GenerationRecord:
        """The record of `request` planned as `plan` (its seed is the one recorded; its enhanced_prompts hold the
        text each enhanced section prompt encoded), with the run's `warnings` when there are any."""
        fields = request.model_dump(mode="json")
        fields["seed"] = plan.seed
        left_out = []
        for name in IMAGE_FIELDS:
            if fields[name] and not is_file_path(fields[name]):
                fields[name] = None
                left_out.append(name)
        for index, source in list(fields["keyframes"].items()):
            if not is_file_path(source):
                del fields["keyframes"][index]
                left_out.append(f"keyframes.{index}")
        record = cls(
            generator=f"framepack {__version__}",
            versions=library_versions(),
            request=fields,
            images_not_stored=left_out,
            plan=plan.summary(),
            self_test_model=plan.self_test_model,
        )
        if warnings:
            record.warnings = list(warnings)
        if plan.extend is not None:  # set only then: records of jobs of their own read and write as before
            record.parent, record.parent_kind = plan.extend.parent, plan.extend.kind
        return record

    def finished(self, plan: Plan, timings: dict[str, int | float], outputs: list[str]) -> GenerationRecord:
        """The sidecar's record: this one plus the whole plan (every field, also those a plan read from an older
        record was read without), the timings and the outputs."""
        whole = Plan.model_validate(plan.model_dump())
        return self.model_copy(update={"plan_detail": whole, "timings": dict(timings), "outputs": list(outputs)})

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data, as it is (or was) stored."""
        return self.model_dump(mode="json", exclude_unset=True)

    def embedded(self) -> dict[str, Any]:
        """The part every output carries (no sidecar-only fields)."""
        return {name: value for name, value in self.as_dict().items() if name not in SIDECAR_ONLY}

    def embed(self) -> str:
        """The embedded part as compact JSON: a video's `comment` tag, a raw file's `request` metadata."""
        return json.dumps(self.embedded(), separators=COMPACT)

    def write(self, sidecar: Path, commit: OutputCommit | None = None) -> Path:
        """Write the record as the sidecar JSON `sidecar`, under its temporary name, then renamed (with `commit`:
        staged for `commit.commit()`)."""
        temporary = partial_path(sidecar)
        if commit is not None:
            commit.stage(temporary, sidecar)  # staged first, so a failed write is discarded with the rest
        temporary.write_text(json.dumps(self.as_dict(), indent=2))
        if commit is None:
            os.replace(temporary, sidecar)
        return sidecar

    @classmethod
    def read(cls, path: Path) -> GenerationRecord:
        """The record of an output: a sidecar JSON itself, a raw file's metadata, a PNG's text chunk, or a video's
        `comment` tag (else the sidecar beside it). FieldError naming "video" when there is none."""
        path = Path(path)
        if not path.is_file():
            raise FieldError("video", f"{path} does not exist")
        if path.suffix == SIDECAR_SUFFIX:
            return cls.read_sidecar(path)
        if path.suffix == IMAGE_SUFFIX:
            record = embedded_record(parse_json(image_record_text(path)))
            if record is None:
                raise FieldError("video", f"{path} carries no FramePack metadata")
            return record
        if path.suffix == ".safetensors":
            with RawFrames(path) as raw:
                record = embedded_record(raw.request)
            if record is None:
                raise FieldError("video", f"{path} carries no FramePack request metadata")
            return record
        record = embedded_record(video_comment(path))
        if record is not None:
            return record
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            return cls.read_sidecar(sidecar)
        raise FieldError("video", f"{path} carries no FramePack metadata and has no sidecar {sidecar.name}")

    @classmethod
    def read_sidecar(cls, path: Path) -> GenerationRecord:
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError:
            raise FieldError("video", f"{path.name} is not a FramePack sidecar") from None


def library_versions() -> dict[str, str]:
    """Installed versions of LIBRARIES (read from the package metadata: nothing is imported)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def embedded_record(data: Any) -> GenerationRecord | None:
    """The record in an output's embedded metadata (parsed JSON), None when it holds none."""
    if not isinstance(data, dict):
        return None
    try:
        return GenerationRecord.model_validate(data)
    except ValidationError:
        return None


def parse_json(text: str | None) -> Any:
    """Parsed JSON of a text, None for none or for text that is not JSON."""
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def video_comment(path: Path) -> Any:
    """The parsed JSON of a video's `comment` tag; None for a file that is no video or has no JSON comment."""
    import av  # only reading a video needs PyAV

    try:
        with av.open(str(path)) as container:
            comment = container.metadata.get("comment") or container.metadata.get("COMMENT")
        return json.loads(comment) if comment else None
    except (av.error.FFmpegError, ValueError):
        return None


def sidecar_path(output: Path) -> Path:
    """The sidecar of an output: `<stem>.json` beside it."""
    return Path(output).with_suffix(SIDECAR_SUFFIX)


def read_record(path: Path) -> dict[str, Any]:
    """The record of an output (see `GenerationRecord.read`) as JSON-able data, as it is stored."""
    return GenerationRecord.read(path).as_dict()


def request_fields(data: Any) -> dict[str, Any]:
    """The request fields in a JSON document: a whole record's `request`, or the document itself (a request)."""
    if not isinstance(data, dict):
        raise FieldError("request_file", "must hold a JSON object: a request, or a record whose request is used")
    return data["request"] if isinstance(data.get("request"), dict) else data
