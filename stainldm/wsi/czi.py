"""Zeiss CZI slides (Axioscan, Celldiscoverer) through ``czifile``, the tifffile author's reader.

A CZI stores its image as subblocks: tiles of one channel (or one BGR colour image) placed in a
global pixel frame, plus — in slide scans — smaller subblocks of the same tiles for each pyramid
level (a subblock's logical size over its stored size is its downsample). :class:`CziReader`
indexes the subblock directory once and, for a region, decodes only the subblocks it touches, of
the level and channels read. Channel names, the fluorescence flag and the pixel size come from
the XML metadata (:func:`czi_channel_names`, :func:`czi_fluorescence`, :func:`czi_mpp`); a CZI
that does not record its pixel size needs ``mpp``.

Written against the ``czifile`` 2019.7.2.3 directory API (``CziFile.subblock_directory``, each
entry's ``dimension_entries`` and ``data_segment().data(resize=False)``), the release that installs
on Python 3.10 and 3.11.
"""

from __future__ import annotations

import math
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

import numpy as np

from stainldm.errors import SlideFormatError
from stainldm.wsi.metadata import default_channel_names, indexed_names, mpp_tuple
from stainldm.wsi.slide import SlideReader

# CZI pixel types -> (numpy dtype, samples per pixel).
_PIXEL_TYPES = {"Gray8": ("uint8", 1), "Gray16": ("uint16", 1), "Gray32Float": ("float32", 1),
                "Bgr24": ("uint8", 3), "Bgr48": ("uint16", 3), "Bgr96Float": ("float32", 3)}
# Dimensions a 2-D slide may span: position, channel, scene (all scenes share one pixel frame), mosaic tile.
_PLANE_DIMS = {"X", "Y", "C", "S", "M"}
_CACHE_TILES = 16


def czi_mpp(xml: str) -> tuple[float, float] | None:
    """µm per pixel from ``Metadata/Scaling/Items/Distance[@Id='X'|'Y']/Value`` (metres).

    Returns:
        ``(x, y)``, or None when the XML is malformed or does not give a positive X distance.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    values = {}
    for dist in root.iterfind(".//Scaling/Items/Distance"):
        try:
            values[dist.get("Id")] = float(dist.findtext("Value") or "nan") * 1e6
        except ValueError:
            continue
    mx = values.get("X", math.nan)
    my = values.get("Y", mx)
    if not (mx > 0 and math.isfinite(mx)):
        return None
    return mx, (my if my > 0 and math.isfinite(my) else mx)


def _image_channels(xml: str) -> list[ET.Element] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    return root.findall(".//Information/Image/Dimensions/Channels/Channel")


def czi_channel_names(xml: str, channels: int) -> tuple[str, ...] | None:
    """Names of ``Information/Image/Dimensions/Channels/Channel`` (``Name``, else ``Fluor``).

    Returns:
        one name per channel (an unnamed one is called ``C1`` by its index), or None when the XML is
        malformed, lists another number of channels, or names none.
    """
    found = _image_channels(xml)
    if not found or len(found) != channels:
        return None
    return indexed_names([(el.get("Name") or "").strip() or (el.findtext("Fluor") or "").strip() for el in found])


def czi_fluorescence(xml: str) -> bool | None:
    """True when a channel's ``ContrastMethod``/``IlluminationType`` is fluorescence, False when
    brightfield or transmitted light, None when the metadata does not say."""
    found = _image_channels(xml) or []
    methods = {(el.findtext("ContrastMethod") or el.findtext("IlluminationType") or "").strip().lower()
               for el in found}
    if "fluorescence" in methods:
        return True
    if methods & {"brightfield", "transmitted", "transmittedlight"}:
        return False
    return None


class _Subblocks:
    """Subblocks of one pyramid level: their level-pixel boxes, channel index, directory entries."""

    def __init__(self):
        self.boxes: list[tuple[int, int, int, int]] = []  # x0, y0, x1, y1 in level pixels
        self.channel: list[int] = []
        self.entries: list = []

    def freeze(self) -> None:
        self.box_array = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
        self.channel_array = np.asarray(self.channel, dtype=np.int64)


class CziReader(SlideReader):
    """A Zeiss CZI slide: every scene in the file's one pixel frame, pyramid levels from its
    downsampled subblocks, one channel per CZI channel (or R, G, B for a colour scan)."""

    def __init__(self, path: Path, *, mpp: float | tuple[float, float] | None = None):
        import czifile

        self.path = Path(path)
        try:
            self._czi = czifile.CziFile(str(path))
            entries = list(self._czi.subblock_directory)
            xml = self._czi.metadata() or ""
        except Exception as exc:  # czifile raises many types on corrupt files
            raise SlideFormatError(f"{path}: czifile cannot read it ({type(exc).__name__}: {exc}); "
                                   "the file may be truncated or not a CZI") from exc
        if not entries:
            raise SlideFormatError(f"{path}: the CZI holds no image subblocks")
        self.mpp = mpp_tuple(mpp) or czi_mpp(xml)
        if self.mpp is None:
            self._czi.close()
            raise SlideFormatError(f"{path}: the CZI does not record its pixel size (Scaling/Items/Distance); "
                                   "pass `mpp` (µm per pixel of the full-resolution image)")
        self._index(entries, path)
        self.vendor = "czi"
        self.description = xml
        self.fluorescence = czi_fluorescence(xml)
        if self.fluorescence is None and self._samples == 1 and self.channels > 1:
            self.fluorescence = True
        rgb = self._samples == 3
        if rgb:
            self.fluorescence = False
        self.channel_names = ("R", "G", "B") if rgb else (
            czi_channel_names(xml, self.channels) or default_channel_names(self.channels))
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _index(self, entries: list, path: Path) -> None:
        planes, types, parsed = {}, set(), []
        for entry in entries:
            dims = {d.dimension: d for d in entry.dimension_entries}
            if "X" not in dims or "Y" not in dims:
                continue
            for name, d in dims.items():
                if name not in _PLANE_DIMS:
                    planes.setdefault(name, set()).add(d.start)
            types.add(getattr(entry.pixel_type, "name", entry.pixel_type))
            parsed.append((entry, dims))
        stacked = {k: len(v) for k, v in planes.items() if len(v) > 1}
        if stacked:
            axis, n = next(iter(stacked.items()))
            raise SlideFormatError(f"{path}: has {n} planes along CZI dimension '{axis}' (z-stack or time "
                                   "series); export a single plane from ZEN")
        if len(types) != 1 or next(iter(types)) not in _PIXEL_TYPES:
            raise SlideFormatError(f"{path}: CZI pixel type {', '.join(sorted(map(str, types)))} is not supported "
                                   f"(supported: {', '.join(_PIXEL_TYPES)}); export as 8- or 16-bit from ZEN")
        dtype, self._samples = _PIXEL_TYPES[next(iter(types))]
        self.dtype = np.dtype(dtype)
        level0 = [(e, d) for e, d in parsed if d["X"].size == d["X"].stored_size]
        if not level0:
            raise SlideFormatError(f"{path}: the CZI has no full-resolution subblocks")
        ox = min(d["X"].start for _, d in level0)
        oy = min(d["Y"].start for _, d in level0)
        width = max(d["X"].start + d["X"].size for _, d in level0) - ox
        height = max(d["Y"].start + d["Y"].size for _, d in level0) - oy
        c_values = sorted({d["C"].start if "C" in d else 0 for _, d in parsed})
        c_index = {c: i for i, c in enumerate(c_values)}
        self.channels = 3 if self._samples == 3 else len(c_values)
        if self._samples == 3 and len(c_values) > 1:
            raise SlideFormatError(f"{path}: a colour (BGR) CZI with {len(c_values)} channels is not supported; "
                                   "export one colour channel from ZEN")
        levels: dict[int, _Subblocks] = {}
        for entry, d in parsed:
            factor = max(1, round(d["X"].size / max(d["X"].stored_size, 1)))
            blocks = levels.setdefault(factor, _Subblocks())
            x0 = math.floor((d["X"].start - ox) / factor)
            y0 = math.floor((d["Y"].start - oy) / factor)
            blocks.boxes.append((x0, y0, x0 + d["X"].stored_size, y0 + d["Y"].stored_size))
            blocks.channel.append(c_index[d["C"].start if "C" in d else 0])
            blocks.entries.append(entry)
        factors = sorted(levels)
        self._levels = [levels[f] for f in factors]
        for blocks in self._levels:
            blocks.freeze()
        self.level_downsamples = tuple(float(f) for f in factors)
        self.level_dimensions = tuple((math.ceil(width / f), math.ceil(height / f)) for f in factors)

    def _tile(self, entry) -> np.ndarray:
        key = id(entry)
        with self._lock:  # czifile reads through one file handle: seek + read must not interleave
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            data = entry.data_segment().data(resize=False)
            self._cache[key] = data
            if len(self._cache) > _CACHE_TILES:
                self._cache.popitem(last=False)
            return data

    def _read_channels(self, level: int, x: int, y: int, w: int, h: int, channels) -> np.ndarray:
        channels = list(channels)
        out = np.full((h, w, len(channels)), self.background, dtype=self.dtype)
        blocks = self._levels[level]
        b = blocks.box_array
        hit = (b[:, 0] < x + w) & (b[:, 2] > x) & (b[:, 1] < y + h) & (b[:, 3] > y)
        wanted = range(1) if self._samples == 3 else channels
        hit &= np.isin(blocks.channel_array, wanted)
        for i in np.flatnonzero(hit):  # directory order: later tiles of a mosaic overwrite earlier ones
            x0, y0, x1, y1 = blocks.box_array[i]
            try:
                tile = self._tile(blocks.entries[i])
            except Exception as exc:
                raise SlideFormatError(f"{self.path}: failed to decode a CZI subblock at level {level} "
                                       f"({type(exc).__name__}: {exc}); the file may be corrupt") from exc
            tile = tile.reshape(y1 - y0, x1 - x0, -1)
            ys, xs = slice(max(y0, y) - y0, min(y1, y + h) - y0), slice(max(x0, x) - x0, min(x1, x + w) - x0)
            dst = (slice(max(y0, y) - y, min(y1, y + h) - y), slice(max(x0, x) - x, min(x1, x + w) - x))
            if self._samples == 3:
                out[dst] = tile[ys, xs][..., channels]
            else:
                out[(*dst, channels.index(int(blocks.channel_array[i])))] = tile[ys, xs, 0]
        return out

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._read_channels(level, x, y, w, h, range(self.channels))

    def close(self) -> None:
        self._czi.close()
        self._cache.clear()
