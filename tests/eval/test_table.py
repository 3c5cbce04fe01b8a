"""The metrics table: today's orders for every consumer, the typed row and metrics.csv's exact bytes."""

from __future__ import annotations

import math

import pytest

from stainldm.eval.table import (
    METRICS,
    CoreRow,
    csv_metrics,
    metric,
    plotted,
    ranked,
    shown,
    summary,
    with_ci,
    write_metrics_csv,
)

CSV = ("psnr", "ssim", "lab_w_L", "lab_w_a", "lab_w_b", "lab_w", "h_corr", "e_corr", "nuclei_real", "nuclei_pred",
       "nuclei_count_ratio", "nuclei_count_error", "nuclei_f1", "seam_score")
SHOWN = ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1", "nuclei_count_ratio", "seam_score")


def test_every_consumer_reads_its_metrics_in_the_file_and_display_orders():
    assert csv_metrics() == CSV  # a file format: the column order never follows the display order
    assert shown() == plotted() == SHOWN
    assert ranked() == SHOWN[:6]
    assert with_ci() == tuple(sorted({*SHOWN, "lab_w_L", "lab_w_a", "lab_w_b", "nuclei_count_error"}))
    assert [m.name for m in summary()] == ["psnr", "ssim", "lab_w"]
    assert len({m.name for m in METRICS}) == len(METRICS) and sorted(m.csv_column for m in METRICS) == list(range(14))
    assert all(metric(k).better in ("higher", "lower") for k in ranked())  # a ranked metric has a direction
    with pytest.raises(KeyError):
        metric("fid")


def test_labels_directions_and_the_terminal_form():
    assert [metric(k).direction for k in SHOWN] == ["higher"] * 2 + ["lower"] + ["higher"] * 3 + ["→ 1"] * 2
    assert metric("lab_w").label == "CIELAB W₁" and not metric("lab_w").higher_is_better
    assert summary()[0].format_ci(21.347, 20.1, 22.61) == "PSNR 21.35 [20.10, 22.61] dB"
    assert metric("ssim").format_ci(0.61234, 0.5, 0.7) == "SSIM 0.612 [0.500, 0.700]"
    assert metric("lab_w").format_ci(3.0, 2.5, 3.5) == "CIELAB W1 3.00 [2.50, 3.50]"


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
    assert lines[1].startswith(b"LDM,s1,A1,ok,1200,,1.33333,2.33333,") and lines[1].endswith(b",12.3333,1.23457e+07")
    assert lines[2] == b'"U-Net, ""v2""",s1,A2,error: x,0' + b"," * len(CSV) and lines[3] == b""
    assert not [p for p in tmp_path.iterdir() if p.name != "metrics.csv"]  # written atomically
