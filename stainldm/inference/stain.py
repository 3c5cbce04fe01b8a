"""Stain one slide: tissue regions -> seam-free canvas sampling -> streamed pyramidal TIFF.

    model = StainModel.load("runs/ldm")                       # an ldm (or baseline) run folder
    result = stain_slide(open_slide("core.tiff"), model, Path("out/core.tiff"), StainConfig(steps=10))

Per region (a TMA core or a connected tissue piece, from the tissue mask; glass is skipped and
stays white) the unstained input is read at the model's mpp and sampled on one latent canvas
(:mod:`stainldm.inference.model`). Regions larger than ``max_canvas_px`` are split into overlapping
sub-canvases, blended where they meet. On a GPU, whole regions of similar size are sampled together
(their windows share network calls). Reading the next canvases and writing finished ones run in
threads beside the model. Results go to a temporary on-disk canvas (zarr), so memory does not grow
with the slide, and are then streamed into the TIFF.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

import stainldm
from stainldm.device import describe
from stainldm.errors import InputError, NoTissueError
from stainldm.files import atomic_write_png, atomic_write_text
from stainldm.inference.config import CANVAS_BLEND_PX, StainConfig, check_stain_config, provenance_path
from stainldm.inference.model import SKIP_MARGIN_PX, StainModel
from stainldm.seeds import Stream, derive_seed
from stainldm.wsi.reader import SlideReader
from stainldm.wsi.tissue import slide_mask
from stainldm.wsi.writer import write_pyramid

__all__ = ["CANVAS_BLEND_PX", "SKIP_MARGIN_PX", "StainConfig", "StainModel", "StainResult", "batch_canvases",
           "check_stain_config", "region_canvases", "split_canvas", "stain_slide", "tissue_regions"]

log = logging.getLogger(__name__)
BATCH_AREA_SLACK = 1.15  # canvases share a network call when padding them to one size adds at most 15 %


# ---------------------------------------------------------------------------------------------
# Regions and the whole slide
# ---------------------------------------------------------------------------------------------
def tissue_regions(slide: SlideReader, cfg: StainConfig, *, out_mpp: float, mask: np.ndarray | None = None
                   ) -> tuple[list[tuple[int, int, int, int]], float]:
    """Boxes ``(x, y, w, h)`` in output pixels of the connected tissue pieces (merged when their
    boxes overlap), and the tissue fraction of the slide."""
    if mask is None:
        mask = slide_mask(slide, cfg.tissue, modality=cfg.modality)
    frac = float(mask.mean())
    labels, _n = ndi.label(mask)
    scale = cfg.tissue.mask_mpp / out_mpp  # output px per mask px
    boxes = []
    for sl in ndi.find_objects(labels):
        y0, y1 = sl[0].start * scale - cfg.region_margin_px, sl[0].stop * scale + cfg.region_margin_px
        x0, x1 = sl[1].start * scale - cfg.region_margin_px, sl[1].stop * scale + cfg.region_margin_px
        boxes.append([math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)])
    merged = True
    while merged:  # merge overlapping boxes so no pixel is sampled twice
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                    boxes.pop(j)
                    merged = True
                    break
            if merged:
                break
    return [(b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in sorted(boxes, key=lambda b: (b[1], b[0]))], frac


def split_canvas(box: tuple[int, int, int, int], *, max_px: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Sub-canvases (raster order) of at most ``max_px`` per side, overlapping by ``overlap``."""
    x, y, w, h = box

    def axis(start: int, length: int) -> list[tuple[int, int]]:
        if length <= max_px:
            return [(start, length)]
        n = math.ceil((length - overlap) / (max_px - overlap))
        size = math.ceil((length + (n - 1) * overlap) / n)  # n equal canvases overlapping by ``overlap``
        step = (length - size) / (n - 1)
        return [(start + round(i * step), size) for i in range(n)]

    return [(sx, sy, sw, sh) for sy, sh in axis(y, h) for sx, sw in axis(x, w)]


def region_canvases(regions: list[tuple[int, int, int, int]], size_wh: tuple[int, int], cfg: StainConfig
                    ) -> list[tuple[int, int, int, int]]:
    """The canvases ``stain_slide`` samples, in order: each region clipped to the ``(w, h)`` output,
    split into sub-canvases of at most ``cfg.max_canvas_px`` that cross-fade over ``CANVAS_BLEND_PX``."""
    return [c for box in regions
            for c in split_canvas(_clip(box, *size_wh), max_px=cfg.max_canvas_px, overlap=CANVAS_BLEND_PX)]


def batch_canvases(model: StainModel, regions: list[tuple[int, int, int, int]], size_wh: tuple[int, int],
                   cfg: StainConfig) -> list[list[tuple[int, int, int, int]]]:
    """The canvases of :func:`region_canvases`, in batches sampled together.

    With ``cfg.group_canvases`` (by default on a GPU), regions that are one canvas (TMA cores) and
    pad to about one size (at most ``BATCH_AREA_SLACK`` more area) share a batch of up to
    ``cfg.batch_size`` windows × samples; the sub-canvases of a split region stay alone and in raster
    order (each cross-fades into the ones before it). Otherwise each canvas is its own batch.
    """
    batches: list[list[tuple[int, int, int, int]]] = []
    group = cfg.group_canvases if cfg.group_canvases is not None else model.device.type == "cuda"
    if not group:
        return [[c] for c in region_canvases(regions, size_wh, cfg)]
    open_: dict[tuple[int, int], list] = {}  # group size -> canvases waiting
    for box in regions:
        parts = split_canvas(_clip(box, *size_wh), max_px=cfg.max_canvas_px, overlap=CANVAS_BLEND_PX)
        if len(parts) > 1:
            batches += [[p] for p in parts]
            continue
        (canvas,) = parts
        hw = model.padded_size(canvas[3], canvas[2])
        key = next((k for k in open_ if k[0] >= hw[0] and k[1] >= hw[1] and k[0] * k[1] <= BATCH_AREA_SLACK * hw[0] * hw[1]),
                   None)
        if key is None:
            key = (math.ceil(hw[0] * 1.07 / model.multiple / model.f) * model.multiple * model.f,
                   math.ceil(hw[1] * 1.07 / model.multiple / model.f) * model.multiple * model.f)
            open_[key] = []
        open_[key].append(canvas)
        if len(open_[key]) >= model.canvases_per_call(*key, cfg):
            batches.append(open_.pop(key))
    return batches + list(open_.values())


@dataclass
class StainResult:
    """The files :func:`stain_slide` wrote, and what it found."""

    output: Path
    uncertainty: Path | None
    thumbnail: Path
    provenance: Path
    regions: int
    tissue_fraction: float
    seconds: float


def stain_slide(slide: SlideReader, model: StainModel, out: Path, cfg: StainConfig, *,
                progress: Any = None, provenance: dict | None = None) -> StainResult:
    """Stains ``slide`` into ``out`` (pyramidal TIFF) + uncertainty, thumbnail and provenance JSON.

    The provenance JSON records, besides the input, model, device and config, the layout that was
    sampled: ``canvases`` (``[x, y, w, h]`` of every canvas, in output level-0 px, in the order of
    :func:`region_canvases`) and ``tile_px`` (the model's training tile), from which window
    borders can be drawn without re-deriving the tissue regions.

    Args:
        slide: the unstained slide.
        model: the loaded model; the output is at its mpp.
        out: the TIFF to write (``<stem>.uncertainty.tiff``, ``<stem>.thumb.png`` and
            ``<stem>.json`` go beside it).
        cfg: how to stain.
        progress: a tqdm-like bar (``reset(total=)``, ``update(n)``) counting the canvases.
        provenance: more keys for the provenance JSON and the TIFF's metadata.

    Returns:
        the files written, the number of tissue regions, the tissue fraction and the time taken.

    Raises:
        InputError: the slide's channels differ from the model's (or lack one the model was trained
            on) or it has no mpp.
        NoTissueError: the slide has no tissue (an :class:`~stainldm.errors.InputError`).
    """
    import zarr

    check_stain_config(cfg)
    t0 = time.perf_counter()
    slide = model.choose_channels(slide, cfg.channels)  # the model's channels, by name, in its order
    if slide.channels != model.in_channels:
        raise InputError(f"{slide.name}: has {slide.channels} channels but the model was trained on "
                         f"{model.in_channels}-channel unstained scans; use a checkpoint of this modality")
    if slide.mpp is None:
        raise InputError(f"{slide.name}: the slide does not record its mpp; pass `mpp`")
    out_mpp = model.mpp
    f = out_mpp / slide.mpp[0]  # level-0 px per output px
    out_w, out_h = math.ceil(slide.dimensions[0] / f), math.ceil(slide.dimensions[1] / f)
    mask = slide_mask(slide, cfg.tissue, modality=cfg.modality)
    regions, frac = tissue_regions(slide, cfg, out_mpp=out_mpp, mask=mask)
    if not regions:
        raise NoTissueError(f"{slide.name}: no tissue found; nothing to stain")
    work = out.parent / f".{out.stem}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        rgb = zarr.create_array(str(work / "rgb.zarr"), shape=(out_h, out_w, 3), chunks=(512, 512, 3),
                                dtype="uint8", fill_value=255)
        std = zarr.create_array(str(work / "std.zarr"), shape=(out_h, out_w, 1), chunks=(512, 512, 1),
                                dtype="float32", fill_value=0.0) if cfg.samples > 1 else None
        canvases = region_canvases(regions, (out_w, out_h), cfg)
        seeds = {c: derive_seed(cfg.seed, Stream.CANVAS, ci) for ci, c in enumerate(canvases)}  # by raster index
        batches = batch_canvases(model, regions, (out_w, out_h), cfg)
        grown = _grown_mask(mask, cfg, out_mpp=out_mpp)  # once per slide, not per canvas
        if progress is not None:
            progress.reset(total=len(canvases))

        def read(batch):  # in the reader thread: slide pixels and tissue weights of a batch
            return [(slide.read_at_mpp((x * f, y * f), (w, h), out_mpp),
                     _tissue_weight(grown, cfg, out_mpp=out_mpp, box=(x, y, w, h))) for x, y, w, h in batch]

        done_boxes: list[tuple[int, int, int, int]] = []

        def write(batch, outs, tissues):  # in the writer thread, in batch order
            for box, o, tissue in zip(batch, outs, tissues, strict=True):
                x, y, w, h = box
                glass = (1 - tissue)[..., None]
                mean = ((o.mean(0).permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255)
                mean = mean * (1 - glass) + 255 * glass  # glass inside a region's box: white
                _blend_into(rgb, mean, (x, y), done_boxes, CANVAS_BLEND_PX)
                if std is not None:
                    sd = (o.std(0).mean(0) * 127.5).numpy()[..., None]  # uint8 units
                    std[y : y + h, x : x + w] = (sd * (1 - glass)).astype(np.float32)  # white glass is certain
                done_boxes.append(box)

        with _Overlap(enabled=cfg.prefetch) as overlap:
            for batch, inputs in overlap.read_ahead(read, batches):
                tissues = [t for _, t in inputs]
                outs = model.stain_batch([model.normalise(u) for u, _ in inputs], cfg, seeds=[seeds[c] for c in batch],
                                         tissues=tissues if cfg.skip_glass else None)  # [(K, 3, h, w)]
                overlap.write(write, batch, [o.float().cpu() for o in outs], tissues)
                if progress is not None:
                    progress.update(len(batch))
        meta = {"input": str(slide.path), "checkpoint": str(model.path), "model_kind": model.kind,
                **(provenance or {})}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_pyramid(out, rgb, mpp=out_mpp, tile=cfg.tile_px, provenance=meta)
        unc = None
        if std is not None:
            unc = out.with_name(f"{out.stem}.uncertainty.tiff")
            write_pyramid(unc, std, mpp=out_mpp, tile=cfg.tile_px, channel_names=["std"],
                          provenance={**meta, "unit": "standard deviation over samples, 0-255 intensity units"})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    from stainldm.wsi.reader import open_slide

    thumb = out.with_name(f"{out.stem}.thumb.png")
    with open_slide(out) as written:
        atomic_write_png(thumb, written.thumbnail(1024))
    seconds = time.perf_counter() - t0
    prov = provenance_path(out)
    record = {"software": "stainldm", "version": stainldm.__version__, "input": str(slide.path),
              "output": out.name, "uncertainty": unc.name if unc else None, "mpp": out_mpp,
              "size_wh": [out_w, out_h], "regions": len(regions), "tissue_fraction": round(frac, 4),
              "checkpoint": str(model.path), "model_kind": model.kind,
              "device": describe(model.device), "precision": model.precision,
              "attention": "sdpa" if model.sdpa else "math", "batches": len(batches),
              "tile_px": model.tile_px, "canvases": [list(c) for c in canvases],
              "stain_config": _plain(cfg), "seconds": round(seconds, 2), **(provenance or {})}
    atomic_write_text(prov, json.dumps(record, indent=1))
    return StainResult(out, unc, thumb, prov, len(regions), frac, seconds)


class _Overlap:
    """Reading ahead and writing behind in two threads, so the model is not kept waiting for the
    slide or the disk: one batch is read while the previous one is sampled, and a finished batch is
    written while the next one is. Order is kept; an error in a thread surfaces in the caller."""

    def __init__(self, *, enabled: bool = True):
        self.enabled = enabled
        self._pools: list[ThreadPoolExecutor] = []
        self._pending: Future | None = None

    def __enter__(self) -> _Overlap:
        if self.enabled:
            self._pools = [ThreadPoolExecutor(1, thread_name_prefix="stain-read"),
                           ThreadPoolExecutor(1, thread_name_prefix="stain-write")]
        return self

    def read_ahead(self, read: Callable, items: list) -> Iterator[tuple[Any, Any]]:
        """``(item, read(item))`` in order, the next item's read already under way."""
        if not self.enabled:
            for item in items:
                yield item, read(item)
            return
        nxt = self._pools[0].submit(read, items[0]) if items else None
        for k, item in enumerate(items):
            got = nxt.result()
            nxt = self._pools[0].submit(read, items[k + 1]) if k + 1 < len(items) else None
            yield item, got

    def write(self, fn: Callable, *args) -> None:
        """``fn(*args)`` behind the caller, after the previous write (at most one waits)."""
        if not self.enabled:
            fn(*args)
            return
        if self._pending is not None:
            self._pending.result()
        self._pending = self._pools[1].submit(fn, *args)

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if self._pending is not None and exc_type is None:
                self._pending.result()
        finally:
            for pool in self._pools:
                pool.shutdown(wait=True, cancel_futures=True)


def _grown_mask(mask: np.ndarray, cfg: StainConfig, *, out_mpp: float) -> np.ndarray:
    """The slide's tissue mask (bool) dilated by about half of ``region_margin_px``."""
    scale = cfg.tissue.mask_mpp / out_mpp  # output px per mask px
    return ndi.binary_dilation(mask, iterations=max(1, round(cfg.region_margin_px / 2 / scale)))


def _tissue_weight(grown: np.ndarray, cfg: StainConfig, *, out_mpp: float, box: tuple[int, int, int, int]) -> np.ndarray:
    """A soft tissue mask over an output box from the grown mask (:func:`_grown_mask`): 1 on
    tissue, fading to 0 on glass over about ``region_margin_px``, so the glass around a core is
    white like the slide's background."""
    import cv2

    x, y, w, h = box
    scale = cfg.tissue.mask_mpp / out_mpp  # output px per mask px
    # The mask pixels under the box, and one more around them for the interpolation.
    c0, r0 = max(0, math.floor(x / scale) - 1), max(0, math.floor(y / scale) - 1)
    crop = grown[r0 : math.ceil((y + h) / scale) + 1, c0 : math.ceil((x + w) / scale) + 1].astype(np.float32)
    # Output pixel (u, v) centre in mask coordinates: ((x + u + 0.5) / scale - 0.5).
    mx = ((x + np.arange(w) + 0.5) / scale - 0.5 - c0).astype(np.float32)
    my = ((y + np.arange(h) + 0.5) / scale - 0.5 - r0).astype(np.float32)
    gx, gy = np.meshgrid(mx, my)
    m = cv2.remap(crop, gx, gy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    sigma = max(1.0, cfg.region_margin_px / 4)
    return np.clip(cv2.GaussianBlur(m, (0, 0), sigma) * 1.5, 0, 1)


def _clip(box, w, h):
    x, y, bw, bh = box
    x0, y0 = max(0, x), max(0, y)
    return (x0, y0, min(w, x + bw) - x0, min(h, y + bh) - y0)


def _blend_into(arr, img: np.ndarray, xy: tuple[int, int], done: list, blend: int) -> None:
    """Writes ``img`` at ``xy``, cross-fading linearly where it overlaps canvases already written."""
    x, y = xy
    h, w = img.shape[:2]
    weight = np.ones((h, w), np.float32)
    for dx, dy, dw, dh in done:
        ox0, oy0, ox1, oy1 = max(x, dx), max(y, dy), min(x + w, dx + dw), min(y + h, dy + dh)
        if ox1 <= ox0 or oy1 <= oy0:
            continue
        ramp = np.ones((h, w), np.float32)
        if dx < x:  # neighbour on the left: fade in from the overlap's left edge
            ramp = np.minimum(ramp, np.clip((np.arange(w)[None, :] + 0.5) / max(1, ox1 - x), 0, 1))
        if dy < y:
            ramp = np.minimum(ramp, np.clip((np.arange(h)[:, None] + 0.5) / max(1, oy1 - y), 0, 1))
        region = np.zeros((h, w), bool)
        region[oy0 - y : oy1 - y, ox0 - x : ox1 - x] = True
        weight = np.where(region, np.minimum(weight, ramp), weight)
    if (weight < 1).any():
        old = np.asarray(arr[y : y + h, x : x + w]).astype(np.float32)
        img = old * (1 - weight[..., None]) + img * weight[..., None]
    arr[y : y + h, x : x + w] = np.rint(img).astype(np.uint8)


def _plain(cfg) -> dict:
    from stainldm.config import to_dict

    return to_dict(cfg)
