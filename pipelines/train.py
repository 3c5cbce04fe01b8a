"""``stainldm train autoencoder|ldm|baseline``: train one model into a run folder (resumable)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from stainldm.errors import InputError

log = logging.getLogger("stainldm.train")


def add_parser(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="train the autoencoder, the LDM or the baseline",
                       description="Train one model on a tile store. The ldm needs a trained autoencoder "
                                   "(--autoencoder). Under torchrun the same command trains with DDP.")
    p.add_argument("kind", choices=("autoencoder", "ldm", "baseline"))
    p.add_argument("--config", type=Path, help="workflow YAML (its train: section), e.g. configs/demo.yaml")
    p.add_argument("--store", type=Path, help="tile store (overrides train.data.store)")
    p.add_argument("--autoencoder", dest="autoencoder_run", metavar="AUTOENCODER", type=Path,
                   help="trained autoencoder run (ldm only)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override train keys, e.g. --set steps=200 optim.lr=1e-4 (or --set repeated)")
    p.add_argument("--out", dest="run_dir", metavar="OUT", type=Path, help="run folder (default runs/<kind>-<time>)")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue an interrupted run exactly")
    p.add_argument("--wandb", choices=("online", "offline", "disabled"), help="tracking mode (default offline)")
    p.add_argument("--device", help="auto, cpu, cuda (under torchrun/srun: cuda:LOCAL_RANK) or cuda:N; "
                                    "default: train.device, auto")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stainldm.train.config import load_run_config, load_train_config, resolve_config
    from stainldm.train.loop import Trainer

    if args.resume is not None:
        cfg = load_run_config(args.resume, args.overrides)
        run_dir = args.resume
    else:
        cfg = load_train_config(args.config, args.overrides)
        run_dir = args.run_dir or Path("runs") / f"{args.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = resolve_config(cfg, store=args.store, autoencoder_run=args.autoencoder_run, wandb=args.wandb)
    if cfg.data.store is None:
        raise InputError("no tile store: pass --store STORE (made by `stainldm prepare`) or set train.data.store")
    if args.resume is None and (run_dir / "state.pt").exists():  # the recipe owns run folders and their resume
        raise InputError(f"{run_dir}: already holds a training run; use --resume {run_dir} to continue it, or choose "
                         "another --out")
    ae = Path(cfg.autoencoder_run) if cfg.autoencoder_run else None
    trainer = Trainer(kind=args.kind, cfg=cfg, run_dir=run_dir, store=Path(cfg.data.store), device=args.device,
                      autoencoder_run=ae, resume=args.resume is not None)
    t0 = time.perf_counter()
    last = trainer.train(progress=not args.quiet)
    if trainer.is_main:
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k in ("loss", "val_psnr", "val_ssim"))
        print(f"{run_dir}: {args.kind} trained to step {trainer.step} in {time.perf_counter() - t0:.0f} s ({metrics})")
    return 0
