"""The reports beside a tile store: per slide pair, and for the whole store.

    STORE/slides/ID/cores.geojson, cores.csv     the dearrayed cores (QuPath imports the GeoJSON)
    STORE/slides/ID/registration.json            the pair's transforms
    STORE/slides/ID/registration.csv             per core: split, use, similarity, landmark error,
                                                 each stage's move (px), the stages' disagreement, flag
    STORE/cores.geojson, cores.csv, registration.csv   every slide's, gathered by aggregate_reports

Per-slide CSVs end lines with ``\\r\\n`` (the csv module's default); the store-level ones with
``\\n``. Both have always been written so; readers that use the csv module see no difference.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stainldm.data.pairs import PairPlan
from stainldm.data.store import SPLITS, TileStore
from stainldm.errors import InputError
from stainldm.files import atomic_write_csv, atomic_write_json
from stainldm.wsi.register import STAGES, registration_errors
from stainldm.wsi.tma import cores_to_geojson, write_cores_csv

REG_COLUMNS = ("slide_id", "core", "split", "use", "sim_before", "sim_after", "landmarks", "tre_median_px",
               "tre_p95_px", "tre_max_px", "move_core_px", "move_tiles_px", "move_deform_px", "disagree_px",
               "flagged")


def write_slide_reports(folder: Path, slide_id: str, plan: PairPlan, splits: Mapping[str, str],
                        truth: Mapping[str, Any] | None = None) -> None:
    """Writes one pair's cores and registration reports into ``folder`` (created if needed).

    Args:
        folder: ``STORE/slides/<slide_id>``.
        slide_id: the pair's name; cores are keyed ``"<slide_id>:<core id>"`` in ``splits``.
        plan: what :func:`~stainldm.data.pairs.analyse_pair` found.
        splits: ``"<slide_id>:<core id>"`` -> ``train``/``val``/``test``.
        truth: a make-sample ``truth.json``; its landmarks add registration errors (TRE, level-0 px
            of the stained slide) per core and over all cores (row ``ALL``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    geojson = cores_to_geojson(plan.cores)
    for feature in geojson["features"]:
        props = feature["properties"]
        props["slide_id"] = slide_id
        props["split"] = splits.get(f"{slide_id}:{props['name']}", "")
    atomic_write_json(folder / "cores.geojson", geojson, indent=1)
    write_cores_csv(plan.cores, folder / "cores.csv")
    reg = plan.registration
    atomic_write_json(folder / "registration.json", reg.to_json())
    landmarks = {k: np.asarray(v) for k, v in truth["landmarks"].items()} if truth else None
    errors = registration_errors(reg, landmarks) if landmarks is not None else {}
    rows = []
    for core_id, (before, after) in reg.core_similarity.items():
        e = errors.get(core_id)
        if reg.core_ok(core_id):
            use = "used"
        elif after < reg.min_similarity:
            use = "excluded: low similarity"
        else:
            use = "excluded: stages disagree"
        rows.append([slide_id, core_id, splits.get(f"{slide_id}:{core_id}", ""), use, f"{before:.4f}", f"{after:.4f}",
                     *(_tre(e) if e is not None else ["", "", "", ""]), *_stage_cells(reg, core_id)])
    if errors:
        sims = list(reg.core_similarity.values())
        rows.append([slide_id, "ALL", "", "", f"{np.median([s[0] for s in sims]):.4f}",
                     f"{np.median([s[1] for s in sims]):.4f}", *_tre(np.concatenate(list(errors.values()))),
                     "", "", "", "", str(sum(reg.flagged(k) for k in reg.cores))])
    atomic_write_csv(folder / "registration.csv", [REG_COLUMNS, *rows])


def _stage_cells(reg, core_id: str) -> list[str]:
    """How far the core, tiles and deformable stages moved the core (median, stained level-0 px;
    blank for a stage that did not run), the stages' disagreement and the flag (``ALL``: how many)."""
    tf = reg.cores[core_id]
    moves = [f"{tf.motion[s].moved_px:.3f}" if s in tf.motion else "" for s in STAGES]
    return [*moves, f"{tf.disagree_px:.3f}", "yes" if reg.flagged(core_id) else "no"]


def _tre(e: np.ndarray) -> list[str]:
    return [str(len(e)), f"{np.median(e):.3f}", f"{np.percentile(e, 95):.3f}", f"{e.max():.3f}"]


def aggregate_reports(out: Path) -> None:
    """Gathers every ``out/slides/*`` report into the store-level ``cores.geojson``, ``cores.csv``
    (with a leading ``slide_id`` column) and ``registration.csv``, slides in name order."""
    slides = sorted(p for p in (out / "slides").glob("*") if p.is_dir()) if (out / "slides").is_dir() else []
    if not slides:
        return
    features = []
    for slide in slides:
        if (slide / "cores.geojson").is_file():
            features += json.loads((slide / "cores.geojson").read_text())["features"]
    atomic_write_json(out / "cores.geojson", {"type": "FeatureCollection", "features": features}, indent=1)
    for name in ("cores.csv", "registration.csv"):
        header, rows = None, []
        for slide in slides:
            if not (slide / name).is_file():
                continue
            with open(slide / name, newline="") as fh:
                table = list(csv.reader(fh))
            if name == "cores.csv":  # per-slide files do not say which slide they are
                table = [["slide_id", *table[0]], *([slide.name, *row] for row in table[1:])]
            header = header or table[0]
            rows += table[1:]
        if header:
            atomic_write_csv(out / name, [header, *rows], lineterminator="\n")


def summary_lines(out: Path, *, pairs_done: int) -> list[str]:
    """What ``stainldm prepare`` prints at the end: tiles per split, then each slide's registration
    error when its truth was known. Empty when ``out`` holds no tile store yet."""
    try:
        store = TileStore.open(out)
    except InputError:
        return []
    counts = {s: sum(r.split == s for r in store.rows) for s in SPLITS}
    lines = [f"{out}: {len(store)} tiles ({', '.join(f'{k} {v}' for k, v in counts.items())}) from "
             f"{pairs_done} pairs"]
    reg = out / "registration.csv"
    if reg.is_file():
        with open(reg, newline="") as fh:
            for row in csv.DictReader(fh):
                if row["core"] == "ALL":
                    lines.append(f"  {row['slide_id']}: registration error median {row['tre_median_px']} px, "
                                 f"95th percentile {row['tre_p95_px']} px, max {row['tre_max_px']} px")
    return lines
