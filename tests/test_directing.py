"""Directing the video (issue 15) on the tiny self-test model: the SigLIP input, blended prompt changes, vision
schedules, latent paddings and single-frame inference, checked on what the transformer receives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import FAST, MemorySink, TransformerCalls, pattern_image
from pydantic import ValidationError

from framepack.encoders import encode_vision
from framepack.generate import generate
from framepack.images import fit_to_bucket, load_image, to_tensor
from framepack.plan import PlanError, make_plan
from framepack.planning import plan_request
from framepack.request import GenerateRequest

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
