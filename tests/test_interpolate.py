"""Frame interpolation: flow quality on a synthetic scene with known in-betweens, the RIFE 4.6 module and its
loader (with locally made weights: nothing is downloaded), method selection, and the streaming sink."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from framepack.video import interpolate as interp
from framepack.video.interpolate import (
    FlowInterpolator,
    IFNet,
    InterpolatingSink,
    InterpolationError,
    RifeInterpolator,
    find_rife_weights,
    load_interpolator,
    timesteps,
)

WIDTH, HEIGHT = 256, 192
BACKGROUND_MOTION = (5.0, 2.0)  # camera pan between the two key frames, pixels (about 5.4 px)
OBJECT_MOTION = (11.0, -4.0)  # the disc, against the background (about 11.7 px)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def texture(height: int, width: int, seed: int, octaves: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Multi-scale smooth colour noise in [0, 1] (fine detail included, so a cross-fade visibly ghosts)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), np.float32)
    for sigma, weight in octaves:
        noise = cv2.GaussianBlur(rng.standard_normal((height, width, 3)).astype(np.float32), (0, 0), sigma)
        out += noise / noise.std() * weight
    return np.clip(out / out.std() * 0.18 + 0.5, 0, 1)


def render_scene(t: float) -> np.ndarray:
    """The frame at time t in [0, 1]: a textured background panned sub-pixel accurately, and a textured disc with an
    anti-aliased edge moving at its own velocity (so there are occlusions and disocclusions at its rim)."""
    margin = 32
    background = texture(HEIGHT + 2 * margin, WIDTH + 2 * margin, 0, ((32, 1.0), (10, 0.8), (4, 0.7), (1.6, 0.5)))
    disc_texture = texture(96, 96, 1, ((12, 1.0), (4, 0.8), (1.6, 0.6))) * np.float32([1.2, 0.8, 0.6])
    pan = np.float32([[1, 0, margin + t * BACKGROUND_MOTION[0]], [0, 1, margin + t * BACKGROUND_MOTION[1]]])
    frame = cv2.warpAffine(background, pan, (WIDTH, HEIGHT), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    cx, cy = 110 + t * OBJECT_MOTION[0], 96 + t * OBJECT_MOTION[1]
    place = np.float32([[1, 0, 48 - cx], [0, 1, 48 - cy]])
    disc = cv2.warpAffine(
        np.clip(disc_texture, 0, 1),
        place,
        (WIDTH, HEIGHT),
        flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT,
    )
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    alpha = np.clip(34.5 - np.hypot(xs - cx, ys - cy), 0, 1)[..., None]
    return np.clip((frame * (1 - alpha) + disc * alpha) * 255 + 0.5, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def crossfade(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return np.clip((1 - t) * a.astype(np.float32) + t * b.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)


def random_frame(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


class RecordingSink:
    """A FrameSink that keeps what it got (tests only) and can pretend to write a file."""

    def __init__(self, path: Path | None = None, fail_close: bool = False) -> None:
        self.path = path
        self.fail_close = fail_close
        self.chunks: list[np.ndarray] = []
        self.closed = self.aborted = False

    def write(self, frames: np.ndarray) -> None:
        assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
        self.chunks.append(frames.copy())

    def close(self) -> Path | None:
        if self.fail_close:
            raise OSError("disk full")
        self.closed = True
        return self.path

    def abort(self) -> None:
        self.aborted = True

    @property
    def frames(self) -> np.ndarray:
        return np.concatenate(self.chunks)


class TaggingInterpolator:
    """Returns in-betweens filled with 200 + k and records the pairs it was given."""

    def __init__(self) -> None:
        self.pairs: list[tuple[int, int]] = []

    def __call__(self, a: np.ndarray, b: np.ndarray, count: int) -> list[np.ndarray]:
        self.pairs.append((int(a[0, 0, 0]), int(b[0, 0, 0])))
        return [np.full_like(a, 200 + k) for k in range(count)]


def published_state_dict(model: IFNet) -> dict[str, torch.Tensor]:
    """The model's weights keyed as in the published flownet.pkl (DataParallel's "module." prefix)."""
    return {f"module.{key}": value.clone() for key, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# Optical flow


def test_flow_interpolation_recovers_true_inbetweens_and_beats_crossfade():
    truth = [render_scene(k / 4) for k in range(5)]
    made = FlowInterpolator()(truth[0], truth[4], 3)
    assert len(made) == 3 and all(f.shape == truth[0].shape and f.dtype == np.uint8 for f in made)
    flow_db = [psnr(frame, truth[k + 1]) for k, frame in enumerate(made)]
    fade_db = [psnr(crossfade(truth[0], truth[4], t), truth[k + 1]) for k, t in enumerate(timesteps(3))]
    figures = f"flow {[round(x, 2) for x in flow_db]} dB vs cross-fade {[round(x, 2) for x in fade_db]} dB"
    assert min(flow_db) >= 28.0, figures
    assert np.mean(flow_db) - np.mean(fade_db) >= 3.0, figures


def test_flow_interpolation_survives_a_lighting_change():
    """Generated video drifts in brightness; a uniformly worse match must not turn the method into a cross-fade."""
    truth = [np.clip(render_scene(k / 4).astype(np.float32) + 8 * k, 0, 255).astype(np.uint8) for k in range(5)]
    made = FlowInterpolator()(truth[0], truth[4], 3)
    flow_db = [psnr(frame, truth[k + 1]) for k, frame in enumerate(made)]
    fade_db = [psnr(crossfade(truth[0], truth[4], t), truth[k + 1]) for k, t in enumerate(timesteps(3))]
    figures = f"flow {[round(x, 2) for x in flow_db]} dB vs cross-fade {[round(x, 2) for x in fade_db]} dB"
    assert min(flow_db) >= 28.0 and np.mean(flow_db) - np.mean(fade_db) >= 3.0, figures


def test_flow_interpolator_counts_sizes_and_bad_input():
    a, b = random_frame(61, 97, 0), random_frame(61, 97, 1)
    flow = FlowInterpolator()
    assert flow(a, b, 0) == []
    frames = flow(a, b, 2)
    assert len(frames) == 2 and all(f.shape == (61, 97, 3) and f.dtype == np.uint8 for f in frames)
    same = render_scene(0.0)
    assert all(np.array_equal(f, same) for f in flow(same, same, 3)), "identical neighbours must give themselves"
    with pytest.raises(ValueError, match="count"):
        flow(a, b, 11)
    with pytest.raises(ValueError, match="differ"):
        flow(a, random_frame(60, 97, 2), 1)
    with pytest.raises(ValueError, match="uint8"):
        flow(a.astype(np.float32), b, 1)


def test_timesteps_are_evenly_spaced_inside_the_pair():
    assert timesteps(0) == []
    assert timesteps(1) == [0.5]
    assert timesteps(3) == [0.25, 0.5, 0.75]


# ---------------------------------------------------------------------------------------------------------------
# RIFE


PUBLISHED_KEYS = [
    "block0.conv0.0.0.weight",
    "block0.conv0.0.0.bias",
    "block0.conv0.1.0.weight",
    "block0.convblock.0.conv.weight",
    "block0.convblock.0.beta",
    "block0.convblock.7.conv.bias",
    "block0.lastconv.0.weight",
    "block1.conv0.0.0.weight",
    "block2.convblock.3.beta",
    "block3.lastconv.0.bias",
]


def test_ifnet_state_dict_uses_the_published_rife_4_6_key_names():
    state = IFNet().state_dict()
    assert set(PUBLISHED_KEYS) <= set(state)
    per_block = 4 + 8 * 3 + 2  # conv0 (2 convs), 8 ResConv (weight, bias, beta), lastconv
    assert len(state) == 4 * per_block
    assert {key.split(".")[0] for key in state} == {"block0", "block1", "block2", "block3"}
    # Shapes of 4.6: block0 sees 7 channels at width 192, the others 12 at 128/96/64; lastconv makes 4*6 channels.
    assert state["block0.conv0.0.0.weight"].shape == (96, 7, 3, 3)
    assert state["block1.conv0.0.0.weight"].shape == (64, 12, 3, 3)
    assert state["block3.convblock.0.conv.weight"].shape == (64, 64, 3, 3)
    assert state["block2.lastconv.0.weight"].shape == (96, 24, 4, 4)
    assert state["block0.convblock.0.beta"].shape == (1, 192, 1, 1)


@pytest.mark.parametrize("suffix", [".pkl", ".safetensors"])
def test_rife_loads_published_layout_and_keeps_odd_sizes(tmp_path: Path, suffix: str):
    torch.manual_seed(0)
    state = published_state_dict(IFNet())
    path = tmp_path / f"flownet{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    rife = RifeInterpolator(path)
    assert not rife.model.training and all(p.dtype == torch.float32 for p in rife.model.parameters())
    for height, width in [(61, 97), (130, 250)]:
        frames = rife(random_frame(height, width, 0), random_frame(height, width, 1), 3)
        assert len(frames) == 3
        assert all(f.shape == (height, width, 3) and f.dtype == np.uint8 for f in frames)
    assert rife(random_frame(8, 8, 0), random_frame(8, 8, 1), 0) == []


def test_rife_with_zero_flow_and_mask_is_an_exact_average(tmp_path: Path):
    """Zero last layers mean zero flow and mask 0.5: the output must be (a + b) / 2 at the input size, which
    checks the [0, 1] scaling, the padding crop and the uint8 conversion end to end."""
    model = IFNet()
    for name in ("block0", "block1", "block2", "block3"):
        torch.nn.init.zeros_(getattr(model, name).lastconv[0].weight)
        torch.nn.init.zeros_(getattr(model, name).lastconv[0].bias)
    path = tmp_path / "flownet.pkl"
    torch.save(published_state_dict(model), path)
    a, b = random_frame(61, 97, 3), random_frame(61, 97, 4)
    (frame,) = RifeInterpolator(path)(a, b, 1)
    expected = (a.astype(np.float32) + b.astype(np.float32)) / 2
    assert np.abs(frame.astype(np.float32) - expected).max() <= 0.5 + 1e-3


def test_rife_refuses_state_dicts_that_do_not_match_exactly(tmp_path: Path):
    state = published_state_dict(IFNet())
    missing = dict(state)
    del missing["module.block2.convblock.5.beta"]
    torch.save(missing, tmp_path / "missing.pkl")
    with pytest.raises(ValueError, match=r"block2\.convblock\.5\.beta"):
        RifeInterpolator(tmp_path / "missing.pkl")

    extra = dict(state)
    extra["module.block_tea.conv0.0.0.weight"] = torch.zeros(1)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"block_tea\.conv0\.0\.0\.weight"):
        RifeInterpolator(tmp_path / "extra.safetensors")

    wrong_shape = dict(state)
    wrong_shape["module.block0.conv0.0.0.weight"] = torch.zeros(96, 8, 3, 3)  # a 4.7-style input width
    torch.save(wrong_shape, tmp_path / "shape.pkl")
    with pytest.raises(ValueError, match="block0.conv0.0.0.weight"):
        RifeInterpolator(tmp_path / "shape.pkl")

    torch.save([1, 2, 3], tmp_path / "list.pkl")
    with pytest.raises(ValueError, match="state dict"):
        RifeInterpolator(tmp_path / "list.pkl")


# ---------------------------------------------------------------------------------------------------------------
# Weights and method selection


def test_load_interpolator_chooses_by_method_and_local_weights(tmp_path: Path):
    assert isinstance(load_interpolator("auto", tmp_path), FlowInterpolator)
    assert isinstance(load_interpolator("auto", None), FlowInterpolator)
    assert isinstance(load_interpolator("flow", tmp_path), FlowInterpolator)
    with pytest.raises(ValueError, match="auto, rife, flow"):
        load_interpolator("dain", tmp_path)
    with pytest.raises(InterpolationError) as error:
        load_interpolator("rife", tmp_path)
    assert str(tmp_path / "rife") in str(error.value) and "flownet.pkl" in str(error.value)

    assert find_rife_weights(tmp_path) is None
    (tmp_path / "rife").mkdir()
    torch.save(published_state_dict(IFNet()), tmp_path / "rife" / "flownet.pkl")
    assert find_rife_weights(tmp_path) == tmp_path / "rife" / "flownet.pkl"
    assert isinstance(load_interpolator("auto", tmp_path), RifeInterpolator)
    assert isinstance(load_interpolator("RIFE", tmp_path), RifeInterpolator)
    assert isinstance(load_interpolator("flow", tmp_path), FlowInterpolator)


def test_download_refuses_offline_without_touching_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    with pytest.raises(InterpolationError, match="HF_HUB_OFFLINE"):
        interp.download_rife_weights(tmp_path)


def test_download_extracts_and_checks_flownet_from_the_release_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The hub call is faked with a local archive laid out like the Practical-RIFE release."""
    import huggingface_hub

    weights = tmp_path / "source.pkl"
    torch.save(published_state_dict(IFNet()), weights)

    def fake_download(repo_id: str, filename: str, local_dir: str) -> str:
        assert (repo_id, filename) == (interp.RIFE_HUB_REPO, interp.RIFE_HUB_FILENAME)
        archive = Path(local_dir) / filename
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.write(weights, "train_log/flownet.pkl")
            bundle.writestr("train_log/IFNet_HDv3.py", "# never executed\n")
        return str(archive)

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    models = tmp_path / "models"
    path = interp.download_rife_weights(models)
    assert path == models / "rife" / "flownet.pkl" and path.is_file()
    assert sorted(p.name for p in (models / "rife").iterdir()) == ["flownet.pkl"], "scratch files left behind"
    assert isinstance(load_interpolator("auto", models), RifeInterpolator)


# ---------------------------------------------------------------------------------------------------------------
# The streaming sink


def tagged_frames(values: list[int]) -> np.ndarray:
    return np.stack([np.full((4, 6, 3), v, np.uint8) for v in values])


@pytest.mark.parametrize("count", [0, 1, 3])
def test_interpolating_sink_inserts_count_frames_between_neighbours(count: int):
    inputs = [10, 20, 30, 40, 50]
    first, second = RecordingSink(), RecordingSink()
    interpolator = TaggingInterpolator()
    sink = InterpolatingSink([first, second], interpolator, count)
    for batch in ([10, 20], [30], [40, 50]):  # uneven write() calls
        sink.write(tagged_frames(batch))
    out = first.frames
    assert len(out) == (len(inputs) - 1) * (count + 1) + 1 == sink.frames_out
    assert np.array_equal(out, second.frames)
    assert [int(f[0, 0, 0]) for f in out[:: count + 1]] == inputs, "originals must sit at every (count+1)-th frame"
    for start in range(0, len(out) - 1, count + 1):
        assert [int(f[0, 0, 0]) for f in out[start + 1 : start + 1 + count]] == [200 + k for k in range(count)]
    assert interpolator.pairs == ([] if count == 0 else list(zip(inputs, inputs[1:])))
    assert sink.previous is None or np.array_equal(sink.previous, tagged_frames([50])[0])


def test_interpolating_sink_close_and_abort_reach_every_downstream(tmp_path: Path):
    silent, video, images = RecordingSink(), RecordingSink(tmp_path / "a.mp4"), RecordingSink(tmp_path / "frames")
    sink = InterpolatingSink([silent, video, images], TaggingInterpolator(), 1)
    sink.write(tagged_frames([1, 2]))
    assert sink.close() == tmp_path / "a.mp4"
    assert sink.outputs == [tmp_path / "a.mp4", tmp_path / "frames"]
    assert silent.closed and video.closed and images.closed

    first, second = RecordingSink(), RecordingSink()
    aborted = InterpolatingSink([first, second], TaggingInterpolator(), 2)
    aborted.write(tagged_frames([1]))
    aborted.abort()
    assert first.aborted and second.aborted and not first.closed

    failing, rest = RecordingSink(fail_close=True), RecordingSink()
    broken = InterpolatingSink([failing, rest], TaggingInterpolator(), 1)
    with pytest.raises(OSError):
        broken.close()
    assert rest.aborted, "a failed close must not leave the other outputs half-written"


def test_interpolating_sink_with_real_flow_keeps_originals_unchanged():
    truth = [render_scene(k / 4) for k in (0, 2, 4)]
    out = RecordingSink()
    sink = InterpolatingSink([out], FlowInterpolator(), 1)
    sink.write(np.stack(truth))
    assert sink.close() is None
    frames = out.frames
    assert len(frames) == 5
    for k, original in enumerate(truth):
        assert np.array_equal(frames[2 * k], original)
    assert psnr(frames[1], render_scene(0.25)) >= 28.0
