"""Window by window on a stack of canvases: what :class:`~stainldm.inference.model.StainModel`
runs its networks through.

A canvas is larger than the network's training tile, so the network sees it in overlapping windows
whose predictions are fused with smooth weights (:func:`~stainldm.inference.canvas.fuse_windows`).
The windows of several canvases (TMA cores, and the K samples of each) share network calls. For the
LDM this happens at every denoising step, inside the sampler: :class:`WindowDenoiser` is the
``model_fn(z, t)`` the sampler calls, and moves the window borders at each step so that seams do
not build up in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch

from stainldm.inference.canvas import fuse_windows, window_grid, window_weight
from stainldm.inference.config import StainConfig
from stainldm.models.ldm import Condition
from stainldm.seeds import Stream, derive_seed

if TYPE_CHECKING:
    from stainldm.inference.model import StainModel

Window = tuple[int, int, int]  # (canvas or item in the stack, y, x): a window's start


def windows_near(starts: list[tuple[int, int]], window: tuple[int, int], near: np.ndarray | None
                 ) -> list[tuple[int, int]]:
    """The window starts ``(y, x)`` whose ``window`` touches ``near`` (a bool map); all of them
    without a map, or when none touches it."""
    if near is None:
        return starts
    keep = [(y, x) for y, x in starts if near[y : y + window[0], x : x + window[1]].any()]
    return keep or starts


def crop_windows(stack: torch.Tensor, windows: Sequence[Window], window: tuple[int, int]) -> torch.Tensor:
    """``(len(windows), C, wy, wx)``: each window ``(n, y, x)`` cut from canvas ``n`` of ``stack``
    ``(N, C, H, W)``."""
    return torch.cat([stack[n : n + 1, :, y : y + window[0], x : x + window[1]] for n, y, x in windows])


def predict_baseline(model: StainModel, x: torch.Tensor, cfg: StainConfig, *, near: Sequence[np.ndarray | None]
                     ) -> torch.Tensor:
    """The baseline's H&E for a stack of canvases, window by window.

    Args:
        model: a baseline :class:`~stainldm.inference.model.StainModel`.
        x: ``(N, C_in, H, W)`` inputs in ~[-1, 1].
        cfg: ``overlap_px`` and ``batch_size`` (windows per network call) are used.
        near: per canvas, an ``(H, W)`` map of the pixels whose windows must run (None: all).

    Returns:
        ``(N, 3, H, W)``.
    """
    n, _, h, w = x.shape
    win = model.baseline_window(h, w, cfg)
    grid = window_grid((h, w), window=win, overlap=cfg.overlap_px)
    windows = [(i, y, xx) for i in range(n) for y, xx in windows_near(grid, win, near[i])]
    weight = window_weight(win, overlap=cfg.overlap_px, device=x.device)
    canvas = torch.zeros((n, 3, h, w), device=x.device)
    return fuse_windows(partial(_baseline_windows, model, x, win), windows, canvas=canvas, window=win, weight=weight,
                        batch=cfg.batch_size)


def _baseline_windows(model: StainModel, x: torch.Tensor, win: tuple[int, int], windows: list[Window]) -> torch.Tensor:
    with model.autocast():
        return model.net(crop_windows(x, windows, win))


class WindowDenoiser:
    """The ``model_fn(z, t)`` a sampler calls to denoise a stack of latent canvases window by window.

    The stack holds items (a canvas and one of its samples each, with its own seed). Each call is
    one denoising step: every item's windows are laid out afresh (:meth:`windows`), predicted in
    batches of ``cfg.batch_size`` (items sharing network calls), with the condition of the item's
    canvas and classifier-free guidance ``cfg.guidance``, and fused on the stack.

    Args:
        model: an ldm :class:`~stainldm.inference.model.StainModel`.
        x: ``(N, C_in, H, W)`` inputs in ~[-1, 1], one per canvas (H, W multiples of ``model.f``).
        cfg: ``guidance`` and ``batch_size`` are used.
        canvas_of: per item, its canvas in ``x``.
        seeds: per item, its seed (moves its window borders).
        near: per canvas, an ``(H, W)`` map of the pixels whose windows must run (None: all).
        window: window size ``(wy, wx)``, in latent px.
        overlap: least overlap of neighbouring windows, in latent px.
    """

    def __init__(self, model: StainModel, x: torch.Tensor, cfg: StainConfig, *, canvas_of: Sequence[int],
                 seeds: Sequence[int], near: Sequence[np.ndarray | None], window: tuple[int, int], overlap: int):
        f, net = model.f, model.net
        self.model, self.cfg, self.canvas_of, self.seeds = model, cfg, list(canvas_of), list(seeds)
        self.window, self.overlap = window, overlap
        self.size_hw = (x.shape[-2] // f, x.shape[-1] // f)  # latent px
        h, w = self.size_hw
        self.near = [None if m is None else m.reshape(h, f, w, f).any(axis=(1, 3)) for m in near]  # latent px
        self.weight = window_weight(window, overlap=overlap, device=x.device)
        with model.autocast():  # the condition of every canvas, once: the stem is convolutional
            self.spatial = net.stem(x) if net.stem is not None else None  # (N, c, h, w)
            self.fmap = net.semantic.feature_map(x) if net.semantic is not None else None  # (N, D, H/r, W/r)
        self.reduction = net.semantic.reduction // f if net.semantic is not None else 1  # latent px per token
        self.step = 0  # denoising steps taken: the sampler calls once per step

    def windows(self, step: int) -> list[Window]:
        """The windows ``(item, y, x)`` run at denoising step ``step``: each item's borders jittered
        by its own seed and the step, so they move at every step."""
        out: list[Window] = []
        for n, seed in enumerate(self.seeds):
            grid = window_grid(self.size_hw, window=self.window, overlap=self.overlap, jitter_seed=derive_seed(seed, Stream.JITTER, step))
            out += [(n, y, x) for y, x in windows_near(grid, self.window, self.near[self.canvas_of[n]])]
        return out

    def condition(self, windows: Sequence[Window]) -> Condition:
        """The condition of each window (item, y, x): its canvas's spatial features and semantic
        tokens under the window."""
        wy, wx = self.window
        on_canvas = [(self.canvas_of[n], y, x) for n, y, x in windows]
        sp = crop_windows(self.spatial, on_canvas, self.window) if self.spatial is not None else None
        tok = None
        if self.fmap is not None:
            r = self.reduction
            crops = [self.fmap[c : c + 1, :, y // r : max(y // r + 1, (y + wy) // r), x // r : max(x // r + 1, (x + wx) // r)]
                     for c, y, x in on_canvas]
            size = crops[0].shape[-2:]
            crops = [c if c.shape[-2:] == size else torch.nn.functional.interpolate(c, size=size) for c in crops]
            tok = self.model.net.semantic.tokens(torch.cat(crops))
        return Condition(sp, tok)

    def predict(self, z: torch.Tensor, t: torch.Tensor, windows: list[Window]) -> torch.Tensor:
        """The guided network output (v or ε) on ``windows`` of the stack ``z`` at timestep ``t``:
        ``(len(windows), C, wy, wx)`` float32."""
        zb = crop_windows(z, windows, self.window)
        with self.model.autocast():
            fn = self.model.net.guided(self.condition(windows), self.cfg.guidance)
            return fn(zb, t[:1].expand(len(windows))).float()

    def __call__(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One denoising step's model output on the whole stack ``z`` ``(items, C, h, w)``."""
        windows = self.windows(self.step)
        self.step += 1
        return fuse_windows(partial(self.predict, z, t), windows, canvas=z, window=self.window, weight=self.weight,
                            batch=self.cfg.batch_size)
