"""Experiment tracking: a run's ``metrics.csv``, and wandb (the only module that imports it; offline
by default, never required)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stainldm.files import atomic_write_csv

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["step", "loss", "lr", "tiles_per_s", "val_psnr", "val_ssim"]


class Tracker:
    """Logs scalars and images to wandb (``online``/``offline``) or nowhere (``disabled``)."""

    def __init__(self, *, mode: str, run_dir: Path, config: dict[str, Any], name: str, enabled: bool = True):
        self._run = None
        if mode == "disabled" or not enabled:
            return
        import wandb

        self._wandb = wandb
        self._run = wandb.init(project="stainldm", name=name, dir=str(run_dir), mode=mode, config=config,
                               reinit="finish_previous")

    def log(self, values: dict[str, float], *, step: int) -> None:
        if self._run is not None:
            self._run.log(values, step=step)

    def image(self, key: str, image: np.ndarray, *, step: int) -> None:
        if self._run is not None:
            self._run.log({key: self._wandb.Image(image)}, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


# ---------------------------------------------------------------------------------------------
# metrics.csv: one row per logged step, columns METRIC_COLUMNS
# ---------------------------------------------------------------------------------------------
def start_metrics(path: Path) -> None:
    """A new ``metrics.csv`` holding only the header."""
    atomic_write_csv(path, [METRIC_COLUMNS])


def append_metrics(path: Path, values: dict[str, Any]) -> None:
    """Adds one row (``values`` by column; a missing one is left empty), rewriting the file
    atomically: it holds one short row per logged step, and a crash must not leave half a row."""
    rows = _read_rows(path) if path.is_file() else []
    atomic_write_csv(path, [*rows, [_fmt(values.get(k)) for k in METRIC_COLUMNS]])


def truncate_metrics(path: Path, step: int) -> None:
    """Drops rows logged after ``step``, the checkpoint being resumed (they will be logged again)."""
    if not path.is_file():
        return
    rows = _read_rows(path)
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    atomic_write_csv(path, keep)


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
