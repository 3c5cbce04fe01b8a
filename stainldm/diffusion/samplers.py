"""Samplers: pure functions that integrate the reverse process with a denoiser callable.

A sampler only sees ``model_fn(x_t, t) -> model_out`` (v or ε, per ``schedule.prediction``), where
``t`` is an int64 tensor (B,) on ``x_t``'s device. Whatever wraps the network (classifier-free
guidance, fusing overlapping windows of a whole-slide canvas) lives in that callable, so the same
sampler serves a tile batch and a canvas.

Both samplers visit the timesteps of ``schedule.inference_timesteps(steps)`` (trailing spacing, first
step at T−1) and take their last step to clean data (α = 1, σ = 0), so ``steps`` is the number of
network evaluations (NFE) and the result is the x_0 estimate.

    x0 = sample("dpmpp_2m", model_fn, schedule, noise, steps=10)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch

from stainldm.diffusion.schedule import NoiseSchedule
from stainldm.errors import InputError

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, int, torch.Tensor], None]

SAMPLERS = ("ddim", "dpmpp_2m")


def sample(name: str, model_fn: ModelFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int,
           eta: float = 0.0, generator: torch.Generator | None = None, callback: Callback | None = None,
           ) -> torch.Tensor:
    """Samples x_0 with the sampler called ``name``.

    Args:
        name: ``"ddim"`` or ``"dpmpp_2m"``.
        model_fn: the denoiser callable, see the module docstring.
        schedule: the noise schedule the denoiser was trained with.
        x_T: starting noise (B, ...), usually N(0, I).
        steps: number of steps (= network evaluations), 1 … ``schedule.train_steps``.
        eta: DDIM's stochasticity (0 = deterministic); must be 0 for ``dpmpp_2m``.
        generator: random source for DDIM's noise when ``eta > 0``.
        callback: ``callback(i, t, x)`` after each step, e.g. to advance a progress bar.

    Returns:
        the x_0 estimate, shaped like ``x_T``, in its dtype.

    Raises:
        InputError: naming ``sampler``, ``steps`` or ``eta`` on a bad value.
    """
    if name == "ddim":
        return ddim_sample(model_fn, schedule, x_T, steps=steps, eta=eta, generator=generator, callback=callback)
    if name == "dpmpp_2m":
        if eta != 0.0:
            raise InputError(f"`eta` ({eta}) only applies to the ddim sampler; dpmpp_2m is deterministic")
        return dpmpp_2m_sample(model_fn, schedule, x_T, steps=steps, generator=generator, callback=callback)
    raise InputError(f"`sampler` '{name}' is not one of {', '.join(SAMPLERS)}; dpmpp_2m needs the fewest steps")


def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int | None = None,
                eta: float = 0.0, generator: torch.Generator | None = None, callback: Callback | None = None,
                timesteps: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12): x_s = α_s x̂_0 + sqrt(σ_s² − c²) ε̂ + c z, z ~ N(0, I).

    ``c = η · sqrt((σ_s² / σ_t²)(1 − α_t² / α_s²))`` (their eq. 16): ``eta = 0`` is the deterministic
    probability-flow sampler (the first-order DPM-Solver), ``eta = 1`` is DDPM's ancestral step.

    Args:
        model_fn: the denoiser callable.
        schedule: the noise schedule.
        x_T: starting noise (B, ...).
        steps: number of steps; give this or ``timesteps``.
        eta: stochasticity η ≥ 0.
        generator: random source for z when ``eta > 0`` (the default generator if None); unused at 0.
        callback: ``callback(i, t, x)`` after step i, which evaluated the model at timestep t.
        timesteps: explicit strictly decreasing timesteps instead of ``steps`` (e.g. another library's
            grid); the step after the last goes to clean data.

    Returns:
        the x_0 estimate, shaped like ``x_T``, in its dtype.

    Raises:
        InputError: on bad ``steps``, ``timesteps`` or ``eta``.
    """
    if not eta >= 0.0:
        raise InputError(f"`eta` ({eta}) must be ≥ 0: 0 is deterministic DDIM, 1 is DDPM-like")
    ts = _timesteps(schedule, steps, timesteps)
    x = x_T.to(torch.float32)
    for i, t in enumerate(ts):
        x0, eps = schedule.predict_x0_eps(x, t, _evaluate(model_fn, x, t, x_T.dtype))
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        alpha_s, sigma_s = schedule.alpha_sigma(ts[i + 1]) if i + 1 < len(ts) else (1.0, 0.0)
        c = eta * sigma_s / sigma_t * math.sqrt(max(0.0, 1.0 - (alpha_t / alpha_s) ** 2))
        x = alpha_s * x0 + math.sqrt(max(0.0, sigma_s**2 - c**2)) * eps  # (B, ...)
        if c > 0.0:
            x = x + c * _randn(x, generator)
        if callback is not None:
            callback(i, t, x)
    return x.to(x_T.dtype)


def dpmpp_2m_sample(model_fn: ModelFn, schedule: NoiseSchedule, x_T: torch.Tensor, *, steps: int | None = None,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    timesteps: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): a second-order multistep solver
    of the probability-flow ODE in data prediction and half log-SNR λ.

    With h_i = λ_{t_i} − λ_{t_{i−1}} and r_i = h_{i−1} / h_i, each step is
    ``x_{t_i} = (σ_{t_i}/σ_{t_{i−1}}) x_{t_{i−1}} − α_{t_i} (e^{−h_i} − 1) D_i`` with
    ``D_i = (1 + 1/(2 r_i)) x̂_0^{(i−1)} − 1/(2 r_i) x̂_0^{(i−2)}``. Steps where a neighbouring h is
    infinite are first order (D = x̂_0, i.e. DDIM): the first step, the step out of SNR 0 under zero
    terminal SNR (λ = −∞), and the last step into clean data (σ = 0, λ = +∞), whose result is the
    last x̂_0, as in k-diffusion and diffusers (``final_sigmas_type="zero"``).

    Args:
        model_fn: the denoiser callable.
        schedule: the noise schedule.
        x_T: starting noise (B, ...).
        steps: number of steps (= NFE); give this or ``timesteps``.
        generator: unused (the solver is deterministic); accepted so all samplers share a signature.
        callback: ``callback(i, t, x)`` after step i, which evaluated the model at timestep t.
        timesteps: explicit strictly decreasing timesteps instead of ``steps``.

    Returns:
        the x_0 estimate, shaped like ``x_T``, in its dtype.

    Raises:
        InputError: on bad ``steps`` or ``timesteps``.
    """
    del generator
    ts = _timesteps(schedule, steps, timesteps)
    x = x_T.to(torch.float32)
    x0_prev, h_prev = None, math.inf
    for i, t in enumerate(ts):
        x0, _ = schedule.predict_x0_eps(x, t, _evaluate(model_fn, x, t, x_T.dtype))
        if i + 1 == len(ts):
            x = x0  # into σ = 0: e^{−h} = 0 and σ_s/σ_t = 0, so the step returns D = x̂_0
        else:
            alpha_s, sigma_s = schedule.alpha_sigma(ts[i + 1])
            _, sigma_t = schedule.alpha_sigma(t)
            h = schedule.lambda_(ts[i + 1]) - schedule.lambda_(t)  # > 0; +inf out of SNR 0
            d = x0
            if x0_prev is not None and math.isfinite(h_prev) and math.isfinite(h):
                half_inv_r = h / (2.0 * h_prev)  # 1 / (2 r_i)
                d = (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev
            x = (sigma_s / sigma_t) * x - alpha_s * math.expm1(-h) * d  # (B, ...)
            x0_prev, h_prev = x0, h
        if callback is not None:
            callback(i, t, x)
    return x.to(x_T.dtype)


def _timesteps(schedule: NoiseSchedule, steps: int | None, timesteps: Sequence[int] | torch.Tensor | None
               ) -> list[int]:
    """The timesteps to visit, as Python ints, from ``steps`` or checked explicit ``timesteps``."""
    if timesteps is None:
        if steps is None:
            raise InputError("`steps` is missing: give the number of sampling steps (10-50 is usual)")
        return schedule.inference_timesteps(steps).tolist()
    ts = [int(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps)]
    if steps is not None and steps != len(ts):
        raise InputError(f"`steps` ({steps}) disagrees with the {len(ts)} explicit timesteps; give one of them")
    bad_range = any(not 0 <= t < schedule.train_steps for t in ts)
    if not ts or bad_range or any(a <= b for a, b in itertools.pairwise(ts)):
        raise InputError(f"timesteps {ts} must be non-empty, strictly decreasing and within "
                         f"0 … {schedule.train_steps - 1}")
    return ts


def _evaluate(model_fn: ModelFn, x: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
    """The model output at (x, t) in float32; the model sees x in the caller's dtype."""
    t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)  # (B,)
    return model_fn(x.to(dtype), t_batch).to(torch.float32)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, I) shaped like x, drawn on the generator's device and moved (diffusers' randn_tensor)."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device)
