"""Training state on disk: ``state.pt`` (model, EMA, optimiser, scheduler, step) for exact resumption.

The exported model (``model.safetensors`` + ``model.json``) is the model registry's
(:mod:`stainldm.models.runs`). ``state.pt`` is read with ``torch.load(weights_only=True)``: nothing is unpickled from a
user's file. Every write goes to a temporary name and is renamed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from stainldm.errors import CheckpointError, RunError
from stainldm.files import atomic_writer

_GB = 1e9
_SLACK = 16 * 2**20  # the zip container's headers and the pickled structure beside the tensors


def _size(n: float) -> str:
    return f"{n / _GB:.2f} GB" if n >= 0.1 * _GB else f"{n / 2**20:.1f} MiB"


def tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor in ``obj`` (nested dicts, lists and tuples): what writing it costs."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuses a checkpoint that cannot fit before any of it is written, so a full disk stops a run
    with the previous checkpoint whole instead of a half-written file and torch's zip error.

    Raises:
        RunError: ``folder``'s file system has less than ``needed`` bytes (plus slack) free.
    """
    free = shutil.disk_usage(folder).free
    if needed + _SLACK > free:
        raise RunError(f"{folder}: {what} needs {_size(needed + _SLACK)} but only {_size(free)} is free "
                       f"there; free space there and {_go_on(folder)}")


def _go_on(folder: Path) -> str:
    """How to go on after a checkpoint could not be written into ``folder``."""
    if (folder / "state.pt").is_file():
        return f"continue with `--resume {folder}` (its last checkpoint is intact)"
    return "start the run again (it had not checkpointed yet)"


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``state.pt`` (tensors, numbers, strings, nested dicts/lists only), atomically, streamed to
    disk (a multi-GB training state is not buffered in memory first).

    Raises:
        RunError: the write failed (disk full, file too large for the file system, folder gone);
            the previous ``state.pt``, if any, is untouched.
    """
    try:
        with atomic_writer(path) as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a short write as RuntimeError
        free = shutil.disk_usage(path.parent).free if path.parent.is_dir() else 0
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120]
        if "unexpected pos" in reason:  # torch's zip writer after a short write
            reason = "the file system took only part of it: disk full or a file-size limit"
        raise RunError(f"{path}: writing the training state ({_size(tensor_bytes(state))}) failed ({reason}; "
                       f"{_size(free)} free there); free space there and {_go_on(path.parent)}") from exc


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
