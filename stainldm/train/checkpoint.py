"""Training state on disk: ``state.pt`` (model, EMA, optimiser, scheduler, step) for exact resumption.

The exported model (``model.safetensors`` + ``model.json``) is the model registry's
(:mod:`stainldm.models.runs`). ``state.pt`` is read with ``torch.load(weights_only=True)``: nothing is unpickled from a
user's file. Every write goes to a temporary name and is renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from stainldm.errors import CheckpointError
from stainldm.files import atomic_writer


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``state.pt`` (tensors, numbers, strings, nested dicts/lists only), atomically, streamed to
    disk (a multi-GB training state is not buffered in memory first)."""
    with atomic_writer(path) as fh:
        torch.save(state, fh)


def load_state(path: Path) -> dict[str, Any]:
    """Reads ``state.pt`` without unpickling objects (``weights_only``).

    Raises:
        CheckpointError: the file is missing (the run never reached a checkpoint) or unreadable.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from (state.pt missing); the run never "
                              "reached its first checkpoint — start it again without `resume`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for a damaged file
        raise CheckpointError(f"{path}: cannot read the training state ({type(exc).__name__}); it is corrupt or "
                              "was not written by stainldm") from exc
