"""Plumbing shared by the benchmark scripts: H&E content, peak-RSS probes, child processes, tables.

Nothing here is timed; it only builds inputs, measures memory and prints.
"""

from __future__ import annotations

import importlib.metadata
import json
import multiprocessing
import os
import platform
import resource
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CMU_SAMPLE = ROOT / "data" / "samples" / "CMU-1-Small-Region.svs"
BENCH_OUT = ROOT / "bench-out"
MiB = 1 << 20


# ---------------------------------------------------------------------------------------------
# Realistic H&E content
# ---------------------------------------------------------------------------------------------
def he_texture() -> np.ndarray:
    """The bundled CMU-1 H&E sample at level 0: ``(2967, 2220, 3)`` uint8 (real tissue, CC0)."""
    from stainldm.wsi.reader import open_slide

    with open_slide(CMU_SAMPLE) as slide:
        return np.ascontiguousarray(slide.read_region((0, 0), slide.dimensions))


def mirror_index(start: int, stop: int, period: int) -> np.ndarray:
    """Indices ``start..stop-1`` folded back and forth into ``[0, period)`` (0 1 2 2 1 0 0 1 ...)."""
    k = np.arange(start, stop) % (2 * period)
    return np.where(k < period, k, 2 * period - 1 - k)


def mirror_tile(tex: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """``tex`` mirrored (no seams) to fill ``size_hw``; a new C-contiguous array."""
    rows = mirror_index(0, size_hw[0], tex.shape[0])
    cols = mirror_index(0, size_hw[1], tex.shape[1])
    return np.ascontiguousarray(tex[rows][:, cols])


class MirroredSlide:
    """A procedural ``(H, W, 3)`` uint8 image of mirrored H&E that is never materialised.

    Supports ``image[y0:y1]`` (what ``write_pyramid`` asks for); each call builds just those rows
    from one horizontal period of the texture (``2·w_tex`` wide) repeated across the width.
    ``seconds`` accumulates the time spent making rows, so it can be subtracted from a write.
    """

    def __init__(self, tex: np.ndarray, size_hw: tuple[int, int]):
        self.shape = (int(size_hw[0]), int(size_hw[1]), tex.shape[2])
        self.dtype = tex.dtype
        self._tex = tex
        self._period = np.ascontiguousarray(np.concatenate([tex, tex[:, ::-1]], axis=1))  # (h_tex, 2·w_tex, C)
        self.seconds = 0.0

    def __getitem__(self, key: slice) -> np.ndarray:
        import time

        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError(f"MirroredSlide supports row slices image[y0:y1] only, got {key!r}")
        t0 = time.perf_counter()
        y0, y1, _ = key.indices(self.shape[0])
        rows = self._period[mirror_index(y0, max(y0, y1), self._tex.shape[0])]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)  # exactly the rows asked for, no slack
        pw = rows.shape[1]
        for x in range(0, self.shape[1], pw):
            out[:, x : x + pw] = rows[:, : self.shape[1] - x]
        self.seconds += time.perf_counter() - t0
        return out


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    """Resident set size of this process now."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (Linux ≥ 4.0, ``/proc/self/clear_refs``); False if it can't."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (since the last :func:`reset_peak_rss`)."""
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """Runs ``fn(*args)`` in a fresh spawned interpreter and returns its (picklable) result, so a
    measurement of peak memory is not polluted by this process or by another measurement."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(fn, args)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, memory and the versions of the libraries an I/O benchmark depends on."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    for dist in ("stainldm", "numpy", "tifffile", "imagecodecs", "zarr", "openslide-python", "openslide-bin",
                 "pyvips", "pyvips-binary", "opencv-python-headless"):
        info[dist] = _version(dist)
    try:
        import openslide

        info["libopenslide"] = openslide.__library_version__
    except (ImportError, AttributeError):
        pass
    try:
        import pyvips

        info["libvips"] = ".".join(str(pyvips.version(i)) for i in range(3))
        info["libvips_concurrency"] = pyvips.concurrency_get()
    except (ImportError, AttributeError):
        pass
    try:
        import imagecodecs

        info["libjpeg"] = imagecodecs.jpeg8_version()
    except (ImportError, AttributeError):
        pass
    try:
        import tifffile

        info["tifffile_maxworkers"] = tifffile.TIFF.MAXWORKERS
    except (ImportError, AttributeError):
        pass
    return info


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in rows) for i in range(len(headers))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric, strict=True)).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
