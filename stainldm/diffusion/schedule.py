"""The discrete noise schedule of the diffusion model: ᾱ_t, the forward process and its targets.

Notation (Kingma et al. 2021; Lu et al. 2022): ``α_t = sqrt(ᾱ_t)`` and ``σ_t = sqrt(1 − ᾱ_t)``,
so that ``x_t = α_t x_0 + σ_t ε`` (variance preserving, ``α_t² + σ_t² = 1``) and the half log-SNR
is ``λ_t = log(α_t / σ_t)``. Timesteps are integers ``0 … T−1`` with ``T = train_steps``; ``t = 0``
is the least noisy training step, not clean data.

    schedule = NoiseSchedule(ScheduleConfig(zero_terminal_snr=True))
    t = schedule.sample_timesteps(z0.shape[0], generator=g, device=z0.device)   # (B,)
    z_t = schedule.q_sample(z0, t, noise)
    loss = mse(model(z_t, t), schedule.v_target(z0, t, noise))

``alphas_cumprod`` is kept in float64 on the CPU; the methods return tensors on the caller's
device and dtype, or exact Python floats when given an ``int`` timestep (what the samplers use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch

from stainldm.errors import ConfigError, InputError

_KINDS = ("scaled_linear", "linear", "cosine")
_PREDICTIONS = ("v", "epsilon")
_COSINE_OFFSET = 0.008  # s of Nichol & Dhariwal 2021, eq. 17
_COSINE_MAX_BETA = 0.999  # their clipping of β_t, which keeps the schedule from ending in a singularity


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise schedule and what the denoiser predicts.

    Attributes:
        kind: ``scaled_linear`` (Stable Diffusion: β linear in sqrt), ``linear`` (Ho et al. 2020)
            or ``cosine`` (Nichol & Dhariwal 2021; ignores ``beta_start``/``beta_end``).
        train_steps: number of discrete training timesteps T.
        beta_start: β_0 of the linear kinds.
        beta_end: β_{T−1} of the linear kinds.
        zero_terminal_snr: rescale so that ᾱ_{T−1} = 0 (Lin et al. 2024, Alg. 1): the last training
            step is pure noise, so sampling from N(0, I) matches training. Needs ``prediction: v``.
        prediction: what the denoiser outputs: ``v`` (Salimans & Ho 2022) or ``epsilon``.
    """

    kind: Literal["scaled_linear", "linear", "cosine"] = "scaled_linear"
    train_steps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    zero_terminal_snr: bool = False
    prediction: Literal["v", "epsilon"] = "v"


def check_schedule_config(cfg: ScheduleConfig, *, where: str = "schedule") -> None:
    """Checks the values of a schedule config.

    Args:
        cfg: the config.
        where: dotted prefix of its keys in error messages (``"ldm.schedule"``).

    Raises:
        ConfigError: naming the key, on a bad value or combination.
    """
    if cfg.kind not in _KINDS:
        raise ConfigError(f"{where}.kind '{cfg.kind}' is not one of {', '.join(_KINDS)}")
    if cfg.prediction not in _PREDICTIONS:
        raise ConfigError(f"{where}.prediction '{cfg.prediction}' is not one of {', '.join(_PREDICTIONS)}")
    if isinstance(cfg.train_steps, bool) or not isinstance(cfg.train_steps, int) or cfg.train_steps < 2:
        raise ConfigError(f"{where}.train_steps ({cfg.train_steps!r}) must be an integer of at least 2; "
                          "1000 is usual")
    if not 0.0 < cfg.beta_start < 1.0:
        raise ConfigError(f"{where}.beta_start ({cfg.beta_start}) must be in (0, 1); 0.00085 is usual")
    if not 0.0 < cfg.beta_end < 1.0:
        raise ConfigError(f"{where}.beta_end ({cfg.beta_end}) must be in (0, 1); 0.012 is usual")
    if cfg.beta_end < cfg.beta_start:
        raise ConfigError(f"{where}.beta_end ({cfg.beta_end}) must not be smaller than "
                          f"{where}.beta_start ({cfg.beta_start})")
    if cfg.zero_terminal_snr and cfg.prediction == "epsilon":
        raise ConfigError(f"{where}.zero_terminal_snr needs {where}.prediction: v; ε-prediction cannot "
                          "recover x_0 at SNR 0 (Lin et al. 2024, sec. 3.2)")


def alphas_cumprod(cfg: ScheduleConfig) -> torch.Tensor:
    """ᾱ_t for t = 0 … T−1, float64 on the CPU, of shape (T,). The config must be valid."""
    n = cfg.train_steps
    if cfg.kind == "linear":  # Ho et al. 2020
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)
    elif cfg.kind == "scaled_linear":  # Rombach et al. 2022 (Stable Diffusion)
        betas = torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, n, dtype=torch.float64) ** 2
    else:  # Nichol & Dhariwal 2021, eq. 17: ᾱ(u) ∝ cos²((u + s)/(1 + s) · π/2), u = t/T
        u = torch.arange(n + 1, dtype=torch.float64) / n
        f = torch.cos((u + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=_COSINE_MAX_BETA)
    abar = torch.cumprod(1 - betas, dim=0)  # (T,)
    if cfg.zero_terminal_snr:
        abar = _rescale_zero_terminal_snr(abar)
    return abar


def _rescale_zero_terminal_snr(abar: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Alg. 1: shift and scale sqrt(ᾱ) so its last value is 0, keeping the first."""
    sqrt_abar = abar.sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    sqrt_abar[-1] = 0.0  # exact, whatever the rounding above
    return sqrt_abar**2


class NoiseSchedule:
    """The forward process q(x_t | x_0) of a config, and the conversions the samplers need.

    Attributes:
        config: the (validated) config.
        train_steps: T.
        prediction: ``"v"`` or ``"epsilon"``.
        alphas_cumprod: ᾱ_t, float64 on the CPU, shape (T,).
    """

    def __init__(self, config: ScheduleConfig | None = None, *, where: str = "schedule"):
        """Builds the schedule.

        Args:
            config: the config; defaults to ``ScheduleConfig()``.
            where: dotted prefix of the config's keys in error messages.

        Raises:
            ConfigError: on a bad config value.
        """
        config = ScheduleConfig() if config is None else config
        check_schedule_config(config, where=where)
        self.config = config
        self.train_steps = config.train_steps
        self.prediction = config.prediction
        self.alphas_cumprod = alphas_cumprod(config)  # (T,) float64, CPU
        abar = self.alphas_cumprod
        self._alpha_sigma64 = torch.stack([abar.sqrt(), (1 - abar).sqrt()], dim=1)  # (T, 2)
        self._lambda64 = 0.5 * (abar.log() - (1 - abar).log())  # (T,); −inf where ᾱ = 0
        self._tables: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.config})"

    # -- coefficients ---------------------------------------------------------------------------
    def _table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(α_t, σ_t) as a (T, 2) table on ``device`` in ``dtype``, cast once from float64 (MPS has
        no float64) so that indexing with a device tensor never syncs with the host."""
        key = (device, dtype)
        if key not in self._tables:
            self._tables[key] = self._alpha_sigma64.to(device=device, dtype=dtype)
        return self._tables[key]

    @overload
    def alpha_sigma(self, t: int, like: torch.Tensor | None = None) -> tuple[float, float]: ...

    @overload
    def alpha_sigma(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def alpha_sigma(self, t, like=None):
        """α_t = sqrt(ᾱ_t) and σ_t = sqrt(1 − ᾱ_t).

        Args:
            t: an int timestep, or an int tensor of timesteps of shape (B,).
            like: for a tensor ``t``, the tensor (B, ...) the coefficients will multiply; they take its
                device and dtype and the shape (B, 1, ..., 1).

        Returns:
            ``(α_t, σ_t)``: Python floats (float64-exact) for an int ``t``, else two tensors
            broadcastable to ``like``.
        """
        if not isinstance(t, torch.Tensor):
            a, s = self._alpha_sigma64[self._check_t(t)].tolist()
            return a, s
        if like is None:
            raise TypeError("alpha_sigma: pass `like` (the tensor to broadcast to) with a tensor t")
        table = self._table(like.device, like.dtype)  # (T, 2)
        coef = table[t.to(device=like.device, dtype=torch.long)]  # (B, 2) or (2,)
        shape = (*t.shape, *([1] * (like.ndim - t.ndim)))
        return coef[..., 0].reshape(shape), coef[..., 1].reshape(shape)

    @overload
    def lambda_(self, t: int) -> float: ...

    @overload
    def lambda_(self, t: torch.Tensor) -> torch.Tensor: ...

    def lambda_(self, t):
        """Half log-SNR λ_t = log(α_t / σ_t) (Lu et al. 2022, sec. 2), decreasing in t.

        ``-inf`` at ᾱ_t = 0 (zero terminal SNR).

        Args:
            t: an int timestep, or an int tensor of timesteps.

        Returns:
            a Python float for an int ``t``, else a float32 tensor shaped like ``t`` on its device.
        """
        if not isinstance(t, torch.Tensor):
            a, s = self.alpha_sigma(t)
            return -math.inf if a == 0.0 else math.log(a) - math.log(s)
        return self._lambda64[t.to("cpu", torch.long)].to(device=t.device, dtype=torch.float32)

    def _check_t(self, t: int) -> int:
        if isinstance(t, bool) or not 0 <= int(t) < self.train_steps or int(t) != t:
            raise IndexError(f"timestep {t!r} is outside 0 … {self.train_steps - 1}")
        return int(t)

    # -- forward process and targets ------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draws x_t ~ q(x_t | x_0) = N(α_t x_0, σ_t² I) with the given noise (Ho et al. 2020, eq. 4).

        Args:
            x0: clean samples (B, ...).
            t: int timesteps (B,).
            noise: ε ~ N(0, I), shaped like ``x0``.

        Returns:
            x_t = α_t x_0 + σ_t ε, shaped like ``x0``.
        """
        alpha, sigma = self.alpha_sigma(t, x0)  # (B, 1, ..., 1) each
        return alpha * x0 + sigma * noise

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = α_t ε − σ_t x_0 (Salimans & Ho 2022, sec. 4 / app. D).

        Args:
            x0: clean samples (B, ...).
            t: int timesteps (B,).
            noise: the ε used in :meth:`q_sample`, shaped like ``x0``.

        Returns:
            v, shaped like ``x0``.
        """
        alpha, sigma = self.alpha_sigma(t, x0)
        return alpha * noise - sigma * x0

    def predict_x0_eps(self, x_t: torch.Tensor, t: int | torch.Tensor, model_out: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Converts the denoiser's output at x_t into estimates of x_0 and ε.

        v: x_0 = α_t x_t − σ_t v and ε = σ_t x_t + α_t v (Salimans & Ho 2022, app. D; uses
        α² + σ² = 1). ε: x_0 = (x_t − σ_t ε) / α_t (Ho et al. 2020, eq. 15).

        Args:
            x_t: noisy samples (B, ...).
            t: an int timestep shared by the batch, or int timesteps (B,).
            model_out: the denoiser's output (v or ε, per ``prediction``), shaped like ``x_t``.

        Returns:
            ``(x0, eps)``, each shaped like ``x_t``.
        """
        alpha, sigma = self.alpha_sigma(t, x_t)
        if self.prediction == "v":
            return alpha * x_t - sigma * model_out, sigma * x_t + alpha * model_out
        return (x_t - sigma * model_out) / alpha, model_out

    # -- timesteps ------------------------------------------------------------------------------
    def sample_timesteps(self, batch: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
        """Training timesteps t ~ U{0, …, T−1}.

        Args:
            batch: number of timesteps B.
            generator: random source; drawn on its device, then moved (as diffusers' ``randn_tensor``).
            device: where the result goes; defaults to the generator's device, else the CPU.

        Returns:
            int64 tensor (B,).
        """
        draw_on = generator.device if generator is not None else device
        t = torch.randint(0, self.train_steps, (batch,), generator=generator, device=draw_on)
        return t if device is None else t.to(device)

    def inference_timesteps(self, n: int) -> torch.Tensor:
        """``n`` sampling timesteps, strictly decreasing, with "trailing" spacing.

        t_i = round(T − i·T/n) − 1 for i = 0 … n−1 (Lin et al. 2024, sec. 3.3, Table 2), so the first
        step is always t = T−1, the step training saw with the least signal (pure noise under zero
        terminal SNR), and the last is t = T/n − 1.

        Args:
            n: number of steps, 1 … T.

        Returns:
            int64 CPU tensor (n,).

        Raises:
            InputError: naming ``steps`` when ``n`` is out of range.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.train_steps:
            raise InputError(f"`steps` ({n!r}) must be an integer from 1 to the model's "
                             f"{self.train_steps} training steps; 10-50 is usual")
        i = torch.arange(n, dtype=torch.float64)
        return (torch.round(self.train_steps - i * (self.train_steps / n)) - 1).to(torch.long)
