"""Modality-robust images and similarity measures for registration (pure array maths).

``tissue_signal`` is positive on tissue in every modality; ``structure`` is its gradient magnitude,
shared across modalities even where intensities are inverted. Real pairs also hold structure that
only one side shows (DAB or pigment in the H&E, granules and debris in autofluorescence, dust):
``robust_pair`` clips both structure images, so no edge outweighs a strong nuclear edge, and
removes "one-sided" structure: strong in one image with nothing comparable within a few pixels in
the other. ``robust_ncc`` is the NCC of what is left; every stage check uses it.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from stainldm.errors import InputError
from stainldm.wsi.tissue import guess_modality


def tissue_signal(img: np.ndarray, modality: str = "auto") -> np.ndarray:
    """A float32 image that is ~0 on glass and positive on tissue, whatever the modality."""
    img = img[..., None] if img.ndim == 2 else img
    if modality == "auto":
        modality = guess_modality(img)
    if modality == "he":
        rgb = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        return np.clip(-np.log10(np.clip(rgb, 1 / 255, 1)).mean(axis=2), 0, 2).astype(np.float32)
    if modality == "brightfield":
        gray = img.astype(np.float32).mean(axis=2)
        glass = float(np.percentile(gray, 95)) or 1.0
        return np.clip(1 - gray / glass, 0, 1).astype(np.float32) * 10
    if modality == "fluorescence":
        x = img.astype(np.float32)
        out = np.zeros(x.shape[:2], np.float32)
        for c in range(x.shape[2]):
            lo, hi = np.percentile(x[..., c], [1, 99.5])
            out += np.clip((x[..., c] - lo) / max(hi - lo, 1e-6), 0, 1.5)
        return out / x.shape[2]
    raise InputError(f"unknown modality '{modality}' for registration; use auto, he, brightfield or fluorescence")


def structure(signal: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gradient magnitude of the smoothed signal: sign-free edges shared across modalities."""
    s = cv2.GaussianBlur(signal.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(s, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(s, cv2.CV_32F, 0, 1, ksize=3)
    g = np.sqrt(gx * gx + gy * gy)
    scale = float(np.percentile(g, 99)) or 1.0
    return np.clip(g / scale, 0, 2)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two images (optionally within a mask)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a.astype(np.float32, copy=False).ravel()
    b = b.astype(np.float32, copy=False).ravel()
    a = a - a.mean(dtype=np.float64).astype(np.float32)
    b = b - b.mean(dtype=np.float64).astype(np.float32)
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / den if den > 0 else 0.0


def block_ncc(a: np.ndarray, b: np.ndarray, keep: np.ndarray, block: int) -> np.ndarray:
    """NCC of ``a`` and ``b`` over ``keep`` in each ``block``² block: ``(ceil(H/block), ceil(W/block))``,
    0 where a block has no variance."""
    h, w = a.shape
    ph, pw = -h % block, -w % block
    k = np.pad(keep, ((0, ph), (0, pw))).astype(np.float64)
    a, b = (np.pad(x.astype(np.float64), ((0, ph), (0, pw))) * k for x in (a, b))
    shape = ((h + ph) // block, block, (w + pw) // block, block)

    def s(x: np.ndarray) -> np.ndarray:
        return x.reshape(shape).sum(axis=(1, 3))

    n = np.maximum(s(k), 1)
    sa, sb = s(a), s(b)
    cov = s(a * b) - sa * sb / n
    var = (s(a * a) - sa * sa / n) * (s(b * b) - sb * sb / n)
    return np.where(var > 1e-12, cov / np.sqrt(np.maximum(var, 1e-24)), 0.0)


def one_sided(a: np.ndarray, b: np.ndarray, *, radius: int = 3, high: float = 0.6,
              ratio: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of strong structure in one image with nothing comparable near them in the other.

    Args:
        a, b: structure images of the same shape (as :func:`structure` returns: ~1 on strong edges).
        radius: pixels searched around each pixel in the other image: at least the misalignment
            still expected, so shared edges a little apart are not taken for one-sided ones.
        high: least structure that counts as strong.
        ratio: strong structure is one-sided where it is ``ratio`` times the other's local maximum.

    Returns:
        bool masks of what only ``a`` shows and what only ``b`` shows, each grown by ``radius`` so
        the whole one-sided edge band is covered.
    """
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    near_a, near_b = cv2.dilate(a32, k), cv2.dilate(b32, k)
    lone_a = ((a32 > high) & (a32 > ratio * near_b)).astype(np.uint8)
    lone_b = ((b32 > high) & (b32 > ratio * near_a)).astype(np.uint8)
    return cv2.dilate(lone_a, k).astype(bool), cv2.dilate(lone_b, k).astype(bool)


def robust_pair(a: np.ndarray, b: np.ndarray, *, radius: int = 3,
                clip: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both structure images clipped at ``clip``, each with its own one-sided structure set to 0,
    and the mask of the pixels neither marks (``keep``).

    Only the side that shows a structure loses it: zeroing the same pixels in both would add a
    shared pattern that pulls every estimate towards no motion.
    """
    lone_a, lone_b = one_sided(a, b, radius=radius)
    a2 = np.where(lone_a, 0, np.minimum(a, clip)).astype(np.float32)
    b2 = np.where(lone_b, 0, np.minimum(b, clip)).astype(np.float32)
    return a2, b2, ~(lone_a | lone_b)


def robust_ncc(a: np.ndarray, b: np.ndarray, *, radius: int = 3) -> float:
    """NCC of clipped structure images outside one-sided structure (see :func:`robust_pair`)."""
    a2, b2, keep = robust_pair(a, b, radius=radius)
    if keep.sum() < 16:
        return 0.0
    return ncc(a2, b2, keep)
