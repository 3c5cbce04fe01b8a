"""Statistics over cores: bootstrap CIs, paired differences, ranks and the reference's verdicts.

Pure functions over :class:`~stainldm.eval.table.CoreRow` lists (no I/O):

    mean, lo, hi, n = bootstrap_ci(per_core_values, seed=0)
    summary = summarise(rows, ["LDM", "U-Net baseline"], reference="LDM", seed=0)

The unit of resampling is the core: cores are independent samples of the tissue, pixels are not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from stainldm.eval.table import CoreRow, compared, metric, ranked, with_ci

VERDICTS = ("wins", "loses", "no clear difference", "too few cores")
BLURRIER, NOISIER = 0.8, 1.25  # sharpness ratio CI wholly below / above: "blurrier" / "noisier than real H&E"


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float, float, int]:
    """Mean and percentile bootstrap CI over the finite values (resampling cores).

    Returns:
        ``(mean, low, high, n)``; NaNs when no value is finite, the mean itself as both bounds for one.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0]), 1
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), int(v.size)


def paired_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean of ``a - b`` over the cores where both are finite, with its bootstrap CI."""
    d = [x - y for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    return bootstrap_ci(d, n_boot=n_boot, seed=seed, level=level)


def status_counts(rows: Sequence[CoreRow]) -> dict[str, int]:
    """How many rows are ``ok``, ``missing…`` and ``error…``."""
    return {"ok": sum(r.status == "ok" for r in rows),
            "missing": sum(r.status.startswith("missing") for r in rows),
            "error": sum(r.status.startswith("error") for r in rows)}


def mean_ranks(means: Mapping[str, Mapping[str, float]], methods: Sequence[str]) -> list[tuple[str, float]]:
    """Mean over the ranked metrics of each method's rank (1 = best), best first.

    Args:
        means: method -> metric -> mean over cores; a non-finite mean is left out of that metric's ranks.
            A metric best at a target (the sharpness ratio) ranks by the mean's distance from it
            (:meth:`~stainldm.eval.table.Metric.rank_value`).
        methods: the methods to rank, in display order (ties keep it).

    Returns:
        ``(method, mean rank)`` sorted by rank; NaN (last) for a method with no finite ranked mean.
    """
    ranks: dict[str, list[int]] = {m: [] for m in methods}
    for k in ranked():
        mk = metric(k)
        vals = {m: v for m in methods if math.isfinite(v := mk.rank_value(means[m][k]))}
        order = sorted(vals, key=lambda m: vals[m], reverse=mk.rank_higher_is_better)
        for i, m in enumerate(order):
            ranks[m].append(i + 1)
    return sorted(((m, float(np.mean(r)) if r else math.nan) for m, r in ranks.items()),
                  key=lambda t: (not math.isfinite(t[1]), t[1]))


def verdict(lo: float, hi: float, n: int, *, higher_is_better: bool) -> str:
    """Reads the 95% CI ``[lo, hi]`` of ``reference − other`` over ``n`` cores as one of :data:`VERDICTS`.

    A CI wholly on the reference's side (in the direction of "better") wins, wholly against it loses.
    """
    better_lo, better_hi = (lo, hi) if higher_is_better else (-hi, -lo)
    if n < 2 or not math.isfinite(lo):
        return "too few cores"
    if better_lo > 0:
        return "wins"
    if better_hi < 0:
        return "loses"
    return "no clear difference"


def compare(rows: Sequence[CoreRow], methods: Sequence[str], *, reference: str, seed: int, n_boot: int
            ) -> list[dict]:
    """The reference against every other method on each compared metric, paired by core.

    A metric best at a target compares the distances from it (``|log(value / target)|``, per core):
    the reference wins when it is closer.

    Returns:
        One dict per (other, metric): ``reference, other, metric, diff, lo, hi, n, verdict``.
    """
    by_core = {(r.method, *r.key): r for r in rows if r.ok}
    cores = sorted({r.key for r in rows})

    def values(method: str, k: str) -> list[float]:
        mk = metric(k)
        return [mk.rank_value(by_core[(method, *c)].value(k)) if (method, *c) in by_core else math.nan
                for c in cores]

    out = []
    for other in methods:
        if other == reference:
            continue
        for k in compared():
            diff, lo, hi, n = paired_difference(values(reference, k), values(other, k), n_boot=n_boot, seed=seed)
            out.append({"reference": reference, "other": other, "metric": k, "diff": diff, "lo": lo, "hi": hi,
                        "n": n, "verdict": verdict(lo, hi, n, higher_is_better=metric(k).rank_higher_is_better)})
    return out


def summarise(rows: Sequence[CoreRow], methods: Sequence[str], *, reference: str, seed: int, n_boot: int = 2000
              ) -> dict:
    """Overall means with bootstrap 95% CIs per method, a ranking, and the reference against each other.

    Args:
        rows: one row per (method, core); only ``ok`` rows count towards the metrics.
        methods: method names in display order.
        reference: the method compared against the others (the LDM).
        seed: seed of every bootstrap (the same resamples for every metric and method).
        n_boot: bootstrap resamples.

    Returns:
        ``metrics`` (method -> metric -> ``mean, lo, hi, n``), ``status`` (method -> counts),
        ``ranking`` (``(method, mean rank)`` best first), ``comparisons`` (see :func:`compare`),
        ``reference`` and ``cores`` (distinct cores in ``rows``): the JSON-ready summary.
    """
    per: dict[str, dict] = {}
    status: dict[str, dict[str, int]] = {}
    for m in methods:
        mine = [r for r in rows if r.method == m]
        status[m] = status_counts(mine)
        per[m] = {}
        for k in with_ci():
            mean, lo, hi, n = bootstrap_ci([r.value(k) for r in mine if r.ok], n_boot=n_boot, seed=seed)
            per[m][k] = {"mean": mean, "lo": lo, "hi": hi, "n": n}
    ranking = mean_ranks({m: {k: v["mean"] for k, v in per[m].items()} for m in methods}, methods)
    return {"metrics": per, "status": status, "ranking": ranking,
            "comparisons": compare(rows, methods, reference=reference, seed=seed, n_boot=n_boot),
            "reference": reference, "cores": len({r.key for r in rows})}


def realism_verdict(lo: float, hi: float, n: int) -> str | None:
    """Reads a method's sharpness ratio 95% CI ``[lo, hi]`` over ``n`` cores: ``blurrier than real H&E``
    when wholly below 0.8, ``noisier than real H&E`` when wholly above 1.25, else None."""
    if n < 1 or not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    if hi < BLURRIER:
        return "blurrier than real H&E"
    if lo > NOISIER:
        return "noisier than real H&E"
    return None


def realism_lines(summary: Mapping) -> list[str]:
    """One sentence per method whose sharpness ratio CI lies outside 0.8–1.25 (in the summary's order)."""
    out = []
    for m, values in summary["metrics"].items():
        s = values.get("sharpness_ratio")
        if s is not None and (said := realism_verdict(s["lo"], s["hi"], s["n"])) is not None:
            out.append(f"{m} is {said}: sharpness ratio {s['mean']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}] "
                       f"(goal 1.0, 95% CI {'below 0.8' if said.startswith('blurrier') else 'above 1.25'})")
    return out


def verdict_lines(summary: Mapping) -> list[str]:
    """One sentence per compared method: where the reference wins and loses (95% CI of the paired
    difference); then each method that is blurrier or noisier than real H&E (:func:`realism_lines`)."""
    out = []
    ref = summary["reference"]
    for other in dict.fromkeys(c["other"] for c in summary["comparisons"]):
        comp = [c for c in summary["comparisons"] if c["other"] == other]
        if all(c["verdict"] == "too few cores" for c in comp):
            out.append(f"{ref} vs {other}: too few cores in common to compare")
            continue
        said = {v: [metric(c["metric"]).label for c in comp if c["verdict"] == v] for v in VERDICTS}
        parts = [f"wins on {', '.join(said['wins'])}" if said["wins"] else "wins on nothing",
                 f"loses on {', '.join(said['loses'])}" if said["loses"] else "loses on nothing"]
        if said["no clear difference"]:
            parts.append(f"no clear difference on {', '.join(said['no clear difference'])}")
        out.append(f"{ref} vs {other}: {'; '.join(parts)}")
    return out + realism_lines(summary)
