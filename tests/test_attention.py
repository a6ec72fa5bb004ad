"""Attention kernels: request names map onto diffusers' dispatcher, and a kernel that cannot run here is refused
by name before any model loads."""

from __future__ import annotations

import importlib.util
import typing

import pytest
import torch
from helpers import fixed_transformer_inputs, transformer_output

from framepack.errors import FieldError
from framepack.models.attention import ATTENTION_BACKENDS, check_attention, set_attention
from framepack.request import Attention, GenerateRequest


def test_every_request_choice_has_a_backend():
    choices = typing.get_args(GenerateRequest.model_fields["attention"].annotation)
    assert set(choices) == set(ATTENTION_BACKENDS)
    from diffusers.models.attention_dispatch import AttentionBackendName

    for backend, _package, _install in ATTENTION_BACKENDS.values():
        AttentionBackendName(backend)  # a name diffusers knows


def test_the_attention_literal_and_the_backend_table_name_the_same_kernels():
    """request.py's `Attention` Literal is the source of the choices; the table must cover exactly those."""
    assert set(ATTENTION_BACKENDS) == set(typing.get_args(Attention))


def test_sdpa_always_passes_and_unknown_names_are_refused():
    check_attention("sdpa", "cpu")
    with pytest.raises(FieldError) as error:
        check_attention("warp", "cpu")
    assert error.value.field == "attention" and "sdpa" in str(error.value)


@pytest.mark.parametrize("name", ["flash", "flash3", "sage", "xformers"])
def test_a_missing_kernel_is_refused_with_the_install_hint(name, monkeypatch):
    package = ATTENTION_BACKENDS[name][1]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == package else real(module, *a))
    with pytest.raises(FieldError) as error:
        check_attention(name, "cuda")
    message = str(error.value)
    assert error.value.field == "attention" and "not installed" in message and package in message and "sdpa" in message


def test_an_installed_kernel_still_needs_a_cuda_device(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda module, *a: object() if module == "sageattention" else real(module, *a)
    )
    with pytest.raises(FieldError, match="only on a CUDA GPU"):
        check_attention("sage", "cpu")


def test_set_attention_routes_every_attention_layer_and_sdpa_keeps_the_output(tiny_model_dir):
    from framepack.models.loader import load_component
    from framepack.models.recipe import tiny_recipe

    transformer = load_component("transformer", tiny_recipe(tiny_model_dir).transformer)
    processors = [
        module.processor
        for module in transformer.modules()
        if hasattr(getattr(module, "processor", None), "_attention_backend")
    ]  # the dispatcher's layers (the text token refiner's plain attention has no backend)
    assert processors
    inputs = fixed_transformer_inputs(transformer)
    before = transformer_output(transformer, inputs)
    set_attention(transformer, "sdpa")
    after = transformer_output(transformer, inputs)
    assert all(processor._attention_backend == "native" for processor in processors)
    assert torch.equal(before, after)
