"""The metrics table: today's orders for every consumer, the typed row and metrics.csv's exact bytes."""

from __future__ import annotations

import math

import pytest

from stainldm.eval.table import (
    METRICS,
    CoreRow,
    compared,
    csv_metrics,
    metric,
    plotted,
    ranked,
    shown,
    shown_in,
    summary,
    with_ci,
    write_metrics_csv,
)

OLD_CSV = ("psnr", "ssim", "lab_w_L", "lab_w_a", "lab_w_b", "lab_w", "h_corr", "e_corr", "nuclei_real", "nuclei_pred",
           "nuclei_count_ratio", "nuclei_count_error", "nuclei_f1", "seam_score")
REALISM = ("sharpness_ratio", "spectrum_tissue", "spectrum_nuclei", "spectrum_chromatin", "nuclei_area_w1",
           "nuclei_eccentricity_w1", "nuclei_solidity_w1")
CSV = (*OLD_CSV, *REALISM, "sharpness_real", "sharpness_pred")  # new columns after the old: old readers keep working
FIDELITY = ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1", "nuclei_count_ratio", "seam_score")
SHOWN = (*FIDELITY, *REALISM)


def test_every_consumer_reads_its_metrics_in_the_file_and_display_orders():
    assert csv_metrics() == CSV  # a file format: the column order never follows the display order
    assert shown() == plotted() == SHOWN
    assert shown_in("fidelity") == FIDELITY and shown_in("realism") == REALISM
    assert ranked() == (*FIDELITY[:6], "sharpness_ratio", "nuclei_area_w1")
    assert compared() == (*FIDELITY[:6], *REALISM)
    assert with_ci() == tuple(sorted({*SHOWN, "lab_w_L", "lab_w_a", "lab_w_b", "nuclei_count_error"}))
    assert [m.name for m in summary()] == ["psnr", "ssim", "lab_w", "sharpness_ratio"]
    assert len({m.name for m in METRICS}) == len(METRICS) and sorted(m.csv_column for m in METRICS) == list(range(23))
    # a ranked or compared metric has a direction, or a target it is ranked by the distance from
    assert all(metric(k).better in ("higher", "lower") or metric(k).by_distance for k in compared())
    with pytest.raises(KeyError):
        metric("fid")


def test_labels_directions_and_the_terminal_form():
    assert [metric(k).direction for k in SHOWN] == (["higher"] * 2 + ["lower"] + ["higher"] * 3 + ["→ 1"] * 2
                                                    + ["→ 1"] * 4 + ["lower"] * 3)
    assert metric("lab_w").label == "CIELAB W₁" and not metric("lab_w").higher_is_better
    assert summary()[0].format_ci(21.347, 20.1, 22.61) == "PSNR 21.35 [20.10, 22.61] dB"
    assert metric("ssim").format_ci(0.61234, 0.5, 0.7) == "SSIM 0.612 [0.500, 0.700]"
    assert metric("lab_w").format_ci(3.0, 2.5, 3.5) == "CIELAB W1 3.00 [2.50, 3.50]"
    assert metric("sharpness_ratio").format_ci(0.333, 0.3, 0.41) == "sharpness 0.33 [0.30, 0.41]"


def test_a_ratio_ranks_by_its_distance_from_the_target():
    sharp = metric("sharpness_ratio")
    assert sharp.by_distance and not sharp.rank_higher_is_better
    assert sharp.rank_value(1.0) == 0.0 and sharp.rank_value(0.8) == pytest.approx(sharp.rank_value(1.25))
    assert sharp.rank_value(0.5) > sharp.rank_value(1.5)  # half as sharp is further from real than 1.5×
    assert math.isnan(sharp.rank_value(0.0)) and math.isnan(sharp.rank_value(math.nan))
    assert metric("psnr").rank_value(21.0) == 21.0 and metric("psnr").rank_higher_is_better


def test_spectrum_labels_follow_the_bands():
    from stainldm.eval.realism import BANDS_UM

    for name, short, long in BANDS_UM:
        assert metric(f"spectrum_{name}").label == f"spectrum {short:g}–{long:g} µm"


def test_core_row_holds_every_csv_metric():
    row = CoreRow.make("LDM", "s1", "A1", "ok", tissue_px=12.0, values={"psnr": 20.0, "fid": 3.0})
    assert list(row.values) == list(CSV) and row.value("psnr") == 20.0 and math.isnan(row.value("ssim"))
    assert "fid" not in row.values and math.isnan(row.value("fid"))
    assert row.ok and row.key == ("s1", "A1") and row.tissue_px == 12 and isinstance(row.tissue_px, int)
    assert not CoreRow.make("LDM", "s1", "A2", "missing: no prediction").ok


def test_metrics_csv_bytes(tmp_path):
    rows = [CoreRow.make("LDM", "s1", "A1", "ok", tissue_px=1200,
                         values={k: 1 / 3 + i for i, k in enumerate(CSV)} | {"psnr": math.inf, "seam_score": 12345678.9}),
            CoreRow.make("U-Net, \"v2\"", "s1", "A2", "error: x")]
    write_metrics_csv(tmp_path / "metrics.csv", rows)
    lines = (tmp_path / "metrics.csv").read_bytes().split(b"\r\n")
    assert lines[0] == ("method,slide_id,core,status,tissue_px," + ",".join(CSV)).encode()
    assert lines[1].startswith(b"LDM,s1,A1,ok,1200,,1.33333,2.33333,") and b",12.3333,1.23457e+07,14.3333," in lines[1]
    assert lines[1].endswith(b",21.3333,22.3333")
    assert lines[2] == b'"U-Net, ""v2""",s1,A2,error: x,0' + b"," * len(CSV) and lines[3] == b""
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.csv"]  # written atomically
