"""``stainldm evaluate --pred DIR --store STORE --out DIR``: virtual against real H&E on held-out cores.

Recipe: the store's cores of one split -> the methods (each ``--pred`` folder of ``stainldm stain``
outputs, each ``--baseline`` folder or run (stained on the fly), and a per-pixel colour map fit on
the train split) -> per core: the real H&E and the unstained input assembled from the store's
tiles (registered exactly as for training), each method's virtual H&E read over the same region at
the store's mpp, metrics on the tissue mask -> bootstrap CIs over cores -> ``metrics.csv``,
``metrics.json`` and ``report.html`` (figures and gallery beside it).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.stain import output_name
from stainldm.errors import InputError, StainLDMError, one_line
from stainldm.files import atomic_write_csv

log = logging.getLogger("stainldm.evaluate")

CSV_METRICS = ("psnr", "ssim", "lab_w_L", "lab_w_a", "lab_w_b", "lab_w", "h_corr", "e_corr", "nuclei_real",
               "nuclei_pred", "nuclei_count_ratio", "nuclei_count_error", "nuclei_f1", "seam_score")
BLANK_FRACTION = 0.95  # a core whose tissue is this white in a prediction was not stained


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


# ---------------------------------------------------------------------------------------------
# Cores from the store
# ---------------------------------------------------------------------------------------------
@dataclass
class CoreImages:
    """One core in the unstained frame at the store's mpp, assembled from its tiles.

    ``xy`` is the top-left corner in unstained level-0 px; pixel (u, v) covers
    ``xy + (u, v)·step`` level-0 px, exactly as ``read_at_mpp`` and the store's tiles do.
    """

    slide_id: str
    core: str
    xy: tuple[float, float]
    unstained: np.ndarray  # (H, W, C_in)
    real: np.ndarray  # (H, W, 3) uint8
    covered: np.ndarray  # (H, W) bool: under a tile
    tiles_uv: list[tuple[int, int]]

    @property
    def key(self) -> str:
        return f"{self.slide_id}:{self.core}"


def split_cores(store, split: str) -> dict[tuple[str, str], list[int]]:
    """``(slide_id, core)`` -> tile indices of the split, in store order."""
    cores: dict[tuple[str, str], list[int]] = {}
    for i in store.indices(split):
        r = store.rows[i]
        cores.setdefault((r.slide_id, r.core), []).append(int(i))
    return cores


def assemble_core(store, slide_id: str, core: str, idx: list[int], *, step: float) -> CoreImages:
    """Places the core's tiles on one canvas (``step``: unstained level-0 px per store pixel)."""
    rows = [store.rows[i] for i in idx]
    x0, y0 = min(r.x for r in rows), min(r.y for r in rows)
    t = store.tile_px
    uv = [(round((r.x - x0) / step), round((r.y - y0) / step)) for r in rows]
    w, h = max(u for u, _ in uv) + t, max(v for _, v in uv) + t
    first_u, _ = store.read(idx[0])
    unstained = np.zeros((h, w, first_u.shape[2]), first_u.dtype)
    real = np.full((h, w, 3), 255, np.uint8)
    covered = np.zeros((h, w), bool)
    for i, (u, v) in zip(idx, uv, strict=True):
        tu, ts = store.read(i)
        unstained[v : v + t, u : u + t] = tu
        real[v : v + t, u : u + t] = ts
        covered[v : v + t, u : u + t] = True
    return CoreImages(slide_id, core, (float(x0), float(y0)), unstained, real, covered, uv)


def core_tissue(core: CoreImages, slide_mask: np.ndarray, *, step: float, slide_mpp: float, mask_mpp: float) -> np.ndarray:
    """The unstained slide's tissue mask (as prepare computed it) on the core's pixels, under its tiles."""
    h, w = core.covered.shape
    f = step * slide_mpp / mask_mpp  # mask px per core px
    mx = np.floor((core.xy[0] * slide_mpp / mask_mpp) + (np.arange(w) + 0.5) * f).astype(int)
    my = np.floor((core.xy[1] * slide_mpp / mask_mpp) + (np.arange(h) + 0.5) * f).astype(int)
    inside = (mx[None, :] >= 0) & (mx[None, :] < slide_mask.shape[1]) & (my[:, None] >= 0) & (my[:, None] < slide_mask.shape[0])
    m = slide_mask[np.clip(my, 0, slide_mask.shape[0] - 1)][:, np.clip(mx, 0, slide_mask.shape[1] - 1)]
    return m & inside & core.covered


# ---------------------------------------------------------------------------------------------
# Methods: prediction folders, baselines, the colour map
# ---------------------------------------------------------------------------------------------
@dataclass
class Method:
    """One way of making virtual H&E: a folder of stained slides, or the colour map."""

    name: str
    kind: str  # ldm | baseline | colour map | other
    folder: Path | None = None
    slides: dict[str, Path] = field(default_factory=dict)  # slide_id -> <slide>.tiff
    provenance: dict[str, dict] = field(default_factory=dict)  # slide_id -> <slide>.json
    colour_map: object | None = None
    notes: list[str] = field(default_factory=list)
    folder_meta: dict = field(default_factory=dict)  # a provenance from the folder, matched or not

    def settings(self) -> dict:
        """Sampler settings shared by the slides (the first evaluated slide's provenance)."""
        return next(iter(self.provenance.values()), self.folder_meta)


def read_prediction_dir(folder: Path, unstained: dict[str, Path], *, flag: str = "--pred"
                        ) -> tuple[dict[str, Path], dict[str, dict], dict]:
    """Maps each slide_id to its stained TIFF in ``folder`` (by the provenance's input path, else by
    name) and its provenance; also returns the folder's first provenance (for its model and sampler).

    Raises:
        InputError: the folder is missing or holds no stained slide.
    """
    if not folder.is_dir():
        raise InputError(f"{flag} {folder}: not a folder; give the --out folder of `stainldm stain`"
                         + (" or a baseline run" if flag == "--baseline" else ""))
    tiffs = sorted(p for p in folder.glob("*.tif*") if not p.name.startswith(".") and ".uncertainty." not in p.name)
    if not tiffs:
        hint = " (it is a run folder: pass it as --baseline, or stain with it first)" if (folder / "model.json").is_file() else ""
        raise InputError(f"{flag} {folder}: no stained slides (.tiff) in it{hint}; make them with `stainldm stain "
                         f"UNSTAINED --checkpoint RUN --out {folder}`")
    by_input = {}
    for t in tiffs:
        meta_path = t.with_suffix(".json")
        meta = {}
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except ValueError:
                log.warning("%s: unreadable provenance JSON, matching its slide by name", meta_path)
        by_input[t] = meta if isinstance(meta, dict) else {}
    slides, prov = {}, {}
    for sid, upath in unstained.items():
        want = os.path.abspath(upath)
        hit = next((t for t, m in by_input.items() if m.get("input") and os.path.abspath(m["input"]) == want), None)
        if hit is None:
            names = {output_name(upath), sid}
            hit = next((t for t in tiffs if output_name(t) in names), None)
        if hit is not None:
            slides[sid], prov[sid] = hit, by_input[hit]
    return slides, prov, next((m for m in by_input.values() if m), {})


def method_name(kind: str, meta: dict, folder: Path, taken: set[str]) -> str:
    base = {"ldm": "LDM", "baseline": "U-Net baseline"}.get(kind, folder.name)
    name = base
    if name in taken and meta.get("steps") is not None:
        name = f"{base} ({_sampling(meta)})"
    if name in taken:
        name = f"{base} [{folder.name}]"
    k = 2
    while name in taken:
        name, k = f"{base} [{folder.name} {k}]", k + 1
    return name


def load_methods(args, unstained: dict[str, Path], out: Path) -> list[Method]:
    methods: list[Method] = []
    taken: set[str] = set()
    sources = [(p, False) for p in args.pred] + [(b, True) for b in args.baseline]
    for folder, is_baseline in sources:
        if is_baseline and ((folder / "model.json").is_file() or folder.suffix == ".json"):
            folder = stain_baseline(folder, unstained, out, device=args.device, quiet=args.quiet)
        slides, prov, folder_meta = read_prediction_dir(folder, unstained, flag="--baseline" if is_baseline else "--pred")
        meta = next(iter(prov.values()), folder_meta)
        kind = meta.get("model_kind") or ("baseline" if is_baseline else "other")
        m = Method(method_name(kind, meta, folder, taken), kind, folder, slides, prov, folder_meta=folder_meta)
        taken.add(m.name)
        methods.append(m)
    # Several LDM folders: name every one by its sampler settings, so the steps sweep reads clearly.
    ldms = [m for m in methods if m.kind == "ldm"]
    if len(ldms) > 1:
        for m in ldms:
            s = m.settings()
            m.name = f"LDM ({_sampling(s)})"
        if len({m.name for m in ldms}) < len(ldms):
            for m in ldms:
                m.name = f"{m.name} [{m.folder.name}]"
    return methods


def _sampling(meta: dict) -> str:
    steps = meta.get("steps", "?")
    return f"{meta.get('sampler', '?')}, {steps} step{'' if steps == 1 else 's'}"


def stain_baseline(run_dir: Path, unstained: dict[str, Path], out: Path, *, device: str, quiet: bool) -> Path:
    """Stains the evaluated slides with a baseline run into ``OUT/stained-<run>`` (resumable)."""
    from pipelines.cli import main as cli
    from stainldm.train.checkpoint import read_model_json

    run_dir = run_dir if run_dir.is_dir() else run_dir.parent
    kind = read_model_json(run_dir).get("kind")
    if kind not in ("baseline", "ldm"):
        raise InputError(f"--baseline {run_dir}: is a {kind} run; give a baseline run or its stain output folder")
    target = out / f"stained-{run_dir.name}"
    log.info("staining %d slide(s) with %s into %s", len(unstained), run_dir, target)
    code = cli(["stain", *map(str, unstained.values()), "--checkpoint", str(run_dir), "--out", str(target),
                "--device", device, *(["--quiet"] if quiet else [])])
    if code != 0:
        raise StainLDMError(f"--baseline {run_dir}: staining the evaluated slides failed (see {target / 'manifest.csv'})")
    return target


def fit_colour_map(store, *, seed: int, max_tiles: int = 512):
    """The per-pixel colour map on (a seeded subsample of) the train split, or None without train tiles."""
    from stainldm.eval.metrics import ColourMap

    idx = [i for i, r in enumerate(store.rows) if r.split == "train"]
    if not idx:
        return None
    rng = np.random.default_rng(seed)
    if len(idx) > max_tiles:
        idx = sorted(rng.choice(idx, max_tiles, replace=False).tolist())
    pairs = [store.read(i) for i in idx]
    return ColourMap.fit(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), seed=seed)


# ---------------------------------------------------------------------------------------------
# Reading a prediction over a core
# ---------------------------------------------------------------------------------------------
class PredictionSlide:
    """A method's stained slide, read in the unstained frame at the store's mpp."""

    def __init__(self, path: Path, meta: dict, *, slide_mpp: float, slide_wh: tuple[int, int], tile_mpp: float):
        from stainldm.wsi.reader import open_slide

        self.path, self.meta, self.slide_mpp, self.tile_mpp = path, meta, slide_mpp, tile_mpp
        self.reader = open_slide(path)
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
        unc = path.with_name(f"{output_name(path)}.uncertainty.tiff")
        self.uncertainty = open_slide(unc, mpp=self.mpp) if unc.is_file() else None

    @property
    def resampled(self) -> bool:
        return abs(self.mpp / self.tile_mpp - 1) > 1e-3

    def read(self, core: CoreImages) -> tuple[np.ndarray, np.ndarray | None]:
        """Virtual H&E (H, W, 3) uint8 and uncertainty (H, W) float (or None) over the core."""
        h, w = core.covered.shape
        xy = (core.xy[0] * self.slide_mpp / self.mpp, core.xy[1] * self.slide_mpp / self.mpp)  # prediction level-0 px
        rgb = self.reader.read_at_mpp(xy, (w, h), self.tile_mpp)
        rgb = np.clip(rgb[..., :3], 0, 255).astype(np.uint8) if rgb.dtype != np.uint8 else rgb[..., :3]
        unc = None
        if self.uncertainty is not None:
            unc = self.uncertainty.read_at_mpp(xy, (w, h), self.tile_mpp)[..., 0].astype(np.float32)
        return rgb, unc

    def to_core_px(self, xs: list[float], core: CoreImages) -> list[int]:
        """Prediction level-0 columns (or rows, with the core's y) -> core pixel indices."""
        s = self.mpp / self.tile_mpp
        return [round(x * s - core.xy[0] * self.slide_mpp / self.tile_mpp) for x in xs]

    def close(self) -> None:
        self.reader.close()
        if self.uncertainty is not None:
            self.uncertainty.close()


def stitch_borders(pred: PredictionSlide, slide, store_tile_px: int) -> tuple[list[float], list[float]]:
    """Window borders of a naive tile-by-tile stitcher on each canvas ``stainldm stain`` sampled:
    every ``tile_px`` (the model's tile) from each canvas origin, plus the sub-canvas edges; in
    prediction level-0 px. Empty when the provenance does not record the stain config."""
    from stainldm.config import from_dict
    from stainldm.inference.stain import StainConfig, region_canvases, tissue_regions

    cfg_dict = pred.meta.get("stain_config")
    if not isinstance(cfg_dict, dict):
        return [], []
    cfg = from_dict(StainConfig, cfg_dict, where="stain_config")
    tile = store_tile_px
    try:
        tile = int(json.loads((Path(pred.meta["checkpoint"]) / "model.json").read_text())["tile_px"])
    except (KeyError, OSError, ValueError, TypeError):
        pass
    regions, _ = tissue_regions(slide, cfg, out_mpp=pred.mpp)
    xs, ys = [], []
    for x, y, w, h in region_canvases(regions, pred.reader.dimensions, cfg):
        xs += [x + k * tile for k in range(1, math.ceil(w / tile))] + [x, x + w]
        ys += [y + k * tile for k in range(1, math.ceil(h / tile))] + [y, y + h]
    return sorted(set(xs)), sorted(set(ys))


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What every slide is evaluated with."""

    store: object
    cores: dict[tuple[str, str], list[int]]
    methods: list[Method]
    tissue_cfg: object
    modality: str
    tile_mpp: float
    nuclei: object
    gallery_dir: Path
    gallery_max: int
    fid: FidFeatures | None


def run(args: argparse.Namespace) -> int:
    import yaml
    from tqdm import tqdm

    from stainldm.config import from_dict
    from stainldm.data.store import TileStore, read_pairs
    from stainldm.eval import report
    from stainldm.eval.metrics import NucleiConfig
    from stainldm.wsi.tissue import TissueConfig

    if args.bootstrap < 100:
        raise InputError(f"--bootstrap {args.bootstrap}: use at least 100 resamples")
    if args.match_radius <= 0:
        raise InputError(f"--match-radius {args.match_radius}: must be positive (µm)")
    if args.fid_weights is not None and not args.fid_weights.is_file():
        raise InputError(f"--fid-weights {args.fid_weights}: file not found (a local Inception TorchScript file)")
    store = TileStore.open(args.store)
    cores = split_cores(store, args.split)
    pairs = read_pairs(args.store / "pairs.csv")
    slide_ids = sorted({sid for sid, _ in cores})
    missing_pairs = [s for s in slide_ids if not pairs.get(s, {}).get("unstained")]
    if missing_pairs:
        raise InputError(f"{args.store / 'pairs.csv'}: no unstained slide recorded for {', '.join(missing_pairs)}; "
                         "is this the store `stainldm prepare` made?")
    unstained = {s: Path(pairs[s]["unstained"]) for s in slide_ids}
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").write_text("")
        (out / ".write-test").unlink()
    except OSError as exc:
        raise InputError(f"{out}: report folder is not writable ({exc.strerror}); choose another --out") from None
    for p in args.pred:  # fail on a bad folder before any work
        read_prediction_dir(p, unstained)
    for b in args.baseline:
        if not ((b / "model.json").is_file() or b.suffix == ".json"):
            read_prediction_dir(b, unstained, flag="--baseline")
    fid = FidFeatures(args) if args.fid_weights is not None else None
    methods = load_methods(args, unstained, out)
    cmap = fit_colour_map(store, seed=args.seed)
    if cmap is not None:
        methods.append(Method("colour map", "colour map", colour_map=cmap, notes=[cmap.describe()]))
    prep = yaml.safe_load((args.store / "prepare.yaml").read_text()) if (args.store / "prepare.yaml").is_file() else {}
    prep = prep or {}
    plan = Plan(store, cores, methods, from_dict(TissueConfig, prep.get("tissue"), where="prepare.tissue"),
                {"autofluorescence": "fluorescence"}.get(prep.get("unstained_modality", "auto"), "auto"),
                store.rows[next(iter(cores.values()))[0]].mpp, NucleiConfig(match_radius_um=args.match_radius),
                out / "gallery", args.gallery, fid)

    rows: list[dict] = []
    gallery: list[dict] = []
    errors: list[str] = []
    bar = tqdm(total=len(cores), desc="evaluate", unit="core", disable=args.quiet)
    for sid in slide_ids:
        keys = [core for s, core in cores if s == sid]
        slide_rows: list[dict] = []
        try:
            evaluate_slide(plan, sid, unstained[sid], keys, rows=slide_rows, gallery=gallery, errors=errors,
                           progress=bar)
        except StainLDMError as exc:  # the slide itself: its cores not yet evaluated are errors
            errors.append(one_line(exc))
            done = {r["core"] for r in slide_rows}
            for core in keys:
                if core not in done:
                    slide_rows += [_row(m.name, sid, core, f"error: {one_line(exc)}") for m in methods]
                    bar.update(1)
        rows += slide_rows
    bar.close()

    names = [m.name for m in methods]
    summary = report.summarise(rows, names, reference=names[0], seed=args.seed, n_boot=args.bootstrap)
    write_metrics_csv(out / "metrics.csv", rows)
    context = report.ReportContext(
        title=f"stainldm evaluation: {args.split} split of {args.store.name}", split=args.split, store=args.store,
        methods=[report.method_info(m.name, m.kind, m.folder, m.settings(), m.notes, seconds=_seconds(m))
                 for m in methods],
        tile_mpp=plan.tile_mpp, seed=args.seed, n_boot=args.bootstrap, match_radius_um=args.match_radius,
        n_cores=len(cores), gallery_total=len(cores),
        fid=fid.distances(names, seed=args.seed) if fid is not None else None,
        fid_note=None if fid else "FID/KID skipped: no --fid-weights (a local Inception TorchScript file)",
        errors=list(dict.fromkeys(errors)))
    report.write_metrics_json(out / "metrics.json", summary, context)
    html = report.write_report(out, rows=rows, summary=summary, gallery=gallery, context=context)
    print(report.format_summary(summary, names))
    print(f"{out}: {html.name}, metrics.csv, metrics.json ({len(cores)} {args.split} cores, {len(methods)} methods)")
    if errors:
        for msg in dict.fromkeys(errors):
            print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


def evaluate_slide(plan: Plan, sid: str, unstained_path: Path, keys: list[str], *, rows: list[dict],
                   gallery: list[dict], errors: list[str], progress) -> None:
    """Evaluates every method on the cores ``keys`` of one slide, appending rows and gallery entries.

    Raises:
        StainLDMError: the unstained slide cannot be read (a prediction that cannot is recorded).
    """
    from stainldm.eval import report
    from stainldm.eval.metrics import core_metrics, hed_densities, seam_score
    from stainldm.wsi.reader import open_slide
    from stainldm.wsi.tissue import slide_mask

    with open_slide(unstained_path) as uslide:
        if uslide.mpp is None:
            raise InputError(f"{uslide.name}: the unstained slide records no mpp; it cannot be matched to the store")
        slide_mpp = uslide.mpp[0]
        step = plan.tile_mpp / slide_mpp
        mask = slide_mask(uslide, plan.tissue_cfg, modality=plan.modality)
        preds: dict[str, PredictionSlide | str] = {}
        borders: dict[str, tuple[list[float], list[float]]] = {}
        for m in plan.methods:
            if m.colour_map is not None:
                continue
            if sid not in m.slides:
                preds[m.name] = f"missing: no prediction for slide {sid} in {m.folder}"
                continue
            try:
                ps = PredictionSlide(m.slides[sid], m.provenance.get(sid, {}), slide_mpp=slide_mpp,
                                     slide_wh=uslide.dimensions, tile_mpp=plan.tile_mpp)
            except StainLDMError as exc:
                preds[m.name] = f"error: {one_line(exc)}"
                errors.append(one_line(exc))
                continue
            preds[m.name] = ps
            if ps.resampled:
                note = f"prediction at {ps.mpp:g} µm/px resampled to the store's {plan.tile_mpp:g} µm/px"
                if note not in m.notes:
                    m.notes.append(note)
            borders[m.name] = stitch_borders(ps, uslide, plan.store.tile_px)
        try:
            for core in keys:
                c = assemble_core(plan.store, sid, core, plan.cores[(sid, core)], step=step)
                tissue = core_tissue(c, mask, step=step, slide_mpp=slide_mpp, mask_mpp=plan.tissue_cfg.mask_mpp)
                hed_real = hed_densities(c.real)
                panels: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
                for m in plan.methods:
                    src = preds.get(m.name)
                    if isinstance(src, str):
                        rows.append(_row(m.name, sid, core, src, tissue))
                        continue
                    try:
                        virtual, unc = (m.colour_map.apply(c.unstained), None) if m.colour_map is not None else src.read(c)
                    except StainLDMError as exc:
                        rows.append(_row(m.name, sid, core, f"error: {one_line(exc)}", tissue))
                        errors.append(one_line(exc))
                        continue
                    if tissue.any() and (virtual[tissue] >= 250).all(axis=1).mean() > BLANK_FRACTION:
                        rows.append(_row(m.name, sid, core, "missing: core not stained in the prediction", tissue))
                        continue
                    values = core_metrics(virtual, c.real, tissue, mpp=plan.tile_mpp, nuclei=plan.nuclei,
                                          hed_target=hed_real)
                    if m.name in borders:
                        bx, by = borders[m.name]
                        values["seam_score"] = seam_score(virtual, tissue, borders_x=src.to_core_px(bx, c),
                                                          borders_y=_rows_px(src, by, c))
                    rows.append(_row(m.name, sid, core, "ok", tissue, values))
                    panels[m.name] = (virtual, unc)
                    if plan.fid is not None:
                        plan.fid.add(m.name, _cut(virtual, c.tiles_uv, plan.store.tile_px))
                if plan.fid is not None:
                    plan.fid.add("real", _cut(c.real, c.tiles_uv, plan.store.tile_px))
                if len(gallery) < plan.gallery_max:
                    gallery.append(report.save_core_panels(plan.gallery_dir, c.key, unstained=c.unstained, real=c.real,
                                                           tissue=tissue, virtual=panels, mpp=plan.tile_mpp))
                progress.update(1)
        finally:
            for ps in preds.values():
                if isinstance(ps, PredictionSlide):
                    ps.close()


def _rows_px(pred: PredictionSlide, ys: list[float], core: CoreImages) -> list[int]:
    s = pred.mpp / pred.tile_mpp
    return [round(y * s - core.xy[1] * pred.slide_mpp / pred.tile_mpp) for y in ys]


def _cut(img: np.ndarray, uv: list[tuple[int, int]], t: int) -> list[np.ndarray]:
    return [img[v : v + t, u : u + t] for u, v in uv]


class FidFeatures:
    """Inception features of store-tile-sized patches, gathered core by core (patches are not kept)."""

    def __init__(self, args):
        import torch

        auto = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = auto if args.device == "auto" else args.device
        try:
            self.model = torch.jit.load(str(args.fid_weights), map_location=self.device).eval()
        except Exception as exc:
            raise InputError(f"--fid-weights {args.fid_weights}: not a TorchScript module ({type(exc).__name__}); "
                             "give a local Inception TorchScript file such as inception-2015-12-05.pt") from None
        self.features: dict[str, list[np.ndarray]] = {}

    def add(self, name: str, patches: list[np.ndarray]) -> None:
        from stainldm.eval.metrics import inception_features

        if patches:
            self.features.setdefault(name, []).append(inception_features(self.model, np.stack(patches),
                                                                         device=self.device))

    def distances(self, methods: list[str], *, seed: int) -> dict[str, dict]:
        from stainldm.eval.metrics import fid, kid

        real = np.concatenate(self.features["real"]) if self.features.get("real") else None
        out = {}
        for m in methods:
            feat = np.concatenate(self.features[m]) if self.features.get(m) else np.zeros((0, 1))
            if real is None or len(feat) < 2:
                out[m] = {"fid": math.nan, "kid": math.nan, "kid_std": math.nan, "patches": len(feat)}
                continue
            k, ks = kid(feat, real, seed=seed)
            out[m] = {"fid": fid(feat, real), "kid": k, "kid_std": ks, "patches": len(feat)}
        return out


def _seconds(m: Method) -> float | None:
    s = [p.get("seconds") for p in m.provenance.values() if isinstance(p.get("seconds"), (int, float))]
    return float(sum(s)) if s else None


def _row(method: str, sid: str, core: str, status: str, tissue: np.ndarray | None = None,
         values: dict | None = None) -> dict:
    row = {"method": method, "slide_id": sid, "core": core, "status": status,
           "tissue_px": int(tissue.sum()) if tissue is not None else 0}
    for k in CSV_METRICS:
        row[k] = (values or {}).get(k, math.nan)
    return row


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    atomic_write_csv(path, [["method", "slide_id", "core", "status", "tissue_px", *CSV_METRICS],
                            *([r["method"], r["slide_id"], r["core"], r["status"], r["tissue_px"],
                               *("" if not math.isfinite(r[k]) else f"{r[k]:.6g}" for k in CSV_METRICS)]
                              for r in rows)])


