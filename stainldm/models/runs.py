"""The model registry: build any kind of model from its config, and load any run folder.

A run folder holds ``model.json`` (kind, architecture, input statistics, latent scale) beside
``model.safetensors`` (the exported EMA weights); an ldm run also carries the autoencoder it was
trained on (``autoencoder.safetensors``), so that it stains on its own. Build, then load (timm's
pattern)::

    model = build_model("baseline", BaselineConfig(), in_channels=2)
    load_weights(model, "runs/baseline/model.safetensors")

    run = load_run("runs/ldm", device="cuda")      # both steps, for any kind
    run.model, run.autoencoder, run.meta

Training (:mod:`stainldm.train`) and staining (:mod:`stainldm.inference`) both build and load
through this module. Nothing is unpickled: safetensors holds only tensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stainldm.errors import CheckpointError, ConfigError
from stainldm.files import atomic_write_bytes
from stainldm.models.autoencoder import ENCODER_PARTS, AutoencoderConfig, architecture_diff, build_autoencoder
from stainldm.models.baseline import BaselineConfig, BaselineUNet
from stainldm.models.ldm import LatentDiffusion, LDMConfig

MODEL_FORMAT = "stainldm-model/1"
KINDS = ("autoencoder", "ldm", "baseline")
_CONFIGS: dict[str, type] = {"autoencoder": AutoencoderConfig, "ldm": LDMConfig, "baseline": BaselineConfig}

ModelConfig = AutoencoderConfig | LDMConfig | BaselineConfig


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
def build_model(kind: str, cfg: ModelConfig, *, in_channels: int | None = None, latent_channels: int | None = None,
                downsampling: int | None = None) -> nn.Module:
    """A freshly initialised model of ``kind`` (the global torch seed draws its weights).

    Args:
        kind: ``autoencoder``, ``ldm`` or ``baseline``.
        cfg: that kind's config section (:class:`AutoencoderConfig`, :class:`LDMConfig` or
            :class:`BaselineConfig`).
        in_channels: unstained input channels (ldm and baseline).
        latent_channels, downsampling: the autoencoder's latent (ldm only).

    Raises:
        ConfigError: an unknown ``kind``.
    """
    if kind == "autoencoder":
        return build_autoencoder(cfg)
    if kind == "ldm":
        return LatentDiffusion(cfg, in_channels=in_channels, latent_channels=latent_channels, downsampling=downsampling)
    if kind == "baseline":
        return BaselineUNet(cfg, in_channels=in_channels)
    raise ConfigError(f"unknown model kind '{kind}'; use autoencoder, ldm or baseline")


def model_config(kind: str, section: dict[str, Any] | None) -> ModelConfig:
    """The config dataclass of ``kind`` from its plain form (``model.json``'s ``config``).

    Raises:
        ConfigError: an unknown ``kind``, or a key or value the config does not take.
    """
    if kind not in _CONFIGS:
        raise ConfigError(f"unknown model kind '{kind}'; use autoencoder, ldm or baseline")
    from stainldm.config import from_dict

    return from_dict(_CONFIGS[kind], section, where=kind)


def build_from_meta(meta: dict[str, Any]) -> nn.Module:
    """The (untrained) model a ``model.json`` describes: its kind, config and input/latent sizes."""
    kind = meta["kind"]
    cfg = model_config(kind, meta["config"])
    if kind == "ldm":
        return build_model(kind, cfg, in_channels=int(meta["in_channels"]),
                           latent_channels=int(meta["latent_channels"]), downsampling=int(meta["downsampling"]))
    return build_model(kind, cfg, in_channels=int(meta["in_channels"]) if kind == "baseline" else None)


# ---------------------------------------------------------------------------------------------
# Weights and model.json
# ---------------------------------------------------------------------------------------------
def save_weights(module: nn.Module, path: Path) -> None:
    """``module``'s state dict as safetensors (contiguous CPU copies), atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(tensors))


def load_weights(module: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> None:
    """Loads safetensors weights into a built module.

    Args:
        module: the built model (:func:`build_model`).
        path: a ``.safetensors`` file.
        strict: refuse tensors the model lacks or does not know; otherwise load what matches.

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
    except Exception as exc:  # safetensors raises its own error types, and OSError/ValueError on bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc}); "
                              "the checkpoint is corrupt — copy it again or retrain") from exc
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
    """``model.json``: ``meta`` under this format's tag, atomically."""
    atomic_write_bytes(path, json.dumps({"format": MODEL_FORMAT, **meta}, indent=1).encode())


def read_model_json(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """Reads ``model.json`` (or the one inside a run folder) and checks its kind.

    Args:
        path: a run folder or its ``model.json``.
        kind: the kind the caller needs (any when None).

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
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON; the checkpoint is corrupt") from exc
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a stainldm model description (format {fmt!r}, expected {MODEL_FORMAT})")
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{path}: is a {meta.get('kind')} checkpoint, but a {kind} checkpoint is needed here")
    return meta


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """A loaded run folder: its models in eval mode, on the device asked for.

    Attributes:
        kind: ``autoencoder``, ``ldm`` or ``baseline``.
        meta: the parsed ``model.json``.
        folder: the run folder.
        model: the exported (EMA) model.
        autoencoder: an ldm's autoencoder (from ``autoencoder.safetensors``); None for other kinds.
    """

    kind: str
    meta: dict[str, Any]
    folder: Path
    model: nn.Module
    autoencoder: nn.Module | None = None


def load_run(path: str | os.PathLike, *, kind: str | None = None, device: torch.device | str = "cpu") -> Run:
    """Builds and loads the model(s) of a run folder (or its ``model.json``).

    Args:
        path: a run folder or its ``model.json``.
        kind: the kind the caller needs (any when None).
        device: where the models go.

    Raises:
        CheckpointError: a missing or corrupt file, weights that do not fit the description, a kind
            other than ``kind``, or a kind stainldm does not know.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = read_model_json(path, kind=kind)
    found = meta.get("kind")
    if found not in KINDS:
        raise CheckpointError(f"{folder}: is a {found} checkpoint; stainldm knows {', '.join(KINDS)} runs")
    model = build_from_meta(meta)
    load_weights(model, folder / "model.safetensors")
    autoencoder = None
    if found == "ldm":  # the autoencoder travels with the ldm, described inside its model.json
        autoencoder = _load_autoencoder(meta["autoencoder"], folder / "autoencoder.safetensors").to(device)
    return Run(found, meta, folder, model.eval().to(device), autoencoder)


#: the entries of an autoencoder's model.json that an ldm carries under its own ``autoencoder``
AUTOENCODER_META = ("config", "latent_channels", "downsampling", "latent_scale")


def autoencoder_in(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """The trained autoencoder a folder holds: an autoencoder run's own, or the one an ldm carries.

    Args:
        path: an autoencoder run folder, an ldm run or checkpoint folder, or its ``model.json``.

    Returns:
        its ``model.json`` entries (at least :data:`AUTOENCODER_META`) and its weights file.

    Raises:
        CheckpointError: missing or corrupt ``model.json``, a kind that holds no autoencoder, or an
            autoencoder without a latent scale (its training never reached a checkpoint).
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = read_model_json(path)
    kind = meta.get("kind")
    if kind == "autoencoder":
        found, weights = meta, folder / "model.safetensors"
    elif kind == "ldm" and isinstance(meta.get("autoencoder"), dict):
        found, weights = meta["autoencoder"], folder / "autoencoder.safetensors"
    else:
        raise CheckpointError(f"{folder}: is a {kind} checkpoint, which holds no autoencoder; pass an autoencoder "
                              "run or an ldm run (it carries its autoencoder)")
    if not found.get("latent_scale"):
        raise CheckpointError(f"{folder}: the autoencoder has no latent_scale in model.json; finish its training")
    return found, weights


def load_autoencoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A trained autoencoder (eval mode, frozen) and its ``model.json`` entries, for training an ldm on
    it: an autoencoder run's, or the one an ldm run or checkpoint carries (:func:`autoencoder_in`).

    Raises:
        CheckpointError: the folder holds no autoencoder, its files are missing or corrupt, or it has
            no latent scale yet (its training never reached a checkpoint's measurement).
    """
    meta, weights = autoencoder_in(path)
    return _load_autoencoder(meta, weights).to(device).requires_grad_(False), meta


def _load_autoencoder(meta: dict[str, Any], weights: Path) -> nn.Module:
    """The autoencoder ``meta`` (its model.json entries) describes, with ``weights``, in eval mode."""
    ae = build_model("autoencoder", model_config("autoencoder", meta["config"]))
    load_weights(ae, weights)
    return ae.eval()


def export_run(run: str | os.PathLike, dest: str | os.PathLike, *, autoencoder: str | os.PathLike | None = None
               ) -> None:
    """Writes a trained run in the shipped form: its safetensors in half precision (half the size; the
    models load them into float32), ``model.json``, the training ``config.yaml`` and ``metrics.csv``.

    Args:
        run: a finished run folder (or an exported one).
        dest: the folder to write.
        autoencoder: for an ldm, an autoencoder run whose decoder replaces the one the ldm carries:
            one fine-tuned from it with ``autoencoder.train_encoder`` false (same encoder, same latent
            scale, so the ldm's latents mean what they meant). ``model.json`` records it.

    Raises:
        CheckpointError: ``run`` lacks one of those files, or ``autoencoder`` does not share the
            ldm's encoder and latent scale.
    """
    from safetensors.torch import load, save

    run, dest = Path(run), Path(dest)
    for name in ("model.json", "config.yaml", "metrics.csv"):
        if not (run / name).is_file():
            raise CheckpointError(f"{run / name}: missing; a finished training run has it")
    files = {name: _half(load((run / name).read_bytes()))
             for name in ("model.safetensors", "autoencoder.safetensors") if (run / name).is_file()}
    meta_bytes = (run / "model.json").read_bytes()
    if autoencoder is not None:
        meta = read_model_json(run, kind="ldm")
        files["autoencoder.safetensors"], meta["autoencoder"] = _same_encoder(run, files.get("autoencoder.safetensors"),
                                                                              meta["autoencoder"], Path(autoencoder))
        meta_bytes = json.dumps(meta, indent=1).encode()
    dest.mkdir(parents=True, exist_ok=True)
    for name, tensors in files.items():
        atomic_write_bytes(dest / name, save(tensors))
    atomic_write_bytes(dest / "model.json", meta_bytes)
    for name in ("config.yaml", "metrics.csv"):
        atomic_write_bytes(dest / name, (run / name).read_bytes())


def _half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 tensors in half precision (the shipped form), the rest as they are."""
    return {k: v.half() if v.is_floating_point() and v.dtype == torch.float32 else v for k, v in tensors.items()}


def _same_encoder(run: Path, carried: dict[str, torch.Tensor] | None, carried_meta: dict[str, Any],
                  autoencoder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The half-precision weights and model.json entries of ``autoencoder``, once it is checked to
    encode exactly as the autoencoder ``run`` carries (``carried``, half precision) does."""
    from safetensors.torch import load

    meta, weights = autoencoder_in(autoencoder)
    if not weights.is_file():
        raise CheckpointError(f"{weights}: weights file not found")
    new = _half(load(weights.read_bytes()))
    encoder = [k for k in (carried or {}) if k.split(".")[0] in ENCODER_PARTS]
    configs = (model_config("autoencoder", meta["config"]), model_config("autoencoder", carried_meta["config"]))
    same = (carried is not None and all(k in new and torch.equal(new[k], carried[k]) for k in encoder)
            and not architecture_diff(*configs, encoder_only=True)
            and float(meta["latent_scale"]) == float(carried_meta["latent_scale"]))
    if not same:
        raise CheckpointError(f"{autoencoder}: its encoder or latent scale differs from the autoencoder {run} carries; "
                              "only a decoder fine-tuned from it (`autoencoder.init` the ldm, `autoencoder.train_encoder` "
                              "false) can replace it; otherwise train an ldm on this autoencoder")
    return new, {**{k: meta[k] for k in AUTOENCODER_META}, "decoder_from": autoencoder.name}
