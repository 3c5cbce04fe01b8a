"""``stainldm make-sample --out DIR``: a synthetic unstained / H&E TMA slide pair with known truth.

Writes ``DIR/unstained.tiff`` and ``DIR/stained.tiff`` (pyramidal, mpp and provenance in the
description) and then ``DIR/truth.json`` — last, so a folder without it is an interrupted run.
A folder that already holds all three from the same config, seed and source is left alone
(``--force`` redoes it). The simulation itself is :func:`stainldm.data.synthetic.make_tma_pair`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stainldm.config import config_hash, load_config
from stainldm.data.synthetic import SampleConfig, SamplePair, make_tma_pair
from stainldm.errors import InputError, RunError
from stainldm.files import sha256_file
from stainldm.wsi.reader import open_slide
from stainldm.wsi.writer import write_pyramid

log = logging.getLogger(__name__)

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "data" / "samples" / "CMU-1-Small-Region.svs"
FILES = ("unstained.tiff", "stained.tiff", "truth.json")


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "make-sample", parents=[common], help="simulate an unstained/H&E TMA slide pair with known truth",
        description="Simulate a TMA slide pair from a real H&E slide: DIR/unstained.tiff (autofluorescence "
                    "or brightfield), DIR/stained.tiff (the H&E, misregistered by a known transform) and "
                    "DIR/truth.json (cores, train/test split, transform, landmarks). Reruns with the same "
                    "config and seed are skipped.")
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
    p.add_argument("--force", action="store_true", help="redo even if DIR already holds this sample")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.modality is not None:
        overrides.append(f"modality={args.modality}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(SampleConfig, args.config, overrides=overrides)
    out = _output_folder(args.out)
    with open_slide(args.source, mpp=args.source_mpp) as source:
        provenance = {
            "source": source.name,
            "source_sha256": _sha256(Path(args.source)),
            "seed": cfg.seed,
            "modality": cfg.modality,
            "config_hash": config_hash(cfg),
        }
        if not args.force and is_complete(out, provenance):
            log.info("%s already holds the %s sample for seed %d (config %s); skipping (--force redoes it)",
                     out, cfg.modality, cfg.seed, provenance["config_hash"])
            return 0
        (out / "truth.json").unlink(missing_ok=True)  # from here on the folder is "interrupted"
        t0 = time.perf_counter()
        log.info("simulating a %dx%d %s TMA from %s (seed %d)", cfg.grid.rows, cfg.grid.cols, cfg.modality,
                 source.name, cfg.seed)
        pair = make_tma_pair(source, cfg)
    write_sample(out, pair, provenance=provenance)
    truth = pair.truth
    log.info("wrote %s: unstained %dx%d %s, stained %dx%d, %d cores (%d test), %d missing, in %.1f s", out,
             *truth["unstained"]["size_wh"], "+".join(pair.channel_names), *truth["stained"]["size_wh"],
             len(truth["cores"]), sum(c["split"] == "test" for c in truth["cores"]), len(truth["missing"]),
             time.perf_counter() - t0)
    return 0


def write_sample(out: Path, pair: SamplePair, *, provenance: Mapping[str, Any]) -> None:
    """Writes the pair into ``out``: the two pyramidal TIFFs, then truth.json (atomically, last).

    Args:
        out: an existing, writable folder.
        pair: what :func:`make_tma_pair` returned.
        provenance: source name and sha256, seed, modality, config hash; stored in both TIFF
            descriptions and in truth.json.

    Raises:
        RunError: a write failed (disk full, folder removed meanwhile).
    """
    try:
        write_pyramid(out / "unstained.tiff", pair.unstained, mpp=pair.mpp, channel_names=pair.channel_names,
                      provenance={**provenance, "role": "unstained"})
        write_pyramid(out / "stained.tiff", pair.stained, mpp=pair.mpp, channel_names=("R", "G", "B"),
                      provenance={**provenance, "role": "stained"})
        truth = {**pair.truth, "provenance": dict(provenance)}
        _write_text_atomic(out / "truth.json", _format_json(truth))
    except OSError as exc:
        raise RunError(f"{out}: writing the sample failed ({exc.strerror or exc}); check free space and "
                       "rerun") from None


def is_complete(out: Path, provenance: Mapping[str, Any]) -> bool:
    """True when ``out`` holds all three files and truth.json records the same ``provenance``."""
    if not all((out / name).is_file() for name in FILES):
        return False
    try:
        recorded = json.loads((out / "truth.json").read_text()).get("provenance", {})
    except (OSError, ValueError, AttributeError):
        return False
    return all(recorded.get(k) == v for k, v in provenance.items())


def _output_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({exc.strerror or exc}); choose another "
                         "--out") from None
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise InputError(f"{path}: cannot write to the output folder ({exc.strerror or exc}); fix its "
                         "permissions or choose another --out") from None
    return path


def _sha256(path: Path) -> str:
    return sha256_file(path)


def _format_json(data: Any) -> str:
    """Indented JSON with innermost number lists on one line (landmarks, matrices, fields)."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
