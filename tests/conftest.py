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


@pytest.fixture
def runner(tiny_model_dir: Path, tmp_path: Path):
    """A CPU Runner writing to tmp/out whose model 'tiny' is the session's self-test model (no writing, no download)."""
    from helpers import tiny_home

    from framepack.runner import Runner

    return Runner(device="cpu", output_dir=tmp_path / "out", home=tiny_home(tiny_model_dir, tmp_path / "home"))


@pytest.fixture
def make_manager(tmp_path: Path, runner):
    """Job managers over one data folder (a second one models a restarted process); all closed at the end."""
    from framepack.jobs.manager import JobManager

    managers = []

    def make(start: bool = True, **kwargs):
        manager = JobManager(tmp_path / "data", kwargs.pop("runner", runner), **kwargs)
        managers.append(manager)
        if start:
            manager.start()
        return manager

    yield make
    for manager in managers:
        manager.close(timeout=30)
