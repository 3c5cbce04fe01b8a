"""The one table of evaluation metrics, the typed per-core row, and ``metrics.csv``.

Every consumer reads :data:`METRICS`: the CSV columns, the statistics (which metrics get a
bootstrap CI, which are ranked and in which direction), the figures, the HTML tables and the
demo's summary lines. Adding a metric is one line here (and its maths in ``metrics.py``).

    rows = [CoreRow.make("LDM", "s1", "A1", "ok", tissue_px=1200, values=core_metrics(...)), ...]
    write_metrics_csv(out / "metrics.csv", rows)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from stainldm.files import atomic_write_csv


@dataclass(frozen=True)
class Metric:
    """One per-core metric and how every output shows it.

    Attributes:
        name: key in :class:`CoreRow` values, ``metrics.csv`` and ``metrics.json``.
        label: the report's label (Unicode, with the unit where it helps: ``PSNR (dB)``).
        plain: an ASCII label for terminals (the demo's summary lines).
        better: ``"higher"`` or ``"lower"``; None when neither is (best at ``target``, or a count).
        target: the best value when it is neither the highest nor the lowest (``1.0`` for ratios).
        unit: the unit the terminal summary appends (``"dB"``), or ``""``.
        digits: decimals in the terminal summary, None where it is not shown there.
        csv_column: position among the metric columns of ``metrics.csv``, None when not written.
        shown: a column of the report's summary and per-core tables (and a figure panel).
        ranked: counted in the mean rank and compared pairwise (wins / loses). A metric best at
            ``target`` ranks by its distance from it, ``|log(value / target)|`` (a ratio of 0.8 is as far
            from 1 as one of 1.25).
        compared: compared pairwise (wins / loses) without counting in the mean rank.
        group: the report's table it belongs to: ``fidelity`` (does it match this real H&E?) or
            ``realism`` (does it have the detail of real H&E?).
        plotted: a panel of the distribution and per-core figures.
        ci: gets a bootstrap CI per method in the summary (``metrics.json``).
        summary: one of the demo's summary numbers.
    """

    name: str
    label: str
    plain: str
    better: str | None
    target: float | None = None
    unit: str = ""
    digits: int | None = None
    csv_column: int | None = None
    shown: bool = False
    ranked: bool = False
    compared: bool = False
    group: str = "fidelity"
    plotted: bool = False
    ci: bool = False
    summary: bool = False

    @property
    def csv(self) -> bool:
        """Whether ``metrics.csv`` has a column for it."""
        return self.csv_column is not None

    @property
    def higher_is_better(self) -> bool:
        """Direction for ranking and verdicts; only meaningful when ``better`` is set."""
        return self.better == "higher"

    @property
    def by_distance(self) -> bool:
        """Whether ranks and pairwise verdicts use the distance from ``target`` (no direction of its own)."""
        return self.better is None and self.target is not None

    def rank_value(self, value: float) -> float:
        """The value ranks and pairwise verdicts compare: ``|log(value / target)|`` for a metric best at
        ``target`` (lower is better; NaN when not positive), the value itself otherwise."""
        if not self.by_distance:
            return value
        return abs(math.log(value / self.target)) if math.isfinite(value) and value > 0 else math.nan

    @property
    def rank_higher_is_better(self) -> bool:
        """Direction of :meth:`rank_value` (a distance from the target: lower)."""
        return False if self.by_distance else self.higher_is_better

    @property
    def direction(self) -> str:
        """What the report prints under the label: ``higher``, ``lower``, ``→ 1`` or nothing."""
        if self.better is not None:
            return self.better
        return f"→ {self.target:g}" if self.target is not None else ""

    def format_ci(self, mean: float, lo: float, hi: float) -> str:
        """``PSNR 21.35 [20.10, 22.61] dB``: the terminal form with this metric's digits and unit."""
        d = self.digits if self.digits is not None else 3
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.plain} {mean:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]{unit}"


# Display order (the report's tables and figures), then the metrics only metrics.csv holds. The CSV's
# own column order is ``csv_column`` (it is a file format: it does not follow the display order).
_SHOWN = dict(shown=True, plotted=True, ci=True)
METRICS: tuple[Metric, ...] = (
    Metric("psnr", "PSNR (dB)", "PSNR", "higher", unit="dB", digits=2, csv_column=0, ranked=True, summary=True,
           **_SHOWN),
    Metric("ssim", "SSIM", "SSIM", "higher", digits=3, csv_column=1, ranked=True, summary=True, **_SHOWN),
    Metric("lab_w", "CIELAB W₁", "CIELAB W1", "lower", digits=2, csv_column=5, ranked=True, summary=True, **_SHOWN),
    Metric("h_corr", "H corr", "H corr", "higher", csv_column=6, ranked=True, **_SHOWN),
    Metric("e_corr", "E corr", "E corr", "higher", csv_column=7, ranked=True, **_SHOWN),
    Metric("nuclei_f1", "nuclei F1", "nuclei F1", "higher", csv_column=12, ranked=True, **_SHOWN),
    Metric("nuclei_count_ratio", "nuclei count ratio", "nuclei count ratio", None, target=1.0, csv_column=10,
           **_SHOWN),
    Metric("seam_score", "seam score", "seam score", None, target=1.0, csv_column=13, **_SHOWN),
    Metric("lab_w_L", "CIELAB W₁ L*", "CIELAB W1 L*", "lower", csv_column=2, ci=True),
    Metric("lab_w_a", "CIELAB W₁ a*", "CIELAB W1 a*", "lower", csv_column=3, ci=True),
    Metric("lab_w_b", "CIELAB W₁ b*", "CIELAB W1 b*", "lower", csv_column=4, ci=True),
    Metric("nuclei_real", "nuclei (real)", "nuclei (real)", None, csv_column=8),
    Metric("nuclei_pred", "nuclei (virtual)", "nuclei (virtual)", None, csv_column=9),
    Metric("nuclei_count_error", "nuclei count error", "nuclei count error", "lower", csv_column=11, ci=True),
    # Realism (issue 14, stainldm.eval.realism): columns appended after the fidelity ones, so readers of the
    # older metrics.csv keep working.
    Metric("sharpness_ratio", "sharpness ratio", "sharpness", None, target=1.0, digits=2, csv_column=14,
           ranked=True, summary=True, group="realism", **_SHOWN),
    Metric("spectrum_tissue", "spectrum 16–64 µm", "spectrum 16-64 um", None, target=1.0, csv_column=15,
           compared=True, group="realism", **_SHOWN),
    Metric("spectrum_nuclei", "spectrum 4–16 µm", "spectrum 4-16 um", None, target=1.0, csv_column=16,
           compared=True, group="realism", **_SHOWN),
    Metric("spectrum_chromatin", "spectrum 1–4 µm", "spectrum 1-4 um", None, target=1.0, csv_column=17,
           compared=True, group="realism", **_SHOWN),
    Metric("nuclei_area_w1", "nuclei area W₁ (µm²)", "nuclei area W1", "lower", unit="µm²", csv_column=18,
           ranked=True, group="realism", **_SHOWN),
    Metric("nuclei_eccentricity_w1", "nuclei eccentricity W₁", "nuclei eccentricity W1", "lower", csv_column=19,
           compared=True, group="realism", **_SHOWN),
    Metric("nuclei_solidity_w1", "nuclei solidity W₁", "nuclei solidity W1", "lower", csv_column=20,
           compared=True, group="realism", **_SHOWN),
    Metric("sharpness_real", "sharpness (real)", "sharpness (real)", None, csv_column=21, group="realism"),
    Metric("sharpness_pred", "sharpness (virtual)", "sharpness (virtual)", None, csv_column=22, group="realism"),
)
BY_NAME: Mapping[str, Metric] = MappingProxyType({m.name: m for m in METRICS})
CSV_HEADER = ("method", "slide_id", "core", "status", "tissue_px")


def metric(name: str) -> Metric:
    """The :class:`Metric` called ``name``.

    Raises:
        KeyError: no such metric.
    """
    return BY_NAME[name]


def csv_metrics() -> tuple[str, ...]:
    """The metric columns of ``metrics.csv``, in file order."""
    return tuple(m.name for m in sorted((m for m in METRICS if m.csv), key=lambda m: m.csv_column))


def shown() -> tuple[str, ...]:
    """The report's summary / per-core table columns, in display order."""
    return tuple(m.name for m in METRICS if m.shown)


def ranked() -> tuple[str, ...]:
    """The metrics the mean rank and the pairwise verdicts use, in display order."""
    return tuple(m.name for m in METRICS if m.ranked)


def compared() -> tuple[str, ...]:
    """The metrics of the pairwise verdicts (the ranked ones and those only compared), in display order."""
    return tuple(m.name for m in METRICS if m.ranked or m.compared)


def shown_in(group: str) -> tuple[str, ...]:
    """The shown metrics of one report table (``fidelity`` or ``realism``), in display order."""
    return tuple(m.name for m in METRICS if m.shown and m.group == group)


def plotted() -> tuple[str, ...]:
    """The panels of the distribution and per-core figures, in display order."""
    return tuple(m.name for m in METRICS if m.plotted)


def with_ci() -> tuple[str, ...]:
    """The metrics that get a bootstrap CI per method, sorted by name (``metrics.json``'s key order)."""
    return tuple(sorted(m.name for m in METRICS if m.ci))


def summary() -> tuple[Metric, ...]:
    """The demo's summary metrics (PSNR, SSIM, CIELAB W1, sharpness ratio), with their terminal digits and units."""
    return tuple(m for m in METRICS if m.summary)


@dataclass(frozen=True)
class CoreRow:
    """One method on one core: what the evaluation measured (one line of ``metrics.csv``).

    Attributes:
        status: ``ok``, ``missing: <why>`` or ``error: <message>``; metrics are NaN unless ``ok``.
        tissue_px: tissue pixels of the core the metrics were computed on (0 when unknown).
        values: metric name -> value for every ``metrics.csv`` metric (NaN when not computed).
    """

    method: str
    slide_id: str
    core: str
    status: str
    tissue_px: int = 0
    values: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def make(cls, method: str, slide_id: str, core: str, status: str, *, tissue_px: int = 0,
             values: Mapping[str, float] | None = None) -> CoreRow:
        """A row holding every CSV metric: those in ``values`` (others ignored), NaN for the rest."""
        given = values or {}
        return cls(method, slide_id, core, status, int(tissue_px),
                   {k: given.get(k, math.nan) for k in csv_metrics()})

    @property
    def ok(self) -> bool:
        """Whether the metrics were computed."""
        return self.status == "ok"

    @property
    def key(self) -> tuple[str, str]:
        """``(slide_id, core)``: the core, whatever the method."""
        return self.slide_id, self.core

    def value(self, name: str) -> float:
        """The metric ``name``, NaN when the row does not hold it."""
        return self.values.get(name, math.nan)


def write_metrics_csv(path: Path, rows: Sequence[CoreRow]) -> None:
    """Writes ``metrics.csv``: one line per row, metrics to 6 significant digits, empty when not finite."""
    names = csv_metrics()
    atomic_write_csv(path, [[*CSV_HEADER, *names],
                            *([r.method, r.slide_id, r.core, r.status, r.tissue_px,
                               *("" if not math.isfinite(v) else f"{v:.6g}" for v in map(r.value, names))]
                              for r in rows)])
