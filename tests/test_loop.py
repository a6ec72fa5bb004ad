"""Seamless loops (`loop: true`): the plan's connecting section, its frames, and the context the transformer gets.

The engine tests run each variant once on the tiny self-test model (T2V, so the start latent is sampled and handed
to `on_section_latents` like every section's) beside the same job without the loop, window 2, two main sections.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import FAST, MemorySink, TransformerCalls, decode_video, read_raw_frames

from framepack.estimate import estimate_seconds, record_speed, speed_key
from framepack.generate import START, generate
from framepack.plan import make_plan
from framepack.request import GenerateRequest
from framepack.runner import build_sinks, output_path, plan_request
from framepack.sampling.context import HISTORY_2X, HISTORY_4X, loop_context
from framepack.video.decode import overlap_frames
from framepack.video.interpolate import InterpolatingSink

WINDOW = 2
# window 2 = 8 frames per section: 0.55 s at 30 fps is 2 sections, 1.07 s at 15 generated fps (interpolate 1) too
LOOP = {**FAST, "latent_window_size": WINDOW, "duration": 0.55, "prompt": "a kite circles", "loop": True}
VARIANTS = {
    "bidirectional": {"interpolate": 1, "interpolation": "flow", "duration": 1.07, "save_raw": True},
    "f1": {"variant": "f1"},
}


# ---------------------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("variant", ["bidirectional", "f1"])
def test_the_plan_adds_one_connecting_section_after_the_main_ones(variant):
    fields = {**LOOP, "variant": variant, "duration": 1.6, "section_prompts": "walks\nsits", "cfg_scale": 2.0}
    plain = make_plan(GenerateRequest(**{**fields, "loop": False}))
    plan = make_plan(GenerateRequest(**fields))
    main = plain.num_sections
    assert main == 6 and (plan.main_sections, plan.loop_sections, plan.num_sections) == (main, 1, main + 1)
    assert plan.sections[:main] == plain.sections  # the video proper is planned as without the loop
    assert plan.generated_frames == 4 * WINDOW * (main + 1) + 1 == plain.generated_frames + 4 * WINDOW
    assert plan.output_frames == plan.generated_frames and plan.duration == round(plan.output_frames / 30, 4)
    assert plan.generation_order == plain.generation_order + [main]  # generated last, after the start exists
    assert plan.total_steps == plain.total_steps + plan.steps
    assert plan.model_calls == plain.model_calls + 2 * plan.steps  # real CFG: two calls a step
    connecting, first = plan.sections[-1], plan.sections[0]
    assert connecting.connecting and not any(section.connecting for section in plan.sections[:main])
    assert (connecting.index, connecting.order, connecting.latent_padding) == (main, main, 0)
    assert (connecting.first_frame, connecting.end_frame) == (plain.generated_frames, plan.generated_frames)
    assert connecting.start_time == plain.sections[-1].end_time
    assert (connecting.prompt, connecting.prompt_line) == (first.prompt, 0) == ("a kite circles, walks", 0)
    assert f"{plan.generated_frames} frames" in plan.summary()
    assert f"in {main + 1} sections" in plan.summary()
    assert f"loop: section {main} connects the end back to the start" in plan.summary()
    assert "loop" not in plain.summary()


def test_a_loop_interpolates_back_to_its_first_frame_too():
    for interpolate in (1, 3):
        plain = make_plan(GenerateRequest(**{**LOOP, "interpolate": interpolate, "loop": False}))
        plan = make_plan(GenerateRequest(**{**LOOP, "interpolate": interpolate}))
        generated = plan.generated_frames
        assert plain.output_frames == (plain.generated_frames - 1) * (interpolate + 1) + 1
        assert plan.output_frames == generated * (interpolate + 1)  # the in-betweens from the last to the first


def test_loop_is_refused_with_single_frame_naming_both(framepack_cli, tmp_path):
    with pytest.raises(ValueError, match="loop does not apply to single_frame"):
        GenerateRequest(**{**LOOP, "single_frame": True, "init_image": "start.png"})
    result = framepack_cli(
        "plan", "--model", "tiny", "--loop", "--single-frame", "--init-image", "x.png", home=tmp_path
    )
    assert result.returncode != 0 and "loop does not apply to single_frame" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_cli_flag_and_the_plan_command(framepack_cli, tmp_path):
    result = framepack_cli("plan", "--model", "tiny", "--duration", "3", "--loop", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary, detail = result.stdout.split("\n", 1)
    plan = json.loads(detail)
    assert (plan["num_sections"], plan["loop_sections"], plan["generated_frames"]) == (3, 1, 109)
    assert plan["sections"][-1]["connecting"] is True
    assert summary.startswith("109 frames") and "loop: section 2 connects the end back to the start" in summary


def test_the_time_estimate_counts_the_connecting_section(tmp_path):
    request = GenerateRequest(**{**LOOP, "loop": False})
    looped = GenerateRequest(**LOOP)
    plain, plan = make_plan(request), make_plan(looped)
    assert speed_key(request, plain) == speed_key(looped, plan)  # the same rates per step and per frame
    timings = {"sampled_steps": 10, "sampling": 5.0, "decode": 1.7, "total": 8.7}
    assert record_speed(tmp_path, request, plain, timings)  # 0.5 s a step, 0.1 s a frame (17), 2 s else
    assert estimate_seconds(tmp_path, request, plain) == round(0.5 * 6 + 0.1 * 17 + 2.0, 1)
    assert estimate_seconds(tmp_path, looped, plan) == round(0.5 * 8 + 0.1 * 25 + 2.0, 1)


# ---------------------------------------------------------------------------------------------- the sink


def test_the_interpolating_sink_of_a_loop_ends_with_the_in_betweens_back_to_the_first_frame():
    def halfway(a, b, count):  # a plain mean, so the expected frames are known exactly
        return [((a.astype(np.uint16) + b) // 2).astype(np.uint8) for _ in range(count)]

    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    for wrap, expected in ((False, 13), (True, 15)):
        memory = MemorySink()
        sink = InterpolatingSink([memory], halfway, 2, wrap=wrap)
        sink.write(frames[:2])
        sink.write(frames[2:])
        sink.close()
        out = memory.frames
        assert out.shape[0] == expected and memory.closed
        assert np.array_equal(out[::3], frames)  # the generated frames pass through in place
        if wrap:
            assert np.array_equal(out[-2:], np.stack(halfway(frames[-1], frames[0], 2)))


# ---------------------------------------------------------------------------------------------- the engine


def run_job(components, folder, files=True, **fields):
    """Generate into a memory sink (and with `files` the request's files); (plan, frames, transformer calls,
    latents by key)."""
    request = GenerateRequest(**{**fields, "output_dir": str(folder), "filename": "clip"})
    plan = plan_request(request)
    memory, latents = MemorySink(), {}
    sinks = build_sinks(request, plan, output_path(request, plan, folder)) if files else []
    with TransformerCalls(components.transformer) as calls:
        generate(components, request, plan, [memory, *sinks], on_section_latents=latents.__setitem__)
    return plan, memory.frames, calls.calls, latents


@pytest.fixture(scope="module", params=list(VARIANTS))
def jobs(request, tiny_components, tmp_path_factory):
    """The variant's loop job and the same job without the loop."""
    fields = {**LOOP, **VARIANTS[request.param]}
    folder = tmp_path_factory.mktemp(f"loop-{request.param}")
    looped = run_job(tiny_components, folder / "loop", **fields)
    plain = run_job(tiny_components, folder / "plain", files=False, **{**fields, "loop": False})
    return request.param, folder, looped, plain


def connecting_calls(plan, calls):
    """The transformer calls of the connecting section: it is generated last."""
    assert plan.generation_order[-1] == plan.main_sections
    return calls[-plan.steps :]


def assert_loop_context(call: dict, latents: dict, plan) -> None:
    """The inputs of a connecting-section call: the last main section's last latent frame right before the window,
    the start latent right after it (1x), then the first sections' latents in time order (2x, 4x; zeros past the
    video's start), compared exactly with what the job stored."""
    window, main = plan.latent_window_size, plan.main_sections
    firsts = torch.cat([latents[index] for index in range(main)], dim=2)
    firsts = torch.cat([firsts, firsts.new_zeros(*firsts.shape[:2], HISTORY_2X + HISTORY_4X, *firsts.shape[3:])], 2)
    assert torch.equal(call["latents_clean"][:, :, :1], latents[main - 1][:, :, -1:]), "past: the video's end"
    assert torch.equal(call["latents_clean"][:, :, 1:], latents[START]), "future 1x: the start latent"
    assert torch.equal(call["latents_history_2x"], firsts[:, :, :HISTORY_2X]), "future 2x: the first latents"
    assert torch.equal(call["latents_history_4x"], firsts[:, :, HISTORY_2X : HISTORY_2X + HISTORY_4X]), "future 4x"
    assert call["indices_latents"].tolist() == list(range(1, 1 + window))
    assert call["indices_latents_clean"].tolist() == [0, 1 + window]
    assert call["indices_latents_history_2x"].tolist() == [2 + window, 3 + window]
    assert call["indices_latents_history_4x"].tolist() == list(range(4 + window, 20 + window))


def test_the_loop_writes_the_planned_frames(jobs):
    variant, folder, (plan, frames, calls, latents), (plain, plain_frames, _, plain_latents) = jobs
    assert (plan.variant, plan.main_sections, plan.num_sections) == (variant, 2, 3)
    assert len(calls) == plan.model_calls
    assert frames.shape == (plan.generated_frames, plan.height, plan.width, 3) == (25, 128, 128, 3)
    assert decode_video(folder / "loop" / "clip.mp4")[0] == plan.output_frames
    if plan.interpolate:  # the raw frames hold every output frame exactly: the generated ones at even places
        raw = read_raw_frames(folder / "loop" / "clip.safetensors")
        assert raw.shape[0] == plan.output_frames == 2 * plan.generated_frames
        assert np.array_equal(raw[::2], frames)  # the last one is the in-between back to the first frame
    # the loop only adds: the main sections and the frames no later window blends into are the plain job's
    assert all(torch.equal(latents[key], plain_latents[key]) for key in [START, *range(plain.num_sections)])
    kept = plain.generated_frames - overlap_frames(WINDOW)
    assert np.array_equal(frames[:kept], plain_frames[:kept])


def test_the_connecting_section_gets_the_video_end_as_past_and_its_start_as_future(jobs):
    _, _, (plan, _, calls, latents), _ = jobs
    assert latents[START].abs().max() > 0 and all(latents[index].abs().max() > 0 for index in range(3))
    for call in connecting_calls(plan, calls):
        assert_loop_context(call, latents, plan)


def test_negative_control_an_empty_future_fails_the_check_and_changes_the_section(jobs, tiny_components):
    """The check above fails on the context a connecting section would get with its future left empty, and the
    transformer's answer depends on that future: an empty one would make a different section."""
    _, _, (plan, _, calls, latents), _ = jobs
    main = plan.main_sections
    nothing = latents[0][:, :, :0]
    empty = loop_context(latents[main - 1], nothing, plan.latent_window_size)
    call = connecting_calls(plan, calls)[0]
    emptied = {**call, **empty.transformer_kwargs(torch.device("cpu"), torch.float32)}
    with pytest.raises(AssertionError, match="future 1x"):
        assert_loop_context(emptied, latents, plan)
    transformer = tiny_components.transformer
    with torch.no_grad():
        answer = transformer(**call)[0]
        without_future = transformer(**emptied)[0]
    assert torch.equal(emptied["latents_clean"][:, :, :1], call["latents_clean"][:, :, :1])  # the same past
    assert (answer - without_future).abs().max() > 1e-3 * answer.abs().max()
