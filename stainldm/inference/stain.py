"""Stain one slide: tissue regions -> seam-free canvas sampling -> streamed pyramidal TIFF.

    model = StainModel.load("runs/ldm")                       # an ldm (or baseline) run folder
    result = stain_slide(open_slide("core.tiff"), model, Path("out/core.tiff"), StainConfig(steps=10))

Per region (a TMA core or a connected tissue piece, from the tissue mask; glass is skipped and
stays white) the unstained input is read at the model's mpp and sampled on one latent canvas
(:mod:`stainldm.inference.canvas`): noise drawn once per canvas from the slide seed, windows
fused at every step, tiled decoding with blending. Regions larger than ``max_canvas_px`` are
split into overlapping sub-canvases, blended where they meet. Results go to a temporary on-disk
canvas (zarr), so memory does not grow with the slide, and are then streamed into the TIFF.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

import stainldm
from stainldm.errors import CheckpointError, InputError
from stainldm.files import atomic_write_png, atomic_write_text
from stainldm.inference.canvas import axis_window, decode_tiled, fuse_windows, window_grid, window_weight
from stainldm.models.ldm import Condition
from stainldm.wsi.reader import SlideReader
from stainldm.wsi.tissue import TissueConfig, slide_mask
from stainldm.wsi.writer import write_pyramid

log = logging.getLogger(__name__)
CANVAS_BLEND_PX = 64  # sub-canvases of a large region overlap and cross-fade over this many output px
SKIP_MARGIN_PX = 32  # windows farther than this from tissue are skipped (beyond the decoder's reach)


@dataclass(frozen=True)
class StainConfig:
    """How a slide is stained.

    Attributes:
        steps, sampler, guidance, eta: sampling (LDM only).
        seed: the slide seed (noise of every canvas derives from it).
        samples: K > 1 draws K samples; the output is their mean and the uncertainty their std.
        batch_size: windows per network call.
        overlap_px: least overlap of neighbouring windows, in output pixels.
        max_canvas_px: largest canvas edge (output pixels) sampled at once (memory budget).
        single_window_scale: an LDM canvas whose sides are at most this many training tiles is
            sampled as one window: no overlap and no window borders (a TMA core, at the demo's
            1 µm/px up to 384 px). Larger canvases use windows of 1–1.5 tiles: on a CPU, batches
            of 3-tile windows sampled a 1241 px canvas 12 % slower for 9 % fewer evaluations.
        tile_px: tile edge of the output TIFF.
        modality: tissue-detection model of the input (``auto`` guesses).
        tissue: tissue-detection parameters.
        region_margin_px: glass kept around each tissue region (output pixels).
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
    skip_glass: bool = True  # windows on glass inside a region's box are not run through the network
    tissue: TissueConfig = field(default_factory=TissueConfig)


def check_stain_config(cfg: StainConfig) -> None:
    if cfg.steps <= 0:
        raise InputError(f"--steps must be positive, got {cfg.steps}")
    if cfg.samples <= 0:
        raise InputError(f"--samples must be positive, got {cfg.samples}")
    if cfg.batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {cfg.batch_size}")
    if cfg.overlap_px < 0:
        raise InputError(f"--overlap must be 0 or more, got {cfg.overlap_px}")
    if not 1.0 <= cfg.single_window_scale <= 8.0:
        raise InputError(f"single_window_scale must be between 1 and 8 (training tiles), got {cfg.single_window_scale}")
    if cfg.max_canvas_px < 2 * CANVAS_BLEND_PX:
        raise InputError(f"max_canvas_px ({cfg.max_canvas_px}) must be at least {2 * CANVAS_BLEND_PX} "
                         f"(sub-canvases cross-fade over {CANVAS_BLEND_PX} px)")


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class StainModel:
    """A trained ldm (with its autoencoder) or baseline, ready to stain."""

    def __init__(self, kind: str, meta: dict, net: torch.nn.Module, ae: torch.nn.Module | None, path: Path,
                 device: torch.device):
        self.kind, self.meta, self.net, self.ae, self.path, self.device = kind, meta, net, ae, path, device
        self.in_channels = int(meta["in_channels"])
        self.mpp = float(meta["mpp"]) if meta.get("mpp") else None
        self.tile_px = int(meta["tile_px"])
        stats = meta["input_stats"]
        self.low = torch.tensor(stats["low"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.high = torch.tensor(stats["high"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.f = int(meta.get("downsampling", 1)) if kind == "ldm" else 1
        if kind == "ldm":
            self.multiple = 2 ** (len(meta["config"]["denoiser"]["channels"]) - 1)
            self.latent_scale = float(meta["latent_scale"])
        else:
            self.multiple = 16  # BasicUNet: four 2× poolings
            self.latent_scale = 1.0

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> StainModel:
        """Loads an ldm or baseline run folder (or its model.json).

        Raises:
            CheckpointError: missing/corrupt files, or an autoencoder (which cannot stain).
        """
        from stainldm.config import from_dict
        from stainldm.models.autoencoder import AutoencoderConfig, build_autoencoder
        from stainldm.models.baseline import BaselineConfig, BaselineUNet
        from stainldm.models.ldm import LatentDiffusion, LDMConfig
        from stainldm.train.checkpoint import load_weights, read_model_json

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        meta = read_model_json(path)
        kind = meta.get("kind")
        device = torch.device(device)
        if kind == "ldm":
            cfg = from_dict(LDMConfig, meta["config"], where="ldm")
            net = LatentDiffusion(cfg, in_channels=int(meta["in_channels"]), latent_channels=int(meta["latent_channels"]),
                                  downsampling=int(meta["downsampling"]))
            load_weights(net, folder / "model.safetensors")
            ae = build_autoencoder(from_dict(AutoencoderConfig, meta["autoencoder"]["config"], where="autoencoder"))
            load_weights(ae, folder / "autoencoder.safetensors")
            ae = ae.eval().to(device)
        elif kind == "baseline":
            net = BaselineUNet(from_dict(BaselineConfig, meta["config"], where="baseline"),
                               in_channels=int(meta["in_channels"]))
            load_weights(net, folder / "model.safetensors")
            ae = None
        else:
            raise CheckpointError(f"{folder}: is a {kind} checkpoint; staining needs an ldm or baseline run")
        if not meta.get("mpp"):
            raise CheckpointError(f"{folder}: model.json does not record the tile mpp it was trained at")
        return cls(kind, meta, net.eval().to(device), ae, folder, device)

    def normalise(self, u: np.ndarray) -> torch.Tensor:
        """``(H, W, C)`` slide pixels -> ``(1, C, H, W)`` model input in ~[-1, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(u.transpose(2, 0, 1))).to(self.device, torch.float32)[None]
        return ((x - self.low) / (self.high - self.low)).clamp(0, 1.5) * 2 - 1

    # -- one canvas -----------------------------------------------------------------------------
    @torch.no_grad()
    def stain_canvas(self, x: torch.Tensor, cfg: StainConfig, *, seed: int, tissue: np.ndarray | None = None
                     ) -> torch.Tensor:
        """``(1, C_in, H, W)`` input -> ``(K, 3, H, W)`` H&E in [-1, 1] (K = cfg.samples).

        ``tissue``: optional ``(H, W)`` weight, 0 on glass; windows with no tissue near them are not
        run through the network (background skipping) — their pixels are left for the caller to
        paint as glass, and come back as 0 (mid-grey)."""
        h, w = x.shape[-2:]
        unit = self.f * self.multiple
        ph, pw = (-h) % unit, (-w) % unit
        pad_h, pad_w = max(ph, self.tile_px - h, 0), max(pw, self.tile_px - w, 0)
        pad_h += (-(h + pad_h)) % unit
        pad_w += (-(w + pad_w)) % unit
        if pad_h or pad_w:  # reflect (replicate when the canvas is too small to reflect)
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        near = shown = None
        if tissue is not None:
            import cv2

            t = np.zeros(x.shape[-2:], bool)
            t[:h, :w] = tissue > 0
            if t.any():
                k = 2 * SKIP_MARGIN_PX + 1
                near = cv2.dilate(t.view(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
                shown = t
        if self.kind == "baseline":
            out = self._baseline_canvas(x, cfg, near=near).expand(cfg.samples, -1, -1, -1)
        else:
            out = torch.cat([self._ldm_canvas(x, cfg, seed=seed * 1_000 + k, near=near, shown=shown)
                             for k in range(cfg.samples)])
        return out[:, :, :h, :w]

    def _baseline_canvas(self, x: torch.Tensor, cfg: StainConfig, *, near: np.ndarray | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        win = (axis_window(h, window=self.tile_px, overlap=cfg.overlap_px, multiple=16),
               axis_window(w, window=self.tile_px, overlap=cfg.overlap_px, multiple=16))
        positions = _with_tissue(window_grid((h, w), window=win, overlap=cfg.overlap_px), win, near)
        weight = window_weight(win, overlap=cfg.overlap_px, device=x.device)

        def predict(chunk):
            return self.net(torch.cat([x[:, :, y : y + win[0], xx : xx + win[1]] for y, xx in chunk]))

        canvas = torch.zeros((1, 3, h, w), device=x.device)
        return fuse_windows(predict, positions, canvas=canvas, window=win, weight=weight, batch=cfg.batch_size)

    def ldm_windows(self, h: int, w: int, cfg: StainConfig) -> tuple[tuple[int, int], int]:
        """Window size ``(wy, wx)`` and overlap, in latent px, for an ``h × w`` latent canvas.

        A canvas of at most ``cfg.single_window_scale`` tiles a side is one window. Otherwise the
        overlap is ``cfg.overlap_px``; windows up to 1.5× the training tile keep the cost near its
        minimum, and among the cheapest the one that leaves spare overlap is taken, so that the
        borders move at every step (the spare is redrawn) and never stay put
        (``benchmarks/stain.py``)."""
        tile = self.tile_px // self.f
        overlap = max(1, math.ceil(cfg.overlap_px / self.f))
        if max(h, w) <= cfg.single_window_scale * tile:
            return (h, w), overlap
        win = tuple(axis_window(n, window=tile, overlap=overlap, multiple=self.multiple, movable=True) for n in (h, w))
        return win, overlap

    def decode_tiles(self, h: int, w: int) -> tuple[tuple[int, int], int]:
        """Decode tile size ``(th, tw)`` and overlap, in latent px, for an ``h × w`` latent canvas:
        the fewest tiles of 1–1.5× the training tile (the decoder's attention, when it has one,
        grows with the square of the tile's area)."""
        tile = max(self.tile_px // self.f, 16)
        overlap = max(2, tile // 8)
        return tuple(axis_window(n, window=tile, overlap=overlap) for n in (h, w)), overlap

    def _ldm_canvas(self, x: torch.Tensor, cfg: StainConfig, *, seed: int, near: np.ndarray | None = None,
                    shown: np.ndarray | None = None) -> torch.Tensor:
        """One sample of a padded canvas. ``near``: pixels whose windows must run (tissue and a
        margin); ``shown``: pixels the caller keeps (tissue weight > 0), the only ones decoded."""
        from stainldm.diffusion.samplers import sample as run_sampler

        ldm, f = self.net, self.f
        h, w = x.shape[-2] // f, x.shape[-1] // f
        win, overlap = self.ldm_windows(h, w, cfg)
        near_z = None if near is None else near.reshape(h, f, w, f).any(axis=(1, 3))  # latent px near tissue
        weight = window_weight(win, overlap=overlap, device=x.device)
        spatial = ldm.stem(x) if ldm.stem is not None else None  # (1, c, h, w): the stem is convolutional
        fmap = ldm.semantic.feature_map(x) if ldm.semantic is not None else None  # (1, D, H/r, W/r)
        r = ldm.semantic.reduction // f if ldm.semantic is not None else 1  # latent px per token

        def window_condition(chunk) -> Condition:
            sp = torch.cat([spatial[:, :, y : y + win[0], xx : xx + win[1]] for y, xx in chunk]) if spatial is not None else None
            tok = None
            if fmap is not None:
                crops = [fmap[:, :, y // r : max(y // r + 1, (y + win[0]) // r), xx // r : max(xx // r + 1, (xx + win[1]) // r)]
                         for y, xx in chunk]
                size = crops[0].shape[-2:]
                crops = [c if c.shape[-2:] == size else torch.nn.functional.interpolate(c, size=size) for c in crops]
                tok = ldm.semantic.tokens(torch.cat(crops))
            return Condition(sp, tok)

        calls = [0]

        def model_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            positions = _with_tissue(window_grid((h, w), window=win, overlap=overlap, jitter_seed=seed * 997 + calls[0]),
                                     win, near_z)
            calls[0] += 1

            def predict(chunk):
                zb = torch.cat([z[:, :, y : y + win[0], xx : xx + win[1]] for y, xx in chunk])
                tb = t[:1].expand(len(chunk))
                return ldm.guided(window_condition(chunk), cfg.guidance)(zb, tb)

            return fuse_windows(predict, positions, canvas=z, window=win, weight=weight, batch=cfg.batch_size)

        g = torch.Generator(device=x.device).manual_seed(seed)
        noise = torch.randn((1, ldm.latent_channels, h, w), generator=g, device=x.device)
        kwargs = {"eta": cfg.eta} if cfg.sampler == "ddim" else {}
        z0 = run_sampler(cfg.sampler, model_fn, ldm.schedule, noise, steps=cfg.steps, generator=g, **kwargs)
        keep = None if shown is None else torch.from_numpy(shown.reshape(h, f, w, f).any(axis=(1, 3)))
        dec_tile, dec_overlap = self.decode_tiles(h, w)
        return decode_tiled(lambda zt: self.ae.decode(zt / self.latent_scale), z0, tile=dec_tile,
                            overlap=dec_overlap, scale=f, keep=keep, batch=self._decode_batch(cfg)).clamp(-1, 1)

    def _decode_batch(self, cfg: StainConfig) -> int:
        """Decode tiles per call: ``batch_size`` on a GPU; one on a CPU, where the decoder's
        full-resolution activations make batches slower per pixel (8 tiles of 80² latent px: 83 µs
        per latent px against 50 µs one at a time, demo model, one thread)."""
        return cfg.batch_size if self.device.type == "cuda" else 1


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


@dataclass
class StainResult:
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

    Raises:
        InputError: the slide's channels differ from the model's, it has no mpp, or no tissue.
    """
    import zarr

    check_stain_config(cfg)
    t0 = time.perf_counter()
    if slide.channels != model.in_channels:
        raise InputError(f"{slide.name}: has {slide.channels} channels but the model was trained on "
                         f"{model.in_channels}-channel unstained scans; use a checkpoint of this modality")
    if slide.mpp is None:
        raise InputError(f"{slide.name}: the slide does not record its mpp; pass --mpp")
    out_mpp = model.mpp
    f = out_mpp / slide.mpp[0]  # level-0 px per output px
    out_w, out_h = math.ceil(slide.dimensions[0] / f), math.ceil(slide.dimensions[1] / f)
    mask = slide_mask(slide, cfg.tissue, modality=cfg.modality)
    regions, frac = tissue_regions(slide, cfg, out_mpp=out_mpp, mask=mask)
    if not regions:
        raise InputError(f"{slide.name}: no tissue found; nothing to stain")
    work = out.parent / f".{out.stem}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        rgb = zarr.create_array(str(work / "rgb.zarr"), shape=(out_h, out_w, 3), chunks=(512, 512, 3),
                                dtype="uint8", fill_value=255)
        std = zarr.create_array(str(work / "std.zarr"), shape=(out_h, out_w, 1), chunks=(512, 512, 1),
                                dtype="float32", fill_value=0.0) if cfg.samples > 1 else None
        canvases = region_canvases(regions, (out_w, out_h), cfg)
        grown = _grown_mask(mask, cfg, out_mpp=out_mpp)  # once per slide, not per canvas
        if progress is not None:
            progress.reset(total=len(canvases))
        done_boxes: list[tuple[int, int, int, int]] = []
        for ci, (x, y, w, h) in enumerate(canvases):
            u = slide.read_at_mpp((x * f, y * f), (w, h), out_mpp)
            xin = model.normalise(u)
            tissue = _tissue_weight(grown, cfg, out_mpp=out_mpp, box=(x, y, w, h))
            outs = model.stain_canvas(xin, cfg, seed=(cfg.seed * 100_003 + ci) % 2**31,
                                      tissue=tissue if cfg.skip_glass else None)  # (K, 3, h, w)
            mean = ((outs.mean(0).permute(1, 2, 0).float().cpu().numpy() + 1) * 127.5).clip(0, 255)
            glass = 1 - tissue
            mean = mean * (1 - glass[..., None]) + 255 * glass[..., None]  # glass inside a region's box: white
            _blend_into(rgb, mean, (x, y), done_boxes, CANVAS_BLEND_PX)
            if std is not None:
                sd = (outs.float().std(0).mean(0) * 127.5).cpu().numpy()[..., None]  # uint8 units
                sd = sd * (1 - glass[..., None])  # white glass is certain, as the output shows it
                std[y : y + h, x : x + w] = sd.astype(np.float32)
            done_boxes.append((x, y, w, h))
            if progress is not None:
                progress.update(1)
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
    prov = out.with_name(f"{out.stem}.json")
    record = {"software": "stainldm", "version": stainldm.__version__, "input": str(slide.path),
              "output": out.name, "uncertainty": unc.name if unc else None, "mpp": out_mpp,
              "size_wh": [out_w, out_h], "regions": len(regions), "tissue_fraction": round(frac, 4),
              "checkpoint": str(model.path), "model_kind": model.kind,
              "stain_config": _plain(cfg), "seconds": round(seconds, 2), **(provenance or {})}
    atomic_write_text(prov, json.dumps(record, indent=1))
    return StainResult(out, unc, thumb, prov, len(regions), frac, seconds)


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


def _with_tissue(positions: list[tuple[int, int]], win: tuple[int, int], near: np.ndarray | None
                 ) -> list[tuple[int, int]]:
    """The windows that touch ``near`` (all of them without a map)."""
    if near is None:
        return positions
    keep = [(y, x) for y, x in positions if near[y : y + win[0], x : x + win[1]].any()]
    return keep or positions


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
