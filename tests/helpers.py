"""Shared test utilities: in-memory sink, synthetic images, transformer call capture and fixed inputs, video
decoding."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from framepack.video.raw import RawFrames

# The fast settings of the tiny self-test model: one 128 px section of window 3 (13 frames) in 2 steps. Tests that
# need something else say so as {**FAST, ...}.
FAST = {"model": "tiny", "resolution": 128, "latent_window_size": 3, "steps": 2, "duration": 0.4, "prompt": "a kite"}
# The least a job can be: one step of one window-1 section (5 frames), for tests of queues and streams.
SMALLEST = {**FAST, "latent_window_size": 1, "steps": 1, "duration": 0.1}


@dataclass
class CliResult:
    """What a command run in this process returned and printed (the fields of `subprocess.CompletedProcess`)."""

    returncode: int
    stdout: str
    stderr: str


class MemorySink:
    """Collects frames (tests only: it holds the whole video)."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.closed = self.aborted = False

    def write(self, frames: np.ndarray) -> None:
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        self.chunks.append(frames.copy())

    def close(self):
        self.closed = True
        return None

    def abort(self) -> None:
        self.aborted = True

    @property
    def frames(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros((0, 0, 0, 3), np.uint8)


def pattern_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A smooth colourful test picture (gradients plus a few discs), saved as PNG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 9.0 + seed)], axis=-1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(6, width / 3)
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path


class TransformerCalls:
    """Records the keyword inputs of every transformer forward call."""

    def __init__(self, transformer: torch.nn.Module):
        self.calls: list[dict] = []
        self._handle = transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, _module, _args, kwargs):
        self.calls.append(
            {key: value.detach().clone() if torch.is_tensor(value) else value for key, value in kwargs.items()}
        )

    def remove(self) -> None:
        self._handle.remove()

    def __enter__(self) -> TransformerCalls:
        return self

    def __exit__(self, *_exc) -> None:
        self.remove()


def decode_video(path: Path) -> tuple[int, int, int, str, str]:
    """(frames counted by decoding, width, height, codec name, pixel format) of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return (
            frames,
            stream.codec_context.width,
            stream.codec_context.height,
            stream.codec_context.name,
            stream.codec_context.pix_fmt,
        )


def read_raw_frames(path: Path) -> np.ndarray:
    """All frames of a raw `.safetensors` frames file, in order."""
    with RawFrames(path) as raw:
        return np.concatenate(list(raw.iter_chunks()))


def tiny_home(tiny_model_dir: Path, folder: Path, tiny_vlm_dir: Path | None = None) -> Path:
    """A FRAMEPACK_HOME whose tiny-self-test is the session's tiny model (a link: nothing is rewritten), and whose
    tiny-vlm-self-test (the enhancer 'tiny') is `tiny_vlm_dir` when given (else it is written on first use)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tiny-self-test").exists():
        os.symlink(tiny_model_dir, folder / "tiny-self-test")
    if tiny_vlm_dir is not None and not (folder / "tiny-vlm-self-test").exists():
        os.symlink(tiny_vlm_dir, folder / "tiny-vlm-self-test")
    return folder


REPO = Path(__file__).resolve().parents[1]


@functools.cache  # starting the other Python takes seconds, and its answer cannot change during a run
def host_like_python() -> str | None:
    """A Python with SD.Next's Gradio 3.43.2 and the project's requirements (`.ci/host-env.sh` makes `.venv-host`;
    FRAMEPACK_HOST_PYTHON names another), or None."""
    for candidate in filter(
        None, [os.environ.get("FRAMEPACK_HOST_PYTHON"), str(REPO / ".venv-host" / "bin" / "python")]
    ):
        if not Path(candidate).is_file():
            continue
        probe = subprocess.run(
            [candidate, "-c",
             "import gradio, fastapi, torch, diffusers, av; print(gradio.__version__, fastapi.__version__)"],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.split()[:1] == ["3.43.2"]:
            return candidate
    return None


def fixed_transformer_inputs(transformer: torch.nn.Module, dtype: torch.dtype = torch.float32) -> dict:
    """Seeded keyword arguments for one FramePack transformer call: a 2-frame window at 4x4 latents with a
    clean frame and 2x / 4x history, 6 text tokens and 4 image tokens (float tensors in `dtype`)."""
    config = transformer.config
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    channels = config.in_channels
    return {
        "hidden_states": randn(1, channels, 2, 4, 4),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": randn(1, 6, config.text_embed_dim),
        "encoder_attention_mask": torch.ones(1, 6, dtype=torch.bool),
        "pooled_projections": randn(1, config.pooled_projection_dim),
        "image_embeds": randn(1, 4, config.image_proj_dim),
        "indices_latents": torch.arange(2),
        "latents_clean": randn(1, channels, 1, 4, 4),
        "indices_latents_clean": torch.tensor([2]),
        "latents_history_2x": randn(1, channels, 2, 4, 4),
        "indices_latents_history_2x": torch.tensor([3, 4]),
        "latents_history_4x": randn(1, channels, 4, 4, 4),
        "indices_latents_history_4x": torch.tensor([5, 6, 7, 8]),
        "guidance": torch.tensor([10000.0]),
        "return_dict": False,
    }


def transformer_output(transformer: torch.nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return transformer(**inputs)[0].clone()
