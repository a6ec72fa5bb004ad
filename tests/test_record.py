"""The generation record: written once (sidecar, video tag, raw metadata), read from any of them, and the records
written before `framepack/record.py` existed (tests/fixtures/records, made by main at 3a64841) read as before."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import pattern_image
from PIL import Image

from framepack.cli import build_parser, main, request_from_args
from framepack.errors import FieldError
from framepack.plan import Plan
from framepack.planning import plan_request
from framepack.record import SIDECAR_ONLY, GenerationRecord, read_record
from framepack.request import GenerateRequest
from framepack.video.encoder import VideoEncoderSink
from framepack.video.raw import RawFrames, RawFramesSink

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "records"
FRAMES = np.stack([np.full((16, 16, 3), value, np.uint8) for value in (0, 128, 255)])


def png_base64() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def record(tmp_path) -> GenerationRecord:
    start = pattern_image(tmp_path / "start.png", 64, 48)
    request = GenerateRequest(prompt="a kite", init_image=str(start), keyframes={1: png_base64()}, seed=-1, duration=2)
    return GenerationRecord.of(request, plan_request(request))


def write_video(path: Path, comment: str | None) -> Path:
    sink = VideoEncoderSink(path, 30, 16, 16, "libx264", "mp4", "crf:16", comment)
    sink.write(FRAMES)
    return sink.close()


def write_raw(path: Path, request: dict | None) -> Path:
    sink = RawFramesSink(path, 30, 16, 16, len(FRAMES), request=request)
    sink.write(FRAMES)
    return sink.close()


# records written by main, before this module


@pytest.mark.parametrize("name", ["clip.mp4", "clip.json", "clip.safetensors"])
def test_main_records_read_as_main_printed_them(name, capsys):
    suffix = name.replace(".", "-")
    assert main(["info", str(FIXTURES / name)]) == 0
    assert capsys.readouterr().out == (FIXTURES / f"info-{suffix}.txt").read_text()
    assert main(["info", str(FIXTURES / name), "--request"]) == 0
    assert capsys.readouterr().out == (FIXTURES / f"info-request-{suffix}.txt").read_text()


def test_a_main_sidecar_reads_typed():
    sidecar = json.loads((FIXTURES / "clip.json").read_text())
    record = GenerationRecord.read(FIXTURES / "clip.json")
    assert (
        isinstance(record.plan_detail, Plan)
        and record.plan_detail.output_frames == sidecar["plan_detail"]["output_frames"]
    )
    assert record.plan_detail.summary() == sidecar["plan"]  # the whole plan and its summary agree
    assert record.timings["transformer_calls"] == 4 and isinstance(record.timings["transformer_calls"], int)
    assert record.images_not_stored == ["keyframes.1"] and record.self_test_model is True
    assert record.versions == {} and "versions" not in record.as_dict()  # main wrote none; none is added on reading
    embedded = GenerationRecord.read(FIXTURES / "clip.mp4")
    assert embedded.as_dict() == {key: value for key, value in sidecar.items() if key not in SIDECAR_ONLY}


# writing


def test_the_record_of_a_request(record, tmp_path):
    request = GenerateRequest(prompt="a kite", seed=-1)
    plan = plan_request(request)
    assert GenerationRecord.of(request, plan).request["seed"] == plan.seed >= 0  # seed -1 is recorded as drawn
    assert record.request["init_image"] == str(tmp_path / "start.png")  # a file path is kept
    assert record.request["keyframes"] == {} and record.images_not_stored == ["keyframes.1"]  # base64 is not
    assert record.generator.startswith("framepack ")
    assert record.versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert record.versions["av"] == av.__version__
    assert GenerateRequest(**record.request).prompt == "a kite"  # the request re-creates the job


def test_sidecar_round_trip(record, tmp_path):
    plan = Plan.model_validate(json.loads((FIXTURES / "clip.json").read_text())["plan_detail"])
    finished = record.finished(plan, {"section_0": 1.5, "transformer_calls": 3}, ["out/clip.mp4"])
    path = finished.write(tmp_path / "clip.json")
    stored = json.loads(path.read_text())
    assert list(stored) == ["generator", "versions", "request", "images_not_stored", "plan", "self_test_model",
                            "plan_detail", "timings", "outputs"]  # fmt: skip
    assert stored["timings"] == {"section_0": 1.5, "transformer_calls": 3} and stored["outputs"] == ["out/clip.mp4"]
    assert stored["plan_detail"] == plan.model_dump(mode="json")
    assert GenerationRecord.read(path) == finished and read_record(path) == stored
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary name is gone


def test_video_and_raw_carry_the_embedded_record(record, tmp_path):
    finished = record.finished(plan_request(GenerateRequest()), {"total": 1.0}, [])
    video = write_video(tmp_path / "clip.mp4", finished.embed())
    raw = write_raw(tmp_path / "clip.safetensors", finished.embedded())
    with av.open(str(video)) as container:
        assert json.loads(container.metadata["comment"]) == record.as_dict()  # no sidecar-only field
    with RawFrames(raw) as frames:
        assert frames.metadata["request"] == finished.embed()  # the same text in both
    assert GenerationRecord.read(video) == record == GenerationRecord.read(raw)


def test_unknown_fields_of_a_later_version_are_kept(record, tmp_path):
    later = {**record.as_dict(), "seed_source": "drawn"}
    video = write_video(tmp_path / "later.mp4", json.dumps(later))
    read = GenerationRecord.read(video)
    assert read.as_dict() == later and json.loads(read.embed()) == later


# reading what is not a record


def test_a_video_without_a_record_falls_back_to_its_sidecar(record, tmp_path):
    video = write_video(tmp_path / "clip.mp4", None)
    with pytest.raises(
        FieldError, match=r"^video: .*clip.mp4 carries no FramePack metadata and has no sidecar clip.json$"
    ):
        GenerationRecord.read(video)
    record.finished(plan_request(GenerateRequest()), {}, [str(video)]).write(tmp_path / "clip.json")
    assert GenerationRecord.read(video).outputs == [str(video)]


@pytest.mark.parametrize(
    "name,make,message",
    [
        ("gone.json", None, "gone.json does not exist"),
        ("request.json", lambda p: p.write_text('{"prompt": "a kite"}'), "request.json is not a FramePack sidecar"),
        ("text.json", lambda p: p.write_text("not json"), "text.json is not a FramePack sidecar"),
        ("foreign.safetensors", lambda p: write_raw(p, None), "carries no FramePack request metadata"),
        ("other.safetensors", lambda p: write_raw(p, {"source": "x"}), "carries no FramePack request metadata"),
        ("other.mp4", lambda p: write_video(p, '{"source": "x"}'), "carries no FramePack metadata and has no sidecar"),
        ("text.mp4", lambda p: p.write_text("not a video"), "carries no FramePack metadata and has no sidecar"),
    ],
    ids=["missing", "not-a-record", "not-json", "raw-without", "raw-other", "video-other", "not-a-video"],
)
def test_what_is_not_a_record_is_refused_naming_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(FieldError, match="^video: .*" + message):
        read_record(path)


# --request-file


@pytest.mark.parametrize("source", ["record", "request"])
def test_request_file_takes_a_record_or_its_request(tmp_path, source):
    sidecar = json.loads((FIXTURES / "clip.json").read_text())
    path = tmp_path / "r.json"
    path.write_text(json.dumps(sidecar if source == "record" else sidecar["request"]))
    request = request_from_args(build_parser().parse_args(["generate", "--request-file", str(path), "--steps", "3"]))
    assert (request.seed, request.prompt) == (sidecar["request"]["seed"], sidecar["request"]["prompt"])
    assert request.steps == 3 and request.model_fields_set >= {"seed", "prompt", "steps"}


def test_request_file_must_hold_an_object(tmp_path, capsys):
    (tmp_path / "r.json").write_text("[1, 2]")
    assert main(["plan", "--request-file", str(tmp_path / "r.json")]) == 2
    assert (
        capsys.readouterr().err
        == "error: request_file: must hold a JSON object: a request, or a record whose request is used\n"
    )


# encode-video.py


def encode_video_main():
    spec = importlib.util.spec_from_file_location("encode_video", ROOT / "encode-video.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_encode_video_carries_the_raw_files_record(record, tmp_path):
    raw = write_raw(tmp_path / "with.safetensors", record.embedded())
    assert encode_video_main()([str(raw)]) == 0
    with av.open(str(tmp_path / "with.mp4")) as container:
        assert container.metadata["comment"] == record.embed()
    plain = write_raw(tmp_path / "plain.safetensors", None)  # another tool's file: no record to carry
    assert encode_video_main()([str(plain)]) == 0
    with av.open(str(tmp_path / "plain.mp4")) as container:
        assert "comment" not in container.metadata
