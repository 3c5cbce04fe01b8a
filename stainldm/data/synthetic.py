"""Synthetic unstained / H&E tissue-microarray (TMA) slide pairs, simulated from a real H&E slide.

No real, shareable pairs of an unstained scan and the H&E scan of the same section exist for a
demo, so :func:`make_tma_pair` builds one from a single real H&E slide:

    with open_slide("data/samples/CMU-1-Small-Region.svs") as src:
        pair = make_tma_pair(src, SampleConfig(seed=1))
    pair.unstained   # (H, W, 2) uint16 autofluorescence, or (H, W, 1) uint8 brightfield
    pair.stained     # (H', W', 3) uint8 H&E in the stained slide's own (misregistered) frame
    pair.truth       # what truth.json holds: cores, split, transform, landmarks

This module is the recipe; each step is its own module:

1. **Layout** (:mod:`stainldm.data.tma_layout`): a grid of round cores on glass (QuPath labels
   ``A1, A2, … B1, …``; some positions empty), jittered, with a slightly irregular edge.
2. **Cores from the source** (:mod:`stainldm.data.sample_plan`): disc centres where the source is
   mostly tissue, the source cut by a straight line into disjoint *test* and *train* parts.
3. **H&E composite** (here): each core is a disc of the real H&E, resampled to ``mpp`` with
   ``read_at_mpp``, rotated by a random angle and possibly mirrored, on glass (``he_aligned``).
4. **Stained slide** (:mod:`stainldm.data.warp`): the composite as the stained slide shows it after
   re-scanning: the section re-placed on the scanner (rotation ≤ 3°, shift ≤ 200 µm, one rigid
   transform ``A``) and stretched a little by staining and coverslipping (a smooth elastic field
   ``e`` of ≤ 3 px): a stained pixel ``q`` shows the unstained point ``p = A⁻¹(q + e(q))``.
5. **Unstained slide** (:mod:`stainldm.data._optics`): what a scanner records from the section
   before staining: two-channel autofluorescence (default; uint16, dark background) or one-channel
   brightfield (uint8, glass ≈ 245).
6. **Truth** (here): tissue landmarks per core with their stained positions, and everything above,
   as truth.json records it.
7. **Realism** (optional, :mod:`stainldm.data._realism`; ``realism.enabled``): structures one side
   shows and the other does not (DAB-like deposits, pigment, dust, bright granules, debris, missing
   nuclei), each slide its own blur, noise and contrast. Drawn in the unstained frame before the
   warp, from their own seed stream: layout, transform, tissue mask and landmarks do not change.

**Limits.** It is a simulation from H&E, not a measurement: the unstained image is (up to noise
and granules) a function of the H&E, so a model can learn relations real pairs do not have, and
real autofluorescence carries contrast H&E lacks (elastin vs collagen, lipids, metabolic state).
The stained slide is the real H&E resampled, not a second scan: without ``realism`` no stain or
focus differences between the slides; in no case tissue lost, folded or torn by staining. All
cores come from one small skin slide, so tissue repeats across train cores.

Coordinates are level-0 pixels, continuous, pixel ``(i, j)`` covering ``[i, i+1) × [j, j+1)`` as
in :meth:`SlideReader.read_at_mpp`; its centre is ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

import stainldm
from stainldm.config import config_hash, to_dict
from stainldm.data._optics import (
    AUTOFLUORESCENCE_CHANNELS,
    BRIGHTFIELD_CHANNELS,
    AutofluorescenceConfig,
    BrightfieldConfig,
    CoreBox,
    simulate_autofluorescence,
    simulate_brightfield,
)
from stainldm.data._realism import (
    OneSided,
    RealismConfig,
    draw_one_sided,
    finish_stained,
    summarize,
    unstained_camera,
)
from stainldm.data.sample_plan import SamplingConfig, SourcePlan, plan_source
from stainldm.data.tma_layout import GridConfig, Layout, core_alpha, core_matrix, plan_layout
from stainldm.data.warp import (
    Misregistration,
    MisregistrationConfig,
    draw_misregistration,
    render_stained,
    stained_to_unstained,
    unstained_to_stained,
)
from stainldm.errors import ConfigError, InputError, RunError
from stainldm.wsi.reader import SlideReader
from stainldm.wsi.tissue import he_fixed_threshold_mask

# stained_to_unstained is re-exported: readers of truth.json have imported it from here.
__all__ = ["SampleConfig", "SamplePair", "make_tma_pair", "stained_to_unstained"]

log = logging.getLogger(__name__)

TRUTH_FORMAT = "stainldm-sample-truth/1"
CONVENTIONS = ("level-0 pixels, continuous: pixel (i, j) covers [i, i+1) x [j, j+1), its centre is "
               "(i+0.5, j+0.5); row/col are 0-based grid indices (A1 = row 0, col 0); landmarks are "
               "[x_unstained, y_unstained, x_stained, y_stained]; source_* in the source's level-0 pixels")


@dataclass(frozen=True)
class SampleConfig:
    """Everything :func:`make_tma_pair` needs; ``seed`` drives every random draw.

    Attributes:
        seed: random seed.
        modality: ``"autofluorescence"`` (2 × uint16) or ``"brightfield"`` (1 × uint8).
        mpp: µm per pixel of both output slides.
        thickness_variation: per-core section thickness factor is drawn from ``1 ± this``.
        landmarks_per_core: tissue landmarks recorded per core.
        realism: one-sided structures and per-slide optics (off by default; see
            :class:`~stainldm.data._realism.RealismConfig`).
    """

    seed: int = 0
    modality: Literal["autofluorescence", "brightfield"] = "autofluorescence"
    mpp: float = 0.5
    thickness_variation: float = 0.15
    landmarks_per_core: int = 120
    grid: GridConfig = field(default_factory=GridConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    misregistration: MisregistrationConfig = field(default_factory=MisregistrationConfig)
    autofluorescence: AutofluorescenceConfig = field(default_factory=AutofluorescenceConfig)
    brightfield: BrightfieldConfig = field(default_factory=BrightfieldConfig)
    realism: RealismConfig = field(default_factory=RealismConfig)

    def __post_init__(self) -> None:
        if not 0.05 <= self.mpp <= 10:
            raise ConfigError(f"mpp ({self.mpp}) must be between 0.05 and 10 µm/px")
        if not 0 <= self.thickness_variation < 1:
            raise ConfigError(f"thickness_variation ({self.thickness_variation}) must be in [0, 1)")
        if self.landmarks_per_core < 1:
            raise ConfigError(f"landmarks_per_core ({self.landmarks_per_core}) must be at least 1")
        if self.grid.core_diameter_um / self.mpp < 32:
            raise ConfigError(f"grid.core_diameter_um ({self.grid.core_diameter_um}) is under 32 px at mpp "
                              f"{self.mpp}; use larger cores")


@dataclass(frozen=True, eq=False)
class SamplePair:
    """A simulated slide pair.

    Attributes:
        unstained: ``(H, W, C)`` unstained slide (uint16 autofluorescence or uint8 brightfield).
        stained: ``(H', W', 3)`` uint8 H&E slide in its own frame.
        he_aligned: ``(H, W, 3)`` uint8 H&E in the unstained frame (what ``stained`` is warped from;
            with realism, before the stained scan's own blur and noise).
        tissue_mask: ``(H, W)`` bool, tissue in the unstained frame.
        channel_names: names of the unstained channels.
        mpp: µm per pixel of both slides.
        truth: the ground truth, as written to truth.json (JSON-serialisable).
        realism_masks: with realism, per one-sided structure the ``(H, W)`` bool pixels it covers
            in the unstained frame (truth.json's ``realism`` says which side shows it); else empty.
    """

    unstained: np.ndarray
    stained: np.ndarray
    he_aligned: np.ndarray
    tissue_mask: np.ndarray
    channel_names: tuple[str, ...]
    mpp: float
    truth: dict[str, Any]
    realism_masks: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------
def make_tma_pair(source: SlideReader, cfg: SampleConfig) -> SamplePair:
    """Simulates an unstained / H&E TMA slide pair from a real H&E slide.

    Args:
        source: an RGB H&E slide with a known mpp.
        cfg: the simulation settings (``cfg.seed`` makes it reproducible).

    Returns:
        the pair and its ground truth (see the module docstring and truth.json's ``conventions``);
        with ``cfg.realism.enabled`` truth.json also gets ``realism``: per one-sided structure the
        side that shows it, its count and the fraction of tissue and slide pixels it covers.

    Raises:
        InputError: the source has no mpp, is not RGB, or has too little tissue for the cores.
        ConfigError: the grid margin is too small for the misregistration.
    """
    if source.mpp is None:
        raise InputError(f"{source.name}: the source slide does not record its resolution (mpp); use a slide "
                         "that does, or pass `mpp` when opening it")
    if source.channels != 3 or source.dtype != np.uint8:
        raise InputError(f"{source.name}: the source must be an RGB uint8 H&E slide, got {source.channels} "
                         f"channel(s) of {np.dtype(source.dtype).name}")
    # The sixth child (realism) leaves the first five, and so the plain simulation, unchanged.
    seeds = np.random.SeedSequence(cfg.seed).spawn(6)
    rng_layout, rng_source, rng_warp, rng_optics, rng_marks = (np.random.default_rng(s) for s in seeds[:5])

    layout = plan_layout(cfg.grid, mpp=cfg.mpp, thickness_variation=cfg.thickness_variation, rng=rng_layout)
    plan = plan_source(source, layout, mpp=cfg.mpp, sampling=cfg.sampling,
                       core_diameter_um=cfg.grid.core_diameter_um, rng=rng_source)
    log.debug("source split %s at %.1f px; %d train, %d test cores", plan.axis, plan.split_px,
              sum(c.split == "train" for c in layout.cores), sum(c.split == "test" for c in layout.cores))
    he, alphas = _render_he(source, cfg.mpp, layout, plan)
    tissue = np.zeros(he.shape[:2], dtype=bool)
    for x0, y0, alpha in alphas:
        h, w = alpha.shape
        box = he[y0 : y0 + h, x0 : x0 + w]
        tissue[y0 : y0 + h, x0 : x0 + w] |= (alpha > 0.5) & he_fixed_threshold_mask(box)
    transform = draw_misregistration(cfg.misregistration, size_wh=layout.size_wh,
                                     centers_xy=np.array([c.center_xy for c in layout.cores]),
                                     reach_px=layout.reach_px, margin_px=layout.margin_px, mpp=cfg.mpp, rng=rng_warp)
    one: OneSided | None = None
    he_stained, he_unstained, extras, af, bf = he, he, None, cfg.autofluorescence, cfg.brightfield
    if cfg.realism.enabled:
        one = draw_one_sided(he, tissue, alphas, realism=cfg.realism, modality=cfg.modality, mpp=cfg.mpp,
                             glass_rgb=plan.glass_rgb, seed=seeds[5])
        he_stained, he_unstained, extras = one.he_stained, one.he_unstained, one.extras
        af, bf = unstained_camera(cfg.realism, af, bf)
    stained = render_stained(he_stained, transform, plan.glass_rgb)
    if one is not None:
        stained = finish_stained(stained, realism=cfg.realism, mpp=cfg.mpp, seed=seeds[5])
    thickness = [c.thickness for c in layout.cores]
    if cfg.modality == "autofluorescence":
        unstained = simulate_autofluorescence(he_unstained, tissue, alphas, thickness, plan.glass_rgb,
                                              af=af, mpp=cfg.mpp, rng=rng_optics, extras=extras)
        names = AUTOFLUORESCENCE_CHANNELS
    else:
        unstained = simulate_brightfield(he_unstained, tissue, alphas, thickness, plan.glass_rgb,
                                         bf=bf, mpp=cfg.mpp, rng=rng_optics, extras=extras)
        names = BRIGHTFIELD_CHANNELS
    landmarks = _landmarks(layout, tissue, transform, cfg.landmarks_per_core, rng_marks)
    truth = _truth(source, cfg, layout, plan, transform, landmarks, unstained, stained, names)
    if one is not None:
        truth["realism"] = summarize(one, tissue)
    return SamplePair(unstained=unstained, stained=stained, he_aligned=he_stained, tissue_mask=tissue,
                      channel_names=names, mpp=cfg.mpp, truth=truth, realism_masks=one.masks if one else {})


def _render_he(source: SlideReader, mpp: float, layout: Layout,
               plan: SourcePlan) -> tuple[np.ndarray, list[CoreBox]]:
    """H&E cores on glass in the unstained frame; returns the image and per-core (x0, y0, alpha)."""
    w, h = layout.size_wh
    he = np.empty((h, w, 3), dtype=np.uint8)
    he[:] = plan.glass_rgb
    fx, fy = plan.f_xy
    half = math.ceil(plan.radius_px / min(fx, fy)) + 4
    box_src = 2 * half
    alphas = []
    for core in layout.cores:
        tl = (core.source_center_xy[0] - fx * half, core.source_center_xy[1] - fy * half)
        patch = source.read_at_mpp(tl, (box_src, box_src), mpp)
        pad = 8
        x0 = math.floor(core.center_xy[0] - layout.reach_px - pad)
        y0 = math.floor(core.center_xy[1] - layout.reach_px - pad)
        bw = math.ceil(core.center_xy[0] + layout.reach_px + pad) - x0
        bh = math.ceil(core.center_xy[1] + layout.reach_px + pad) - y0
        m = core_matrix(core)
        # dst index d has centre p = d + (x0, y0) + 0.5; source patch coordinate s = half + M (p - c);
        # cv2 samples source index s - 0.5.
        offset = m @ (np.array([x0 + 0.5, y0 + 0.5]) - core.center_xy) + half - 0.5
        warped = cv2.warpAffine(patch, np.column_stack([m, offset]), (bw, bh),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        alpha = core_alpha(core, layout.radius_px, x0, y0, bw, bh)
        glass = np.asarray(plan.glass_rgb, dtype=np.float32)
        mixed = alpha[..., None] * warped + (1 - alpha[..., None]) * glass
        he[y0 : y0 + bh, x0 : x0 + bw] = np.rint(mixed).astype(np.uint8)
        alphas.append((x0, y0, alpha))
    return he, alphas


# ---------------------------------------------------------------------------------------------
# Landmarks and the truth record
# ---------------------------------------------------------------------------------------------
def _landmarks(layout: Layout, tissue: np.ndarray, tr: Misregistration, n: int,
               rng: np.random.Generator) -> dict[str, list[list[float]]]:
    """``n`` tissue pixel centres per core (inside 85% of its radius) and their stained positions."""
    transform = tr.as_dict()
    points, owners = [], []
    for core in layout.cores:
        r = 0.85 * layout.radius_px
        x0, y0 = math.floor(core.center_xy[0] - r), math.floor(core.center_xy[1] - r)
        x1, y1 = math.ceil(core.center_xy[0] + r), math.ceil(core.center_xy[1] + r)
        ys, xs = np.nonzero(tissue[y0:y1, x0:x1])
        px, py = xs + x0 + 0.5, ys + y0 + 0.5
        inside = np.hypot(px - core.center_xy[0], py - core.center_xy[1]) <= r
        px, py = px[inside], py[inside]
        pick = np.sort(rng.choice(len(px), size=min(n, len(px)), replace=False))
        points.append(np.column_stack([px[pick], py[pick]]))
        owners += [core.id] * len(pick)
    p = np.concatenate(points)
    q = np.round(unstained_to_stained(p, transform), 4)
    residual = np.abs(stained_to_unstained(q, transform) - p).max(initial=0.0)
    if residual >= 1e-3:
        raise RunError(f"landmark round trip residual {residual:.2g} px exceeds 1e-3 px; report this")
    out: dict[str, list[list[float]]] = {c.id: [] for c in layout.cores}
    for cid, pp, qq in zip(owners, p.tolist(), q.tolist(), strict=True):
        out[cid].append([*pp, *qq])
    return out


def _truth(source: SlideReader, cfg: SampleConfig, layout: Layout, plan: SourcePlan, tr: Misregistration,
           landmarks, unstained: np.ndarray, stained: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    transform = tr.as_dict()
    centers = np.array([c.center_xy for c in layout.cores])
    centers_s = unstained_to_stained(centers, transform)
    fx, fy = plan.f_xy
    cores = []
    for core, cs in zip(layout.cores, centers_s, strict=True):
        lin = np.diag([fx, fy]) @ core_matrix(core)
        cores.append({
            "id": core.id, "row": core.row, "col": core.col, "split": core.split,
            "center_unstained_xy": core.center_xy.tolist(), "center_stained_xy": np.round(cs, 4).tolist(),
            "diameter_px": 2 * layout.radius_px,
            "source_center_xy": core.source_center_xy.tolist(), "source_radius_px": plan.radius_px,
            "rotation_deg": core.rotation_deg, "flip": core.flip,
            "unstained_to_source": np.column_stack([lin, core.source_center_xy - lin @ core.center_xy]).tolist(),
            "thickness": core.thickness,
        })
    w0, h0 = plan.dimensions
    ax = 0 if plan.axis == "x" else 1
    low = [0.0, 0.0, float(w0), float(h0)]
    low[2 + ax] = plan.split_px
    high = [0.0, 0.0, float(w0), float(h0)]
    high[ax], high[2 + ax] = plan.split_px, (w0, h0)[ax] - plan.split_px
    test_box, train_box = (low, high) if plan.test_side == "low" else (high, low)
    return {
        "format": TRUTH_FORMAT,
        "conventions": CONVENTIONS,
        "mpp": cfg.mpp,
        "modality": cfg.modality,
        "seed": cfg.seed,
        "unstained": {"size_wh": [unstained.shape[1], unstained.shape[0]], "channel_names": list(names),
                      "dtype": unstained.dtype.name},
        "stained": {"size_wh": [stained.shape[1], stained.shape[0]], "channel_names": ["R", "G", "B"],
                    "dtype": "uint8"},
        "grid": {"rows": cfg.grid.rows, "cols": cfg.grid.cols},
        "cores": cores,
        "missing": layout.missing,
        "landmarks": landmarks,
        "transform": transform,
        "source_regions": {
            "axis": plan.axis, "split_px": plan.split_px, "test_side": plan.test_side,
            "rule": "test discs lie wholly on test_side of the line axis = split_px, train discs wholly on "
                    "the other side; discs are source_center_xy ± source_radius_px",
            "test_xywh": test_box, "train_xywh": train_box,
        },
        "source": {"file": source.name, "mpp": list(source.mpp), "dimensions": list(source.dimensions)},
        "config": to_dict(cfg),
        "config_hash": config_hash(cfg),
        "stainldm_version": stainldm.__version__,
    }
