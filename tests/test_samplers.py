"""Sigma schedule and flow-matching samplers, checked against diffusers and an independent float64 UniPC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from framepack.sampling.samplers import SAMPLERS, get_sampler, sample_euler, sample_unipc
from framepack.sampling.schedule import auto_shift_mu, flow_sigmas, sequence_length

# ---------------------------------------------------------------------------------------------------------------
# Toy models
# ---------------------------------------------------------------------------------------------------------------

_DIM = 8


def _toy_constants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed random matrix, offset and noise; A and b are float32-representable so both precisions share them."""
    rng = np.random.default_rng(1234)
    a = rng.normal(size=(_DIM, _DIM)).astype(np.float32).astype(np.float64) / math.sqrt(_DIM)
    b = (0.3 * rng.normal(size=_DIM)).astype(np.float32).astype(np.float64)
    noise = rng.normal(size=(4, _DIM)).astype(np.float32)
    return a, b, noise


_A64, _B64, _NOISE = _toy_constants()


def _x0_true_np(x: np.ndarray, s: float) -> np.ndarray:
    """Smooth nonlinear 'denoiser' that also depends on sigma."""
    return np.tanh(x @ _A64) * (1.0 + 0.5 * s) + _B64


def _nonlinear_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Float32 velocity whose data estimate x - sigma * v is _x0_true."""
    assert sigma.shape == (1,)
    a = torch.from_numpy(_A64).to(torch.float32)
    b = torch.from_numpy(_B64).to(torch.float32)
    x = x.to(torch.float32)
    x0 = torch.tanh(x @ a) * (1.0 + 0.5 * sigma) + b
    return (x - x0) / sigma


def _noise() -> torch.Tensor:
    return torch.from_numpy(_NOISE.copy())


# ---------------------------------------------------------------------------------------------------------------
# Reference UniPC, float64 numpy, from Zhao et al. 2023 ("UniPC"), data-prediction form.
#
# The flow-matching ODE written with the data estimate D(x, sigma) = x - sigma * v is dx/dsigma = (x - D) / sigma,
# i.e. the paper's diffusion ODE with alpha_t = 1, sigma_t = sigma and lambda = log(alpha/sigma) = -log(sigma).
# Its exact solution is x_t = e^{-h} x_s + sum_k h^{k+1} phi_{k+1}(-h) D^{(k)}(lambda_s), h = lambda_t - lambda_s.
# UniP/UniC replace the derivatives by differences D1_m = (D_m - D_s) / r_m at nodes r_m = (lambda_m - lambda_s) / h:
#     x_t = e^{-h} x_s + h phi_1(-h) D_s + B(h) sum_m a_m D1_m,   with  R a = h g / B(h),
#     R[k, m] = r_m^k,  g_k = k! phi_{k+1}(-h),  B(h) = h (bh1) or 1 - e^{-h} (bh2);
# the predictor uses the old nodes only (a = 1/2 at order 2), the corrector also the node r = 1 of the new
# evaluation (a = 1/2 at order 1).
# ---------------------------------------------------------------------------------------------------------------


def _phi_all(z: float, kmax: int) -> list[float]:
    """phi_0 .. phi_kmax at z with phi_0 = e^z and phi_{k+1}(z) = (phi_k(z) - 1/k!) / z."""
    phis = [math.exp(z)]
    for k in range(kmax):
        phis.append((phis[k] - 1.0 / math.factorial(k)) / z)
    return phis


def reference_unipc(x0_fn, x_init: np.ndarray, sigmas: np.ndarray, variant: str = "bh1") -> np.ndarray:
    sig = np.asarray(sigmas, dtype=np.float64)
    n = len(sig) - 1
    p_max = min(3, n - 1)
    lam = np.array([-math.log(sig[j]) for j in range(n)])  # sigma_n is never used
    x = np.array(x_init, dtype=np.float64)
    data = np.zeros((n,) + x.shape)
    data[0] = x0_fn(x, sig[0])
    for i in range(1, n):
        p = min(i, p_max)
        h = lam[i] - lam[i - 1]
        nodes = np.array([(lam[i - 1 - m] - lam[i - 1]) / h for m in range(1, p)] + [1.0])
        phis = _phi_all(-h, p + 1)
        g = np.array([math.factorial(k) * phis[k + 1] for k in range(1, p + 1)])
        big_b = h if variant == "bh1" else 1.0 - math.exp(-h)
        rhs = h * g / big_b
        vander = np.array([[nodes[m] ** k for m in range(p)] for k in range(p)])

        if p == 1:
            a_pred = np.zeros(0)
            a_corr = np.array([0.5])
        else:
            a_pred = np.array([0.5]) if p == 2 else np.linalg.solve(vander[: p - 1, : p - 1], rhs[: p - 1])
            a_corr = np.linalg.solve(vander, rhs)

        d1 = [(data[i - 1 - m] - data[i - 1]) / nodes[m - 1] for m in range(1, p)]
        x_lin = math.exp(-h) * x + h * phis[1] * data[i - 1]

        pred_sum = np.zeros_like(x)
        for m in range(p - 1):
            pred_sum += a_pred[m] * d1[m]
        x_pred = x_lin + big_b * pred_sum
        data[i] = x0_fn(x_pred, sig[i])

        corr_sum = a_corr[p - 1] * (data[i] - data[i - 1])
        for m in range(p - 1):
            corr_sum += a_corr[m] * d1[m]
        x = x_lin + big_b * corr_sum
    return data[n - 1]


# ---------------------------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 7, 25, 50])
@pytest.mark.parametrize("shift", [None, 3.0])
def test_flow_sigmas_shape_and_endpoints(steps, shift):
    sigmas = flow_sigmas(steps, shift, seq_len=20000)
    assert sigmas.dtype == torch.float32
    assert sigmas.shape == (steps + 1,)
    assert not torch.isnan(sigmas).any()
    assert sigmas[0].item() == 1.0
    assert sigmas[-1].item() == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all()), "sigmas must be strictly decreasing"


def test_flow_sigmas_fixed_shift_by_hand():
    # mu = ln 3: sigma(t) = 3 / (3 + 1/t - 1) -> t = 0.75, 0.5, 0.25 give 0.9, 0.75, 0.5
    sigmas = flow_sigmas(4, 3.0, seq_len=123456)
    expected = torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0])
    assert torch.allclose(sigmas, expected, atol=1e-7, rtol=0), sigmas
    # the same as diffusers' static shift formula shift * t / (1 + (shift - 1) * t)
    t = torch.linspace(1, 0, 11, dtype=torch.float64)
    static = (5.0 * t / (1 + 4.0 * t)).float()
    assert torch.allclose(flow_sigmas(10, 5.0, seq_len=1), static, atol=1e-7, rtol=0)


def test_auto_shift_mu():
    assert auto_shift_mu(256) == pytest.approx(0.5, abs=1e-12)
    assert auto_shift_mu(4096) == pytest.approx(1.15, abs=1e-12)
    assert auto_shift_mu(2176) == pytest.approx(0.825, abs=1e-12)  # halfway along the line
    assert auto_shift_mu(10**6) == pytest.approx(math.log(7.0), abs=1e-12)
    assert auto_shift_mu(10**6, max_exp_shift=3.0) == pytest.approx(math.log(3.0), abs=1e-12)


@pytest.mark.parametrize("shift", [None, 0.0])
def test_flow_sigmas_auto_shift_uses_sequence_length(shift):
    mu = 1.15  # seq_len 4096
    t = torch.linspace(1, 0, 9, dtype=torch.float64)[:-1]
    expected = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    assert torch.allclose(flow_sigmas(8, shift, seq_len=4096)[:-1].double(), expected, atol=1e-7, rtol=0)


def test_sequence_length():
    assert sequence_length(9, 80, 80) == 9 * 80 * 80 // 4
    assert sequence_length(1, 64, 96, patch_size=1) == 64 * 96


def _diffusers_scheduler(steps: int, mu: float) -> FlowMatchEulerDiscreteScheduler:
    """diffusers' scheduler on the same schedule (it appends the final 0 itself, so it gets t = 1 .. 1/steps)."""
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    scheduler.set_timesteps(sigmas=np.linspace(1, 0, steps + 1)[:-1], mu=mu)
    return scheduler


@pytest.mark.parametrize("steps", [1, 5, 25])
@pytest.mark.parametrize("shift,seq_len", [(None, 256), (None, 3000), (None, 50000), (3.0, 0), (10.0, 0)])
def test_flow_sigmas_match_diffusers(steps, shift, seq_len):
    mu = math.log(shift) if shift else auto_shift_mu(seq_len)
    ref = _diffusers_scheduler(steps, mu).sigmas
    ours = flow_sigmas(steps, shift, seq_len)
    diff = (ours - ref).abs().max().item()
    assert ours.shape == ref.shape
    assert diff <= 1e-6, f"max abs diff {diff:.3g} vs diffusers exceeds 1e-6"


# ---------------------------------------------------------------------------------------------------------------
# Euler vs diffusers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("mu", [0.5, math.log(7.0)])
def test_euler_matches_diffusers_step_loop(steps, mu):
    scheduler = _diffusers_scheduler(steps, mu)
    x = _noise()
    for i, t in enumerate(scheduler.timesteps):
        v = _nonlinear_velocity(x, scheduler.sigmas[i : i + 1])
        x = scheduler.step(v, t, x, return_dict=False)[0]

    ours = sample_euler(_nonlinear_velocity, _noise(), scheduler.sigmas)
    diff = (ours - x).abs().max().item()
    assert diff <= 1e-6, f"Euler max abs diff {diff:.3g} vs diffusers step loop exceeds 1e-6"
    assert torch.equal(ours, x), "Euler is written to be bit-identical to diffusers' step"

    # and on our own schedule (equal to diffusers' to ~1e-7)
    ours_own = sample_euler(_nonlinear_velocity, _noise(), flow_sigmas(steps, math.exp(mu), 0))
    diff_own = (ours_own - x).abs().max().item()
    assert diff_own <= 1e-5, f"Euler on flow_sigmas: max abs diff {diff_own:.3g} exceeds 1e-5"


# ---------------------------------------------------------------------------------------------------------------
# UniPC vs the float64 reference
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 3, 5, 25])
@pytest.mark.parametrize("shift", [None, 3.0])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_matches_float64_reference(steps, shift, variant):
    sigmas = flow_sigmas(steps, shift, seq_len=6000)
    ours = sample_unipc(_nonlinear_velocity, _noise(), sigmas, variant=variant).double().numpy()
    ref = reference_unipc(_x0_true_np, _NOISE.astype(np.float64), sigmas.double().numpy(), variant=variant)
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel <= 1e-5, f"UniPC {variant} steps={steps}: relative max diff {rel:.3g} vs float64 reference > 1e-5"


def test_unipc_single_step_returns_first_data_estimate():
    sigmas = flow_sigmas(1, 3.0, 0)
    out = sample_unipc(_nonlinear_velocity, _noise(), sigmas)
    expected = torch.from_numpy(_x0_true_np(_NOISE.astype(np.float64), 1.0)).float()
    assert torch.allclose(out, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Calls, callbacks, cancellation, names
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["euler", "unipc"])
@pytest.mark.parametrize("steps", [1, 2, 6])
def test_model_calls_and_callback(name, steps):
    calls = []
    seen = []

    def velocity(x, sigma):
        calls.append(sigma.item())
        return _nonlinear_velocity(x, sigma)

    def callback(i, total, x, x0):
        assert x.shape == x0.shape == _NOISE.shape
        seen.append((i, total))

    sigmas = flow_sigmas(steps, None, 4096)
    out = get_sampler(name)(velocity, _noise(), sigmas, callback=callback)
    assert out.shape == _NOISE.shape and out.dtype == torch.float32
    assert len(calls) == steps
    assert calls == pytest.approx(sigmas[:-1].tolist()), "each sigma except the final 0 is evaluated once"
    assert seen == [(i, steps) for i in range(steps)]


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_callback_exception_stops_sampling(name):
    class Cancelled(Exception):
        pass

    calls = []

    def velocity(x, sigma):
        calls.append(sigma.item())
        return _nonlinear_velocity(x, sigma)

    def callback(i, total, x, x0):
        if i == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        get_sampler(name)(velocity, _noise(), flow_sigmas(10, 3.0, 0), callback=callback)
    assert len(calls) == 3, "no model call after the callback raised"


def test_sampler_registry_and_errors():
    assert set(SAMPLERS) == {"unipc", "euler"}
    assert get_sampler("unipc") is sample_unipc and get_sampler("euler") is sample_euler
    with pytest.raises(ValueError, match="euler.*unipc"):
        get_sampler("dpm++")
    with pytest.raises(ValueError, match="bh1, bh2"):
        sample_unipc(_nonlinear_velocity, _noise(), flow_sigmas(3, 3.0, 0), variant="bh3")
    with pytest.raises(ValueError):
        sample_euler(_nonlinear_velocity, _noise(), torch.ones(1))


# ---------------------------------------------------------------------------------------------------------------
# Convergence on a problem with an exact solution
# ---------------------------------------------------------------------------------------------------------------

# Data x0 ~ N(m, c^2) per element. Then E[x0 | x_sigma] is linear in x and the flow ODE maps the noise z to
# x_sigma = (1 - sigma) m + sqrt((1 - sigma)^2 c^2 + sigma^2) z; the exact sample (sigma = 0) is m + c z.
_M, _C = 0.7, 1.0


def _gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.double()
    var = (1 - s) ** 2 * _C**2 + s**2
    x0 = _M + (1 - s) * _C**2 / var * (x.double() - (1 - s) * _M)
    return ((x.double() - x0) / s).float()


def _gaussian_exact(z: torch.Tensor, sigma: float) -> torch.Tensor:
    return (1 - sigma) * _M + math.sqrt((1 - sigma) ** 2 * _C**2 + sigma**2) * z.double()


def _state_errors(steps: int, sigma_last: float) -> tuple[float, float]:
    """Errors of the Euler and UniPC states at sigma_last, the last sigma before the final 0.

    UniPC's output is its data estimate at sigma_{n-1}, i.e. one Euler jump from there to 0, so its order shows
    in the state it reaches at sigma_{n-1} (callback of the last step), not in the jump.
    """
    sigmas = torch.cat([torch.linspace(1.0, sigma_last, steps), torch.zeros(1)])
    states: dict[tuple[str, int], torch.Tensor] = {}

    def keep(name: str):
        def callback(i: int, total: int, x: torch.Tensor, x0: torch.Tensor) -> None:
            states[(name, i)] = x.double()

        return callback

    z = _noise()
    sample_euler(_gaussian_velocity, z, sigmas, callback=keep("euler"))
    sample_unipc(_gaussian_velocity, z, sigmas, callback=keep("unipc"))
    exact = _gaussian_exact(z, sigmas[-2].item())
    err_euler = (states[("euler", steps - 2)] - exact).abs().max().item()  # Euler arrives at sigma_{n-1} one step early
    err_unipc = (states[("unipc", steps - 1)] - exact).abs().max().item()
    return err_euler, err_unipc


def test_unipc_is_higher_order_than_euler():
    err_euler_10, err_unipc_10 = _state_errors(10, 0.2)
    err_euler_20, err_unipc_20 = _state_errors(20, 0.2)
    assert err_euler_10 > 1e-2  # the problem is not trivially solved by a first-order method
    assert err_unipc_10 * 10 < err_euler_10, f"UniPC error {err_unipc_10:.3g} not 10x below Euler {err_euler_10:.3g}"
    assert 1.5 < err_euler_10 / err_euler_20 < 2.5, (
        f"Euler should be first order: {err_euler_10:.3g} -> {err_euler_20:.3g}"
    )
    assert err_unipc_10 / err_unipc_20 > 6, f"UniPC 10 -> 20 steps only {err_unipc_10:.3g} -> {err_unipc_20:.3g}"


def test_unipc_final_sample_beats_euler():
    z = _noise()
    exact = _gaussian_exact(z, 0.0)
    sigmas = flow_sigmas(10, 3.0, 0)
    err_euler = (sample_euler(_gaussian_velocity, z, sigmas).double() - exact).abs().max().item()
    err_unipc = (sample_unipc(_gaussian_velocity, z, sigmas).double() - exact).abs().max().item()
    assert err_unipc * 2 < err_euler, f"UniPC final error {err_unipc:.3g} not 2x below Euler {err_euler:.3g}"
