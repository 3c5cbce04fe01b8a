"""FID/KID: loading a local TorchScript feature model, features of patches, the distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stainldm.errors import InputError
from stainldm.eval.fid import REAL, FidModel, fid_kid


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
