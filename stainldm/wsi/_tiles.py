"""Direct tile reads for tiled TIFF levels: decode only the tiles a region touches.

tifffile's zarr store is general (strips, planar channels, OME page stacks) but routes every read
through zarr's event-loop thread, which costs about 0.85 ms per region — more than decoding a
256² JPEG tile (benchmarks/io.py). For the common layout (one tiled page per level, interleaved
channels: what our writer and most pyramidal TIFFs use) this reads the compressed tiles with
``os.pread`` and decodes them with tifffile's own codec path.
"""

from __future__ import annotations

import os
import threading

import numpy as np


class DirectTiles:
    """Region reads from one tiled, single-page, contiguous-sample TIFF level."""

    def __init__(self, page, fd: int, *, channels: int, background: float):
        self._page = page
        self._fd = fd
        self._th, self._tw = page.tilelength, page.tilewidth
        self._nx = -(-page.imagewidth // self._tw)
        self._offsets = page.dataoffsets
        self._counts = page.databytecounts
        self._channels = channels
        self._background = background
        self._dtype = page.dtype
        self._lock = threading.Lock()

    @classmethod
    def for_level(cls, level, fd: int, *, channels: int, background: float) -> DirectTiles | None:
        """A reader for ``level`` (a tifffile series level), or None when its layout needs zarr."""
        pages = getattr(level, "pages", None)
        if pages is None or len(pages) != 1:
            return None
        page = level.keyframe
        if not page.is_tiled or page.tiledepth > 1 or page.imagedepth > 1:
            return None
        if page.samplesperpixel != channels or (channels > 1 and page.planarconfig != 1):
            return None
        return cls(page, fd, channels=channels, background=background)

    def _raw(self, index: int) -> bytes:
        offset, count = self._offsets[index], self._counts[index]
        if hasattr(os, "pread"):
            return os.pread(self._fd, count, offset)
        with self._lock:  # platforms without pread: seek + read under a lock
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, count)

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Region ``[y, y+h) × [x, x+w)`` (in bounds) as ``(h, w, channels)``."""
        th, tw = self._th, self._tw
        out = np.empty((h, w, self._channels), dtype=self._dtype)
        page = self._page
        for ty in range(y // th, (y + h - 1) // th + 1):
            for tx in range(x // tw, (x + w - 1) // tw + 1):
                index = ty * self._nx + tx
                ys0, xs0 = max(y, ty * th), max(x, tx * tw)
                ys1, xs1 = min(y + h, (ty + 1) * th), min(x + w, (tx + 1) * tw)
                dst = out[ys0 - y : ys1 - y, xs0 - x : xs1 - x]
                if self._counts[index] == 0:  # sparse file: tile never written
                    dst[...] = self._background
                    continue
                seg, _, _ = page.decode(self._raw(index), index, jpegtables=page.jpegtables)
                tile = seg.reshape(th, tw, self._channels)
                dst[...] = tile[ys0 - ty * th : ys1 - ty * th, xs0 - tx * tw : xs1 - tx * tw]
        return out
