"""TransformerCache on the tiny model: skipping within tolerance, defaults, per-section reset, branches, removal,
MagCache calibration and ratio files.

The driver below samples FramePack F1 sections the way generate.py does (context -> velocity function -> UniPC)
at a tiny size (8x8 latents, 3-frame window, 10 steps; well under 0.1 s a section), with every transformer call
wrapped in `cache.call(branch)`. Thresholds used for the "skips and stays close" checks, and what they measured
on the tiny model (two sections, each compared with the uncached section):
    teacache 0.15 (default): 4/10 calls skipped per section, rel L2 0.012-0.014, max abs 0.06-0.09
    magcache 0.06 (default, packaged F1 ratios): 5/10 skipped, rel L2 0.012-0.014, max abs 0.05-0.07
    fbc 0.3 (its default 0.05 skips nothing on random weights): 5/10 skipped, rel L2 0.004-0.012, max abs 0.03-0.06
Tolerance asserted: rel L2 <= 0.05 and max abs <= 0.3. For scale: the latents' std is ~1.2, and the same section
with another noise seed differs by rel L2 ~1.4 (max abs ~6); a cache that drops the residual fails the check.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from diffusers import HunyuanVideoFramepackTransformer3DModel
from helpers import TransformerCalls

from framepack.encoders import encode_prompt
from framepack.models.caches import (
    CACHE_METHODS,
    DEFAULT_THRESHOLDS,
    PACKAGED_RATIOS,
    CacheStats,
    TransformerCache,
    load_mag_ratios,
    save_mag_ratios,
)
from framepack.sampling.context import forward_context
from framepack.sampling.denoise import Conditioning, make_velocity_fn
from framepack.sampling.samplers import get_sampler
from framepack.sampling.schedule import flow_sigmas, sequence_length

STEPS = 10
WINDOW = 3
LATENT = 8  # latent height and width
GUIDANCE = 10.0
SKIPPING = {"teacache": 0.15, "magcache": 0.06, "fbc": 0.3}  # thresholds at which each method skips here
MAX_ABS, MAX_REL_L2 = 0.3, 0.05


class Stop(Exception):
    """Raised from the step callback to end a section early (a cancelled section)."""


class BranchingTransformer:
    """Stands in for the transformer in make_velocity_fn: wraps each call in `cache.call(branch)`.

    make_velocity_fn calls cond then uncond in every step when real CFG is on, so the branch alternates.
    """

    def __init__(self, transformer, cache: TransformerCache | None, cfg: bool, label_uncond: str = "uncond"):
        self.transformer, self.cache, self.cfg, self.label_uncond = transformer, cache, cfg, label_uncond
        self.calls = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def parameters(self):
        return self.transformer.parameters()

    def __call__(self, **kwargs):
        branch = self.label_uncond if self.cfg and self.calls % 2 else "cond"
        self.calls += 1
        if self.cache is None:
            return self.transformer(**kwargs)
        with self.cache.call(branch):
            return self.transformer(**kwargs)


class Driver:
    """Samples F1 sections of the tiny model; section k's history is everything sampled before it."""

    def __init__(self, components):
        self.components = components
        self.transformer = components.transformer
        device, dtype = components.device, self.transformer.dtype
        vision = torch.randn(
            1, 8, components.image_encoder.config.hidden_size, generator=torch.Generator().manual_seed(5)
        )
        self.positive = Conditioning(
            encode_prompt(components, "a red ball rolls", device, dtype), vision.to(device, dtype)
        )
        self.negative = Conditioning(encode_prompt(components, "blurry", device, dtype), vision.to(device, dtype))
        channels = components.latent_channels
        self.shape = (1, channels, WINDOW, LATENT, LATENT)
        self.prefix = torch.randn(1, channels, 1, LATENT, LATENT, generator=torch.Generator().manual_seed(7))

    def empty_history(self) -> torch.Tensor:
        return self.prefix[:, :, :0]

    def section(
        self, cache, history, seed, cfg=1.0, stop_after=None, label_uncond="uncond", transformer=None
    ) -> torch.Tensor:
        """Sample one section (seeded noise); `stop_after` steps raises Stop, like a cancel mid-section."""
        context = forward_context(self.prefix, history, WINDOW)
        noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(seed))
        sigmas = flow_sigmas(STEPS, None, sequence_length(WINDOW, LATENT, LATENT))
        proxy = BranchingTransformer(transformer or self.transformer, cache, cfg > 1.0, label_uncond)
        negative = self.negative if cfg > 1.0 else None
        velocity = make_velocity_fn(proxy, context, self.positive, negative, GUIDANCE, cfg)

        def callback(step, _total, _x, _x0):
            if stop_after is not None and step + 1 >= stop_after:
                raise Stop

        with torch.no_grad():
            return get_sampler("unipc")(velocity, noise, sigmas, callback=callback)

    def run(self, cache, seeds=(1, 2), cfg=1.0, transformer=None) -> list[torch.Tensor]:
        """Sample consecutive sections, calling start_section() before each one (the integration contract)."""
        history, outputs = self.empty_history(), []
        for seed in seeds:
            if cache is not None:
                cache.start_section()
            latents = self.section(cache, history, seed, cfg, transformer=transformer)
            outputs.append(latents)
            history = torch.cat([history, latents], dim=2)
        return outputs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are far too small to share out; with one thread the timings stay steady on a busy
    2-core machine (two threads there can stall each other for seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def driver(tiny_components) -> Driver:
    return Driver(tiny_components)


@pytest.fixture
def make_cache(driver):
    """Builds TransformerCaches on the tiny transformer and always removes them (the model is session-wide)."""
    made: list[TransformerCache] = []

    def make(method: str, threshold: float = 0.0, **kwargs) -> TransformerCache:
        if method == "magcache" and not kwargs.get("calibrate"):
            kwargs.setdefault("mag_ratios", load_mag_ratios("f1"))
        cache = TransformerCache(driver.transformer, method, STEPS, threshold, **kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.remove()


def section_b_on_a_fresh_cache(driver, make_cache, method, threshold, cfg=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(history, result): section B (seed 2) after section A (seed 1, uncached), sampled on a brand-new cache:
    what B must give whatever an earlier section left in a cache."""
    first = driver.section(None, driver.empty_history(), 1)
    history = torch.cat([driver.empty_history(), first], dim=2)
    fresh = make_cache(method, threshold)
    fresh.start_section()
    expected = driver.section(fresh, history, 2, cfg=cfg)
    fresh.remove()
    return history, expected


def differences(result: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, relative L2 difference)."""
    return float((result - reference).abs().max()), float((result - reference).norm() / reference.norm())


def hooks_of(transformer) -> list:
    """Every hook on the transformer's modules: diffusers hook names and torch forward (pre-)hooks."""
    found: list = [("cache enabled", getattr(transformer, "is_cache_enabled", False))]
    for name, module in transformer.named_modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.hooks:
            found.append((name, "diffusers", tuple(registry._hook_order)))
        if module._forward_hooks or module._forward_pre_hooks:
            found.append((name, "torch", tuple(module._forward_hooks), tuple(module._forward_pre_hooks)))
    return found


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["teacache", "magcache", "fbc"])
def test_each_method_skips_and_stays_close_to_the_uncached_result(driver, make_cache, method):
    reference = driver.run(None)
    cache = make_cache(method, SKIPPING[method])
    results = driver.run(cache)

    assert cache.stats.calls == 2 * STEPS
    assert cache.section_stats.calls == STEPS
    assert 0 < cache.section_stats.skipped < STEPS
    assert cache.stats.skipped > cache.section_stats.skipped  # both sections skipped some calls
    for result, expected in zip(results, reference):
        max_abs, rel_l2 = differences(result, expected)
        skipped = f"{cache.stats.skipped}/{cache.stats.calls}"
        print(f"{method} @ {cache.threshold}: skipped {skipped}, max abs {max_abs:.4f}, rel L2 {rel_l2:.4f}")
        assert 0.0 < max_abs <= MAX_ABS  # > 0: the skipped calls really came from the cache
        assert rel_l2 <= MAX_REL_L2


def test_real_cfg_counts_both_branches(driver, make_cache):
    cache = make_cache("teacache", SKIPPING["teacache"])
    driver.run(cache, cfg=3.0)
    assert cache.stats.calls == 2 * 2 * STEPS  # two sections, two calls per step
    assert cache.section_stats.calls == 2 * STEPS and cache.section_stats.skipped > 0


def test_no_cache_method_counts_calls_and_skips_nothing(driver, make_cache):
    reference = driver.run(None)
    cache = make_cache("none")
    results = driver.run(cache, cfg=1.0)
    assert cache.stats == CacheStats(calls=2 * STEPS, skipped=0)
    assert all(torch.equal(a, b) for a, b in zip(results, reference))


@pytest.mark.parametrize("method", ["teacache", "magcache", "fbc"])
def test_threshold_zero_means_the_methods_default(driver, make_cache, method):
    cache = make_cache(method, 0.0)
    assert cache.threshold == DEFAULT_THRESHOLDS[method]
    if method == "teacache":
        head = driver.transformer.transformer_blocks[0]._diffusers_hook.get_hook("framepack_teacache_head")
        assert head.threshold == DEFAULT_THRESHOLDS[method]
    else:  # the diffusers config really got it
        assert driver.transformer._cache_config.threshold == DEFAULT_THRESHOLDS[method]
    cache.remove()
    assert make_cache("none", 0.0).threshold == 0.0
    explicit = make_cache(method, 0.5)
    assert explicit.threshold == 0.5


def test_huge_threshold_teacache_computes_only_first_and_last_step_of_each_section(driver, make_cache):
    cache = make_cache("teacache", 1e9)
    history = driver.empty_history()
    for seed in (1, 2, 3):
        cache.start_section()
        latents = driver.section(cache, history, seed, cfg=3.0)
        history = torch.cat([history, latents], dim=2)
        # per branch: steps - 2 skipped (first and last step always compute)
        assert cache.section_stats == CacheStats(calls=2 * STEPS, skipped=2 * (STEPS - 2))
    assert cache.stats == CacheStats(calls=3 * 2 * STEPS, skipped=3 * 2 * (STEPS - 2))


def test_huge_threshold_fbc_computes_only_the_first_call_of_each_section(driver, make_cache):
    """With a fresh state per section the first call has nothing to compare with, so it computes."""
    cache = make_cache("fbc", 1e9)
    driver.run(cache, seeds=(1, 2, 3), cfg=3.0)
    assert cache.section_stats == CacheStats(calls=2 * STEPS, skipped=2 * (STEPS - 1))
    assert cache.stats.skipped == 3 * 2 * (STEPS - 1)


@pytest.mark.parametrize("method", ["teacache", "magcache", "fbc"])
def test_start_section_gives_section_b_exactly_the_result_of_a_fresh_cache(driver, make_cache, method):
    history, expected = section_b_on_a_fresh_cache(driver, make_cache, method, SKIPPING[method], cfg=3.0)

    cache = make_cache(method, SKIPPING[method])
    cache.start_section()
    driver.section(cache, driver.empty_history(), 1, cfg=3.0)
    assert cache.live_contexts == 2  # cond and uncond hold state ...
    cache.start_section()
    assert cache.live_contexts == 0  # ... which start_section releases
    result = driver.section(cache, history, 2, cfg=3.0)
    assert torch.equal(result, expected)
    assert cache.section_stats.skipped > 0


def test_without_start_section_fbc_state_leaks_into_the_next_section(driver, make_cache):
    """The FACTS.md hazard: FirstBlockCache compares the new section's first call with the old section's."""
    history, expected = section_b_on_a_fresh_cache(driver, make_cache, "fbc", 1e9)

    cache = make_cache("fbc", 1e9)
    cache.start_section()
    driver.section(cache, driver.empty_history(), 1)
    leaked = driver.section(cache, history, 2)  # no start_section(): the first call is answered from section A
    assert cache.section_stats == CacheStats(calls=2 * STEPS, skipped=2 * STEPS - 1)
    assert differences(leaked, expected)[0] > 1e-3


def test_without_start_section_a_cancelled_section_shifts_teacache_steps(driver, make_cache):
    """A section that ended early leaves TeaCache's step counter mid-way; start_section() puts it back."""
    history, expected = section_b_on_a_fresh_cache(driver, make_cache, "teacache", 1e9)

    for reset in (False, True):
        cache = make_cache("teacache", 1e9)
        cache.start_section()
        with pytest.raises(Stop):
            driver.section(cache, driver.empty_history(), 1, stop_after=4)
        if reset:
            cache.start_section()
        result = driver.section(cache, history, 2)
        assert torch.equal(result, expected) is reset
        cache.remove()


@pytest.mark.parametrize("method", ["teacache", "magcache", "fbc"])
def test_cond_and_uncond_keep_separate_states(driver, make_cache, method):
    """Interleaved cond/uncond calls give exactly what each branch gives when run alone."""
    with TransformerCalls(driver.transformer) as recorded:
        driver.section(None, driver.empty_history(), 1, cfg=3.0)
    cond_inputs, uncond_inputs = recorded.calls[0::2], recorded.calls[1::2]
    assert len(cond_inputs) == len(uncond_inputs) == STEPS

    def replay(cache, schedule):
        outputs = {"cond": [], "uncond": []}
        for branch, kwargs in schedule:
            with torch.no_grad(), cache.call(branch):
                outputs[branch].append(driver.transformer(**kwargs)[0])
        return outputs

    alone = {}
    for branch, inputs in (("cond", cond_inputs), ("uncond", uncond_inputs)):
        cache = make_cache(method, SKIPPING[method])
        cache.start_section()
        alone[branch] = replay(cache, [(branch, kwargs) for kwargs in inputs])[branch]
        assert cache.section_stats.skipped > 0
        cache.remove()

    cache = make_cache(method, SKIPPING[method])
    cache.start_section()
    interleaved = replay(
        cache, [(b, k) for pair in zip(cond_inputs, uncond_inputs) for b, k in zip(("cond", "uncond"), pair)]
    )
    for branch in ("cond", "uncond"):
        assert all(torch.equal(a, b) for a, b in zip(interleaved[branch], alone[branch])), branch


def test_one_shared_state_for_both_branches_would_differ(driver, make_cache):
    """Control for the branch test: labelling uncond as "cond" (one shared state) changes the result."""
    separate = make_cache("teacache", SKIPPING["teacache"])
    separate.start_section()
    expected = driver.section(separate, driver.empty_history(), 1, cfg=3.0)
    separate.remove()
    shared = make_cache("teacache", SKIPPING["teacache"])
    shared.start_section()
    result = driver.section(shared, driver.empty_history(), 1, cfg=3.0, label_uncond="cond")
    assert not torch.equal(result, expected)


@pytest.mark.parametrize("method", list(CACHE_METHODS) + ["magcache-calibrate"])
def test_remove_restores_bit_identical_uncached_output(driver, make_cache, method):
    transformer = driver.transformer
    hooks_before = hooks_of(transformer)
    history = torch.cat([driver.empty_history(), driver.section(None, driver.empty_history(), 1)], dim=2)
    before = driver.section(None, history, 2, cfg=3.0)

    if method == "magcache-calibrate":
        cache = make_cache("magcache", calibrate=True)
    else:
        cache = make_cache(method, SKIPPING.get(method, 0.0))
    cache.start_section()
    cached = driver.section(cache, history, 2, cfg=3.0)
    assert (cache.stats.skipped > 0) is (method in SKIPPING)
    assert torch.equal(cached, before) is (method not in SKIPPING)
    cache.remove()
    cache.remove()  # idempotent

    assert hooks_of(transformer) == hooks_before
    assert torch.equal(driver.section(None, history, 2, cfg=3.0), before)
    with pytest.raises(RuntimeError, match="removed"), cache.call("cond"):
        pass
    make_cache(method if method in CACHE_METHODS else "magcache").remove()  # another cache can be installed


@pytest.mark.parametrize("method", ["teacache", "magcache", "fbc"])
def test_caches_give_the_same_result_under_block_offloading(driver, tiny_model_dir, method):
    """diffusers' group offload (the "blocks" offload mode) wraps every block and brings its weights in only when
    the block runs; TeaCache then decides on the head block's own norm1 output. Same result, same skips."""
    transformer = HunyuanVideoFramepackTransformer3DModel.from_pretrained(tiny_model_dir / "transformer")
    ratios = {"mag_ratios": load_mag_ratios("f1")} if method == "magcache" else {}
    with TransformerCache(transformer, method, STEPS, SKIPPING[method], **ratios) as plain:
        expected = driver.run(plain, cfg=3.0, transformer=transformer)

    cpu = torch.device("cpu")
    transformer.enable_group_offload(cpu, offload_device=cpu, offload_type="block_level", num_blocks_per_group=1)
    norm1_calls = []
    spy = transformer.transformer_blocks[0].norm1.register_forward_hook(lambda *_: norm1_calls.append(1))
    try:
        with TransformerCache(transformer, method, STEPS, SKIPPING[method], **ratios) as cache:
            results = driver.run(cache, cfg=3.0, transformer=transformer)
    finally:
        spy.remove()
    assert cache.stats == plain.stats and cache.stats.skipped > 0
    assert all(torch.equal(a, b) for a, b in zip(results, expected))
    if method == "teacache":  # the head block ran once per call, and its norm1 was never called on its own
        assert len(norm1_calls) == cache.stats.calls
    assert transformer.transformer_blocks[0]._diffusers_hook._hook_order == ["group_offloading"]  # ours are off


def test_bad_arguments_are_refused_with_the_allowed_values(driver, make_cache):
    hooks_before = hooks_of(driver.transformer)
    with pytest.raises(ValueError) as error:
        TransformerCache(driver.transformer, "deepcache", STEPS)
    for name in CACHE_METHODS:
        assert name in str(error.value)
    with pytest.raises(ValueError, match="mag_ratios"):
        TransformerCache(driver.transformer, "magcache", STEPS)
    with pytest.raises(ValueError, match=">= 0"):
        TransformerCache(driver.transformer, "teacache", STEPS, -1.0)
    cache = make_cache("teacache")
    with pytest.raises(ValueError, match="already"):
        TransformerCache(driver.transformer, "fbc", STEPS)
    with pytest.raises(ValueError, match="cond, uncond"), cache.call("negative"):
        pass
    cache.remove()
    assert hooks_of(driver.transformer) == hooks_before  # the refused constructions left nothing behind


def test_magcache_calibration_measures_one_ratio_list_per_section(driver, make_cache):
    reference = driver.run(None, seeds=(1, 2), cfg=3.0)
    cache = make_cache("magcache", calibrate=True)
    results = driver.run(cache, seeds=(1, 2), cfg=3.0)

    assert cache.stats == CacheStats(calls=2 * 2 * STEPS, skipped=0)
    assert all(torch.equal(a, b) for a, b in zip(results, reference))  # calibrating changes nothing
    assert len(cache.calibration) == 2
    for ratios in cache.calibration:
        assert len(ratios) == STEPS  # cond calls only
        assert ratios[0] == 1.0
        assert all(math.isfinite(r) and 0.1 < r < 10 for r in ratios[1:])
        assert len(set(ratios)) > 2
    assert cache.calibration[0] != cache.calibration[1]

    # measured ratios drive MagCache directly
    calibrated = make_cache("magcache", 0.5, mag_ratios=cache.calibration[0])
    driver.run(calibrated)
    assert calibrated.stats.skipped > 0


def test_mag_ratio_files_round_trip_and_the_user_file_wins(tmp_path, caplog):
    packaged = json.loads(PACKAGED_RATIOS.read_text(encoding="utf-8"))
    for variant in ("bidirectional", "f1"):
        assert variant in packaged["source"]
        assert len(packaged[variant]) == 25 and packaged[variant][0] == 1.0
        assert load_mag_ratios(variant) == packaged[variant]
        assert load_mag_ratios(variant, tmp_path / "nothing-here") == packaged[variant]

    home = tmp_path / "home"
    measured = [1.0, 1.2345678901234567, 0.987654321, 0.5]
    path = save_mag_ratios("f1", measured, home)
    assert path == home / "magcache_ratios.json"
    assert load_mag_ratios("f1", home) == measured  # exact round trip, and it wins over the packaged list
    assert load_mag_ratios("bidirectional", home) == packaged["bidirectional"]  # not calibrated: packaged
    save_mag_ratios("bidirectional", [1.0, 2.0], home)
    assert load_mag_ratios("f1", home) == measured  # saving one variant keeps the other
    assert load_mag_ratios("bidirectional", home) == [1.0, 2.0]

    path.write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="framepack.models.caches"):
        assert load_mag_ratios("f1", home) == packaged["f1"]
    assert "ignoring" in caplog.text

    with pytest.raises(ValueError, match="bidirectional, f1"):
        load_mag_ratios("f2")
    with pytest.raises(ValueError, match="positive"):
        save_mag_ratios("f1", [1.0, -1.0], home)
