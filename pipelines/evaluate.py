"""``stainldm evaluate --pred DIR --store STORE --out DIR``: virtual against real H&E on held-out cores.

Recipe: the store's cores of one split -> the methods (each ``--pred`` folder of ``stainldm stain``
outputs, each ``--baseline`` folder or run (stained on the fly), and a per-pixel colour map fit on
the train split) -> :func:`stainldm.eval.evaluate.evaluate` with a progress bar (per core: the real
H&E and the unstained input from the store's tiles, each method's virtual H&E over the same region,
metrics on the tissue mask) -> bootstrap CIs over cores -> ``metrics.csv``, ``metrics.json`` and
``report.html`` (figures and gallery beside it). Exit 1 when some cores could not be evaluated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stainldm.errors import InputError, with_flags


def add_parser(sub, common) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="compare virtual with real H&E on held-out cores",
                       description="Metrics with bootstrap confidence intervals per core and overall, the "
                                   "LDM beside the U-Net baseline and a per-pixel colour map, and an HTML "
                                   "report that opens from disk.")
    p.add_argument("--pred", type=Path, action="append", required=True, metavar="DIR",
                   help="a `stainldm stain` output folder (repeatable: e.g. the same model at several --steps)")
    p.add_argument("--store", type=Path, required=True, help="the tile store the model was trained from")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="cores to evaluate (default test)")
    p.add_argument("--baseline", type=Path, action="append", default=[], metavar="RUN_OR_DIR",
                   help="a baseline run (stained on the fly into OUT/) or its stain output folder (repeatable)")
    p.add_argument("--fid-weights", type=Path, metavar="FILE",
                   help="local Inception TorchScript file for FID/KID (skipped without it)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and subsampling seed (default 0)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--match-radius", type=float, default=4.0, metavar="UM",
                   help="nuclei match radius in µm (default 4)")
    p.add_argument("--gallery", type=int, default=24, metavar="N", help="cores shown in the gallery (default 24)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (on-the-fly baseline staining, FID)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stainldm.eval import report
    from stainldm.eval.evaluate import EvalData, check_options, colour_map_method, evaluate, write_evaluation
    from stainldm.eval.fid import FidModel
    from stainldm.eval.predictions import check_sources, load_methods

    if args.bootstrap < 100:
        raise InputError(f"`bootstrap` {args.bootstrap}: use at least 100 resamples")
    check_options(match_radius=args.match_radius, fid_weights=args.fid_weights)
    data = EvalData.open(args.store, split=args.split)
    out: Path = args.out
    _check_writable(out)
    check_sources(data.unstained, preds=args.pred, baselines=args.baseline)  # a bad folder fails before any work
    fid = FidModel.load(args.fid_weights, device=args.device) if args.fid_weights is not None else None
    methods = load_methods(data.unstained, preds=args.pred, baselines=args.baseline, out=out, device=args.device,
                           progress=lambda slide: tqdm(desc=slide.name, unit="canvas", leave=False, disable=args.quiet))
    cmap = colour_map_method(data.store, seed=args.seed)
    if cmap is not None:
        methods.append(cmap)

    with tqdm(total=len(data.cores), desc="evaluate", unit="core", disable=args.quiet) as bar:
        result = evaluate(data, methods, match_radius=args.match_radius, fid=fid, seed=args.seed,
                          n_boot=args.bootstrap, gallery_dir=out / "gallery", gallery=args.gallery, progress=bar.update)

    summary, html = write_evaluation(out, result, store=args.store, split=args.split, seed=args.seed,
                                     n_boot=args.bootstrap, match_radius=args.match_radius)
    print(report.format_summary(summary, result.names))
    print(f"{out}: {html.name}, metrics.csv, metrics.json ({result.n_cores} {args.split} cores, "
          f"{len(methods)} methods)")
    for msg in result.errors:
        print(f"error: {with_flags(msg, args.flags)}", file=sys.stderr)
    return 1 if result.errors else 0


def _check_writable(out: Path) -> None:
    """Fails before any work when the report folder cannot be written."""
    from stainldm.files import ensure_writable_folder

    try:
        ensure_writable_folder(out)
    except OSError as exc:
        raise InputError(f"{out}: report folder is not writable ({exc.strerror}); choose another `out`") from exc
