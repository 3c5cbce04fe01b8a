"""The evaluation report: statistics over cores, figures, a gallery and one self-contained HTML page.

    summary = summarise(rows, methods, reference="LDM", seed=0)
    entry = save_core_panels(out / "gallery", "s1:A1", unstained=u, real=r, tissue=m, virtual={...}, mpp=0.5)
    write_report(out, rows=rows, summary=summary, gallery=[entry, ...], context=ctx)

``report.html`` opens from disk with no network: images are PNG files beside it (relative links),
styles are inline, and the only script marks the page once every image has loaded (for tests).
"""

from __future__ import annotations

import html
import json
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stainldm.eval.metrics import HIGHER_IS_BETTER, bootstrap_ci, paired_difference
from stainldm.files import atomic_write_text

# Metrics of the summary table, in order: (key, label, better). Ranking uses the first six.
SUMMARY_METRICS = (
    ("psnr", "PSNR (dB)", "higher"),
    ("ssim", "SSIM", "higher"),
    ("lab_w", "CIELAB W₁", "lower"),
    ("h_corr", "H corr", "higher"),
    ("e_corr", "E corr", "higher"),
    ("nuclei_f1", "nuclei F1", "higher"),
    ("nuclei_count_ratio", "nuclei count ratio", "→ 1"),
    ("seam_score", "seam score", "→ 1"),
)
RANKED = ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1")
PLOTTED = ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1", "nuclei_count_ratio", "seam_score")
LABELS = {k: label for k, label, _ in SUMMARY_METRICS}
BETTER = {k: better for k, _, better in SUMMARY_METRICS}


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
    """Provenance of one method: checkpoint (path, sha256, config), sampler settings, timings, notes."""
    info = {"name": name, "kind": kind, "folder": str(folder) if folder else None, "notes": list(notes),
            "seconds_total": seconds}
    sampling = ("sampler", "steps", "guidance", "samples") if kind == "ldm" else ()  # a U-Net does not sample
    for k in ("checkpoint", "checkpoint_sha256", *sampling, "seed", "version", "mpp"):
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


# ---------------------------------------------------------------------------------------------
# Statistics over cores
# ---------------------------------------------------------------------------------------------
def summarise(rows: list[dict], methods: list[str], *, reference: str, seed: int, n_boot: int = 2000) -> dict:
    """Overall means with bootstrap 95% CIs per method, a ranking, and the reference against each other.

    Args:
        rows: one dict per (method, core) with ``status`` and metric values (NaN when not computed).
        methods: method names in display order.
        reference: the method compared against the others (the LDM).
    """
    keys = sorted({k for k, *_ in SUMMARY_METRICS} | {"lab_w_L", "lab_w_a", "lab_w_b", "nuclei_count_error"})
    per: dict[str, dict] = {}
    status: dict[str, dict[str, int]] = {}
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        status[m] = {"ok": sum(r["status"] == "ok" for r in mine),
                     "missing": sum(r["status"].startswith("missing") for r in mine),
                     "error": sum(r["status"].startswith("error") for r in mine)}
        per[m] = {}
        for k in keys:
            mean, lo, hi, n = bootstrap_ci([r[k] for r in mine if r["status"] == "ok"], n_boot=n_boot, seed=seed)
            per[m][k] = {"mean": mean, "lo": lo, "hi": hi, "n": n}
    ranks = {m: [] for m in methods}
    for k in RANKED:
        vals = {m: per[m][k]["mean"] for m in methods if math.isfinite(per[m][k]["mean"])}
        order = sorted(vals, key=lambda m: vals[m], reverse=HIGHER_IS_BETTER[k])
        for i, m in enumerate(order):
            ranks[m].append(i + 1)
    ranking = sorted(((m, float(np.mean(r)) if r else math.nan) for m, r in ranks.items()),
                     key=lambda t: (not math.isfinite(t[1]), t[1]))
    comparisons = []
    by_core = {(r["method"], r["slide_id"], r["core"]): r for r in rows if r["status"] == "ok"}
    cores = sorted({(r["slide_id"], r["core"]) for r in rows})
    for other in methods:
        if other == reference:
            continue
        for k in RANKED:
            a = [by_core.get((reference, *c), {}).get(k, math.nan) for c in cores]
            b = [by_core.get((other, *c), {}).get(k, math.nan) for c in cores]
            diff, lo, hi, n = paired_difference(a, b, n_boot=n_boot, seed=seed)
            # In the direction of "better": a CI wholly on the reference's side wins, wholly against loses.
            better_lo, better_hi = (lo, hi) if HIGHER_IS_BETTER[k] else (-hi, -lo)
            if n < 2 or not math.isfinite(lo):
                verdict = "too few cores"
            elif better_lo > 0:
                verdict = "wins"
            elif better_hi < 0:
                verdict = "loses"
            else:
                verdict = "no clear difference"
            comparisons.append({"reference": reference, "other": other, "metric": k, "diff": diff, "lo": lo,
                                "hi": hi, "n": n, "verdict": verdict})
    return {"metrics": per, "status": status, "ranking": ranking, "comparisons": comparisons,
            "reference": reference, "cores": len(cores)}


def format_summary(summary: dict, methods: list[str]) -> str:
    """A plain-text table (stdout): mean [95% CI] per method and metric, and the verdicts."""
    cols = [k for k, *_ in SUMMARY_METRICS]
    header = ["method", "rank", "cores ok", *(LABELS[k] for k in cols)]
    rank = dict(summary["ranking"])
    lines = []
    for m in sorted(methods, key=lambda m: (not math.isfinite(rank.get(m, math.nan)), rank.get(m, math.inf))):
        st = summary["status"][m]
        cells = [m, _num(rank.get(m, math.nan), 1), f"{st['ok']}/{st['ok'] + st['missing'] + st['error']}"]
        for k in cols:
            v = summary["metrics"][m][k]
            cells.append(f"{_num(v['mean'])} [{_num(v['lo'])}, {_num(v['hi'])}]" if v["n"] else "n/a")
        lines.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *lines]]
    out.insert(1, "  ".join("-" * w for w in widths))
    for text in verdict_lines(summary):
        out.append(text)
    return "\n".join(out)


def verdict_lines(summary: dict) -> list[str]:
    """One sentence per compared method: where the reference wins and loses (95% CI of the paired difference)."""
    out = []
    ref = summary["reference"]
    others = dict.fromkeys(c["other"] for c in summary["comparisons"])
    for other in others:
        comp = [c for c in summary["comparisons"] if c["other"] == other]
        wins = [LABELS[c["metric"]] for c in comp if c["verdict"] == "wins"]
        loses = [LABELS[c["metric"]] for c in comp if c["verdict"] == "loses"]
        same = [LABELS[c["metric"]] for c in comp if c["verdict"] == "no clear difference"]
        if all(c["verdict"] == "too few cores" for c in comp):
            out.append(f"{ref} vs {other}: too few cores in common to compare")
            continue
        parts = [f"wins on {', '.join(wins)}" if wins else "wins on nothing",
                 f"loses on {', '.join(loses)}" if loses else "loses on nothing"]
        if same:
            parts.append(f"no clear difference on {', '.join(same)}")
        out.append(f"{ref} vs {other}: {'; '.join(parts)}")
    return out


def _num(v: float, digits: int | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    if digits is not None:
        return f"{v:.{digits}f}"
    a = abs(v)
    return f"{v:.1f}" if a >= 100 else f"{v:.2f}" if a >= 10 else f"{v:.3f}"


# ---------------------------------------------------------------------------------------------
# Gallery panels
# ---------------------------------------------------------------------------------------------
ERROR_VMAX = 100.0  # |error| colour scale (mean over channels, 0–255 units), the same for every core


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
    rgb[~mask] = 230
    return rgb


def save_core_panels(folder: Path, key: str, *, unstained: np.ndarray, real: np.ndarray, tissue: np.ndarray,
                     virtual: dict[str, tuple[np.ndarray, np.ndarray | None]], mpp: float) -> dict:
    """Writes one core's panels (full size, plus a 1:1 detail crop of the centre) as PNGs.

    Args:
        folder: the gallery folder (``OUT/gallery``); links are relative to its parent.
        virtual: method -> (virtual H&E, uncertainty or None) for the methods that stained this core.

    Returns:
        A gallery entry: the core's key, size, and relative image paths per panel.
    """
    from PIL import Image

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
        Image.fromarray(img).save(full, optimize=True)
        Image.fromarray(np.ascontiguousarray(img[crop])).save(part)
        rel = f"{folder.name}/{slug}"
        return {"full": f"{rel}/{full.name}", "detail": f"{rel}/{part.name}"}

    entry = {"key": key, "size_wh": [w, h], "mpp": mpp, "detail_px": detail,
             "unstained": save("unstained", preview_unstained(unstained)), "real": save("real", real), "methods": {}}
    for i, (name, (img, unc)) in enumerate(virtual.items()):
        err = np.abs(img.astype(np.float32) - real.astype(np.float32)).mean(axis=2)
        m = {"virtual": save(f"m{i}.virtual", img),
             "error": save(f"m{i}.error", _colourise(err, tissue, vmax=ERROR_VMAX, cmap="magma")),
             "mae": float(err[tissue].mean()) if tissue.any() else math.nan, "uncertainty": None}
        if unc is not None:
            vmax = float(np.percentile(unc[tissue], 99)) if tissue.any() else float(unc.max())
            m["uncertainty"] = save(f"m{i}.uncertainty", _colourise(unc, tissue, vmax=vmax or 1.0, cmap="viridis"))
            m["uncertainty_max"] = vmax
        entry["methods"][name] = m
    return entry


def _detail_centre(tissue: np.ndarray, size: int) -> tuple[int, int]:
    """Centre of the most tissue-filled ``size`` box (coarse search), for the 1:1 detail crop."""
    h, w = tissue.shape
    best, best_yx = -1.0, (h // 2, w // 2)
    for y in range(size // 2, max(size // 2, h - size // 2) + 1, max(1, size // 4)):
        for x in range(size // 2, max(size // 2, w - size // 2) + 1, max(1, size // 4)):
            f = float(tissue[max(0, y - size // 2) : y + size // 2, max(0, x - size // 2) : x + size // 2].mean())
            if f > best:
                best, best_yx = f, (y, x)
    return best_yx


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib)
# ---------------------------------------------------------------------------------------------
def make_figures(folder: Path, rows: list[dict], methods: list[str], summary: dict, context: ReportContext
                 ) -> list[tuple[str, str, str]]:
    """Writes the figures; returns (title, relative path, caption) per figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    figs = []
    ok = [r for r in rows if r["status"] == "ok"]

    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for ax, k in zip(axes.ravel(), PLOTTED, strict=True):
        data = [[r[k] for r in ok if r["method"] == m and math.isfinite(r[k])] for m in methods]
        pos = [i for i, d in enumerate(data) if d]
        if pos:
            ax.boxplot([data[i] for i in pos], positions=pos, widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data):
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(d)), d, s=14, color=colours[methods[i]], zorder=3)
            s = summary["metrics"][methods[i]].get(k)
            if s and s["n"]:
                ax.errorbar(i + 0.32, s["mean"], yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]], fmt="D",
                            color="black", ms=4, capsize=3)
        ax.set_xticks(range(len(methods)), [_short(m) for m in methods], rotation=20, ha="right", fontsize=8)
        ax.set_title(f"{LABELS[k]} ({BETTER[k]})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-core values (dots), quartiles (boxes), mean with bootstrap 95% CI (black)")
    fig.tight_layout()
    figs.append(_save(fig, folder / "distributions.png", "Metric distributions over cores",
                      "Each dot is one core; the black diamond is the mean over cores with its bootstrap 95% CI."))

    cores = sorted({(r["slide_id"], r["core"]) for r in rows})
    fig, axes = plt.subplots(2, 4, figsize=(16, 7.5))
    for ax, k in zip(axes.ravel(), PLOTTED, strict=True):
        for j, m in enumerate(methods):
            vals = {(r["slide_id"], r["core"]): r[k] for r in ok if r["method"] == m}
            y = [vals.get(c, math.nan) for c in cores]
            ax.plot(np.arange(len(cores)) + (j - len(methods) / 2) * 0.06, y, "o", ms=5, color=colours[m],
                    label=_short(m))
        ax.set_xticks(range(len(cores)), [f"{c}" if len({s for s, _ in cores}) == 1 else f"{s}:{c}" for s, c in cores],
                      rotation=90 if len(cores) > 12 else 0, fontsize=7)
        ax.set_title(LABELS.get(k, k), fontsize=10)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("Per core: each method on the same cores (missing points: core not evaluated)")
    fig.tight_layout()
    figs.append(_save(fig, folder / "per_core.png", "Per-core metrics",
                      "Methods side by side on every core; a core where one method is worse for all metrics "
                      "usually has a registration or tissue problem."))

    steps = [(mi["steps"], mi["name"]) for mi in context.methods if mi["kind"] == "ldm" and mi.get("steps") is not None]
    if len({s for s, _ in steps}) >= 2:
        steps.sort()
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
        for ax, k in zip(axes, ("psnr", "ssim", "lab_w", "nuclei_f1"), strict=True):
            xs = [s for s, _ in steps]
            mean = [summary["metrics"][n][k]["mean"] for _, n in steps]
            lo = [summary["metrics"][n][k]["lo"] for _, n in steps]
            hi = [summary["metrics"][n][k]["hi"] for _, n in steps]
            ax.plot(xs, mean, "o-", color="C0")
            ax.fill_between(xs, lo, hi, alpha=0.25, color="C0")
            ax.set_xlabel("sampler steps")
            ax.set_title(LABELS[k], fontsize=10)
            ax.grid(alpha=0.3)
        secs = [next((mi.get("seconds_total") for mi in context.methods if mi["name"] == n), None) for _, n in steps]
        if all(s is not None for s in secs):
            ax2 = axes[0].twinx()
            ax2.plot([s for s, _ in steps], secs, "s--", color="C3", ms=4)
            ax2.set_ylabel("seconds (staining)", color="C3")
        fig.suptitle("Quality against sampler steps (mean, shaded 95% CI)")
        fig.tight_layout()
        figs.append(_save(fig, folder / "steps.png", "Quality against sampler steps",
                          "The same model sampled with different numbers of steps: choose the fewest steps "
                          "after which quality stops improving."))
    return figs


def _save(fig, path: Path, title: str, caption: str) -> tuple[str, str, str]:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return title, f"{path.parent.name}/{path.name}", caption


def _short(name: str) -> str:
    return name if len(name) <= 22 else name[:20] + "…"


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("stainldm", "torch", "numpy", "scikit-image", "scipy", "matplotlib", "monai", "tifffile"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_metrics_json(path: Path, summary: dict, context: ReportContext) -> None:
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
    "CI": "percentile bootstrap 95% interval of the mean over cores (cores resampled with replacement, seeded)",
    "wins / loses": "the paired difference reference − other over the cores both evaluated has a bootstrap 95% CI "
                    "that excludes 0 in the reference's favour / against it",
    "FID / KID": "Fréchet and kernel Inception distances between store-tile-sized patches of virtual and real "
                 "H&E (resized to 299 px), only with a local Inception TorchScript file (--fid-weights)",
}


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1400px;padding:1em 2em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.best td{background:#eef8ee}
.ci{color:#777;font-size:.85em;white-space:nowrap}.win{color:#17702d;font-weight:600}.lose{color:#a4161a;font-weight:600}
.muted{color:#777}.err{color:#a4161a}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
.core{margin:1.2em 0;padding:.6em;border:1px solid #e3e3e3;border-radius:6px}
.panels td{border:none;text-align:center;padding:2px}.panels img{display:block;border:1px solid #ccc;background:#fff}
.detail img{image-rendering:pixelated}.small{font-size:.85em}pre{background:#f7f7f7;padding:.5em;overflow:auto;max-height:24em}
"""

LOAD_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-loaded', ok);
});
"""


def write_report(out: Path, *, rows: list[dict], summary: dict, gallery: list[dict], context: ReportContext) -> Path:
    """Writes figures and ``OUT/report.html``; returns the HTML path."""
    methods = [m["name"] for m in context.methods]
    figures = make_figures(out / "figures", rows, methods, summary, context)
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(context.title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{e(context.title)}</h1>",
             f"<p>{context.n_cores} cores of the <b>{e(context.split)}</b> split of <code>{e(str(context.store))}</code>, "
             f"compared at {context.tile_mpp:g} µm/px on tissue only. Means over cores with bootstrap 95% CIs "
             f"({context.n_boot} resamples, seed {context.seed}).</p>"]
    parts += _summary_html(summary, methods)
    if context.errors:
        parts.append("<h2>Errors</h2><ul>" + "".join(f"<li class='err'>{e(x)}</li>" for x in dict.fromkeys(context.errors))
                     + "</ul>")
    parts.append(_fid_html(context))
    parts.append("<h2>Figures</h2>")
    for title, rel, caption in figures:
        parts.append(f"<figure><img src='{e(rel)}' alt='{e(title)}' style='max-width:100%'>"
                     f"<figcaption><b>{e(title)}.</b> {e(caption)}</figcaption></figure>")
    parts.append(_per_core_html(rows, methods))
    parts.append(_gallery_html(gallery, context))
    parts.append(_provenance_html(context))
    parts.append("<h2>Definitions</h2><table>" + "".join(f"<tr><th class='l'>{e(k)}</th><td class='l'>{e(v)}</td></tr>"
                                                        for k, v in DEFINITIONS.items()) + "</table>")
    parts.append(f"<script>{LOAD_SCRIPT}</script></body></html>")
    path = out / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path


def _summary_html(summary: dict, methods: list[str]) -> list[str]:
    e = html.escape
    rank = dict(summary["ranking"])
    order = sorted(methods, key=lambda m: (not math.isfinite(rank.get(m, math.nan)), rank.get(m, math.inf)))
    head = "".join(f"<th>{e(label)}<br><span class='muted small'>{e(better)}</span></th>"
                   for _, label, better in SUMMARY_METRICS)
    out = ["<h2>Summary</h2>",
           "<table id='summary'><thead><tr><th class='l'>method</th><th>mean rank</th><th>cores</th>"
           f"{head}</tr></thead><tbody>"]
    for i, m in enumerate(order):
        st = summary["status"][m]
        total = st["ok"] + st["missing"] + st["error"]
        cores = f"{st['ok']}/{total}" + (f"<br><span class='err small'>{st['missing']} missing, {st['error']} errors</span>"
                                         if st["ok"] < total else "")
        cells = []
        for k, *_ in SUMMARY_METRICS:
            v = summary["metrics"][m][k]
            cells.append(f"<td>{_num(v['mean'])}<br><span class='ci'>[{_num(v['lo'])}, {_num(v['hi'])}]</span></td>"
                         if v["n"] else "<td class='muted'>n/a</td>")
        out.append(f"<tr class='{'best' if i == 0 else ''}'><td class='l'>{e(m)}</td>"
                   f"<td>{_num(rank.get(m, math.nan), 1)}</td><td>{cores}</td>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    out.append("<p class='muted small'>Rank: mean of the per-metric ranks on PSNR, SSIM, CIELAB W₁, H corr, E corr "
               "and nuclei F1 (1 = best). Count ratio and seam score are best at 1. n/a: not computed (e.g. no "
               "seams in a per-pixel map).</p>")
    lines = verdict_lines(summary)
    if lines:
        out.append(f"<h3>Where {e(summary['reference'])} wins and loses</h3><ul>")
        for line in lines:
            line = e(line).replace("wins on", "<span class='win'>wins</span> on").replace(
                "loses on", "<span class='lose'>loses</span> on")
            out.append(f"<li>{line}</li>")
        out.append("</ul><table><tr><th class='l'>vs</th><th class='l'>metric</th><th>difference (reference − other)</th>"
                   "<th>95% CI</th><th>cores</th><th class='l'>verdict</th></tr>")
        for c in summary["comparisons"]:
            cls = {"wins": "win", "loses": "lose"}.get(c["verdict"], "muted")
            out.append(f"<tr><td class='l'>{e(c['other'])}</td><td class='l'>{e(LABELS[c['metric']])}</td>"
                       f"<td>{_num(c['diff'])}</td><td class='ci'>[{_num(c['lo'])}, {_num(c['hi'])}]</td>"
                       f"<td>{c['n']}</td><td class='l {cls}'>{e(c['verdict'])}</td></tr>")
        out.append("</table>")
    return out


def _fid_html(context: ReportContext) -> str:
    e = html.escape
    if context.fid is None:
        return f"<h2>FID / KID</h2><p class='muted'>{e(context.fid_note or 'skipped')}</p>"
    rows = "".join(f"<tr><td class='l'>{e(m)}</td><td>{_num(v['fid'])}</td><td>{_num(v['kid'])} ± {_num(v['kid_std'])}</td>"
                   f"<td>{v['patches']}</td></tr>" for m, v in context.fid.items())
    return ("<h2>FID / KID</h2><table><tr><th class='l'>method</th><th>FID ↓</th><th>KID ↓</th><th>patches</th></tr>"
            f"{rows}</table><p class='muted small'>Against the real H&E patches of the same cores. Few patches bias "
            "FID upwards; KID is unbiased.</p>")


def _per_core_html(rows: list[dict], methods: list[str]) -> str:
    e = html.escape
    keys = ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1", "nuclei_count_ratio", "seam_score")
    out = ["<h2>Per core</h2><table id='per-core'><tr><th class='l'>core</th><th class='l'>method</th>"
           "<th class='l'>status</th><th>tissue px</th>" + "".join(f"<th>{e(LABELS[k])}</th>" for k in keys) + "</tr>"]
    order = {m: i for i, m in enumerate(methods)}
    for r in sorted(rows, key=lambda r: (r["slide_id"], r["core"], order.get(r["method"], 99))):
        cls = "" if r["status"] == "ok" else "err"
        out.append(f"<tr><td class='l'>{e(r['slide_id'])}:{e(r['core'])}</td><td class='l'>{e(r['method'])}</td>"
                   f"<td class='l {cls}'>{e(r['status'])}</td><td>{r['tissue_px']}</td>"
                   + "".join(f"<td>{_num(r[k])}</td>" for k in keys) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _gallery_html(gallery: list[dict], context: ReportContext) -> str:
    e = html.escape
    out = ["<h2>Gallery</h2>",
           "<p>Per core and method: unstained input | virtual H&E | real H&E | absolute error (mean over RGB, "
           f"0–{ERROR_VMAX:g} in 0–255 units, magma; glass gray) | uncertainty (std over samples, when the "
           "prediction has one). Below each core's full view, a 1:1 detail of its most tissue-filled area"
           f" (shown 2× when the images are ≥ 0.75 µm/px). Click an image for full resolution.</p>"]
    if context.gallery_total > len(gallery):
        out.append(f"<p class='muted'>Showing {len(gallery)} of {context.gallery_total} cores (--gallery).</p>")
    for g in gallery:
        w, h = g["size_wh"]
        disp = min(256, w)
        zoom = 2 if g["mpp"] >= 0.75 else 1
        out.append(f"<div class='core'><h3>{e(g['key'])} <span class='muted small'>{w}×{h} px at {g['mpp']:g} µm/px"
                   f" ({w * g['mpp']:.0f}×{h * g['mpp']:.0f} µm)</span></h3>")
        if not g["methods"]:
            out.append("<p class='err'>No method stained this core.</p>")
        for name, m in g["methods"].items():
            cols = [("unstained", g["unstained"]), (f"virtual: {name}", m["virtual"]), ("real H&E", g["real"]),
                    (f"|error| (mean {_num(m['mae'])})", m["error"])]
            if m.get("uncertainty"):
                cols.append((f"uncertainty (0–{_num(m['uncertainty_max'])})", m["uncertainty"]))
            out.append("<div style='overflow-x:auto'><table class='panels'><tr>" + "".join(f"<td class='small'>{e(t)}</td>" for t, _ in cols) + "</tr><tr>")
            out += [f"<td><a href='{e(p['full'])}'><img src='{e(p['full'])}' width='{disp}' alt='{e(t)}'></a></td>"
                    for t, p in cols]
            out.append("</tr><tr class='detail'>")
            out += [f"<td><a href='{e(p['detail'])}'><img src='{e(p['detail'])}' width='{g['detail_px'] * zoom}' "
                    f"alt='{e(t)} (detail)'></a></td>" for t, p in cols]
            out.append("</tr></table></div>")
        out.append("</div>")
    return "".join(out)


def _provenance_html(context: ReportContext) -> str:
    e = html.escape
    out = ["<h2>Methods and provenance</h2><table><tr><th class='l'>method</th><th class='l'>source</th>"
           "<th class='l'>checkpoint (sha256)</th><th>sampler</th><th>steps</th><th>guidance</th><th>seed</th>"
           "<th>samples</th><th>stainldm</th><th>staining s</th><th class='l'>notes</th></tr>"]
    for m in context.methods:
        sha = m.get("checkpoint_sha256")
        out.append(f"<tr><td class='l'>{e(m['name'])}<br><span class='muted small'>{e(m['kind'])}</span></td>"
                   f"<td class='l small'>{e(m.get('folder') or 'fit on the train split of the store')}</td>"
                   f"<td class='l small'>{e(str(m.get('checkpoint', '–')))}<br><code>{e(sha[:16] + '…' if sha else '–')}</code></td>"
                   + "".join(f"<td>{e(str(m.get(k, '–')))}</td>" for k in ("sampler", "steps", "guidance", "seed", "samples", "version"))
                   + f"<td>{_num(m['seconds_total']) if m.get('seconds_total') is not None else '–'}</td>"
                   f"<td class='l small'>{'<br>'.join(e(n) for n in m['notes']) or '–'}</td></tr>")
    out.append("</table>")
    for m in context.methods:
        if m.get("model") or m.get("stain_config"):
            out.append(f"<details><summary>{e(m['name'])}: model and stain config</summary><pre>"
                       f"{e(json.dumps({'model': m.get('model'), 'stain_config': m.get('stain_config')}, indent=1))}"
                       "</pre></details>")
    out.append("<h3>Evaluation settings and versions</h3><table>")
    settings = {"split": context.split, "store": str(context.store), "compared at (µm/px)": context.tile_mpp,
                "bootstrap resamples": context.n_boot, "seed": context.seed,
                "nuclei match radius (µm)": context.match_radius_um, **versions()}
    out += [f"<tr><th class='l'>{e(k)}</th><td class='l'>{e(str(v))}</td></tr>" for k, v in settings.items()]
    out.append("</table>")
    return "".join(out)

