"""The section loop on the tiny self-test model: modes, variants, strengths, prompts, keyframes, cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoFramepackPipeline
from diffusers.utils.torch_utils import randn_tensor
from helpers import FAST, MemorySink, TransformerCalls, decode_video, pattern_image

from framepack.encoders import encode_vision, vae_encode
from framepack.events import Cancelled, CancelToken, FramesWritten, StageStarted, StepProgress
from framepack.generate import START, generate, window_keys
from framepack.images import fit_to_bucket, load_image, to_tensor, to_uint8
from framepack.request import GenerateRequest
from framepack.runner import build_sinks, output_path, plan_request
from framepack.video.decode import OverlapJoiner, overlap_frames
from framepack.video.encoder import partial_path

# window 3 = 12 frames per section: 0.8 s at 30 fps is 2 sections, 1.6 s is 4, 2.0 s is 5
ENGINE = {**FAST, "fps": 30, "duration": 0.8, "prompt": "a red ball rolls"}  # two sections


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    names = ("start", "end", "key")
    return {name: str(pattern_image(folder / f"{name}.png", 160, 128, seed)) for seed, name in enumerate(names)}


def run(components, sinks=None, cancel=None, on_event=None, finished=None, **fields):
    request = GenerateRequest(**{**ENGINE, **fields})
    plan = plan_request(request)
    memory = MemorySink()
    latents = {}
    with TransformerCalls(components.transformer) as calls:
        generate(
            components,
            request,
            plan,
            [memory, *(sinks or [])],
            on_event=on_event or (lambda event: None),
            cancel=cancel,
            finished_sections=finished,
            on_section_latents=lambda key, value: latents.__setitem__(key, value),
        )
    return plan, memory, calls.calls, latents


def pixels_of(source: str, plan) -> torch.Tensor:
    return to_tensor(fit_to_bucket(load_image(source), plan.width, plan.height))


def section_calls(calls, plan):
    """Transformer calls grouped by section index (time order), skipping the T2V start-frame pass."""
    calls = calls[plan.steps :] if plan.start_frame_pass else calls
    groups = [calls[i * plan.steps : (i + 1) * plan.steps] for i in range(plan.num_sections)]
    return {index: groups[order] for order, index in enumerate(plan.generation_order)}


CASES = [
    ("t2v", "bidirectional", {}),
    ("t2v", "f1", {}),
    ("i2v", "bidirectional", {"duration": 2.0}),
    ("i2v", "f1", {}),
    ("flf2v", "bidirectional", {}),
]


@pytest.mark.parametrize("mode,variant,extra", CASES, ids=[f"{m}-{v}" for m, v, _ in CASES])
def test_every_mode_and_variant_writes_the_planned_frames(tiny_components, images, tmp_path, mode, variant, extra):
    fields = dict(variant=variant, output_dir=str(tmp_path), filename="clip", **extra)
    if mode != "t2v":
        fields["init_image"] = images["start"]
    if mode == "flf2v":
        fields["end_image"] = images["end"]
    request = GenerateRequest(**{**ENGINE, **fields})
    plan = plan_request(request)
    sinks = build_sinks(request, plan, output_path(request, plan, tmp_path))
    plan, memory, calls, _ = run(tiny_components, sinks=sinks, **fields)

    assert plan.mode == mode
    assert len(calls) == plan.model_calls
    assert memory.frames.shape == (plan.generated_frames, plan.height, plan.width, 3)
    assert memory.frames.std() > 1.0  # the self-test model makes noise, not a flat picture
    frames, width, height, codec, pix_fmt = decode_video(tmp_path / "clip.mp4")
    assert (frames, width, height) == (plan.generated_frames, plan.width, plan.height)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert not partial_path(tmp_path / "clip.mp4").exists()


def test_sections_run_in_plan_order_with_the_original_paddings(tiny_components, images):
    plan, _, calls, _ = run(tiny_components, init_image=images["start"], duration=2.0)
    assert plan.num_sections == 5
    window = plan.latent_window_size
    starts = [int(calls[order * plan.steps]["indices_latents"][0]) for order in range(plan.num_sections)]
    assert starts == [1 + padding * window for padding in (3, 2, 2, 1, 0)]
    f1, _, f1_calls, _ = run(tiny_components, init_image=images["start"], duration=2.0, variant="f1")
    assert {int(call["indices_latents"][0]) for call in f1_calls} == {20}  # after 1 + 16 + 2 + 1 history slots


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_init_strength_mixes_the_start_latent_with_noise(tiny_components, images, strength):
    plan, _, calls, _ = run(tiny_components, init_image=images["start"], init_strength=strength)
    generator = torch.Generator().manual_seed(plan.seed)
    latent = vae_encode(tiny_components, pixels_of(images["start"], plan), generator)
    noise = randn_tensor(latent.shape, generator=generator)
    expected = strength * latent + (1 - strength) * noise
    assert len(calls) == plan.model_calls > 0
    for call in calls:
        torch.testing.assert_close(call["latents_clean"][:, :, :1], expected, atol=1e-5, rtol=1e-5)


def test_end_strength_and_vision_weights_in_flf2v(tiny_components, images):
    fields = dict(
        init_image=images["start"],
        end_image=images["end"],
        end_strength=0.7,
        vision_strength=1.3,
        end_vision_weight=0.25,
    )
    plan, _, calls, latents = run(tiny_components, **fields)
    generator = torch.Generator().manual_seed(plan.seed)
    start_pixels, end_pixels = pixels_of(images["start"], plan), pixels_of(images["end"], plan)
    start = vae_encode(tiny_components, start_pixels, generator)
    end = vae_encode(tiny_components, end_pixels, generator)
    vision = 1.3 * (
        0.75 * encode_vision(tiny_components, start_pixels, torch.float32)
        + 0.25 * encode_vision(tiny_components, end_pixels, torch.float32)
    )
    by_section = section_calls(calls, plan)
    last = plan.num_sections - 1  # generated first, next to the end frame
    assert len(calls) == plan.model_calls and len(by_section[last]) == len(by_section[0]) == plan.steps > 0
    for call in by_section[last]:
        torch.testing.assert_close(call["latents_clean"][:, :, 1:2], 0.7 * end + 0.3 * start, atol=1e-5, rtol=1e-5)
    for call in by_section[0]:  # later sections see the generated frames after them
        torch.testing.assert_close(call["latents_clean"][:, :, 1:2], latents[1][:, :, :1], atol=1e-5, rtol=1e-5)
    for call in calls:
        torch.testing.assert_close(call["image_embeds"], vision, atol=1e-5, rtol=1e-5)


def test_i2v_vision_strength_scales_the_siglip_embedding(tiny_components, images):
    plan, _, calls, _ = run(tiny_components, init_image=images["start"], vision_strength=0.4)
    expected = 0.4 * encode_vision(tiny_components, pixels_of(images["start"], plan), torch.float32)
    assert len(calls) == plan.model_calls > 0
    for call in calls:
        torch.testing.assert_close(call["image_embeds"], expected, atol=1e-5, rtol=1e-5)


def test_section_prompts_reach_their_sections_and_are_encoded_once(tiny_components, images):
    encodes = []
    handle = tiny_components.text_encoder.register_forward_hook(lambda *_: encodes.append(1))
    try:
        plan, _, calls, _ = run(
            tiny_components, init_image=images["start"], duration=1.6, section_prompts="walking\njumping"
        )
    finally:
        handle.remove()
    assert plan.num_sections == 4 and len(encodes) == 2
    by_section = section_calls(calls, plan)
    text = {index: group[0]["encoder_hidden_states"] for index, group in by_section.items()}
    assert torch.equal(text[0], text[1]) and torch.equal(text[2], text[3])
    assert not torch.allclose(text[0], text[2])


def test_keyframes_condition_their_sections(tiny_components, images):
    plan, _, calls, _ = run(tiny_components, init_image=images["start"], duration=1.6, keyframes={2: images["key"]})
    generator = torch.Generator().manual_seed(plan.seed)
    start = vae_encode(tiny_components, pixels_of(images["start"], plan), generator)
    key = vae_encode(tiny_components, pixels_of(images["key"], plan), generator)
    key_vision = encode_vision(tiny_components, pixels_of(images["key"], plan), torch.float32)
    by_section = section_calls(calls, plan)
    for index in (0, 1):
        torch.testing.assert_close(by_section[index][0]["latents_clean"][:, :, :1], start, atol=1e-5, rtol=1e-5)
    for index in (2, 3):
        torch.testing.assert_close(by_section[index][0]["latents_clean"][:, :, :1], key, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(by_section[index][0]["image_embeds"], key_vision, atol=1e-5, rtol=1e-5)


def test_f1_history_starts_from_the_start_latent(tiny_components, images):
    plan, _, calls, latents = run(tiny_components, init_image=images["start"], variant="f1")
    generator = torch.Generator().manual_seed(plan.seed)
    start = vae_encode(tiny_components, pixels_of(images["start"], plan), generator)
    first = calls[0]
    torch.testing.assert_close(first["latents_clean"][:, :, 1:2], start, atol=1e-5, rtol=1e-5)  # 1x slot
    assert first["latents_history_2x"].abs().max() == 0 and first["latents_history_4x"].abs().max() == 0
    # second section, window 3: history [15 zeros | start | s0 s0 s0] -> 4x ends with start, 2x and 1x are s0
    second = calls[plan.steps]
    torch.testing.assert_close(second["latents_clean"][:, :, 1:2], latents[0][:, :, 2:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second["latents_history_2x"], latents[0][:, :, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second["latents_history_4x"][:, :, -1:], start, atol=1e-5, rtol=1e-5)
    assert second["latents_history_4x"][:, :, :-1].abs().max() == 0


def test_t2v_generates_the_first_frame_from_the_prompt(tiny_components):
    plan, memory, calls, latents = run(tiny_components)
    assert plan.start_frame_pass and START in latents
    assert len(calls) == plan.model_calls > plan.steps  # the start-frame pass, then the sections
    for call in calls[: plan.steps]:
        assert call["hidden_states"].shape[2] == 1 and call["image_embeds"].abs().max() == 0
    assert all(call["image_embeds"].abs().max() > 0 for call in calls[plan.steps :])


def test_samplers_both_run_and_differ(tiny_components, images):
    _, unipc, _, _ = run(tiny_components, init_image=images["start"], steps=3, sampler="unipc")
    _, euler, _, _ = run(tiny_components, init_image=images["start"], steps=3, sampler="euler")
    assert unipc.frames.shape == euler.frames.shape
    assert np.abs(unipc.frames.astype(int) - euler.frames.astype(int)).mean() > 0.5


def test_same_seed_same_video_other_seed_other_video(tiny_components, images):
    _, first, _, _ = run(tiny_components, init_image=images["start"], seed=5)
    _, again, _, _ = run(tiny_components, init_image=images["start"], seed=5)
    _, other, _, _ = run(tiny_components, init_image=images["start"], seed=6)
    assert np.array_equal(first.frames, again.frames)
    assert not np.array_equal(first.frames, other.frames)


def test_cancel_stops_within_a_step_and_leaves_no_file(tiny_components, images, tmp_path):
    cancel = CancelToken()

    def on_event(event):
        if isinstance(event, StepProgress) and event.done_steps == 3:
            cancel.cancel()

    fields = dict(init_image=images["start"], steps=4, output_dir=str(tmp_path), filename="cancelled")
    request = GenerateRequest(**{**ENGINE, **fields})
    plan = plan_request(request)
    sinks = build_sinks(request, plan, output_path(request, plan, tmp_path))
    with TransformerCalls(tiny_components.transformer) as calls, pytest.raises(Cancelled):
        generate(tiny_components, request, plan, sinks, on_event=on_event, cancel=cancel)
    assert len(calls.calls) == 3
    assert list(tmp_path.iterdir()) == []


def test_cancel_while_decoding_stops_before_the_next_window_and_leaves_no_file(tiny_components, images, tmp_path):
    """Bi-directional decodes every window after its last section: a cancel then must not wait for the end."""
    cancel = CancelToken()
    decoded = []

    def on_event(event):
        if isinstance(event, StageStarted) and event.stage == "decode":
            cancel.cancel()
        if isinstance(event, FramesWritten):
            decoded.append(event.frames)

    fields = dict(init_image=images["start"], duration=1.6, output_dir=str(tmp_path), filename="cancelled")
    request = GenerateRequest(**{**ENGINE, **fields})
    plan = plan_request(request)
    assert plan.variant == "bidirectional" and plan.num_sections >= 3
    sinks = build_sinks(request, plan, output_path(request, plan, tmp_path))
    with pytest.raises(Cancelled):
        generate(tiny_components, request, plan, sinks, on_event=on_event, cancel=cancel)
    assert decoded == []  # the last section's decode was refused before any frame went out
    assert list(tmp_path.iterdir()) == []


def test_resume_from_finished_sections_gives_the_same_video(tiny_components, images):
    fields = dict(init_image=images["start"], duration=1.6)
    plan, whole, _, latents = run(tiny_components, **fields)
    first_two = {index: latents[index] for index in plan.generation_order[:2]}
    _, resumed, calls, _ = run(tiny_components, finished=first_two, **fields)
    assert len(calls) == plan.model_calls - 2 * plan.steps
    assert np.array_equal(whole.frames, resumed.frames)


@pytest.mark.parametrize("variant", ["bidirectional", "f1"])
def test_overlap_joiner_equals_diffusers_soft_append(variant):
    """Decoding windows in time order and cross-fading equals the pipeline's per-section assembly."""
    window, sections, overlap = 3, 4, 9
    generator = torch.Generator().manual_seed(0)
    lengths = {}
    for index in range(sections):
        keys = window_keys(variant, index, sections)
        latent_frames = sum(1 if key == START else window for key in keys)
        lengths[index] = 4 * latent_frames - 3
    decoded = {index: torch.rand(1, 3, lengths[index], 4, 4, generator=generator) * 2 - 1 for index in range(sections)}
    soft_append = HunyuanVideoFramepackPipeline._soft_append
    if variant == "bidirectional":  # the pipeline prepends each new (earlier) window
        reference = decoded[sections - 1]
        for index in reversed(range(sections - 1)):
            reference = soft_append(None, decoded[index], reference, overlap)
    else:
        reference = decoded[0]
        for index in range(1, sections):
            reference = soft_append(None, reference, decoded[index], overlap)
    written = []
    joiner = OverlapJoiner(overlap, written.append)
    for index in range(sections):
        joiner.add(decoded[index])
        assert joiner.tail.shape[2] == overlap  # never more than one overlap held back
    joiner.finish()
    ours = np.concatenate(written)
    assert ours.shape[0] == 4 * window * sections + 1
    assert np.abs(ours.astype(int) - to_uint8(reference[0].transpose(0, 1)).astype(int)).max() <= 1


def test_window_keys_match_the_pipelines_decode_windows():
    assert [window_keys("bidirectional", i, 3) for i in range(3)] == [[START, 0, 1], [1, 2], [2]]
    assert [window_keys("f1", i, 3) for i in range(3)] == [[START, 0], [0, 1], [1, 2]]
    assert window_keys("bidirectional", 0, 1) == [START, 0]


def window_reference(components, plan, latents) -> np.ndarray:
    """The video decoded as before shared tiles were reused: each window through `vae.decode`, then joined."""
    vae, written = components.vae, []
    joiner = OverlapJoiner(overlap_frames(plan.latent_window_size), written.append)
    with torch.no_grad():
        for index in range(plan.num_sections):
            window = torch.cat([latents[key] for key in window_keys(plan.variant, index, plan.num_sections)], dim=2)
            joiner.add(vae.decode(window / vae.config.scaling_factor, return_dict=False)[0].float())
    joiner.finish()
    return np.concatenate(written)


def test_decode_reuses_shared_tiles_writes_the_same_frames_and_reports_each_window(tiny_components):
    """Three sections of window 3: windows [start, 0, 1], [1, 2], [2] are latent frames 0-6, 4-9, 7-9. Temporal tiles
    of 5 latent frames every 3: the first window decodes 3 tiles, the second 2 (at 4 and 7), and the last window (3
    frames, decoded whole) is the second window's tile at 7, which is reused."""
    events, decoder_calls = [], []
    hook = tiny_components.vae.decoder.register_forward_hook(lambda *_: decoder_calls.append(1))
    try:
        plan, memory, _, latents = run(tiny_components, on_event=events.append, duration=1.2, preview=False)  # T2V
    finally:
        hook.remove()
    assert plan.num_sections == 3
    assert len(decoder_calls) == 1 + 3 + 2  # the T2V start frame, then the windows' tiles; 1 + 3 + 2 + 1 without reuse
    assert np.array_equal(memory.frames, window_reference(tiny_components, plan, latents))
    written = [event for event in events if isinstance(event, FramesWritten)]
    assert {event.window for event in written} == {0, 1, 2} and {event.windows for event in written} == {3}
    assert all(event.window_seconds > 0 and not event.tiled for event in written)
    assert [event.window for event in written] == sorted(event.window for event in written)
    assert written[-1].frames == plan.generated_frames == memory.frames.shape[0]
    stages = [event for event in events if isinstance(event, StageStarted) and event.stage == "decode"]
    assert stages[0].detail == "writing frames in time order: 3 windows left, vae_tiling auto"  # all after sampling


def test_a_decode_out_of_memory_in_a_job_is_retried_once_tiled(tiny_components, images, monkeypatch):
    """Untiled decodes run out of memory (simulated): the job's first window is retried tiled, every later decode
    is tiled at once, and the video is exactly that of a job run with vae_tiling 'on'."""
    tiles = {"vae_tile_size": 96, "vae_tile_overlap": 32, "init_image": images["start"], "preview": False}
    _, tiled, _, _ = run(tiny_components, vae_tiling="on", **tiles)
    vae, attempts, original = tiny_components.vae, [], tiny_components.vae.decode

    def decode(latents, return_dict=True):
        attempts.append(vae.use_tiling)
        if not vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(latents, return_dict=return_dict)

    monkeypatch.setattr(vae, "decode", decode)
    events = []
    plan, retried, _, _ = run(tiny_components, on_event=events.append, vae_tiling="auto", **tiles)
    monkeypatch.undo()
    assert attempts.count(False) == 1 and attempts[0] is False and len(attempts) > 1
    assert np.array_equal(retried.frames, tiled.frames) and retried.frames.shape[0] == plan.generated_frames
    assert all(event.tiled for event in events if isinstance(event, FramesWritten) and event.window >= 0)
