"""Planning without torch: `python -m framepack plan` and the CLI's input errors with torch, diffusers, PyAV and
transformers made unimportable (`sys.modules[name] = None`), and the modules a face imports to plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import MemorySink, pattern_image

from framepack.events import StepProgress
from framepack.generate import generate
from framepack.plan import make_plan
from framepack.planning import plan_request
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "av", "transformers", "gradio", "fastapi")
# runs `python -m framepack ARGS` in a process where importing any HEAVY module fails
BLOCKED_CLI = (
    "import runpy, sys\n"
    f"for name in {HEAVY!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = ['framepack', *sys.argv[1:]]\n"
    "runpy.run_module('framepack', run_name='__main__', alter_sys=True)\n"
)


def blocked_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMEPACK_HOME": str(cwd / "home"), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("FRAMEPACK_MODEL", None)
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


def test_the_blocker_really_blocks(tmp_path):
    """The wrapper makes a torch import fail (else the other tests would prove nothing)."""
    result = blocked_cli("generate", "--model", "tiny", "--prompt", "a kite", "--steps", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert "import of " in result.stderr and "halted; None in sys.modules" in result.stderr


@pytest.mark.parametrize("variant", ["bidirectional", "f1"])
def test_plan_runs_without_torch_and_matches_the_library(tmp_path, variant):
    image = pattern_image(tmp_path / "start.png", 200, 100)
    key = pattern_image(tmp_path / "key.png", 64, 64, seed=1)
    flags = ["--prompt", "a kite", "--init-image", "start.png", "--keyframe", f"1={key.name}", "--variant", variant,
             "--duration", "3", "--section-prompts", "rises\nfalls", "--seed", "7"]  # fmt: skip
    result = blocked_cli("plan", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary, _, detail = result.stdout.partition("\n")
    printed = json.loads(detail)

    request = GenerateRequest(
        prompt="a kite", init_image=str(image), keyframes={1: str(key)}, variant=variant, duration=3.0,
        section_prompts="rises\nfalls", seed=7,
    )  # fmt: skip
    expected = plan_request(request)
    assert printed == json.loads(expected.model_dump_json()) and summary == expected.summary()
    # independently: 3 s at 30 fps in sections of 4*9 frames, 1 + 36 per section; a 2:1 image takes the 864x448 bucket
    sections = round(3 * 30 / 36)
    assert (printed["num_sections"], printed["output_frames"]) == (sections, 1 + 36 * sections)
    assert (printed["width"], printed["height"], printed["mode"]) == (864, 448, "i2v")


@pytest.mark.parametrize(
    "args,message",
    [
        (["generate", "--steps", "0"], "error: steps: Input should be greater than or equal to 1"),
        (["plan", "--container", "avi"], "argument --container: invalid choice: 'avi'"),
        (["generate", "--init-image", "missing.png"], "error: init_image: not an existing file path nor valid base64"),
        (["generate", "--init-image", "start.png", "--keyframe", "5=start.png"], "keyframes: section 5 does not exist"),
        (["generate", "--init-image", "not-an-image.png"], "error: init_image: not a readable image"),
        (["calibrate-magcache", "--duration", "700"], "error: duration: Input should be less than or equal to 600"),
        (["generate", "--request-file", "missing.json"], "error: request_file: cannot read missing.json"),
        (["generate", "--codec-options", "x264-params=qpfile=a"], "error: codec_options: x264-params: qpfile is not"),
        (["plan", "--aspect-ratio", "7"], "error: aspect_ratio: aspect_ratio must be 'auto' or W:H"),
    ],
    ids=[
        "bound",
        "choice",
        "missing-image",
        "keyframe-section",
        "not-an-image",
        "calibrate",
        "request-file",
        "codec-option",
        "validator-message",
    ],  # fmt: skip
)
def test_input_errors_need_no_torch(tmp_path, args, message):
    pattern_image(tmp_path / "start.png", 64, 64)
    (tmp_path / "not-an-image.png").write_text("plain text")
    result = blocked_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "home").exists()  # nothing was written, the self-test model neither


def test_planning_modules_import_nothing_heavy():
    """Importing what a face needs to validate and plan loads none of the heavy libraries, not even quietly."""
    code = (
        "import sys\n"
        "import framepack.cli, framepack.planning, framepack.defaults, framepack.record\n"
        f"print([name for name in sys.modules if name.split('.')[0] in {HEAVY!r}])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["clip.json", "clip.safetensors"])
def test_info_of_a_sidecar_or_raw_file_needs_no_torch(tmp_path, name):
    fixtures = ROOT / "tests" / "fixtures" / "records"
    result = blocked_cli("info", str(fixtures / name), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (fixtures / f"info-{name.replace('.', '-')}.txt").read_text()  # as main printed it


@pytest.mark.parametrize("init", [False, True], ids=["t2v", "i2v"])
def test_total_steps_counts_every_denoising_step_of_the_job(tiny_components, tmp_path, init):
    image = str(pattern_image(tmp_path / "start.png", 128, 128)) if init else None
    request = GenerateRequest(
        prompt="a kite", init_image=image, resolution=128, latent_window_size=2, duration=0.9, steps=3
    )
    plan = plan_request(request)
    sections = round(0.9 * 30 / (4 * 2))  # independently: 4*window frames per section
    assert plan.total_steps == 3 * (sections + (0 if init else 1))  # T2V adds the start frame's pass
    steps = []
    generate(
        tiny_components,
        request,
        plan,
        [MemorySink()],
        on_event=lambda e: isinstance(e, StepProgress) and steps.append(e),
    )
    assert len(steps) == plan.total_steps and steps[-1].done_steps == plan.total_steps
    assert {event.total_steps for event in steps} == {plan.total_steps}


def test_the_seed_a_plan_draws_comes_from_its_draw_seed_argument():
    drawn = []

    def draw() -> int:
        drawn.append(1234)
        return 1234

    assert make_plan(GenerateRequest(seed=-1), draw_seed=draw).seed == 1234 and drawn == [1234]
    assert make_plan(GenerateRequest(seed=5), draw_seed=draw).seed == 5 and drawn == [1234]  # a given seed draws none
    seeds = {make_plan(GenerateRequest(seed=-1)).seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= seed < 2**32 for seed in seeds)  # the default draws at random


def test_plan_shows_the_estimate_from_earlier_jobs_without_torch(tmp_path):
    """`plan` reads the speed measurements of FRAMEPACK_HOME (written here as a job of the same kind would leave
    them): null before any, then measured seconds per step x steps + per frame x frames + the rest."""
    from framepack.estimate import record_speed

    flags = ["--prompt", "a kite", "--duration", "4"]
    result = blocked_cli("plan", *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "estimated_seconds" not in json.loads(result.stdout.partition("\n")[2])  # no estimate, no key
    request = GenerateRequest(prompt="a kite", duration=4.0)
    timings = {"sampled_steps": 10, "sampling": 5.0, "decode": 1.09, "total": 8.09}  # 0.5 s/step, 0.01 s/frame, 2 s
    assert record_speed(tmp_path / "home", request, make_plan(request), timings)
    result = blocked_cli("plan", *flags, cwd=tmp_path)
    printed = json.loads(result.stdout.partition("\n")[2])
    assert (printed["num_sections"], printed["start_frame_pass"], printed["generated_frames"]) == (3, True, 109)
    assert printed["estimated_seconds"] == 53.1  # 0.5 s x (1 + 3) x 25 steps + 0.01 s x 109 frames + 2 s


def test_plan_request_reads_every_image_and_plans_the_keyframes(tmp_path):
    """The images are checked before planning; a keyframe conditions its section and the ones after it."""
    image = str(pattern_image(tmp_path / "start.png", 160, 128))
    request = GenerateRequest(
        model="tiny", prompt="a kite", init_image=image, keyframes={2: image}, duration=0.7, latent_window_size=1
    )
    plan = plan_request(request, tmp_path)
    assert plan.num_sections == 5 and [section.keyframe for section in plan.sections] == [None, None, 2, 2, 2]
    (tmp_path / "broken.png").write_text("not a picture")
    with pytest.raises(ValueError, match="keyframes.2"):
        plan_request(request.model_copy(update={"keyframes": {2: str(tmp_path / "broken.png")}}), tmp_path)
