"""benchmarks/steps.py's recommendation rule, which sets the stain defaults the LDM ships with: the
admissibility gates (the anchor's PSNR/SSIM/nuclei F1 floors, no spectrum band above 1.25, nuclei
area W₁ at most twice the anchor's) and, among admissible settings, the sharpness closest to 1."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def steps():
    spec = importlib.util.spec_from_file_location("bench_steps", BENCH / "steps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _result(steps, *, sharpness: float, area: float, f1: float = 0.73, psnr: float = 21.0, spectrum: float = 0.9):
    """One setting's measurements as steps.py keeps them: (mean, CI low, CI high, n) per metric."""
    summary = {"psnr": (psnr, psnr - 0.2, psnr + 0.2, 21), "ssim": (0.76, 0.74, 0.78, 21),
               "nuclei_f1": (f1, f1 - 0.04, f1 + 0.04, 21), "sharpness": (sharpness, sharpness - 0.02,
                                                                           sharpness + 0.02, 21)}
    summary.update({f"spectrum_{b}": (spectrum, spectrum, spectrum, 21) for b in steps.BANDS})
    return {"summary": summary, "nuclei_w1": {"area": area, "eccentricity": 0.05}}


def test_guidance_that_swells_nuclei_is_refused_on_area_w1_and_the_faithful_setting_recommended(steps):
    anchor = steps.ANCHOR
    faithful = steps.Setting("ddim", 10, 1.0, 0.0)
    swollen = steps.Setting("dpmpp_2m", 10, 2.0, 0.0)  # sharper, F1 fine, nuclei area W₁ 4x the anchor's
    results = {anchor: _result(steps, sharpness=0.79, area=3.8), faithful: _result(steps, sharpness=0.76, area=3.1),
               swollen: _result(steps, sharpness=0.93, area=14.9, f1=0.76)}
    floor = steps.floors(results, anchor)
    assert floor.area_w1 == pytest.approx(2 * 3.8)
    assert steps.inadmissible(results[swollen], floor) == "nuclei area W₁"
    assert steps.inadmissible(results[faithful], floor) == ""
    assert steps.recommend(results, anchor) == faithful  # fewest evaluations among the equally sharp

    results[swollen] = _result(steps, sharpness=0.93, area=7.0, f1=0.76)  # under twice the anchor's: admissible
    assert steps.recommend(results, anchor) == swollen  # the sharpness closest to 1 wins


def test_the_other_gates_still_refuse_and_a_nan_area_is_not_held_against_a_setting(steps):
    anchor = steps.ANCHOR
    base = _result(steps, sharpness=0.8, area=4.0)
    floor = steps.floors({anchor: base}, anchor)
    assert steps.inadmissible(_result(steps, sharpness=0.9, area=4.0, f1=0.5), floor) == "nuclei F1"
    assert steps.inadmissible(_result(steps, sharpness=0.9, area=4.0, psnr=19.0), floor) == "PSNR"
    assert steps.inadmissible(_result(steps, sharpness=0.9, area=4.0, spectrum=1.3), floor).startswith("spec ")
    # too few nuclei for a W₁: F1 speaks
    assert steps.inadmissible(_result(steps, sharpness=0.8, area=math.nan), floor) == ""
    no_nuclei = steps.floors({anchor: _result(steps, sharpness=0.8, area=math.nan)}, anchor)
    assert no_nuclei.area_w1 == math.inf  # an anchor without a W₁ sets no ceiling
