"""The evaluation report: ``metrics.json``, a plain-text summary and one self-contained HTML page.

    summary = stats.summarise(rows, methods, reference="LDM", seed=0)
    entry = figures.save_core_panels(out / "gallery", "s1:A1", unstained=u, real=r, tissue=m, virtual={...}, mpp=0.5)
    write_metrics_json(out / "metrics.json", summary, context)
    write_report(out, rows=rows, summary=summary, gallery=[entry, ...], context=context)

``report.html`` is rendered from the Jinja2 templates in ``templates/`` (autoescaped: method, slide
and core names come from users' folders). It opens from disk with no network: images are PNG files
beside it (relative links), styles are inline, and the only script marks the page once every image
has loaded (for tests).
"""

from __future__ import annotations

import functools
import json
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stainldm.eval.figures import ERROR_VMAX, make_figures
from stainldm.eval.stats import verdict_lines
from stainldm.eval.table import METRICS, CoreRow, metric, shown, shown_in
from stainldm.eval.table import summary as headline_metrics
from stainldm.files import atomic_write_text


@dataclass
class ReportContext:
    """What the report says besides the numbers: the methods, settings, skipped parts and errors."""

    title: str
    split: str
    store: Path
    methods: list[dict]
    tile_mpp: float
    seed: int
    n_boot: int
    match_radius_um: float
    n_cores: int
    gallery_total: int
    fid: dict | None = None
    fid_note: str | None = None
    errors: list[str] = field(default_factory=list)


def method_info(name: str, kind: str, folder: Path | None, settings: dict, notes: list[str], *,
                seconds: float | None) -> dict:
    """Provenance of one method: checkpoint (path, sha256, config), sampler settings, timings, notes.

    Args:
        name: the method's display name; kind: ``ldm``, ``baseline``, ``colour map`` or ``other``.
        folder: its prediction folder (None for the colour map).
        settings: a stained slide's provenance (checkpoint, sampler, seed, ...).
        notes: remarks for the reader (copied: a missing checkpoint adds one).
        seconds: total staining time over the evaluated slides, None when unknown.
    """
    info = {"name": name, "kind": kind, "folder": str(folder) if folder else None, "notes": list(notes),
            "seconds_total": seconds}
    sampling = ("autoencoder_sha256", "sampler", "steps", "guidance", "eta", "samples") if kind == "ldm" else ()
    for k in ("checkpoint", "checkpoint_sha256", *sampling, "seed", "version", "mpp"):  # a U-Net does not sample
        if k in settings:
            info[k] = settings[k]
    if settings.get("stain_config"):
        info["stain_config"] = settings["stain_config"]
    ckpt = settings.get("checkpoint")
    if ckpt:
        try:
            meta = json.loads((Path(ckpt) / "model.json").read_text())
            info["model"] = {k: meta.get(k) for k in ("kind", "step", "tile_px", "mpp", "config_hash", "config")}
        except (OSError, ValueError):
            info["notes"].append(f"checkpoint {ckpt} not readable here: its config is not shown")
    return info


def _num(v: float | None, digits: int | None = None) -> str:
    """A number for people: ``digits`` decimals, or 3 significant-ish ones; a dash when not finite."""
    if v is None or not math.isfinite(v):
        return "–"
    if digits is not None:
        return f"{v:.{digits}f}"
    a = abs(v)
    return f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10 else f"{v:.3f}"


def _by_rank(summary: Mapping, methods: Sequence[str]) -> list[str]:
    rank = dict(summary["ranking"])
    return sorted(methods, key=lambda m: (not math.isfinite(rank.get(m, math.nan)), rank.get(m, math.inf)))


GROUPS = (("fidelity", "Fidelity: does it match this core's real H&E?"),
          ("realism", "Realism: does it have the detail of real H&E? (ratios: goal 1.0; W₁: lower)"))


def format_summary(summary: Mapping, methods: Sequence[str]) -> str:
    """Plain-text tables (stdout), fidelity then (titled) realism: mean [95% CI] per method and
    metric ("n/a" where no core gave a value); then the verdicts."""
    rank = dict(summary["ranking"])
    out: list[str] = []
    for group, title in GROUPS:
        cols = shown_in(group)
        header = ["method", "rank", "cores ok", *(metric(k).label for k in cols)]
        lines = []
        for m in _by_rank(summary, methods):
            st = summary["status"][m]
            cells = [m, _num(rank.get(m, math.nan), 1), f"{st['ok']}/{st['ok'] + st['missing'] + st['error']}"]
            for k in cols:
                v = summary["metrics"][m][k]
                cells.append(f"{_num(v['mean'])} [{_num(v['lo'])}, {_num(v['hi'])}]" if v["n"] else "n/a")
            lines.append(cells)
        widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
        table = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *lines]]
        table.insert(1, "  ".join("-" * w for w in widths))
        out += [*(["", title] if out else []), *table]  # the first table's header stays the first line
    out += verdict_lines(summary)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# metrics.json
# ---------------------------------------------------------------------------------------------
def headline_lines(metrics: Mapping) -> list[str]:
    """One line per method of a ``metrics.json``: its headline metrics (``table.summary()``) as mean
    [95% CI] over cores, e.g. ``LDM   PSNR 21.35 [20.10, 22.61] dB   SSIM ...``."""
    lines = []
    for name, values in metrics["summary"].items():
        parts = [metric.format_ci(m["mean"], m["lo"], m["hi"]) for metric in headline_metrics()
                 if (m := values.get(metric.name) or {}).get("mean") is not None]
        lines.append(f"  {name:<15} " + "   ".join(parts))
    return lines


def versions() -> dict[str, str]:
    """Python, platform and the versions of the packages the numbers depend on."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("stainldm", "torch", "numpy", "scikit-image", "scipy", "matplotlib", "monai", "tifffile"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_metrics_json(path: Path, summary: Mapping, context: ReportContext) -> None:
    """Overall metrics with CIs, ranking, comparisons, FID/KID, methods' provenance and settings."""
    data = {"split": context.split, "store": str(context.store), "cores": context.n_cores, "tile_mpp": context.tile_mpp,
            "bootstrap": {"resamples": context.n_boot, "seed": context.seed, "level": 0.95, "unit": "core"},
            "nuclei_match_radius_um": context.match_radius_um, "summary": summary["metrics"],
            "status": summary["status"], "ranking": [{"method": m, "mean_rank": r} for m, r in summary["ranking"]],
            "comparisons": summary["comparisons"], "verdicts": verdict_lines(summary),
            "fid_kid": context.fid, "fid_note": context.fid_note, "methods": context.methods,
            "errors": context.errors, "versions": versions(), "definitions": DEFINITIONS}
    atomic_write_text(path, json.dumps(_finite(data), indent=1, default=str))


def _finite(v):
    """NaN/inf -> None (strict JSON)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


DEFINITIONS = {
    "tissue mask": "the unstained slide's tissue mask (prepare's settings) under the core's store tiles; every "
                   "metric is computed on these pixels only",
    "PSNR": "10·log10(255² / MSE), MSE over tissue pixels and the three RGB channels of uint8 images (data range 255)",
    "SSIM": "scikit-image structural_similarity, data range 255, 7×7 uniform window, per RGB channel; the "
            "per-pixel map is averaged over channels, then over tissue pixels",
    "CIELAB W₁": "1-D Wasserstein distance between histograms (1-unit bins) of L*, a* and b* over tissue pixels; "
                 "the table shows the mean of the three (per channel in metrics.csv), in Lab units",
    "H corr / E corr": "Pearson correlation over tissue pixels of the haematoxylin / eosin densities of colour "
                       "deconvolution (scikit-image rgb2hed, Ruifrok & Johnston 2001)",
    "nuclei": "haematoxylin density smoothed (σ 0.5 µm), Otsu threshold on tissue, objects ≥ 10 µm², distance-"
              "transform watershed (seeds ≥ 3 µm apart); count ratio = virtual / real; F1 of one-to-one "
              "matches (greedy, nearest first) within the match radius",
    "seam score": "mean |intensity step| across the borders of a naive tile grid (the model's tile size, from each "
                  "stained canvas's origin) and the sub-canvas edges, divided by the mean step between all other "
                  "neighbouring tissue pixels; 1.0 = no seams",
    "sharpness ratio": "mean |Laplacian| of grey (luminance 0–1) over the tissue eroded by 3 px (the tissue/glass "
                       "edge does not count), virtual ÷ real, at the same µm/px: the high-frequency energy ratio. "
                       "1.0 = as sharp as real H&E; a method whose 95% CI lies below 0.8 is 'blurrier than real "
                       "H&E', above 1.25 'noisier'. Ranked by |log ratio|",
    "spectrum": "radially averaged power spectrum of grey over the tissue's bounding box (glass filled with the "
                "tissue's mean, 2-D Hann window), virtual ÷ real, averaged over the radial frequencies of three "
                "bands of period: 16–64 µm (tissue architecture), 4–16 µm (nuclei), 1–4 µm (chromatin; only "
                "periods above 2 px are measurable). 1.0 = the same texture at that scale; pairwise verdicts "
                "compare |log ratio|",
    "nuclei morphology W₁": "the nuclei above, per nucleus its area (µm²), eccentricity and solidity "
                            "(scikit-image regionprops); 1-D Wasserstein distance between the virtual and the "
                            "real distributions on each core (n/a when either has fewer than 5 nuclei)",
    "mean rank": "mean over the ranked metrics of each method's rank by its mean over cores; a ratio ranks by its "
                 "distance from 1, |log ratio|",
    "CI": "percentile bootstrap 95% interval of the mean over cores (cores resampled with replacement, seeded)",
    "wins / loses": "the paired difference reference − other over the cores both evaluated has a bootstrap 95% CI "
                    "that excludes 0 in the reference's favour / against it",
    "FID / KID": "Fréchet and kernel Inception distances between store-tile-sized patches of virtual and real "
                 "H&E (resized to 299 px), only with a local Inception TorchScript file (fid_weights). KID ± is "
                 "the std over random subsets of 100 patches; its 95% CI is a percentile bootstrap over cores "
                 "(the same cores resampled for virtual and real; each resample's unbiased MMD² over all its "
                 "patches)",
}


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
@functools.cache
def _environment():
    from jinja2 import Environment, PackageLoader
    from markupsafe import Markup, escape

    def verdict_html(line: str) -> Markup:
        # The verdict words stand out; the rest of the sentence (method names) stays escaped text.
        text = str(escape(line))
        return Markup(text.replace("wins on", "<span class='win'>wins</span> on")
                      .replace("loses on", "<span class='lose'>loses</span> on")
                      .replace("blurrier than", "<span class='lose'>blurrier</span> than")
                      .replace("noisier than", "<span class='lose'>noisier</span> than"))

    env = Environment(loader=PackageLoader("stainldm.eval", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(num=_num, g=lambda v: f"{v:g}", verdict=verdict_html)
    return env


def _summary_rows(summary: Mapping, methods: Sequence[str], cols: Sequence[str]) -> list[dict]:
    """A summary table's rows over the metrics ``cols``, best mean rank first."""
    rank = dict(summary["ranking"])
    rows = []
    for m in _by_rank(summary, methods):
        st = summary["status"][m]
        rows.append({"name": m, "rank": rank.get(m, math.nan), "status": st,
                     "total": st["ok"] + st["missing"] + st["error"],
                     "cells": [summary["metrics"][m][k] for k in cols]})
    return rows


def _gallery_cores(gallery: Sequence[Mapping]) -> list[dict]:
    """Per gallery core: its size and, per method, the panel columns ``(title, paths)``."""
    cores = []
    for g in gallery:
        w, h = g["size_wh"]
        panels = []
        for name, m in g["methods"].items():
            cols = [("unstained", g["unstained"]), (f"virtual: {name}", m["virtual"]), ("real H&E", g["real"]),
                    (f"|error| (mean {_num(m['mae'])})", m["error"])]
            if m.get("uncertainty"):
                cols.append((f"uncertainty (0–{_num(m['uncertainty_max'])})", m["uncertainty"]))
            panels.append(cols)
        cmp = g.get("compare")
        compare = None
        if cmp and cmp["methods"]:
            compare = {"w": cmp["size_wh"][0], "h": cmp["size_wh"][1], "xy": cmp["xy"],
                       "cols": [("real H&E", cmp["real"]), *cmp["methods"].items()]}
        cores.append({"key": g["key"], "w": w, "h": h, "mpp": g["mpp"], "display_px": min(256, w),
                      "detail_display_px": g["detail_px"] * (2 if g["mpp"] >= 0.75 else 1), "panels": panels,
                      "compare": compare})
    return cores


def _provenance(context: ReportContext) -> tuple[list[dict], dict]:
    """Per method the model/stain-config JSON to show (or None); the evaluation settings and versions."""
    configs = [json.dumps({"model": m.get("model"), "stain_config": m.get("stain_config")}, indent=1)
               if m.get("model") or m.get("stain_config") else None for m in context.methods]
    settings = {"split": context.split, "store": str(context.store), "compared at (µm/px)": context.tile_mpp,
                "bootstrap resamples": context.n_boot, "seed": context.seed,
                "nuclei match radius (µm)": context.match_radius_um, **versions()}
    return [{"info": m, "config_json": c} for m, c in zip(context.methods, configs, strict=True)], settings


def render_report(*, rows: Sequence[CoreRow], summary: Mapping, gallery: Sequence[Mapping],
                  context: ReportContext, figures: Sequence) -> str:
    """The HTML page (a string) of :func:`write_report`, for figures already written.

    Args:
        figures: ``(title, relative path, caption)`` per figure, as :func:`figures.make_figures` returns.
    """
    methods = [m["name"] for m in context.methods]
    order = {m: i for i, m in enumerate(methods)}
    per_core = sorted(rows, key=lambda r: (r.slide_id, r.core, order.get(r.method, 99)))
    provenance, settings = _provenance(context)
    return _environment().get_template("report.html").render(
        c=context, metrics=[m for m in METRICS if m.shown], shown=shown(),
        groups=[{"name": g, "title": title, "metrics": [metric(k) for k in shown_in(g)],
                 "rows": _summary_rows(summary, methods, shown_in(g))} for g, title in GROUPS],
        verdicts=verdict_lines(summary),
        comparisons=summary["comparisons"], labels={m.name: m.label for m in METRICS},
        reference=summary["reference"], errors=list(dict.fromkeys(context.errors)), figures=figures,
        per_core=per_core, gallery=_gallery_cores(gallery), error_vmax=ERROR_VMAX,
        provenance=provenance, settings=settings, definitions=DEFINITIONS,
        ranked_labels=_and([m.label.removesuffix(f" ({m.unit})") for m in METRICS if m.ranked]),
        target_labels=_and([m.label for m in METRICS if m.shown and m.target is not None]))


def _and(names: Sequence[str]) -> str:
    """``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def write_report(out: Path, *, rows: Sequence[CoreRow], summary: Mapping, gallery: Sequence[Mapping],
                 context: ReportContext) -> Path:
    """Writes the figures (``OUT/figures``) and ``OUT/report.html``.

    Args:
        out: the report folder (the gallery's PNGs are already in ``OUT/gallery``).
        rows: every (method, core) row; summary: :func:`stats.summarise` of them.
        gallery: :func:`figures.save_core_panels` entries, in display order.
        context: methods, settings, skipped parts and errors.

    Returns:
        The HTML path.
    """
    methods = [m["name"] for m in context.methods]
    figs = make_figures(out / "figures", rows, methods, summary, method_infos=context.methods)
    path = out / "report.html"
    atomic_write_text(path, render_report(rows=rows, summary=summary, gallery=gallery, context=context, figures=figs))
    return path
