"""Shared fixtures: the tiny self-test model, written once per session and loaded on the CPU in float32.

Tests never touch the network: the Hugging Face libraries are put in offline mode before they are imported.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight FramePack model folder in diffusers layout (takes well under a second)."""
    from framepack.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "framepack-tiny")


@pytest.fixture(scope="session")
def tiny_components(tiny_model_dir: Path):
    """The tiny model loaded through the real loader, on the CPU, in float32."""
    from framepack.models.loader import load_components
    from framepack.models.recipe import tiny_recipe

    return load_components(tiny_recipe(tiny_model_dir).with_dtype("float32"), device="cpu")
