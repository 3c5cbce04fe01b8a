"""``stainldm make-sample --out DIR``: a synthetic unstained / H&E TMA slide pair with known truth.

Writes ``DIR/unstained.tiff`` and ``DIR/stained.tiff`` (pyramidal, mpp and provenance in the
description) and then ``DIR/truth.json`` — last, so a folder without it is an interrupted run.
A folder that already holds all three from the same config, seed and source is left alone
(``--force`` redoes it). Recipe: flags -> config -> :func:`stainldm.data.sample_files.make_sample`
-> a line saying what was written (or skipped).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from stainldm.config import config_hash, load_config
from stainldm.data.sample_files import DEFAULT_SOURCE, make_sample
from stainldm.data.synthetic import SampleConfig

log = logging.getLogger(__name__)


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "make-sample", parents=[common], help="simulate an unstained/H&E TMA slide pair with known truth",
        description="Simulate a TMA slide pair from a real H&E slide: DIR/unstained.tiff (autofluorescence "
                    "or brightfield), DIR/stained.tiff (the H&E, misregistered by a known transform) and "
                    "DIR/truth.json (cores, train/test split, transform, landmarks). Reruns with the same "
                    "config and seed are skipped. --set realism.enabled=true adds structures only one slide "
                    "shows and per-slide blur, noise and contrast.")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--modality", choices=("autofluorescence", "brightfield"),
                   help="unstained modality (default: the config's, autofluorescence)")
    p.add_argument("--seed", type=int, help="random seed (default: the config's, 0)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, metavar="SLIDE",
                   help="real H&E slide to cut cores from (default: the bundled CMU-1-Small-Region.svs)")
    p.add_argument("--source-mpp", type=float, metavar="MPP",
                   help="µm/px of the source, for slides that do not record it")
    p.add_argument("--config", type=Path, metavar="YAML", help="sample config (e.g. configs/sample.yaml)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set grid.rows=2 grid.cols=2 (or --set repeated)")
    p.add_argument("--channels", metavar="NAME,NAME", help="simulated unstained channels to write, in this order: "
                                                          "names (AF405, AF488; brightfield) or indices (default: all)")
    p.add_argument("--force", action="store_true", help="redo even if DIR already holds this sample")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.modality is not None:
        overrides.append(f"modality={args.modality}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(SampleConfig, args.config, overrides=overrides)
    t0 = time.perf_counter()
    pair = make_sample(args.out, cfg, source=args.source, source_mpp=args.source_mpp, force=args.force,
                       channels=args.channels)
    if pair is None:
        log.info("%s already holds the %s sample for seed %d (config %s); skipping (--force redoes it)",
                 args.out, cfg.modality, cfg.seed, config_hash(cfg))
        return 0
    truth = pair.truth
    log.info("wrote %s: unstained %dx%d %s, stained %dx%d, %d cores (%d test), %d missing, in %.1f s", args.out,
             *truth["unstained"]["size_wh"], "+".join(pair.channel_names), *truth["stained"]["size_wh"],
             len(truth["cores"]), sum(c["split"] == "test" for c in truth["cores"]), len(truth["missing"]),
             time.perf_counter() - t0)
    if "realism" in truth:  # one-sided structures: say how much of the tissue each one covers
        log.info("realism: %s", ", ".join(f"{name} {rec['count']} ({100 * rec['tissue_fraction']:.2f}% of tissue)"
                                          for name, rec in truth["realism"].items()))
    return 0
