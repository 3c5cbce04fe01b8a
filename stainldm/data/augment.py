"""Paired augmentation: the same geometry on both tiles, photometric changes on the input only.

Geometry (flips, 90° rotations, a small affine) goes through one albumentations ``Compose`` with
the stained tile as an ``additional_target``, so both images move together. Photometric and
noise changes model scanner and staining-free variation of the *unstained* input only (gain,
offset and gamma per channel, Gaussian read noise); the target's colours stay untouched unless
``target_color`` is switched on (then a mild hue/saturation/brightness jitter, for labs that want
robustness to H&E batch colour).

Geometry runs per tile in the DataLoader workers on the stored integer dtypes; the photometric
input changes run per batch on the training device (:func:`jitter_batch`), which keeps worker
CPU and inter-process traffic low (benchmarks/loader.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation settings (probabilities and ranges).

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random multiples of 90° rotation.
        affine_p: probability of a small affine (rotation, scale) on both tiles.
        affine_deg, affine_scale: its ranges (±degrees, ±fraction).
        input_gain, input_offset: per-channel multiplicative and additive jitter (± fraction of range).
        input_gamma: ± gamma jitter per channel.
        input_noise: largest std of added Gaussian noise (fraction of range).
        target_color: mild colour jitter of the H&E target (off by default).
    """

    flips: bool = True
    rot90: bool = True
    affine_p: float = 0.3
    affine_deg: float = 5.0
    affine_scale: float = 0.05
    input_gain: float = 0.1
    input_offset: float = 0.05
    input_gamma: float = 0.1
    input_noise: float = 0.02
    target_color: bool = False


Pair = tuple[np.ndarray, np.ndarray]


def build_paired(cfg: AugmentConfig, *, seed: int) -> Callable[..., Pair]:
    """The geometric part: ``(unstained, stained) -> (unstained, stained)`` on ``H×W×C`` tiles of
    their stored dtypes (uint8/uint16: 2-4× less to move than float); deterministic for a seed.

    The returned function takes an optional ``seed=`` to reseed the draw for one item, so the
    augmentation of an item depends only on (run seed, epoch, index) — not on which worker or in
    which order it is loaded (exact resumption). The photometric part (:func:`jitter_batch`)
    runs on whole batches after normalisation, on the training device.
    """
    import albumentations as A

    geo = []
    if cfg.flips:
        geo += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if cfg.rot90:
        geo.append(A.RandomRotate90(p=0.5))
    if cfg.affine_p > 0:
        geo.append(A.Affine(rotate=(-cfg.affine_deg, cfg.affine_deg), scale=(1 - cfg.affine_scale, 1 + cfg.affine_scale),
                            border_mode=0, fill=0, fill_mask=0, p=cfg.affine_p))
    geometric = A.Compose(geo, additional_targets={"target": "image"}, seed=seed) if geo else None
    color = A.Compose([A.HueSaturationValue(5, 10, 5, p=0.5)], seed=seed + 1) if cfg.target_color else None

    def apply(unstained: np.ndarray, stained: np.ndarray, *, seed: int | None = None) -> Pair:
        if seed is not None:
            for compose, offset in ((geometric, 0), (color, 1)):
                if compose is not None:
                    # One generator shared by all transforms (set_random_seed would give each
                    # transform its own generator with the same seed: flips and rotations would
                    # then always fire together).
                    compose.set_random_state(np.random.default_rng(seed + offset), random.Random(seed + offset))
        if geometric is not None:
            out = geometric(image=unstained, target=stained)
            unstained, stained = out["image"], out["target"]
        if color is not None:
            stained = color(image=stained)["image"]
        return unstained, stained

    return apply


def jitter_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample, per-channel gain, offset and (for half the samples) gamma, then Gaussian noise.

    Runs on the batch's device (GPU during training), vectorised over the batch.

    Args:
        x: ``(B, C, H, W)`` float input normalised to ~[0, 1].
        cfg: ranges.
        generator: random source on ``x``'s device (seeded by the caller for reproducibility).

    Returns:
        the jittered batch, clipped to [0, 1.5] (new tensor).
    """
    b, c = x.shape[:2]

    def uniform(lo: float, hi: float, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) * (hi - lo) + lo

    y = x.clamp(0, 1.5)
    if cfg.input_gamma > 0:
        gamma = 1 + uniform(-cfg.input_gamma, cfg.input_gamma, (b, c, 1, 1))
        use = (torch.rand((b, 1, 1, 1), generator=generator, device=x.device) < 0.5).to(x.dtype)
        y = y.pow(use * gamma + (1 - use))
    y = y * (1 + uniform(-cfg.input_gain, cfg.input_gain, (b, c, 1, 1))) + uniform(
        -cfg.input_offset, cfg.input_offset, (b, c, 1, 1))
    if cfg.input_noise > 0:
        sigma = uniform(0, cfg.input_noise, (b, 1, 1, 1))
        y = y + sigma * torch.randn(y.shape, generator=generator, device=x.device, dtype=x.dtype)
    return y.clamp(0, 1.5)
