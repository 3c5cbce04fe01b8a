"""The evaluation: every method's virtual H&E against the real H&E, core by core, as typed rows.

    data = EvalData.open(Path("store"), split="test")
    methods = load_methods(data.unstained, preds=[Path("pred_ldm")], out=out)
    methods.append(colour_map_method(data.store, seed=0))  # None without train tiles
    result = evaluate(data, methods, match_radius=4.0, gallery_dir=out / "gallery")
    write_metrics_csv(out / "metrics.csv", result.rows)

Per core: the real H&E and the unstained input assembled from the store's tiles (registered exactly
as for training), each method's virtual H&E read over the same region at the store's mpp, the
metrics on the unstained slide's tissue mask. A prediction that cannot be read, or that lacks a
slide or a core, gives rows with a ``missing: ...`` or ``error: ...`` status; the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stainldm.errors import InputError, StainLDMError, one_line
from stainldm.eval.cores import CoreImages, assemble_core, core_tissue, split_cores, tile_patches
from stainldm.eval.fid import REAL, FidModel, check_fid_weights, fid_kid
from stainldm.eval.predictions import Method, PredictionSlide, stitch_borders
from stainldm.eval.table import CoreRow

log = logging.getLogger(__name__)

BLANK_FRACTION = 0.95  # a core whose tissue is this white in a prediction was not stained


# ---------------------------------------------------------------------------------------------
# What is evaluated
# ---------------------------------------------------------------------------------------------
@dataclass
class EvalData:
    """The cores of one split of a tile store, their unstained slides, and how prepare found tissue.

    Attributes:
        cores: ``(slide_id, core)`` -> tile indices (:func:`~stainldm.eval.cores.split_cores`).
        unstained: slide_id -> its unstained slide (from the store's ``pairs.csv``).
        tissue: the tissue detection prepare used (``prepare.yaml``).
        modality: the unstained modality for tissue detection.
    """

    store_dir: Path
    store: Any  # TileStore
    split: str
    cores: dict[tuple[str, str], list[int]]
    unstained: dict[str, Path]
    tissue: Any  # TissueConfig
    modality: str

    @classmethod
    def open(cls, store: str | Path, *, split: str = "test") -> EvalData:
        """Opens the store and finds the split's cores and their unstained slides.

        Raises:
            InputError: the store cannot be opened, has no tiles in ``split``, or records no unstained
                slide for one of its slides.
            ConfigError: its ``prepare.yaml`` holds a bad tissue section.
        """
        import yaml

        from stainldm.config import from_dict
        from stainldm.data.store import TileStore, read_pairs
        from stainldm.wsi.tissue import TissueConfig

        store = Path(store)
        tiles = TileStore.open(store)
        cores = split_cores(tiles, split)  # the store refuses a split without tiles
        pairs = read_pairs(store / "pairs.csv")
        slide_ids = sorted({sid for sid, _ in cores})
        missing = [s for s in slide_ids if not pairs.get(s, {}).get("unstained")]
        if missing:
            raise InputError(f"{store / 'pairs.csv'}: no unstained slide recorded for {', '.join(missing)}; "
                             "is this the store `stainldm prepare` made?")
        prep_file = store / "prepare.yaml"
        prep = (yaml.safe_load(prep_file.read_text()) if prep_file.is_file() else {}) or {}
        return cls(store, tiles, split, cores, {s: Path(pairs[s]["unstained"]) for s in slide_ids},
                   from_dict(TissueConfig, prep.get("tissue"), where="prepare.tissue"),
                   {"autofluorescence": "fluorescence"}.get(prep.get("unstained_modality", "auto"), "auto"))

    @property
    def tile_mpp(self) -> float:
        """The store's µm/px: the frame every core is evaluated in."""
        return self.store.rows[next(iter(self.cores.values()))[0]].mpp

    @property
    def slide_ids(self) -> list[str]:
        """The evaluated slides, sorted."""
        return sorted({sid for sid, _ in self.cores})

    def slide_cores(self, slide_id: str) -> list[str]:
        """The cores of one slide, in store order."""
        return [core for sid, core in self.cores if sid == slide_id]


def check_options(*, match_radius: float, fid_weights: Path | None = None) -> None:
    """Checks the evaluation's options before any work.

    Raises:
        InputError: ``match_radius`` is not positive, or ``fid_weights`` is not a file.
    """
    if match_radius <= 0:
        raise InputError(f"`match_radius` {match_radius}: must be positive (µm)")
    check_fid_weights(fid_weights)


def fit_colour_map(store: Any, *, seed: int, max_tiles: int = 512) -> Any | None:
    """The per-pixel colour map fit on (a seeded subsample of) the store's train split.

    Returns:
        A fitted :class:`~stainldm.eval.metrics.ColourMap`, or None without train tiles.
    """
    from stainldm.eval.metrics import ColourMap

    idx = [i for i, r in enumerate(store.rows) if r.split == "train"]
    if not idx:
        return None
    rng = np.random.default_rng(seed)
    if len(idx) > max_tiles:
        idx = sorted(rng.choice(idx, max_tiles, replace=False).tolist())
    pairs = [store.read(i) for i in idx]
    return ColourMap.fit(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), seed=seed)


def colour_map_method(store: Any, *, seed: int) -> Method | None:
    """The colour map as a method (the floor a model must beat), or None without train tiles."""
    cmap = fit_colour_map(store, seed=seed)
    if cmap is None:
        return None
    return Method("colour map", "colour map", colour_map=cmap, notes=[cmap.describe()])


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """What :func:`evaluate` found.

    Attributes:
        methods: the methods, in display order (the first is the reference).
        rows: one row per core and method, slides sorted, cores in store order, methods in order.
        gallery: the gallery entries (:func:`~stainldm.eval.figures.save_core_panels`), if saved.
        errors: distinct error messages (a prediction or slide that could not be read), in order.
        notes: method name -> what the report should say about it (a prediction resampled, ...).
        fid_kid: method -> FID/KID (:func:`fid_kid`), None when not computed.
        tile_mpp: the µm/px the cores were evaluated at.
        n_cores: cores evaluated.
    """

    methods: list[Method]
    rows: list[CoreRow]
    gallery: list[dict]
    errors: list[str]
    notes: dict[str, list[str]]
    fid_kid: dict[str, dict] | None
    tile_mpp: float
    n_cores: int

    @property
    def names(self) -> list[str]:
        """The method names, in display order."""
        return [m.name for m in self.methods]

    def notes_of(self, method: Method) -> list[str]:
        """The method's own notes, then what the evaluation noted about it."""
        return [*method.notes, *(n for n in self.notes.get(method.name, []) if n not in method.notes)]


@dataclass
class _CoreResult:
    rows: list[CoreRow]
    errors: list[str]
    panels: dict[str, tuple[np.ndarray, np.ndarray | None]]  # method -> (virtual, uncertainty), stained cores
    core: CoreImages
    tissue: np.ndarray


@dataclass
class _SlideSources:
    """One unstained slide and every method's prediction of it, open for reading (a context manager)."""

    sid: str
    slide_mpp: float
    step: float  # unstained level-0 px per core px
    mask: np.ndarray
    preds: dict[str, PredictionSlide | str] = field(default_factory=dict)  # method -> open, or its status
    borders: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def __enter__(self) -> _SlideSources:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.preds.values():
            if isinstance(p, PredictionSlide):
                p.close()


def _open_slide_sources(data: EvalData, sid: str, methods: Sequence[Method]) -> _SlideSources:
    """Reads the unstained slide's mpp and tissue mask and opens each method's prediction of it.

    Raises:
        StainLDMError: the unstained slide cannot be read (a prediction that cannot is recorded).
    """
    from stainldm.wsi.reader import open_slide
    from stainldm.wsi.tissue import slide_mask

    tile_mpp = data.tile_mpp
    with open_slide(data.unstained[sid]) as uslide:
        if uslide.mpp is None:
            raise InputError(f"{uslide.name}: the unstained slide records no mpp; it cannot be matched to the store")
        slide_mpp = uslide.mpp[0]
        src = _SlideSources(sid, slide_mpp, tile_mpp / slide_mpp, slide_mask(uslide, data.tissue, modality=data.modality))
        slide_wh = uslide.dimensions
    try:
        _open_predictions(src, methods, slide_wh=slide_wh, tile_mpp=tile_mpp, store_tile_px=data.store.tile_px)
    except BaseException:
        src.__exit__()
        raise
    return src


def _open_predictions(src: _SlideSources, methods: Sequence[Method], *, slide_wh: tuple[int, int], tile_mpp: float,
                      store_tile_px: int) -> None:
    """Opens each method's prediction of the slide into ``src`` (or records why it cannot be read)."""
    sid, slide_mpp = src.sid, src.slide_mpp
    for m in methods:
        if m.colour_map is not None:
            continue
        if sid not in m.slides:
            src.preds[m.name] = f"missing: no prediction for slide {sid} in {m.folder}"
            continue
        try:
            ps = PredictionSlide(m.slides[sid], m.provenance.get(sid, {}), slide_mpp=slide_mpp, slide_wh=slide_wh,
                                 tile_mpp=tile_mpp)
        except StainLDMError as exc:
            src.preds[m.name] = f"error: {one_line(exc)}"
            src.errors.append(one_line(exc))
            continue
        src.preds[m.name] = ps
        if ps.resampled:
            src.notes[m.name] = f"prediction at {ps.mpp:g} µm/px resampled to the store's {tile_mpp:g} µm/px"
        src.borders[m.name] = stitch_borders(ps, store_tile_px)


def _evaluate_core(data: EvalData, src: _SlideSources, core: str, methods: Sequence[Method], nuclei: Any
                   ) -> _CoreResult:
    """Every method on one core: a row each, and the virtual H&E of those that stained it."""
    from stainldm.eval.metrics import core_metrics, hed_densities, seam_score
    from stainldm.eval.realism import core_realism, nuclei_morphology

    sid, tile_mpp = src.sid, data.tile_mpp
    c = assemble_core(data.store, sid, core, data.cores[(sid, core)], step=src.step)
    tissue = core_tissue(c, src.mask, step=src.step, slide_mpp=src.slide_mpp, mask_mpp=data.tissue.mask_mpp)
    tissue_px = int(tissue.sum())
    hed_real = hed_densities(c.real)
    morph_real = nuclei_morphology(hed_real, tissue, mpp=tile_mpp, cfg=nuclei)  # shared by the methods
    res = _CoreResult([], [], {}, c, tissue)
    for m in methods:
        pred = src.preds.get(m.name)
        if isinstance(pred, str):
            res.rows.append(CoreRow.make(m.name, sid, core, pred, tissue_px=tissue_px))
            continue
        try:
            virtual, unc = (m.colour_map.apply(c.unstained), None) if m.colour_map is not None else pred.read(c)
        except StainLDMError as exc:
            res.rows.append(CoreRow.make(m.name, sid, core, f"error: {one_line(exc)}", tissue_px=tissue_px))
            res.errors.append(one_line(exc))
            continue
        if tissue.any() and (virtual[tissue] >= 250).all(axis=1).mean() > BLANK_FRACTION:
            res.rows.append(CoreRow.make(m.name, sid, core, "missing: core not stained in the prediction",
                                         tissue_px=tissue_px))
            continue
        hed_virtual = hed_densities(virtual)
        values = core_metrics(virtual, c.real, tissue, mpp=tile_mpp, nuclei=nuclei, hed_target=hed_real,
                              hed_pred=hed_virtual)
        values.update(core_realism(virtual, c.real, tissue, mpp=tile_mpp, hed_pred=hed_virtual, hed_target=hed_real,
                                   nuclei=nuclei, target_morphology=morph_real))
        if m.name in src.borders:
            bx, by = src.borders[m.name]
            values["seam_score"] = seam_score(virtual, tissue, borders_x=pred.to_core_px(bx, c),
                                              borders_y=pred.to_core_px(by, c, axis=1))
        res.rows.append(CoreRow.make(m.name, sid, core, "ok", tissue_px=tissue_px, values=values))
        res.panels[m.name] = (virtual, unc)
    return res


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------
def evaluate(data: EvalData, methods: Sequence[Method], *, match_radius: float = 4.0, fid: FidModel | None = None,
             seed: int = 0, n_boot: int = 2000, gallery_dir: Path | None = None, gallery: int = 24,
             progress: Callable[[int], Any] | None = None) -> Evaluation:
    """Evaluates every method on every core of ``data``.

    Args:
        data: the cores (:meth:`EvalData.open`).
        methods: the methods (:func:`~stainldm.eval.predictions.load_methods`, :func:`colour_map_method`).
        match_radius: nuclei match radius in µm.
        fid: the FID/KID feature model; None skips FID/KID.
        seed: KID's subset and bootstrap seed.
        n_boot: KID's bootstrap resamples (over cores: :func:`~stainldm.eval.fid.kid_bootstrap`).
        gallery_dir: where the first ``gallery`` cores' panels are saved (PNG); None saves none.
        gallery: how many cores the gallery shows.
        progress: called with 1 after each core (``tqdm.update``).

    Returns:
        The rows, gallery entries, errors, notes and FID/KID.

    Raises:
        InputError: ``match_radius`` is not positive.
    """
    from stainldm.eval.figures import save_core_panels
    from stainldm.eval.metrics import NucleiConfig

    check_options(match_radius=match_radius)
    nuclei = NucleiConfig(match_radius_um=match_radius)
    tile_mpp, tile_px = data.tile_mpp, data.store.tile_px
    rows: list[CoreRow] = []
    entries: list[dict] = []
    errors: list[str] = []
    notes: dict[str, list[str]] = {}
    features: dict[str, dict[tuple[str, str], np.ndarray]] = {}  # method -> core -> patch features
    for sid in data.slide_ids:
        done: set[str] = set()
        try:
            with _open_slide_sources(data, sid, methods) as src:
                errors += src.errors
                for name, note in src.notes.items():
                    if note not in notes.setdefault(name, []):
                        notes[name].append(note)
                for core in data.slide_cores(sid):
                    res = _evaluate_core(data, src, core, methods, nuclei)
                    rows += res.rows
                    errors += res.errors
                    if fid is not None:  # patches at the store's tiles, as the model saw them; then the real ones
                        for name, (virtual, _) in res.panels.items():
                            _add_features(features, name, (sid, core), fid, tile_patches(virtual, res.core, tile_px))
                        _add_features(features, REAL, (sid, core), fid, tile_patches(res.core.real, res.core, tile_px))
                    if gallery_dir is not None and len(entries) < gallery:
                        entries.append(save_core_panels(gallery_dir, res.core.key, unstained=res.core.unstained,
                                                        real=res.core.real, tissue=res.tissue, virtual=res.panels,
                                                        mpp=tile_mpp))
                    done.add(core)
                    if progress is not None:
                        progress(1)
        except StainLDMError as exc:  # the slide itself: its cores not yet evaluated are errors
            errors.append(one_line(exc))
            for core in data.slide_cores(sid):
                if core not in done:
                    rows += [CoreRow.make(m.name, sid, core, f"error: {one_line(exc)}") for m in methods]
                    if progress is not None:
                        progress(1)
    names = [m.name for m in methods]
    return Evaluation(list(methods), rows, entries, list(dict.fromkeys(errors)), notes,
                      fid_kid(features, names, seed=seed, n_boot=n_boot) if fid is not None else None, tile_mpp,
                      len(data.cores))


def _add_features(features: dict[str, dict[tuple[str, str], np.ndarray]], name: str, core: tuple[str, str],
                  fid: FidModel, patches: list[np.ndarray]) -> None:
    if patches:
        features.setdefault(name, {})[core] = fid.features(patches)


# ---------------------------------------------------------------------------------------------
# The outputs
# ---------------------------------------------------------------------------------------------
FID_SKIPPED = "FID/KID skipped: no --fid-weights (a local Inception TorchScript file)"  # report text, as ever


def write_evaluation(out: Path, result: Evaluation, *, store: Path, split: str, seed: int = 0, n_boot: int = 2000,
                     match_radius: float = 4.0) -> tuple[dict, Path]:
    """Writes ``metrics.csv``, ``metrics.json`` and ``report.html`` (with its figures) into ``out``.

    Args:
        out: the report folder (created; the gallery, if any, already in ``out/gallery``).
        result: what :func:`evaluate` found.
        store, split: what was evaluated (for the title and provenance).
        seed, n_boot: the bootstrap's seed and resamples.
        match_radius: the nuclei match radius the metrics used (µm).

    Returns:
        The summary (:func:`stainldm.eval.stats.summarise`; the first method is the reference) and
        the HTML path.
    """
    from stainldm.eval import report, stats
    from stainldm.eval.table import write_metrics_csv

    out.mkdir(parents=True, exist_ok=True)
    names = result.names
    summary = stats.summarise(result.rows, names, reference=names[0], seed=seed, n_boot=n_boot)
    write_metrics_csv(out / "metrics.csv", result.rows)
    context = report.ReportContext(
        title=f"stainldm evaluation: {split} split of {store.name}", split=split, store=store,
        methods=[report.method_info(m.name, m.kind, m.folder, m.settings(), result.notes_of(m), seconds=m.seconds)
                 for m in result.methods],
        tile_mpp=result.tile_mpp, seed=seed, n_boot=n_boot, match_radius_um=match_radius, n_cores=result.n_cores,
        gallery_total=result.n_cores, fid=result.fid_kid, fid_note=None if result.fid_kid is not None else FID_SKIPPED,
        errors=result.errors)
    report.write_metrics_json(out / "metrics.json", summary, context)
    return summary, report.write_report(out, rows=result.rows, summary=summary, gallery=result.gallery,
                                        context=context)
