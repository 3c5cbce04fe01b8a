"""The report's pictures: matplotlib figures over cores and the gallery's per-core panels (PNG files).

    figs = make_figures(out / "figures", rows, methods, summary, ldm_steps=[(10, "LDM"), ...])
    entry = save_core_panels(out / "gallery", "s1:A1", unstained=u, real=r, tissue=m, virtual={...}, mpp=0.5)

Every file is written through :mod:`stainldm.files` (a half-written PNG is never linked).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stainldm.eval.table import CoreRow, metric, plotted
from stainldm.files import atomic_write_bytes

ERROR_VMAX = 100.0  # |error| colour scale (mean over channels, 0–255 units), the same for every core
STEPS_METRICS = ("psnr", "ssim", "lab_w", "nuclei_f1", "sharpness_ratio")  # the quality-against-steps panels
COMPARE_PX = 256  # the side-by-side detail crop: native pixels, shown 1:1


class Figure(NamedTuple):
    """A written figure: its title, path relative to the report folder, and caption."""

    title: str
    path: str
    caption: str


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window, also without a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, title: str, caption: str) -> Figure:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Figure(title, f"{path.parent.name}/{path.name}", caption)


def _short(name: str) -> str:
    return name if len(name) <= 22 else name[:20] + "…"


def _colours(methods: Sequence[str]) -> dict:
    plt = _pyplot()
    return {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}


def _panels(n: int, *, cols: int = 4, height: float = 3.75):
    """A figure of ``n`` panels in rows of ``cols``; the unused axes are hidden. Returns ``(fig, axes)``."""
    plt = _pyplot()
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _title(k: str) -> str:
    m = metric(k)
    return f"{m.label} ({m.direction})" if m.direction else m.label


def distributions_figure(path: Path, rows: Sequence[CoreRow], methods: Sequence[str], summary: Mapping) -> Figure:
    """Per plotted metric: each method's per-core values (dots), quartiles and mean with its 95% CI."""
    colours = _colours(methods)
    ok = [r for r in rows if r.ok]
    fig, axes = _panels(len(plotted()))
    for ax, k in zip(axes, plotted(), strict=True):
        data = [[r.value(k) for r in ok if r.method == m and math.isfinite(r.value(k))] for m in methods]
        pos = [i for i, d in enumerate(data) if d]
        if pos:
            ax.boxplot([data[i] for i in pos], positions=pos, widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)  # the same jitter on every panel and every run
        for i, d in enumerate(data):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=14, color=colours[methods[i]], zorder=3)
            s = summary["metrics"][methods[i]].get(k)
            if s and s["n"]:
                ax.errorbar(i + 0.32, s["mean"], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], fmt="D",
                            color="black", ms=4, capsize=3)
        ax.set_xticks(range(len(methods)), [_short(m) for m in methods], rotation=20, ha="right", fontsize=8)
        if metric(k).target is not None:
            ax.axhline(metric(k).target, color="grey", lw=0.8, ls="--")
        ax.set_title(_title(k), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-core values (dots), quartiles (boxes), mean with bootstrap 95% CI (black)")
    fig.tight_layout()
    return _save(fig, path, "Metric distributions over cores",
                 "Each dot is one core; the black diamond is the mean over cores with its bootstrap 95% CI.")


def per_core_figure(path: Path, rows: Sequence[CoreRow], methods: Sequence[str]) -> Figure:
    """Per plotted metric: every method's value on every core, side by side."""
    colours = _colours(methods)
    ok = [r for r in rows if r.ok]
    cores = sorted({r.key for r in rows})
    one_slide = len({s for s, _ in cores}) == 1
    fig, axes = _panels(len(plotted()))
    for ax, k in zip(axes, plotted(), strict=True):
        for j, m in enumerate(methods):
            vals = {r.key: r.value(k) for r in ok if r.method == m}
            y = [vals.get(c, math.nan) for c in cores]
            ax.plot(np.arange(len(cores)) + (j - len(methods) / 2) * 0.06, y, "o", ms=5, color=colours[m],
                    label=_short(m))
        ax.set_xticks(range(len(cores)), [f"{c}" if one_slide else f"{s}:{c}" for s, c in cores],
                      rotation=90 if len(cores) > 12 else 0, fontsize=7)
        ax.set_title(metric(k).label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Per core: each method on the same cores (missing points: core not evaluated)")
    fig.tight_layout()
    return _save(fig, path, "Per-core metrics",
                 "Methods side by side on every core; a core where one method is worse for all metrics "
                 "usually has a registration or tissue problem.")


def steps_figure(path: Path, summary: Mapping, steps: Sequence[tuple[int, str]],
                 seconds: Mapping[str, float | None]) -> Figure:
    """Quality (mean, shaded 95% CI) against sampler steps, with staining time when every point has one.

    Args:
        steps: ``(sampler steps, method name)`` of one model sampled at several steps.
        seconds: method name -> total staining seconds (None when unknown).
    """
    plt = _pyplot()
    steps = sorted(steps)
    xs = [s for s, _ in steps]
    fig, axes = plt.subplots(1, len(STEPS_METRICS), figsize=(4 * len(STEPS_METRICS), 3.8))
    for ax, k in zip(axes, STEPS_METRICS, strict=True):
        stats = [summary["metrics"][n][k] for _, n in steps]
        ax.plot(xs, [s["mean"] for s in stats], "o-", color="C0")
        ax.fill_between(xs, [s["lo"] for s in stats], [s["hi"] for s in stats], alpha=0.25, color="C0")
        ax.set_xlabel("sampler steps")
        ax.set_title(metric(k).label, fontsize=10)
        ax.grid(alpha=0.3)
    secs = [seconds.get(n) for _, n in steps]
    if all(s is not None for s in secs):
        ax2 = axes[0].twinx()
        ax2.plot(xs, secs, "s--", color="C3", ms=4)
        ax2.set_ylabel("seconds (staining)", color="C3")
    fig.suptitle("Quality against sampler steps (mean, shaded 95% CI)")
    fig.tight_layout()
    return _save(fig, path, "Quality against sampler steps",
                 "The same model sampled with different numbers of steps: choose the fewest steps "
                 "after which quality stops improving.")


def make_figures(folder: Path, rows: Sequence[CoreRow], methods: Sequence[str], summary: Mapping, *,
                 method_infos: Sequence[Mapping] = ()) -> list[Figure]:
    """Writes the report's figures into ``folder``.

    Args:
        method_infos: the methods' provenance (``report.method_info``); LDMs given at two or more
            sampler step counts add the quality-against-steps figure.

    Returns:
        The written figures, in the report's order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    figs = [distributions_figure(folder / "distributions.png", rows, methods, summary),
            per_core_figure(folder / "per_core.png", rows, methods)]
    steps = [(mi["steps"], mi["name"]) for mi in method_infos if mi["kind"] == "ldm" and mi.get("steps") is not None]
    if len({s for s, _ in steps}) >= 2:
        # First match per name, as a name may (in principle) repeat among the infos.
        seconds = {}
        for mi in method_infos:
            seconds.setdefault(mi["name"], mi.get("seconds_total"))
        figs.append(steps_figure(folder / "steps.png", summary, steps, seconds))
    return figs


# ---------------------------------------------------------------------------------------------
# Gallery panels
# ---------------------------------------------------------------------------------------------
def preview_unstained(img: np.ndarray) -> np.ndarray:
    """Unstained input -> RGB uint8 for display: per-channel 1–99.5 percentile stretch; 1 channel
    gray, 2 channels green/magenta, 3+ the first three."""
    x = img.astype(np.float32)
    out = np.empty(x.shape, np.uint8)
    for c in range(x.shape[2]):
        lo, hi = np.percentile(x[..., c], [1, 99.5])
        out[..., c] = np.clip((x[..., c] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        return np.repeat(out, 3, axis=2)
    if out.shape[2] == 2:
        return np.stack([out[..., 1], out[..., 0], out[..., 1]], axis=2)
    return out[..., :3]


def _colourise(values: np.ndarray, mask: np.ndarray, *, vmax: float, cmap: str) -> np.ndarray:
    from matplotlib import colormaps

    rgb = colormaps[cmap](np.clip(values / max(vmax, 1e-6), 0, 1))[..., :3]
    rgb = (rgb * 255).astype(np.uint8)
    rgb[~mask] = 230  # glass: a neutral gray, not a colour of the scale
    return rgb


def _write_png(path: Path, img: np.ndarray, *, optimize: bool = False) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=optimize)
    atomic_write_bytes(path, buf.getvalue())


def _detail_centre(tissue: np.ndarray, size: int) -> tuple[int, int]:
    """Centre ``(y, x)`` of the most tissue-filled ``size`` box (coarse search), for the 1:1 detail crop."""
    h, w = tissue.shape
    best, best_yx = -1.0, (h // 2, w // 2)
    for y in range(size // 2, max(size // 2, h - size // 2) + 1, max(1, size // 4)):
        for x in range(size // 2, max(size // 2, w - size // 2) + 1, max(1, size // 4)):
            f = float(tissue[max(0, y - size // 2) : y + size // 2, max(0, x - size // 2) : x + size // 2].mean())
            if f > best:
                best, best_yx = f, (y, x)
    return best_yx


def save_core_panels(folder: Path, key: str, *, unstained: np.ndarray, real: np.ndarray, tissue: np.ndarray,
                     virtual: Mapping[str, tuple[np.ndarray, np.ndarray | None]], mpp: float) -> dict:
    """Writes one core's panels (full size, plus a detail crop) and a side-by-side 1:1 detail as PNGs.

    The side-by-side detail is the same :data:`COMPARE_PX` box of the real and of every virtual H&E
    (the most tissue-filled one), cut at the images' native pixels with no resampling, for the
    report to show 1:1: blur and invented texture are judged there, not in a thumbnail.

    Args:
        folder: the gallery folder (``OUT/gallery``); links are relative to its parent.
        key: the core's name (``slide:core``); its file-safe form names the core's sub-folder.
        unstained: ``(H, W, C)`` input; real: ``(H, W, 3)`` uint8 H&E; tissue: ``(H, W)`` bool mask.
        virtual: method -> (virtual H&E, uncertainty or None) for the methods that stained this core.
        mpp: µm per pixel of the images (the detail crop is smaller for coarse images).

    Returns:
        A gallery entry: the core's key, size, relative image paths per panel, and ``compare``: the
        side-by-side crop's size ``[w, h]`` and paths (``real``, then ``methods``: name -> path).
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
    d = folder / slug
    d.mkdir(parents=True, exist_ok=True)
    h, w = real.shape[:2]
    detail = 128 if mpp >= 0.75 else 256  # shown at 256 CSS px: five columns fit a 1400 px page
    cy, cx = _detail_centre(tissue, detail)
    crop = (slice(max(0, cy - detail // 2), max(0, cy - detail // 2) + detail),
            slice(max(0, cx - detail // 2), max(0, cx - detail // 2) + detail))

    def save(name: str, img: np.ndarray) -> dict:
        full, part = d / f"{name}.png", d / f"{name}.detail.png"
        _write_png(full, img, optimize=True)
        _write_png(part, np.ascontiguousarray(img[crop]))
        rel = f"{folder.name}/{slug}"
        return {"full": f"{rel}/{full.name}", "detail": f"{rel}/{part.name}"}

    cy, cx = _detail_centre(tissue, COMPARE_PX)
    y0, x0 = max(0, min(cy - COMPARE_PX // 2, h - COMPARE_PX)), max(0, min(cx - COMPARE_PX // 2, w - COMPARE_PX))
    box = (slice(y0, y0 + COMPARE_PX), slice(x0, x0 + COMPARE_PX))

    def save_compare(name: str, img: np.ndarray) -> str:
        path = d / f"{name}.compare.png"
        _write_png(path, np.ascontiguousarray(img[box]))
        return f"{folder.name}/{slug}/{path.name}"

    entry = {"key": key, "size_wh": [w, h], "mpp": mpp, "detail_px": detail,
             "unstained": save("unstained", preview_unstained(unstained)), "real": save("real", real), "methods": {},
             "compare": {"size_wh": [min(w, COMPARE_PX), min(h, COMPARE_PX)], "xy": [x0, y0],
                         "real": save_compare("real", real), "methods": {}}}
    for i, (name, (img, unc)) in enumerate(virtual.items()):
        err = np.abs(img.astype(np.float32) - real.astype(np.float32)).mean(axis=2)
        m = {"virtual": save(f"m{i}.virtual", img),
             "error": save(f"m{i}.error", _colourise(err, tissue, vmax=ERROR_VMAX, cmap="magma")),
             "mae": float(err[tissue].mean()) if tissue.any() else math.nan, "uncertainty": None}
        entry["compare"]["methods"][name] = save_compare(f"m{i}", img)
        if unc is not None:
            vmax = float(np.percentile(unc[tissue], 99)) if tissue.any() else float(unc.max())
            m["uncertainty"] = save(f"m{i}.uncertainty", _colourise(unc, tissue, vmax=vmax or 1.0, cmap="viridis"))
            m["uncertainty_max"] = vmax
        entry["methods"][name] = m
    return entry
