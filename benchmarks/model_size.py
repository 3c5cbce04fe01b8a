"""Parameters, FLOPs per training step and estimated GPU memory of each workflow config's models.

    .venv/bin/python benchmarks/model_size.py [configs/lab-f4.yaml ...] [--device cuda|cpu] [--real]

Each model runs one training micro-step as ``stainldm.train.loop`` does: the autoencoder its forward
and L1 + KL loss (not the patch discriminator that ``adversarial_weight`` adds after its warm-up);
the LDM the frozen autoencoder's encode of the H&E tile (no grad), then
``LatentDiffusion.training_loss`` (condition stem, semantic backbone, denoiser); the baseline its
forward and L1 loss. Nothing is computed: models and inputs are fake tensors (``FakeTensorMode``:
shapes, dtypes and devices only), a few seconds per config on a CPU.

FLOPs per optimisation step: ``torch.utils.flop_counter.FlopCounterMode`` over forward + backward
at batch 1 (FLOPs are linear in the batch), times ``data.batch_size`` × ``optim.accumulate``. The
LDM's include the autoencoder's encode (forward only), also shown on its own.

Memory (training, per GPU): 20 bytes/param (fp32 weights, gradients, AdamW's two moments, EMA; the
LDM also holds the frozen autoencoder's fp32 weights, 4 bytes/param) + the activations saved for
backward at ``data.batch_size``: the bytes of the distinct storages that autograd's saved-tensor
hooks see in the forward pass, the parameters' own excluded, counted at batch 2 and 3 and
extrapolated linearly (a constant, such as autocast's bf16 copies of the weights, + a per-tile
term). They are counted on fake CUDA tensors, under CUDA autocast when the config trains in 16 bits
(``precision: bf16``, ``fp16`` or ``auto``, which is bf16 on a GPU; the old ``amp: true``), since
CUDA's autocast rules are not the CPU's: on CUDA GroupNorm runs in fp32, on a CPU in bf16.
Attention goes through the fused memory-efficient kernel a GPU runs (it saves q, k, v, the output
and a log-sum-exp): fake CUDA tensors, with no GPU to ask, would take the math path that keeps the
tokens × tokens matrix. ``--device cpu`` counts under the CPU's rules, ``--real`` on real tensors.
On an H200 (torch 2.11) fake and real CUDA counts agreed to the byte for all three configs, and the
allocator's peak in a real lab-f4 step (``max_memory_allocated``, AdamW and EMA on the GPU) was
1.04× the estimate for the autoencoder, 0.98× for the LDM and 1.26× for the baseline: the backward
pass's transient gradients come on top.

Where the config has ``train.gradient_checkpointing``, the autoencoder's activations with it on are
shown too. MONAI's ``use_checkpoint`` recomputes its encoder and decoder in the backward pass, so the
step then holds at its peak what is saved outside those two plus what the larger of them saves; the
same count gives both, each saved storage going to the part that was running when it was saved.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from _util import ROOT, table
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake
from torch.utils.flop_counter import FlopCounterMode

from stainldm.config import from_dict, load_yaml
from stainldm.errors import ConfigError
from stainldm.models.autoencoder import AutoencoderConfig, build_autoencoder, downsampling, kl_divergence
from stainldm.models.baseline import BaselineConfig, BaselineUNet
from stainldm.models.ldm import LatentDiffusion, LDMConfig
from stainldm.train.config import DataConfig, OptimConfig

CONFIGS = ("ci.yaml", "demo.yaml", "lab-f4.yaml")
C_IN = 2  # unstained channels: make-sample's autofluorescence (AF405, AF488)
TRAINED_BYTES = 20  # per parameter: fp32 weights, gradients, AdamW's two moments, EMA
FROZEN_BYTES = 4  # per parameter of the LDM's autoencoder: fp32 weights
AUTOCAST = {"bf16": torch.bfloat16, "auto": torch.bfloat16, "fp16": torch.float16, "fp32": None}
COUNT_BATCHES = (2, 3)  # not 1: there a reshape can be a view where a larger batch needs a copy
GiB = 1 << 30


@dataclass(frozen=True)
class Workflow:
    """What the count needs from a workflow config.

    Attributes:
        batch: ``data.batch_size``, tiles per micro-step.
        accumulate: ``optim.accumulate``, micro-steps per optimisation step.
        precision: ``fp32``, ``bf16`` or ``fp16`` (``train.precision``; ``auto`` is bf16 on a GPU).
        checkpointing: the config has a ``train.gradient_checkpointing`` switch.
    """

    name: str
    tile_px: int
    batch: int
    accumulate: int
    precision: str
    checkpointing: bool
    autoencoder: AutoencoderConfig
    ldm: LDMConfig
    baseline: BaselineConfig


def read_workflow(path: Path) -> Workflow:
    """The raw YAML's sections, each through its own dataclass: not through ``TrainConfig``, so that
    the old ``amp: true | false`` reads as well as ``precision``.

    Raises:
        ConfigError: on a missing or unreadable file, an unknown ``train.precision``, or a section
            its dataclass rejects.
    """
    data = load_yaml(path)
    train = data.get("train") or {}
    precision = train.get("precision") or ("bf16" if train.get("amp", True) else "fp32")
    if precision not in AUTOCAST:
        raise ConfigError(f"{path}: train.precision {precision!r} is not one of {', '.join(AUTOCAST)}")
    return Workflow(
        name=path.name,
        tile_px=int(((data.get("prepare") or {}).get("tiles") or {}).get("size", 256)),
        batch=from_dict(DataConfig, train.get("data"), where="train.data").batch_size,
        accumulate=from_dict(OptimConfig, train.get("optim"), where="train.optim").accumulate,
        precision="bf16" if precision == "auto" else precision,
        checkpointing="gradient_checkpointing" in train,
        autoencoder=from_dict(AutoencoderConfig, train.get("autoencoder"), where="train.autoencoder"),
        ldm=from_dict(LDMConfig, train.get("ldm"), where="train.ldm"),
        baseline=from_dict(BaselineConfig, train.get("baseline"), where="train.baseline"),
    )


@dataclass
class Model:
    """One model of a workflow and its training micro-step.

    Attributes:
        step: batch size -> the loss of one micro-step on random tiles.
        encode: the LDM's frozen-autoencoder part of ``step`` alone (forward, no grad).
        segments: the parts gradient checkpointing recomputes (autoencoder: encoder, decoder).
        frozen: frozen parameters the step needs on the GPU (the LDM's autoencoder).
    """

    name: str
    module: nn.Module
    step: Callable[[int], torch.Tensor]
    encode: Callable[[int], torch.Tensor] | None = None
    segments: tuple[nn.Module, ...] = ()
    frozen: int = 0


def build_models(wf: Workflow) -> list[Model]:
    """The autoencoder, LDM and baseline of ``wf`` on the default device (fake inside a
    ``FakeTensorMode``), their steps making inputs there too."""
    t, f = wf.tile_px, downsampling(wf.autoencoder)
    ae = build_autoencoder(wf.autoencoder)
    ldm = LatentDiffusion(wf.ldm, in_channels=C_IN, latent_channels=wf.autoencoder.latent_channels,
                          downsampling=f)
    base = BaselineUNet(wf.baseline, in_channels=C_IN)

    def ae_step(b: int) -> torch.Tensor:
        y = torch.randn(b, 3, t, t)
        recon, mu, sigma = ae(y)
        return (recon - y).abs().mean() + wf.autoencoder.kl_weight * kl_divergence(mu, sigma)  # as AutoencoderLoss

    def encode(b: int) -> torch.Tensor:
        with torch.no_grad():
            return ae.encode(torch.randn(b, 3, t, t))[0]  # (B, C_lat, t/f, t/f): μ

    def ldm_step(b: int) -> torch.Tensor:
        return ldm.training_loss(encode(b), torch.randn(b, C_IN, t, t))

    def base_step(b: int) -> torch.Tensor:
        return (base(torch.randn(b, C_IN, t, t)) - torch.randn(b, 3, t, t)).abs().mean()

    return [Model("autoencoder", ae, ae_step, segments=(ae.encoder, ae.decoder)),
            Model("ldm", ldm, ldm_step, encode=encode, frozen=_params(ae)),
            Model("baseline", base, base_step)]


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``fn()`` and, when its result needs a gradient, of its backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = fn()
        if out.requires_grad:
            out.backward()
    return counter.get_total_flops()


def saved_bytes(fn: Callable[[], torch.Tensor], *, model: nn.Module, segments: Sequence[nn.Module] = ()
                ) -> list[int]:
    """Bytes of the distinct storages that autograd saves for backward while ``fn()`` runs forward,
    ``model``'s parameters excluded.

    Returns:
        ``[saved outside the segments, in segments[0], in segments[1], ...]``; a storage saved in
        several places counts once, in the part running when it was first saved.
    """
    params = {_storage_key(p) for p in model.parameters()}
    held: dict[int, torch.Tensor] = {}  # holding each storage keeps its key from being reused
    parts = [0] * (len(segments) + 1)
    now = [0]  # index into parts of the segment running

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in params and key not in held:
            held[key] = t
            parts[now[0]] += t.untyped_storage().nbytes()
        return t

    hooks = [h for i, seg in enumerate(segments, 1)
             for h in (seg.register_forward_pre_hook(functools.partial(_point, now, i)),
                       seg.register_forward_hook(functools.partial(_point, now, 0)))]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
    finally:
        for h in hooks:
            h.remove()
    return parts


def _point(now: list[int], index: int, *_: Any) -> None:
    now[0] = index


def _storage_key(t: torch.Tensor) -> int:
    storage = t.untyped_storage()
    # A fake or meta storage has no data pointer, but is still one StorageImpl however many tensors
    # view it.
    return storage._cdata if is_fake(t) or t.is_meta else storage.data_ptr()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def at_batch(counts: Sequence[Sequence[int]], batch: int) -> list[float]:
    """Counts at the two batches of ``COUNT_BATCHES`` extrapolated linearly (a constant + a per-tile
    term) to ``batch``."""
    (b0, b1), (lo, hi) = COUNT_BATCHES, counts
    return [a + (b - a) / (b1 - b0) * (batch - b0) for a, b in zip(lo, hi, strict=True)]


@contextmanager
def autocast(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast(device, dtype)`` (nothing for None), also on fake CUDA tensors without a GPU,
    where ``torch.autocast("cuda")`` switches itself off: then by the same switches it sets."""
    if dtype is None:
        yield
    elif device == "cpu" or torch.cuda.is_available():
        with torch.autocast(device, dtype=dtype):
            yield
    else:
        was = torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        torch.set_autocast_enabled(device, True)
        torch.set_autocast_dtype(device, dtype)
        torch.autocast_increment_nesting()
        try:
            yield
        finally:
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()
            torch.set_autocast_enabled(device, was[0])
            torch.set_autocast_dtype(device, was[1])


def _efficient_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                         scale: float | None = None) -> torch.Tensor:
    """``scaled_dot_product_attention`` through the fused memory-efficient kernel, as on a GPU."""
    device = query.device.type
    if torch.is_autocast_enabled(device):  # what autocast does to scaled_dot_product_attention's inputs
        query, key, value = (x.to(torch.get_autocast_dtype(device)) for x in (query, key, value))
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, grad, dropout_p, is_causal, scale=scale)[0]


def fused_attention() -> AbstractContextManager[Any]:
    """Routes MONAI's attention (``torch.nn.functional.scaled_dot_product_attention``) through
    :func:`_efficient_attention` while it is entered."""
    return mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _efficient_attention)


def _autocast_step(step: Callable[[int], torch.Tensor], batch: int, device: str, dtype: torch.dtype | None
                   ) -> torch.Tensor:
    with autocast(device, dtype):
        return step(batch)


def measure(wf: Workflow, *, device: str = "cuda", real: bool = False) -> list[dict[str, Any]]:
    """One row per model of ``wf``: parameters, FLOPs per optimisation step, activations and
    memory at ``wf.batch`` (see the module docstring); ``device``: whose autocast rules and
    attention kernels the activations follow, on real tensors if ``real``."""
    # FlopCounterMode has no formula for the CPU's fused attention kernel: count the GPU's
    with FakeTensorMode(), torch.device("cpu"), fused_attention():
        flops = [(count_flops(lambda m=m: m.step(1)), count_flops(lambda m=m: m.encode(1)) if m.encode else None)
                 for m in build_models(wf)]
    fake = nullcontext() if real else FakeTensorMode()
    with fake, torch.device(device), fused_attention() if device == "cuda" and not real else nullcontext():
        models = build_models(wf)
        saved = [[saved_bytes(functools.partial(_autocast_step, m.step, b, device, AUTOCAST[wf.precision]),
                              model=m.module, segments=m.segments) for b in COUNT_BATCHES] for m in models]
    rows = []
    per_step = wf.batch * wf.accumulate
    for m, (f_step, f_encode), counts in zip(models, flops, saved, strict=True):
        parts = at_batch(counts, wf.batch)
        act = sum(parts)
        rows.append({
            "config": wf.name, "model": m.name, "params_M": _params(m.module) / 1e6, "precision": wf.precision,
            "gflops_step": f_step * per_step / 1e9, "encode_gflops_step": None if f_encode is None else f_encode * per_step / 1e9,
            "batch": str(wf.batch) if wf.accumulate == 1 else f"{wf.batch}x{wf.accumulate}",
            "act_gib": act / GiB,
            "act_ckpt_gib": (parts[0] + max(parts[1:])) / GiB if wf.checkpointing and m.segments else None,
            "mem_gib": (TRAINED_BYTES * _params(m.module) + FROZEN_BYTES * m.frozen + act) / GiB,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, default=[ROOT / "configs" / n for n in CONFIGS])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="whose autocast rules and attention kernels the activations follow (default: cuda)")
    parser.add_argument("--real", action="store_true",
                        help="count the activations on real tensors on --device (slow on a CPU for lab-f4)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = [r for path in args.configs for r in measure(read_workflow(path), device=args.device, real=args.real)]
    dev = args.device.upper()
    print(f"FLOPs per optimisation step; activations saved for backward at the batch, counted on "
          f"{'real' if args.real else 'fake'} {dev} tensors under {dev} autocast rules; est. memory = "
          f"{TRAINED_BYTES} B/param (fp32 weights, gradients, AdamW, EMA) + {FROZEN_BYTES} B/param of the LDM's "
          f"frozen autoencoder + activations; GiB = 2^30 bytes")
    print(table(["config", "model", "params M", "precision", "GFLOPs/step", "of which AE encode", "batch",
                 "act. GiB", "act. GiB, checkpointing", "est. memory GiB"],
                [[r["config"], r["model"], r["params_M"], r["precision"], r["gflops_step"], r["encode_gflops_step"],
                  r["batch"], r["act_gib"], r["act_ckpt_gib"], r["mem_gib"]] for r in rows]))
    print(f"\ntime {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
