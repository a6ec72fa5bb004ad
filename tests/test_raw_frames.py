"""Raw safetensors frames (writer, reader, errors) and image-sequence export (PNG, JPEG, numbering, cancel)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from framepack.errors import FieldError
from framepack.video.frames import FrameExportSink
from framepack.video.raw import RawFileError, RawFrames, RawFramesSink


def random_frames(count: int, height: int = 24, width: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def smooth_frames(count: int, height: int = 64, width: int = 96) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = [np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y + 4 * t) / 17)], -1) for t in range(count)]
    return (np.stack(frames) * 255).round().astype(np.uint8)


def write_raw(path: Path, frames: np.ndarray, chunks: int = 3, **kwargs) -> Path:
    count, height, width, _ = frames.shape
    sink = RawFramesSink(path, kwargs.pop("fps", 30), width, height, count, **kwargs)
    for part in np.array_split(frames, chunks):
        sink.write(part)
    return sink.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# raw frames: round trip


def test_raw_round_trip_in_chunks(tmp_path: Path):
    frames = random_frames(23)
    request = {"prompt": "a paper boat", "seed": 7, "nested": {"steps": [1, 2]}}
    codec = {"codec": "libx264", "codec_options": "crf:16"}
    path = write_raw(tmp_path / "clip.safetensors", frames, fps=29.97, metadata=codec, request=request)
    assert path == tmp_path / "clip.safetensors" and leftovers(tmp_path) == ["clip.safetensors"]

    with RawFrames(path) as raw:
        assert (raw.fps, raw.width, raw.height, raw.count) == (29.97, 40, 24, 23)
        assert raw.request == request
        assert raw.metadata["format"] == "framepack-raw-frames" and raw.metadata["version"] == "1"
        assert raw.metadata["codec"] == "libx264" and raw.metadata["codec_options"] == "crf:16"
        assert raw.metadata["frames"] == "23" and raw.metadata["width"] == "40" and raw.metadata["height"] == "24"
        chunks = list(raw.iter_chunks(5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    assert all(c.dtype == np.uint8 and c.shape[1:] == (24, 40, 3) for c in chunks)
    np.testing.assert_array_equal(np.concatenate(chunks), frames)


def test_raw_file_is_standard_safetensors(tmp_path: Path):
    frames = random_frames(9, seed=1)
    path = write_raw(tmp_path / "clip.safetensors", frames, fps=24, request={"a": 1})
    loaded = load_file(path)
    assert list(loaded) == ["frames"] and loaded["frames"].dtype == np.uint8
    np.testing.assert_array_equal(loaded["frames"], frames)
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
        np.testing.assert_array_equal(f.get_slice("frames")[2:4], frames[2:4])
    assert metadata["fps"] == "24" and json.loads(metadata["request"]) == {"a": 1}
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert header_length % 8 == 0
    assert path.stat().st_size == 8 + header_length + frames.nbytes


def test_raw_reads_files_from_other_tools_without_metadata(tmp_path: Path):
    frames = random_frames(4, seed=2)
    save_file({"frames": frames, "waveform": np.zeros(10, np.float32)}, tmp_path / "other.safetensors")
    with RawFrames(tmp_path / "other.safetensors") as raw:
        assert raw.fps is None and raw.request is None and raw.metadata == {}
        assert (raw.count, raw.height, raw.width) == (4, 24, 40)
        np.testing.assert_array_equal(np.concatenate(list(raw.iter_chunks())), frames)


# raw frames: streaming writer


def test_raw_abort_leaves_nothing(tmp_path: Path):
    sink = RawFramesSink(tmp_path / "clip.safetensors", 30, 40, 24, 10)
    sink.write(random_frames(4))
    assert leftovers(tmp_path) == [".clip.partial.safetensors"]
    sink.abort()
    assert leftovers(tmp_path) == []
    sink.abort()  # twice is harmless


def test_raw_wrong_frame_count_on_close_raises_and_leaves_nothing(tmp_path: Path):
    sink = RawFramesSink(tmp_path / "clip.safetensors", 30, 40, 24, 10)
    sink.write(random_frames(7))
    with pytest.raises(ValueError, match="7 of 10"):
        sink.close()
    assert leftovers(tmp_path) == []


def test_raw_too_many_frames_raise(tmp_path: Path):
    sink = RawFramesSink(tmp_path / "clip.safetensors", 30, 40, 24, 5)
    sink.write(random_frames(4))
    with pytest.raises(ValueError, match="6 frames of 5 announced"):
        sink.write(random_frames(2))
    sink.abort()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "frames",
    [
        np.zeros((2, 24, 41, 3), np.uint8),  # wrong width
        np.zeros((2, 24, 40, 4), np.uint8),  # RGBA
        np.zeros((24, 40, 3), np.uint8),  # one frame without the time axis
        np.zeros((2, 24, 40, 3), np.float32),  # not uint8
    ],
)
def test_raw_wrong_frames_raise(tmp_path: Path, frames: np.ndarray):
    sink = RawFramesSink(tmp_path / "clip.safetensors", 30, 40, 24, 2)
    with pytest.raises(ValueError, match=r"expected uint8 \[T, 24, 40, 3\]"):
        sink.write(frames)
    sink.abort()


def test_raw_reserved_metadata_keys_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="reserved"):
        RawFramesSink(tmp_path / "clip.safetensors", 30, 40, 24, 2, metadata={"fps": "60"})
    assert leftovers(tmp_path) == []


# raw frames: reader errors


def crafted(tmp_path: Path, name: str, tensors: dict[str, np.ndarray]) -> Path:
    path = tmp_path / name
    save_file(tensors, path)
    return path


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"video": np.zeros((2, 8, 8, 3), np.uint8)}, r"no 'frames' tensor \(found: video\)"),
        ({"frames": np.zeros((2, 8, 8, 3), np.float32)}, "has dtype F32"),
        ({"frames": np.zeros((2, 8, 8, 4), np.uint8)}, r"has shape \[2, 8, 8, 4\]"),
        ({"frames": np.zeros((8, 8, 3), np.uint8)}, r"has shape \[8, 8, 3\]"),
    ],
)
def test_raw_reader_rejects_wrong_tensors(tmp_path: Path, tensors: dict, message: str):
    path = crafted(tmp_path, "bad.safetensors", tensors)
    with pytest.raises(RawFileError, match=message) as error:
        RawFrames(path)
    text = str(error.value)
    assert str(path) in text and "\n" not in text
    if "found" not in message:
        assert "uint8 [T, H, W, 3]" in text


def test_raw_reader_rejects_missing_and_foreign_files(tmp_path: Path):
    with pytest.raises(RawFileError, match="missing.safetensors: no such file"):
        RawFrames(tmp_path / "missing.safetensors")
    (tmp_path / "notes.txt").write_text("these are not frames\n" * 10)
    with pytest.raises(RawFileError, match=r"notes.txt: not a safetensors file; expected .*uint8 \[T, H, W, 3\]"):
        RawFrames(tmp_path / "notes.txt")
    (tmp_path / "tiny").write_bytes(b"abc")
    with pytest.raises(RawFileError, match="not a safetensors file"):
        RawFrames(tmp_path / "tiny")


def test_raw_reader_rejects_truncated_file(tmp_path: Path):
    path = write_raw(tmp_path / "clip.safetensors", random_frames(6))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RawFileError, match="truncated"):
        RawFrames(path)


# image sequences


def test_png_export_is_lossless_and_readable_by_image2(tmp_path: Path):
    frames = random_frames(11, seed=3)
    sink = FrameExportSink(tmp_path, "clip")
    sink.write(frames[:4])
    sink.write(frames[4:])
    folder = sink.close()
    assert folder == tmp_path / "clip" and leftovers(tmp_path) == ["clip"]
    assert leftovers(folder) == [f"clip-{i:05d}.png" for i in range(11)]
    for index, expected in enumerate(frames):
        np.testing.assert_array_equal(np.asarray(Image.open(folder / f"clip-{index:05d}.png")), expected)
    with av.open(str(folder / "clip-%05d.png"), format="image2", options={"framerate": "30"}) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(decoded) == 11
    np.testing.assert_array_equal(np.stack(decoded), frames)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "JPG"])
def test_jpeg_export_close_and_numbered_from_start_number(tmp_path: Path, fmt: str):
    frames = smooth_frames(6)
    sink = FrameExportSink(tmp_path, "clip", fmt=fmt, quality=95, start_number=120)
    sink.write(frames)
    folder = sink.close()
    assert leftovers(folder) == [f"clip-{i:05d}.jpg" for i in range(120, 126)]
    for index, expected in enumerate(frames):
        image = Image.open(folder / f"clip-{120 + index:05d}.jpg")
        assert image.format == "JPEG"
        assert psnr(np.asarray(image.convert("RGB")), expected) > 35
    options = {"framerate": "30", "start_number": "120"}
    with av.open(str(folder / "clip-%05d.jpg"), format="image2", options=options) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6


def test_cancelled_export_leaves_nothing(tmp_path: Path):
    sink = FrameExportSink(tmp_path, "clip", fmt="jpg")
    sink.write(random_frames(3))
    assert leftovers(tmp_path) == [".clip.partial"]
    sink.abort()
    assert leftovers(tmp_path) == []


def test_export_settings_errors_name_the_field(tmp_path: Path):
    with pytest.raises(FieldError, match="png, jpeg") as error:
        FrameExportSink(tmp_path, "clip", fmt="webp")
    assert error.value.field == "frames_format"
    for quality in (0, 101, 9.5):
        with pytest.raises(FieldError, match=r"1\.\.100") as error:
            FrameExportSink(tmp_path, "clip", fmt="jpeg", quality=quality)
        assert error.value.field == "jpeg_quality"
    assert leftovers(tmp_path) == []


def test_export_refuses_to_overwrite_a_folder(tmp_path: Path):
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "mine.txt").write_text("keep me")
    with pytest.raises(FieldError, match="already exists"):
        FrameExportSink(tmp_path, "clip")
    assert leftovers(tmp_path / "clip") == ["mine.txt"]
