"""Image metrics of virtual against real H&E, all restricted to a tissue mask.

Pure functions over ``(H, W, 3)`` uint8 RGB arrays and ``(H, W)`` bool masks (no I/O):

    m = core_metrics(virtual, real, tissue, mpp=0.5)           # one core: PSNR, SSIM, colour, stain, nuclei

Conventions (the report states them):

* PSNR and SSIM on uint8 RGB with data range 255. PSNR from the mean squared error over the
  tissue pixels and all three channels. SSIM (Wang et al. 2004; scikit-image, 7×7 uniform window)
  is computed per channel, averaged over the channels and then over the tissue pixels.
* Colour: 1-D Wasserstein distance between the CIELAB histograms (L* 0–100, a*/b* −128–127, bins
  of one unit) of the tissue pixels, per channel, in Lab units.
* Stain fidelity: Pearson correlation over tissue pixels of the haematoxylin and of the eosin
  densities of colour deconvolution (Ruifrok & Johnston 2001, scikit-image ``rgb2hed``).
* Nuclei: Otsu threshold of the smoothed haematoxylin density on tissue, distance-transform
  watershed to split touching nuclei; detections are matched one-to-one (greedy, nearest first)
  within a radius in µm.
* Seam score: mean absolute intensity step across given window borders divided by that between
  all other neighbouring pixels, on tissue (1.0 = no seams).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# Lab histogram ranges (L* 0–100, a*/b* −128–127), one-unit bins.
_LAB_RANGES = ((0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0))


@dataclass(frozen=True)
class NucleiConfig:
    """Nuclei segmentation on the haematoxylin channel (physical units).

    Attributes:
        smooth_um: Gaussian σ applied to the haematoxylin density before thresholding.
        min_area_um2: smaller objects are noise.
        min_distance_um: least distance between two nucleus centres (watershed seeds).
        match_radius_um: a virtual and a real nucleus closer than this are the same nucleus.
        min_contrast: least haematoxylin density difference between the classes Otsu separates;
            below it the image has no nuclei (a flat prediction does not get noise "nuclei").
    """

    smooth_um: float = 0.5
    min_area_um2: float = 10.0
    min_distance_um: float = 3.0
    match_radius_um: float = 4.0
    min_contrast: float = 0.01


# ---------------------------------------------------------------------------------------------
# Fidelity
# ---------------------------------------------------------------------------------------------
def masked_psnr(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """PSNR in dB over the masked pixels (data range 255, MSE over the pixels and channels)."""
    if not mask.any():
        return math.nan
    d = pred[mask].astype(np.float64) - target[mask].astype(np.float64)
    mse = float(np.mean(d * d))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def masked_ssim(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM over the masked pixels: per-channel SSIM maps (data range 255, 7×7 window), averaged."""
    from skimage.metrics import structural_similarity

    if not mask.any() or min(mask.shape) < 7:
        return math.nan
    _, smap = structural_similarity(target, pred, data_range=255, channel_axis=2, full=True)
    return float(smap.mean(axis=2)[mask].mean())


def lab_wasserstein(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Per-channel (L*, a*, b*) Wasserstein distance between the CIELAB histograms of the masked pixels."""
    from scipy.stats import wasserstein_distance
    from skimage.color import rgb2lab

    if not mask.any():
        return (math.nan,) * 3
    lp, lt = rgb2lab(pred[mask][None]), rgb2lab(target[mask][None])  # (1, N, 3)
    out = []
    for c, (lo, hi) in enumerate(_LAB_RANGES):
        edges = np.arange(lo, hi + 1.0)
        centres = (edges[:-1] + edges[1:]) / 2
        hp, _ = np.histogram(np.clip(lp[0, :, c], lo, hi - 1e-6), bins=edges)
        ht, _ = np.histogram(np.clip(lt[0, :, c], lo, hi - 1e-6), bins=edges)
        out.append(float(wasserstein_distance(centres, centres, hp, ht)))
    return out[0], out[1], out[2]


def hed_densities(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` haematoxylin, eosin and DAB densities of colour deconvolution (``rgb2hed``)."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)


def stain_correlation(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, *,
                      hed_pred: np.ndarray | None = None, hed_target: np.ndarray | None = None
                      ) -> tuple[float, float]:
    """Pearson correlation over the masked pixels of the haematoxylin and of the eosin densities."""
    hp = hed_densities(pred) if hed_pred is None else hed_pred
    ht = hed_densities(target) if hed_target is None else hed_target
    return _pearson(hp[..., 0][mask], ht[..., 0][mask]), _pearson(hp[..., 1][mask], ht[..., 1][mask])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return math.nan
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    if a.std() < 1e-9 or b.std() < 1e-9:  # a flat image: correlation is undefined, not 0
        return math.nan
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))


# ---------------------------------------------------------------------------------------------
# Nuclei
# ---------------------------------------------------------------------------------------------
def label_nuclei(haematoxylin: np.ndarray, mask: np.ndarray, *, mpp: float,
                 cfg: NucleiConfig = NucleiConfig()) -> np.ndarray:
    """Nuclei of one image as an ``(H, W)`` int32 label image (0 background, 1..N nuclei).

    Otsu threshold over the tissue pixels of the smoothed haematoxylin density (its top 0.5 %
    capped, so that a few near-black pixels do not take the threshold), small objects
    removed, touching nuclei split by a watershed on the distance transform (seeds at least
    ``min_distance_um`` apart); watershed regions smaller than ``min_area_um2`` are dropped and the
    rest numbered consecutively.
    """
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    empty = np.zeros(mask.shape, np.int32)
    h = ndi.gaussian_filter(haematoxylin.astype(np.float32), cfg.smooth_um / mpp)
    vals = h[mask]
    if vals.size < 16 or float(vals.max() - vals.min()) < 1e-6:
        return empty
    # Otsu on values capped at their 99.5th percentile: a few near-black pixels (pigment, dust, a dark
    # speck of a generated image: densities 1.5 where nuclei reach 0.3) would otherwise take the
    # threshold for themselves and leave every nucleus below it
    vals = np.minimum(vals, np.float32(np.percentile(vals, 99.5)))
    t = float(threshold_otsu(vals))
    above, below = vals[vals > t], vals[vals <= t]
    if above.size == 0 or below.size == 0 or float(above.mean() - below.mean()) < cfg.min_contrast:
        return empty
    fg = (h > t) & mask
    min_px = max(1, round(cfg.min_area_um2 / mpp**2))
    labels, n = ndi.label(fg)
    if n == 0:
        return empty
    sizes = np.bincount(labels.ravel())
    fg &= (sizes >= min_px)[labels]
    dist = ndi.distance_transform_edt(fg)
    labels, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=max(1, round(cfg.min_distance_um / mpp)), labels=labels,
                           exclude_border=False)
    if len(peaks) == 0:
        return empty
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    seg = watershed(-dist, markers, mask=fg)
    areas = np.bincount(seg.ravel(), minlength=len(peaks) + 1)
    keep = areas >= min_px
    keep[0] = False
    relabel = np.zeros(len(areas), np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[seg]


def segment_nuclei(haematoxylin: np.ndarray, mask: np.ndarray, *, mpp: float,
                   cfg: NucleiConfig = NucleiConfig()) -> np.ndarray:
    """Nucleus centres ``(N, 2)`` as (x, y) pixels, from the haematoxylin density of one image.

    The centres of mass of :func:`label_nuclei`'s nuclei.
    """
    seg = label_nuclei(haematoxylin, mask, mpp=mpp, cfg=cfg)
    n = int(seg.max())
    if n == 0:
        return np.zeros((0, 2))
    yx = np.asarray(ndi.center_of_mass(np.ones_like(seg), seg, np.arange(1, n + 1)),
                    dtype=np.float64).reshape(-1, 2)
    return yx[:, ::-1].copy()


def match_points(pred_xy: np.ndarray, true_xy: np.ndarray, *, radius: float) -> int:
    """Number of one-to-one matches within ``radius`` (greedy: closest pairs first)."""
    from scipy.spatial import cKDTree

    if len(pred_xy) == 0 or len(true_xy) == 0:
        return 0
    pairs = cKDTree(pred_xy).sparse_distance_matrix(cKDTree(true_xy), radius, output_type="ndarray")
    if pairs.size == 0:
        return 0
    order = np.argsort(pairs["v"], kind="stable")
    used_p, used_t, n = set(), set(), 0
    for i, j in zip(pairs["i"][order], pairs["j"][order], strict=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            n += 1
    return n


def nuclei_agreement(hed_pred: np.ndarray, hed_target: np.ndarray, mask: np.ndarray, *, mpp: float,
                     cfg: NucleiConfig = NucleiConfig()) -> dict[str, float]:
    """Nuclei of the virtual and the real H&E: counts, count ratio (virtual / real) and detection F1."""
    p = segment_nuclei(hed_pred[..., 0], mask, mpp=mpp, cfg=cfg)
    t = segment_nuclei(hed_target[..., 0], mask, mpp=mpp, cfg=cfg)
    tp = match_points(p, t, radius=cfg.match_radius_um / mpp)
    denom = len(p) + len(t)
    return {"nuclei_real": float(len(t)), "nuclei_pred": float(len(p)),
            "nuclei_count_ratio": len(p) / len(t) if len(t) else math.nan,
            "nuclei_count_error": abs(math.log(len(p) / len(t))) if len(t) and len(p) else math.nan,
            "nuclei_f1": 2 * tp / denom if denom else math.nan}


# ---------------------------------------------------------------------------------------------
# Seams
# ---------------------------------------------------------------------------------------------
def seam_score(img: np.ndarray, mask: np.ndarray, *, borders_x: Sequence[int], borders_y: Sequence[int],
               period: int = 1) -> float:
    """Mean absolute step across window borders ÷ mean absolute step between other neighbours.

    Args:
        img: ``(H, W, C)`` stitched output.
        mask: ``(H, W)`` tissue; a step counts when both of its pixels are tissue.
        borders_x: columns ``b`` with a window border between pixel ``b-1`` and ``b`` (likewise rows).
        period: compare borders only with the steps at the same phase modulo ``period`` (borders
            must be multiples of it). A latent model's decoder upsamples ``f``× and leaves a weak
            ``f``-px grid everywhere; window borders lie on it, so ``period=f`` compares them with
            other latent-pixel boundaries rather than with the smoother steps inside latent pixels.

    Returns:
        The ratio (1.0: borders look like the rest; seams > 1), NaN without border steps on tissue.

    Raises:
        ValueError: a border that is not a multiple of ``period``.
    """
    if period < 1 or any(b % period for b in (*borders_x, *borders_y)):
        raise ValueError(f"seam_score: `borders_x` and `borders_y` must be multiples of `period` ({period}), "
                         "and `period` at least 1")
    x = img.astype(np.float32)
    dx = np.abs(x[:, 1:] - x[:, :-1]).mean(axis=2)  # (H, W-1): step between columns j and j+1
    dy = np.abs(x[1:] - x[:-1]).mean(axis=2)
    mx, my = mask[:, 1:] & mask[:, :-1], mask[1:] & mask[:-1]
    bx = np.zeros(dx.shape[1], bool)
    by = np.zeros(dy.shape[0], bool)
    bx[[b - 1 for b in borders_x if 0 < b < img.shape[1]]] = True
    by[[b - 1 for b in borders_y if 0 < b < img.shape[0]]] = True
    px = (np.arange(dx.shape[1]) + 1) % period == 0  # steps at the borders' phase
    py = (np.arange(dy.shape[0]) + 1) % period == 0
    across = np.concatenate([dx[:, bx][mx[:, bx]], dy[by][my[by]]])
    inside = np.concatenate([dx[:, px & ~bx][mx[:, px & ~bx]], dy[py & ~by][my[py & ~by]]])
    if across.size == 0 or inside.size == 0 or inside.mean() == 0:
        return math.nan
    return float(across.mean() / inside.mean())


# ---------------------------------------------------------------------------------------------
# One core
# ---------------------------------------------------------------------------------------------
def core_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, *, mpp: float,
                 nuclei: NucleiConfig = NucleiConfig(), hed_target: np.ndarray | None = None,
                 hed_pred: np.ndarray | None = None) -> dict[str, float]:
    """All per-core metrics of a virtual (``pred``) against the real H&E (``target``) on ``mask``.

    Args:
        pred, target: ``(H, W, 3)`` uint8 RGB of the same core, same frame.
        mask: ``(H, W)`` bool tissue mask.
        mpp: µm per pixel (nuclei sizes and the match radius are physical).
        hed_target: ``hed_densities(target)`` when already computed (shared by the methods).
        hed_pred: ``hed_densities(pred)`` when already computed.
    """
    if pred.shape != target.shape or mask.shape != target.shape[:2]:
        raise ValueError(f"core_metrics: shapes differ: `pred` {pred.shape}, `target` {target.shape}, "
                         f"`mask` {mask.shape}")
    hp = hed_densities(pred) if hed_pred is None else hed_pred
    ht = hed_densities(target) if hed_target is None else hed_target
    lw = lab_wasserstein(pred, target, mask)
    h_corr, e_corr = stain_correlation(pred, target, mask, hed_pred=hp, hed_target=ht)
    out = {"psnr": masked_psnr(pred, target, mask), "ssim": masked_ssim(pred, target, mask),
           "lab_w_L": lw[0], "lab_w_a": lw[1], "lab_w_b": lw[2], "lab_w": float(np.mean(lw)),
           "h_corr": h_corr, "e_corr": e_corr}
    out.update(nuclei_agreement(hp, ht, mask, mpp=mpp, cfg=nuclei))
    return out


# ---------------------------------------------------------------------------------------------
# Distribution metrics (FID/KID) from features of a local Inception TorchScript
# ---------------------------------------------------------------------------------------------
def inception_features(model, patches: np.ndarray, *, batch: int = 32, device: str = "cpu") -> np.ndarray:
    """``(N, H, W, 3)`` uint8 patches -> ``(N, D)`` features of a TorchScript Inception.

    The patches are resized to 299×299 (bilinear) and passed as float in [0, 255]; a module that
    takes ``return_features=True`` (NVIDIA's ``inception-2015-12-05.pt``) is called with it.
    """
    import torch

    feats = []
    with torch.no_grad():
        for i in range(0, len(patches), batch):
            x = torch.from_numpy(np.ascontiguousarray(patches[i : i + batch])).to(device)
            x = x.permute(0, 3, 1, 2).float()  # (b, 3, H, W) in [0, 255]
            x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            try:
                f = model(x, return_features=True)
            except (TypeError, RuntimeError):
                f = model(x)
            f = f[0] if isinstance(f, (tuple, list)) else f
            feats.append(f.reshape(f.shape[0], -1).float().cpu().numpy())
    return np.concatenate(feats).astype(np.float64)


def fid(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    from scipy import linalg

    mu_a, mu_b = feat_a.mean(0), feat_b.mean(0)
    ca, cb = np.cov(feat_a, rowvar=False), np.cov(feat_b, rowvar=False)
    covmean = np.real(linalg.sqrtm(ca @ cb))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def kid(feat_a: np.ndarray, feat_b: np.ndarray, *, subsets: int = 50, subset_size: int = 100, seed: int = 0
        ) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial
    kernel, mean and std over random subsets."""
    rng = np.random.default_rng(seed)
    d = feat_a.shape[1]
    m = min(subset_size, len(feat_a), len(feat_b))
    if m < 2:
        return math.nan, math.nan
    vals = []
    for _ in range(subsets):
        x = feat_a[rng.choice(len(feat_a), m, replace=False)]
        y = feat_b[rng.choice(len(feat_b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
    return float(np.mean(vals)), float(np.std(vals))


# ---------------------------------------------------------------------------------------------
# The trivial baseline: a per-pixel colour mapping fit on the train split
# ---------------------------------------------------------------------------------------------
class ColourMap:
    """Unstained pixel -> RGB, with no spatial context: what any model must beat.

    Each unstained channel is normalised by its 1st/99th percentile over the training pixels and
    quantised into ``bins``; a lookup table holds the mean H&E colour of the training pixels in each
    cell (1-3 channels). Cells no training pixel reached, and inputs of more channels, use a
    least-squares quadratic polynomial of the normalised channels.
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, bins: int, table: np.ndarray | None, coef: np.ndarray):
        self.low, self.high, self.bins, self.table, self.coef = low, high, bins, table, coef

    @classmethod
    def fit(cls, unstained: np.ndarray, stained: np.ndarray, *, bins: int = 32, max_pixels: int = 2_000_000,
            seed: int = 0) -> ColourMap:
        """Fits on paired tiles ``(N, H, W, C)`` and ``(N, H, W, 3)`` (a seeded pixel subsample)."""
        u = unstained.reshape(-1, unstained.shape[-1])
        s = stained.reshape(-1, 3)
        if u.shape[0] == 0:
            raise ValueError("ColourMap.fit: no training pixels")
        if u.shape[0] > max_pixels:
            idx = np.random.default_rng(seed).choice(u.shape[0], max_pixels, replace=False)
            u, s = u[idx], s[idx]
        u = u.astype(np.float64)
        low, high = np.percentile(u, 1, axis=0), np.percentile(u, 99, axis=0)
        high = np.where(high > low, high, low + 1)
        x = np.clip((u - low) / (high - low), 0, 1)
        coef, *_ = np.linalg.lstsq(_poly2(x), s.astype(np.float64), rcond=None)
        table = None
        if x.shape[1] <= 3:
            b = bins if x.shape[1] < 3 else min(bins, 16)
            cell = _cells(x, b)
            n = np.bincount(cell, minlength=b ** x.shape[1]).astype(np.float64)
            table = np.full((b ** x.shape[1], 3), np.nan)
            for c in range(3):
                sums = np.bincount(cell, weights=s[:, c].astype(np.float64), minlength=b ** x.shape[1])
                table[n > 0, c] = sums[n > 0] / n[n > 0]
            bins = b
        return cls(low, high, bins, table, coef)

    def apply(self, unstained: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` unstained -> ``(H, W, 3)`` uint8 RGB."""
        shape = unstained.shape[:-1]
        x = np.clip((unstained.reshape(-1, unstained.shape[-1]).astype(np.float64) - self.low)
                    / (self.high - self.low), 0, 1)
        out = _poly2(x) @ self.coef
        if self.table is not None:
            looked = self.table[_cells(x, self.bins)]
            ok = np.isfinite(looked[:, 0])
            out[ok] = looked[ok]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(*shape, 3)

    def describe(self) -> str:
        kind = f"{self.bins}-bin lookup per channel, quadratic fallback" if self.table is not None else "quadratic"
        return f"per-pixel colour map ({kind}) of {len(self.low)} normalised channel(s), fit on the train split"


def _cells(x: np.ndarray, bins: int) -> np.ndarray:
    q = np.minimum((x * bins).astype(np.int64), bins - 1)
    cell = np.zeros(len(x), np.int64)
    for c in range(x.shape[1]):
        cell = cell * bins + q[:, c]
    return cell


def _poly2(x: np.ndarray) -> np.ndarray:
    cols = [np.ones(len(x)), *(x[:, i] for i in range(x.shape[1]))]
    cols += [x[:, i] * x[:, j] for i in range(x.shape[1]) for j in range(i, x.shape[1])]
    return np.stack(cols, axis=1)
