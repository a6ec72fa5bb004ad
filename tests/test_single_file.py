"""The transformer from one .safetensors file (framepack/models/single_file.py), written from the self-test model.

- bf16/float32 files (diffusers naming, with or without a ComfyUI prefix) load equal to the folder load: every
  tensor, and the transformer's output, bit for bit; a render through the Runner gives the same frames.
- fp8 files (Linear weights in float8_e4m3fn, norms and biases not, as the community's file): the Linear layers
  keep float8 weights and upcast them per call. Their output equals, bit for bit, the folder model whose same
  weights were rounded through float8_e4m3fn; against the unrounded float32 model the relative L2 error of one
  call is 2.4% on this tiny random model (tolerance 5%): unscaled e4m3 keeps 3 mantissa bits, and the tiny model's
  small weights sit near its subnormal range. A render from the fp8 file differs from the folder's by 0.71 levels
  of 255 on average (tolerance 2.5), 9 at most.
- RAM: `benches/single_file_memory.py` in small size: loading adds about 1.06x the model's bytes to the peak RSS
  (tolerance 1.3x), the fp8 file about 1.1x, while load_file + load_state_dict adds 2.1x (so the measurement sees
  a second copy when there is one).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FAST, fixed_transformer_inputs, read_raw_frames, transformer_output
from safetensors.torch import save_file

from framepack.models.loader import ModelUnavailableError, check_available, check_component, load_component
from framepack.models.lora import LoraRef, applied_loras, apply_loras, remove_loras
from framepack.models.recipe import (
    ComponentSource,
    RecipeError,
    recipe_from_json,
    recipe_from_text,
    recipe_to_text,
    tiny_recipe,
)
from framepack.models.single_file import (
    Float8StoredLinear,
    SingleFileError,
    float8_layers,
    infer_config,
    load_transformer_file,
    read_header,
    write_transformer_file,
)
from framepack.request import GenerateRequest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def folder_transformer(tiny_model_dir: Path):
    return load_component("transformer", tiny_recipe(tiny_model_dir).transformer)


def file_source(path: Path, dtype: str = "float32", quantize: str | None = None) -> ComponentSource:
    return ComponentSource(str(path), None, dtype, quantize)


def public_config(model) -> dict:
    """The model's config without diffusers' bookkeeping (_class_name, _name_or_path...)."""
    return {key: value for key, value in dict(model.config).items() if not key.startswith("_")}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


# ---------------------------------------------------------------------------------------------- recipes


def test_recipe_lines_name_single_files_locally_and_in_hub_repos(tmp_path: Path) -> None:
    recipe = recipe_from_text(
        "transformer: Kijai/HunyuanVideo_comfy/FramePackI2V_HY_fp8_e4m3fn.safetensors dtype=bfloat16\n"
    )
    source = recipe.transformer
    assert (source.source, source.subfolder, source.dtype) == (
        "Kijai/HunyuanVideo_comfy",
        "FramePackI2V_HY_fp8_e4m3fn.safetensors",
        "bfloat16",
    )
    assert source.is_single_file and not source.is_local
    assert source.describe() == "file FramePackI2V_HY_fp8_e4m3fn.safetensors of hub repo Kijai/HunyuanVideo_comfy"
    assert recipe_from_text(recipe_to_text(recipe)) == recipe

    local = recipe_from_text(f"transformer: {tmp_path}/my model.safetensors\n").transformer
    assert local.is_single_file and local.is_local and local.source == f"{tmp_path}/my model.safetensors"
    assert local.describe() == f"local file {tmp_path}/my model.safetensors"
    assert not recipe_from_text("transformer: lllyasviel/FramePackI2V_HY\n").transformer.is_single_file

    with pytest.raises(RecipeError, match=r"recipe line 1 \(vae\): a single .safetensors file is supported for "):
        recipe_from_text("vae: /models/vae.safetensors\n")
    with pytest.raises(RecipeError, match="owner/name/path/file.safetensors"):
        recipe_from_json('{"transformer": {"source": "Kijai/model.safetensors"}}')


def test_missing_file_and_wrong_files_are_reported_before_loading(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = tiny_recipe(tiny_model_dir)
    missing = recipe.replace(transformer=file_source(tmp_path / "absent.safetensors"))
    errors = check_available(missing)
    assert [error.component for error in errors] == ["transformer"]
    assert "the file does not exist" in str(errors[0]) and str(tmp_path / "absent.safetensors") in str(errors[0])

    (tmp_path / "junk.safetensors").write_bytes(b"\x0a\x00\x00\x00\x00\x00\x00\x00{not json}")
    error = check_component("transformer", file_source(tmp_path / "junk.safetensors"))
    assert "is not a safetensors file: its header is not JSON" in str(error)

    save_file({"double_blocks.0.img_attn_qkv.weight": torch.zeros(3, 2)}, str(tmp_path / "hunyuan.safetensors"))
    error = check_component("transformer", file_source(tmp_path / "hunyuan.safetensors"))
    assert "original HunyuanVideo key names" in str(error) and "none of FramePack's layers" in str(error)

    save_file({"encoder.conv_in.weight": torch.zeros(3, 2)}, str(tmp_path / "vae.safetensors"))
    error = check_component("transformer", file_source(tmp_path / "vae.safetensors"))
    assert "is not a FramePack transformer: it lacks x_embedder.proj.weight" in str(error)
    with pytest.raises(ModelUnavailableError, match="not a FramePack transformer"):
        load_component("transformer", file_source(tmp_path / "vae.safetensors"))


def test_a_truncated_file_is_refused(tmp_path: Path, folder_transformer) -> None:
    path = write_transformer_file(folder_transformer, tmp_path / "whole.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(SingleFileError, match="truncated"):
        read_header(tmp_path / "cut.safetensors")
    error = check_component("transformer", file_source(tmp_path / "cut.safetensors"))
    assert isinstance(error, ModelUnavailableError) and "download it again" in str(error)


# ---------------------------------------------------------------------------------------------- equal loads


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."], ids=["diffusers-names", "comfyui-prefix"])
def test_a_single_file_loads_equal_to_the_folder(tmp_path: Path, folder_transformer, prefix: str) -> None:
    path = write_transformer_file(folder_transformer, tmp_path / "transformer.safetensors", prefix=prefix)
    assert check_component("transformer", file_source(path)) is None
    loaded = load_component("transformer", file_source(path))

    expected, state = folder_transformer.state_dict(), loaded.state_dict()
    assert state.keys() == expected.keys()
    assert all(state[key].dtype == expected[key].dtype and torch.equal(state[key], expected[key]) for key in expected)
    assert public_config(loaded) == public_config(folder_transformer)
    assert loaded.dtype == torch.float32 and not loaded.training
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    inputs = fixed_transformer_inputs(loaded)
    assert torch.equal(transformer_output(loaded, inputs), transformer_output(folder_transformer, inputs))


def test_a_bfloat16_file_loads_equal_to_the_folder_in_bfloat16(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = load_component(
        "transformer", dataclasses.replace(tiny_recipe(tiny_model_dir).transformer, dtype="bfloat16")
    )
    path = write_transformer_file(folder, tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    assert {entry.dtype for entry in read_header(path).tensors.values()} == {torch.bfloat16}
    loaded = load_component("transformer", file_source(path, "bfloat16"))
    expected = folder.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())
    inputs = fixed_transformer_inputs(loaded, torch.bfloat16)
    assert torch.equal(transformer_output(loaded, inputs), transformer_output(folder, inputs))
    # the same file in float32: every tensor upcast as it is read
    upcast = load_component("transformer", file_source(path, "float32"))
    assert upcast.dtype == torch.float32
    assert torch.equal(
        upcast.transformer_blocks[0].attn.to_q.weight, folder.transformer_blocks[0].attn.to_q.weight.float()
    )


def test_the_config_of_a_file_without_metadata_is_inferred_from_its_shapes(tmp_path: Path) -> None:
    """Sizes of the real model family (head size 128) with few small layers; no config in the file."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    torch.manual_seed(3)
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=16,
        out_channels=16,
        num_attention_heads=1,
        attention_head_dim=128,
        num_layers=2,
        num_single_layers=3,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        text_embed_dim=48,
        pooled_projection_dim=40,
        has_image_proj=True,
        image_proj_dim=32,
        has_clean_x_embedder=True,
    ).eval()
    path = write_transformer_file(model, tmp_path / "bare.safetensors", with_config=False)
    header = read_header(path)
    assert "config" not in header.metadata
    config = infer_config(header)
    wanted = public_config(model)
    assert {**config, "rope_axes_dim": list(config["rope_axes_dim"])} == {
        **wanted,
        "rope_axes_dim": list(wanted["rope_axes_dim"]),
    }
    loaded = load_transformer_file(path, torch.float32)
    inputs = fixed_transformer_inputs(loaded)
    assert torch.equal(transformer_output(loaded, inputs), transformer_output(model, inputs))


def test_a_head_size_other_than_the_published_needs_the_config_in_the_file(tmp_path: Path, folder_transformer) -> None:
    path = write_transformer_file(folder_transformer, tmp_path / "bare.safetensors", with_config=False)
    with pytest.raises(SingleFileError, match=r"attention head size 8 is not the published model's \(128\)"):
        load_transformer_file(path, torch.float32)


# ---------------------------------------------------------------------------------------------- float8 files


def rounded_through_float8(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """The folder model whose tensors stored in float8 in `path` are rounded through float8_e4m3fn."""
    import copy

    rounded = copy.deepcopy(model)
    stored = set(read_header(path).float8_tensors)
    with torch.no_grad():
        for name, parameter in rounded.named_parameters():
            if name in stored:
                parameter.copy_(parameter.to(torch.float8_e4m3fn).to(parameter.dtype))
    return rounded


def test_an_fp8_file_keeps_linear_weights_in_float8_and_computes_in_the_model_dtype(tmp_path: Path, folder_transformer):
    path = write_transformer_file(folder_transformer, tmp_path / "fp8.safetensors", float8=True)
    header = read_header(path)
    stored = set(header.float8_tensors)
    assert "transformer_blocks.0.attn.to_q.weight" in stored and "x_embedder.proj.weight" in stored
    assert not any("norm" in name or "bias" in name for name in stored)

    loaded = load_component("transformer", file_source(path))
    layers = set(float8_layers(loaded))
    linear_weights = {
        name.removesuffix(".weight")
        for name in stored
        if type(folder_transformer.get_submodule(name.removesuffix(".weight"))) is torch.nn.Linear
    }
    assert layers == linear_weights and len(layers) > 25
    for name in layers:
        layer = loaded.get_submodule(name)
        assert layer.weight.dtype == torch.float8_e4m3fn and layer.compute_dtype == torch.float32
        assert layer.bias is None or layer.bias.dtype == torch.float32
    assert loaded.x_embedder.proj.weight.dtype == torch.float32  # float8 convolutions are upcast as they are read
    assert loaded.dtype == torch.float32

    inputs = fixed_transformer_inputs(loaded)
    output = transformer_output(loaded, inputs)
    assert torch.equal(output, transformer_output(rounded_through_float8(folder_transformer, path), inputs))
    error = relative_error(output, transformer_output(folder_transformer, inputs))
    print(f"fp8 file: relative L2 error of one call against float32 {error:.4f} (tolerance 0.05)")
    assert 1e-4 < error < 0.05


def test_quantize_on_an_fp8_file_is_refused_and_loras_apply_in_the_compute_dtype(tmp_path: Path, folder_transformer):
    path = write_transformer_file(folder_transformer, tmp_path / "fp8.safetensors", float8=True)
    error = check_component("transformer", file_source(path, quantize="int8"))
    assert isinstance(error, ModelUnavailableError)
    assert "stores" in str(error) and "weights in float8 already" in str(error) and "remove quantize=" in str(error)
    with pytest.raises(ModelUnavailableError, match="float8 already"):
        load_component("transformer", file_source(path, quantize="int8"))

    transformer = load_component("transformer", file_source(path))
    inputs = fixed_transformer_inputs(transformer)
    base = transformer_output(transformer, inputs)
    lora = {}
    for seed, name in enumerate(["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_out"]):
        layer = transformer.get_submodule(name)
        generator = torch.Generator().manual_seed(seed)
        lora[f"transformer.{name}.lora_A.weight"] = torch.randn(2, layer.in_features, generator=generator) * 0.5
        lora[f"transformer.{name}.lora_B.weight"] = torch.randn(layer.out_features, 2, generator=generator) * 0.5
    save_file(lora, str(tmp_path / "style.safetensors"))
    apply_loras(transformer, [LoraRef("style", 1.0)], tmp_path)
    assert applied_loras(transformer)
    to_q = transformer.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.base_layer, Float8StoredLinear) and to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert {parameter.dtype for parameter in to_q.lora_A.parameters()} == {torch.float32}  # not float8
    changed = transformer_output(transformer, inputs)
    assert (changed - base).abs().max() > 1e-4
    remove_loras(transformer)
    assert torch.equal(transformer_output(transformer, inputs), base)


# ---------------------------------------------------------------------------------------------- renders


def render(runner, model: str, name: str) -> np.ndarray:
    request = GenerateRequest(**{**FAST, "model": model, "codec": "none", "save_raw": True, "filename": name})
    runner.run(request)
    return read_raw_frames(runner.output_dir / f"{name}.safetensors")


def test_a_render_from_a_single_file_equals_the_folder_render(runner, tmp_path: Path, tiny_model_dir: Path):
    transformer = load_component("transformer", tiny_recipe(tiny_model_dir).transformer)
    files = {
        "bf": write_transformer_file(transformer, tmp_path / "same.safetensors"),
        "fp8": write_transformer_file(transformer, tmp_path / "fp8.safetensors", float8=True),
    }
    recipes = {}
    for kind, path in files.items():
        recipe = tiny_recipe(tiny_model_dir).replace(transformer=file_source(path))
        recipes[kind] = tmp_path / f"{kind}-recipe.txt"
        recipes[kind].write_text(recipe_to_text(recipe), encoding="utf-8")

    folder = render(runner, "tiny", "folder")
    single = render(runner, str(recipes["bf"]), "single")
    assert single.shape == folder.shape == (13, 128, 128, 3)
    assert np.array_equal(single, folder)
    fp8 = render(runner, str(recipes["fp8"]), "fp8")
    difference = np.abs(fp8.astype(np.float64) - folder)
    print(f"fp8 render against the folder: mean {difference.mean():.3f} levels, max {difference.max():.0f}")
    assert fp8.shape == folder.shape and 0 < difference.mean() < 2.5


# ---------------------------------------------------------------------------------------------- memory


def test_loading_a_file_holds_one_copy_of_the_weights() -> None:
    command = [
        sys.executable,
        str(ROOT / "benches" / "single_file_memory.py"),
        "--heads",
        "4",
        "--layers",
        "1",
        "2",
        "--ways",
        "single-file",
        "single-file-fp8",
        "load-file",
        "--json",
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    results = {row["way"]: row for row in json.loads(output.strip().splitlines()[-1])["results"]}
    print({way: (row["model_mb"], row["added_mb"], row["ratio"]) for way, row in results.items()})
    assert results["single-file"]["model_mb"] > 40
    assert results["single-file"]["ratio"] < 1.3
    assert results["single-file-fp8"]["ratio"] < 1.3
    assert results["load-file"]["ratio"] > 1.8  # the measurement sees a second copy when there is one
