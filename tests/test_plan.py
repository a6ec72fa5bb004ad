"""The pure planner: buckets, section and frame math, section prompts, keyframes."""

import pytest
from pydantic import ValidationError

from framepack.plan import (
    BUCKETS_640,
    PlanError,
    bidirectional_paddings,
    bucket_size,
    make_plan,
    parse_section_prompts,
)
from framepack.request import GenerateRequest


def plan_for(**fields):
    image = fields.pop("image_size", None)
    return make_plan(GenerateRequest(**fields), image)


@pytest.mark.parametrize("bucket", BUCKETS_640)
def test_exact_aspect_picks_its_own_bucket(bucket):
    height, width = bucket
    assert bucket_size(height * 3, width * 3, 640) == bucket


def test_bucket_scales_to_resolution_in_multiples_of_16():
    for resolution in (240, 320, 416, 480, 512, 720, 960, 1024):
        for aspect in ((1, 1), (9, 16), (16, 9), (3, 4), (21, 9)):
            height, width = bucket_size(aspect[1], aspect[0], resolution)
            assert height % 16 == 0 and width % 16 == 0
            base = bucket_size(aspect[1], aspect[0], 640)
            assert abs(height - base[0] * resolution / 640) <= 8 and abs(width - base[1] * resolution / 640) <= 8
    assert bucket_size(1080, 1920, 640) == (480, 832)  # 16:9 is nearest to 832x480
    assert bucket_size(1080, 1920, 320) == (240, 416)
    assert bucket_size(1000, 3000, 640) == (416, 960)  # wider than any bucket -> the widest


def test_section_count_matches_original_formula():
    # the original: round(seconds * 30 / (window * 4)), at least 1
    for duration in (0.5, 1, 1.2, 2.5, 5, 10, 60):
        plan = plan_for(duration=duration)
        assert plan.num_sections == max(1, round(duration * 30 / 36))
        assert plan.generated_frames == 36 * plan.num_sections + 1
        assert plan.output_frames == plan.generated_frames


def test_interpolation_lowers_generated_frames_but_keeps_fps_and_duration():
    plain = plan_for(duration=10, fps=30)
    interpolated = plan_for(duration=10, fps=30, interpolate=3)
    assert interpolated.fps == 30
    assert interpolated.generated_fps == 7.5
    assert interpolated.num_sections == round(10 * 7.5 / 36)
    assert interpolated.output_frames == (interpolated.generated_frames - 1) * 4 + 1
    assert abs(interpolated.duration - 10) < 1.5 and abs(plain.duration - 10) < 1.5


def test_paddings_of_the_original():
    assert bidirectional_paddings(1) == [0]
    assert bidirectional_paddings(4) == [3, 2, 1, 0]
    assert bidirectional_paddings(5) == [3, 2, 2, 1, 0]
    assert bidirectional_paddings(7) == [3, 2, 2, 2, 2, 1, 0]


def test_generation_order_and_paddings_per_variant():
    bi = plan_for(duration=6)
    assert bi.num_sections == 5
    assert bi.generation_order == [4, 3, 2, 1, 0]
    assert [bi.sections[i].latent_padding for i in bi.generation_order] == [3, 2, 2, 1, 0]
    f1 = plan_for(duration=6, variant="f1")
    assert f1.generation_order == [0, 1, 2, 3, 4]
    assert all(section.latent_padding == 0 for section in f1.sections)


def test_section_frame_ranges_tile_the_video():
    plan = plan_for(duration=5, latent_window_size=7)
    assert plan.sections[0].first_frame == 0
    for before, after in zip(plan.sections, plan.sections[1:]):
        assert before.end_frame == after.first_frame
    assert plan.sections[-1].end_frame == plan.generated_frames


def test_modes_from_images():
    assert plan_for().mode == "t2v" and plan_for().start_frame_pass
    assert plan_for(init_image="a.png", image_size=(640, 480)).mode == "i2v"
    flf = plan_for(init_image="a.png", end_image="b.png", image_size=(640, 480))
    assert flf.mode == "flf2v" and not flf.start_frame_pass


def test_image_aspect_and_explicit_aspect():
    landscape = plan_for(init_image="a.png", image_size=(1920, 1080))
    assert (landscape.width, landscape.height) == (832, 480)
    portrait = plan_for(init_image="a.png", image_size=(1920, 1080), aspect_ratio="9:16")
    assert portrait.width < portrait.height
    t2v = plan_for(aspect_ratio="21:9")
    assert (t2v.width, t2v.height) == (960, 416)


def test_request_rejects_bad_combinations_with_field_names():
    with pytest.raises(ValidationError, match="end_image needs init_image"):
        GenerateRequest(end_image="b.png")
    with pytest.raises(ValidationError, match="bidirectional"):
        GenerateRequest(init_image="a.png", end_image="b.png", variant="f1")
    with pytest.raises(ValidationError, match="aspect_ratio"):
        GenerateRequest(aspect_ratio="wide")
    with pytest.raises(ValidationError, match="duration"):
        GenerateRequest(duration=-1)
    with pytest.raises(ValidationError, match="steps"):
        GenerateRequest(steps=0)
    with pytest.raises(ValidationError, match="variant"):
        GenerateRequest(variant="reverse")
    with pytest.raises(ValidationError, match="filename"):
        GenerateRequest(filename="../evil")


def test_section_prompts_stretch_evenly():
    plan = plan_for(prompt="astronaut on the moon", section_prompts="walking\njumping", duration=4.8)
    assert plan.num_sections == 4
    assert [s.prompt_line for s in plan.sections] == [0, 0, 1, 1]
    assert plan.sections[0].prompt == "astronaut on the moon, walking"
    assert plan.sections[3].prompt == "astronaut on the moon, jumping"
    three = plan_for(section_prompts="a\nb\nc", duration=4.8)
    assert [s.prompt_line for s in three.sections] == [0, 0, 1, 2]


def test_section_prompts_never_split_on_commas():
    plan = plan_for(prompt="cat", section_prompts="walks, slowly, to the left\nsits down", duration=2.4)
    assert [s.prompt for s in plan.sections] == ["cat, walks, slowly, to the left", "cat, sits down"]


def test_more_lines_than_sections_are_sampled_evenly_and_reported():
    plan = plan_for(section_prompts="a\nb\nc\nd\ne", duration=2.4)
    assert plan.num_sections == 2
    assert [s.prompt_line for s in plan.sections] == [0, 2]
    assert plan.unused_prompt_lines == [1, 3, 4]
    assert any("unused lines 2, 4, 5" in warning for warning in plan.warnings)


def test_timestamped_prompts_map_by_section_middle():
    plan = plan_for(prompt="x", section_prompts="[0s] walking\n[2.5s] jumping", duration=4.8)
    # sections of 1.2 s: middles 0.6, 1.8, 3.0, 4.2
    assert [s.prompt for s in plan.sections] == ["x, walking", "x, walking", "x, jumping", "x, jumping"]
    late = plan_for(section_prompts="[1:00] far\n[0:01.5] soon", duration=4.8)
    assert [s.prompt for s in late.sections] == ["soon", "soon", "soon", "soon"]
    assert late.unused_prompt_lines == [1]


def test_mixed_timestamp_forms_are_refused():
    with pytest.raises(PlanError, match="section_prompts"):
        parse_section_prompts("[0s] a\nplain")
    with pytest.raises(PlanError, match="same timestamp"):
        parse_section_prompts("[1s] a\n[1] b")


def test_keyframes_cascade_forward_and_are_bounded():
    plan = plan_for(init_image="a.png", image_size=(512, 512), keyframes={1: "k1.png", 3: "k3.png"}, duration=6)
    assert [s.keyframe for s in plan.sections] == [None, 1, 1, 3, 3]
    with pytest.raises(PlanError, match="keyframes: section 9 does not exist; allowed 0..4"):
        plan_for(keyframes={9: "k.png"}, duration=6)


def test_section_count_has_an_upper_bound():
    assert plan_for(duration=600, fps=30).num_sections == 500
    with pytest.raises(PlanError, match="sections exceed the limit of 1000"):
        plan_for(duration=600, fps=120, latent_window_size=1)


def test_random_seed_is_resolved_and_recorded():
    plan = plan_for(seed=-1)
    assert 0 <= plan.seed < 2**32
    assert plan_for(seed=7).seed == 7


def test_model_calls_count_cfg_and_start_frame_pass():
    assert plan_for(steps=10, duration=2.4).model_calls == 10 * (2 + 1)
    assert plan_for(steps=10, duration=2.4, cfg_scale=2.0, negative_prompt="blur").model_calls == 20 * 3
    i2v = plan_for(steps=10, duration=2.4, init_image="a.png", image_size=(64, 64))
    assert i2v.model_calls == 20


def test_summary_is_the_plan():
    plan = plan_for(duration=2.4, variant="f1")
    assert plan.summary().startswith(f"{plan.output_frames} frames")
    assert f"in {plan.num_sections} sections, {plan.width}x{plan.height}" in plan.summary()
    assert "generation order 0 -> 1" in plan.summary()
