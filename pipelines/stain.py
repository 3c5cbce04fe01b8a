"""``stainldm stain INPUT... --checkpoint RUN --out DIR``: virtually stain a batch of slides.

Recipe: list inputs (files, folders, CSVs) -> this shard's share -> load the model -> stain each
slide not yet done into ``DIR/<slide>.tiff`` (+ uncertainty, thumbnail, provenance), recorded in
``DIR/manifest.csv`` (:func:`stainldm.inference.batch.stain_slides`) -> summary. A bad slide is
recorded and the batch goes on (a slide with no tissue as ``no-tissue``); rerunning skips done slides.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stainldm.errors import with_flags


def add_parser(sub, common) -> None:
    p = sub.add_parser("stain", parents=[common], help="virtually stain unstained slides with a trained model",
                       description="Stain slides, folders of slides or CSVs (a 'slide' or 'path' column) with an "
                                   "ldm or baseline run. Rerunning skips finished slides.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--checkpoint", type=Path, required=True, help="ldm or baseline run folder (or its model.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--steps", type=int, help="denoising steps (default: the model's stain_defaults, else 10)")
    p.add_argument("--sampler", help="dpmpp_2m or ddim (default: the model's stain_defaults, else dpmpp_2m)")
    p.add_argument("--guidance", type=float,
                   help="classifier-free guidance scale (default: the model's stain_defaults, else 1)")
    p.add_argument("--eta", type=float, help="DDIM stochasticity η (default: the model's stain_defaults, else 0)")
    p.add_argument("--seed", type=int, default=0, help="slide seed (default 0)")
    p.add_argument("--samples", type=int, default=1, help="K samples: mean as output, std as uncertainty map")
    p.add_argument("--batch-size", type=int, help="windows per network call (default 8 on a CPU, 64 on a GPU, "
                                                    "where the cores of a TMA share calls)")
    p.add_argument("--overlap", type=int, default=16, metavar="PX", help="least window overlap in output px")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N; under torchrun, srun or "
                   "--shard, cuda is one GPU per process (LOCAL_RANK, SLURM_LOCALID, else shard i on GPU (i-1) mod "
                   "the GPU count)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto (default): bf16 on a GPU, fp32 on a CPU; fp16 for GPUs without bf16")
    p.add_argument("--shard", help="i/n: stain only shard i of n (default: torchrun/SLURM rank variables)")
    p.add_argument("--mpp", type=float, help="µm/px of inputs that do not record it")
    p.add_argument("--channels", metavar="NAME,NAME", help="the slides' channels that stand for the model's inputs, "
                                                          "in its order: names or 0-based indices (default: the "
                                                          "names the model was trained on)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from stainldm.device import resolve_device
    from stainldm.inference.batch import (
        MANIFEST_NAME,
        Manifest,
        default_batch_size,
        expand_inputs,
        parse_shard,
        shard,
        stain_slides,
    )
    from stainldm.inference.config import StainConfig, check_stain_config
    from stainldm.inference.model import StainModel

    index, count = parse_shard(args.shard)
    device = resolve_device(args.device, env=os.environ, cuda_count=torch.cuda.device_count(), shard=(index, count))
    batch = args.batch_size if args.batch_size is not None else default_batch_size(device)
    given = {"steps": args.steps, "sampler": args.sampler, "guidance": args.guidance, "eta": args.eta,
             "seed": args.seed, "samples": args.samples, "batch_size": batch, "overlap_px": args.overlap,
             "channels": args.channels}
    check_stain_config(StainConfig(**{k: v for k, v in given.items() if v is not None}))  # before the model loads
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = StainModel.load(args.checkpoint, device=device, precision=args.precision)
    cfg = model.stain_config(**given)  # what the flags do not say, the model's stain_defaults do
    slides = shard(expand_inputs(args.inputs), index, count)

    def canvas_bar(slide: Path):
        return tqdm(desc=slide.name, unit="canvas", leave=False, disable=args.quiet)

    outcomes = stain_slides(slides, model, args.out, cfg, mpp=args.mpp, progress=canvas_bar, raise_errors=args.debug)
    failed = [o for o in tqdm(outcomes, total=len(slides), desc=f"stain (shard {index + 1}/{count})", unit="slide",
                              disable=args.quiet) if o.status == "failed"]
    manifest = Manifest(args.out / MANIFEST_NAME)
    counts = manifest.counts()
    print(f"{args.out}: {counts['done']} done, {counts['no-tissue']} no-tissue, {counts['failed']} failed "
          f"(shard {index + 1}/{count}: {len(slides)} slides); see {manifest.path}")
    # A slide's error may name an argument (`mpp`): shown as its flag, as the CLI shows raised errors.
    for outcome in failed:
        print(f"error: {with_flags(outcome.error, args.flags)}", file=sys.stderr)  # the message names the slide
    return 1 if failed else 0
