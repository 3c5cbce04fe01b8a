"""DDP plumbing of the training loop: joining the process group, keeping the ranks' buffers equal."""

from __future__ import annotations

import torch
from torch import nn


def init_distributed(device: torch.device) -> None:
    """Joins the torchrun process group (NCCL on GPU, gloo on CPU) and pins this rank's GPU."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)


@torch.no_grad()
def average_buffers(module: nn.Module, world: int) -> None:
    """Averages the floating-point buffers (BatchNorm running statistics) of ``module`` over the
    ranks: each rank updated them from its own batch, and the ranks must stay identical."""
    import torch.distributed as dist

    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat)
    flat /= world
    for b, part in zip(buffers, flat.split([b.numel() for b in buffers]), strict=True):
        b.copy_(part.view_as(b))
