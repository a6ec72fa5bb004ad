"""`compile: blocks`: torch.compile (inductor) on the transformer's repeated blocks, on the CPU with the self-test
model, and its refusals where the platform cannot compile.

Tolerance: frames of a compiled job against the same job eager differ by at most 1 level of 255 (measured: 1 at
most, 0.00003 levels on average: inductor's fused float32 kernels round differently, by about 1e-7 relatively),
mean under 0.05 levels. The first compiled job compiles (on this 2-core machine about 70-120 s with an empty
inductor cache, 10-40 s with a warm one: two shapes, the start frame's and the sections'); later jobs and
sections of the same loaded model compile nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import FAST, read_raw_frames
from pydantic import ValidationError

from framepack.errors import FieldError
from framepack.models.compile import (
    COMPILE_MODES,
    check_compile,
    compile_mode,
    compile_problem,
    repeated_blocks,
    set_compile,
)
from framepack.request import GenerateRequest

RAW = {**FAST, "codec": "none", "save_raw": True, "cache": "none"}


def render(runner, name: str, **fields):
    result = runner.run(GenerateRequest(**{**RAW, "filename": name, **fields}))
    return result, read_raw_frames(runner.output_dir / f"{name}.safetensors")


def test_compiled_blocks_match_eager_compile_once_and_undo_exactly(runner):
    eager_result, eager = render(runner, "eager")
    assert "compile" not in eager_result.timings

    compiled_result, compiled = render(runner, "compiled", compile="blocks")
    transformer = runner._components.transformer
    assert compile_mode(transformer) == "blocks"
    assert all("forward" in vars(block) for block in repeated_blocks(transformer))
    assert compiled_result.timings["compile"] > 0.5  # this job compiled the blocks
    assert compiled.shape == eager.shape == (13, 128, 128, 3)
    difference = np.abs(compiled.astype(np.float64) - eager)
    print(
        f"compiled vs eager: max {difference.max():.0f} mean {difference.mean():.5f} levels; compile "
        f"{compiled_result.timings['compile']:.1f} s"
    )
    assert difference.max() <= 1.0 and difference.mean() < 0.05

    # another job, two sections and another seed: the compiled blocks are reused, nothing compiles again
    again, frames = render(runner, "again", compile="blocks", seed=9, duration=0.8)
    assert again.timings["compile"] == 0.0
    assert frames.shape == (25, 128, 128, 3) and {"section_0", "section_1"} <= set(again.timings)
    assert runner._components.transformer is transformer

    # back to eager on the same loaded model: the blocks' own forward again, frames bit for bit the first ones
    undone_result, undone = render(runner, "undone")
    assert compile_mode(transformer) == "none"
    assert not any("forward" in vars(block) for block in repeated_blocks(transformer))
    assert "compile" not in undone_result.timings
    assert np.array_equal(undone, eager)


def test_set_compile_refuses_blocks_wrapped_by_a_hook(tiny_model_dir):
    from diffusers.hooks import HookRegistry, ModelHook

    from framepack.models.loader import load_component
    from framepack.models.recipe import tiny_recipe

    transformer = load_component("transformer", tiny_recipe(tiny_model_dir).transformer)
    block = transformer.transformer_blocks[0]
    HookRegistry.check_if_exists_or_initialize(block).register_hook(ModelHook(), "probe")
    with pytest.raises(RuntimeError, match="wrapped"):
        set_compile(transformer, "blocks")
    HookRegistry.check_if_exists_or_initialize(block).remove_hook("probe")
    set_compile(transformer, "blocks")  # a removed hook leaves the block's own forward: fine
    assert compile_mode(transformer) == "blocks"
    set_compile(transformer, "none")
    assert not any("forward" in vars(b) for b in repeated_blocks(transformer))


# ---------------------------------------------------------------------------------------------- refusals


def test_the_request_field_takes_none_or_blocks_only():
    assert COMPILE_MODES == ("none", "blocks") and GenerateRequest().compile == "none"
    with pytest.raises(ValidationError) as error:
        GenerateRequest(compile="full")
    assert error.value.errors()[0]["loc"] == ("compile",) and "'none' or 'blocks'" in str(error.value)
    with pytest.raises(FieldError) as refused:
        check_compile("full", "cpu")
    assert refused.value.field == "compile" and "allowed: none, blocks" in str(refused.value)


def without_cpp_compiler():
    """Inductor's own setting of the C++ compilers to try, pointed at one that does not exist (its config API)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")})


def test_no_cpp_compiler_refuses_compile_on_the_cpu_naming_the_field():
    assert compile_problem("cpu") is None  # this machine can compile (the test above does)
    check_compile("none", "cpu")
    with without_cpp_compiler():
        with pytest.raises(FieldError) as error:
            check_compile("blocks", "cpu")
        check_compile("none", "cpu")  # 'none' never needs a compiler
    message = str(error.value)
    assert error.value.field == "compile" and message.startswith("compile: 'blocks' cannot run here")
    assert "C++ compiler" in message and "/nonexistent/g++" in message and "Use compile 'none'" in message


def test_the_runner_and_the_cli_refuse_before_any_model_loads(runner, framepack_cli, tmp_path):
    with without_cpp_compiler():
        with pytest.raises(FieldError, match="compile: 'blocks' cannot run here"):
            runner.run(GenerateRequest(**{**RAW, "filename": "refused", "compile": "blocks"}))
        assert runner._components is None and not runner.output_dir.exists()
        result = framepack_cli("generate", "--model", "tiny", "--compile", "blocks", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert "compile: 'blocks' cannot run here" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_gpu_without_triton_and_other_devices_are_refused(monkeypatch):
    from torch.utils import _triton

    monkeypatch.setattr(_triton, "has_triton", lambda: False)
    with pytest.raises(FieldError) as error:
        check_compile("blocks", "cuda")
    assert error.value.field == "compile" and "needs Triton" in str(error.value)
    with pytest.raises(FieldError, match="supported on the CPU and CUDA GPUs; this job runs on mps"):
        check_compile("blocks", torch.device("mps"))
