"""Offload modes on the tiny model: placement policy, eviction order, block streaming, hook clean-up, parity.

There is no GPU here, so the policy runs with the execution device and the offload device both "cpu" and an
explicit `budget_bytes` (which switches the hooks on on a CPU); outputs must then be exactly those of mode none.
A fake module with a recording `.to()` checks that inputs really travel to a non-CPU execution device ("meta").
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers.hooks.group_offloading import GroupOffloadingHook, _is_group_offload_enabled
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook
from helpers import FAST, MemorySink, TransformerCalls, pattern_image

from framepack.encoders import encode_prompt, encode_vision, vae_decode, vae_encode
from framepack.generate import generate
from framepack.images import fit_to_bucket, load_image, to_tensor
from framepack.models.components import Components
from framepack.models.loader import load_components
from framepack.models.offload import (
    OFFLOAD_MODES,
    GiB,
    Offloader,
    group_offload_kwargs,
    memory_budget,
    offload_hooks,
    streaming_working_set,
)
from framepack.models.quantize import module_bytes
from framepack.models.recipe import tiny_recipe
from framepack.request import GenerateRequest
from framepack.runner import plan_request

# one section of one step (VAE decoding dominates the time on a CPU); the eviction tests below drive the
# components directly, the transformer again after the VAE included
ONE_STEP = {**FAST, "steps": 1, "fps": 30, "prompt": "a red ball rolls"}
NAMES = ("transformer", "vae", "text_encoder", "text_encoder_2", "image_encoder")


@pytest.fixture(scope="module")
def recipe(tiny_model_dir):
    return tiny_recipe(tiny_model_dir).with_dtype("float32")


@pytest.fixture
def components(recipe):
    """A private copy of the tiny model (the tests install hooks on it); loading takes well under a second."""
    return load_components(recipe, device="cpu")


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    """Mode none: an I2V request, its frames, the first transformer call's inputs and that call's output."""
    image = pattern_image(tmp_path_factory.mktemp("offload") / "start.png", 160, 128)
    request = GenerateRequest(**ONE_STEP, init_image=str(image))
    plan = plan_request(request)
    components = load_components(recipe, device="cpu")
    sink = MemorySink()
    with TransformerCalls(components.transformer) as calls:
        generate(components, request, plan, [sink])
    call = calls.calls[0]
    with torch.no_grad():
        output = components.transformer(**call)[0]
    pixels = to_tensor(fit_to_bucket(load_image(str(image)), plan.width, plan.height))
    return dict(request=request, plan=plan, frames=sink.frames, call=call, output=output, pixels=pixels)


def sizes(components) -> dict[str, int]:
    return {name: module_bytes(module) for name, module in components.modules().items()}


def run_generation(components, reference) -> np.ndarray:
    sink = MemorySink()
    generate(components, reference["request"], reference["plan"], [sink])
    return sink.frames


def call_transformer(components, reference) -> torch.Tensor:
    with torch.no_grad():
        return components.transformer(**reference["call"])[0]


def assert_no_offload_hooks(components) -> None:
    for name, module in components.modules().items():
        assert offload_hooks(module) == [], name
        assert not any(hasattr(sub, "_diffusers_hook") for sub in module.modules()), name
    assert "encode" not in components.vae.__dict__ and "decode" not in components.vae.__dict__


# ------------------------------------------------------------------------------------------ pure parts


def test_unknown_mode_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'sequential'.*none, model, balanced, blocks"):
        Offloader("cpu", "sequential")
    assert OFFLOAD_MODES == ("none", "model", "balanced", "blocks")
    with pytest.raises(ValueError, match="preserved_memory_gb"):
        Offloader("cpu", "balanced", preserved_memory_gb=-1)


def test_budget_is_total_minus_preserved_memory():
    assert memory_budget(80 * GiB, 6) == 74 * GiB
    assert memory_budget(24 * GiB, 6.5) == int(17.5 * GiB)
    assert memory_budget(24 * GiB, 0) == 24 * GiB
    assert memory_budget(4 * GiB, 6) == 0  # never negative: everything is offloaded / streamed
    with pytest.raises(ValueError):
        memory_budget(GiB, -1)
    assert Offloader("cuda", "balanced", budget_bytes=123).measured_budget() == 123  # the host knows better
    assert Offloader("cpu", "balanced").measured_budget() is None  # a CPU has no device memory to budget


def test_measured_budget_uses_the_free_memory_when_known(monkeypatch):
    import framepack.models.offload as offload

    monkeypatch.setattr(offload, "device_memory", lambda device: (10 * GiB, 24 * GiB))  # others hold 14 GiB
    assert Offloader("cuda", "balanced", preserved_memory_gb=6).measured_budget() == 4 * GiB
    monkeypatch.setattr(offload, "device_memory", lambda device: (None, 24 * GiB))  # total only (MPS)
    assert Offloader("mps", "balanced", preserved_memory_gb=6).measured_budget() == 18 * GiB


def test_quantized_weights_count_what_they_hold():
    quanto = pytest.importorskip("optimum.quanto")
    layer = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False)).to(torch.bfloat16)
    assert module_bytes(layer) == 256 * 256 * 2
    quanto.quantize(layer, weights=quanto.qint8)
    quanto.freeze(layer)
    assert layer[0].weight.element_size() == 2  # quanto reports the float dtype...
    buffers = sum(buffer.numel() * buffer.element_size() for buffer in layer.buffers())  # quanto's scalar scales
    assert module_bytes(layer) == 256 * 256 + 256 * 2 + buffers  # ...but holds int8 data and a bf16 scale per row


def test_group_offload_arguments():
    cuda = group_offload_kwargs("cuda", transformer_bytes=25 * GiB, available_ram=100 * GiB)
    assert cuda == dict(
        onload_device=torch.device("cuda"),
        offload_device=torch.device("cpu"),
        offload_type="block_level",
        num_blocks_per_group=1,
        use_stream=True,
        record_stream=True,
        low_cpu_mem_usage=False,  # enough RAM to pin the whole transformer once
    )
    assert group_offload_kwargs("cuda", transformer_bytes=25 * GiB, available_ram=40 * GiB)["low_cpu_mem_usage"]
    assert group_offload_kwargs("cuda", transformer_bytes=25 * GiB, available_ram=None)["low_cpu_mem_usage"]
    assert not group_offload_kwargs("cuda", available_ram=GiB, low_cpu_mem_usage=False)["low_cpu_mem_usage"]
    cpu = group_offload_kwargs("cpu", transformer_bytes=GiB)
    assert (cpu["use_stream"], cpu["record_stream"], cpu["low_cpu_mem_usage"]) == (False, False, False)
    assert set(cuda) <= set(inspect.signature(ModelMixin.enable_group_offload).parameters)


# -------------------------------------------------------------------------------------- placement policy


def test_on_a_cpu_without_budget_every_mode_is_none(components):
    for mode in OFFLOAD_MODES:
        offloader = Offloader("cpu", mode)
        offloader.apply(components)
        assert offloader.effective_mode == "none"
        assert offloader.resident == list(NAMES)
        assert components.execution_device == torch.device("cpu")
        assert_no_offload_hooks(components)
        offloader.remove(components)
        assert components.execution_device is None


def test_model_mode_keeps_only_the_component_in_use(components, reference):
    offloader = Offloader("cpu", "model", budget_bytes=0)  # a budget switches the hooks on on the CPU
    offloader.apply(components)
    assert (offloader.effective_mode, offloader.resident, offloader.moves) == ("model", [], 0)

    encode_prompt(components, "a ball", components.device, torch.float32)
    expected = [("load", "text_encoder"), ("offload", "text_encoder"), ("load", "text_encoder_2")]
    assert list(offloader.history) == expected
    assert offloader.resident == ["text_encoder_2"] and offloader.moves == 3

    call_transformer(components, reference)
    assert offloader.resident == ["transformer"] and offloader.moves == 5
    assert list(offloader.history)[3:] == [("offload", "text_encoder_2"), ("load", "transformer")]
    call_transformer(components, reference)  # already there: nothing moves
    assert offloader.moves == 5

    latents = vae_encode(components, reference["pixels"], torch.Generator().manual_seed(0))  # via apply_forward_hook
    assert offloader.resident == ["vae"] and offloader.moves == 7
    vae_decode(components, latents)
    encode_vision(components, reference["pixels"], torch.float32)
    assert offloader.resident == ["image_encoder"] and offloader.moves == 9
    offloader.remove(components)
    assert_no_offload_hooks(components)


def test_balanced_evicts_the_least_recently_used(components, reference):
    size = sizes(components)
    # the tiny model's sizes: transformer > vae > text_encoder > image_encoder > text_encoder_2
    order = ["transformer", "vae", "text_encoder", "image_encoder", "text_encoder_2"]
    assert sorted(size, key=size.get, reverse=True) == order
    budget = size["transformer"] + size["vae"]  # room for the two largest only
    assert size["text_encoder"] + size["text_encoder_2"] + size["vae"] > budget
    offloader = Offloader("cpu", "balanced", budget_bytes=budget)
    offloader.apply(components)
    assert offloader.budget == budget and not offloader.streaming

    encode_prompt(components, "a ball", components.device, torch.float32)
    assert offloader.resident == ["text_encoder", "text_encoder_2"]  # both fit
    latents = vae_encode(components, reference["pixels"], torch.Generator().manual_seed(0))
    assert offloader.resident == ["text_encoder_2", "vae"]  # the LRU text encoder made room
    encode_vision(components, reference["pixels"], torch.float32)
    assert offloader.resident == ["vae", "image_encoder"]
    call_transformer(components, reference)
    assert offloader.resident == ["image_encoder", "transformer"]  # vae was older than the image encoder
    vae_decode(components, latents)
    assert offloader.resident == ["transformer", "vae"]
    call_transformer(components, reference)
    assert offloader.resident == ["vae", "transformer"]
    evicted = [name for action, name in offloader.history if action == "offload"]
    assert evicted == ["text_encoder", "text_encoder_2", "vae", "image_encoder"]
    assert offloader.moves == 6 + 4
    assert sum(size[name] for name in offloader.resident) <= budget


def test_balanced_streams_a_transformer_larger_than_the_budget(components, reference):
    size = sizes(components)
    offloader = Offloader("cpu", "balanced", budget_bytes=size["transformer"] - 1)
    offloader.apply(components)
    assert offloader.streaming
    transformer = components.transformer
    assert _is_group_offload_enabled(transformer)
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        assert isinstance(block._diffusers_hook.get_hook("group_offloading"), GroupOffloadingHook)
    top = transformer._diffusers_hook.get_hook("group_offloading")  # the non-block weights' group
    assert isinstance(top, GroupOffloadingHook)

    encode_prompt(components, "a ball", components.device, torch.float32)
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)
    assert "transformer" not in offloader.resident  # streamed: never resident as a whole
    working_set = streaming_working_set(transformer, prefetch=False)
    assert working_set < size["transformer"]
    assert sum(size[name] for name in offloader.resident) + working_set <= offloader.budget
    offloader.remove(components)
    assert_no_offload_hooks(components)
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)


def test_blocks_mode_streams_the_transformer_and_model_offloads_the_rest(components, reference):
    offloader = Offloader("cpu", "blocks", budget_bytes=0)
    offloader.apply(components)
    assert offloader.streaming and _is_group_offload_enabled(components.transformer)
    hook = components.transformer.transformer_blocks[0]._diffusers_hook.get_hook("group_offloading")
    assert hook.config.num_blocks_per_group == 1 and hook.config.stream is None  # no streams on a CPU
    encode_prompt(components, "a ball", components.device, torch.float32)
    assert offloader.resident == ["text_encoder_2"]
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)
    assert offloader.resident == []  # the transformer runs with everything else offloaded
    assert offloader.moves == 4


def test_streaming_survives_diffusers_reapplying_group_offload(components, reference):
    """`ModelMixin.unload_lora` (our LoRA unloading between jobs) takes group offload off and puts it back;
    our placement hook must keep running, and `regrouping` (around a LoRA change) does the same."""
    from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

    offloader = Offloader("cpu", "blocks", budget_bytes=0)
    offloader.apply(components)

    def regroup() -> None:
        with offloader.regrouping():
            pass

    for rebuild in (lambda: _maybe_remove_and_reapply_group_offloading(components.transformer), regroup):
        rebuild()
        assert _is_group_offload_enabled(components.transformer)
        encode_prompt(components, "a ball", components.device, torch.float32)
        assert offloader.resident == ["text_encoder_2"]
        torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)
        assert offloader.resident == []  # our hook still ran before the transformer
    offloader.remove(components)
    assert_no_offload_hooks(components)
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)


def test_a_lora_change_regroups_a_streamed_transformer_once(components, reference, tmp_path, monkeypatch):
    """LoRAs changed inside `Offloader.regrouping` (as the runner changes them) apply group offload once per
    change: diffusers' `unload_lora` finds none to rebuild. Changed outside and then regrouped (the old way), twice."""
    from diffusers.hooks import group_offloading
    from safetensors.torch import save_file

    from framepack.models.lora import LoraRef, applied_loras, ensure_loras

    transformer = components.transformer
    layer = transformer.transformer_blocks[0].attn.to_q
    for seed, name in enumerate(("a", "b")):
        generator = torch.Generator().manual_seed(seed)
        state = {
            "transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(2, layer.in_features, generator=generator),
            "transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(layer.out_features, 2, generator=generator),
        }
        save_file(state, str(tmp_path / f"{name}.safetensors"))
    offloader = Offloader("cpu", "blocks", budget_bytes=0)
    offloader.apply(components)
    real, applications = group_offloading._apply_group_offloading, []

    def counted(*args, **kwargs):
        applications.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(group_offloading, "_apply_group_offloading", counted)
    steps = [([LoraRef("a")], True), ([LoraRef("b", 0.5)], True), ([LoraRef("b", 0.5)], False), ([], True)]
    for refs, changes in steps:
        applications.clear()
        assert ensure_loras(transformer, refs, tmp_path, around_change=offloader.regrouping) is changes
        assert applications == ([transformer] if changes else [])
        assert _is_group_offload_enabled(transformer) and len(applied_loras(transformer)) == len(refs)
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)

    ensure_loras(transformer, [LoraRef("a")], tmp_path, around_change=offloader.regrouping)
    applications.clear()
    assert ensure_loras(transformer, [LoraRef("b")], tmp_path)  # diffusers' unload_lora rebuilds group offload ...
    with offloader.regrouping():  # ... and regrouping after the change (how the runner did it) rebuilds it again
        pass
    assert applications == [transformer, transformer]
    offloader.remove(components)
    assert_no_offload_hooks(components)


def test_streaming_falls_back_to_no_streams_when_streams_fail(components, reference, monkeypatch):
    import framepack.models.offload as offload

    real = offload.group_offload_kwargs
    monkeypatch.setattr(offload, "group_offload_kwargs", lambda *args: {**real(*args), "use_stream": True})
    offloader = Offloader("cpu", "blocks", budget_bytes=0)
    offloader.apply(components)  # diffusers refuses streams on a CPU: streamed without them instead
    assert offloader.streaming and offloader._group_kwargs["use_stream"] is False
    hook = components.transformer.transformer_blocks[0]._diffusers_hook.get_hook("group_offloading")
    assert hook.config.stream is None
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)
    offloader.remove(components)
    assert_no_offload_hooks(components)


# ------------------------------------------------------------------------------------------ generations


def _host_pair(record):
    def apply_host(modules):
        record.append(("apply", sorted(modules)))

    def remove_host(modules):
        record.append(("remove", sorted(modules)))

    return apply_host, remove_host


@pytest.mark.parametrize(
    "mode,budget",
    [("model", 0), ("balanced", "all"), ("balanced", "two"), ("balanced", "stream"), ("blocks", 0)],
    ids=["model", "balanced-all", "balanced-two", "balanced-stream", "blocks"],
)
def test_every_mode_generates_the_same_frames_as_none(components, reference, mode, budget):
    """The reference frames come from mode none (no Offloader; Offloader "none" only places, see above)."""
    size = sizes(components)
    budgets = {"all": sum(size.values()), "two": size["transformer"] + size["vae"], "stream": size["transformer"] - 1}
    offloader = Offloader("cpu", mode, budget_bytes=budgets.get(budget, budget))
    offloader.apply(components)
    assert offloader.effective_mode == mode
    frames = run_generation(components, reference)
    np.testing.assert_array_equal(frames, reference["frames"])  # same device, same kernels: exactly equal
    evicted = [name for action, name in offloader.history if action == "offload"]
    if budget == "all":  # room for everything: each component loaded once, nothing evicted
        assert evicted == [] and offloader.moves == 5 and sorted(offloader.resident) == sorted(NAMES)
        assert offloader.resident[-1] == "vae"  # the final decode
    else:
        assert evicted and offloader.moves == len(offloader.history)
    offloader.remove(components)
    assert_no_offload_hooks(components)


def test_host_balanced_offload_is_used_instead_of_ours(components, reference):
    record = []
    apply_host, remove_host = _host_pair(record)
    host = {"apply_host_offload": apply_host, "remove_host_offload": remove_host}
    offloader = Offloader("cpu", "balanced", budget_bytes=0, **host)
    offloader.apply(components)
    assert offloader.effective_mode == "host" and record == [("apply", sorted(NAMES))]
    assert all(offload_hooks(module) == [] for module in components.modules().values())  # ours stay off
    np.testing.assert_array_equal(run_generation(components, reference), reference["frames"])
    assert offloader.resident == [] and offloader.moves == 0
    offloader.remove(components)
    assert record[-1] == ("remove", sorted(NAMES))
    assert_no_offload_hooks(components)

    unused = []
    apply_host, _ = _host_pair(unused)
    model = Offloader("cpu", "model", budget_bytes=0, apply_host_offload=apply_host)
    model.apply(components)
    assert model.effective_mode == "model" and unused == []  # the host function is for balanced only
    model.remove(components)


# ----------------------------------------------------------------------------------------- remove / apply


def test_remove_then_apply_another_mode(components, reference):
    blocks = Offloader("cpu", "blocks", budget_bytes=0)
    blocks.apply(components)
    with pytest.raises(RuntimeError, match="already applied"):
        blocks.apply(components)
    with pytest.raises(RuntimeError, match="remove"):
        Offloader("cpu", "model", budget_bytes=0).apply(components)  # hooks of another offloader are there
    call_transformer(components, reference)
    blocks.remove(components)
    assert_no_offload_hooks(components)
    assert components.execution_device is None and blocks.effective_mode is None

    model = Offloader("cpu", "model", budget_bytes=0)
    model.apply(components)
    assert not _is_group_offload_enabled(components.transformer)
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)
    assert model.resident == ["transformer"]
    Offloader("cpu", "none").remove(components)  # any offloader can take the hooks off
    assert_no_offload_hooks(components)
    assert all(next(module.parameters()).device.type == "cpu" for module in components.modules().values())


def test_remove_keeps_other_diffusers_hooks(components, reference):
    from diffusers.hooks import HookRegistry, ModelHook

    class Marker(ModelHook):
        pass

    block = components.transformer.transformer_blocks[0]
    HookRegistry.check_if_exists_or_initialize(block).register_hook(Marker(), "marker")
    offloader = Offloader("cpu", "blocks", budget_bytes=0)
    offloader.apply(components)
    torch.testing.assert_close(call_transformer(components, reference), reference["output"], rtol=0, atol=0)
    offloader.remove(components)
    assert list(block._diffusers_hook.hooks) == ["marker"]  # e.g. a cache's hooks survive a change of offload mode
    assert offload_hooks(components.transformer) == []


# -------------------------------------------------------------- inputs reach a non-CPU execution device


class FakeModule(torch.nn.Module):
    """Reports the device of its input; `.to()` only records where it was sent (no real second device here)."""

    def __init__(self, out_of_memory_once: bool = False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.sent_to: list[str] = []
        self.out_of_memory_once = out_of_memory_once

    def to(self, device):
        if self.out_of_memory_once and torch.device(device).type == "meta":
            self.out_of_memory_once = False
            raise torch.cuda.OutOfMemoryError("fake: out of memory")
        self.sent_to.append(torch.device(device).type)
        return self

    def forward(self, x, scale=None):
        return x.device.type, None if scale is None else scale.device.type


class FakeVae(FakeModule):
    @apply_forward_hook
    def encode(self, x):
        return x.device.type

    @apply_forward_hook
    def decode(self, z, return_dict=True):
        return z.device.type


def test_inputs_left_on_the_cpu_are_sent_to_the_execution_device():
    parts = {name: FakeModule() for name in NAMES}
    parts["vae"] = FakeVae()
    fake = Components(tokenizer=None, tokenizer_2=None, feature_extractor=None, **parts)
    offloader = Offloader("meta", "model")  # "meta" stands in for a GPU: tensors can go there without one
    offloader.apply(fake)
    assert all(module.sent_to == ["cpu"] for module in parts.values())  # at rest on the offload device
    x = torch.ones(1)
    assert fake.text_encoder(x, scale=x) == ("meta", "meta")
    assert parts["text_encoder"].sent_to == ["cpu", "meta"]
    assert fake.vae.encode(x) == "meta" and fake.vae.decode(z=x) == "meta"  # inputs moved though no forward runs
    assert offloader.resident == ["vae"] and parts["text_encoder"].sent_to == ["cpu", "meta", "cpu"]
    offloader.remove(fake, device="cpu")
    assert fake.vae.encode(x) == "cpu" and "encode" not in fake.vae.__dict__


def test_out_of_memory_on_load_evicts_the_others_and_retries():
    parts = {name: FakeModule(out_of_memory_once=name == "transformer") for name in NAMES}
    fake = Components(tokenizer=None, tokenizer_2=None, feature_extractor=None, **parts)
    offloader = Offloader("meta", "balanced", budget_bytes=10**6)  # the budget says everything fits
    offloader.apply(fake)
    x = torch.ones(1)
    fake.text_encoder(x)
    fake.image_encoder(x)
    assert offloader.resident == ["text_encoder", "image_encoder"]
    assert fake.transformer(x) == ("meta", None)  # the device disagreed with the budget: room made, retried
    assert offloader.resident == ["transformer"]
    assert [name for action, name in offloader.history if action == "offload"] == ["text_encoder", "image_encoder"]


def test_a_failed_apply_leaves_no_hooks(components):
    def broken_host(modules):
        raise RuntimeError("host offload failed")

    offloader = Offloader("cpu", "balanced", budget_bytes=0, apply_host_offload=broken_host)
    with pytest.raises(RuntimeError, match="host offload failed"):
        offloader.apply(components)
    assert_no_offload_hooks(components)
    assert components.execution_device is None
    offloader.apply_host_offload = None
    offloader.apply(components)  # the same offloader can be applied again
    assert offloader.effective_mode == "balanced"
    offloader.remove(components)
