"""`quantize=float8-dynamic` (torchao's dynamic float8: float8 weights and activations, float8 matmuls): refused,
with the field and the reason, wherever float8 compute cannot run, before any model loads. The GPU path itself
needs a CUDA GPU of compute capability 8.9+ that the CI does not have; here its choice of layers is checked."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from helpers import FAST

from framepack.errors import FieldError
from framepack.models import loader as loader_module
from framepack.models.loader import ModelUnavailableError, check_quantization, load_components
from framepack.models.quantize import (
    KEEP_UNQUANTIZED,
    QuantizationUnavailableError,
    check_compute,
    float8_compute_problem,
    float8_dynamic_layers,
    quantize_module,
)
from framepack.models.recipe import recipe_from_text, recipe_to_text, tiny_recipe
from framepack.request import GenerateRequest


def float8_dynamic_recipe(tiny_model_dir: Path):
    recipe = tiny_recipe(tiny_model_dir)
    return recipe.replace(transformer=dataclasses.replace(recipe.transformer, quantize="float8-dynamic"))


def test_the_choice_parses_beside_the_weight_only_ones():
    recipe = recipe_from_text("transformer: lllyasviel/FramePackI2V_HY dtype=bfloat16 quantize=float8-dynamic\n")
    assert recipe.transformer.quantize == "float8-dynamic"
    assert "quantize=float8-dynamic" in recipe_to_text(recipe)


def test_no_float8_compute_on_the_cpu_or_an_older_gpu():
    message = float8_compute_problem("cpu")
    assert "CUDA GPU of compute capability 8.9 or newer" in message and "this job runs on the cpu" in message
    message = float8_compute_problem("cuda", capability=(8, 6))
    assert "compute capability 8.9 or newer" in message and "this GPU has 8.6" in message
    assert float8_compute_problem("cuda", capability=(8, 9), check_torchao=False) is None
    assert float8_compute_problem("cuda", capability=(9, 0), check_torchao=False) is None


def test_a_supported_gpu_without_torchao_is_told_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # `import torchao` raises ImportError, installed or not
    message = float8_compute_problem("cuda", capability=(9, 0))
    assert message is not None and "needs torchao" in message and "pip install torchao" in message
    assert "quantize=float8 (weight-only)" in message


def test_the_runner_refuses_it_on_the_cpu_naming_the_model_field(runner, tiny_model_dir, tmp_path):
    recipe_file = tmp_path / "fp8-compute.txt"
    recipe_file.write_text(recipe_to_text(float8_dynamic_recipe(tiny_model_dir)), encoding="utf-8")
    request = GenerateRequest(**{**FAST, "model": str(recipe_file), "filename": "refused"})
    with pytest.raises(FieldError) as error:
        runner.run(request)
    message = str(error.value)
    assert error.value.field == "model"
    assert message.startswith("model: the recipe's transformer line asks quantize=float8-dynamic")
    assert "this job runs on the cpu" in message and "quantize=float8 (weight-only float8" in message
    assert runner._components is None and not runner.output_dir.exists()  # nothing loaded, nothing written


def test_the_job_queue_refuses_it_at_submit(make_manager, tiny_model_dir, tmp_path):
    recipe_file = tmp_path / "fp8-compute.txt"
    recipe_file.write_text(recipe_to_text(float8_dynamic_recipe(tiny_model_dir)), encoding="utf-8")
    manager = make_manager(start=False)
    with pytest.raises(FieldError, match="model: the recipe's transformer line asks quantize=float8-dynamic"):
        manager.submit(GenerateRequest(**{**FAST, "model": str(recipe_file)}))
    assert manager.list_jobs() == []


def test_the_loader_refuses_it_before_loading_any_weights(tiny_model_dir, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("nothing may load before the refusal")

    for spec in loader_module.LOADERS.values():
        monkeypatch.setattr(spec.cls, "from_pretrained", forbidden)
    recipe = float8_dynamic_recipe(tiny_model_dir)
    with pytest.raises(ModelUnavailableError) as error:
        load_components(recipe, device="cpu")
    assert error.value.component == "transformer" and "quantize=float8-dynamic" in str(error.value)
    assert "this job runs on the cpu" in str(error.value)
    # without a device to judge by, the file check has nothing to say (the runner checks with its device)
    assert check_quantization("transformer", recipe.transformer) is None
    with pytest.raises(FieldError):
        check_compute(recipe, "cpu")
    check_compute(tiny_recipe(tiny_model_dir), "cpu")  # no float8-dynamic line: nothing to refuse


def test_quantize_module_refuses_it_on_the_cpu():
    with pytest.raises(QuantizationUnavailableError, match="quantize=float8-dynamic: float8 compute needs a CUDA"):
        quantize_module(torch.nn.Sequential(torch.nn.Linear(16, 16)), "float8-dynamic", "transformer", device="cpu")


def test_it_would_quantize_the_block_layers_and_keep_today_s_float_layers(tiny_components):
    selected, kept = float8_dynamic_layers(tiny_components.transformer, "transformer")
    assert "transformer_blocks.0.attn.to_q" in selected and "single_transformer_blocks.0.proj_mlp" in selected
    for name in ("proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1"):
        assert name in kept and name not in selected
    # float8 matmuls need sizes that are multiples of 16: the tiny model's SigLIP projection (40 inputs) stays
    assert "image_projection.up" in kept
    linears = [n for n, m in tiny_components.transformer.named_modules() if type(m) is torch.nn.Linear]
    assert sorted(selected + kept) == sorted(linears)
    from fnmatch import fnmatchcase

    assert not any(fnmatchcase(name, pattern) for name in selected for pattern in KEEP_UNQUANTIZED["transformer"])
