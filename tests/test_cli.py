"""`python -m framepack`: flags from the request model, a real tiny-model render (the one test that starts the real
entry point in its own process), one-line errors (in this process, through `framepack.cli.main`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import decode_video, pattern_image

from framepack.cli import build_parser, request_from_args
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMEPACK_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "framepack", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_every_request_field_has_a_flag_with_its_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["generate"].format_help()
    for name, info in GenerateRequest.model_fields.items():
        flag = "--keyframe" if name == "keyframes" else "--" + name.replace("_", "-")
        assert flag in help_text, flag
        if name != "keyframes":
            assert info.description.split()[0] in help_text


def test_flags_build_the_request():
    args = build_parser().parse_args(
        [
            "generate",
            "--prompt",
            "p",
            "--variant",
            "f1",
            "--steps",
            "7",
            "--no-preview",
            "--keyframe",
            "2=k.png",
            "--init-strength",
            "0.5",
        ]
    )
    request = request_from_args(args)
    assert (request.prompt, request.variant, request.steps, request.preview, request.init_strength) == (
        "p",
        "f1",
        7,
        False,
        0.5,
    )
    assert request.keyframes == {2: "k.png"}
    assert request.duration == GenerateRequest.model_fields["duration"].default  # unset flags keep the model's default


def test_generate_with_the_tiny_model_writes_the_planned_video(tmp_path):
    image = pattern_image(tmp_path / "start.png", 200, 150)
    result = cli(
        "generate", "--model", "tiny", "--prompt", "a boat", "--init-image", str(image), "--resolution", "128",
        "--duration", "1.2", "--steps", "2", "--latent-window-size", "3", "--output-dir", str(tmp_path),
        "--filename", "boat",
        home=tmp_path / "home", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan_line = next(line for line in result.stdout.splitlines() if line.startswith("plan: "))
    frames = int(plan_line.split()[1])
    assert "SELF-TEST" in result.stdout
    assert f"output: {tmp_path / 'boat.mp4'}" in result.stdout
    decoded, width, height, codec, _ = decode_video(tmp_path / "boat.mp4")
    assert decoded == frames == 37  # 3 sections of 12 frames + the start frame
    assert (width, height, codec) == (144, 112, "h264")
    assert "section 0:" in result.stdout and "decode:" in result.stdout
    # no library chatter a user can do nothing about: the torchvision fallback, the attention-backend notice
    assert "torchvision" not in result.stderr and "experimental feature" not in result.stderr, result.stderr


def test_plan_command_prints_the_plan_without_a_model(framepack_cli, tmp_path):
    result = framepack_cli("plan", "--duration", "3", "--section-prompts", "a\nb", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout.split("\n", 1)[1])
    assert plan["num_sections"] == 2 and plan["generated_frames"] == 73
    assert [s["prompt"] for s in plan["sections"]] == ["a", "b"]
    assert not (tmp_path / "tiny-self-test").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--steps", "0"], "steps: Input should be greater than or equal to 1"),
        (
            ["--variant", "f1", "--init-image", "a.png", "--end-image", "b.png"],
            "end_image works only with variant 'bidirectional'",
        ),
        (["--init-image", "missing.png"], "init_image: not an existing file path nor valid base64 image data"),
        (["--duration", "2", "--keyframe", "5=a.png"], "keyframes"),
        (["--model", "nowhere.json"], "model: 'nowhere.json' is not 'default', 'tiny' or an existing recipe file"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2_before_any_model_loads(framepack_cli, tmp_path, args, message):
    result = framepack_cli("generate", *args, home=tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_default_model_offline_names_the_missing_component(framepack_cli, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    offline = {"HF_HUB_OFFLINE": "1", "FRAMEPACK_MODEL": None}
    result = framepack_cli("generate", "--prompt", "x", "--duration", "1", cwd=tmp_path, env=offline)
    assert result.returncode == 2
    assert "transformer is not available" in result.stderr and "lllyasviel/FramePackI2V_HY" in result.stderr
    assert "hf download" in result.stderr


def test_help_shows_each_default_once_with_the_fields_bounds(framepack_cli, tmp_path):
    result = framepack_cli("generate", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    options = [action for action in generate._actions if action.dest != "help"]
    assert text.count("(default:") == len(options)  # one each, none added by a formatter
    assert "--keyframe SECTION=IMAGE" in text and "(default: None)" not in text
    assert "--steps STEPS Denoising steps per section. [1 to 100] (default: 25)" in text
    assert "--duration DURATION Video length in seconds. [> 0.0 to 600.0] (default: 5.0)" in text
    assert '--prompt PROMPT What the video shows. (default: "")' in text
