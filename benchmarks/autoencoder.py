"""Autoencoder configurations compared on the same held-out H&E tiles (issue 14): how much detail
does each one keep, and what does it cost to train?

    .venv/bin/python benchmarks/autoencoder.py [--store STORE] [--steps 2000] [--device cuda]
                                               [--variants demo latent8 ...] [--dry-run]
    .venv/bin/python benchmarks/autoencoder.py --init data/checkpoints/ldm [--steps 200]   # decoders only
    .venv/bin/python benchmarks/autoencoder.py --init F4_RUN --set "autoencoder.channels=[32,64,64]"  # an f = 4 one's

``--init CKPT`` compares decoder-only fine-tunings of a trained autoencoder instead (its encoder
frozen, so an ldm trained on it stays valid: ``autoencoder.train_encoder: false``): L1 only, + the
frequency term, + the adversarial term, both, and the frequency term with a deeper decoder (2
residual blocks a level, the added ones starting as identities: ``autoencoder.decoder_res_blocks``);
the anchor is ``CKPT``'s own decoder, untrained further. Output: ``bench-out/autoencoder-decoder.json``.

Each variant is configs/demo.yaml's ``train:`` section with a few ``--set`` overrides, trained for
``--steps`` by a :class:`stainldm.train.loop.Trainer` (kind ``autoencoder``, the demo's batch of 8
tiles of 128 px at 1 µm/px, the demo's seed and tile stream; ``Trainer.optimisation_step``, without
the run's validation and checkpoints), then its EMA weights encode (latent mean) and decode
every tile of the store's test split, unaugmented, in float32. Measured per variant: reconstruction
PSNR and SSIM (``stainldm.train.validation.psnr_ssim``: per tile, averaged), the sharpness ratio
(``stainldm.eval.realism.sharpness``: mean |Laplacian| of grey, reconstruction ÷ real, pooled over
the tiles) and the radially averaged power-spectrum ratio in the three bands of
``realism.BANDS_UM`` (``realism.radial_power``, pooled over the tiles per frequency bin), the
training process's CPU seconds (``time.process_time``: this process only; DataLoader workers are
not counted) and wall seconds, parameters and latent shape. The whole tile is the mask: tiles are
at least half tissue, and glass, flat in the real H&E, counts against a decoder that draws on it.

Anchor, trained in the same run on the same tiles: ``demo``, the demo config as it is (f = 2,
latent 4, the spectral term at 0.1); ``f4`` is the f = 4 autoencoder it replaced (issue 14).
Goal (issue 14, demo config at 1 µm/px): sharpness ≥ 0.9 and PSNR ≥ 26 dB. The "margin" column
scores both goals in one number, in dB: ``min(PSNR − 26, 20·log10(sharpness / 0.9), 20·log10(1.25 /
sharpness))`` (≥ 0 meets both without being noisier than real H&E; the sharpness ratio is of
amplitudes, hence 20·log10). The ``combo`` variant combines, from each group
of mutually exclusive variants (latent channels, architecture, adversarial, frequency), the one
with the best margin, when it beats the anchor's (at least the two best groups); ``--combo``
names its parts instead.

Sized for one GPU: ``--steps 2000`` for every variant fits about 5 minutes on an H200 (bf16,
``--workers`` DataLoader processes). ``--dry-run`` trains 3 steps per variant on the CPU to check
the script. Output: ``bench-out/autoencoder.json``; the tile store stays in ``--work``
(default ``bench-out/autoencoder-work``) for the next run.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import BENCH_OUT, machine_info, table, write_json  # noqa: E402

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
ANCHOR = "demo"
GOAL_PSNR_DB, GOAL_SHARPNESS, NOISIER_ABOVE = 26.0, 0.9, 1.25

#: name -> (group, overrides of configs/demo.yaml's train section); ``{half}`` is ``--steps`` // 2.
#: Variants of one group change the same keys, so ``combo`` takes at most one of each.
VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "demo": ("anchor", ()),
    "latent8": ("latent", ("autoencoder.latent_channels=8",)),
    "latent16": ("latent", ("autoencoder.latent_channels=16",)),
    "adversarial": ("adversarial", ("autoencoder.adversarial_weight=0.1", "autoencoder.adversarial_start={half}")),
    "frequency": ("frequency", ("autoencoder.frequency_weight={frequency_weight}",)),
    "capacity": ("architecture", ("autoencoder.channels=[64,128]", "autoencoder.num_res_blocks=2")),
    "f4": ("architecture", ("autoencoder.channels=[32,64,64]",)),  # the demo's until issue 14: 32x32 latents
}
COMBO = "combo"

#: ``--init CKPT``: the decoder of a trained autoencoder (``CKPT``: an autoencoder run, or an ldm
#: checkpoint such as data/checkpoints/ldm) fine-tuned with its encoder frozen, so the latent space
#: and every ldm trained on it stay valid. Anchor: ``CKPT``'s autoencoder itself, untrained further.
#: name -> (group, overrides); ``{init}`` is ``--init``.
DECODER_ANCHOR = "shipped"
DECODER_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dec-l1": ("decoder", ()),
    "dec-frequency": ("decoder", ("autoencoder.frequency_weight={frequency_weight}",)),
    "dec-adversarial": ("decoder", ("autoencoder.adversarial_weight=0.1", "autoencoder.adversarial_start=0")),
    "dec-combo": ("decoder", ("autoencoder.frequency_weight={frequency_weight}", "autoencoder.adversarial_weight=0.1",
                              "autoencoder.adversarial_start=0")),
    "dec-deeper": ("decoder", ("autoencoder.frequency_weight={frequency_weight}", "autoencoder.decoder_res_blocks=2")),
}
DECODER_FIXED = ("autoencoder.init={init}", "autoencoder.train_encoder=false", "optim.lr={decoder_lr}",
                 "optim.warmup_steps=0")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, help="a tile store prepared with configs/demo.yaml (default: build one "
                                              "in --work: make-sample + prepare, about a minute)")
    p.add_argument("--work", type=Path, default=BENCH_OUT / "autoencoder-work",
                   help="folder for the sample and the store it builds (kept for the next run)")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps per variant (default 2000)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--variants", nargs="+", choices=[*VARIANTS, COMBO, *DECODER_VARIANTS],
                   help="which to train (the anchor, demo, always runs)")
    p.add_argument("--combo", nargs="+", choices=[v for v in VARIANTS if v != ANCHOR],
                   help="the variants combo combines (default: chosen by the table)")
    p.add_argument("--frequency-weight", type=float, default=0.1,
                   help="autoencoder.frequency_weight of the frequency variant (default 0.1)")
    p.add_argument("--workers", type=int, help="DataLoader processes (default: 2 on the CPU, as the demo; "
                                               "up to 8 on a GPU)")
    p.add_argument("--tiles", type=int, default=0, help="test tiles to evaluate on (default 0: all)")
    p.add_argument("--init", type=Path,
                   help="compare decoder-only fine-tunings of this trained autoencoder instead (an autoencoder run "
                        "or an ldm checkpoint, e.g. data/checkpoints/ldm): variants " + ", ".join(DECODER_VARIANTS))
    p.add_argument("--decoder-lr", type=float, default=1e-4,
                   help="peak learning rate of the decoder fine-tunings (default 1e-4, no warm-up)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="train-section overrides for every variant, the anchor's included (a variant's own keys win), "
                        "e.g. autoencoder.channels=[32,64,64] for the decoders of an f = 4 --init")
    p.add_argument("--dry-run", action="store_true",
                   help="3 steps per variant on the CPU, 8 test tiles: checks the script")
    return p.parse_args()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def demo_store(work: Path) -> Path:
    """The demo's tile store: make-sample (default config) + prepare with configs/demo.yaml, as
    ``stainldm demo`` builds it; both steps skip what ``work`` already holds."""
    from stainldm.config import load_config
    from stainldm.data.pairs import load_prepare_config
    from stainldm.data.prepare import SlidePair, prepare_pair
    from stainldm.data.sample_files import make_sample
    from stainldm.data.synthetic import SampleConfig

    sample, store = work / "sample", work / "store"
    make_sample(sample, load_config(SampleConfig))
    pair = SlidePair.from_paths(sample / "unstained.tiff", sample / "stained.tiff", truth=sample / "truth.json",
                                slide_id="sample")
    prepare_pair(store, pair, load_prepare_config(DEMO_CONFIG))
    return store


def test_tiles(store: Path, limit: int) -> tuple[np.ndarray, float]:
    """The real H&E of the test split, unaugmented: ``(N, H, W, 3)`` uint8, and its µm/px."""
    from stainldm.data.dataset import PairedTileDataset
    from stainldm.data.store import TileStore

    ds = PairedTileDataset(store, split="test", augment=None)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    if n == 0:
        sys.exit(f"error: {store} has no test tiles; prepare it with configs/demo.yaml")
    tiles = np.stack([ds[i]["stained"].numpy().transpose(1, 2, 0) for i in range(n)])
    return tiles, float(TileStore.open(store).rows[0].mpp)


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def reconstruct(ae: torch.nn.Module, tiles: np.ndarray, device: torch.device, batch: int = 16) -> np.ndarray:
    """Encode (latent mean) and decode ``tiles`` ``(N, H, W, 3)`` uint8 in float32 -> uint8."""
    from stainldm.train.validation import to_uint8

    ae.eval()
    out = []
    for s in range(0, len(tiles), batch):
        x = torch.from_numpy(tiles[s : s + batch]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(to_uint8(ae.reconstruct(x).clamp(-1, 1)))  # (B, H, W, 3)
    return np.concatenate(out)


def detail_metrics(recon: np.ndarray, real: np.ndarray, mpp: float) -> dict[str, Any]:
    """PSNR/SSIM and the realism ratios of reconstructions ``recon`` against ``real`` (uint8 tiles)."""
    from stainldm.eval.realism import BANDS_UM, radial_power, sharpness
    from stainldm.train.validation import psnr_ssim

    def as_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1

    psnr, ssim = psnr_ssim(as_tensor(recon), as_tensor(real))
    mask = np.ones(real.shape[1:3], bool)
    sharp = [(sharpness(r, mask), sharpness(t, mask)) for r, t in zip(recon, real, strict=True)]
    ratio = float(np.sum([s[0] for s in sharp]) / max(np.sum([s[1] for s in sharp]), 1e-12))
    freq, _ = radial_power(real[0], mask)
    p_recon = np.mean([radial_power(r, mask)[1] for r in recon], axis=0)  # (bins,): tiles share one size
    p_real = np.mean([radial_power(t, mask)[1] for t in real], axis=0)
    bands = {}
    for name, short_um, long_um in BANDS_UM:  # as realism.spectrum_ratios, on the pooled spectra
        sel = (freq >= mpp / long_um) & (freq <= min(mpp / short_um, 0.5))
        bands[name] = float(np.mean(p_recon[sel] / p_real[sel])) if sel.any() and mpp / long_um < 0.5 else math.nan
    return {"psnr": psnr, "ssim": ssim, "sharpness": ratio, "spectrum": bands}


def goal_margin_db(psnr: float, sharp: float) -> float:
    """How far inside (≥ 0) or outside (< 0) both goals a result lies, in dB (see the module doc)."""
    if not (math.isfinite(sharp) and sharp > 0):
        return -math.inf
    return min(psnr - GOAL_PSNR_DB, 20 * math.log10(sharp / GOAL_SHARPNESS), 20 * math.log10(NOISIER_ABOVE / sharp))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_trainer(overrides: list[str], *, steps: int, store: Path, run_dir: Path, args: argparse.Namespace):
    """A :class:`Trainer` of the autoencoder: configs/demo.yaml's train section with ``overrides``."""
    from stainldm.train.config import load_train_config
    from stainldm.train.loop import Trainer

    fixed = [f"steps={steps}", "wandb=disabled", f"data.workers={args.workers}"]
    cfg = load_train_config(DEMO_CONFIG, [*fixed, *args.overrides, *overrides])
    return Trainer(kind="autoencoder", cfg=cfg, run_dir=run_dir, store=store,
                   device=None if args.device == "auto" else args.device)


def train_steps(trainer, *, progress: str = "", every: int = 0) -> None:
    """Runs ``trainer`` to its ``cfg.steps`` with ``Trainer.optimisation_step`` (what ``stainldm train``
    runs each step: autocast, backward, AdamW, discriminator, EMA) on the tile stream ``stainldm
    train`` draws (``EpochSampler`` from the config's seed); no validation, no checkpoints. Prints a
    progress line every ``every`` steps."""
    from stainldm.data.dataset import EpochSampler

    cfg = trainer.cfg
    loader = torch.utils.data.DataLoader(
        trainer.train_set, batch_size=cfg.data.batch_size, sampler=EpochSampler(len(trainer.train_set), seed=cfg.seed),
        num_workers=cfg.data.workers, persistent_workers=cfg.data.workers > 0,
        pin_memory=trainer.device.type == "cuda")
    batches, losses, t0 = iter(loader), [], time.perf_counter()
    while trainer.step < cfg.steps:
        losses.append(trainer.optimisation_step(batches)[0])
        trainer.step += 1
        if every and (trainer.step % every == 0 or trainer.step == cfg.steps):
            print(f"  {progress}: step {trainer.step}/{cfg.steps}, loss {np.mean(losses):.4f}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            losses = []
    _sync(trainer.device)


def train_and_measure(name: str, overrides: list[str], *, store: Path, runs: Path, args: argparse.Namespace,
                      real: np.ndarray, mpp: float, label: str) -> dict[str, Any]:
    """Trains one variant, printing progress, and measures it on the test tiles."""
    from stainldm.models.autoencoder import downsampling

    cpu0, wall0 = time.process_time(), time.perf_counter()
    trainer = make_trainer(overrides, steps=args.steps, store=store, run_dir=runs / name, args=args)
    train_steps(trainer, progress=f"{label} {name}", every=max(1, args.steps // 10))
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    recon = reconstruct(trainer.ema, real, trainer.device)
    ae_cfg = trainer.cfg.autoencoder
    f = downsampling(ae_cfg)
    side = real.shape[1] // f
    result = {
        "overrides": overrides, "steps": args.steps, "device": str(trainer.device), "precision": trainer.precision,
        "workers": trainer.cfg.data.workers, "cpu_s": cpu_s, "wall_s": wall_s,
        "tiles_per_s": args.steps * trainer.cfg.data.batch_size / wall_s,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "discriminator_params": (sum(p.numel() for p in trainer.d_step.parameters())
                                 if trainer.d_step is not None else 0),
        "latent": [ae_cfg.latent_channels, side, side], "downsampling": f,
        **detail_metrics(recon, real, mpp),
    }
    result["margin_db"] = goal_margin_db(result["psnr"], result["sharpness"])
    del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def warm_up(store: Path, runs: Path, args: argparse.Namespace, real: np.ndarray) -> None:
    """Two unmeasured steps and a decode of the anchor, so that the first variant measured does not
    pay this process's one-time costs (lazy imports, CUDA context, allocator)."""
    trainer = make_trainer([], steps=2, store=store, run_dir=runs / "warm-up", args=args)
    train_steps(trainer)
    reconstruct(trainer.ema, real[:2], trainer.device)


def choose_combo(results: dict[str, dict[str, Any]]) -> list[str]:
    """From each group, the measured variant with the best margin, when it beats the anchor's;
    at least the best two groups."""
    best: dict[str, tuple[float, str]] = {}
    for name, r in results.items():
        group = VARIANTS[name][0]
        if group != "anchor" and (group not in best or r["margin_db"] > best[group][0]):
            best[group] = (r["margin_db"], name)
    ranked = sorted(best.values(), reverse=True)
    anchor = results[ANCHOR]["margin_db"]
    chosen = [name for margin, name in ranked if margin > anchor]
    return chosen if len(chosen) >= 2 else [name for _, name in ranked[:2]]


def combine(parts: list[str], fmt: dict[str, Any]) -> list[str]:
    """The overrides of ``parts`` together (one variant per group, so no key is set twice)."""
    groups = [VARIANTS[p][0] for p in parts]
    if len(set(groups)) != len(groups):
        sys.exit(f"error: --combo {' '.join(parts)}: takes at most one variant of each group "
                 f"({', '.join(f'{p}: {g}' for p, g in zip(parts, groups, strict=True))})")
    return [o.format(**fmt) for p in parts for o in VARIANTS[p][1]]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def report(results: dict[str, dict[str, Any]], parts: dict[str, list[str]], anchor: str = ANCHOR) -> None:
    a = results[anchor]
    rows = []
    for name, r in results.items():
        label = f"{name} ({'+'.join(parts[name])})" if name in parts else name
        s = r["spectrum"]
        rows.append([label, round(r["params"] / 1e6, 2), "×".join(map(str, r["latent"])), f"{r['psnr']:.2f}",
                     f"{r['psnr'] - a['psnr']:+.2f}", f"{r['ssim']:.3f}", f"{r['sharpness']:.3f}",
                     f"{r['sharpness'] / a['sharpness']:.2f}", f"{s['tissue']:.2f}", f"{s['nuclei']:.2f}",
                     f"{s['chromatin']:.2f}", round(r["cpu_s"], 1), round(r["wall_s"], 1),
                     f"{r['cpu_s'] / a['cpu_s']:.2f}" if a["cpu_s"] else "", f"{r['margin_db']:+.2f}"])
    print()
    print(table(["variant", "params M", "latent", "PSNR dB", "Δ anchor", "SSIM", "sharpness", "× anchor",
                 "spec tissue", "spec nuclei", "spec chromatin", "CPU s", "wall s", "CPU × anchor", "margin dB"],
                rows))
    print(f"\ngoal (issue 14, demo config at 1 µm/px): sharpness ≥ {GOAL_SHARPNESS} and PSNR ≥ {GOAL_PSNR_DB:g} dB")
    for name, r in results.items():
        sharp_ok, psnr_ok = r["sharpness"] >= GOAL_SHARPNESS, r["psnr"] >= GOAL_PSNR_DB
        noisy = " (noisier than real H&E)" if r["sharpness"] > NOISIER_ABOVE else ""
        verdict = "met" if sharp_ok and psnr_ok else "missed"
        print(f"  {name}: {verdict} — sharpness {r['sharpness']:.3f} {'≥' if sharp_ok else '<'} {GOAL_SHARPNESS}"
              f"{noisy}, PSNR {r['psnr']:.2f} {'≥' if psnr_ok else '<'} {GOAL_PSNR_DB:g} dB")


def main() -> None:
    args = parse_args()
    if args.dry_run:
        args.steps, args.device, args.tiles = 3, "cpu", args.tiles or 8
    if args.steps < 1:
        sys.exit(f"error: --steps ({args.steps}) must be at least 1")
    if args.workers is None:
        gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
        args.workers = min(8, max(2, (os.cpu_count() or 2) - 2)) if gpu else 2
    fmt = {"half": args.steps // 2, "frequency_weight": args.frequency_weight, "init": args.init,
           "decoder_lr": args.decoder_lr}
    if args.init:
        return main_decoder(args, fmt)
    args.variants = args.variants or [*VARIANTS, COMBO]
    if bad := [v for v in args.variants if v in DECODER_VARIANTS]:
        sys.exit(f"error: {', '.join(bad)} fine-tune a trained decoder: give --init CKPT")
    names = [ANCHOR] + [v for v in dict.fromkeys(args.variants) if v not in (ANCHOR, COMBO)]
    t0 = time.perf_counter()
    store = args.store or demo_store(args.work)
    real, mpp = test_tiles(store, args.tiles)
    print(f"{len(real)} test tiles of {real.shape[1]} px at {mpp:g} µm/px from {store}; {args.steps} steps per "
          f"variant; store ready in {time.perf_counter() - t0:.0f} s", flush=True)
    results: dict[str, dict[str, Any]] = {}
    parts: dict[str, list[str]] = {}
    total = len(names) + (COMBO in args.variants)
    with tempfile.TemporaryDirectory(prefix="bench-ae-") as tmp:
        runs = Path(tmp)
        warm_up(store, runs, args, real)
        for k, name in enumerate(names, 1):
            overrides = [o.format(**fmt) for o in VARIANTS[name][1]]
            results[name] = train_and_measure(name, overrides, store=store, runs=runs, args=args, real=real,
                                              mpp=mpp, label=f"[{k}/{total}]")
            r = results[name]
            print(f"[{k}/{total}] {name}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, sharpness "
                  f"{r['sharpness']:.3f}, {r['wall_s']:.0f} s ({time.perf_counter() - t0:.0f} s so far)", flush=True)
            shutil.rmtree(runs / name, ignore_errors=True)
        combo = list(args.combo) if args.combo else choose_combo(results)
        if COMBO in args.variants and len(combo) < (1 if args.combo else 2):
            print(f"{COMBO}: skipped, fewer than two groups measured to combine (or name them with --combo)")
        elif COMBO in args.variants:
            parts[COMBO] = combo
            overrides = combine(combo, fmt)
            print(f"[{total}/{total}] {COMBO} = {' + '.join(parts[COMBO])}", flush=True)
            results[COMBO] = train_and_measure(COMBO, overrides, store=store, runs=runs, args=args, real=real,
                                               mpp=mpp, label=f"[{total}/{total}]")
    report(results, parts)
    device = results[ANCHOR]["device"]
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    path = write_json(BENCH_OUT / "autoencoder.json", {
        "machine": machine_info(), "torch": torch.__version__, "gpu": gpu, "store": str(store), "set": args.overrides,
        "test_tiles": len(real), "mpp": mpp, "steps": args.steps, "dry_run": args.dry_run,
        "goal": {"psnr_db": GOAL_PSNR_DB, "sharpness": GOAL_SHARPNESS, "noisier_above": NOISIER_ABOVE},
        "anchor": ANCHOR, "combo": parts.get(COMBO), "results": results,
        "seconds": time.perf_counter() - t0})
    print(f"\n{path.relative_to(ROOT)}; {time.perf_counter() - t0:.0f} s in all")


def main_decoder(args: argparse.Namespace, fmt: dict[str, Any]) -> None:
    """``--init``: the untrained anchor (the checkpoint's own autoencoder) and decoder fine-tunings."""
    from stainldm.models.runs import load_autoencoder

    if args.variants and (bad := [v for v in args.variants if v not in DECODER_VARIANTS]):
        sys.exit(f"error: --init compares {', '.join(DECODER_VARIANTS)}; not {', '.join(bad)}")
    names = list(dict.fromkeys(args.variants or DECODER_VARIANTS))
    t0 = time.perf_counter()
    store = args.store or demo_store(args.work)
    real, mpp = test_tiles(store, args.tiles)
    ae, meta = load_autoencoder(args.init)
    results = {DECODER_ANCHOR: {
        "overrides": [], "steps": 0, "device": "cpu", "precision": "fp32", "workers": 0, "cpu_s": 0.0, "wall_s": 0.0,
        "tiles_per_s": 0.0, "params": sum(p.numel() for p in ae.parameters()), "discriminator_params": 0,
        "latent": [meta["latent_channels"], real.shape[1] // meta["downsampling"], real.shape[1] // meta["downsampling"]],
        "downsampling": meta["downsampling"], **detail_metrics(reconstruct(ae, real, torch.device("cpu")), real, mpp)}}
    results[DECODER_ANCHOR]["margin_db"] = goal_margin_db(results[DECODER_ANCHOR]["psnr"],
                                                          results[DECODER_ANCHOR]["sharpness"])
    print(f"{len(real)} test tiles at {mpp:g} µm/px; decoder of {args.init}, {args.steps} steps per variant; "
          f"{DECODER_ANCHOR}: PSNR {results[DECODER_ANCHOR]['psnr']:.2f} dB, sharpness "
          f"{results[DECODER_ANCHOR]['sharpness']:.3f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ae-") as tmp:
        for k, name in enumerate(names, 1):
            overrides = [o.format(**fmt) for o in (*DECODER_FIXED, *DECODER_VARIANTS[name][1])]
            results[name] = train_and_measure(name, overrides, store=store, runs=Path(tmp), args=args, real=real,
                                              mpp=mpp, label=f"[{k}/{len(names)}]")
            r = results[name]
            print(f"[{k}/{len(names)}] {name}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}, sharpness "
                  f"{r['sharpness']:.3f}, {r['wall_s']:.0f} s", flush=True)
    report(results, {}, anchor=DECODER_ANCHOR)
    path = write_json(BENCH_OUT / "autoencoder-decoder.json", {
        "machine": machine_info(), "torch": torch.__version__, "store": str(store), "init": str(args.init),
        "set": args.overrides,
        "test_tiles": len(real), "mpp": mpp, "steps": args.steps, "dry_run": args.dry_run,
        "goal": {"psnr_db": GOAL_PSNR_DB, "sharpness": GOAL_SHARPNESS, "noisier_above": NOISIER_ABOVE},
        "anchor": DECODER_ANCHOR, "results": results, "seconds": time.perf_counter() - t0})
    print(f"\n{path.relative_to(ROOT)}; {time.perf_counter() - t0:.0f} s in all")


if __name__ == "__main__":
    main()
