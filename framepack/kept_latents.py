"""The kept latents of a finished job (`keep_latents`): one safetensors file per job, what continuations and re-rolls
start from instead of decoding the video and encoding it again.

The file holds the start-frame latent ("start", float32), every section's latents ("section.<index>", in the dtype
the engine rounded them to: the transformer's, see `framepack.generate.kept_dtype`) and the state of the job's random
stream after its last section ("stream_state", uint8). Its metadata names the format and the plan it belongs to
(variant, size, window, sections, seed), so a file is checked before anything is restored from it. It is written
under a hidden temporary name and renamed, so a reader never sees half a file.

Size: `kept_bytes`. A minute at 640 (50 sections of 9 latent frames plus the start frame, 80x76 latents) keeps
87.9 MB with the published model (16 latent channels, kept in bfloat16) and 43.9 MB with the self-test model (4
channels, float32 on a CPU); tests/test_extend.py computes both from the plan and checks the formula against a
written file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from framepack.extend import kept_matches, plan_metadata
from framepack.generate import START, KeptLatents, LatentKey
from framepack.outputs import write_bytes_atomically
from framepack.plan import Plan

logger = logging.getLogger(__name__)

FORMAT = "framepack-kept-latents-1"
SUFFIX = ".latents.safetensors"
STREAM_STATE_BYTES = 5056  # torch.Generator("cpu").get_state(): the Mersenne Twister's state


class KeptLatentsError(OSError):
    """A kept latents file that is missing, unreadable or not the one of the plan it is read for."""


def tensor_name(key: LatentKey) -> str:
    return "start" if key == START else f"section.{int(key)}"


def kept_bytes(plan: Plan, channels: int, spatial_scale: int, section_dtype: torch.dtype) -> int:
    """Bytes of the tensors a job of `plan` keeps: the start latent in float32, the sections in `section_dtype`,
    the stream state (the file adds a header of a few hundred bytes)."""
    frame = channels * (plan.height // spatial_scale) * (plan.width // spatial_scale)
    section_bytes = torch.empty((), dtype=section_dtype).element_size()
    return frame * 4 + plan.num_sections * plan.latent_window_size * frame * section_bytes + STREAM_STATE_BYTES


def save_kept(path: Path, kept: KeptLatents, plan: Plan) -> int:
    """Write `kept` for `plan` to `path` (temporary name, then rename); the file's size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {tensor_name(key): tensor.detach().cpu().contiguous() for key, tensor in kept.latents.items()}
    tensors["stream_state"] = kept.stream_state.detach().cpu().contiguous()
    data = save(tensors, metadata={"format": FORMAT, **plan_metadata(plan)})
    write_bytes_atomically(data, path, path.with_name(f".{path.name}.partial"))
    logger.debug("kept latents written to %s (%d bytes)", path, len(data))
    return len(data)


def read_metadata(path: Path) -> dict[str, str]:
    """The file's metadata (the header only is read); KeptLatentsError when it is missing or not a kept file."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError) as error:
        raise KeptLatentsError(f"cannot read the kept latents {path}: {error}") from None
    if metadata.get("format") != FORMAT:
        raise KeptLatentsError(f"{path} is not a FramePack kept-latents file")
    return metadata


def load_kept(path: Path, plan: Plan, keys: list[LatentKey]) -> KeptLatents:
    """The latents `keys` (START and section indices) and the stream state from the file of `plan`'s job, as
    float32 (exactly the values the job used); KeptLatentsError when the file is missing, damaged or another plan's."""
    if not kept_matches(read_metadata(path), plan):
        raise KeptLatentsError(f"{path} holds the latents of another job than the one asked for")
    try:
        with safe_open(str(path), framework="pt") as handle:
            latents = {key: handle.get_tensor(tensor_name(key)).float() for key in keys}
            stream = handle.get_tensor("stream_state")
    except (OSError, SafetensorError) as error:
        raise KeptLatentsError(f"cannot read the kept latents {path}: {error}") from None
    return KeptLatents(latents, stream)


class KeptStore:
    """The kept latents of the jobs under `root`: `<root>/<job id>.latents.safetensors`."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, job_id: str) -> Path:
        return self.root / f"{job_id}{SUFFIX}"

    def exists(self, job_id: str) -> bool:
        return self.path(job_id).is_file()

    def save(self, job_id: str, kept: KeptLatents, plan: Plan) -> int:
        return save_kept(self.path(job_id), kept, plan)

    def load(self, job_id: str, plan: Plan, keys: list[LatentKey]) -> KeptLatents:
        return load_kept(self.path(job_id), plan, keys)

    def remove(self, job_id: str) -> None:
        self.path(job_id).unlink(missing_ok=True)
