"""Video input on the tiny self-test model: the probe, the chunked encode, the plan's frame counts, continuing a video
(F1 and bidirectional), keep_source, source latents given directly, video-to-video, and the faces' fields."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from helpers import FAST, MemorySink, TransformerCalls, decode_video, pattern_image, read_raw_frames, tiny_home
from PIL import ImageFilter

from framepack.encoders import vae_encode
from framepack.errors import FieldError, PlanError
from framepack.events import Cancelled, CancelToken, StepProgress
from framepack.generate import START, generate
from framepack.images import fit_to_bucket, load_image, to_tensor
from framepack.plan import SourceVideo, make_plan
from framepack.request import VIDEO_CONTEXT_FRAMES, GenerateRequest
from framepack.runner import build_sinks, output_path, plan_request
from framepack.sampling.context import HISTORY_FRAMES
from framepack.video.decode import OverlapJoiner, overlap_frames
from framepack.video.source import encode_frames, frames_tensor, probe_video, read_frames

# window 3: a section is 12 frames (0.4 s is one section, 0.8 s two). The source video has 27 frames at 160x128
# (bucket 144x112 at resolution 128): extend encodes its last 25 (7 latent frames), v2v covers 2 sections of it. One
# step per section and no previews: the VAE's decode is most of a tiny job's time.
SOURCE_FRAMES, SOURCE_SIZE = 27, (160, 128)
VIDEO = {**FAST, "fps": 30, "steps": 1, "preview": False, "prompt": "a red ball rolls"}


@pytest.fixture(scope="module")
def source_video(tmp_path_factory):
    """A moving pattern, 27 frames at 30 fps, H.264 (its decoded frames are the source the tests compare with). The
    pattern is blurred: sharp colour edges would lose more to yuv420p's halved chroma than to the codec."""
    folder = tmp_path_factory.mktemp("source")
    pattern = load_image(str(pattern_image(folder / "pattern.png", 400, 300, seed=3)))
    picture = np.asarray(pattern.filter(ImageFilter.GaussianBlur(3)))
    path = folder / "source.mp4"
    width, height = SOURCE_SIZE
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "12"}
        for index in range(SOURCE_FRAMES):
            frame = picture[10 + index * 4 : 10 + index * 4 + height, 20 + index * 3 : 20 + index * 3 + width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def end_image(tmp_path_factory):
    return str(pattern_image(tmp_path_factory.mktemp("end") / "end.png", 160, 128, seed=7))


def source_frames(path: str, plan) -> list[np.ndarray]:
    return list(read_frames(path, plan.width, plan.height, plan.source.frames))


def source_latents(components, path: str, plan) -> torch.Tensor:
    """The source's latents as the job encodes them (its used frames, streamed)."""
    frames = source_frames(path, plan)[plan.source.first_used :]
    return encode_frames(components.vae, iter(frames), plan.source.used_frames)


def run(components, tmp_path=None, source=None, plan=None, **fields):
    """Generate into memory (and, with `tmp_path`, a video file 'clip' and raw frames); the plan, the frames, the
    transformer calls and the section latents."""
    request = GenerateRequest(**{**VIDEO, **fields})
    plan = plan or plan_request(request)
    memory, sinks = MemorySink(), []
    if tmp_path is not None:
        request = request.model_copy(update={"output_dir": str(tmp_path), "filename": "clip"})
        sinks = build_sinks(request, plan, output_path(request, plan, tmp_path))
    latents = {}
    with TransformerCalls(components.transformer) as calls:
        generate(
            components, request, plan, [memory, *sinks], source_latents=source,
            on_section_latents=lambda key, value: latents.__setitem__(key, value),
        )  # fmt: skip
    return plan, memory.frames, calls.calls, latents


# ------------------------------------------------------------------------------------------------ probe and encode


def test_the_probe_counts_frames_and_refuses_what_is_no_video(source_video, tmp_path):
    info = probe_video(source_video)
    assert (info.frames, info.width, info.height, info.fps) == (SOURCE_FRAMES, *SOURCE_SIZE, 30.0)
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    for path, message in [
        (tmp_path / "missing.mp4", "init_video: no such file"),
        (text, "init_video: not a readable video"),
    ]:
        with pytest.raises(FieldError, match=message):
            plan_request(GenerateRequest(**VIDEO, init_video=str(path)))  # planning: before any model loads


def test_the_chunked_encode_equals_the_whole_video_encode_and_holds_one_tile(tiny_components):
    """Framewise encoding tiles 17 frames every 12: 29 frames are 3 tiles, 13 frames one chunk; both streamed
    encodes equal `vae.encode` of the whole clip at once, and no encoder call sees more than 17 frames."""
    vae = tiny_components.vae
    rng = np.random.default_rng(0)
    seen = []
    hook = vae.encoder.register_forward_pre_hook(lambda _module, args: seen.append(args[0].shape[2]))
    try:
        for count in (29, 13):
            frames = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(count)]
            seen.clear()
            streamed = encode_frames(vae, iter(frames), count)
            assert max(seen) <= 17 and len(seen) == (3 if count == 29 else 1)
            with torch.no_grad():
                whole = vae.encode(frames_tensor(frames)).latent_dist.mode() * vae.config.scaling_factor
            assert streamed.shape == (1, 4, 1 + (count - 1) // 4, 4, 6)
            assert torch.equal(streamed, whole.float())
    finally:
        hook.remove()


# ------------------------------------------------------------------------------------------------ plans


def source_plan(**fields):
    request = GenerateRequest(**{**VIDEO, "init_video": "source.mp4", **fields})
    return make_plan(request, source=SourceVideo(frames=SOURCE_FRAMES, width=160, height=128, fps=30.0))


def test_plans_count_the_source_frames_used_the_new_frames_and_the_output_frames():
    assert VIDEO_CONTEXT_FRAMES == HISTORY_FRAMES
    f1 = source_plan(variant="f1", duration=0.8)
    assert (f1.mode, f1.num_sections, f1.generated_frames, f1.start_frame_pass) == ("extend", 2, 25, False)
    assert (f1.width, f1.height) == (144, 112)  # the source's aspect ratio picks the bucket
    source = f1.source
    assert (source.frames, source.first_used, source.used_frames, source.latent_frames) == (27, 2, 25, 7)
    assert (source.context_frames, source.kept_frames, source.new_frames) == (7, 0, 25)
    assert "source frames 2-26 of 27 encoded to 7 latent frames, the last 7 condition" in f1.summary()
    assert source_plan(variant="f1", context_frames=3).source.context_frames == 3
    assert source_plan(variant="bidirectional").source.context_frames == 1

    kept = source_plan(variant="f1", duration=0.8, keep_source=True, interpolate=1)
    assert (kept.generated_frames, kept.source.kept_frames, kept.source.new_frames) == (27 + 12, 27, 12)
    assert kept.output_frames == 2 * (kept.generated_frames - 1) + 1
    assert "27 source frames kept + 12 new frames" in kept.summary()

    v2v = source_plan(video_strength=0.5, duration=2.0)  # 5 sections asked, the source covers 2
    assert (v2v.mode, v2v.num_sections, v2v.generated_frames, v2v.start_frame_pass) == ("v2v", 2, 25, True)
    assert (v2v.source.first_used, v2v.source.used_frames, v2v.source.new_frames) == (0, 25, 25)
    assert v2v.model_calls == 3 * v2v.steps
    assert "video_strength: the source covers 2 sections (0.83 s); the video is shortened to it" in v2v.warnings
    assert "video-to-video at strength 0.5: source frames 0-24 of 27 re-rendered" in v2v.summary()
    assert source_plan(video_strength=1.0).model_calls == 0  # the source unchanged: nothing sampled
    with pytest.raises(PlanError, match="init_video: 27 frames are shorter than one section: video-to-video needs"):
        source_plan(video_strength=0.5, latent_window_size=9)
    assert source_plan(fps=24).warnings == [
        "init_video runs at 30 fps; its frames are taken one by one at the generated 24 fps, so its motion plays "
        "0.80x as fast"
    ]
    assert "source" not in make_plan(GenerateRequest(**VIDEO)).model_dump()  # plans without a source are as before


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"init_image": "a.png"}, "init_video and init_image both give the start"),
        ({"video_strength": 0.5, "keep_source": True}, "keep_source does not apply to video_strength"),
        ({"video_strength": 0.5, "end_image": "b.png"}, "end_image does not apply to video_strength"),
        ({"init_video": None, "video_strength": 0.5}, "video_strength needs init_video"),
        ({"context_frames": 20}, "context_frames"),
        ({"video_strength": 1.5}, "video_strength"),
    ],
)
def test_requests_with_video_input_refuse_what_does_not_fit(fields, message):
    with pytest.raises(ValueError, match=message):
        GenerateRequest(**{**VIDEO, "init_video": "source.mp4", **fields})


def test_plans_refuse_a_source_they_do_not_have():
    with pytest.raises(PlanError, match="keep_source: needs init_video"):
        make_plan(GenerateRequest(**VIDEO, keep_source=True))
    with pytest.raises(PlanError, match="init_video: the video's frame count and size are needed"):
        make_plan(GenerateRequest(**VIDEO, init_video="source.mp4"))


# ------------------------------------------------------------------------------------------------ continuing


def test_f1_continues_from_the_source_end(tiny_components, source_video, tmp_path):
    """The first section's history is the source's last 7 latent frames (4x, 2x, 1x slots, zeros before), its prefix
    the source's first frame; the second section's history runs on from there. The file has the planned frames."""
    plan, frames, calls, latents = run(tiny_components, tmp_path, variant="f1", init_video=source_video, duration=0.8)
    source = source_latents(tiny_components, source_video, plan)
    first, second = calls[0], calls[plan.steps]
    assert len(calls) == plan.model_calls == 2 * plan.steps
    for call in (first, second):
        assert torch.equal(call["latents_clean"][:, :, :1], source[:, :, :1])  # prefix: the first frame
    assert torch.equal(first["latents_clean"][:, :, 1:], source[:, :, -1:])
    assert torch.equal(first["latents_history_2x"], source[:, :, -3:-1])
    assert torch.equal(first["latents_history_4x"][:, :, -4:], source[:, :, -7:-3])
    assert first["latents_history_4x"][:, :, :-4].abs().max() == 0
    assert torch.equal(second["latents_history_4x"][:, :, -7:], source[:, :, -7:])  # history: source, section 0
    assert torch.equal(second["latents_history_2x"], latents[0][:, :, :2])
    assert frames.shape[0] == plan.generated_frames == 25
    assert decode_video(tmp_path / "clip.mp4")[:3] == (plan.output_frames, plan.width, plan.height)


def test_context_frames_bound_the_history_from_the_source(tiny_components, source_video):
    plan, _, calls, _ = run(tiny_components, variant="f1", init_video=source_video, context_frames=2)
    source = source_latents(tiny_components, source_video, plan)
    first = calls[0]
    assert torch.equal(first["latents_clean"][:, :, 1:], source[:, :, -1:])
    assert torch.equal(first["latents_history_2x"][:, :, 1:], source[:, :, -2:-1])
    assert first["latents_history_2x"][:, :, :1].abs().max() == 0 and first["latents_history_4x"].abs().max() == 0


def test_bidirectional_continues_toward_the_end_image(tiny_components, source_video, end_image, tmp_path):
    """The section starts from the source's last latent frame (the prefix) and its 1x slot is the end frame (the
    first generated section's); the file has the planned frames."""
    plan, frames, calls, _ = run(
        tiny_components, tmp_path, init_video=source_video, end_image=end_image, end_strength=0.75
    )
    source = source_latents(tiny_components, source_video, plan)
    generator = torch.Generator().manual_seed(plan.seed)  # the video's encode draws no random numbers
    end = vae_encode(
        tiny_components, to_tensor(fit_to_bucket(load_image(end_image), plan.width, plan.height)), generator
    )
    assert plan.mode == "extend" and len(calls) == plan.model_calls == plan.steps
    for call in calls:
        assert torch.equal(call["latents_clean"][:, :, :1], source[:, :, -1:])
        torch.testing.assert_close(call["latents_clean"][:, :, 1:], 0.75 * end + 0.25 * source[:, :, -1:])
    assert frames.shape[0] == plan.generated_frames == 13
    assert decode_video(tmp_path / "clip.mp4")[0] == plan.output_frames


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    error = np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else 10 * np.log10(255.0**2 / error)


@pytest.fixture(scope="module", params=["f1", "bidirectional"])
def kept(request, tiny_components, source_video, tmp_path_factory):
    """A one-section continuation with keep_source, as raw frames and H.264 at crf 10: (plan, frames, folder)."""
    folder = tmp_path_factory.mktemp(f"kept-{request.param}")
    fields = {"variant": request.param, "init_video": source_video, "keep_source": True, "save_raw": True}
    plan, frames, _, _ = run(tiny_components, folder, codec_options="crf:10", **fields)
    return plan, frames, folder


def test_keep_source_puts_the_source_frames_first(kept, source_video):
    """All 27 source frames come first (the last 9 cross-faded into the first window, the first of those still the
    source's): in the raw frames exactly, in the H.264 file (yuv420p, crf 10) within 38 dB PSNR; then 12 new ones."""
    plan, frames, folder = kept
    source = np.stack(source_frames(source_video, plan))
    exact = SOURCE_FRAMES - overlap_frames(plan.latent_window_size) + 1
    assert frames.shape[0] == plan.generated_frames == SOURCE_FRAMES + 12
    raw = read_raw_frames(folder / "clip.safetensors")
    assert np.array_equal(raw, frames)
    assert np.array_equal(raw[:exact], source[:exact])
    assert not np.array_equal(raw[exact:SOURCE_FRAMES], source[exact:])  # cross-faded into the new video
    with av.open(str(folder / "clip.mp4")) as container:
        decoded = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert decoded.shape[0] == plan.output_frames
    assert min(psnr(decoded[index], source[index]) for index in range(exact)) > 38.0


@pytest.mark.parametrize("kept", ["bidirectional"], indirect=True)  # the extend helper's case
def test_source_latents_continue_exactly_as_the_video_they_encode(tiny_components, source_video, kept):
    """`source_latents` (no video read) give the frames init_video gives; with keep_source their frames are decoded
    in windows of two sections sharing one ([0, 6) and [3, 7) of 7 latent frames), and the new frames after the
    cross-fade are those the video's own frames gave."""
    video_plan, kept_video, _ = kept
    fields = {"variant": video_plan.variant}
    plan, from_video, video_calls, _ = run(tiny_components, init_video=source_video, **fields)
    source = source_latents(tiny_components, source_video, plan)
    request = GenerateRequest(**{**VIDEO, **fields})
    given = SourceVideo(frames=4 * (source.shape[2] - 1) + 1, width=160, height=128, latents=True)
    latent_plan = make_plan(request, source=given)
    assert latent_plan.mode == "extend" and latent_plan.source.used_frames == 25
    _, from_latents, latent_calls, _ = run(tiny_components, source=source, plan=latent_plan, **fields)
    assert np.array_equal(from_video, from_latents) and len(video_calls) == len(latent_calls) == plan.steps
    assert all(torch.equal(a["latents_clean"], b["latents_clean"]) for a, b in zip(video_calls, latent_calls))

    kept_plan = make_plan(request.model_copy(update={"keep_source": True}), source=given)
    _, kept_latents, _, _ = run(tiny_components, source=source, plan=kept_plan, keep_source=True, **fields)
    vae, written = tiny_components.vae, []
    joiner = OverlapJoiner(overlap_frames(3), written.append)
    with torch.no_grad():
        for start, end in [(0, 6), (3, 7)]:
            joiner.add(vae.decode(source[:, :, start:end] / vae.config.scaling_factor, return_dict=False)[0])
    joiner.finish()
    decoded = np.concatenate(written)
    assert kept_latents.shape[0] == kept_plan.generated_frames == 25 + 12 and decoded.shape[0] == 25
    assert np.array_equal(kept_latents[: 25 - 8], decoded[: 25 - 8])
    assert np.array_equal(kept_latents[25:], kept_video[SOURCE_FRAMES:])


# ------------------------------------------------------------------------------------------------ video-to-video


def test_video_to_video_at_strength_1_keeps_the_source_latents(tiny_components, source_video, tmp_path):
    plan, frames, calls, latents = run(tiny_components, tmp_path, init_video=source_video, video_strength=1.0)
    source = source_latents(tiny_components, source_video, plan)
    assert calls == [] and plan.model_calls == 0
    assert torch.equal(latents[START], source[:, :, :1])
    assert all(torch.equal(latents[i], source[:, :, 1 + 3 * i : 4 + 3 * i]) for i in range(plan.num_sections))
    assert frames.shape[0] == plan.generated_frames == 13
    assert decode_video(tmp_path / "clip.mp4")[0] == plan.output_frames


def test_video_to_video_at_strength_0_is_the_text_to_video_of_the_seed(tiny_components, source_video, tmp_path):
    fields = {"variant": "f1", "aspect_ratio": "5:4", "seed": 11}
    plan, v2v, v2v_calls, _ = run(tiny_components, tmp_path, init_video=source_video, video_strength=0.0, **fields)
    t2v_plan, t2v, t2v_calls, _ = run(tiny_components, **fields)
    assert (plan.mode, t2v_plan.mode, plan.num_sections, plan.start_frame_pass) == ("v2v", "t2v", 1, True)
    assert len(v2v_calls) == len(t2v_calls) == plan.model_calls == 2 * plan.steps
    assert all(torch.equal(a["hidden_states"], b["hidden_states"]) for a, b in zip(v2v_calls, t2v_calls))
    assert np.array_equal(v2v, t2v)
    assert decode_video(tmp_path / "clip.mp4")[0] == plan.output_frames == t2v_plan.output_frames


def cancel_on_step(cancel: CancelToken):
    return lambda event: cancel.cancel() if isinstance(event, StepProgress) else None


def test_video_to_video_denoises_the_re_noised_source_from_its_sigma(tiny_components, source_video):
    """The start frame's first call (the job is cancelled after it) sees the source's first latent frame re-noised
    to sigma 0.4 at timestep 400."""
    request = GenerateRequest(**VIDEO, init_video=source_video, video_strength=0.6)
    plan, cancel = plan_request(request), CancelToken()
    with TransformerCalls(tiny_components.transformer) as calls, pytest.raises(Cancelled):
        generate(tiny_components, request, plan, [], on_event=cancel_on_step(cancel), cancel=cancel)
    source = source_latents(tiny_components, source_video, plan)
    noise = randn_tensor(source[:, :, :1].shape, generator=torch.Generator().manual_seed(plan.seed))  # drawn first
    assert len(calls.calls) == 1
    first = calls.calls[0]
    assert abs(float(first["timestep"][0]) - 400.0) < 1e-2
    torch.testing.assert_close(first["hidden_states"], 0.6 * source[:, :, :1] + 0.4 * noise, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ faces


def test_the_api_refuses_a_video_path_and_the_cli_continues_a_video(
    source_video, framepack_cli, tiny_model_dir, tmp_path
):
    from api.intake import api_request

    for value in (source_video, "source.mp4"):
        with pytest.raises(FieldError, match="init_video: over the API a video must be uploaded"):
            api_request({"prompt": "x", "init_video": value})
    assert api_request({"prompt": "x", "init_video": ""}).init_video is None
    result = framepack_cli(
        "generate", "--model", "tiny", "--resolution", "128", "--latent-window-size", "3", "--duration", "0.4",
        "--steps", "1", "--init-video", source_video, "--keep-source", "--variant", "f1", "--context-frames", "5",
        "--output-dir", str(tmp_path), "--filename", "more", home=tiny_home(tiny_model_dir, tmp_path / "home"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "27 source frames kept + 12 new frames" in result.stdout
    assert decode_video(tmp_path / "more.mp4")[:3] == (27 + 12, 144, 112)
    plan = json.loads((tmp_path / "more.json").read_text())["plan_detail"]
    assert (plan["source"]["kept_frames"], plan["source"]["context_frames"], plan["output_frames"]) == (27, 5, 39)


def test_the_tab_has_a_video_input_built_from_the_request_model(tmp_path, source_video):
    gr = pytest.importorskip("gradio")
    from framepack.ui import compat
    from framepack.ui.controls import control_to_field, field_to_control, make_control, stored_fields

    with gr.Blocks():
        video = make_control("init_video", gr, compat.component)
        strength = make_control("video_strength", gr, compat.component)
    assert isinstance(video, gr.Video) and isinstance(strength, gr.Number)
    assert control_to_field("init_video", source_video) == source_video
    assert control_to_field("init_video", {"path": source_video}) == source_video
    assert control_to_field("video_strength", None) is None and control_to_field("video_strength", 0.4) == 0.4
    assert field_to_control("init_video", str(tmp_path / "gone.mp4")) is None
    assert "init_video" not in stored_fields(GenerateRequest(**VIDEO, init_video=source_video))
