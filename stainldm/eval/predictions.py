"""The methods an evaluation compares: folders of stained slides (``stainldm stain`` outputs), baseline
runs stained on the fly, and how each prediction is read over a core.

    methods = load_methods(unstained, preds=[Path("pred_ldm")], baselines=[Path("runs/baseline")], out=out)
    with PredictionSlide(methods[0].slides["s1"], methods[0].provenance["s1"], slide_mpp=0.5,
                         slide_wh=(4000, 3000), tile_mpp=1.0) as pred:
        virtual, uncertainty = pred.read(core)
        borders_x, borders_y = stitch_borders(pred, store_tile_px=256)

A prediction is matched to its unstained slide by the input path its provenance JSON records, else
by file name. Window borders (for the seam score) come from the canvases staining recorded.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stainldm.errors import InputError, StainLDMError, one_line
from stainldm.eval.cores import CoreImages
from stainldm.inference.config import read_provenance

log = logging.getLogger(__name__)

METHOD_NAMES = {"ldm": "LDM", "baseline": "U-Net baseline"}


@dataclass
class Method:
    """One way of making virtual H&E: a folder of stained slides, or the colour map."""

    name: str
    kind: str  # ldm | baseline | colour map | other
    folder: Path | None = None
    slides: dict[str, Path] = field(default_factory=dict)  # slide_id -> <slide>.tiff
    provenance: dict[str, dict] = field(default_factory=dict)  # slide_id -> <slide>.json
    colour_map: Any | None = None  # a fitted metrics.ColourMap
    notes: list[str] = field(default_factory=list)
    folder_meta: dict = field(default_factory=dict)  # a provenance from the folder, matched or not

    def settings(self) -> dict:
        """Sampler settings shared by the slides (the first evaluated slide's provenance)."""
        return next(iter(self.provenance.values()), self.folder_meta)

    @property
    def seconds(self) -> float | None:
        """Total staining time of the evaluated slides, from their provenance (None if none says)."""
        s = [p.get("seconds") for p in self.provenance.values() if isinstance(p.get("seconds"), (int, float))]
        return float(sum(s)) if s else None


class PredictionDir(NamedTuple):
    """A prediction folder matched to the evaluated slides."""

    slides: dict[str, Path]  # slide_id -> <slide>.tiff
    provenance: dict[str, dict]  # slide_id -> its provenance (empty when unreadable)
    folder_meta: dict  # the folder's first provenance (its model and sampler), matched or not


def _output_name(slide: Path) -> str:
    from stainldm.inference.batch import output_name  # lazily: it imports torch

    return output_name(slide)


def is_run(path: Path) -> bool:
    """Whether ``path`` is a training run (a folder with ``model.json``, or the file itself)."""
    return (path / "model.json").is_file() or path.suffix == ".json"


def read_prediction_dir(folder: Path, unstained: dict[str, Path], *, param: str = "pred") -> PredictionDir:
    """Maps each evaluated slide to its stained TIFF in ``folder`` and its provenance.

    Args:
        folder: a ``stainldm stain`` output folder.
        unstained: slide_id -> its unstained slide (matched to the provenance's ``input``, else by name).
        param: the argument ``folder`` was given as (``pred`` or ``baseline``), for messages.

    Raises:
        InputError: the folder is missing or holds no stained slide.
    """
    if not folder.is_dir():
        raise InputError(f"`{param}` {folder}: not a folder; give the `out` folder of `stainldm stain`"
                         + (" or a baseline run" if param == "baseline" else ""))
    tiffs = sorted(p for p in folder.glob("*.tif*") if not p.name.startswith(".") and ".uncertainty." not in p.name)
    if not tiffs:
        hint = " (it is a run folder: pass it as `baseline`, or stain with it first)" if is_run(folder) else ""
        raise InputError(f"`{param}` {folder}: no stained slides (.tiff) in it{hint}; make them with `stainldm stain`, "
                         f"its `out` folder {folder} and a trained run as its checkpoint")
    by_tiff = {t: read_provenance(t) for t in tiffs}  # unreadable: matched by name below
    slides, prov = {}, {}
    for sid, upath in unstained.items():
        want = os.path.abspath(upath)
        hit = next((t for t, m in by_tiff.items() if m.get("input") and os.path.abspath(m["input"]) == want), None)
        if hit is None:
            names = {_output_name(upath), sid}
            hit = next((t for t in tiffs if _output_name(t) in names), None)
        if hit is not None:
            slides[sid], prov[sid] = hit, by_tiff[hit]
    return PredictionDir(slides, prov, next((m for m in by_tiff.values() if m), {}))


def sampling(meta: dict) -> str:
    """``dpmpp_2m, 10 steps``: a prediction's sampler settings, as method names show them."""
    steps = meta.get("steps", "?")
    return f"{meta.get('sampler', '?')}, {steps} step{'' if steps == 1 else 's'}"


def method_name(kind: str, meta: dict, folder: Path, taken: set[str]) -> str:
    """A method's display name, unique among ``taken``: ``LDM``, then ``LDM (ddim, 5 steps)``, ``LDM [folder]``."""
    base = METHOD_NAMES.get(kind, folder.name)
    name = base
    if name in taken and meta.get("steps") is not None:
        name = f"{base} ({sampling(meta)})"
    if name in taken:
        name = f"{base} [{folder.name}]"
    k = 2
    while name in taken:
        name, k = f"{base} [{folder.name} {k}]", k + 1
    return name


def name_ldm_sweep(methods: Sequence[Method]) -> None:
    """Several LDM folders: names every one by its sampler settings (then folder), so a steps sweep reads clearly."""
    ldms = [m for m in methods if m.kind == "ldm"]
    if len(ldms) < 2:
        return
    for m in ldms:
        m.name = f"LDM ({sampling(m.settings())})"
    if len({m.name for m in ldms}) < len(ldms):
        for m in ldms:
            m.name = f"{m.name} [{m.folder.name}]"


def check_sources(unstained: dict[str, Path], *, preds: Sequence[Path], baselines: Sequence[Path] = ()) -> None:
    """Fails on a bad prediction folder before any work (baseline runs are checked when loaded).

    Raises:
        InputError: a folder is missing or holds no stained slide.
    """
    for p in preds:
        read_prediction_dir(p, unstained)
    for b in baselines:
        if not is_run(b):
            read_prediction_dir(b, unstained, param="baseline")


def load_methods(unstained: dict[str, Path], *, preds: Sequence[str | Path], baselines: Sequence[str | Path] = (),
                 out: str | Path, device: str = "auto", progress: Callable[[Path], Any] | None = None
                 ) -> list[Method]:
    """The prediction methods, named for the report: each ``preds`` folder, then each baseline.

    Args:
        unstained: slide_id -> the unstained slide of every evaluated slide.
        preds: ``stainldm stain`` output folders.
        baselines: baseline runs (stained on the fly into ``out/stained-<run>``) or their output folders.
        out: the report folder.
        device: where a baseline run stains.
        progress: per-slide bar factory for staining (see :func:`stain_baseline`).

    Raises:
        InputError: a folder holds no prediction, or a run is not a baseline (or LDM) run.
        StainLDMError: staining with a baseline run failed.
    """
    methods: list[Method] = []
    taken: set[str] = set()
    out = Path(out)
    for folder, is_baseline in [(Path(p), False) for p in preds] + [(Path(b), True) for b in baselines]:
        if is_baseline and is_run(folder):
            folder = stain_baseline(folder, unstained, out, device=device, progress=progress)
        found = read_prediction_dir(folder, unstained, param="baseline" if is_baseline else "pred")
        meta = next(iter(found.provenance.values()), found.folder_meta)
        kind = meta.get("model_kind") or ("baseline" if is_baseline else "other")
        m = Method(method_name(kind, meta, folder, taken), kind, folder, found.slides, found.provenance,
                   folder_meta=found.folder_meta)
        taken.add(m.name)
        methods.append(m)
    name_ldm_sweep(methods)
    return methods


def stain_baseline(run: Path, unstained: dict[str, Path], out: Path, *, device: str = "auto",
                   progress: Callable[[Path], Any] | None = None) -> Path:
    """Stains the evaluated slides with a run into ``out/stained-<run>``, as ``stainldm stain`` would with
    its defaults (resumable: slides already done are skipped).

    Args:
        run: a baseline (or LDM) run folder, or its ``model.json``.
        unstained: slide_id -> unstained slide.
        out: the report folder.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: ``progress(slide) -> tqdm-like`` per-canvas bar, or None.

    Returns:
        The output folder.

    Raises:
        InputError: the run is of another kind.
        StainLDMError: staining failed (the manifest in the output folder says why per slide).
    """
    import torch

    from stainldm.device import resolve_device
    from stainldm.inference.batch import STATUSES, default_batch_size, stain_slides
    from stainldm.inference.model import StainModel
    from stainldm.models.runs import read_model_json

    run = run if run.is_dir() else run.parent
    kind = read_model_json(run).get("kind")
    if kind not in ("baseline", "ldm"):
        raise InputError(f"`baseline` {run}: is a {kind} run; give a baseline run or its stain output folder")
    target = out / f"stained-{run.name}"
    log.info("staining %d slide(s) with %s into %s", len(unstained), run, target)
    failed = f"`baseline` {run}: staining the evaluated slides failed (see {target / 'manifest.csv'})"
    try:
        dev = resolve_device(device, env=os.environ, cuda_count=torch.cuda.device_count())
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        model = StainModel.load(run, device=dev, precision="auto")
        cfg = model.stain_config(batch_size=default_batch_size(dev))  # as `stainldm stain` stains by default
        outcomes = list(stain_slides(list(unstained.values()), model, target, cfg, progress=progress))
    except StainLDMError as exc:
        raise StainLDMError(f"{failed}: {one_line(exc)}") from exc
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    log.info("%s: %d done, %d no-tissue, %d failed; see %s", target, counts["done"], counts["no-tissue"],
             counts["failed"], target / "manifest.csv")
    if counts["failed"]:
        raise StainLDMError(failed)
    return target


# ---------------------------------------------------------------------------------------------
# Reading a prediction over a core
# ---------------------------------------------------------------------------------------------
class PredictionSlide:
    """A method's stained slide, read in the unstained frame at the store's mpp (a context manager).

    Args:
        path: the stained TIFF.
        meta: its provenance (``mpp`` is used when the TIFF lost its resolution tags).
        slide_mpp: the unstained slide's level-0 µm/px.
        slide_wh: the unstained slide's level-0 size.
        tile_mpp: the store's µm/px (the frame the core is evaluated in).

    Raises:
        StainLDMError: the TIFF cannot be read (the reader's error).
        InputError: it records no mpp, or covers another area than the unstained slide.
    """

    def __init__(self, path: Path, meta: dict, *, slide_mpp: float, slide_wh: tuple[int, int], tile_mpp: float):
        from stainldm.wsi.reader import open_slide

        self.path, self.meta, self.slide_mpp, self.tile_mpp = path, meta, slide_mpp, tile_mpp
        self.uncertainty = None
        self.reader = open_slide(path)
        try:
            if self.reader.mpp is None and meta.get("mpp"):  # a copy that lost its tags: the provenance knows
                self.reader.close()
                self.reader = open_slide(path, mpp=float(meta["mpp"]))
            if self.reader.mpp is None:
                raise InputError(f"{path}: the prediction records no mpp (and its provenance JSON none either)")
            self.mpp = self.reader.mpp[0]
            want = (slide_wh[0] * slide_mpp, slide_wh[1] * slide_mpp)  # µm
            have = (self.reader.dimensions[0] * self.mpp, self.reader.dimensions[1] * self.mpp)
            tol = 2 * max(self.mpp, slide_mpp)
            if abs(have[0] - want[0]) > tol or abs(have[1] - want[1]) > tol:
                raise InputError(f"{path}: covers {have[0]:.0f}×{have[1]:.0f} µm but its unstained slide covers "
                                 f"{want[0]:.0f}×{want[1]:.0f} µm; it was made from another (or cropped) slide")
            unc = path.with_name(f"{_output_name(path)}.uncertainty.tiff")
            self.uncertainty = open_slide(unc, mpp=self.mpp) if unc.is_file() else None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> PredictionSlide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def resampled(self) -> bool:
        """Whether the prediction is read at another mpp than it was written at."""
        return abs(self.mpp / self.tile_mpp - 1) > 1e-3

    def read(self, core: CoreImages) -> tuple[np.ndarray, np.ndarray | None]:
        """Virtual H&E ``(H, W, 3)`` uint8 and uncertainty ``(H, W)`` float32 (or None) over the core."""
        h, w = core.covered.shape
        xy = (core.xy[0] * self.slide_mpp / self.mpp, core.xy[1] * self.slide_mpp / self.mpp)  # prediction level-0 px
        rgb = self.reader.read_at_mpp(xy, (w, h), self.tile_mpp)
        rgb = np.clip(rgb[..., :3], 0, 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb[..., :3]
        unc = None
        if self.uncertainty is not None:
            unc = self.uncertainty.read_at_mpp(xy, (w, h), self.tile_mpp)[..., 0].astype(np.float32)
        return rgb, unc

    def to_core_px(self, values: Sequence[float], core: CoreImages, *, axis: int = 0) -> list[int]:
        """Prediction level-0 columns (``axis=0``) or rows (``axis=1``) -> core pixel indices."""
        s = self.mpp / self.tile_mpp
        return [round(v * s - core.xy[axis] * self.slide_mpp / self.tile_mpp) for v in values]

    def close(self) -> None:
        """Closes the slide and its uncertainty map."""
        self.reader.close()
        if self.uncertainty is not None:
            self.uncertainty.close()


def stitch_borders(pred: PredictionSlide, store_tile_px: int) -> tuple[list[float], list[float]]:
    """Where a naive tile-by-tile stitcher would have put window borders on the canvases staining sampled.

    Every ``tile_px`` (the model's tile) from each canvas origin, plus the canvas edges, from the
    ``canvases`` (``[x, y, w, h]``) and ``tile_px`` the prediction's provenance records.

    Args:
        pred: the prediction.
        store_tile_px: the tile used when neither the provenance nor the checkpoint records the model's.

    Returns:
        Sorted unique border columns and rows in prediction level-0 px; both empty when the provenance
        records no canvases (a prediction made before staining recorded them).
    """
    canvases = pred.meta.get("canvases")
    if not isinstance(canvases, list):
        return [], []
    tile = _model_tile(pred.meta, store_tile_px)
    return canvas_borders([tuple(c) for c in canvases], tile_px=tile)


def canvas_borders(canvases: Sequence[tuple[int, int, int, int]], *, tile_px: int
                   ) -> tuple[list[float], list[float]]:
    """Border columns and rows of ``canvases`` (``(x, y, w, h)``) tiled every ``tile_px`` from their origins."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y, w, h in canvases:
        xs += [x + k * tile_px for k in range(1, math.ceil(w / tile_px))] + [x, x + w]
        ys += [y + k * tile_px for k in range(1, math.ceil(h / tile_px))] + [y, y + h]
    return sorted(set(xs)), sorted(set(ys))


def _model_tile(meta: dict, default: int) -> int:
    """The model's tile: the provenance's ``tile_px``, else its checkpoint's model.json, else ``default``."""
    if isinstance(meta.get("tile_px"), int):
        return meta["tile_px"]
    try:
        return int(json.loads((Path(meta["checkpoint"]) / "model.json").read_text())["tile_px"])
    except (KeyError, OSError, ValueError, TypeError):
        return default
