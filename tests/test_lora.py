"""LoRAs: prompt tags, the LoRA folder, the three key formats, and exact unloading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fixed_transformer_inputs, read_raw_frames, transformer_output
from safetensors.torch import save_file

from framepack.errors import FieldError
from framepack.models.lora import (
    LoraRef,
    applied_loras,
    apply_loras,
    convert_lora,
    detect_format,
    find_lora,
    parse_lora_tags,
    remove_loras,
)

RANK = 2


@pytest.fixture
def transformer(tiny_model_dir: Path):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    model = HunyuanVideoFramepackTransformer3DModel.from_pretrained(
        tiny_model_dir / "transformer", torch_dtype=torch.float32
    )
    return model.eval()


def snapshot(transformer) -> dict:
    return {key: value.detach().clone() for key, value in transformer.state_dict().items()}


def lora_pair(module: torch.nn.Linear, seed: int, out_features: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, module.in_features, generator=generator) * 0.5
    up = torch.randn(out_features or module.out_features, RANK, generator=generator) * 0.5
    return down, up


def diffusers_lora(transformer) -> dict:
    state = {}
    for seed, name in enumerate(
        ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.proj_out"]
    ):
        down, up = lora_pair(transformer.get_submodule(name), seed)
        state[f"transformer.{name}.lora_A.weight"] = down
        state[f"transformer.{name}.lora_B.weight"] = up
    return state


def hidden(transformer) -> int:
    return transformer.config.num_attention_heads * transformer.config.attention_head_dim


def original_lora(transformer) -> dict:
    h = hidden(transformer)
    block = transformer.transformer_blocks[0]
    single = transformer.single_transformer_blocks[0]
    down, up = lora_pair(block.attn.to_q, 10, 3 * h)
    state = {
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": down,
        "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": up,
    }
    down, up = lora_pair(block.ff.net[0].proj, 11)
    state |= {
        "diffusion_model.double_blocks.0.img_mlp.fc1.lora_A.weight": down,
        "diffusion_model.double_blocks.0.img_mlp.fc1.lora_B.weight": up,
    }
    mlp_out = single.proj_mlp.out_features
    down, up = lora_pair(single.attn.to_q, 12, 3 * h + mlp_out)
    state |= {
        "diffusion_model.single_blocks.0.linear1.lora_A.weight": down,
        "diffusion_model.single_blocks.0.linear1.lora_B.weight": up,
    }
    return state


def kohya_lora(transformer) -> dict:
    h = hidden(transformer)
    block = transformer.transformer_blocks[0]
    single = transformer.single_transformer_blocks[0]
    state = {}
    for seed, (name, module, out) in enumerate(
        [
            ("double_blocks_0_img_attn_qkv", block.attn.to_q, 3 * h),
            ("double_blocks_0_txt_mlp_fc2", block.ff_context.net[2], None),
            ("single_blocks_0_linear2", single.proj_out, None),
        ]
    ):
        down, up = lora_pair(module, 20 + seed, out)
        state[f"lora_unet_{name}.lora_down.weight"] = down
        state[f"lora_unet_{name}.lora_up.weight"] = up
        state[f"lora_unet_{name}.alpha"] = torch.tensor(float(RANK) / 2)
    return state


FORMATS = {"diffusers": diffusers_lora, "hunyuan": original_lora, "kohya": kohya_lora}


@pytest.mark.parametrize("kind", list(FORMATS))
def test_each_format_changes_output_and_unloads_exactly(kind, transformer, tmp_path):
    state = FORMATS[kind](transformer)
    assert detect_format(state) == kind
    save_file(state, str(tmp_path / f"{kind}.safetensors"))
    inputs = fixed_transformer_inputs(transformer)
    base, before = transformer_output(transformer, inputs), snapshot(transformer)

    names = apply_loras(transformer, [LoraRef(kind, 1.0)], tmp_path)
    assert names and applied_loras(transformer)
    changed = transformer_output(transformer, inputs)
    assert (changed - base).abs().max() > 1e-4

    remove_loras(transformer)
    after = snapshot(transformer)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[key], before[key]) for key in before)
    assert torch.equal(transformer_output(transformer, inputs), base)
    assert applied_loras(transformer) == ()


def test_kohya_alpha_is_folded(transformer):
    state = kohya_lora(transformer)
    converted, unknown = convert_lora(state, transformer)
    assert not unknown
    up = state["lora_unet_double_blocks_0_txt_mlp_fc2.lora_up.weight"]
    assert torch.allclose(converted["transformer_blocks.0.ff_context.net.2.lora_B.weight"], up * 0.5)
    h = hidden(transformer)
    qkv_up = state["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    assert torch.allclose(converted["transformer_blocks.0.attn.to_k.lora_B.weight"], qkv_up[h : 2 * h] * 0.5)


def test_weights_scale_and_several_at_once(transformer, tmp_path):
    save_file(diffusers_lora(transformer), str(tmp_path / "a.safetensors"))
    (tmp_path / "sub").mkdir()
    save_file(kohya_lora(transformer), str(tmp_path / "sub" / "b.safetensors"))
    inputs = fixed_transformer_inputs(transformer)
    base = transformer_output(transformer, inputs)

    apply_loras(transformer, [LoraRef("a", 0.0)], tmp_path)
    assert (transformer_output(transformer, inputs) - base).abs().max() < 1e-6
    apply_loras(transformer, [LoraRef("a", 0.5)], tmp_path)
    half = (transformer_output(transformer, inputs) - base).abs().max()
    apply_loras(transformer, [LoraRef("a", 1.0)], tmp_path)
    full = (transformer_output(transformer, inputs) - base).abs().max()
    assert 1e-4 < half < full
    apply_loras(transformer, [LoraRef("a", 1.0), LoraRef("sub/b", -0.7)], tmp_path)
    both = transformer_output(transformer, inputs)
    assert len(applied_loras(transformer)) == 2
    assert (both - base).abs().max() > 1e-4
    remove_loras(transformer)
    assert torch.equal(transformer_output(transformer, inputs), base)


def test_unknown_keys_are_reported(transformer, tmp_path):
    state = diffusers_lora(transformer)
    state["transformer.no_such_block.0.attn.to_q.lora_A.weight"] = torch.zeros(RANK, 4)
    state["lora_unet_mystery_layer.lora_down.weight"] = torch.zeros(RANK, 4)
    save_file(state, str(tmp_path / "odd.safetensors"))
    inputs = fixed_transformer_inputs(transformer)
    base, before = transformer_output(transformer, inputs), snapshot(transformer)
    with pytest.raises(FieldError, match="no_such_block|mystery"):
        apply_loras(transformer, [LoraRef("odd")], tmp_path)
    assert applied_loras(transformer) == ()
    assert torch.equal(transformer_output(transformer, inputs), base)
    assert snapshot(transformer).keys() == before.keys()

    del state["lora_unet_mystery_layer.lora_down.weight"]
    known, unknown = convert_lora(state, transformer, strict=False)
    assert unknown == ["no_such_block.0.attn.to_q.lora_A.weight"]
    assert len(known) == 6


def test_parse_lora_tags():
    warnings: list[str] = []
    text, refs = parse_lora_tags(
        "a cat <lora:style:0.8> running, <lora:motion> <lora:neg:-1.5> fast <lora:d:.25>", warnings
    )
    assert text == "a cat running, fast"
    assert refs == [LoraRef("style", 0.8), LoraRef("motion", 1.0), LoraRef("neg", -1.5), LoraRef("d", 0.25)]
    assert warnings == []
    text, refs = parse_lora_tags("<lora:x:0.5> hello <lora:x:0.9>", warnings)
    assert text == "hello" and refs == [LoraRef("x", 0.9)]
    assert len(warnings) == 1 and "'x'" in warnings[0]
    assert parse_lora_tags("no tags here") == ("no tags here", [])
    assert parse_lora_tags("[2s] <lora:sub/y:1> walks\n[4s] runs")[0] == "[2s] walks\n[4s] runs"


def test_plan_strips_tags_and_lists_loras():
    from framepack.plan import make_plan
    from framepack.request import GenerateRequest

    request = GenerateRequest(
        prompt="a cat <lora:a:0.8>",
        section_prompts="sits <lora:b>\nruns <lora:a:0.5>",
        duration=2.0,
        latent_window_size=2,
    )
    plan = make_plan(request)
    assert plan.loras == [("a", 0.5), ("b", 1.0)]
    assert all("<lora" not in section.prompt for section in plan.sections)
    assert plan.sections[0].prompt == "a cat, sits"
    assert any("'a'" in warning for warning in plan.warnings)


def test_a_lora_tag_in_the_negative_prompt_is_refused_by_name():
    from framepack.plan import PlanError, make_plan
    from framepack.request import GenerateRequest

    with pytest.raises(PlanError) as error:
        make_plan(GenerateRequest(prompt="a cat", negative_prompt="blurry <lora:b:0.5>", cfg_scale=3.0))
    assert error.value.field == "negative_prompt" and "put it in the prompt" in str(error.value)
    assert make_plan(GenerateRequest(prompt="a cat", negative_prompt="blurry, <lorax>", cfg_scale=3.0)).loras == []


def test_find_lora(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.safetensors", "b.safetensors", "sub/c.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / name))
    (tmp_path.parent / "outside.safetensors").write_bytes(b"")
    assert find_lora("a", tmp_path) == (tmp_path / "a.safetensors").resolve()
    assert find_lora("b.safetensors", tmp_path) == (tmp_path / "b.safetensors").resolve()
    assert find_lora("sub/c", tmp_path) == (tmp_path / "sub" / "c.safetensors").resolve()
    with pytest.raises(FieldError, match="outside"):
        find_lora("../outside", tmp_path)
    with pytest.raises(FieldError) as error:
        find_lora("missing", tmp_path)
    assert error.value.field == "prompt"
    assert "LoRA 'missing' not found" in str(error.value) and "available: a, b, sub/c" in str(error.value)


def test_runner_applies_and_unloads_between_jobs(runner, tmp_path):
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    from framepack.request import GenerateRequest

    runner.lora_dir = tmp_path / "loras"
    runner.lora_dir.mkdir()
    folder = Path(runner.home) / "tiny-self-test" / "transformer"
    reference = HunyuanVideoFramepackTransformer3DModel.from_pretrained(folder, torch_dtype=torch.float32)
    save_file(diffusers_lora(reference), str(runner.lora_dir / "style.safetensors"))
    del reference

    def frames(prompt: str, name: str) -> np.ndarray:
        request = GenerateRequest(
            model="tiny",
            prompt=prompt,
            duration=0.5,
            fps=8,
            latent_window_size=2,
            steps=2,
            resolution=128,
            seed=7,
            codec="none",
            save_raw=True,
            filename=name,
        )
        result = runner.run(request)
        return read_raw_frames(next(path for path in result.outputs if path.endswith(".safetensors")))

    plain = frames("a cat", "plain")
    styled = frames("a cat <lora:style:0.8>", "styled")
    assert applied_loras(runner._components.transformer)
    after = frames("a cat", "after")
    assert applied_loras(runner._components.transformer) == ()
    assert not np.array_equal(plain, styled)
    assert np.array_equal(plain, after)
