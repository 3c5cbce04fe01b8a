"""Weights on disk: ``model.safetensors`` + ``model.json`` (architecture, normalisation, scale),
and ``state.pt`` (optimizer, scheduler, EMA, step) for exact resumption.

Build, then load (timm's pattern): ``model = build_from_json(meta); load_weights(model, path)``.
Nothing is unpickled from a user's file: safetensors holds only tensors, and ``state.pt`` is read
with ``torch.load(weights_only=True)``. Every write goes to a temporary name and is renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stainldm.errors import CheckpointError
from stainldm.files import atomic_write_bytes, atomic_writer, sha256_file

MODEL_FORMAT = "stainldm-model/1"
KINDS = ("autoencoder", "ldm", "baseline")


def save_weights(module: nn.Module, path: Path) -> None:
    """``module``'s state dict as safetensors (contiguous CPU copies), atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(tensors))


def load_weights(module: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> None:
    """Loads safetensors weights into a built module.

    Raises:
        CheckpointError: missing or corrupt file, or weights of another architecture — the message
            names the first mismatching tensor.
    """
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        tensors = load(path.read_bytes())
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                              "the checkpoint is corrupt — copy it again or retrain") from None
    own = module.state_dict()
    for name, value in own.items():
        if name not in tensors:
            if strict:
                raise CheckpointError(f"{path}: has no tensor '{name}' that this model needs; the checkpoint is "
                                      "from another architecture or config")
            continue
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: tensor '{name}' has shape {tuple(tensors[name].shape)} but this model "
                                  f"expects {tuple(value.shape)}; the checkpoint is from another config")
    extra = [k for k in tensors if k not in own]
    if extra and strict:
        raise CheckpointError(f"{path}: has tensor '{extra[0]}' this model does not know; the checkpoint is from "
                              "another architecture")
    module.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=strict)


def write_model_json(path: Path, meta: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1).encode())


def read_model_json(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """Reads ``model.json`` (or the one inside a run folder) and checks its kind.

    Raises:
        CheckpointError: missing, not JSON, not a stainldm model, or of another kind.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; pass a training run folder (with model.json and "
                              "model.safetensors) or its model.json")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: not valid JSON; the checkpoint is corrupt") from None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a stainldm model description (format {fmt!r}, expected {MODEL_FORMAT})")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path}: is a {meta.get('kind')} checkpoint, but a {kind} checkpoint is needed here")
    return meta


def sha256(path: Path) -> str:
    """Hex SHA-256 of a checkpoint file (recorded in staining provenance)."""
    return sha256_file(path)


def save_state(path: Path, state: dict[str, Any]) -> None:
    """``state.pt`` (tensors, numbers, strings, nested dicts/lists only), atomically, streamed to
    disk (a multi-GB training state is not buffered in memory first)."""
    with atomic_writer(path) as fh:
        torch.save(state, fh)


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from (state.pt missing); the run never "
                              "reached its first checkpoint — start it again without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read the training state ({type(exc).__name__}); it is corrupt or "
                              "was not written by stainldm") from None
