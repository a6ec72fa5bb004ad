"""Video output: live encoder list and round trips, option checks, the output chain, metadata, encode-video.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import FAST, MemorySink, decode_video, pattern_image
from safetensors.numpy import save_file

from framepack.errors import FieldError
from framepack.generate import generate
from framepack.request import GenerateRequest
from framepack.runner import plan_request
from framepack.video.codecs import EncoderError, check_output_settings, list_video_encoders, parse_codec_options
from framepack.video.encoder import VideoEncoderSink
from framepack.video.raw import RawFrames

ROOT = Path(__file__).resolve().parents[1]
TWO_SECTIONS = {**FAST, "duration": 0.8}


@pytest.fixture(scope="module")
def encoders():
    return list_video_encoders()


@pytest.fixture(scope="module")
def tiny_clip(tiny_components):
    """Frames of a short tiny-model video (T2V, 25 frames at 128x128)."""
    request = GenerateRequest(**TWO_SECTIONS)
    memory = MemorySink()
    generate(tiny_components, request, plan_request(request), [memory])
    return memory.frames


def test_encoder_list_is_live_and_hardware_first(encoders):
    names = [info.name for info in encoders]
    assert {"libx264", "libvpx-vp9", "libsvtav1", "prores_ks", "ffv1"} <= set(names)
    hardware = [info.hardware for info in encoders]
    assert hardware == sorted(hardware, reverse=True)  # all hardware entries before software ones
    assert "h264_nvenc" not in names or hardware[names.index("h264_nvenc")]  # listed only where it opens
    assert all(info.containers for info in encoders)
    assert next(info for info in encoders if info.name == "libx264").pixel_format == "yuv420p"


def test_every_listed_software_codec_round_trips(encoders, tiny_clip, tmp_path):
    height, width = tiny_clip.shape[1:3]
    tested = []
    for info in (info for info in encoders if not info.hardware):
        container = info.containers[0]
        path = tmp_path / f"{info.name}.{container}"
        sink = VideoEncoderSink(path, 30, width, height, info.name, container, "")
        sink.write(tiny_clip)
        sink.close()
        frames, decoded_width, decoded_height, _, _ = decode_video(path)
        assert (frames, decoded_width, decoded_height) == (len(tiny_clip), width, height), info.name
        tested.append(info.name)
    assert len(tested) >= 8


def test_default_output_is_browser_playable_h264(tiny_clip, tmp_path):
    defaults = GenerateRequest()
    sink = VideoEncoderSink(
        tmp_path / "a.mp4", 30, 128, 128, defaults.codec, defaults.container, defaults.codec_options
    )
    sink.write(tiny_clip)
    sink.close()
    assert decode_video(tmp_path / "a.mp4")[3:] == ("h264", "yuv420p")


@pytest.mark.parametrize(
    "codec,container,options,field,message",
    [
        ("libx264", "mp4", "bogus=1", "codec_options", "libx264 has no option bogus"),
        ("libx264", "mp4", "crf=abc", "codec_options", "refused"),
        ("libx264", "mp4", "preset:nonsense", "codec_options", "refused"),
        ("libx264", "mp4", "stats=/tmp/x", "codec_options", "may not name files or URLs"),
        ("libx264", "mp4", "x264-params=dump-yuv=http://host/x", "codec_options", "may not name files or URLs"),
        ("libx264", "mp4", "crf", "codec_options", "write key:value or key=value"),
        ("libvpx", "mp4", "", "container", "mp4 cannot hold libvpx"),
        ("nope264", "mp4", "", "codec", "not an encoder of this FFmpeg build"),
    ],
)
def test_bad_encoder_settings_name_the_field(codec, container, options, field, message):
    with pytest.raises(EncoderError, match=message) as error:
        check_output_settings(codec, container, options, 64, 64)
    assert error.value.field == field


def test_options_parse_both_spellings_and_nested_values():
    assert parse_codec_options("crf:16") == {"crf": "16"}
    assert parse_codec_options("crf=18, preset=slow") == {"crf": "18", "preset": "slow"}
    assert parse_codec_options("x264-params=keyint=60:bframes=2") == {"x264-params": "keyint=60:bframes=2"}
    assert check_output_settings("libx264", "mp4", "x264-params=keyint=60:bframes=2", 64, 64)


def test_bad_codec_is_refused_before_the_model_loads(runner, tmp_path):
    with pytest.raises(FieldError, match="codec_options"):
        runner.run(GenerateRequest(**TWO_SECTIONS, codec_options="bogus=1"))
    assert runner._components is None
    assert not (tmp_path / "out").exists()


def test_request_refuses_saving_nothing():
    with pytest.raises(ValueError, match="nothing would be saved"):
        GenerateRequest(codec="none")


def test_all_outputs_with_interpolation_and_metadata(runner, tmp_path):
    image = pattern_image(tmp_path / "start.png", 128, 128)
    request = GenerateRequest(
        **TWO_SECTIONS, init_image=str(image), interpolate=1, interpolation="flow", save_raw=True, save_frames="png",
        filename="all",
    )  # fmt: skip
    result = runner.run(request)
    plan = result.plan
    assert plan.output_frames == (plan.generated_frames - 1) * 2 + 1
    out = tmp_path / "out"
    assert decode_video(out / "all.mp4")[:3] == (plan.output_frames, plan.width, plan.height)
    with RawFrames(out / "all.safetensors") as raw:
        assert (raw.count, raw.width, raw.height, raw.fps) == (plan.output_frames, plan.width, plan.height, plan.fps)
        assert json.loads(raw.metadata["request"])["request"]["seed"] == plan.seed
    assert len(sorted((out / "all").glob("all-*.png"))) == plan.output_frames
    sidecar = json.loads((out / "all.json").read_text())
    assert (
        sidecar["request"]["init_image"] == str(image) and sidecar["plan_detail"]["output_frames"] == plan.output_frames
    )
    assert sorted(Path(p).name for p in result.outputs) == ["all", "all.json", "all.mp4", "all.safetensors"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial files left


def cli(*args, cwd: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FRAMEPACK_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_info_recreates_the_request(runner, tmp_path):
    request = GenerateRequest(**TWO_SECTIONS, seed=-1, filename="first", section_prompts="rises\nfalls", save_raw=True)
    first = runner.run(request)
    info = cli(
        "-m", "framepack", "info", str(tmp_path / "out" / "first.mp4"), "--request", cwd=tmp_path, home=runner.home
    )
    assert info.returncode == 0, info.stderr
    recorded = json.loads(info.stdout)
    assert recorded["seed"] == first.plan.seed and recorded["section_prompts"] == "rises\nfalls"
    (tmp_path / "request.json").write_text(info.stdout)
    again = cli("-m", "framepack", "generate", "--request-file", "request.json", "--filename", "second",
                "--output-dir", str(tmp_path / "out"), cwd=tmp_path, home=runner.home)  # fmt: skip
    assert again.returncode == 0, again.stderr
    with (
        RawFrames(tmp_path / "out" / "first.safetensors") as a,
        RawFrames(tmp_path / "out" / "second.safetensors") as b,
    ):
        assert np.array_equal(np.concatenate(list(a.iter_chunks())), np.concatenate(list(b.iter_chunks())))


def test_encode_video_script_from_raw(runner, tmp_path):
    runner.run(GenerateRequest(**TWO_SECTIONS, codec="none", save_raw=True, filename="raw"))
    raw_path = tmp_path / "out" / "raw.safetensors"
    assert not (tmp_path / "out" / "raw.mp4").exists()
    with RawFrames(raw_path) as raw:
        count = raw.count
    result = cli(str(ROOT / "encode-video.py"), str(raw_path), "--codec", "libvpx-vp9", "--container", "webm",
                 "--codec-options", "crf=30,b=0", "--interpolate", "2", "--interpolation", "flow", "--frames", "jpeg",
                 cwd=tmp_path, home=runner.home)  # fmt: skip
    assert result.returncode == 0, result.stderr
    frames, width, height, codec, _ = decode_video(tmp_path / "out" / "raw.webm")
    assert (frames, codec) == ((count - 1) * 3 + 1, "vp9")
    assert len(list((tmp_path / "out" / "raw").glob("raw-*.jpg"))) == frames
    info = cli("-m", "framepack", "info", str(tmp_path / "out" / "raw.webm"), cwd=tmp_path, home=runner.home)
    assert json.loads(info.stdout)["request"]["prompt"] == "a kite"  # the raw file's record carried over


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("not safetensors"), "safetensors"),
        (lambda p: save_file({"frames": np.zeros((2, 4, 4, 3), np.float32)}, str(p)), "uint8"),
        (lambda p: save_file({"frames": np.zeros((2, 4, 4), np.uint8)}, str(p)), "uint8 [T, H, W, 3]"),
        (lambda p: save_file({"pixels": np.zeros((2, 4, 4, 3), np.uint8)}, str(p)), "frames"),
    ],
    ids=["missing", "not-safetensors", "float", "layout", "no-frames-tensor"],
)
def test_encode_video_bad_input_is_one_line_and_exit_2(tmp_path, make, message):
    path = tmp_path / "in.safetensors"
    make(path)
    result = cli(str(ROOT / "encode-video.py"), str(path), "--fps", "30", cwd=tmp_path, home=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
