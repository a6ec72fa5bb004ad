"""Section checkpoints of running jobs: the latents of each sampled section, so a killed job resumes where it was.

Layout: `<root>/<job id>/checkpoints/<key>.safetensors`, key = the section index or "start" (the text-to-video
start frame). Files are written under a hidden temporary name and renamed, so a reader never sees half a file;
writing the same key twice (a retried section) replaces it with the same latents.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from framepack.generate import START
from framepack.outputs import write_bytes_atomically
from framepack.plan import Plan

logger = logging.getLogger(__name__)

SectionKey = int | str  # a section index, or START


class CheckpointStore:
    """The checkpoint folders of the jobs under `root` (one folder per job, removed when the job ends)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def folder(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "checkpoints"

    def files(self, job_id: str) -> list[Path]:
        folder = self.folder(job_id)
        if not folder.is_dir():
            return []
        return sorted(path for path in folder.glob("*.safetensors") if not path.name.startswith("."))

    def save(self, job_id: str, key: SectionKey, latents: torch.Tensor) -> None:
        """Latents of a sampled section, written atomically (temporary name, then rename)."""
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        data = save({"latents": latents.detach().to("cpu", torch.float32).contiguous()})
        write_bytes_atomically(data, folder / f"{key}.safetensors", folder / f".{key}.partial.safetensors")
        logger.debug("job %s: checkpoint %s saved", job_id, key)

    def load(self, job_id: str, plan: Plan) -> dict[SectionKey, torch.Tensor]:
        """Saved section latents that belong to `plan` (unreadable or foreign files are skipped: resampled)."""
        restored: dict[SectionKey, torch.Tensor] = {}
        for path in self.files(job_id):
            key: SectionKey
            if path.stem == START and plan.start_frame_pass:
                key = START
            elif path.stem.isdigit() and int(path.stem) < plan.num_sections:
                key = int(path.stem)
            else:
                logger.warning("job %s: ignoring unexpected checkpoint %s", job_id, path)
                continue
            try:
                restored[key] = load_file(str(path))["latents"]
            except (OSError, SafetensorError, KeyError) as error:
                logger.warning(
                    "job %s: checkpoint %s is unreadable (%s); that section is sampled again", job_id, path, error
                )
        return restored

    def remove(self, job_id: str) -> None:
        """The job's folder and everything in it."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
