"""Parameters, FLOPs per training step and estimated GPU memory of each workflow config's models.

    .venv/bin/python benchmarks/model_size.py [configs/lab-f4.yaml ...]

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward of one training
micro-step at batch 1, times the config's batch size (FLOPs are linear in the batch). Memory
estimate (training, per GPU): fp32 weights + gradients + AdamW moments + EMA (20 bytes/param)
plus the activations saved for backward (measured with saved-tensor hooks at batch 1, times the
batch size; halved under bf16 autocast). Runs on meta tensors where possible: no real compute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.train import load_train_config  # noqa: E402
from stainldm.models.autoencoder import build_autoencoder, downsampling  # noqa: E402
from stainldm.models.baseline import BaselineUNet  # noqa: E402
from stainldm.models.ldm import LatentDiffusion  # noqa: E402


def _measure(model: torch.nn.Module, step) -> tuple[int, float, int]:
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    saved = [0]

    def pack(t: torch.Tensor):
        saved[0] += t.numel() * t.element_size()
        return t

    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
        loss.backward()
    return params, counter.get_total_flops(), saved[0]


def measure_config(path: Path) -> list[dict]:
    cfg = load_train_config(path, [])
    tile = _tile_px(path)
    c_in = 2
    rows = []
    ae = build_autoencoder(cfg.autoencoder)
    x = torch.randn(1, 3, tile, tile)
    p, f, a = _measure(ae, lambda: ae(x)[0].abs().mean())
    rows.append(_row(path, "autoencoder", p, f, a, cfg))
    f_ds = downsampling(cfg.autoencoder)
    ldm = LatentDiffusion(cfg.ldm, in_channels=c_in, latent_channels=cfg.autoencoder.latent_channels,
                          downsampling=f_ds)
    z = torch.randn(1, cfg.autoencoder.latent_channels, tile // f_ds, tile // f_ds)
    u = torch.randn(1, c_in, tile, tile)
    p, fl, a = _measure(ldm, lambda: ldm.training_loss(z, u))
    rows.append(_row(path, "ldm", p, fl, a, cfg))
    base = BaselineUNet(cfg.baseline, in_channels=c_in)
    p, fl, a = _measure(base, lambda: base(u).abs().mean())
    rows.append(_row(path, "baseline", p, fl, a, cfg))
    return rows


def _tile_px(path: Path) -> int:
    import yaml

    data = yaml.safe_load(path.read_text())
    return int(((data.get("prepare") or {}).get("tiles") or {}).get("size", 256))


def _row(path, kind, params, flops, saved, cfg) -> dict:
    b = cfg.data.batch_size * cfg.optim.accumulate
    act = saved * cfg.data.batch_size * (0.5 if cfg.amp else 1.0)
    return {"config": path.name, "model": kind, "params_M": params / 1e6, "gflops_step": flops * b / 1e9,
            "mem_GB": (20 * params + act) / 1e9, "batch": b}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path,
                        default=[ROOT / "configs" / n for n in ("ci.yaml", "demo.yaml", "lab-f4.yaml")])
    args = parser.parse_args()
    print(f"{'config':<12} {'model':<12} {'params':>9} {'GFLOPs/step':>12} {'batch':>6} {'est. memory':>12}")
    for path in args.configs:
        for r in measure_config(path):
            print(f"{r['config']:<12} {r['model']:<12} {r['params_M']:>8.2f}M {r['gflops_step']:>12.1f} "
                  f"{r['batch']:>6} {r['mem_GB']:>10.2f} GB")


if __name__ == "__main__":
    main()
