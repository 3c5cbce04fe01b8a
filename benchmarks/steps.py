"""Quality versus sampling steps: SSIM/PSNR to the real H&E on test tiles, per sampler and NFE.

    .venv/bin/python benchmarks/steps.py --run RUN --store STORE [--tiles 32] [--nfe 5 10 20 50]

The anchor is 50-step DDIM, measured in the same run on the same tiles with the same noise.
Goal: DPM-Solver++(2M) at 10 NFE within 1% SSIM of 50-step DDIM. Tiles are the first ``--tiles``
of the test split (no augmentation); the LDM's EMA weights decode through its autoencoder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import BENCH_OUT, machine_info, table, write_json  # noqa: E402

from stainldm.data.dataset import BatchPreprocessor, PairedTileDataset  # noqa: E402
from stainldm.inference.stain import StainModel  # noqa: E402
from stainldm.train.validation import psnr_ssim  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="an ldm run folder")
    parser.add_argument("--store", type=Path, required=True, help="the tile store it was trained on")
    parser.add_argument("--tiles", type=int, default=32)
    parser.add_argument("--split", default="test")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = StainModel.load(args.run)
    ds = PairedTileDataset(args.store, split=args.split, augment=None)
    n = min(args.tiles, len(ds))
    items = [ds[i] for i in range(n)]
    prep = BatchPreprocessor(model.meta["input_stats"])
    x, y = prep({"unstained": torch.stack([b["unstained"] for b in items]),
                 "stained": torch.stack([b["stained"] for b in items])})
    ldm, ae = model.net, model.ae
    g = torch.Generator().manual_seed(args.seed)
    f = model.f
    noise = torch.randn((n, ldm.latent_channels, x.shape[-2] // f, x.shape[-1] // f), generator=g)
    rows, results = [], {}
    for sampler in ("ddim", "dpmpp_2m"):
        for nfe in args.nfe:
            t0 = time.perf_counter()
            preds = []
            for s in range(0, n, 8):
                z = ldm.sample_latent(x[s : s + 8], sampler=sampler, steps=nfe, noise=noise[s : s + 8])
                preds.append(ae.decode(z / model.latent_scale).clamp(-1, 1))
            psnr, ssim = psnr_ssim(torch.cat(preds), y)
            results[(sampler, nfe)] = (psnr, ssim, time.perf_counter() - t0)
    anchor = results.get(("ddim", 50)) or results[("ddim", max(args.nfe))]
    for (sampler, nfe), (psnr, ssim, sec) in results.items():
        rows.append([sampler, nfe, f"{psnr:.2f}", f"{ssim:.4f}", f"{ssim / anchor[1]:.4f}", f"{sec:.1f}"])
    print(f"{n} {args.split} tiles of {args.store}, model {args.run}")
    print(table(["sampler", "NFE", "PSNR dB", "SSIM", "SSIM / DDIM-50", "seconds"], rows))
    fast = results.get(("dpmpp_2m", 10))
    if fast:
        rel = fast[1] / anchor[1] - 1
        print(f"\nDPM++(2M) at 10 NFE vs DDIM at 50: SSIM {fast[1]:.4f} vs {anchor[1]:.4f} "
              f"({100 * rel:+.2f}%); goal no more than 1% lower: {'ok' if rel >= -0.01 else 'MISSED'}")
    write_json(BENCH_OUT / "steps.json", {"machine": machine_info(), "run": str(args.run), "tiles": n,
                                          "results": {f"{k[0]}@{k[1]}": v for k, v in results.items()}})


if __name__ == "__main__":
    main()
