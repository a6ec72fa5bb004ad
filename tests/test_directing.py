"""Directing the video (issue 15) on the tiny self-test model: the SigLIP input, blended prompt changes, vision
schedules, latent paddings and single-frame inference, checked on what the transformer receives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import pattern_image

from framepack.encoders import encode_vision
from framepack.images import fit_to_bucket, load_image, to_tensor


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    names = ("start", "end", "key", "reference")
    return {name: str(pattern_image(folder / f"{name}.png", 160, 128, seed)) for seed, name in enumerate(names)}


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
