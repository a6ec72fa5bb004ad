"""`python -m framepack generate --batch FILE.jsonl --init-image-dir DIR --seeds N`: every request checked before
any video is made, a bad line refusing the whole batch by line and field, and one video per request whose frame
count is its plan's (the tiny self-test model, in this process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import decode_video, pattern_image, tiny_home

from framepack.planning import plan_request
from framepack.request import GenerateRequest

FLAGS = ["--model", "tiny", "--resolution", "128", "--latent-window-size", "1", "--steps", "1"]


def write_lines(path: Path, *lines: object) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def outputs(result) -> list[Path]:
    return [Path(line.split(": ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("output: ")]


def sidecar(video: Path) -> dict:
    return json.loads(video.with_suffix(".json").read_text())


def test_a_three_line_batch_writes_three_videos_of_their_planned_frames(framepack_cli, tiny_model_dir, tmp_path):
    lines = [
        {"prompt": "one", "duration": 0.1, "seed": 1},
        {"prompt": "two", "duration": 0.3, "seed": 2, "steps": 2},
        {"prompt": "three", "duration": 0.5, "filename": "third"},
    ]
    batch = write_lines(tmp_path / "batch.jsonl", lines[0], "", lines[1], lines[2])
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    result = framepack_cli("generate", *FLAGS, "--batch", str(batch), home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "batch: 3 videos, all checked" in result.stdout and "batch: 3 of 3 videos made" in result.stdout
    videos = [path for path in outputs(result) if path.suffix == ".mp4"]
    assert len(videos) == 3 and videos[2].name == "third.mp4"
    for video, line in zip(videos, lines, strict=True):
        flags = {"model": "tiny", "resolution": 128, "latent_window_size": 1, "steps": 1}
        planned = plan_request(GenerateRequest(**{**flags, **line}))  # each line's fields over the flags
        assert decode_video(tmp_path / video)[0] == planned.output_frames
        record = sidecar(tmp_path / video)
        assert record["request"]["prompt"] == line["prompt"] and record["request"]["steps"] == line.get("steps", 1)
    for index, number in enumerate((1, 3, 4), 1):  # blank lines are counted
        assert f"[{index}/3] --batch {batch} line {number}: plan: " in result.stdout


def test_a_folder_of_images_times_seeds_fans_out(framepack_cli, tiny_model_dir, tmp_path):
    folder = tmp_path / "starts"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        pattern_image(folder / name, 96, 64, seed=len(name))
    (folder / "notes.txt").write_text("not an image, and not taken for one")
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    args = ["--duration", "0.1", "--seed", "40", "--filename", "start", "--init-image-dir", str(folder), "--seeds", "2"]
    result = framepack_cli("generate", *FLAGS, *args, home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    videos = [path for path in outputs(result) if path.suffix == ".mp4"]
    assert [video.name for video in videos] == [f"start-00{index}.mp4" for index in range(1, 5)]
    records = [sidecar(tmp_path / video)["request"] for video in videos]
    assert [(Path(r["init_image"]).name, r["seed"]) for r in records] == [
        ("a.jpg", 40), ("a.jpg", 41), ("b.png", 40), ("b.png", 41),
    ]  # fmt: skip
    for video in videos:
        plan = sidecar(tmp_path / video)["plan_detail"]
        assert decode_video(tmp_path / video)[:3] == (plan["output_frames"], plan["width"], plan["height"])


@pytest.mark.parametrize(
    ("lines", "extra", "message"),
    [
        ([{"prompt": "a"}, {"prompt": "b", "duration": 0}], [], "line 2: duration: Input should be greater than 0"),
        ([{"prompt": "a"}, "{not json"], [], "line 2: not valid JSON"),
        ([{"prompt": "a"}, [1, 2]], [], "line 2: must be a JSON object of request fields"),
        ([{"prompt": "a", "colour": "red"}], [], "line 1: colour: Extra inputs are not permitted"),
        ([{"duration": 0.1, "keyframes": {"7": "k.png"}}], [], "line 1: keyframes"),
        ([{"init_image": "missing.png"}], [], "line 1: init_image: not an existing file path"),
        ([{"prompt": "a"}], ["--seeds", "0"], "--seeds: 0: allowed 1 to 1000"),
        ([{"prompt": "a"}], ["--init-image-dir", "nowhere"], "--init-image-dir nowhere: is not a folder"),
        ([{"filename": "taken"}], [], "line 1: filename: taken.mp4 exists already"),
        ([], [], "holds no request"),
    ],
)
def test_a_bad_line_refuses_the_whole_batch_before_any_model_loads(framepack_cli, tmp_path, lines, extra, message):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "taken.mp4").write_bytes(b"someone's video")
    batch = write_lines(tmp_path / "batch.jsonl", *lines)
    result = framepack_cli("generate", *FLAGS, "--batch", str(batch), *extra, home=tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "batch:" not in result.stdout
    assert [path.name for path in (tmp_path / "outputs").iterdir()] == ["taken.mp4"]  # nothing was written


def test_an_unreadable_image_in_the_folder_is_named(framepack_cli, tmp_path):
    folder = tmp_path / "starts"
    folder.mkdir()
    pattern_image(folder / "a.png", 96, 64)
    (folder / "b.png").write_text("a text file named like an image")
    result = framepack_cli("generate", *FLAGS, "--init-image-dir", str(folder), home=tmp_path / "home", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: image b.png: init_image: not a readable image"), result.stderr
