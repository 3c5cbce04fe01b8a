"""FID and KID: features of store-tile-sized patches from a local TorchScript Inception, gathered core
by core (patches are not kept), compared with the real H&E's at the end.

    model = FidModel.load(Path("inception-2015-12-05.pt"), device="cpu")
    features = {"LDM": {"s1:A1": model.features(patches)}, REAL: {"s1:A1": model.features(real_patches)}}
    fid_kid(features, ["LDM"], seed=0)  # {"LDM": {"fid", "kid", "kid_std", "kid_lo", "kid_hi", "patches", ...}}

KID's 95% CI resamples *cores*, not patches: the patches of one core are not independent samples
(neighbouring tiles of the same tissue), the cores are, as for every other metric of the report.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
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


Blocks = Mapping[Hashable, np.ndarray] | Sequence[np.ndarray]  # per core: (n, D) features


def _by_core(blocks: Blocks | None) -> dict[Hashable, np.ndarray]:
    """Per-core feature blocks as a dict (a list is keyed by position: the cores in the same order)."""
    if blocks is None:
        return {}
    items = blocks.items() if isinstance(blocks, Mapping) else enumerate(blocks)
    return {k: v for k, v in items if len(v)}


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KID's cubic polynomial kernel ``(a·b / d + 1)³`` (Bińkowski et al. 2018)."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _self_kernel_sum(x: np.ndarray) -> float:
    """Sum over the patches of ``k(x, x)`` (the kernel matrix's trace)."""
    return float(((np.einsum("ij,ij->i", x, x) / x.shape[1] + 1.0) ** 3).sum())


def _block_sums(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """``S[i, j]``: sum of the kernel between the patches of core ``i`` in ``a`` and core ``j`` in ``b``."""
    out = np.zeros((len(a), len(b)))
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            if len(x) and len(y):
                out[i, j] = _poly_kernel(x, y).sum()
    return out


def kid_bootstrap(virtual: Blocks, real: Blocks, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                  ) -> tuple[float, float, int]:
    """Percentile bootstrap CI of KID, resampling cores (paired: the same cores of virtual and real).

    Each resample's KID is the unbiased MMD² (Bińkowski et al. 2018, eq. 2; Gretton et al. 2012) with the
    cubic polynomial kernel over all patches of the resampled cores; a core drawn twice counts twice.
    The kernel sums between cores are computed once, so a resample costs ``O(cores²)``.

    Args:
        virtual, real: per-core ``(n, D)`` features (a mapping core -> features, or lists in the same
            core order); the cores resampled are those of ``real``.
        n_boot: resamples.
        seed: the resampling seed.
        level: the CI's coverage.

    Returns:
        ``(low, high, cores)``; NaN bounds with fewer than 2 cores that both sides have patches of.
    """
    v, r = _by_core(virtual), _by_core(real)
    cores = [c for c in r if c in v]
    if len(cores) < 2:
        return math.nan, math.nan, len(cores)
    xs, ys = [v[c] for c in cores], [r[c] for c in cores]
    nx = np.array([len(x) for x in xs], np.float64)
    ny = np.array([len(y) for y in ys], np.float64)
    sxx, syy, sxy = _block_sums(xs, xs), _block_sums(ys, ys), _block_sums(xs, ys)
    dxx = np.array([_self_kernel_sum(x) for x in xs])  # k(x, x) of each patch with itself, per core
    dyy = np.array([_self_kernel_sum(y) for y in ys])
    rng = np.random.default_rng(seed)
    w = rng.multinomial(len(cores), np.full(len(cores), 1 / len(cores)), size=n_boot).astype(np.float64)  # (B, C)
    n_x, n_y = w @ nx, w @ ny
    ok = (n_x > 1) & (n_y > 1)
    w, n_x, n_y = w[ok], n_x[ok], n_y[ok]
    kxx = (np.einsum("bi,ij,bj->b", w, sxx, w) - w @ dxx) / (n_x * (n_x - 1))  # pairs i != j only
    kyy = (np.einsum("bi,ij,bj->b", w, syy, w) - w @ dyy) / (n_y * (n_y - 1))
    kxy = np.einsum("bi,ij,bj->b", w, sxy, w) / (n_x * n_y)
    mmd = kxx + kyy - 2 * kxy
    if mmd.size == 0:
        return math.nan, math.nan, len(cores)
    a = (1 - level) / 2
    return float(np.quantile(mmd, a)), float(np.quantile(mmd, 1 - a)), len(cores)


def fid_kid(features: Mapping[str, Blocks], methods: Sequence[str], *, seed: int, n_boot: int = 1000
            ) -> dict[str, dict]:
    """FID and KID of each method's patch features against the real H&E's (``features[REAL]``).

    Args:
        features: method (and :data:`REAL`) -> per-core ``(n, D)`` features: a mapping core ->
            features, or a list (cores in the same order for every method).
        methods: the methods, in order.
        seed: KID's subset and bootstrap seed.
        n_boot: KID bootstrap resamples (:func:`kid_bootstrap`).

    Returns:
        method -> ``{"fid", "kid", "kid_std", "kid_lo", "kid_hi", "cores", "patches"}``: ``kid`` and
        ``kid_std`` the mean and std over random patch subsets (Bińkowski et al. 2018), ``kid_lo`` /
        ``kid_hi`` the 95% CI over cores (NaN with fewer than 2 cores; everything NaN with fewer
        than 2 patches).
    """
    from stainldm.eval.metrics import fid, kid

    real_blocks = _by_core(features.get(REAL))
    real = np.concatenate(list(real_blocks.values())) if real_blocks else None
    out = {}
    for m in methods:
        blocks = _by_core(features.get(m))
        feat = np.concatenate(list(blocks.values())) if blocks else np.zeros((0, 1))
        if real is None or len(feat) < 2:
            out[m] = {"fid": math.nan, "kid": math.nan, "kid_std": math.nan, "kid_lo": math.nan, "kid_hi": math.nan,
                      "cores": len(blocks), "patches": len(feat)}
            continue
        k, ks = kid(feat, real, seed=seed)
        lo, hi, n = kid_bootstrap(blocks, real_blocks, n_boot=n_boot, seed=seed)
        out[m] = {"fid": fid(feat, real), "kid": k, "kid_std": ks, "kid_lo": lo, "kid_hi": hi, "cores": n,
                  "patches": len(feat)}
    return out
