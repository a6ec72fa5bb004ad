"""Context parallelism (framepack/models/parallel.py, framepack/gang.py): the plan, the refusals before any model
loads, and two gloo ranks on the CPU against one process (the transformer, the caches, a whole CLI job)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cp_ranks import CASES, HEADS, build_transformer, cache_calls, transformer_inputs, transformer_ranks
from diffusers.models._modeling_parallel import ContextParallelInput
from helpers import read_raw_frames, tiny_home

from framepack.models.parallel import (
    ContextParallelError,
    context_parallel_plan,
    degree_problem,
    enable_context_parallel,
)
from framepack.runner import Runner

# the tiny CLI job of the comparison: a T2V start frame and one section of 6 steps, TeaCache on (it skips calls)
JOB = [
    "generate", "--model", "tiny", "--resolution", "128", "--latent-window-size", "3", "--steps", "6",
    "--duration", "0.4", "--prompt", "a kite over the sea", "--seed", "5", "--codec", "none", "--save-raw",
    "--device", "cpu", "--cache", "teacache", "--filename", "v",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------- the plan


def test_plan_splits_both_streams_at_the_first_block_and_rope_at_every_block():
    plan = context_parallel_plan(20, 40)
    assert len(plan) == 60
    assert set(plan["transformer_blocks.0"]) == {"hidden_states", "encoder_hidden_states", "freqs_cis"}
    assert plan["transformer_blocks.0"]["hidden_states"] == ContextParallelInput(split_dim=1)
    assert plan["transformer_blocks.0"]["encoder_hidden_states"] == ContextParallelInput(split_dim=1)
    for index in range(1, 20):
        assert plan[f"transformer_blocks.{index}"] == {"freqs_cis": [ContextParallelInput(split_dim=0)] * 2}
    for index in range(40):
        assert plan[f"single_transformer_blocks.{index}"] == {
            "image_rotary_emb": [ContextParallelInput(split_dim=0)] * 2
        }


def test_plan_without_dual_stream_blocks_splits_the_streams_at_the_first_single_block():
    plan = context_parallel_plan(0, 3)
    assert list(plan) == [f"single_transformer_blocks.{index}" for index in range(3)]
    assert set(plan["single_transformer_blocks.0"]) == {"hidden_states", "encoder_hidden_states", "image_rotary_emb"}
    assert set(plan["single_transformer_blocks.1"]) == {"image_rotary_emb"}


def test_plan_refuses_a_transformer_without_blocks():
    with pytest.raises(ContextParallelError, match="at least one block; got 0 dual-stream and 0 single-stream"):
        context_parallel_plan(0, 0)


def test_degree_must_divide_the_attention_heads():
    assert degree_problem(4, 24) is None
    assert degree_problem(5, 24) == (
        "5 ranks do not divide the transformer's 24 attention heads (Ulysses gives each rank heads/N of them); "
        "allowed: 2, 3, 4, 6, 8, 12, 24"
    )
    assert degree_problem(1, 24) == "context parallelism needs at least 2 ranks, got 1"


def test_enable_refuses_a_degree_the_heads_do_not_allow_and_a_missing_process_group():
    model = build_transformer(1, 1)
    with pytest.raises(ContextParallelError, match=f"3 ranks do not divide the transformer's {HEADS} attention"):
        enable_context_parallel(model, 3)
    assert not dist.is_initialized()
    with pytest.raises(ContextParallelError, match="needs torch.distributed initialized"):
        enable_context_parallel(model, 2)
    assert model._parallel_config is None  # nothing was applied


# ---------------------------------------------------------------------------------- two gloo ranks, one process


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What each of two spawned gloo ranks computed (tests/cp_ranks.py), rank 0 first."""
    folder = tmp_path_factory.mktemp("cp")
    store = dist.TCPStore("127.0.0.1", 0, world_size=None, is_master=True, wait_for_workers=False)
    mp.spawn(transformer_ranks, args=(2, store.port, str(folder)), nprocs=2)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(2)]


def reference(case: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """One process: the output, and the (latent, condition) tokens entering the first block's attention."""
    model = build_transformer()
    seen = []
    model.transformer_blocks[0].attn.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(
            (kwargs["hidden_states"].shape[1], kwargs["encoder_hidden_states"].shape[1])
        ),
        with_kwargs=True,
    )
    with torch.no_grad():
        output = model(**transformer_inputs(*CASES[case]))[0]
    return output, seen[0]


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_give_the_output_of_one_process(two_ranks: list[dict], case: str):
    expected, (latent, condition) = reference(case)
    parity = {"even": (0, 0), "odd_condition": (0, 1), "odd_both": (1, 1)}[case]
    assert (latent % 2, condition % 2) == parity  # the case really has the token counts it is named after
    for results in two_ranks:
        got = results["outputs"][case]
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5
    assert torch.equal(two_ranks[0]["outputs"][case], two_ranks[1]["outputs"][case])


@pytest.mark.parametrize("case", list(CASES))
def test_each_rank_attends_over_its_share_of_the_tokens(two_ranks: list[dict], case: str):
    _output, full = reference(case)
    shares = [results["attention_tokens"][case] for results in two_ranks]
    for stream in range(2):  # latent, condition: split as torch.tensor_split splits them, 1/2 each (+1 on rank 0)
        assert [share[stream] for share in shares] == [(full[stream] + 1) // 2, full[stream] // 2]


def test_a_plan_without_the_per_block_rope_split_fails_loudly(two_ranks: list[dict]):
    for results in two_ranks:
        assert results["broken"] is not None
        assert "must match the size" in results["broken"]


@pytest.mark.parametrize("method", ["teacache", "magcache"])
def test_caches_skip_the_same_calls_on_every_rank_as_in_one_process(two_ranks: list[dict], method: str):
    expected, skipped = cache_calls(build_transformer(), method)
    assert 0 < skipped < len(expected)
    for results in two_ranks:
        outputs, rank_skipped = results["caches"][method]
        assert rank_skipped == skipped
        for got, want in zip(outputs, expected, strict=True):
            assert (got - want).abs().max().item() <= 1e-5


def test_first_block_cache_is_refused_under_context_parallelism(two_ranks: list[dict]):
    for results in two_ranks:
        assert results["fbc"].startswith("fbc cannot run with context parallelism: diffusers' FirstBlockCache")


# -------------------------------------------------------------------------------------------------- the CLI


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("framepack.runner.load_components", refuse)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cp-size", "3"], "--cp-size: 3 ranks do not divide the transformer's 2 attention heads (Ulysses gives "
         "each rank heads/N of them); allowed: 2"),
        (["--cp-size", "0"], "--cp-size: must be 1 (one device) or more, got 0"),
        (["--cp-size", "2", "--cache", "fbc"], "cache: fbc cannot run with context parallelism: diffusers' "
         "FirstBlockCache decides from the first block's output"),
        (["--cp-size", "2", "--compile", "blocks"], "compile: 'blocks' cannot be combined with --cp-size"),
        (["--cp-size", "2", "--attention", "xformers"], "attention: xformers has no context-parallel kernel in "
         "diffusers; with --cp-size use sdpa, flash, sage"),
        (["--cp-size", "64", "--device", "cuda"], "--cp-size: 64 ranks need 64 GPUs"),
        (["--cp-size", "2", "--seeds", "2"], "--cp-size: runs one video per command; leave out --batch"),
    ],
)  # fmt: skip
def test_cli_refuses_a_gang_it_cannot_run_before_any_model_loads(
    framepack_cli, tiny_model_dir: Path, tmp_path: Path, no_model_loads, flags: list[str], message: str
):
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    result = framepack_cli(*JOB, "--output-dir", str(tmp_path / "out"), *flags, home=home)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}")
    assert not (tmp_path / "out").exists()


def test_cli_job_on_two_ranks_matches_one_process(
    framepack_cli, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The whole tiny job (T2V start frame and a 6-step section, TeaCache skipping calls) on a gang of 2 gloo
    ranks (this process is rank 0) against one process: section latents within 1e-4, frames within one level,
    the same calls skipped, and only rank 0's files."""
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    latents: list[dict] = []
    run = Runner.run

    def recording_run(self, request, *args, **kwargs):
        record = {}
        latents.append(record)
        kwargs["on_section_latents"] = lambda key, value: record.__setitem__(key, value.clone())
        return run(self, request, *args, **kwargs)

    monkeypatch.setattr(Runner, "run", recording_run)
    one = framepack_cli(*JOB, "--output-dir", str(tmp_path / "one"), home=home)
    assert one.returncode == 0, one.stderr
    threads = torch.get_num_threads()
    two = framepack_cli(*JOB, "--output-dir", str(tmp_path / "two"), "--cp-size", "2", home=home)
    assert two.returncode == 0, two.stderr
    assert "context parallelism: 2 ranks on cpu, cpu" in two.stdout
    assert not dist.is_initialized() and torch.get_num_threads() == threads  # rank 0 left the group, threads back

    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == ["v.json", "v.safetensors"]
    single, gang = latents
    assert sorted(single, key=str) == sorted(gang, key=str) == [0, "start"]
    for key in single:
        assert (single[key] - gang[key]).abs().max().item() <= 1e-4
    frames_one = read_raw_frames(tmp_path / "one" / "v.safetensors").astype(np.int16)
    frames_two = read_raw_frames(tmp_path / "two" / "v.safetensors").astype(np.int16)
    assert frames_one.shape == frames_two.shape == (13, 128, 128, 3)
    assert np.abs(frames_one - frames_two).max() <= 1
    timings = [json.loads((tmp_path / name / "v.json").read_text())["timings"] for name in ("one", "two")]
    assert timings[0]["cache_skipped_calls"] == timings[1]["cache_skipped_calls"] > 0
    assert timings[0]["transformer_calls"] == timings[1]["transformer_calls"] == 12


def test_cli_refuses_an_existing_filename_before_any_rank_starts(
    framepack_cli, tiny_model_dir: Path, tmp_path: Path, no_model_loads, monkeypatch: pytest.MonkeyPatch
):
    def no_spawn(*_args, **_kwargs):
        raise AssertionError("a rank was started")

    monkeypatch.setattr("framepack.gang.mp.get_context", no_spawn)
    home = tiny_home(tiny_model_dir, tmp_path / "home")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "v.json").write_text("{}")
    result = framepack_cli(*JOB, "--output-dir", str(tmp_path / "out"), "--cp-size", "2", home=home)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: --filename: v.json exists already in")
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["v.json"]
