"""Our section loop against diffusers' HunyuanVideoFramepackPipeline on the tiny model.

With the Euler sampler, one prompt, every strength at 1 and the end image's vision weight 0 (the pipeline
computes the end image's SigLIP embedding but never uses it), both must produce the same frames from the same
seed: I2V for both sampling types and FLF2V. Tolerance: at most 1 level of 255 per pixel channel (rounding of
float differences of order 1e-6), and a mean difference under 0.05 levels.
"""

from __future__ import annotations

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoFramepackPipeline
from helpers import MemorySink, pattern_image
from PIL import Image

from framepack.encoders import PROMPT_TEMPLATE, template_crop_start
from framepack.generate import generate
from framepack.request import GenerateRequest
from framepack.runner import plan_request

WINDOW, STEPS, SECTIONS, SEED = 3, 3, 3, 1234
PROMPT = "a paper boat drifts across a pond"


@pytest.fixture(scope="module")
def pipeline(tiny_components):
    c = tiny_components
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, base_shift=0.5, max_shift=1.15
    )
    return HunyuanVideoFramepackPipeline(
        text_encoder=c.text_encoder,
        tokenizer=c.tokenizer,
        transformer=c.transformer,
        vae=c.vae,
        scheduler=scheduler,
        text_encoder_2=c.text_encoder_2,
        tokenizer_2=c.tokenizer_2,
        image_encoder=c.image_encoder,
        feature_extractor=c.feature_extractor,
    )


@pytest.mark.parametrize(
    "variant,sampling_type,with_end,sections",
    [
        ("bidirectional", "inverted_anti_drifting", False, SECTIONS),
        ("f1", "vanilla", False, SECTIONS),
        ("bidirectional", "inverted_anti_drifting", True, SECTIONS),
        # 8 sections: paddings [3, 2, 2, 2, 2, 2, 1, 0] and histories longer than the 19 history slots
        ("bidirectional", "inverted_anti_drifting", True, 8),
        ("f1", "vanilla", False, 8),
    ],
    ids=["i2v-bidirectional", "i2v-f1", "flf2v-bidirectional", "flf2v-bidirectional-8", "i2v-f1-8"],
)
def test_frames_match_the_diffusers_pipeline(
    tiny_components, pipeline, tmp_path, variant, sampling_type, with_end, sections
):
    request = GenerateRequest(
        prompt=PROMPT,
        init_image=str(pattern_image(tmp_path / "start.png", 128, 128, seed=1)),
        end_image=str(pattern_image(tmp_path / "end.png", 128, 128, seed=2)) if with_end else None,
        resolution=128,
        latent_window_size=WINDOW,
        steps=STEPS,
        duration=sections * 4 * WINDOW / 30,
        fps=30,
        sampler="euler",
        seed=SEED,
        variant=variant,
        end_vision_weight=0.0,
    )
    plan = plan_request(request)
    assert (plan.width, plan.height, plan.num_sections) == (128, 128, sections)
    ours = MemorySink()
    generate(tiny_components, request, plan, [ours])

    import torch

    crop = template_crop_start(tiny_components.tokenizer)
    reference = pipeline(
        image=Image.open(request.init_image),
        last_image=Image.open(request.end_image) if with_end else None,
        prompt=PROMPT,
        height=plan.height,
        width=plan.width,
        num_frames=sections * ((WINDOW - 1) * 4 + 1),
        latent_window_size=WINDOW,
        num_inference_steps=STEPS,
        guidance_scale=request.guidance,
        generator=torch.Generator().manual_seed(SEED),
        sampling_type=sampling_type,
        prompt_template={"template": PROMPT_TEMPLATE, "crop_start": crop},
        output_type="np",
    ).frames[0]
    expected = np.round(np.clip(reference * 255.0, 0, 255))  # the same rounding our uint8 frames had
    assert ours.frames.shape == expected.shape == (plan.generated_frames, 128, 128, 3)
    difference = np.abs(ours.frames.astype(np.float64) - expected)
    print(
        f"parity {variant} end={with_end} sections={sections}: max {difference.max():.0f} mean "
        f"{difference.mean():.5f} levels"
    )
    assert difference.max() <= 1.0, f"max difference {difference.max():.3f} levels of 255 (tolerance 1)"
    assert difference.mean() < 0.05, f"mean difference {difference.mean():.4f} levels (tolerance 0.05)"
    assert expected.std() > 1.0  # a real comparison: the frames are not flat
