"""A make-sample folder: a simulated unstained / H&E TMA slide pair with known truth, on disk.

    cfg = load_config(SampleConfig, overrides=["grid.rows=2", "grid.cols=3"])
    make_sample(Path("sample"), cfg)      # sample/unstained.tiff, stained.tiff, truth.json

``truth.json`` is written last, so a folder without it is an interrupted run. A folder that
already holds all three files from the same config, seed and source is left alone (``force``
redoes it). The simulation itself is :func:`stainldm.data.synthetic.make_tma_pair`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stainldm.config import config_hash
from stainldm.data._optics import AUTOFLUORESCENCE_CHANNELS, BRIGHTFIELD_CHANNELS
from stainldm.data.synthetic import SampleConfig, SamplePair, make_tma_pair
from stainldm.errors import InputError, RunError
from stainldm.files import atomic_write_text, ensure_writable_folder, sha256_file
from stainldm.wsi.channels import resolve_channels
from stainldm.wsi.reader import open_slide
from stainldm.wsi.writer import write_pyramid

log = logging.getLogger(__name__)

DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "data" / "samples" / "CMU-1-Small-Region.svs"
FILES = ("unstained.tiff", "stained.tiff", "truth.json")


def make_sample(out: Path, cfg: SampleConfig, *, source: str | Path = DEFAULT_SOURCE, source_mpp: float | None = None,
                force: bool = False, channels: str | None = None) -> SamplePair | None:
    """Simulates a TMA slide pair from the real H&E ``source`` and writes it into ``out``.

    Args:
        out: the folder (created if needed).
        cfg: grid, modality, seed, ... of the simulation.
        source: a real H&E slide to cut cores from (default: the bundled CMU-1-Small-Region.svs).
        source_mpp: µm/px of ``source``, for slides that do not record it.
        force: redo even if ``out`` already holds this sample.
        channels: the simulated unstained channels to write, in this order: names or 0-based
            indices, comma-separated (``AF488``); None: all.

    Returns:
        the simulated pair (its ``truth`` is what truth.json holds, less the provenance), or None
        when ``out`` already held the sample from the same config, seed and source.

    Raises:
        InputError: ``out`` cannot be created or written, or ``source`` cannot be read or holds too
            little tissue.
        RunError: writing the sample failed.
    """
    out = _writable_folder(Path(out))
    simulated = AUTOFLUORESCENCE_CHANNELS if cfg.modality == "autofluorescence" else BRIGHTFIELD_CHANNELS
    keep = resolve_channels(simulated, channels, slide=f"the simulated {cfg.modality}") if channels else None
    with open_slide(source, mpp=source_mpp) as slide:
        if slide.mpp is None:  # make_tma_pair says so too; here the parameter to pass is ours
            raise InputError(f"{slide.name}: the source slide does not record its resolution (mpp); use a slide "
                             "that does, or pass `source_mpp`")
        provenance = {
            "source": slide.name,
            "source_sha256": sha256_file(source),
            "seed": cfg.seed,
            "modality": cfg.modality,
            "config_hash": config_hash(cfg),
            **({"channels": channels} if channels is not None else {}),
        }
        if not force and is_complete(out, provenance):
            return None
        (out / "truth.json").unlink(missing_ok=True)  # from here on the folder is "interrupted"
        log.info("simulating a %dx%d %s TMA from %s (seed %d)", cfg.grid.rows, cfg.grid.cols, cfg.modality,
                 slide.name, cfg.seed)
        pair = make_tma_pair(slide, cfg)
    if keep is not None:
        pair = replace(pair, unstained=np.ascontiguousarray(pair.unstained[..., keep]),
                       channel_names=tuple(pair.channel_names[i] for i in keep))
    write_sample(out, pair, provenance=provenance)
    return pair


def write_sample(out: Path, pair: SamplePair, *, provenance: Mapping[str, Any]) -> None:
    """Writes the pair into ``out``: the two pyramidal TIFFs, then truth.json (atomically, last).

    Args:
        out: an existing, writable folder.
        pair: what :func:`~stainldm.data.synthetic.make_tma_pair` returned.
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
        atomic_write_text(out / "truth.json", format_truth_json({**pair.truth, "provenance": dict(provenance)}))
    except OSError as exc:
        raise RunError(f"{out}: writing the sample failed ({exc.strerror or exc}); check free space and "
                       "rerun") from exc


def is_complete(out: Path, provenance: Mapping[str, Any]) -> bool:
    """True when ``out`` holds all three files and truth.json records the same ``provenance``."""
    if not all((out / name).is_file() for name in FILES):
        return False
    try:
        recorded = json.loads((out / "truth.json").read_text()).get("provenance", {})
    except (OSError, ValueError, AttributeError):
        return False
    return all(recorded.get(k) == v for k, v in provenance.items())


def format_truth_json(data: Any) -> str:
    """Indented JSON with innermost number lists on one line (landmarks, matrices, fields), and a
    newline at the end: readable, and diff-friendly between seeds."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"


def _writable_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the output folder ({exc.strerror or exc}); choose another "
                         "`out`") from exc
    try:
        ensure_writable_folder(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write to the output folder ({exc.strerror or exc}); fix its "
                         "permissions or choose another `out`") from exc
    return path
