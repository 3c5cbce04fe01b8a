"""FID/KID: loading a local TorchScript feature model, features of patches, the distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stainldm.errors import InputError
from stainldm.eval.fid import REAL, FidModel, fid_kid, kid_bootstrap


def test_fid_weights_that_are_not_torchscript_are_refused(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"^`fid_weights` .*: not a TorchScript module") as info:
        FidModel.load(bad, device="cpu")
    assert info.value.__cause__ is not None  # the loader's error is kept for --debug


def test_fid_model_gives_features_of_patches(tmp_path):
    class Features(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 2).flatten(1)[:, :8]

    path = tmp_path / "f.pt"
    torch.jit.script(Features()).save(str(path))
    fm = FidModel.load(path, device="cpu")
    f = fm.features([np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)])
    assert f.shape == (2, 8) and f.dtype == np.float64 and f[1].max() == pytest.approx(1.0)


def test_fid_kid_needs_two_patches_and_real_features():
    rng = np.random.default_rng(0)
    feats = {REAL: [rng.normal(size=(30, 4))], "A": [rng.normal(size=(20, 4)), rng.normal(size=(10, 4))],
             "B": [rng.normal(size=(1, 4))]}
    out = fid_kid(feats, ["A", "B", "C"], seed=0)
    assert out["A"]["patches"] == 30 and math.isfinite(out["A"]["fid"]) and math.isfinite(out["A"]["kid"])
    assert out["B"]["patches"] == 1 and math.isnan(out["B"]["fid"])
    assert out["C"]["patches"] == 0 and math.isnan(out["C"]["kid"])
    assert all(math.isnan(v["fid"]) for v in fid_kid({"A": feats["A"]}, ["A"], seed=0).values())  # no real


def test_kid_ci_resamples_cores_and_separates_near_from_far():
    rng = np.random.default_rng(1)
    real = {f"A{i}": rng.normal(size=(12, 8)) for i in range(6)}
    near = {c: rng.normal(size=(12, 8)) for c in real}  # the same distribution
    far = {c: rng.normal(loc=1.5, size=(12, 8)) for c in real}
    lo, hi, n = kid_bootstrap(near, real, n_boot=300, seed=0)
    assert n == 6 and lo < 0.05 and lo <= hi
    flo, _, _ = kid_bootstrap(far, real, n_boot=300, seed=0)
    assert flo > hi  # the far features' whole CI lies above the near ones'
    assert kid_bootstrap(near, real, n_boot=300, seed=0) == (lo, hi, n)  # seeded
    # The CI covers the point estimate over all patches (one resample = all cores once, exactly).
    out = fid_kid({REAL: real, "far": far, "near": near}, ["far", "near"], seed=0, n_boot=300)
    assert out["far"]["kid_lo"] <= out["far"]["kid"] <= out["far"]["kid_hi"] and out["far"]["cores"] == 6
    # Only the cores both sides have count; one core gives no CI.
    lo1, hi1, n1 = kid_bootstrap({"A0": near["A0"], "Z": far["A1"]}, real, n_boot=50, seed=0)
    assert n1 == 1 and math.isnan(lo1) and math.isnan(hi1)


def test_kid_ci_is_the_unbiased_mmd_of_the_resampled_patches():
    from stainldm.eval.fid import _poly_kernel

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 4)), rng.normal(loc=0.3, size=(3, 4))
    # Every core holds the same patches: any resample of 4 cores is 4 copies of them, as the full sample is,
    # so the CI collapses onto the unbiased MMD² of the full sample (copies are distinct patches).
    lo, hi, n = kid_bootstrap([a] * 4, [b] * 4, n_boot=50, seed=0)
    xa, ya = np.concatenate([a] * 4), np.concatenate([b] * 4)
    kxx, kyy, kxy = _poly_kernel(xa, xa), _poly_kernel(ya, ya), _poly_kernel(xa, ya)
    m, k = len(xa), len(ya)
    mmd = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (k * (k - 1))
           - 2 * kxy.mean())
    assert n == 4 and lo == pytest.approx(mmd) and hi == pytest.approx(mmd)
