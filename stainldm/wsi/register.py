"""Cross-modal registration of a stained (H&E) slide onto its unstained scan.

Transforms map **unstained level-0 pixels to stained level-0 pixels** (the direction needed to
resample the stained slide onto the unstained tile grid):

    p_stained = M_core · (p_unstained + d(p_unstained))

where ``M_core`` is a 3×3 affine per core and ``d`` a smooth field of residual pre-shifts
(bilinear between grid nodes). Four stages, each on a modality-robust representation:

1. **coarse** (slide, ~8 µm/px): "tissue signal" images that are positive on tissue in every
   modality (optical density of H&E, darkness of unstained brightfield, normalised intensity of
   autofluorescence). A rotation search with FFT cross-correlation at each angle (normalised
   cross-correlation, NCC) gives a rigid transform; ECC (Evangelidis & Psarakis 2008) refines it
   to an affine.
2. **core** (~2 µm/px): rigid ECC between *gradient magnitudes* of the tissue signals — edges of
   nuclei, fibres and the core outline are shared across modalities even where intensities are
   inverted (nuclei are dark in autofluorescence, dark purple in H&E).
3. **tiles** (level 0): sub-pixel phase correlation (scikit-image, upsampled) of gradient
   magnitudes per tile; shifts that do not raise the similarity, exceed the allowed size or
   disagree with their neighbours are replaced by the neighbours' median.
4. **deform** (``deform_mpp``, level 0 by default): a regularised dense flow between the structure
   images (:mod:`stainldm.wsi.deform`), stored as a denser grid of pre-shifts.

**Each stage may only improve the alignment** (``stage_checks``): stages 2-4 estimate their move
on the *robust pair* (structure clipped, structure that only one modality shows — DAB or pigment,
autofluorescent granules, dust — removed: :mod:`stainldm.wsi._register_signal`) and keep it only if
the robust similarity at their own resolution rises over the coarser stage's result, evaluated
at that resolution; otherwise the coarser result stays. Each core records how far each stage
moved it and how far the stages' estimates disagree (``CoreTransform.motion``, ``disagree_px``);
a core whose stages disagree by more than ``max_disagreement_px`` is flagged and its tiles are
left out unless ``keep_flagged``. ``RegisterConfig(stage_checks=False, deformable=False)`` is the
original three-stage registration (the benchmark's anchor).

Similarity is reported as NCC of gradient magnitudes before (after the coarse stage only) and
after; a pair whose similarity stays low is refused (:class:`RegistrationError`), so mismatched
slides never produce silently misaligned training pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from stainldm.errors import ConfigError, InputError, StainLDMError
from stainldm.wsi._register_signal import ncc, robust_ncc, structure, tissue_signal
from stainldm.wsi._register_stages import coarse_align, refine_core, refine_tiles
from stainldm.wsi._register_transform import (
    STAGES,
    CoreTransform,
    StageMotion,
    core_points,
    grid_points,
    motion_between,
    sample_points,
    sample_transformed,
)
from stainldm.wsi.deform import METHODS, refine_deform
from stainldm.wsi.reader import SlideReader

__all__ = ["STAGES", "CoreTransform", "PairRegistration", "RegisterConfig", "RegistrationError", "StageMotion",
           "coarse_align", "grid_points", "ncc", "refine_core", "refine_tiles", "register_pair",
           "registration_errors", "robust_ncc", "sample_points", "sample_transformed", "stage_errors",
           "structure", "tissue_signal"]

log = logging.getLogger(__name__)


class RegistrationError(StainLDMError):
    """The slides could not be aligned (different tissue, or too little shared structure)."""

    exit_code = 1


@dataclass(frozen=True)
class RegisterConfig:
    """Parameters of registration.

    Attributes:
        coarse_mpp: µm/px of the slide-level search.
        max_rotation_deg: rotation search range (±) of the coarse stage.
        rotation_step_deg: step of the coarse rotation search (refined by ECC afterwards).
        core_mpp: µm/px of the per-core affine refinement.
        core_margin: margin around a core's box, as a fraction of its size.
        tile_px: tile edge (level-0 px) of the residual-shift stage.
        max_tile_shift_px: larger residual shifts (level-0 px) are rejected.
        min_similarity: median similarity over cores (gradient NCC after registration) below which
            the pair is refused. Measured on make-sample pairs: same section 0.56-0.71, different
            cores on the same grid 0.20-0.22.
        min_core_similarity: a single core below this is left out of the training tiles (lowest
            matched core seen: 0.38, an epidermis edge; mismatched cores: ≤ 0.34, median 0.2).
        unstained_modality, stained_modality: tissue-signal model per slide (``auto`` guesses).
        stage_checks: estimate each stage on the robust pair and keep its move only if its own
            robust similarity confirms it (False: the original stages, for comparison).
        one_sided_radius: pixels (at each stage's resolution) searched in the other image before
            strong structure counts as one-sided.
        deformable: run the deformable stage after the tiles.
        deform_method: ``blocks`` (dense phase correlation: one window per grid node), ``ilk``
            (scikit-image iterative Lucas-Kanade) or ``tvl1`` (TV-L1); see :mod:`stainldm.wsi.deform`.
        deform_mpp: µm/px of the deformable stage.
        deform_window_um: block edge (``blocks``; four times the Lucas-Kanade window radius).
        deform_sigma_um: Gaussian σ of the field's regularisation.
        deform_grid_um: node spacing of the deformable pre-shift grid.
        deform_iterations: rounds of flow estimation, each on the stained core warped by the last.
        deform_check_um: edge of the blocks in which the deformable field must raise the robust
            similarity (elsewhere the tile stage's field stays).
        deform_min_px: smaller corrections (level-0 px) of the deformable stage are dropped.
        max_deform_px: largest correction (level-0 px) the deformable stage may add.
        max_disagreement_px: a core whose stages' position estimates differ from the final one by
            more, counted in each stage's own pixels (the core stage's are ``core_mpp`` µm, the
            deformable stage's ``deform_mpp``; never less than a level-0 pixel), is flagged.
        keep_flagged: keep flagged cores' tiles (they are left out by default).
    """

    coarse_mpp: float = 8.0
    max_rotation_deg: float = 10.0
    rotation_step_deg: float = 0.5
    core_mpp: float = 2.0
    core_margin: float = 0.15
    tile_px: int = 256
    max_tile_shift_px: float = 8.0
    min_similarity: float = 0.35
    min_core_similarity: float = 0.25
    unstained_modality: str = "auto"
    stained_modality: str = "he"
    stage_checks: bool = True
    one_sided_radius: int = 3
    deformable: bool = True
    deform_method: str = "blocks"
    deform_mpp: float = 0.5
    deform_window_um: float = 64.0
    deform_sigma_um: float = 16.0
    deform_grid_um: float = 24.0
    deform_iterations: int = 2
    deform_check_um: float = 64.0
    deform_min_px: float = 0.5
    max_deform_px: float = 8.0
    max_disagreement_px: float = 2.0
    keep_flagged: bool = False

    def __post_init__(self) -> None:
        if self.deform_method not in METHODS:
            raise ConfigError(f"`register.deform_method` ({self.deform_method!r}) must be one of {', '.join(METHODS)}")
        for name in ("deform_mpp", "deform_window_um", "deform_sigma_um", "deform_grid_um", "deform_check_um",
                     "max_disagreement_px"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"`register.{name}` ({getattr(self, name)}) must be positive")
        if self.one_sided_radius < 1 or self.deform_iterations < 1:
            raise ConfigError(f"`register.one_sided_radius` ({self.one_sided_radius}) and "
                              f"`register.deform_iterations` ({self.deform_iterations}) must be at least 1")


# ---------------------------------------------------------------------------------------------
# All stages
# ---------------------------------------------------------------------------------------------
@dataclass
class PairRegistration:
    """Registration of one slide pair: the slide-level affine and one transform per core.

    Attributes:
        matrix: the slide-level affine (3×3, unstained level-0 -> stained level-0).
        coarse_similarity: tissue-signal NCC of the slide-level stage.
        cores: the final transform per core.
        core_similarity: per core, median gradient NCC (before: slide-level only; after: final).
        min_similarity: a core below it is left out (``RegisterConfig.min_core_similarity``).
        max_disagreement_px: a core whose stages disagree by more is flagged.
        keep_flagged: whether flagged cores are used anyway.
        stages: per stage (``coarse``, ``core``, ``tiles``, ``deform``), the transform per core
            after it (not saved; for stage-by-stage errors).
    """

    matrix: np.ndarray
    coarse_similarity: float
    cores: dict[str, CoreTransform]
    core_similarity: dict[str, tuple[float, float]]

    min_similarity: float = 0.0
    max_disagreement_px: float = float("inf")
    keep_flagged: bool = False
    stages: dict[str, dict[str, CoreTransform]] = field(default_factory=dict)

    def flagged(self, core_id: str) -> bool:
        """Whether the core's stages disagree by more than ``max_disagreement_px``."""
        return core_id in self.cores and self.cores[core_id].disagree_px > self.max_disagreement_px

    def core_ok(self, core_id: str) -> bool:
        """Whether a core registered well enough for its tiles to be used (similar enough, and
        not flagged unless ``keep_flagged``)."""
        return (core_id in self.core_similarity and self.core_similarity[core_id][1] >= self.min_similarity
                and (self.keep_flagged or not self.flagged(core_id)))

    def to_json(self) -> dict:
        return {"matrix": self.matrix.tolist(), "coarse_similarity": self.coarse_similarity,
                "min_similarity": self.min_similarity, "max_disagreement_px": self.max_disagreement_px,
                "keep_flagged": self.keep_flagged,
                "cores": {k: {**v.to_json(), "sim_before": self.core_similarity[k][0],
                              "sim_after": self.core_similarity[k][1], "flagged": self.flagged(k)}
                          for k, v in self.cores.items()}}

    @classmethod
    def from_json(cls, data: dict) -> PairRegistration:
        """Reads :meth:`to_json`'s dict (also files written before stage checks and flags)."""
        cores = {k: CoreTransform.from_json(v) for k, v in data["cores"].items()}
        sims = {k: (float(v.get("sim_before", np.nan)), float(v.get("sim_after", np.nan)))
                for k, v in data["cores"].items()}
        return cls(np.asarray(data["matrix"], dtype=np.float64), float(data.get("coarse_similarity", np.nan)),
                   cores, sims, float(data.get("min_similarity", 0.0)),
                   float(data.get("max_disagreement_px", np.inf)), bool(data.get("keep_flagged", False)))


def register_pair(unstained: SlideReader, stained: SlideReader, regions: dict[str, tuple[int, int, int, int]],
                  cfg: RegisterConfig = RegisterConfig()) -> PairRegistration:
    """Registers ``stained`` onto ``unstained`` for the given regions (core id -> level-0 bbox).

    Raises:
        InputError: a slide has no mpp.
        RegistrationError: the median similarity after refinement is below ``cfg.min_similarity``
            (different tissue, or a slide of the wrong section).
    """
    for slide in (unstained, stained):
        if slide.mpp is None:
            raise InputError(f"{slide.name}: registration needs the slide's mpp; pass `mpp` when opening it")
    matrix, coarse_sim = coarse_align(unstained, stained, cfg)
    log.info("coarse alignment: NCC %.3f, matrix %s", coarse_sim, np.round(matrix[:2], 4).tolist())
    cores: dict[str, CoreTransform] = {}
    sims: dict[str, tuple[float, float]] = {}
    stages: dict[str, dict[str, CoreTransform]] = {s: {} for s in ("coarse", *STAGES)}
    for core_id, bbox in regions.items():
        tf, steps = _register_core(unstained, stained, matrix, bbox, cfg)
        for name, t in steps.items():
            stages[name][core_id] = t
        cores[core_id] = tf
        sims[core_id] = (float(np.nanmedian(tf.sim_before)), float(np.nanmedian(tf.sim_after)))
    if sims:
        median_after = float(np.median([s[1] for s in sims.values()]))
        if median_after < cfg.min_similarity:
            raise RegistrationError(
                f"{stained.name} does not match {unstained.name}: structural similarity reached only "
                f"{median_after:.3f} after registration (needs ≥ {cfg.min_similarity}, slide-level NCC "
                f"{coarse_sim:.3f}); check that both scans show the same section")
    reg = PairRegistration(matrix, coarse_sim, cores, sims, cfg.min_core_similarity,
                           cfg.max_disagreement_px, cfg.keep_flagged, stages)
    weak = [k for k, v in sims.items() if v[1] < cfg.min_core_similarity]
    if weak:
        log.warning("%s: cores %s registered below similarity %.2f; their tiles are left out",
                    stained.name, ", ".join(weak), cfg.min_core_similarity)
    flagged = [k for k in cores if reg.flagged(k)]
    if flagged:
        log.warning("%s: the registration stages of cores %s disagree by more than %.1f px; their tiles are %s",
                    stained.name, ", ".join(flagged), cfg.max_disagreement_px,
                    "kept (keep_flagged)" if cfg.keep_flagged else "left out")
    return reg


def _register_core(unstained: SlideReader, stained: SlideReader, matrix: np.ndarray,
                   bbox: tuple[int, int, int, int], cfg: RegisterConfig) -> tuple[CoreTransform, dict]:
    """The per-core stages in turn, each checked by its own measure; the final transform carries
    each stage's motion and the stages' disagreement. Also returns the transform after each stage."""
    pts = core_points(bbox)
    coarse = CoreTransform(matrix)
    m, m_proposed, b, a = refine_core(unstained, stained, matrix, bbox, cfg)
    core, core_proposed = CoreTransform(m), CoreTransform(m_proposed)
    tiles = refine_tiles(unstained, stained, m, bbox, cfg, baseline=matrix)
    motion = {"core": _motion(coarse, core_proposed, pts, b, a, kept=m is m_proposed),
              "tiles": _motion(core, tiles, pts, float(np.nanmedian(tiles.sim_before)),
                               float(np.nanmedian(tiles.sim_after)), kept=True)}
    # each proposal with the size of its stage's pixels in stained level-0 px: a stage is held to
    # ``max_disagreement_px`` of its own pixels (the core stage's 2 µm are 4 px of a 0.5 µm/px slide)
    stained_mpp = float(stained.mpp[0])
    final, proposals = tiles, [(core_proposed, max(1.0, cfg.core_mpp / stained_mpp))]
    if cfg.deformable:
        final, proposed, b, a = refine_deform(unstained, stained, tiles, bbox, cfg)
        motion["deform"] = _motion(tiles, proposed, pts, b, a, kept=final is proposed)
        proposals.append((proposed, max(1.0, cfg.deform_mpp / stained_mpp)))
    final.motion = motion
    if cfg.stage_checks or cfg.deformable:
        # each stage's estimate of where the core lies (its rigid part) against the final one, in its own px
        final.disagree_px = max(float(np.hypot(*motion_between(final, p, pts)[1])) / px for p, px in proposals)
    else:  # the original stages: the level-0 tiles' correction of the core stage
        final.disagree_px = float(np.hypot(*motion["tiles"].offset_xy))
    return final, {"coarse": coarse, "core": core, "tiles": tiles, "deform": final}


def _motion(before: CoreTransform, proposed: CoreTransform, pts: np.ndarray,
            sim_before: float, sim_after: float, *, kept: bool) -> StageMotion:
    proposed_px, offset = motion_between(before, proposed, pts)
    moved_px = proposed_px if kept else 0.0
    return StageMotion(proposed_px, moved_px, offset, kept, sim_before, sim_after)


def stage_errors(reg: PairRegistration, landmarks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """TRE (level-0 stained px, all cores' landmarks together) after each stage: ``coarse``,
    ``core``, ``tiles``, ``deform`` and ``final`` (needs a registration made in this process)."""
    out = {}
    for name, tfs in [*reg.stages.items(), ("final", reg.cores)]:
        sub = PairRegistration(reg.matrix, reg.coarse_similarity, tfs, {})
        errors = registration_errors(sub, landmarks)
        if errors:
            out[name] = np.concatenate(list(errors.values()))
    return out


def registration_errors(reg: PairRegistration, landmarks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Target registration error (level-0 stained px) per core for truth landmarks
    ``[x_unstained, y_unstained, x_stained, y_stained]``."""
    out = {}
    for core_id, pts in landmarks.items():
        if core_id not in reg.cores:
            continue
        pts = np.asarray(pts, dtype=np.float64)
        mapped = reg.cores[core_id].map_points(pts[:, :2])
        out[core_id] = np.hypot(*(mapped - pts[:, 2:4]).T)
    return out
