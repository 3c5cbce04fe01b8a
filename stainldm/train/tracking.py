"""Experiment tracking: the only module that imports wandb. Offline by default, never required."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


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
