"""Shared fixtures: the tiny self-test model, written once per session and loaded on the CPU in float32.

Tests never touch the network: the Hugging Face libraries are put in offline mode before they are imported.
"""

from __future__ import annotations

import faulthandler
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Seconds past pytest-timeout's limit at which faulthandler ends a test's process (see pytest_runtest_protocol).
BACKSTOP_GRACE_S = 60


STDERR_KEY = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[STDERR_KEY] = os.dup(2)  # the terminal's stderr, before any test's output capture


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """A backstop behind pytest-timeout, whose timer is a Python thread that needs the GIL: a test stuck in native
    code that holds the GIL would hang CI silently. faulthandler's watchdog is a C thread, so past the limit it still
    prints every thread's stack to the terminal and ends the worker, which pytest-xdist reports as a failure."""
    limit = float(item.config.getini("timeout") or 0)
    if limit > 0:
        faulthandler.dump_traceback_later(limit + BACKSTOP_GRACE_S, exit=True, file=item.config.stash[STDERR_KEY])
    try:
        return (yield)
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def no_realtime_threads_left():
    """Fails the test after which a thread of this worker is on real-time scheduling (and resets it): an encoder
    that leaves one (SVT-AV1 does, as root) starves the machine and every process started later (docs in
    framepack/video/scheduling.py); this is how a whole CI run once froze."""
    from framepack.video.scheduling import drop_realtime_scheduling

    yield
    moved = drop_realtime_scheduling()
    assert not moved, f"{moved} threads of this test worker were left on real-time scheduling"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight FramePack model folder in diffusers layout (takes well under a second)."""
    from framepack.models.tiny import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("models") / "framepack-tiny")


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The prompt enhancer's random-weight self-test VLM (a tiny Qwen3-VL), written once (about a second)."""
    from framepack.models.tiny_vlm import write_tiny_vlm

    return write_tiny_vlm(tmp_path_factory.mktemp("models") / "vlm-tiny")


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


@pytest.fixture
def framepack_cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """`python -m framepack ARGS` run in this process (`framepack.cli.main`): a function of the arguments (and
    `home` for FRAMEPACK_HOME, `cwd`, `env` where None removes a variable) that returns a `CliResult` with the exit
    code and what was printed. A `serve` that would really start fails the test instead of serving."""
    import logging

    import uvicorn
    from helpers import CliResult

    from framepack.cli import main

    def started(*_args, **_kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn, "run", started)
    levels = {name: logging.getLogger(name).level for name in ("framepack", "api")}  # `serve` sets them to INFO

    def run(*args: str, home: Path | None = None, cwd: Path | None = None, env: dict[str, str | None] | None = None):
        if home is not None:
            monkeypatch.setenv("FRAMEPACK_HOME", str(home))
        if cwd is not None:
            monkeypatch.chdir(cwd)
        for name, value in (env or {}).items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        capsys.readouterr()  # what came before is not this command's
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse refuses a flag
            code = exit.code
        printed = capsys.readouterr()
        return CliResult(code, printed.out, printed.err)

    yield run
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
