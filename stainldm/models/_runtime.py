"""Switches that change how a built model computes, never its weights: SDPA attention and
gradient checkpointing.

    set_sdpa(unet, True)                # MONAI attention blocks through scaled_dot_product_attention
    enable_checkpointing(unet)          # recompute each UNet block's activations in the backward pass
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def set_sdpa(module: nn.Module, enabled: bool = True) -> int:
    """Routes every MONAI self- and cross-attention block in ``module`` through
    ``torch.nn.functional.scaled_dot_product_attention`` (``enabled``) or MONAI's own einsum and
    softmax (the "math" path, which holds a (batch × heads × tokens × tokens) matrix).

    Both compute the same function (tests/models/test_runtime.py compares them); SDPA picks a fused
    kernel (flash or memory-efficient) whose memory grows with the tokens, not their square.

    Returns:
        the number of attention blocks switched.
    """
    n = 0
    for sub in module.modules():
        if hasattr(sub, "use_flash_attention") and hasattr(sub, "save_attn"):
            if enabled and (sub.save_attn or getattr(sub, "rel_positional_embedding", None) is not None):
                continue  # MONAI refuses SDPA for these; they keep the math path
            sub.use_flash_attention = enabled
            n += 1
    return n


_CHECKPOINTED: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward is recomputed in the backward pass while training."""
    if cls not in _CHECKPOINTED:
        def forward(self, *args, **kwargs):
            parent = super(sub, self).forward
            if self.training and torch.is_grad_enabled():
                return checkpoint(parent, *args, use_reentrant=False, **kwargs)
            return parent(*args, **kwargs)

        sub = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
        _CHECKPOINTED[cls] = sub
    return _CHECKPOINTED[cls]


def enable_checkpointing(module: nn.Module) -> int:
    """Gradient checkpointing for a MONAI ``AutoencoderKL`` (its own ``use_checkpoint``: encoder and
    decoder) or ``DiffusionModelUNet`` (each down, middle and up block, which MONAI 1.6 has no switch
    for), anywhere inside ``module``. The blocks change class, not weights: state dicts, copies and
    evaluation (no gradients) are as before.

    Returns:
        the number of parts checkpointed.
    """
    from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

    n = 0
    for sub in module.modules():
        if isinstance(sub, AutoencoderKL):
            sub.use_checkpoint = True
            n += 2
        elif isinstance(sub, DiffusionModelUNet):
            for block in (*sub.down_blocks, sub.middle_block, *sub.up_blocks):
                if type(block) not in _CHECKPOINTED.values():
                    block.__class__ = _checkpointed_class(type(block))
                n += 1
    return n
