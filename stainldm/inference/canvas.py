"""Latent canvas maths: window grids, smooth fusion weights, fused prediction, tiled decoding.

Pure functions over shapes and tensors (no I/O). A region is sampled on one latent canvas; at
every denoising step the model sees overlapping windows (batched) and their outputs are averaged
on the canvas with smooth weights (MultiDiffusion, Bar-Tal et al. 2023), before the sampler's
update. The fewest windows that cover the canvas are used, and the spare overlap between them is
redrawn at every step, so window borders never stay in one place and no seam can form even with
small overlaps, while the overlap cost stays at its minimum.

Which windows: :func:`choose_window` prices every layout with a :class:`WindowCost`, the network's
FLOPs as a function of the window's area — linear for convolutions, quadratic for attention, whose
tokens grow with the window — so a model with attention at high resolution is sampled in windows
near the training tile, and one without in as few windows as possible (a TMA core in one).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from stainldm.seeds import Stream, derive_seed


def window_starts(length: int, *, window: int, overlap: int, jitter_seed: int | None = None) -> list[int]:
    """Start positions of the fewest windows covering ``[0, length)`` with at least ``overlap``.

    The spare length is shared between the gaps — evenly, or, with ``jitter_seed``, at random
    (a different draw per denoising step moves every window border while the number of windows,
    and so the cost, stays at its minimum).
    """
    if length <= window:
        return [0]
    overlap = min(overlap, window - 1)
    n = math.ceil((length - overlap) / (window - overlap))
    if n == 1:
        return [0]
    slack = n * window - length  # total overlap to share between the n - 1 gaps
    spare = slack - overlap * (n - 1)
    if jitter_seed is None:
        shares = [spare / (n - 1)] * (n - 1)
    else:
        g = torch.Generator().manual_seed(jitter_seed)
        e = -torch.log(torch.rand(n - 1, generator=g, dtype=torch.float64).clamp_min(1e-12))
        shares = (e / e.sum() * spare).tolist()  # a uniform draw on the simplex
    starts, pos, acc = [0], 0.0, 0.0
    for share in shares:
        acc += window - overlap - share
        pos = round(acc)
        starts.append(min(pos, length - window))
    starts[-1] = length - window
    return starts


def window_weight(window: tuple[int, int] | int, *, overlap: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``(wy, wx)`` fusion weight: 1 in the middle, a raised-cosine taper over ``overlap`` pixels
    at each border (never 0, so canvas borders covered by one window keep weight)."""
    wy, wx = (window, window) if isinstance(window, int) else window

    def ramp(n: int) -> torch.Tensor:
        r = torch.ones(n, device=device, dtype=dtype)
        o = min(overlap, n // 2)
        if o > 0:
            k = torch.arange(o, device=device, dtype=dtype)
            taper = 0.5 - 0.5 * torch.cos(math.pi * (k + 1) / (o + 1))
            r[:o] = taper
            r[-o:] = taper.flip(0)
        return r

    return ramp(wy)[:, None] * ramp(wx)[None, :]


def _axis_layout(length: int, window: int, overlap: int) -> tuple[int, bool]:
    """Windows of ``window`` that cover ``length`` with at least ``overlap``, and whether they are
    pinned: fewer than 1 px of spare overlap per gap, so jittered layouts cannot move their borders
    (two windows are pinned to the canvas ends whatever their size)."""
    n = 1 if length <= window else math.ceil((length - overlap) / (window - overlap))
    return n, n >= 3 and n * window - length - overlap * (n - 1) < n - 1


def axis_window(length: int, *, window: int, overlap: int, multiple: int = 1, max_scale: float = 1.5,
                movable: bool = False) -> int:
    """The window length (``window`` … ``max_scale · window``, a multiple of ``multiple``) that
    covers ``length`` with the fewest network evaluations — the UNet is convolutional, so windows
    somewhat larger than the training tiles are fine, and they remove most of the waste of
    covering a canvas with a fixed window.

    ``movable``: prefer the cheapest window that leaves at least 1 px of spare overlap per gap, so
    that jittered layouts (:func:`window_starts`) move the borders at every step (a window that
    covers the length exactly pins them), if it costs at most 5 % more. Two windows are pinned to
    the canvas ends whatever their size."""
    if length <= window:
        return window
    options = []
    for w in range(math.ceil(window / multiple) * multiple, int(window * max_scale) + 1, multiple):
        n, pinned = _axis_layout(length, w, overlap)
        options.append((n * min(w, length), w, pinned))
    cost, best, _ = min(options)
    if movable:  # the cheapest window with room, if it costs at most 5 % more
        free = [o for o in options if not o[2] and o[0] <= cost * 1.05]
        if free:
            best = min(free)[1]
    return best


@dataclass(frozen=True)
class WindowCost:
    """The cost of one network evaluation of a window of ``A`` latent pixels.

    FLOPs = ``fixed + per_px · A + per_px2 · A²``: convolutions and projections grow with the window's
    area; self-attention over ``L`` tokens costs 4·C·L² per layer (Q·Kᵀ and the weighted sum), and
    ``L`` grows with the area, as do the semantic tokens that cross-attention reads. Fitted to
    counted FLOPs of the real network (``StainModel.window_cost``).

    ``attention_px2`` is MONAI's math attention path's largest matrix, in elements per A²
    (heads × (L/A)² of the attention level with the most): the memory SDPA saves.
    """

    fixed: float
    per_px: float
    per_px2: float
    attention_px2: float = 0.0

    @classmethod
    def fit(cls, areas: Sequence[float], flops: Sequence[float], *, attention_px2: float = 0.0) -> WindowCost:
        """The exact quadratic through three ``(area, flops)`` counts."""
        assert len(areas) == len(flops) == 3, "three counts fit a quadratic"
        a = torch.tensor([[1.0, x, x * x] for x in areas], dtype=torch.float64)
        c = torch.linalg.solve(a, torch.tensor(list(flops), dtype=torch.float64)).tolist()
        return cls(max(c[0], 0.0), max(c[1], 0.0), max(c[2], 0.0), attention_px2)

    def flops(self, window_hw: tuple[int, int]) -> float:
        area = window_hw[0] * window_hw[1]
        return self.fixed + self.per_px * area + self.per_px2 * area * area

    def attention_bytes(self, window_hw: tuple[int, int], *, batch: int = 1, element_bytes: int = 4) -> float:
        """Memory of the math path's attention matrices for ``batch`` windows (scores and softmax)."""
        area = window_hw[0] * window_hw[1]
        return 2 * batch * self.attention_px2 * area * area * element_bytes


def _axis_options(length: int, *, window: int, overlap: int, multiple: int, max_scale: float, whole_max: int
                  ) -> list[tuple[int, int, bool]]:
    """``(window, count, pinned)`` for one canvas axis: windows of ``window`` … ``max_scale · window``
    (multiples of ``multiple``), and the whole axis as one window when it is at most ``whole_max``."""
    out = {}
    if length <= max(whole_max, window):
        out[length] = (length, 1, False)
    for w in range(math.ceil(window / multiple) * multiple, int(window * max_scale) + 1, multiple):
        if length <= w:
            out.setdefault(length, (length, 1, False))
            continue
        out[w] = (w, *_axis_layout(length, w, overlap))
    return list(out.values())


def choose_window(size_hw: tuple[int, int], *, tile: int, overlap: int, multiple: int = 1,
                  cost: WindowCost | None = None, whole_max: int = 0, max_scale: float = 1.5,
                  memory_budget: float | None = None, batch: int = 1) -> tuple[int, int]:
    """The window ``(wy, wx)`` that samples an ``h × w`` canvas at the least cost.

    Candidates: the whole canvas as one window (no borders at all) where both sides are at most
    ``whole_max``, and windows of 1 … ``max_scale`` training tiles (``tile``), multiples of
    ``multiple``, covering the canvas with at least ``overlap``. Each layout costs its window count
    times ``cost.flops(window)`` (without a cost model, the pixels evaluated). Among layouts within
    5 % of the cheapest, one whose borders can move at every step is preferred (see
    :func:`axis_window`); within 2 % of the choice, the one with the fewest windows.

    Args:
        memory_budget: bytes the math attention path may hold (``cost.attention_bytes`` for
            ``batch`` windows); None when attention runs through SDPA, whose memory is linear.
    """
    h, w = size_hw
    price = cost.flops if cost is not None else (lambda hw: float(hw[0] * hw[1]))
    opts = [_axis_options(n, window=tile, overlap=overlap, multiple=multiple, max_scale=max_scale, whole_max=whole_max)
            for n in (h, w)]
    layouts = []
    for (wy, ny, py), (wx, nx, px) in itertools.product(*opts):
        if memory_budget is not None and cost is not None and wy * wx > tile * tile and \
                cost.attention_bytes((wy, wx), batch=batch) > memory_budget:
            continue  # larger than a tile and over the budget: a tile always stays possible
        layouts.append((ny * nx * price((wy, wx)), ny * nx, py or px, (wy, wx)))
    cheapest = min(c for c, *_ in layouts)
    free = [lay for lay in layouts if not lay[2] and lay[0] <= 1.05 * cheapest]
    pool = free or layouts
    pick = min(pool)[0]
    return min((lay for lay in pool if lay[0] <= 1.02 * pick), key=lambda lay: (lay[1], lay[0]))[3]


def window_grid(size_hw: tuple[int, int], *, window: tuple[int, int] | int, overlap: int,
                jitter_seed: int | None = None) -> list[tuple[int, int]]:
    """``(y, x)`` starts of all windows (of ``window`` = (wy, wx)) over a canvas of ``size_hw``."""
    wy, wx = (window, window) if isinstance(window, int) else window
    ys = window_starts(size_hw[0], window=wy, overlap=overlap,
                       jitter_seed=None if jitter_seed is None else derive_seed(jitter_seed, Stream.AXIS, 0))
    xs = window_starts(size_hw[1], window=wx, overlap=overlap,
                       jitter_seed=None if jitter_seed is None else derive_seed(jitter_seed, Stream.AXIS, 1))
    return [(y, x) for y in ys for x in xs]


def fuse_windows(predict: Callable[[list[tuple[int, ...]]], torch.Tensor], positions: Sequence[tuple[int, ...]],
                 *, canvas: torch.Tensor, window: tuple[int, int], weight: torch.Tensor, batch: int) -> torch.Tensor:
    """Weighted average on the canvas of window predictions.

    Args:
        predict: ``predict(starts)`` -> ``(len(starts), C, wy, wx)`` predictions.
        positions: window starts ``(y, x)`` on a canvas ``(1, C, H, W)``, or ``(n, y, x)`` on canvas
            ``n`` of a stack ``(N, C, H, W)`` of equal canvases: windows of several canvases then
            share network calls.
        canvas: a tensor of the output's shape (its values are not used).
        window: window size ``(wy, wx)``.
        weight: ``(wy, wx)`` fusion weight (clipped to the canvas for small canvases).
        batch: windows per model call.
    """
    acc = torch.zeros_like(canvas, dtype=torch.float32)
    norm = torch.zeros((canvas.shape[0], 1, *canvas.shape[-2:]), device=canvas.device, dtype=torch.float32)
    h, w = canvas.shape[-2:]
    wh, ww = min(window[0], h), min(window[1], w)
    wt = weight[:wh, :ww].to(torch.float32)
    for i in range(0, len(positions), batch):
        chunk = list(positions[i : i + batch])
        out = predict(chunk).to(torch.float32)  # (b, C, wh, ww)
        for k, pos in enumerate(chunk):
            n, y, x = pos if len(pos) == 3 else (0, *pos)
            acc[n, :, y : y + wh, x : x + ww] += out[k] * wt
            norm[n, :, y : y + wh, x : x + ww] += wt
    return (acc / norm.clamp_min(1e-8)).to(canvas.dtype)


def evaluations_per_pixel(size_hw: tuple[int, int], *, window: tuple[int, int], overlap: int) -> float:
    """Network evaluations per canvas pixel divided by the non-overlapping minimum (overlap cost);
    the same at every step, jittered or not."""
    h, w = size_hw
    n = len(window_grid(size_hw, window=window, overlap=overlap))
    return n * min(window[0], h) * min(window[1], w) / (h * w)


def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, *, tile: tuple[int, int] | int,
                 overlap: int, scale: int, keep: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
    """Decodes a latent canvas ``(1, C, h, w)`` in overlapping tiles blended with smooth weights.

    Args:
        decode: latent tiles ``(b, C, th, tw)`` -> image tiles (``scale`` × larger).
        tile, overlap: latent tile size ``(th, tw)`` (or one edge) and overlap.
        scale: image pixels per latent pixel.
        keep: optional ``(h, w)`` bool map; tiles with no ``True`` in it are not decoded, and the
            pixels that only they cover come back as 0 (the caller paints them, e.g. as glass;
            with nothing to decode, the result is 3 channels of 0).
        batch: tiles per ``decode`` call (all tiles have one size).
    """
    h, w = z.shape[-2:]
    ty, tx = (tile, tile) if isinstance(tile, int) else tile
    th, tw = min(ty, h), min(tx, w)
    weight = window_weight((th * scale, tw * scale), overlap=overlap * scale, device=z.device)
    starts = [(y, x) for y, x in window_grid((h, w), window=(ty, tx), overlap=overlap)
              if keep is None or bool(keep[y : y + th, x : x + tw].any())]
    out = torch.zeros((1, 0, h * scale, w * scale), device=z.device)
    norm = torch.zeros((1, 1, h * scale, w * scale), device=z.device)
    for i in range(0, len(starts), batch):
        chunk = starts[i : i + batch]
        imgs = decode(torch.cat([z[:, :, y : y + th, x : x + tw] for y, x in chunk])).to(torch.float32)
        if out.shape[1] == 0:
            out = torch.zeros((1, imgs.shape[1], h * scale, w * scale), device=z.device)
        for img, (y, x) in zip(imgs, chunk, strict=True):
            ys, xs = y * scale, x * scale
            out[0, :, ys : ys + th * scale, xs : xs + tw * scale] += img * weight
            norm[0, :, ys : ys + th * scale, xs : xs + tw * scale] += weight
    if out.shape[1] == 0:  # nothing to decode
        out = torch.zeros((1, 3, h * scale, w * scale), device=z.device)
    return out / norm.clamp_min(1e-8)
