"""How a slide is stained: :class:`StainConfig`, recorded in every output's provenance."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from stainldm.errors import InputError
from stainldm.wsi.channels import parse_channels
from stainldm.wsi.tissue import TissueConfig

CANVAS_BLEND_PX = 64  # sub-canvases of a large region overlap and cross-fade over this many output px
log = logging.getLogger(__name__)


def provenance_path(tiff: Path) -> Path:
    """The ``<slide>.json`` beside a stained ``<slide>.tiff``: what made it (input, checkpoint, sampling)."""
    return tiff.with_name(f"{tiff.stem}.json")


def read_provenance(tiff: Path) -> dict:
    """``tiff``'s provenance (:func:`provenance_path`); empty when it is missing, unreadable (logged)
    or not a JSON object."""
    path = provenance_path(tiff)
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s: unreadable provenance JSON, taken as none", path)
        return {}
    return meta if isinstance(meta, dict) else {}


@dataclass(frozen=True)
class StainConfig:
    """How a slide is stained.

    Attributes:
        steps, sampler, guidance, eta: sampling (LDM only).
        seed: the slide seed (noise of every canvas derives from it).
        samples: K > 1 draws K samples; the output is their mean and the uncertainty their std.
        batch_size: windows per network call; on a GPU the windows of several canvases (TMA cores)
            of one size share a call.
        overlap_px: least overlap of neighbouring windows, in output pixels (at most an eighth of a
            training tile).
        max_canvas_px: largest canvas edge (output pixels) sampled at once (memory budget).
        single_window_scale: an LDM canvas whose sides are at most this many training tiles may be
            sampled as one window (no overlap, no window borders: a TMA core) when that is among the
            cheapest layouts. Whether it is depends on the model: the window cost model
            (``canvas.choose_window``) counts attention, which grows with the square of a window's
            area; larger canvases use windows of 1–1.5 tiles.
        tile_px: tile edge of the output TIFF.
        modality: tissue-detection model of the input (``auto`` guesses).
        tissue: tissue-detection parameters.
        region_margin_px: glass kept around each tissue region (output pixels).
        skip_glass: windows on glass inside a region's box are not run through the network.
        group_canvases: sample whole regions of about one size together, their windows sharing
            network calls (None: on a GPU, where it keeps the device busy; a CPU gains nothing).
        prefetch: read the next canvases and write the finished ones in threads beside the model.
        channels: the slide's channels that stand for the model's inputs, in the model's order: names
            or 0-based indices, comma-separated (``DAPI,FITC``). None: by the channel names the
            model was trained on (:meth:`StainModel.choose_channels`).
    """

    steps: int = 10
    sampler: str = "dpmpp_2m"
    guidance: float = 1.0
    eta: float = 0.0
    seed: int = 0
    samples: int = 1
    batch_size: int = 8
    overlap_px: int = 16
    max_canvas_px: int = 2048
    single_window_scale: float = 3.0
    tile_px: int = 256
    modality: str = "auto"
    region_margin_px: int = 16
    skip_glass: bool = True
    group_canvases: bool | None = None
    prefetch: bool = True
    tissue: TissueConfig = field(default_factory=TissueConfig)
    channels: str | None = None


SAMPLERS = ("dpmpp_2m", "ddim")


def check_stain_config(cfg: StainConfig) -> None:
    """Checks ``cfg`` before any slide is read.

    Messages name the fields by the arguments of ``stainldm stain`` that set them (``overlap`` sets
    ``overlap_px``); fields no argument sets, by their own names.

    Raises:
        InputError: a field out of range, or an unknown sampler.
    """
    if cfg.steps <= 0:
        raise InputError(f"`steps` must be positive, got {cfg.steps}")
    if cfg.samples <= 0:
        raise InputError(f"`samples` must be positive, got {cfg.samples}")
    if cfg.batch_size <= 0:
        raise InputError(f"`batch_size` must be positive, got {cfg.batch_size}")
    if cfg.overlap_px < 0:
        raise InputError(f"`overlap` must be 0 or more, got {cfg.overlap_px}")
    if not 1.0 <= cfg.single_window_scale <= 8.0:
        raise InputError(f"single_window_scale must be between 1 and 8 (training tiles), got {cfg.single_window_scale}")
    if cfg.max_canvas_px < 2 * CANVAS_BLEND_PX:
        raise InputError(f"max_canvas_px ({cfg.max_canvas_px}) must be at least {2 * CANVAS_BLEND_PX} "
                         f"(sub-canvases cross-fade over {CANVAS_BLEND_PX} px)")
    if cfg.sampler not in SAMPLERS:
        raise InputError(f"`sampler` {cfg.sampler}: use dpmpp_2m or ddim")
    if cfg.channels is not None:
        parse_channels(cfg.channels)
