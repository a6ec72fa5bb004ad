"""Quantization with optimum-quanto (`quantize=` in a recipe line) on the tiny self-test model.

Tolerances are relative L2 errors against the unquantized float32 model (||q - f|| / ||f||), measured on this
tiny random-weight model (torch 2.13 CPU, optimum-quanto 0.2.7) and set at about 3x the measured value:
- transformer, one call:  int8 0.06% (< 0.2%), float8 0.30% (< 1%), int4 0.98% (< 3%). Quantizing every layer,
  without the layers quantize.py keeps in float, measures 0.32% / 2.1%, so these bounds also guard that choice.
- Llama prompt embedding, int8: 0.38% (< 1.2%).
- a whole run through the Runner with an int8 transformer: mean |difference| of the uint8 frames 0.02 levels
  (< 0.25), largest 1 level (< 8).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import fixed_transformer_inputs, read_raw_frames, transformer_output
from optimum.quanto import QTensor
from optimum.quanto.nn import QLinear
from safetensors.torch import save_file

from framepack.encoders import encode_prompt
from framepack.errors import UserError
from framepack.models import loader as loader_module
from framepack.models.loader import ModelUnavailableError, check_available, load_component, load_components
from framepack.models.lora import LoraRef, applied_loras, apply_loras, remove_loras
from framepack.models.quantize import (
    KEEP_UNQUANTIZED,
    QUANTIZATIONS,
    QuantizationError,
    QuantizationUnavailableError,
    module_bytes,
    quantization_missing,
    quantization_of,
    quantize_module,
    quantized_layers,
)
from framepack.models.recipe import Recipe, recipe_to_text, tiny_recipe

KEPT = (
    "proj_out",
    "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1",
    "time_text_embed.guidance_embedder.linear_2",
)
QUANTIZED = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "single_transformer_blocks.0.proj_mlp")
DATA_DTYPES = {"int8": torch.int8, "float8": torch.float8_e4m3fn}


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm())


def with_quantize(recipe: Recipe, **kinds: str) -> Recipe:
    return recipe.replace(
        **{name: dataclasses.replace(recipe.component(name), quantize=kind) for name, kind in kinds.items()}
    )


def fresh(tiny_model_dir: Path, name: str = "transformer", dtype: str = "float32"):
    """A newly loaded component (quantization works in place: never quantize the shared session components)."""
    source = dataclasses.replace(tiny_recipe(tiny_model_dir).component(name), dtype=dtype)
    return load_component(name, source)


# ---------------------------------------------------------------------------------------------- quantize_module


@pytest.mark.parametrize(("kind", "tolerance"), [("int8", 0.002), ("float8", 0.01)])
def test_transformer_stays_close_to_float32_but_is_really_quantized(tiny_model_dir, kind, tolerance):
    transformer = fresh(tiny_model_dir)
    inputs = fixed_transformer_inputs(transformer)
    reference, bytes_before = transformer_output(transformer, inputs), module_bytes(transformer)

    assert quantize_module(transformer, kind, "transformer") is transformer
    output = transformer_output(transformer, inputs)
    error = relative_error(output, reference)
    print(f"transformer {kind}: relative L2 error {error:.5f} (tolerance {tolerance})")
    assert error < tolerance
    assert not torch.equal(output, reference) and error > 1e-5  # the weights really changed

    for name in QUANTIZED:
        layer = transformer.get_submodule(name)
        assert isinstance(layer, QLinear) and isinstance(layer.weight, QTensor)
        assert layer.weight._data.dtype == DATA_DTYPES[kind]
    for name in KEPT:
        layer = transformer.get_submodule(name)
        assert type(layer) is torch.nn.Linear and type(layer.weight) is torch.nn.Parameter
    summary = quantization_of(transformer)
    assert summary.kind == kind and summary.layers == len(quantized_layers(transformer)) >= 25
    assert set(KEPT) <= set(summary.kept)
    # the Linear weights quantized here are 35 KB of float32 (the tiny model is mostly embedders and norms)
    assert summary.bytes_before == bytes_before and bytes_before - module_bytes(transformer) > 20_000

    # what the engine and offloading rely on: the float compute dtype, no gradients, .to(device) still works
    assert transformer.dtype == torch.float32
    assert not any(parameter.requires_grad for parameter in transformer.parameters())
    assert transformer.to("cpu") is transformer and isinstance(transformer.transformer_blocks[0].attn.to_q, QLinear)
    assert torch.equal(transformer_output(transformer, inputs), output)


def test_int4_quantizes_the_transformer(tiny_model_dir):
    """qint4 compiles optimum-quanto's C++ extension on first use in an environment (about 22 s, once)."""
    transformer = fresh(tiny_model_dir)
    inputs = fixed_transformer_inputs(transformer)
    reference = transformer_output(transformer, inputs)
    quantize_module(transformer, "int4", "transformer")
    output = transformer_output(transformer, inputs)
    error = relative_error(output, reference)
    print(f"transformer int4: relative L2 error {error:.5f} (tolerance 0.03)")
    assert 1e-4 < error < 0.03
    layer = transformer.transformer_blocks[0].attn.to_q
    assert isinstance(layer, QLinear) and type(layer.weight).__name__ == "WeightQBitsTensor"
    assert transformer.dtype == torch.float32


def test_llama_text_encoder_int8_keeps_prompt_embeddings_close(tiny_components, tiny_model_dir):
    quantized = dataclasses.replace(tiny_components, text_encoder=fresh(tiny_model_dir, "text_encoder"))
    quantize_module(quantized.text_encoder, "int8", "text_encoder")
    assert quantized.text_encoder.dtype == torch.float32
    assert len(quantized_layers(quantized.text_encoder)) == 21  # 3 layers x (q, k, v, o, gate, up, down)
    prompt = "a cat walks on the grass"
    reference = encode_prompt(tiny_components, prompt, "cpu", torch.float32)
    embeds = encode_prompt(quantized, prompt, "cpu", torch.float32)
    error = relative_error(embeds.llama, reference.llama)
    print(f"Llama int8: relative L2 error of the prompt embedding {error:.5f} (tolerance 0.012)")
    assert 1e-5 < error < 0.012
    assert torch.equal(embeds.mask, reference.mask) and torch.equal(embeds.pooled, reference.pooled)


def test_bfloat16_int8_keeps_layers_the_cpu_kernel_cannot_run(tiny_model_dir):
    """quanto runs bfloat16 int8 Linear layers on the CPU with torch._weight_int8pack_mm, which segfaults (or
    returns garbage) when the input size is not a multiple of 16; such layers must stay in float."""
    transformer = fresh(tiny_model_dir, dtype="bfloat16")
    odd = [
        name
        for name, layer in transformer.named_modules()
        if isinstance(layer, torch.nn.Linear) and layer.in_features % 16
    ]
    assert odd  # pooled (24) and SigLIP (40) projections in the tiny model
    inputs = fixed_transformer_inputs(transformer, torch.bfloat16)
    reference = transformer_output(transformer, inputs)
    quantize_module(transformer, "int8", "transformer")
    for name in odd:
        assert type(transformer.get_submodule(name)) is torch.nn.Linear
    for name in quantized_layers(transformer):  # checked before the forward below, which would crash the process
        assert transformer.get_submodule(name).in_features % 16 == 0
    assert transformer.dtype == torch.bfloat16
    assert relative_error(transformer_output(transformer, inputs), reference) < 0.02


def test_bad_kind_component_and_double_quantization_are_refused(tiny_model_dir):
    transformer = fresh(tiny_model_dir)
    with pytest.raises(QuantizationError, match="allowed: int8, float8, int4") as caught:
        quantize_module(transformer, "nf4", "transformer")
    assert isinstance(caught.value, UserError) and "'nf4'" in str(caught.value)
    with pytest.raises(QuantizationError, match="transformer, vae, text_encoder"):
        quantize_module(transformer, "int8", "tokenizer")
    assert quantized_layers(transformer) == []
    quantize_module(transformer, "int8", "transformer")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_module(transformer, "int8", "transformer")
    assert QUANTIZATIONS == ("int8", "float8", "int4", "float8-dynamic") and set(KEEP_UNQUANTIZED) == {
        "transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder"
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- missing library


def test_missing_optimum_quanto_is_reported_before_loading(tiny_model_dir, monkeypatch):
    recipe = with_quantize(tiny_recipe(tiny_model_dir), transformer="float8")
    assert quantization_missing() is None
    assert check_available(recipe) == []

    monkeypatch.setitem(sys.modules, "optimum.quanto", None)  # `import optimum.quanto` now raises ImportError
    message = quantization_missing()
    assert message is not None and "pip install optimum-quanto" in message

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing may load before the missing library is reported")

    for spec in loader_module.LOADERS.values():
        monkeypatch.setattr(spec.cls, "from_pretrained", forbidden)
    errors = check_available(recipe)
    assert [error.component for error in errors] == ["transformer"]
    assert "quantize=float8" in str(errors[0]) and "pip install optimum-quanto" in str(errors[0])
    with pytest.raises(ModelUnavailableError, match="optimum-quanto") as caught:
        load_components(recipe)
    assert caught.value.component == "transformer"
    assert check_available(tiny_recipe(tiny_model_dir)) == []  # no quantize: no need for the library
    with pytest.raises(QuantizationUnavailableError, match="pip install optimum-quanto"):
        quantize_module(torch.nn.Sequential(torch.nn.Linear(16, 16)), "int8", "transformer")


# ---------------------------------------------------------------------------------------------- loader


def test_loader_quantizes_exactly_the_named_components_before_moving_them(tiny_model_dir, monkeypatch):
    events: list[tuple[str, str]] = []
    real_quantize, real_to = loader_module.quantize_module, torch.nn.Module.to

    def spy_quantize(module, kind, component):
        events.append(("quantize", component))
        return real_quantize(module, kind, component)

    def spy_to(self, *args, **kwargs):
        if self.__class__.__name__ in ("HunyuanVideoFramepackTransformer3DModel", "CLIPTextModel"):
            events.append(("to", self.__class__.__name__))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(loader_module, "quantize_module", spy_quantize)
    monkeypatch.setattr(torch.nn.Module, "to", spy_to)
    recipe = with_quantize(tiny_recipe(tiny_model_dir), transformer="int8", text_encoder_2="float8")
    components = load_components(recipe, device="cpu")
    monkeypatch.undo()

    assert events == [
        ("quantize", "transformer"),
        ("to", "HunyuanVideoFramepackTransformer3DModel"),
        ("quantize", "text_encoder_2"),
        ("to", "CLIPTextModel"),
    ]
    for name, module in components.modules().items():
        expected = recipe.component(name).quantize
        summary = quantization_of(module)
        assert (summary.kind if summary else None) == expected, name
        assert bool(quantized_layers(module)) == (expected is not None), name
    assert components.transformer.dtype == torch.float32 and not components.transformer.training


def test_runner_generates_with_an_int8_transformer_from_a_recipe_file(runner, tiny_model_dir, tmp_path):
    from framepack.request import GenerateRequest

    def frames(model: str, name: str) -> np.ndarray:
        request = GenerateRequest(
            model=model, prompt="a red ball rolls", duration=0.5, fps=8, latent_window_size=2, steps=3,
            resolution=128, seed=7, codec="none", save_raw=True, filename=name,
        )  # fmt: skip
        raw = next(path for path in runner.run(request).outputs if path.endswith(".safetensors"))
        return read_raw_frames(raw).astype(np.int16)

    reference = frames("tiny", "float")
    recipe_file = tmp_path / "int8.txt"
    recipe_file.write_text(
        recipe_to_text(with_quantize(tiny_recipe(Path(runner.home) / "tiny-self-test"), transformer="int8"))
    )
    quantized = frames(str(recipe_file), "int8")
    assert quantization_of(runner._components.transformer).kind == "int8"
    difference = np.abs(quantized - reference)
    print(f"Runner int8: mean |frame difference| {difference.mean():.4f} levels, largest {difference.max()}")
    assert quantized.shape == reference.shape
    assert 0 < difference.mean() < 0.25 and difference.max() < 8


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_on_an_int8_transformer_changes_output_and_unloads_exactly(tiny_model_dir, tmp_path):
    transformer = fresh(tiny_model_dir)
    quantize_module(transformer, "int8", "transformer")
    state = {}
    generator = torch.Generator().manual_seed(3)
    # two quantized layers and one kept in float (unique names: PEFT matches target names by suffix)
    for name in (
        "transformer_blocks.0.attn.to_q",
        "single_transformer_blocks.0.proj_mlp",
        "time_text_embed.guidance_embedder.linear_1",
    ):
        layer = transformer.get_submodule(name)
        state[f"transformer.{name}.lora_A.weight"] = torch.randn(2, layer.in_features, generator=generator) * 0.5
        state[f"transformer.{name}.lora_B.weight"] = torch.randn(layer.out_features, 2, generator=generator) * 0.5
    save_file(state, str(tmp_path / "style.safetensors"))
    inputs = fixed_transformer_inputs(transformer)
    base = transformer_output(transformer, inputs)
    before = {key: value.detach().clone() for key, value in transformer.state_dict().items()}

    apply_loras(transformer, [LoraRef("style", 1.0)], tmp_path)
    assert applied_loras(transformer)
    wrapped = transformer.transformer_blocks[0].attn.to_q
    assert isinstance(wrapped.base_layer, QLinear)  # the PEFT layer wraps the quantized layer
    assert (transformer_output(transformer, inputs) - base).abs().max() > 1e-3

    remove_loras(transformer)
    assert isinstance(transformer.transformer_blocks[0].attn.to_q, QLinear)
    after = transformer.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[key], before[key]) for key in before)
    assert torch.equal(transformer_output(transformer, inputs), base)


# ---------------------------------------------------------------------------------------------- sizes


def test_module_bytes_counts_quantized_storage():
    layer = torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False))
    assert module_bytes(layer) == 64 * 32 * 4
    quantize_module(layer, "int8", "text_encoder")
    # int8 data, one float32 scale per output row, and quanto's two scalar float32 activation-scale buffers
    assert module_bytes(layer) == 64 * 32 + 32 * 4 + 2 * 4
