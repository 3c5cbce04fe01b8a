"""The TMA layout of a synthetic slide: a grid of round cores on glass, and each core's shape.

QuPath labels ``A1, A2, … B1, …``; some positions are empty. Cores are placed with a little
jitter and cut with a slightly irregular edge (a few low Fourier modes of the radius), as a TMA
needle does. Pure maths: random draws come from the generator passed in, in a fixed order.
Coordinates are level-0 pixels of the unstained slide, pixel ``(i, j)`` centred at ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stainldm.errors import ConfigError


@dataclass(frozen=True)
class GridConfig:
    """TMA layout in the unstained slide.

    Attributes:
        rows, cols: grid size (rows ≤ 26; labelled A.., 1..).
        missing: number of empty grid positions (drawn at random).
        test_cores: number of present cores cut from the test part of the source.
        core_diameter_um, gap_um: core size and the glass between neighbouring cores.
        margin_um: glass around the grid; None means one core diameter.
        jitter_um: maximum random offset of each core from its grid position.
        edge_irregularity: maximum relative deviation of the core edge from a circle.
    """

    rows: int = 3
    cols: int = 4
    missing: int = 1
    test_cores: int = 3
    core_diameter_um: float = 350.0
    gap_um: float = 100.0
    margin_um: float | None = None
    jitter_um: float = 10.0
    edge_irregularity: float = 0.03

    def __post_init__(self) -> None:
        if not 1 <= self.rows <= 26 or self.cols < 1:
            raise ConfigError(f"grid.rows ({self.rows}) must be 1-26 and grid.cols ({self.cols}) at least 1")
        present = self.rows * self.cols - self.missing
        if self.missing < 0 or present < 2:
            raise ConfigError(f"grid.missing ({self.missing}) must leave at least 2 of the "
                              f"{self.rows * self.cols} positions filled")
        if not 1 <= self.test_cores < present:
            raise ConfigError(f"grid.test_cores ({self.test_cores}) must be between 1 and {present - 1} "
                              f"(the {present} present cores need at least one train core)")
        if self.core_diameter_um <= 0 or self.gap_um < 0 or (self.margin_um is not None and self.margin_um < 0):
            raise ConfigError("grid.core_diameter_um must be positive, grid.gap_um and grid.margin_um not negative")
        if not 0 <= self.jitter_um <= self.gap_um / 4:
            raise ConfigError(f"grid.jitter_um ({self.jitter_um}) must be between 0 and a quarter of "
                              f"grid.gap_um ({self.gap_um / 4:g}) so cores never touch")
        if not 0 <= self.edge_irregularity <= 0.2:
            raise ConfigError(f"grid.edge_irregularity ({self.edge_irregularity}) must be between 0 and 0.2")


@dataclass
class Core:
    """One present core.

    Attributes:
        id: QuPath label (``"A1"``); row, col: 0-based grid indices.
        center_xy: ``(2,)`` centre in the unstained frame.
        split: ``"train"`` or ``"test"``.
        rotation_deg, flip: how the source disc is turned (flip mirrors x first).
        thickness: section thickness factor.
        edge: ``(k, 3)`` rows of (mode, relative amplitude, phase) of the irregular edge.
        source_center_xy: ``(2,)`` centre of its disc in the source's level-0 pixels (set by the source plan).
    """

    id: str
    row: int
    col: int
    center_xy: np.ndarray
    split: str = "train"
    rotation_deg: float = 0.0
    flip: bool = False
    thickness: float = 1.0
    edge: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    source_center_xy: np.ndarray = field(default_factory=lambda: np.zeros(2))


@dataclass
class Layout:
    """The grid as placed.

    Attributes:
        size_wh: the unstained canvas.
        radius_px: nominal core radius.
        reach_px: largest distance of any core pixel from its centre (edge + antialiasing).
        margin_px: glass around the grid.
        cores: the present cores, in raster order.
        missing: labels of the empty positions.
    """

    size_wh: tuple[int, int]
    radius_px: float
    reach_px: float
    margin_px: float
    cores: list[Core]
    missing: list[str]


def plan_layout(grid: GridConfig, *, mpp: float, thickness_variation: float, rng: np.random.Generator) -> Layout:
    """Places the grid: which positions are empty or test cores, and each core's jitter, turn and edge.

    Args:
        grid: the layout settings.
        mpp: µm per pixel of the unstained slide.
        thickness_variation: thickness factors are drawn from ``1 ± thickness_variation``.
        rng: the source of every random draw.

    Returns:
        the layout; cores' ``source_center_xy`` are still unset.
    """
    d = grid.core_diameter_um / mpp
    gap = grid.gap_um / mpp
    margin = (grid.core_diameter_um if grid.margin_um is None else grid.margin_um) / mpp
    size_wh = (math.ceil(2 * margin + grid.cols * d + (grid.cols - 1) * gap),
               math.ceil(2 * margin + grid.rows * d + (grid.rows - 1) * gap))
    n = grid.rows * grid.cols
    missing = set(rng.choice(n, size=grid.missing, replace=False).tolist())
    present = [i for i in range(n) if i not in missing]
    test = set(rng.choice(present, size=grid.test_cores, replace=False).tolist())
    cores, missing_ids = [], []
    jitter = grid.jitter_um / mpp
    for i in range(n):
        r, c = divmod(i, grid.cols)
        cid = f"{chr(ord('A') + r)}{c + 1}"
        if i in missing:
            missing_ids.append(cid)
            continue
        center = np.array([margin + d / 2 + c * (d + gap), margin + d / 2 + r * (d + gap)])
        center += rng.uniform(-jitter, jitter, size=2)
        k = np.arange(2, 6)
        amp = rng.uniform(-1, 1, size=k.size) / k
        amp *= grid.edge_irregularity / max(np.abs(amp).sum(), 1e-9)
        cores.append(Core(
            id=cid, row=r, col=c, center_xy=center, split="test" if i in test else "train",
            rotation_deg=float(rng.uniform(0, 360)), flip=bool(rng.integers(2)),
            thickness=float(rng.uniform(1 - thickness_variation, 1 + thickness_variation)),
            edge=np.column_stack([k, amp, rng.uniform(0, 2 * np.pi, size=k.size)]),
        ))
    return Layout(size_wh=size_wh, radius_px=d / 2, reach_px=d / 2 * (1 + grid.edge_irregularity) + 1,
                  margin_px=margin, cores=cores, missing=missing_ids)


def core_matrix(core: Core) -> np.ndarray:
    """The ``(2, 2)`` linear map of unstained offsets to source offsets (at output mpp): rotation after flip."""
    t = math.radians(core.rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return rot @ np.diag([-1.0 if core.flip else 1.0, 1.0])


def core_alpha(core: Core, radius: float, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Coverage of the pixels of a box by the core's irregular disc (antialiased).

    Args:
        core: the core (its centre and edge).
        radius: nominal radius, px.
        x0, y0, w, h: the box, unstained level-0 pixels.

    Returns:
        ``(h, w)`` float32 in ``[0, 1]``.
    """
    dx = (np.arange(w) + x0 + 0.5 - core.center_xy[0]).astype(np.float32)
    dy = (np.arange(h)[:, None] + y0 + 0.5 - core.center_xy[1]).astype(np.float32)
    rho = np.hypot(dx, dy)
    n = 4096  # edge radius tabulated over the angle; smooth, so nearest sample is exact enough
    phi = np.linspace(-np.pi, np.pi, n + 1)
    edge = np.ones(n + 1)
    for k, a, ph in core.edge:
        edge += a * np.cos(k * phi + ph)
    idx = np.rint((np.arctan2(dy, dx) + np.pi) * (n / (2 * np.pi))).astype(np.intp)
    return np.clip((radius * edge.astype(np.float32))[idx] - rho + 0.5, 0.0, 1.0)
