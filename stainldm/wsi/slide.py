"""The slide-reading API every backend shares, and the in-memory backend.

:class:`SlideReader` holds what does not depend on the file format: level geometry, reads that
cross the slide's edge (background outside), resampling to a target mpp, thumbnails, the context
manager. A backend implements ``_read`` for in-bounds regions of one level. Open files with
:func:`stainldm.wsi.reader.open_slide`, which picks the backend.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stainldm.errors import InputError
from stainldm.wsi import _resample
from stainldm.wsi.metadata import default_channel_names, mpp_tuple


class SlideReader(ABC):
    """A whole-slide image, open for reading. Use :func:`open_slide` to get one.

    Attributes:
        path: the file (or folder) read, or None for an in-memory array.
        vendor: format name, e.g. ``"aperio"``, ``"generic-tiff"``, ``"ome-tiff"``, ``"png"``.
        level_dimensions: ``(width, height)`` of every level, level 0 first.
        level_downsamples: downsample factor of every level relative to level 0.
        mpp: ``(x, y)`` µm per level-0 pixel, or None when the file does not say.
        channels: samples per pixel of what ``read_region`` returns (3 for RGB).
        dtype: numpy dtype of what ``read_region`` returns.
        channel_names: one name per channel (``("R", "G", "B")`` for RGB).
        fluorescence: True when the file says it holds fluorescence channels (a QPTIFF's or CZI's
            channel pages, OME channels with an emission wavelength), False when it says
            brightfield, None when it does not say (then ``background`` goes by channels and dtype).
    """

    path: Path | None
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    channels: int
    dtype: np.dtype
    channel_names: tuple[str, ...]
    fluorescence: bool | None = None

    # -- geometry ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The file name, for messages."""
        return self.path.name if self.path is not None else "<array>"

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def background(self) -> int:
        """Value of empty glass: white for brightfield (uint8 gray/RGB), 0 for fluorescence."""
        if self.fluorescence is not None:
            return 0 if self.fluorescence else int(np.iinfo(self.dtype).max) if self.dtype.kind == "u" else 1
        if self.dtype == np.uint8 and self.channels in (1, 3):
            return 255
        return 0

    def best_level_for_downsample(self, downsample: float) -> int:
        """The level with the largest downsample not above ``downsample`` (+0.1% tolerance)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.001:
                best = i
        return best

    # -- pixels -----------------------------------------------------------------------------
    def read_region(self, xy: tuple[int, int], size_wh: tuple[int, int], level: int = 0) -> np.ndarray:
        """Reads a region of one level.

        Args:
            xy: top-left corner in level-0 pixels (may lie outside the slide).
            size_wh: ``(width, height)`` in pixels of ``level``.
            level: pyramid level.

        Returns:
            ``(height, width, channels)`` array of ``self.dtype``; outside the slide is background.

        Raises:
            InputError: on a bad level or size.
            SlideFormatError: when the file's data cannot be decoded (corrupt, truncated).
        """
        if not 0 <= level < self.level_count:
            raise InputError(f"{self.name}: `level` {level} does not exist (the slide has {self.level_count})")
        w, h = int(size_wh[0]), int(size_wh[1])
        if w <= 0 or h <= 0:
            raise InputError(f"{self.name}: `size_wh` must be positive, got {w}x{h}")
        ds = self.level_downsamples[level]
        x_l, y_l = math.floor(xy[0] / ds), math.floor(xy[1] / ds)
        lw, lh = self.level_dimensions[level]
        x0, y0 = max(x_l, 0), max(y_l, 0)
        x1, y1 = min(x_l + w, lw), min(y_l + h, lh)
        if x0 == x_l and y0 == y_l and x1 - x0 == w and y1 - y0 == h:
            return self._read(level, x0, y0, w, h)
        out = np.full((h, w, self.channels), self.background, dtype=self.dtype)
        if x1 > x0 and y1 > y0:
            out[y0 - y_l : y1 - y_l, x0 - x_l : x1 - x_l] = self._read(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def read_at_mpp(self, xy: tuple[float, float], size_wh: tuple[int, int], mpp: float) -> np.ndarray:
        """Reads a region resampled to ``mpp`` µm/pixel from the best level.

        The output pixel ``(u, v)`` covers level-0 ``[x + u·f, x + (u+1)·f)`` with
        ``f = mpp / self.mpp``, so reads of neighbouring regions tile exactly. Downsampling is
        anti-aliased (Gaussian, σ = (s-1)/2 as scikit-image does), then bilinear.

        Args:
            xy: top-left corner in level-0 pixels (float allowed).
            size_wh: output ``(width, height)`` in pixels at ``mpp``.
            mpp: target µm per pixel.

        Raises:
            InputError: when the slide has no mpp (open it with ``open_slide(path, mpp=...)``), or ``mpp`` is not positive.
        """
        if self.mpp is None:
            raise InputError(
                f"{self.name}: the slide does not record its resolution (mpp); pass `mpp` when opening it"
            )
        if mpp <= 0:
            raise InputError(f"{self.name}: `mpp` (the target resolution) must be positive, got {mpp}")
        fx, fy = mpp / self.mpp[0], mpp / self.mpp[1]
        level = self.best_level_for_downsample(min(fx, fy))
        ds = self.level_downsamples[level]
        w, h = int(size_wh[0]), int(size_wh[1])
        x, y = float(xy[0]), float(xy[1])
        # Exact fast path: no scaling and integer offsets.
        if abs(fx / ds - 1) < 1e-6 and abs(fy / ds - 1) < 1e-6 and x / ds == int(x / ds) and y / ds == int(y / ds):
            return self.read_region((int(x), int(y)), (w, h), level)
        sx, sy = fx / ds, fy / ds  # level pixels per output pixel
        pad = math.ceil(3 * max(sx, sy)) + 2
        x0 = math.floor(x / ds) - pad
        y0 = math.floor(y / ds) - pad
        x1 = math.ceil((x + w * fx) / ds) + pad
        y1 = math.ceil((y + h * fy) / ds) + pad
        src = self.read_region((round(x0 * ds), round(y0 * ds)), (x1 - x0, y1 - y0), level)
        # Output pixel centre u+0.5 -> level-0 x + (u+0.5)fx -> level coordinate /ds - 0.5, minus origin.
        ox = (x + 0.5 * fx) / ds - 0.5 - x0
        oy = (y + 0.5 * fy) / ds - 0.5 - y0
        return _resample.affine_scale(src, scale_xy=(sx, sy), offset_xy=(ox, oy), size_wh=(w, h))

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """The whole slide, downsampled so that its longest side is ``max_px`` (aspect kept)."""
        if max_px <= 0:
            raise InputError(f"{self.name}: `max_px` must be positive, got {max_px}")
        w0, h0 = self.dimensions
        factor = max(w0, h0) / max_px
        if factor <= 1:
            return self.read_region((0, 0), (w0, h0), 0)
        level = self.best_level_for_downsample(factor)
        lw, lh = self.level_dimensions[level]
        out_w, out_h = max(1, round(w0 / factor)), max(1, round(h0 / factor))
        return _resample.area_resize_streamed(
            lambda y, rows: self.read_region((0, round(y * self.level_downsamples[level])), (lw, rows), level),
            size_wh=(lw, lh),
            out_wh=(out_w, out_h),
            channels=self.channels,
            dtype=self.dtype,
        )

    @property
    def associated_names(self) -> tuple[str, ...]:
        """Names of associated images (``label``, ``macro``, ``thumbnail``) present in the file."""
        return ()

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image as an ``H×W×3`` uint8 array."""
        raise InputError(f"{self.name}: no associated image '{name}' (has: {', '.join(self.associated_names) or 'none'})")

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:  # noqa: B027 (backends without handles have nothing to release)
        """Releases file handles; reading afterwards is an error."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return (f"{type(self).__name__}({self.name!r}, {self.vendor}, {w}x{h}, levels={self.level_count}, "
                f"mpp={self.mpp}, channels={self.channels}, dtype={np.dtype(self.dtype).name})")

    @abstractmethod
    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Reads an in-bounds region in level pixels -> ``(h, w, channels)``."""

    def _read_channels(self, level: int, x: int, y: int, w: int, h: int, channels: Sequence[int]) -> np.ndarray:
        """Like ``_read`` but only ``channels`` (indices, in that order) -> ``(h, w, len(channels))``.

        Backends that store channels apart (a QPTIFF page or CZI plane per channel) override it to
        decode only those; :func:`stainldm.wsi.channels.select_channels` reads through it.
        """
        return self._read(level, x, y, w, h)[..., list(channels)]


class ArrayReader(SlideReader):
    """An in-memory ``H×W×C`` (or ``H×W``) array as a one-level slide; also PNG/JPEG files."""

    def __init__(self, array: np.ndarray, *, mpp: float | tuple[float, float] | None = None,
                 path: Path | None = None, vendor: str = "array", channel_names: Sequence[str] | None = None):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise InputError(f"{path or '<array>'}: `array` must be an H×W×C image, got shape {array.shape}")
        if array.shape[2] == 4 and array.dtype == np.uint8:
            array = composite_on_white(array)
        self._array = array
        self.path = path
        self.vendor = vendor
        h, w, c = array.shape
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.mpp = mpp_tuple(mpp)
        self.channels = c
        self.dtype = array.dtype
        self.channel_names = tuple(channel_names) if channel_names else default_channel_names(c)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._array[y : y + h, x : x + w]


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA (what openslide-python and PIL return) -> RGB composited on white."""
    if rgba.shape[-1] != 4:
        return rgba
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
