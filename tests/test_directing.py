"""Directing the video (issue 15) on the tiny self-test model: the SigLIP input, blended prompt changes, vision
schedules, latent paddings and single-frame inference, checked on what the transformer receives."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import FAST, MemorySink, TransformerCalls, pattern_image, tiny_home
from PIL import Image
from pydantic import ValidationError

from api.routes import PREFIX
from api.server import create_app
from framepack.cli import main
from framepack.encoders import PROMPT_TEMPLATE, encode_vision, vae_encode
from framepack.generate import generate
from framepack.images import fit_to_bucket, load_image, to_tensor
from framepack.jobs.manager import JobManager
from framepack.plan import PlanError, make_plan
from framepack.planning import plan_request, resolve_recipe
from framepack.record import GenerationRecord
from framepack.request import GenerateRequest
from framepack.runner import Runner

ENGINE = {**FAST, "fps": 30, "duration": 0.8, "prompt": "a red ball rolls"}  # two sections of window 3


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    names = ("start", "end", "key", "reference")
    return {name: str(pattern_image(folder / f"{name}.png", 160, 128, seed)) for seed, name in enumerate(names)}


def run(components, **fields):
    """Generate into memory; (plan, the transformer calls' inputs, the frames)."""
    request = GenerateRequest(**{**ENGINE, **fields})
    plan = plan_request(request)
    memory = MemorySink()
    with TransformerCalls(components.transformer) as calls:
        generate(components, request, plan, [memory])
    return plan, calls.calls, memory.frames


def section_calls(calls, plan):
    """Transformer calls grouped by section index (time order), skipping the T2V start-frame pass."""
    calls = calls[plan.steps :] if plan.start_frame_pass else calls
    groups = [calls[i * plan.steps : (i + 1) * plan.steps] for i in range(plan.num_sections)]
    return {index: groups[order] for order, index in enumerate(plan.generation_order)}


def pixels_of(source: str, plan) -> torch.Tensor:
    return to_tensor(fit_to_bucket(load_image(source), plan.width, plan.height))


def siglip_of_uint8(components, pixels: np.ndarray) -> torch.Tensor:
    """The processor's own result on the uint8 picture, as the original app calls it."""
    inputs = components.feature_extractor.preprocess(images=pixels, return_tensors="pt")
    with torch.no_grad():
        return components.image_encoder(**inputs).last_hidden_state


def test_siglip_gets_the_uint8_picture_as_the_original(tiny_components, images):
    pixels = fit_to_bucket(load_image(images["start"]), 128, 128)
    assert pixels.dtype == np.uint8
    ours = encode_vision(tiny_components, to_tensor(pixels), torch.float32)
    torch.testing.assert_close(ours, siglip_of_uint8(tiny_components, pixels), atol=0, rtol=0)
    # the floats in [0, 1] that diffusers' pipeline passes (do_rescale=False) are a different picture for SigLIP
    floats = tiny_components.feature_extractor(
        images=(to_tensor(pixels) + 1) / 2, return_tensors="pt", do_rescale=False
    ).pixel_values
    exact = tiny_components.feature_extractor(images=pixels, return_tensors="pt").pixel_values
    assert not torch.equal(floats, exact)


# ------------------------------------------------------------------------------------------------ latent paddings


def test_latent_paddings_one_for_all_or_one_per_section_in_time_order():
    plan = make_plan(GenerateRequest(duration=6, latent_paddings="3"))
    assert plan.num_sections == 5 and [section.latent_padding for section in plan.sections] == [3] * 5
    plan = make_plan(GenerateRequest(duration=6, latent_paddings="4, 0,1 2,2"))
    assert [section.latent_padding for section in plan.sections] == [4, 0, 1, 2, 2]
    assert [plan.sections[index].latent_padding for index in plan.generation_order] == [2, 2, 1, 0, 4]


def test_latent_paddings_are_checked_against_the_plan_and_the_variant():
    with pytest.raises(PlanError, match=r"^latent_paddings: 2 values for 5 sections; give one number for every"):
        make_plan(GenerateRequest(duration=6, latent_paddings="1,2"))
    with pytest.raises(ValidationError, match="latent_paddings works only with variant 'bidirectional'"):
        GenerateRequest(variant="f1", latent_paddings="1")
    for bad in ("3,x", "-1", "33", "1.5"):
        with pytest.raises(ValidationError, match="latent_paddings must be whole numbers from 0 to 32"):
            GenerateRequest(latent_paddings=bad)


def test_the_transformer_sees_the_requested_paddings(tiny_components, images):
    plan, calls, _ = run(tiny_components, init_image=images["start"], latent_paddings="0,2")
    window = plan.latent_window_size
    by_section = section_calls(calls, plan)
    assert len(calls) == plan.model_calls == 2 * plan.steps
    for index, padding in ((0, 0), (1, 2)):  # independently: start frame at 0, padding*window, the window, 1x slot
        first = 1 + padding * window
        for call in by_section[index]:
            assert call["indices_latents"].tolist() == list(range(first, first + window))
            assert call["indices_latents_clean"].tolist() == [0, first + window]


# ------------------------------------------------------------------------------------------------ prompt blending


def test_blend_weights_in_the_plan():
    plan = make_plan(GenerateRequest(prompt="x", section_prompts="a\nb\nc", duration=6, prompt_blend_sections=2))
    # lines stretch over 5 sections as a, a, b, b, c; each change moves over 2 sections: 1/3, 2/3, then alone
    expected = [(None, 1.0), (None, 1.0), ("x, a", 1 / 3), ("x, a", 2 / 3), ("x, b", 1 / 3)]
    assert [section.blend_from for section in plan.sections] == [name for name, _ in expected]
    assert [section.blend_weight for section in plan.sections] == pytest.approx([weight for _, weight in expected])
    assert [section.prompt for section in plan.sections] == ["x, a", "x, a", "x, b", "x, b", "x, c"]
    # a change before the previous blend ended starts from the previous section's prompt
    every = make_plan(GenerateRequest(prompt="x", section_prompts="a\nb\nc\nd\ne", duration=6, prompt_blend_sections=2))
    assert [s.blend_from for s in every.sections[1:]] == ["x, a", "x, b", "x, c", "x, d"]
    assert [s.blend_weight for s in every.sections[1:]] == pytest.approx([1 / 3] * 4)
    hard = make_plan(GenerateRequest(prompt="x", section_prompts="a\nb", duration=6))
    assert all(section.blend_from is None and section.blend_weight == 1.0 for section in hard.sections)
    nothing = make_plan(GenerateRequest(prompt="x", duration=6, prompt_blend_sections=2))
    assert "prompt_blend_sections: no section prompt changes, so there is nothing to blend" in nothing.warnings


def text_embeddings(components, prompt: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Llama hidden state -3 after the template prefix with its mask, and CLIP pooled, computed here."""
    tokenizer = components.tokenizer
    crop = len(tokenizer(PROMPT_TEMPLATE.split("{}")[0]).input_ids)
    inputs = tokenizer(
        [PROMPT_TEMPLATE.format(prompt)], max_length=256 + crop, padding="max_length", truncation=True,
        return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        hidden = components.text_encoder(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, output_hidden_states=True
        ).hidden_states[-3]
        clip = components.tokenizer_2([prompt], padding="max_length", max_length=77, truncation=True).input_ids
        pooled = components.text_encoder_2(torch.tensor(clip)).pooler_output
    return hidden[:, crop:], inputs.attention_mask[:, crop:].float(), pooled


def test_the_transformer_receives_the_blended_embeddings_and_masks(tiny_components, images):
    short, long = "walking", "jumping over a tall wooden fence in the rain"
    plan, calls, _ = run(
        tiny_components, init_image=images["start"], duration=1.6, section_prompts=f"{short}\n{long}",
        prompt_blend_sections=1,
    )  # fmt: skip
    assert plan.num_sections == 4 and plan.sections[2].blend_weight == 0.5
    old_llama, old_mask, old_pooled = text_embeddings(tiny_components, f"{ENGINE['prompt']}, {short}")
    new_llama, new_mask, new_pooled = text_embeddings(tiny_components, f"{ENGINE['prompt']}, {long}")
    assert old_mask.sum() < new_mask.sum()  # prompts of different token lengths
    # half of each, each prompt's padding zeroed; the mask is the union (the longer prompt's)
    llama = 0.5 * old_llama * old_mask[..., None] + 0.5 * new_llama * new_mask[..., None]
    by_section = section_calls(calls, plan)
    assert len(calls) == plan.model_calls and all(len(by_section[i]) == plan.steps > 0 for i in range(4))
    for call in by_section[2]:
        torch.testing.assert_close(call["encoder_hidden_states"], llama, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(call["encoder_attention_mask"], new_mask, atol=0, rtol=0)
        torch.testing.assert_close(
            call["pooled_projections"], 0.5 * old_pooled + 0.5 * new_pooled, atol=1e-5, rtol=1e-5
        )
    for index, (own, mask, pooled) in ((1, (old_llama, old_mask, old_pooled)), (3, (new_llama, new_mask, new_pooled))):
        for call in by_section[index]:  # before and after the blend: the prompt alone, as encoded
            torch.testing.assert_close(call["encoder_hidden_states"], own, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(call["encoder_attention_mask"], mask, atol=0, rtol=0)
            torch.testing.assert_close(call["pooled_projections"], pooled, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ vision schedule


def test_linear_vision_schedule_in_the_plan():
    request = GenerateRequest(
        duration=6, init_image="a.png", end_image="b.png", vision_schedule="linear", keyframes={2: "k.png"}
    )
    plan = make_plan(request, (64, 64))
    # sections 0, 1 move from the start (at 0) toward the keyframe at 2; 2..4 from it toward the end (at 5)
    expected = [
        ("keyframes.2", 0.25),
        ("keyframes.2", 0.75),
        ("end_image", 0.5 / 3),
        ("end_image", 0.5),
        ("end_image", 2.5 / 3),
    ]
    assert [s.vision_toward for s in plan.sections] == [name for name, _ in expected]
    assert [s.vision_weight for s in plan.sections] == pytest.approx([weight for _, weight in expected])
    constant = make_plan(request.model_copy(update={"vision_schedule": "constant"}), (64, 64))
    assert [(s.vision_toward, s.vision_weight) for s in constant.sections] == [("end_image", 0.5)] * 2 + [
        (None, 0.0)
    ] * 3
    alone = make_plan(GenerateRequest(duration=6, vision_schedule="linear"))
    assert all(s.vision_toward is None for s in alone.sections)
    assert any(
        warning.startswith("vision_schedule linear: no end_image or later keyframe") for warning in alone.warnings
    )


def test_linear_vision_schedule_reaches_the_transformer(tiny_components, images):
    plan, calls, _ = run(
        tiny_components, init_image=images["start"], end_image=images["end"], vision_schedule="linear",
        vision_strength=1.2,
    )  # fmt: skip
    start = siglip_of_uint8(tiny_components, fit_to_bucket(load_image(images["start"]), plan.width, plan.height))
    end = siglip_of_uint8(tiny_components, fit_to_bucket(load_image(images["end"]), plan.width, plan.height))
    by_section = section_calls(calls, plan)
    assert len(calls) == plan.model_calls and len(by_section[0]) == len(by_section[1]) == plan.steps > 0
    for index, share in ((0, 0.25), (1, 0.75)):  # two sections: middles at 1/4 and 3/4 of the way to the end
        for call in by_section[index]:
            expected = 1.2 * ((1 - share) * start + share * end)
            torch.testing.assert_close(call["image_embeds"], expected, atol=1e-5, rtol=1e-5)


def test_linear_vision_schedule_moves_toward_the_next_keyframe(tiny_components, images):
    plan, calls, _ = run(
        tiny_components, init_image=images["start"], duration=1.6, keyframes={2: images["key"]},
        vision_schedule="linear",
    )  # fmt: skip
    start = siglip_of_uint8(tiny_components, fit_to_bucket(load_image(images["start"]), plan.width, plan.height))
    key = siglip_of_uint8(tiny_components, fit_to_bucket(load_image(images["key"]), plan.width, plan.height))
    by_section = section_calls(calls, plan)
    expected = {0: 0.75 * start + 0.25 * key, 1: 0.25 * start + 0.75 * key, 2: key, 3: key}
    assert len(calls) == plan.model_calls and all(len(by_section[i]) == plan.steps > 0 for i in range(4))
    for index, vision in expected.items():
        for call in by_section[index]:
            torch.testing.assert_close(call["image_embeds"], vision, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ single frame


def test_single_frame_plan_and_its_refusals(tmp_path):
    plan = make_plan(
        GenerateRequest(single_frame=True, init_image="a.png", reference_image="r.png", single_frame_post=False),
        (64, 64),
    )
    assert (plan.num_sections, plan.generated_frames, plan.output_frames, plan.generation_order) == (1, 1, 1, [0])
    assert plan.single_frame.controls == [("init_image", 0), ("reference_image", 10)]
    assert (plan.single_frame.target_index, plan.single_frame.post_index) == (9, None)
    assert plan.summary().startswith("1 image (single frame: target index 9, init_image at 0, reference_image at 10")
    assert plan.total_steps == plan.steps and not plan.start_frame_pass
    refused = [
        ({"single_frame": True}, "single_frame needs init_image"),
        ({"single_frame": True, "init_image": "a.png", "variant": "f1"}, "variant 'bidirectional' only"),
        ({"single_frame": True, "init_image": "a.png", "keyframes": {1: "k.png"}}, "keyframes do not apply"),
        ({"single_frame": True, "init_image": "a.png", "interpolate": 1}, "interpolate does not apply"),
        ({"single_frame": True, "init_image": "a.png", "reference_mask": "m.png"}, "reference_mask needs reference_"),
        ({"init_image": "a.png", "reference_image": "r.png"}, "reference_image is used only with single_frame"),
    ]
    for fields, message in refused:
        with pytest.raises(ValidationError, match=message):
            GenerateRequest(**fields)


def test_single_frame_plan_in_the_cli(tmp_path, capsys):
    start = pattern_image(tmp_path / "start.png", 128, 128)
    flags = ["plan", "--single-frame", "--init-image", str(start), "--target-index", "5", "--no-single-frame-post"]
    assert main([*flags, "--resolution", "128"]) == 0
    summary = capsys.readouterr().out.splitlines()[0]
    assert (
        summary
        == "1 image (single frame: target index 5, init_image at 0, no zero frame after the window), 128x128, PNG"
    )
    assert main([*flags[:-1], "--resolution", "128", "--latent-window-size", "3"]) == 0
    assert "init_image at 0, zero frame at 4)" in capsys.readouterr().out.splitlines()[0]


def rgba_reference(path, size: int = 128):
    """A picture whose top half is opaque and bottom half transparent."""
    pixels = np.asarray(Image.open(pattern_image(path, size, size, seed=7)).convert("RGB"))
    alpha = np.zeros((size, size), np.uint8)
    alpha[: size // 2] = 255
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(path)
    return path


def lanczos_grid(mask: np.ndarray, scale: int) -> torch.Tensor:
    """A bucket-sized mask [H, W] uint8 on the latent grid [1, 1, 1, h, w] in [0, 1] (PIL's Lanczos)."""
    height, width = mask.shape
    small = Image.fromarray(mask).resize((width // scale, height // scale), Image.LANCZOS)
    return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)[None, None, None]


def test_single_frame_render_writes_one_png_and_replays_exactly(runner, tiny_components, tmp_path):
    size = 128
    start = pattern_image(tmp_path / "start.png", size, size, seed=1)
    reference = rgba_reference(tmp_path / "reference.png", size)
    init_mask = np.zeros((size, size), np.uint8)
    init_mask[:, : size // 2] = 255  # the left half of the start image is kept
    Image.fromarray(init_mask).save(tmp_path / "mask.png")
    request = GenerateRequest(
        **{**FAST, "resolution": size, "steps": 2}, init_image=str(start), single_frame=True, target_index=5,
        single_frame_post=False, reference_image=str(reference), reference_index=12,
        init_mask=str(tmp_path / "mask.png"), filename="edited", cache="none",
    )  # fmt: skip
    components = runner.components_for(request, resolve_recipe("tiny", "bidirectional", runner.home))  # run keeps it
    with TransformerCalls(components.transformer) as calls:
        result = runner.run(request)
    out = runner.output_dir
    assert sorted(path.name for path in out.iterdir()) == ["edited.json", "edited.png"]
    image = Image.open(out / "edited.png")
    plan = result.plan
    assert (image.size, image.mode, result.frames) == ((plan.width, plan.height), "RGB", 1)

    # what the transformer saw: one frame at the target index, the two controls at 0 and 12, no post, zero slots
    assert len(calls.calls) == plan.model_calls == plan.steps
    generator = torch.Generator().manual_seed(plan.seed)
    start_latent = vae_encode(components, pixels_of(str(start), plan), generator)
    white = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    composited = np.asarray(Image.alpha_composite(white, Image.open(reference)).convert("RGB"))
    reference_latent = vae_encode(components, to_tensor(composited), generator)
    alpha = np.asarray(Image.open(reference))[..., 3]
    scale = components.spatial_scale
    for call in calls.calls:
        assert call["hidden_states"].shape[2] == 1 and call["indices_latents"].tolist() == [5]
        assert call["indices_latents_clean"].tolist() == [0, 12]
        assert call["indices_latents_history_2x"].tolist() == [2 + 3, 3 + 3]  # window 3
        assert call["indices_latents_history_4x"].tolist() == list(range(2 + 3 + 2, 2 + 3 + 2 + 16))
        assert call["latents_history_2x"].abs().max() == 0 and call["latents_history_4x"].abs().max() == 0
        clean = call["latents_clean"]
        torch.testing.assert_close(clean[:, :, :1], start_latent * lanczos_grid(init_mask, scale), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clean[:, :, 1:], reference_latent * lanczos_grid(alpha, scale), atol=1e-5, rtol=1e-5)
        assert clean[:, :, :1, :, -2:].abs().max() == 0 and clean[:, :, 1:, -2:].abs().max() == 0  # masked away
        siglip = siglip_of_uint8(components, fit_to_bucket(load_image(str(start)), plan.width, plan.height))
        torch.testing.assert_close(call["image_embeds"], siglip, atol=1e-5, rtol=1e-5)

    # the PNG carries the record, and the record's request makes the same image again
    record = GenerationRecord.read(out / "edited.png")
    assert record.plan == plan.summary() and record.request["single_frame"] is True
    replay = GenerateRequest(**{**record.request, "filename": "replayed"})
    runner.run(replay)
    assert np.array_equal(np.asarray(Image.open(out / "replayed.png")), np.asarray(image))


def test_single_frame_over_the_api_returns_the_png(tiny_model_dir, tmp_path):
    start = pattern_image(tmp_path / "start.png", 128, 128, seed=1)
    encoded = base64.b64encode(start.read_bytes()).decode()
    runner = Runner(device="cpu", output_dir=tmp_path / "out", home=tiny_home(tiny_model_dir, tmp_path / "home"))
    manager = JobManager(tmp_path / "data", runner)
    body = {**FAST, "resolution": 128, "single_frame": True, "init_image": encoded, "target_index": 4}
    with TestClient(create_app(manager, tmp_path / "out")) as client:
        refused = client.post(PREFIX, json={**body, "reference_image": str(start)})  # server paths are refused
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "reference_image"
        plan = client.post(f"{PREFIX}/plan", json=body).json()["plan"]
        assert plan["single_frame"]["target_index"] == 4 and plan["output_frames"] == 1
        response = client.post(PREFIX, json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["filename"].endswith(f"-{result['id'][:8]}.png")  # the one naming rule, with the PNG suffix
        download = client.get(result["url"])
    assert download.headers["content-type"] == "image/png"
    (tmp_path / "got.png").write_bytes(download.content)
    assert Image.open(tmp_path / "got.png").size == (plan["width"], plan["height"]) == (128, 128)
    assert GenerationRecord.read(tmp_path / "got.png").request["target_index"] == 4
