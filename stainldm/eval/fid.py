"""FID and KID: features of store-tile-sized patches from a local TorchScript Inception, gathered core
by core (patches are not kept), compared with the real H&E's at the end.

    model = FidModel.load(Path("inception-2015-12-05.pt"), device="cpu")
    features = {"LDM": [model.features(patches)], REAL: [model.features(real_patches)]}
    fid_kid(features, ["LDM"], seed=0)  # {"LDM": {"fid": ..., "kid": ..., "kid_std": ..., "patches": n}}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stainldm.errors import InputError

REAL = "real"  # the reference features' key


def check_fid_weights(fid_weights: Path | None) -> None:
    """Checks that ``fid_weights`` (when given) is a file, before any work.

    Raises:
        InputError: it is not.
    """
    if fid_weights is not None and not fid_weights.is_file():
        raise InputError(f"`fid_weights` {fid_weights}: file not found (a local Inception TorchScript file)")


class FidModel:
    """A local TorchScript Inception that turns patches into FID/KID features."""

    def __init__(self, model: Any, device: str):
        self.model, self.device = model, device

    @classmethod
    def load(cls, fid_weights: Path, *, device: str = "auto") -> FidModel:
        """Loads ``fid_weights`` (e.g. ``inception-2015-12-05.pt``) onto ``device`` (``auto``: CUDA if any).

        Raises:
            InputError: the file is missing or not a TorchScript module.
        """
        import torch

        check_fid_weights(fid_weights)
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        try:
            model = torch.jit.load(str(fid_weights), map_location=dev).eval()
        except Exception as exc:
            raise InputError(f"`fid_weights` {fid_weights}: not a TorchScript module ({type(exc).__name__}); "
                             "give a local Inception TorchScript file such as inception-2015-12-05.pt") from exc
        return cls(model, dev)

    def features(self, patches: Sequence[np.ndarray]) -> np.ndarray:
        """``(N, D)`` features of same-sized ``(H, W, 3)`` uint8 patches."""
        from stainldm.eval.metrics import inception_features

        return inception_features(self.model, np.stack(patches), device=self.device)


def fid_kid(features: dict[str, list[np.ndarray]], methods: Sequence[str], *, seed: int) -> dict[str, dict]:
    """FID and KID of each method's patch features against the real H&E's (``features[REAL]``).

    Returns:
        method -> ``{"fid", "kid", "kid_std", "patches"}`` (NaN with fewer than 2 patches).
    """
    from stainldm.eval.metrics import fid, kid

    real = np.concatenate(features[REAL]) if features.get(REAL) else None
    out = {}
    for m in methods:
        feat = np.concatenate(features[m]) if features.get(m) else np.zeros((0, 1))
        if real is None or len(feat) < 2:
            out[m] = {"fid": math.nan, "kid": math.nan, "kid_std": math.nan, "patches": len(feat)}
            continue
        k, ks = kid(feat, real, seed=seed)
        out[m] = {"fid": fid(feat, real), "kid": k, "kid_std": ks, "patches": len(feat)}
    return out
