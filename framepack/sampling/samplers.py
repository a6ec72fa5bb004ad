"""Flow-matching samplers (Euler and FramePack's UniPC) driven by a velocity function.

Convention: x_sigma = (1 - sigma) * x0 + sigma * noise and the model predicts v = noise - x0, so the data
estimate is x0 = x - sigma * v and the probability-flow ODE is dx/dsigma = v = (x - x0) / sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""velocity_fn(x, sigma) -> v, with sigma a 1-element tensor (shape [1])."""

StepCallback = Callable[[int, int, Tensor, Tensor], None]
"""callback(step_index, total_steps, x, x0_estimate), called after every step; raising aborts sampling."""

Sampler = Callable[..., Tensor]

UNIPC_VARIANTS = ("bh1", "bh2")


def _prepare_sigmas(x: Tensor, sigmas: Tensor) -> Tensor:
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D tensor with at least 2 values, got shape {tuple(sigmas.shape)}")
    return sigmas.to(device=x.device, dtype=torch.float32)


def sample_euler(velocity_fn: VelocityFn, x: Tensor, sigmas: Tensor, callback: StepCallback | None = None) -> Tensor:
    """First-order Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i, one model call per step.

    The update is written exactly like diffusers' FlowMatchEulerDiscreteScheduler.step (upcast the sample
    to float32, add dt * v, cast back to the model output's dtype) so both give identical results.
    """
    sigmas = _prepare_sigmas(x, sigmas)
    total = len(sigmas) - 1
    for i in range(total):
        v = velocity_fn(x, sigmas[i : i + 1])
        sample = x.to(torch.float32)
        dt = sigmas[i + 1] - sigmas[i]
        x = (sample + dt * v).to(v.dtype)
        if callback is not None:
            callback(i, total, x, sample - sigmas[i] * v.to(torch.float32))
    return x


def _unipc_coefficients(h: float, rks: list[float], variant: str) -> tuple[list[float], list[float], float]:
    """Predictor rhos, corrector rhos and B(h) of one UniPC step in data-prediction form.

    Computed in float64 on the CPU: they are a handful of scalars, and phi_k(-h) loses digits to cancellation
    when h is small, which float32 would amplify.
    """
    order = len(rks) + 1
    hh = -h  # data prediction evaluates the phi functions at -h
    b_h = hh if variant == "bh1" else math.expm1(hh)

    # h_phi_k = hh * phi_{k+1}(hh), via phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, starting from phi_1 = expm1(z) / z.
    h_phi_k = math.expm1(hh) / hh - 1.0
    factorial = 1.0
    b = []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial

    nodes = rks + [1.0]
    rows = [[r ** (k - 1) for r in nodes] for k in range(1, order + 1)]

    if order == 1:
        rhos_p = []
    elif order == 2:
        rhos_p = [0.5]
    else:
        r_p = torch.tensor([row[:-1] for row in rows[:-1]], dtype=torch.float64)
        rhos_p = torch.linalg.solve(r_p, torch.tensor(b[:-1], dtype=torch.float64)).tolist()

    if order == 1:
        rhos_c = [0.5]
    else:
        rhos_c = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
        rhos_c = rhos_c.tolist()
    return rhos_p, rhos_c, b_h


def sample_unipc(
    velocity_fn: VelocityFn,
    x: Tensor,
    sigmas: Tensor,
    callback: StepCallback | None = None,
    variant: str = "bh1",
) -> Tensor:
    """FramePack's flow-matching UniPC (multistep predictor-corrector, order up to 3, in x0 space).

    Time is sigma with lambda = -log(sigma); for the ODE dx/dsigma = (x - x0) / sigma this is the exact
    exponential-integrator form. Step 0 only evaluates the model; step i = 1 .. n-1 predicts x at sigma_i,
    evaluates the model there and corrects with that evaluation (no extra call). sigma_n (normally 0) is never
    evaluated: the last data estimate (at sigma_{n-1}) is returned, so there are exactly n = len(sigmas) - 1
    model calls. The callback gets the corrected x and the data estimate of each step.
    """
    if variant not in UNIPC_VARIANTS:
        raise ValueError(f"Unknown UniPC variant {variant!r}; allowed: {', '.join(UNIPC_VARIANTS)}")
    sigmas = _prepare_sigmas(x, sigmas)
    sigma_values = sigmas.double().cpu().tolist()
    total = len(sigmas) - 1
    order = min(3, total - 1)
    x = x.to(torch.float32)

    def data_estimate(sample: Tensor, i: int) -> Tensor:
        v = velocity_fn(sample, sigmas[i : i + 1])
        return sample - sigmas[i] * v.to(torch.float32)

    x0_history = [data_estimate(x, 0)]
    lambda_history = [-math.log(sigma_values[0])]
    if callback is not None:
        callback(0, total, x, x0_history[-1])

    for i in range(1, total):
        step_order = min(i, order)
        lambda_s, x0_s = lambda_history[-1], x0_history[-1]
        lambda_t = -math.log(sigma_values[i])
        h = lambda_t - lambda_s

        # Scaled differences to the older estimates (rk < 0: they lie further back in lambda).
        rks = [(lambda_history[-(k + 1)] - lambda_s) / h for k in range(1, step_order)]
        diffs = [(x0_history[-(k + 1)] - x0_s) / rk for k, rk in zip(range(1, step_order), rks)]
        rhos_p, rhos_c, b_h = _unipc_coefficients(h, rks, variant)

        # First-order exponential-integrator step, shared by predictor and corrector.
        x_base = (sigma_values[i] / sigma_values[i - 1]) * x - math.expm1(-h) * x0_s

        x_pred = x_base
        for rho, d in zip(rhos_p, diffs):
            x_pred = x_pred - (b_h * rho) * d
        x0_t = data_estimate(x_pred, i)

        x = x_base - (b_h * rhos_c[-1]) * (x0_t - x0_s)
        for rho, d in zip(rhos_c[:-1], diffs):
            x = x - (b_h * rho) * d

        x0_history = (x0_history + [x0_t])[-order:]
        lambda_history = (lambda_history + [lambda_t])[-order:]
        if callback is not None:
            callback(i, total, x, x0_t)

    return x0_history[-1]


SAMPLERS: Mapping[str, Sampler] = MappingProxyType({"unipc": sample_unipc, "euler": sample_euler})


def get_sampler(name: str) -> Sampler:
    """Look a sampler up by name, with a helpful error for typos coming from requests or the UI."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown sampler {name!r}; allowed: {', '.join(sorted(SAMPLERS))}") from None
