"""Speed and memory settings through the whole job: the request's cache, attention and offload as the Runner
applies them, what they report, and MagCache calibration. The modules themselves are tested in test_caches.py,
test_offload.py, test_quantize.py and test_attention.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, pattern_image, read_raw_frames, tiny_home

from framepack.events import SectionFinished
from framepack.models.caches import load_mag_ratios
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parent.parent
# window 3, 3 sections, 6 steps: enough steps between a section's always-computed first and last for skips
BENCH = {
    **FAST, "steps": 6, "fps": 30, "duration": 1.2, "prompt": "a kite over a beach", "codec": "none", "save_raw": True,
    "seed": 5,
}  # fmt: skip


@pytest.fixture(scope="module")
def init_image(tmp_path_factory) -> str:
    return str(pattern_image(tmp_path_factory.mktemp("img") / "start.png", 160, 128, 3))


def run(runner, init_image, name, calibrate_magcache=False, **fields):
    events = []
    request = GenerateRequest(**{**BENCH, "init_image": init_image, "filename": name, **fields})
    result = runner.run(request, on_event=events.append, calibrate_magcache=calibrate_magcache)
    frames = read_raw_frames(runner.output_dir / f"{name}.safetensors")
    return result, frames, [event for event in events if isinstance(event, SectionFinished)]


def cache_hooks(transformer) -> list[str]:
    names = []
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        names += list(getattr(registry, "hooks", {}) or {})
    return [name for name in names if "cache" in name.lower() or "fbc" in name.lower() or "teacache" in name.lower()]


@pytest.mark.parametrize("method,threshold", [("teacache", 0.15), ("magcache", 0.06), ("fbc", 0.3)])
def test_a_cached_job_reports_its_skips_and_stays_close_to_the_exact_one(runner, init_image, method, threshold):
    exact, exact_frames, exact_sections = run(runner, init_image, "exact", cache="none")
    cached, frames, sections = run(runner, init_image, method, cache=method, cache_threshold=threshold)
    skipped = cached.timings["cache_skipped_calls"]
    assert cached.timings["transformer_calls"] == exact.timings["transformer_calls"] == 3 * 6
    assert 0 < skipped < 18
    assert sum(event.skipped_calls for event in sections) == skipped  # every section reports its own share
    assert [event.model_calls for event in sections] == [6, 6, 6]
    assert len(exact_sections) == 3
    assert exact.timings["cache_skipped_calls"] == 0 and all(event.skipped_calls == 0 for event in exact_sections)
    difference = np.abs(frames.astype(np.int16) - exact_frames.astype(np.int16))
    # measured on the tiny model: mean 0.30 (fbc, 10 skipped), 0.49 (teacache, 6), 0.71 (magcache, 9) levels
    assert frames.shape == exact_frames.shape and difference.mean() < 5.0, difference.mean()
    assert not np.array_equal(frames, exact_frames)  # calls really were skipped
    assert cache_hooks(runner._components.transformer) == []  # the hooks came off the shared transformer
    _again, again_frames, _ = run(runner, init_image, "again", cache="none")
    assert np.array_equal(again_frames, exact_frames)


def test_the_default_request_uses_teacache_like_the_original(runner, init_image):
    assert GenerateRequest().cache == "teacache"
    result, _frames, _sections = run(runner, init_image, "default", cache_threshold=0.5)
    assert result.timings["cache_skipped_calls"] > 0


def test_calibrating_magcache_skips_nothing_and_later_jobs_use_the_ratios(runner, init_image):
    _exact, exact_frames, _ = run(runner, init_image, "exact", cache="none")
    result, frames, _ = run(runner, init_image, "calibrate", cache="none", calibrate_magcache=True)
    assert np.array_equal(frames, exact_frames)
    assert len(result.mag_ratios) == 6 and result.mag_ratios[0] == 1.0 and all(r > 0 for r in result.mag_ratios)
    assert load_mag_ratios("bidirectional", runner.home) == result.mag_ratios
    assert load_mag_ratios("bidirectional") != result.mag_ratios  # the packaged published ratios are untouched


def test_offload_settings_are_applied_per_job_and_keep_the_frames(runner, init_image):
    _first, frames, _ = run(runner, init_image, "none", cache="none", offload="none")
    placed = runner._offloader
    _second, model_frames, _ = run(runner, init_image, "model", cache="none", offload="model", preserved_memory_gb=2)
    assert runner._offloader is not placed and runner._offloader.mode == "model"
    assert runner._components.execution_device.type == "cpu"
    assert np.array_equal(model_frames, frames)
    _third, _frames, _ = run(runner, init_image, "model-again", cache="none", offload="model", preserved_memory_gb=2)
    assert runner._offloader.mode == "model" and runner._placement == ("model", 2.0)


def test_an_attention_kernel_that_cannot_run_here_is_refused_before_loading(runner, init_image, make_manager):
    from framepack.errors import FieldError

    request = GenerateRequest(**{**BENCH, "init_image": init_image, "attention": "flash"})
    with pytest.raises(FieldError) as error:
        runner.run(request)
    assert error.value.field == "attention" and runner._components is None  # nothing was loaded
    with pytest.raises(FieldError):
        make_manager().submit(request)


def test_the_cli_calibrates_magcache_into_the_data_folder(tiny_model_dir, tmp_path, init_image):
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    command = [
        sys.executable, "-m", "framepack", "calibrate-magcache", "--model", "tiny", "--init-image", init_image,
        "--resolution", "128", "--latent-window-size", "3", "--duration", "0.8", "--steps", "4", "--device", "cpu",
        "--codec", "none", "--save-raw", "--default-output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "FRAMEPACK_HOME": str(home)}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ratios = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(ratios) == 4 and load_mag_ratios("bidirectional", home) == ratios


def test_the_benchmark_runs_every_case_on_the_small_config(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "benches/transformer_speed.py",
        "--config",
        "small",
        "--device",
        "cpu",
        "--sections",
        "1",
        "--steps",
        "2",
        "--warmup-steps",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["case"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"none", "model", "balanced", "blocks", "float8", "int8", "teacache", "magcache", "fbc"}
    for row in rows.values():
        assert row["seconds_per_step"] > 0 and row["seconds_per_frame"] > 0
        assert row["model_calls"] == row["steps"]  # one measured section, no CFG
    assert rows["none"]["skipped_calls"] == 0 and rows["float8"]["quantize"] == "float8"
