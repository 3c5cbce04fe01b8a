"""One slide pair -> registered, paired tiles: mask, dearray, register, plan and cut tiles.

    plan = analyse_pair(unstained, stained, cfg)          # mask + cores + registration
    for core, xy, frac in plan_tiles(plan, cfg.tiles):    # tiles over each core's tissue
        u, s = cut_pair(unstained, stained, plan, core, xy, cfg.tiles)

Both tiles are in the unstained frame at ``cfg.tiles.mpp``: the unstained slide is resampled to
that mpp (when its own differs), the stained one through the core's registration transform.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stainldm.config import apply_overrides, from_dict, load_yaml
from stainldm.data.split import SplitConfig
from stainldm.errors import ConfigError, InputError
from stainldm.wsi.channels import parse_channels
from stainldm.wsi.reader import SlideReader
from stainldm.wsi.register import PairRegistration, RegisterConfig, register_pair, sample_transformed
from stainldm.wsi.tiling import mask_fraction, tile_grid
from stainldm.wsi.tissue import TissueConfig, slide_mask
from stainldm.wsi.tma import Core, Grid, dearray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileConfig:
    """Training tiles.

    Attributes:
        mpp: µm/px of the tiles (slides of another mpp are resampled).
        size: tile edge in pixels at ``mpp``.
        stride: distance between tiles in pixels at ``mpp`` (``< size`` overlaps).
        min_tissue: least fraction of a tile on tissue (unstained mask) to keep it.
    """

    mpp: float = 0.5
    size: int = 256
    stride: int = 256
    min_tissue: float = 0.5


@dataclass(frozen=True)
class PrepareConfig:
    """Everything `stainldm prepare` does, in one resolved config (saved as prepare.yaml)."""

    seed: int = 0
    workers: int = 2
    unstained_modality: str = "auto"
    #: the unstained channels to use, in this order: names or 0-based indices, comma-separated
    #: (``DAPI,FITC``; ``stainldm.wsi.channels``); None: all of them
    channels: str | None = None
    tiles: TileConfig = field(default_factory=TileConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class PairPlan:
    """What is known about a pair before its tiles are cut."""

    mask: np.ndarray
    mask_mpp: float
    cores: list[Core]
    grid: Grid
    registration: PairRegistration

    @property
    def present(self) -> list[Core]:
        return [c for c in self.cores if c.status != "missing"]


def check_config(cfg: PrepareConfig) -> None:
    """Validates value ranges that types cannot express (ConfigError naming the key)."""
    t = cfg.tiles
    if t.size < 16 or t.size % 8:
        raise ConfigError(f"tiles.size ({t.size}) must be a multiple of 8, at least 16")
    if not 0 < t.stride <= 4 * t.size:
        raise ConfigError(f"tiles.stride ({t.stride}) must be positive and at most 4 × tiles.size")
    if t.mpp <= 0:
        raise ConfigError(f"tiles.mpp ({t.mpp}) must be positive")
    if not 0 <= t.min_tissue <= 1:
        raise ConfigError(f"tiles.min_tissue ({t.min_tissue}) must be in [0, 1]")
    if cfg.workers < 1:
        raise ConfigError(f"workers ({cfg.workers}) must be at least 1")
    if cfg.channels is not None:
        parse_channels(cfg.channels)  # an empty entry fails here, before any slide is read


def load_prepare_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PrepareConfig:
    """The prepare config from an optional YAML file plus ``key=value`` overrides, checked.

    Args:
        path: a prepare config, or a workflow config whose ``prepare:`` section is used.
        overrides: ``key.sub=value`` strings (``tiles.size=128``), applied after the file.

    Raises:
        ConfigError: a missing or malformed file, an unknown key, a wrong type or a bad value.
    """
    data = load_yaml(path) if path else {}
    if "prepare" in data:
        data = data["prepare"] or {}
    cfg = from_dict(PrepareConfig, apply_overrides(data, overrides))
    check_config(cfg)
    return cfg


def analyse_pair(unstained: SlideReader, stained: SlideReader, cfg: PrepareConfig) -> PairPlan:
    """Tissue mask and dearraying of the unstained slide, then registration of the stained one.

    Raises:
        InputError: no tissue on the unstained slide.
        ConfigError: tiles larger than the cores.
        RegistrationError: the stained slide does not match (see :func:`register_pair`).
    """
    if unstained.mpp and stained.mpp and abs(unstained.mpp[0] / stained.mpp[0] - 1) > 0.01:
        log.info("%s is %.4g µm/px and %s is %.4g µm/px: the stained slide is resampled onto the unstained one",
                 unstained.name, unstained.mpp[0], stained.name, stained.mpp[0])
    mask = slide_mask(unstained, cfg.tissue, modality=_tissue_modality(cfg.unstained_modality))
    if not mask.any():
        raise InputError(f"{unstained.name}: no tissue found on the slide; check that it is the right scan, "
                         "or lower tissue.sensitivity / tissue.min_area_um2")
    cores, grid = dearray(mask, mask_mpp=cfg.tissue.mask_mpp, level0_mpp=unstained.mpp[0])
    present = [c for c in cores if c.status != "missing"]
    tile_um = cfg.tiles.size * cfg.tiles.mpp
    core_um = float(np.median([c.diameter_px for c in present])) * unstained.mpp[0]
    if grid.is_tma and tile_um > core_um:
        raise ConfigError(f"tiles.size × tiles.mpp = {tile_um:.0f} µm is larger than the cores ({core_um:.0f} µm "
                          f"across); lower tiles.size or tiles.mpp")
    reg_cfg = cfg.register
    if reg_cfg.unstained_modality == "auto" and cfg.unstained_modality != "auto":
        from dataclasses import replace

        reg_cfg = replace(reg_cfg, unstained_modality=_tissue_modality(cfg.unstained_modality))
    registration = register_pair(unstained, stained, {c.id: c.bbox_xywh for c in present}, reg_cfg)
    return PairPlan(mask, cfg.tissue.mask_mpp, cores, grid, registration)


def plan_tiles(plan: PairPlan, unstained: SlideReader, cfg: TileConfig) -> list[tuple[Core, tuple[int, int], float]]:
    """Tiles over each present core's box whose tissue fraction reaches ``cfg.min_tissue``."""
    step = cfg.mpp / unstained.mpp[0]  # level-0 px per tile pixel
    mask_px = plan.mask_mpp / unstained.mpp[0]
    out = []
    for core in plan.present:
        if not plan.registration.core_ok(core.id):
            continue
        for x, y in tile_grid(core.bbox_xywh, tile=cfg.size * step, stride=cfg.stride * step):
            xy = (round(x), round(y))
            frac = mask_fraction(plan.mask, mask_px=mask_px, xy=xy, size=cfg.size * step)
            if frac >= cfg.min_tissue:
                out.append((core, xy, frac))
    return out


def cut_pair(unstained: SlideReader, stained: SlideReader, plan: PairPlan, core: Core, xy: tuple[int, int],
             cfg: TileConfig) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The unstained tile and the registered stained tile at ``xy`` (level-0), plus the
    registration similarity (before, after) of the registration tile under its centre."""
    step = cfg.mpp / unstained.mpp[0]
    u = unstained.read_at_mpp(xy, (cfg.size, cfg.size), cfg.mpp)
    tf = plan.registration.cores[core.id]
    s = sample_transformed(stained, tf, xy, (cfg.size, cfg.size), step=step)
    before, after = _sim_at(tf, (xy[0] + cfg.size * step / 2, xy[1] + cfg.size * step / 2))
    return u, s, before, after


def _sim_at(tf, centre: tuple[float, float]) -> tuple[float, float]:
    if tf.sim_after.size == 0:
        return float("nan"), float("nan")
    tile_x, tile_y = tf.sim_grid  # the tile stage's grid (the deformable stage's is denser)
    i = int(np.argmin(np.abs(tile_x - centre[0])))
    j = int(np.argmin(np.abs(tile_y - centre[1])))
    return float(tf.sim_before[j, i]), float(tf.sim_after[j, i])


def _tissue_modality(modality: str) -> str:
    """Maps the sample modality names onto tissue-detection models."""
    return {"autofluorescence": "fluorescence"}.get(modality, modality)
