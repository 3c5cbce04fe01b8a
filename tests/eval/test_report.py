"""The report: the summary over cores, metrics.json, the HTML page, and the page in a real (headless) browser."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stainldm.eval.figures import save_core_panels
from stainldm.eval.report import ReportContext, format_summary, write_metrics_json, write_report
from stainldm.eval.stats import summarise, verdict_lines
from stainldm.eval.table import CoreRow

KEYS = ("psnr", "ssim", "lab_w", "lab_w_L", "lab_w_a", "lab_w_b", "h_corr", "e_corr", "nuclei_f1",
        "nuclei_count_ratio", "nuclei_count_error", "seam_score", "nuclei_real", "nuclei_pred")


def _rows(n_cores: int = 6) -> list[CoreRow]:
    """'good' beats 'bad' on every core; 'same' equals 'good' up to noise; 'gone' misses one core."""
    rng = np.random.default_rng(0)
    worse = {"psnr": -5.0, "ssim": -0.1, "lab_w": 2.0, "h_corr": -0.1, "e_corr": -0.1, "nuclei_f1": -0.1}
    rows = []
    for i in range(n_cores):
        base = {"psnr": 20.0 + i % 3, "ssim": 0.6, "lab_w": 3.0, "h_corr": 0.7, "e_corr": 0.7, "nuclei_f1": 0.7,
                "nuclei_count_ratio": 1.0, "seam_score": 1.0}
        for method, k_worse in (("good", 0.0), ("same", 0.0), ("bad", 1.0), ("gone", 0.5)):
            v = dict.fromkeys(KEYS, math.nan)
            for k, x in base.items():
                v[k] = x + k_worse * worse.get(k, 0.0)
                if method == "same":
                    v[k] += rng.normal(0, 0.05)
            status = "missing: core not stained in the prediction" if method == "gone" and i == 0 else "ok"
            rows.append(CoreRow(method, "s", f"A{i}", status, 100, v))
    return rows


def _context(methods: list[str], **kw) -> ReportContext:
    return ReportContext(title="test report", split="test", store=Path("store"), tile_mpp=1.0, seed=0, n_boot=500,
                         match_radius_um=4.0, n_cores=6, gallery_total=1,
                         methods=[{"name": m, "kind": "ldm" if m == "good" else "other", "notes": [],
                                   "seconds_total": None} for m in methods], **kw)


def test_summarise_ranks_and_says_where_the_reference_wins_and_loses():
    methods = ["good", "same", "bad", "gone"]
    s = summarise(_rows(), methods, reference="good", seed=0, n_boot=500)
    assert s["ranking"][0][0] == "good" and s["ranking"][-1][0] == "bad"
    assert s["status"]["gone"] == {"ok": 5, "missing": 1, "error": 0}
    assert s["metrics"]["gone"]["psnr"]["n"] == 5
    verdict = {(c["other"], c["metric"]): c["verdict"] for c in s["comparisons"]}
    assert all(verdict[("bad", k)] == "wins" for k in ("psnr", "ssim", "lab_w", "h_corr", "e_corr", "nuclei_f1"))
    assert verdict[("same", "psnr")] == "no clear difference"
    assert verdict[("same", "lab_w")] == "no clear difference"  # lower is better, CI across 0
    mixed = [replace(r, values={**r.values, "lab_w": r.value("lab_w") + (6.0 if r.core in ("A0", "A1") else -3.0)})
             if r.method == "bad" else r for r in _rows()]  # 'bad' is worse on average but better on most cores: CI spans 0
    assert {(c["other"], c["metric"]): c["verdict"] for c in summarise(mixed, methods, reference="good", seed=0,
            n_boot=500)["comparisons"]}[("bad", "lab_w")] == "no clear difference"
    lines = verdict_lines(s)
    assert "good vs bad: wins on PSNR (dB), SSIM, CIELAB W₁, H corr, E corr, nuclei F1; loses on nothing" in lines
    text = format_summary(s, methods)
    assert text.splitlines()[0].startswith("method") and "5/6" in text
    realism = text.split("Realism: ")[1].splitlines()  # rows without realism values: n/a, not a crash
    assert "sharpness ratio" in realism[1] and all(line.count("n/a") == 7 for line in realism[3:7])
    for m in methods:
        v = s["metrics"][m]["psnr"]
        assert v["lo"] <= v["mean"] <= v["hi"]


def test_one_core_gives_no_verdict():
    rows = [r for r in _rows() if r.core == "A1"]
    s = summarise(rows, ["good", "bad"], reference="good", seed=0, n_boot=500)
    assert {c["verdict"] for c in s["comparisons"]} == {"too few cores"}
    assert verdict_lines(s) == ["good vs bad: too few cores in common to compare"]


def test_report_files_link_only_local_images(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    tissue = np.ones((40, 50), bool)
    entry = save_core_panels(tmp_path / "gallery", "slide 1:A/1", unstained=rng.integers(0, 999, (40, 50, 2)),
                             real=real, tissue=tissue, mpp=1.0,
                             virtual={"good": (real, rng.random((40, 50)).astype(np.float32)), "bad": (255 - real, None)})
    assert entry["methods"]["good"]["uncertainty"] and entry["methods"]["bad"]["uncertainty"] is None
    methods = ["good", "same", "bad", "gone"]
    rows = _rows()
    s = summarise(rows, methods, reference="good", seed=0, n_boot=500)
    ctx = _context(methods, fid_note="FID/KID skipped: no --fid-weights", errors=["x.tiff: cannot read <it>"])
    path = write_report(tmp_path, rows=rows, summary=s, gallery=[entry], context=ctx)
    write_metrics_json(tmp_path / "metrics.json", s, ctx)
    text = path.read_text()
    srcs = re.findall(r"(?:src|href)='([^']+)'", text)
    assert srcs and all((tmp_path / p).is_file() for p in srcs)
    assert not any(p.startswith(("http", "//", "/")) for p in srcs)
    assert "id='summary'" in text and "FID/KID skipped" in text and "x.tiff: cannot read &lt;it&gt;" in text
    assert "id='summary-realism'" in text and "Detail side by side, 1:1" in text
    assert all(f"src='{p}'" in text for p in (entry["compare"]["real"], *entry["compare"]["methods"].values()))
    assert (tmp_path / "figures" / "distributions.png").is_file() and not (tmp_path / "figures" / "steps.png").exists()
    import json

    data = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN became null
    assert data["summary"]["good"]["psnr"]["mean"] > data["summary"]["bad"]["psnr"]["mean"]
    assert data["bootstrap"]["resamples"] == 500


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--mute-audio", "--hide-scrollbars")


def test_report_renders_in_headless_chromium(eval_report, tmp_path):
    """The report of the ci.yaml models opens from disk: every image loads, the summary table is there."""
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not found: install it with `apt-get install -y chromium` (Debian) to run the browser test")
    assert eval_report["result"].errors == []
    url = (eval_report["out"] / "report.html").resolve().as_uri()
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2400"]
    dom = subprocess.run([*common, "--virtual-time-budget=10000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    total = int(re.search(r'data-images-total="(\d+)"', body.group(1)).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body.group(1)).group(1))
    assert total > 10 and loaded == total  # figures and the whole gallery
    assert 'id="summary"' in dom.stdout and "colour map" in dom.stdout
    shot = tmp_path / "report.png"
    run = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1400) and img.std() > 10  # something was drawn, not a blank page


def test_names_from_user_folders_are_escaped_and_verdicts_marked(tmp_path):
    """Method and core names come from folders: markup in them is shown as text, never run."""
    evil = "<script>alert(1)</script>"
    rows = [replace(r, method=evil if r.method == "bad" else r.method, core=f"{r.core}<b>") for r in _rows()
            if r.method in ("good", "bad")]
    methods = ["good", evil]
    s = summarise(rows, methods, reference="good", seed=0, n_boot=200)
    ctx = _context(methods, fid={"good": {"fid": 1.5, "kid": 0.01, "kid_std": 0.002, "kid_lo": 0.005, "kid_hi": 0.015,
                                          "cores": 3, "patches": 12},
                                 evil: {"fid": math.nan, "kid": math.nan, "kid_std": math.nan, "patches": 1}})
    ctx.gallery_total = 3
    text = write_report(tmp_path, rows=rows, summary=s, gallery=[], context=ctx).read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "A0&lt;b&gt;" in text and "<b>A0" not in text
    assert "<span class='win'>wins</span> on" in text and "id='per-core'" in text
    assert "Showing 0 of 3 cores" in text and "FID ↓" in text and "1.500" in text
    assert "[0.0050, 0.0150]" in text  # KID's CI over cores
    assert text.count("<tr class='best'>") == 2 and "data-images-loaded" in text
