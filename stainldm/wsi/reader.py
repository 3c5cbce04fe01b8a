"""One reading API over OpenSlide, tifffile+zarr and plain images.

    with open_slide("core.svs") as slide:
        tile = slide.read_region((x, y), (256, 256), level=0)     # (256, 256, C) uint8/uint16
        same = slide.read_at_mpp((x, y), (256, 256), mpp=0.5)     # resampled to 0.5 µm/px

Coordinates follow OpenSlide: ``xy`` is the top-left corner in level-0 pixels, ``size_wh`` is in
pixels of the level (or target mpp) read. Images come back ``H×W×C`` numpy arrays; RGBA is
composited on white; areas outside the slide read as background (white for brightfield, 0 for
fluorescence).

Which backend opens a file is decided by its content, not its name:

* vendor formats OpenSlide knows (SVS, NDPI, MRXS, SCN, BIF, DICOM, ...) -> :class:`OpenSlideReader`;
* other TIFFs (generic pyramids, OME-TIFF with SubIFD levels, multi-channel uint16 fluorescence)
  -> :class:`TiffReader`, reading tiles through tifffile's zarr store (MONAI's tifffile backend
  decodes a whole level per patch, so it is not used);
* PNG/JPEG -> :class:`ArrayReader` in memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stainldm.errors import InputError, SlideFormatError
from stainldm.wsi import _resample
from stainldm.wsi._tiles import DirectTiles

log = logging.getLogger(__name__)

# Vendor formats OpenSlide handles better than a plain TIFF reader (metadata, associated images,
# non-TIFF containers). "generic-tiff" is left to tifffile, which reads it faster (see benchmarks/io.py).
_OPENSLIDE_VENDORS = {"aperio", "hamamatsu", "leica", "mirax", "philips", "sakura", "trestle", "ventana",
                      "dicom", "synthetic", "zeiss"}
_TIFF_EXTS = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".btf", ".tf8", ".qptiff"}
_PNG_EXTS = {".png"}
_JPEG_EXTS = {".jpg", ".jpeg"}
_ASSOCIATED = {"label", "macro", "thumbnail", "overview"}


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
    """

    path: Path | None
    vendor: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None
    channels: int
    dtype: np.dtype
    channel_names: tuple[str, ...]

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
            raise InputError(f"{self.name}: level {level} does not exist (the slide has {self.level_count})")
        w, h = int(size_wh[0]), int(size_wh[1])
        if w <= 0 or h <= 0:
            raise InputError(f"{self.name}: region size must be positive, got {w}x{h}")
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
            InputError: when the slide has no mpp (open it with ``open_slide(path, mpp=...)``).
        """
        if self.mpp is None:
            raise InputError(
                f"{self.name}: the slide does not record its resolution (mpp); pass it explicitly "
                "(open_slide(path, mpp=...) or --mpp)"
            )
        if mpp <= 0:
            raise InputError(f"{self.name}: target mpp must be positive, got {mpp}")
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
            raise InputError(f"{self.name}: thumbnail size must be positive, got {max_px}")
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


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------
class OpenSlideReader(SlideReader):
    """Vendor formats through OpenSlide (RGBA composited on white -> RGB uint8)."""

    def __init__(self, path: Path, *, mpp: float | tuple[float, float] | None = None):
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideFormatError(f"{path}: OpenSlide cannot read it ({exc})") from None
        props = self._slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _mpp_tuple(mpp) or _openslide_mpp(props)
        self.channels, self.dtype, self.channel_names = 3, np.dtype(np.uint8), ("R", "G", "B")
        self.properties = dict(props)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self.level_downsamples[level]
        try:
            rgba = np.asarray(self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideFormatError(f"{self.path}: OpenSlide failed to decode a region ({exc}); the file may be "
                                   "corrupt or truncated — copy it again from the scanner") from None
        return _composite_on_white(rgba)

    @property
    def associated_names(self) -> tuple[str, ...]:
        return tuple(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._slide.associated_images:
            return super().associated_image(name)
        return _composite_on_white(np.asarray(self._slide.associated_images[name]))

    def close(self) -> None:
        self._slide.close()


class TiffReader(SlideReader):
    """TIFFs through tifffile's zarr store: generic and OME pyramids (chained or SubIFD levels),
    any channel count, uint8/uint16/float. Reads only the tiles a region touches."""

    def __init__(self, path: Path, *, mpp: float | tuple[float, float] | None = None):
        import tifffile
        import zarr

        self.path = path
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            levels = list(series.levels)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise SlideFormatError(f"{path}: tifffile cannot read it ({type(exc).__name__}: {exc})") from None
        _check_tiff_complete(path, self._tif)
        axes = series.axes
        self._axes = axes
        self._plan = _axes_plan(axes, series.shape, path)
        try:
            store = self._tif.aszarr(series=0)
            root = zarr.open(store, mode="r")
        except Exception as exc:
            raise SlideFormatError(f"{path}: tifffile cannot map its tiles ({type(exc).__name__}: {exc})") from None
        self._arrays = [root[str(i)] for i in range(len(levels))] if len(levels) > 1 or not hasattr(root, "shape") else [root]
        y_ax, x_ax = axes.index("Y"), axes.index("X")
        dims = [(int(lv.shape[x_ax]), int(lv.shape[y_ax])) for lv in levels]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(float(np.mean([dims[0][0] / d[0], dims[0][1] / d[1]])) for d in dims)
        self.dtype = np.dtype(series.dtype)
        self.channels = self._plan.channels
        self.vendor = "ome-tiff" if self._tif.is_ome else ("aperio" if self._tif.is_svs else "generic-tiff")
        desc = _description(self._tif)
        self.channel_names = _channel_names(self._tif, desc, self.channels)
        self.mpp = _mpp_tuple(mpp) or _tiff_mpp(self._tif, desc)
        self.description = desc
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._direct = [DirectTiles.for_level(lv, self._fd, channels=self.channels, background=self.background)
                        if self._plan.channel_axis in (None, "S") else None for lv in levels]
        self._associated = {
            s.name.lower(): s for s in self._tif.series[1:] if s.name and s.name.lower() in _ASSOCIATED
        }

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        direct = self._direct[level]
        if direct is not None:
            try:
                return direct.read(x, y, w, h)
            except Exception as exc:
                raise SlideFormatError(f"{self.path}: failed to decode tiles at level {level} "
                                       f"({type(exc).__name__}: {exc}); the file may be corrupt") from None
        index = []
        for ax in self._axes:
            if ax == "Y":
                index.append(slice(y, y + h))
            elif ax == "X":
                index.append(slice(x, x + w))
            elif ax == self._plan.channel_axis:
                index.append(slice(None))
            else:
                index.append(0)
        try:
            data = np.asarray(self._arrays[level][tuple(index)])
        except Exception as exc:
            raise SlideFormatError(f"{self.path}: failed to decode tiles at level {level} "
                                   f"({type(exc).__name__}: {exc}); the file may be corrupt") from None
        return self._plan.to_hwc(data)

    @property
    def associated_names(self) -> tuple[str, ...]:
        return tuple(self._associated)

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._associated:
            return super().associated_image(name)
        img = self._associated[name].asarray()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return _composite_on_white(img) if img.shape[-1] == 4 else img

    def close(self) -> None:
        self._tif.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ArrayReader(SlideReader):
    """An in-memory ``H×W×C`` (or ``H×W``) array as a one-level slide; also PNG/JPEG files."""

    def __init__(self, array: np.ndarray, *, mpp: float | tuple[float, float] | None = None,
                 path: Path | None = None, vendor: str = "array", channel_names: Sequence[str] | None = None):
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3:
            raise InputError(f"{path or '<array>'}: expected an H×W×C image, got shape {array.shape}")
        if array.shape[2] == 4 and array.dtype == np.uint8:
            array = _composite_on_white(array)
        self._array = array
        self.path = path
        self.vendor = vendor
        h, w, c = array.shape
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.mpp = _mpp_tuple(mpp)
        self.channels = c
        self.dtype = array.dtype
        self.channel_names = tuple(channel_names) if channel_names else _default_channel_names(c)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._array[y : y + h, x : x + w]


# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------
def open_slide(path: str | os.PathLike, *, mpp: float | tuple[float, float] | None = None) -> SlideReader:
    """Opens any supported slide or image, choosing the reader by the file's content.

    Args:
        path: a slide file, a DICOM WSI folder, or a PNG/JPEG/TIFF image.
        mpp: µm per level-0 pixel, overriding (or supplying) what the file records.

    Raises:
        InputError: the path does not exist, or is a folder that is not a DICOM series.
        SlideFormatError: the file exists but is empty, truncated, not an image, or its content
            contradicts its extension (a PNG renamed ``.svs``); the message names what was tried.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        dcm = sorted(p for p in path.iterdir() if p.suffix.lower() == ".dcm" or _is_dicom(p))
        if not dcm:
            raise InputError(f"{path}: is a folder but not a DICOM WSI series (no .dcm files); "
                             "pass a slide file, or a folder of DICOM files")
        return _open_openslide(dcm[0], mpp, also_tried="")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied; make the file readable")
    size = path.stat().st_size
    if size == 0:
        raise SlideFormatError(f"{path}: the file is empty (0 bytes); copy the slide again")
    kind = _sniff(path)
    ext = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".ome.tif") else path.suffix.lower()
    expected = "tiff" if ext in _TIFF_EXTS or ext == ".ome.tif" else "png" if ext in _PNG_EXTS else \
        "jpeg" if ext in _JPEG_EXTS else None
    if expected is not None and kind is not None and kind != expected:
        raise SlideFormatError(
            f"{path}: the extension says {ext} ({expected.upper()}) but the content is a {kind.upper()} "
            f"file; rename it to its real type or re-export the slide"
        )
    if kind in ("png", "jpeg"):
        return _open_image(path, kind, mpp)
    if kind == "tiff":
        return _open_tiff(path, mpp)
    # Not a TIFF/PNG/JPEG: OpenSlide's other containers (MRXS, VMS, DICOM) or nothing at all.
    return _open_openslide(path, mpp, also_tried="; it is not a TIFF, PNG or JPEG file either")


def _open_tiff(path: Path, mpp) -> SlideReader:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor in _OPENSLIDE_VENDORS:
        from stainldm.wsi._tiffcheck import check_tiff_file

        check_tiff_file(path)
        return _open_openslide(path, mpp, also_tried="")
    try:
        return TiffReader(path, mpp=mpp)
    except SlideFormatError as tiff_exc:
        if vendor is None:
            raise SlideFormatError(f"{tiff_exc}; OpenSlide does not recognise it either") from None
        raise


def _open_openslide(path: Path, mpp, *, also_tried: str) -> SlideReader:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideFormatError(f"{path}: OpenSlide cannot read it ({exc}){also_tried}") from None
    if vendor is None:
        raise SlideFormatError(f"{path}: not a slide OpenSlide recognises{also_tried}; "
                               "supported: SVS, NDPI, MRXS, SCN, BIF, DICOM, (OME-)TIFF, PNG, JPEG")
    return OpenSlideReader(path, mpp=mpp)


def _open_image(path: Path, kind: str, mpp) -> SlideReader:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.MAX_IMAGE_PIXELS = None
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LA", "1"):
                im = im.convert("RGB" if im.mode != "LA" else "RGBA")
            array = np.asarray(im)
            dpi = im.info.get("dpi")
    except Exception as exc:
        raise SlideFormatError(f"{path}: cannot decode the {kind.upper()} image ({type(exc).__name__}: {exc}); "
                               "the file may be truncated or corrupt") from None
    if array.dtype == np.int32:  # PIL mode "I" for 16-bit PNGs
        array = array.astype(np.uint16)
    file_mpp = _mpp_tuple(mpp)
    if file_mpp is None and dpi and dpi[0] and dpi[0] > 1000:  # only trust resolutions of a microscope
        file_mpp = (25400.0 / dpi[0], 25400.0 / dpi[1])
    return ArrayReader(array, mpp=file_mpp, path=path, vendor=kind)


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def _is_dicom(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 132 and _sniff(path) == "dicom"


def _check_tiff_complete(path: Path, tif) -> None:
    from stainldm.wsi._tiffcheck import check_tiff_pages

    check_tiff_pages(path, tif.pages)


# ---------------------------------------------------------------------------------------------
# Metadata helpers
# ---------------------------------------------------------------------------------------------
class _AxesPlan:
    """How to turn a tifffile region (in the series' axis order) into ``H×W×C``."""

    def __init__(self, axes: str, channel_axis: str | None, channels: int):
        self.axes, self.channel_axis, self.channels = axes, channel_axis, channels
        kept = [a for a in axes if a in ("Y", "X") or a == channel_axis]
        self._order = [kept.index("Y"), kept.index("X")] + ([kept.index(channel_axis)] if channel_axis else [])

    def to_hwc(self, data: np.ndarray) -> np.ndarray:
        data = np.transpose(data, self._order)
        return data if self.channel_axis else data[..., None]


def _axes_plan(axes: str, shape: Sequence[int], path: Path) -> _AxesPlan:
    if "Y" not in axes or "X" not in axes:
        raise SlideFormatError(f"{path}: the TIFF's main image has axes '{axes}', not a 2-D image")
    channel_axis = None
    for ax in ("S", "C"):
        if ax in axes and shape[axes.index(ax)] > 1:
            if channel_axis is not None:
                raise SlideFormatError(f"{path}: both S and C channel axes in '{axes}'; export a single channel axis")
            channel_axis = ax
    for ax, n in zip(axes, shape, strict=True):
        if ax not in ("Y", "X", channel_axis) and n > 1:
            raise SlideFormatError(f"{path}: has {n} planes along axis '{ax}' (z-stack or time series); "
                                   "export a single plane")
    channels = shape[axes.index(channel_axis)] if channel_axis else 1
    return _AxesPlan(axes, channel_axis, int(channels))


def _mpp_tuple(mpp) -> tuple[float, float] | None:
    if mpp is None:
        return None
    if isinstance(mpp, (int, float)):
        mpp = (float(mpp), float(mpp))
    mx, my = float(mpp[0]), float(mpp[1])
    if not (mx > 0 and my > 0 and math.isfinite(mx) and math.isfinite(my)):
        raise InputError(f"mpp must be positive, got {mpp}")
    return mx, my


def _openslide_mpp(props) -> tuple[float, float] | None:
    import openslide

    try:
        mx, my = float(props[openslide.PROPERTY_NAME_MPP_X]), float(props[openslide.PROPERTY_NAME_MPP_Y])
    except (KeyError, ValueError):
        return None
    return (mx, my) if mx > 0 and my > 0 else None


def _description(tif) -> str:
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    return page.description or ""


def _tiff_mpp(tif, desc: str) -> tuple[float, float] | None:
    # 1. OME-XML PhysicalSize (µm unless a unit says otherwise).
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
            unit = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(pixels.get("PhysicalSizeXUnit", "µm"))
            if sx and sy and unit:
                return float(sx) * unit, float(sy) * unit
        except (ET.ParseError, StopIteration, ValueError):
            pass
    # 2. Our own (JSON) or Aperio-style descriptions.
    if desc.startswith("{"):
        try:
            meta = json.loads(desc)
            if "mpp" in meta:
                m = meta["mpp"]
                return _mpp_tuple(m if isinstance(m, (int, float)) else tuple(m))
        except (ValueError, TypeError, InputError):
            pass
    m = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if m and float(m.group(1)) > 0:
        return float(m.group(1)), float(m.group(1))
    # 3. Resolution tags (centimetre or inch); unit NONE says nothing physical.
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    tags = page.tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        unit = int(tags["ResolutionUnit"].value)
        per_um = {2: 1 / 25400.0, 3: 1 / 10000.0}.get(unit)
        xr = _rational(tags["XResolution"].value)
        yr = _rational(tags["YResolution"].value) if "YResolution" in tags else xr
        if per_um and xr > 0 and yr > 0:
            mx, my = 1 / (xr * per_um), 1 / (yr * per_um)
            if mx < 100:  # a 72-dpi screen image would claim 350 µm/px: not a microscope
                return mx, my
    return None


def _rational(value) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def _channel_names(tif, desc: str, channels: int) -> tuple[str, ...]:
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
            names = [el.get("Name") for el in root.iter() if el.tag.endswith("Channel")]
            if len(names) == channels and all(names):
                return tuple(names)
        except ET.ParseError:
            pass
    if desc.startswith("{"):
        try:
            names = json.loads(desc).get("channel_names")
            if isinstance(names, list) and len(names) == channels:
                return tuple(str(n) for n in names)
        except (ValueError, AttributeError):
            pass
    return _default_channel_names(channels)


def _default_channel_names(channels: int) -> tuple[str, ...]:
    if channels == 3:
        return ("R", "G", "B")
    if channels == 1:
        return ("gray",)
    return tuple(f"C{i}" for i in range(channels))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA (what openslide-python and PIL return) -> RGB composited on white."""
    if rgba.shape[-1] != 4:
        return rgba
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha.astype(np.float32) / 255.0
    out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
