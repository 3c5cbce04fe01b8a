"""The optimiser's learning-rate schedule and the EMA of the weights."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from stainldm.train.config import TrainConfig


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """The learning-rate factor of each step (for ``LambdaLR``): linear warm-up over
    ``optim.warmup_steps``, then cosine decay to ``optim.min_lr_ratio`` at ``steps``."""
    o = cfg.optim
    warm, total = max(1, o.warmup_steps), max(1, cfg.steps)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay · ema + (1 − decay) · model`` for the parameters; buffers are copied."""
    params = list(zip(ema.parameters(), model.parameters(), strict=True))
    torch._foreach_lerp_([e for e, _ in params], [p.detach() for _, p in params], 1 - decay)  # one kernel per group
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)
