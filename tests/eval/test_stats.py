"""Statistics over cores: bootstrap CIs, paired differences, ranks, verdicts and the summary."""

from __future__ import annotations

import math

import pytest

from stainldm.eval.stats import (
    bootstrap_ci,
    compare,
    mean_ranks,
    paired_difference,
    realism_lines,
    realism_verdict,
    status_counts,
    summarise,
    verdict,
    verdict_lines,
)
from stainldm.eval.table import CoreRow, compared, ranked, with_ci


def test_bootstrap_ci_is_seeded_covers_the_mean_and_skips_nan():
    v = [0.1, 0.5, 0.3, 0.9, 0.4, math.nan]
    a, b = bootstrap_ci(v, seed=3), bootstrap_ci(v, seed=3)
    assert a == b
    mean, lo, hi, n = a
    assert n == 5 and mean == pytest.approx(0.44) and lo < mean < hi
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0, 1)
    assert bootstrap_ci([math.nan])[3] == 0
    d, dlo, dhi, dn = paired_difference([1, 2, 3, math.nan], [0, 1, 2, 5])
    assert (d, dlo, dhi, dn) == (1.0, 1.0, 1.0, 3)


def test_verdict_reads_the_ci_in_the_direction_of_better():
    assert verdict(0.5, 1.0, 5, higher_is_better=True) == "wins"
    assert verdict(0.5, 1.0, 5, higher_is_better=False) == "loses"  # a positive difference of a distance
    assert verdict(-1.0, 1.0, 5, higher_is_better=True) == "no clear difference"
    assert verdict(0.5, 1.0, 1, higher_is_better=True) == "too few cores"
    assert verdict(math.nan, math.nan, 0, higher_is_better=True) == "too few cores"


def test_mean_ranks_skip_non_finite_means_and_put_unranked_methods_last():
    means = {"a": dict.fromkeys(ranked(), 1.0), "b": dict.fromkeys(ranked(), 2.0),
             "c": dict.fromkeys(ranked(), math.nan)}
    means["b"]["lab_w"] = 0.5  # lower is better: b wins this one
    order = mean_ranks(means, ["c", "b", "a"])
    assert [m for m, _ in order] == ["b", "a", "c"]
    # b: best on the six fidelity metrics; a: at the sharpness goal (1.0) and the lower nuclei area W1
    assert order[0][1] == pytest.approx((6 * 1 + 2 * 2) / 8) and math.isnan(order[-1][1])


def test_the_sharpness_ratio_ranks_and_compares_by_its_distance_from_one():
    means = {m: dict.fromkeys(ranked(), math.nan) for m in ("blurry", "noisy", "real-like")}
    for m, v in (("blurry", 0.4), ("noisy", 1.6), ("real-like", 0.95)):
        means[m]["sharpness_ratio"] = v
    assert [m for m, _ in mean_ranks(means, ["blurry", "noisy", "real-like"])] == ["real-like", "noisy", "blurry"]
    rows = [_row("ref", f"A{i}", sharpness_ratio=0.95 + 0.02 * i) for i in range(5)]
    rows += [_row("blurry", f"A{i}", sharpness_ratio=0.4 + 0.02 * i) for i in range(5)]
    rows += [_row("noisy", f"A{i}", sharpness_ratio=1 / (0.95 + 0.02 * i)) for i in range(5)]
    s = summarise(rows, ["ref", "blurry", "noisy"], reference="ref", seed=0, n_boot=200)
    v = {(c["other"], c["metric"]): c["verdict"] for c in s["comparisons"]}
    assert v[("blurry", "sharpness_ratio")] == "wins"  # closer to 1, though lower
    assert v[("noisy", "sharpness_ratio")] == "no clear difference"  # as far above 1 as ref below
    assert "ref vs blurry: wins on sharpness ratio" in verdict_lines(s)[0]


def test_blurrier_and_noisier_than_real_he_need_the_whole_ci_past_the_threshold():
    assert realism_verdict(0.3, 0.7, 5) == "blurrier than real H&E"
    assert realism_verdict(1.3, 1.6, 5) == "noisier than real H&E"
    assert realism_verdict(0.7, 0.9, 5) is None and realism_verdict(1.1, 1.4, 5) is None
    assert realism_verdict(math.nan, math.nan, 0) is None
    rows = [_row(m, f"A{i}", sharpness_ratio=x + 0.01 * i) for i in range(4)
            for m, x in (("LDM", 0.35), ("U-Net", 0.7), ("colour map", 1.6), ("good", 1.0))]
    rows += [_row("no tissue", f"A{i}") for i in range(4)]  # every realism value NaN: no verdict, no crash
    s = summarise(rows, ["LDM", "U-Net", "colour map", "good", "no tissue"], reference="LDM", seed=0, n_boot=200)
    assert s["metrics"]["no tissue"]["sharpness_ratio"]["n"] == 0
    lines = realism_lines(s)
    assert len(lines) == 3 and lines == [line for line in verdict_lines(s) if " is " in line]
    assert lines[0].startswith("LDM is blurrier than real H&E: sharpness ratio 0.36 [")
    assert lines[1].startswith("U-Net is blurrier than real H&E") and "below 0.8" in lines[1]
    assert lines[2].startswith("colour map is noisier than real H&E") and "above 1.25" in lines[2]


def _row(method: str, core: str, status: str = "ok", **values: float) -> CoreRow:
    return CoreRow.make(method, "s", core, status, tissue_px=10, values=values)


def test_summarise_compares_only_cores_both_methods_evaluated():
    rows = [_row("ref", f"A{i}", psnr=20.0 + i) for i in range(4)]
    rows += [_row("other", f"A{i}", psnr=18.0 + i) for i in range(3)]
    rows += [_row("other", "A3", "error: unreadable")]
    s = summarise(rows, ["ref", "other"], reference="ref", seed=0, n_boot=200)
    assert list(s["metrics"]["ref"]) == list(with_ci())  # metrics.json's key order
    assert s["status"]["other"] == {"ok": 3, "missing": 0, "error": 1} == status_counts(rows[4:])
    assert s["cores"] == 4 and s["reference"] == "ref"
    psnr = next(c for c in s["comparisons"] if c["metric"] == "psnr")
    assert psnr["n"] == 3 and psnr["diff"] == pytest.approx(2.0) and psnr["verdict"] == "wins"
    assert [c["metric"] for c in compare(rows, ["ref", "other"], reference="ref", seed=0, n_boot=50)] == list(compared())
    assert verdict_lines(s)[0].startswith("ref vs other: wins on PSNR (dB); loses on nothing")
