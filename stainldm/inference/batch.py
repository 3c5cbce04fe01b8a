"""Stain a batch of slides into one output folder: inputs, shards, the manifest and resume.

    model = StainModel.load("runs/ldm")
    slides = shard(expand_inputs([Path("slides/")]), *parse_shard("1/4"))
    for outcome in stain_slides(slides, model, Path("out"), StainConfig(steps=10)):
        print(outcome.slide, outcome.status, outcome.error)

Each slide is stained into ``out/<name>.tiff`` (+ uncertainty, thumbnail and provenance JSON, by
:func:`~stainldm.inference.stain.stain_slide`) and recorded in ``out/manifest.csv``. A bad slide is
recorded and the batch goes on (a slide with no tissue as ``no-tissue``, with nothing written); a
rerun skips the slides already done; a slide interrupted (even by SIGKILL) leaves no file under a final name and is stained again. Shards of one batch (processes,
machines) may share the output folder: the manifest is locked while it is rewritten.
"""

from __future__ import annotations

import csv
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stainldm.errors import InputError, NoTissueError, StainLDMError, one_line
from stainldm.files import atomic_write_csv, ensure_writable_folder, sha256_file
from stainldm.inference.config import StainConfig, check_stain_config, read_provenance
from stainldm.inference.model import StainModel
from stainldm.inference.stain import stain_slide
from stainldm.shards import parse_shard, shard_items
from stainldm.wsi.reader import open_slide

__all__ = ["MANIFEST_COLUMNS", "MANIFEST_NAME", "SLIDE_SUFFIXES", "Manifest", "SlideOutcome", "default_batch_size",
           "expand_inputs", "output_name", "parse_shard", "shard", "stain_provenance", "stain_slides"]

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".dcm", ".png", ".jpg",
                  ".jpeg", ".btf", ".qptiff"}
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("slide", "status", "output", "seconds", "error")
STATUSES = ("done", "no-tissue", "failed")
_LEGACY_STATUSES = {"skipped": "no-tissue"}  # the name older manifests give a slide with no tissue


# ---------------------------------------------------------------------------------------------
# Inputs and shards
# ---------------------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[Path]) -> list[Path]:
    """The slides that ``inputs`` name, each once, in the order given.

    Args:
        inputs: slide files (kept as given, existing or not), folders (their slide files by
            :data:`SLIDE_SUFFIXES`, hidden files left out; a folder of ``.dcm`` files is one DICOM
            slide) and CSV files (their ``slide``, ``path`` or ``unstained`` column, relative paths
            taken from the CSV's folder).

    Returns:
        the slide paths; a path listed twice is one slide (links to one file are several).

    Raises:
        InputError: a CSV has none of the columns.
    """
    found: list[Path] = []
    for item in inputs:
        if item.is_dir() and not any(p.suffix.lower() == ".dcm" for p in item.iterdir()):
            found += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
                            and not p.name.startswith("."))
        elif item.suffix.lower() == ".csv" and item.is_file():
            found += _csv_slides(item)
        else:
            found.append(item)
    seen: set[str] = set()
    unique = []
    for p in found:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _csv_slides(path: Path) -> list[Path]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        col = next((c for c in ("slide", "path", "unstained") if c in (reader.fieldnames or [])), None)
        if col is None:
            raise InputError(f"{path}: needs a 'slide' (or 'path') column")
        rows = [r[col] for r in reader if r[col]]
    return [Path(r) if Path(r).is_absolute() else path.parent / r for r in rows]


def shard(items: Sequence[Path], index: int, count: int) -> list[Path]:
    """Share ``index`` of ``count`` (0-based) of ``items``: round-robin over the sorted paths, so
    shards are disjoint, cover the list and do not depend on the order it was given in."""
    return shard_items(sorted(items, key=str), (index, count))


def output_name(slide: Path) -> str:
    """The name of ``slide``'s outputs, without suffix: ``a.svs`` -> ``a``, ``b.ome.tiff`` -> ``b``;
    a folder (a DICOM slide) keeps its whole name."""
    name = slide.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return slide.stem if slide.is_file() or slide.suffix else name


def default_batch_size(device: torch.device) -> int:
    """Windows per network call when the user does not say: 64 on a GPU (where the cores of a TMA
    share calls), 8 on a CPU."""
    return 64 if device.type == "cuda" else 8


# ---------------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------------
class Manifest:
    """``out/manifest.csv``: one row per slide (:data:`MANIFEST_COLUMNS`), rewritten atomically
    and locked, so shards sharing an output folder (on one file system) do not lose rows."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, dict[str, str]]:
        """Rows by slide path (as listed); empty when there is no manifest yet."""
        if not self.path.is_file():
            return {}
        with open(self.path, newline="") as fh:
            return {r["slide"]: r for r in csv.DictReader(fh)}

    def record(self, row: Mapping[str, str]) -> None:
        """Adds ``row`` (by its ``slide``), replacing the slide's previous row."""
        fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when closed
            rows = self.read()
            rows[row["slide"]] = dict(row)
            atomic_write_csv(self.path, [MANIFEST_COLUMNS,
                                         *([r.get(k, "") for k in MANIFEST_COLUMNS] for r in rows.values())])
        finally:
            os.close(fd)

    def counts(self) -> dict[str, int]:
        """Slides per status: ``{"done": n, "no-tissue": n, "failed": n}`` (a row an older
        version recorded as ``skipped``, for no tissue, counts as ``no-tissue``)."""
        statuses = [_LEGACY_STATUSES.get(r["status"], r["status"]) for r in self.read().values()]
        return {s: statuses.count(s) for s in STATUSES}


# ---------------------------------------------------------------------------------------------
# Staining the batch
# ---------------------------------------------------------------------------------------------
@dataclass
class SlideOutcome:
    """What became of one slide of a batch.

    Attributes:
        slide: the slide as listed.
        status: ``done``, ``no-tissue`` (nothing to stain; nothing written) or ``failed``.
        output: the stained TIFF (None unless done).
        seconds: time spent staining it (for a slide done by an earlier run, the time recorded then).
        error: the error message (one line; empty when done).
        resumed: done by an earlier run and not stained again.
    """

    slide: Path
    status: str
    output: Path | None
    seconds: float
    error: str
    resumed: bool = False


def stain_provenance(model: StainModel, cfg: StainConfig) -> dict[str, Any]:
    """What every output of a batch records beside the slide's own provenance: the checkpoint's
    SHA-256 (and, for an ldm, its autoencoder's: a fine-tuned decoder changes the output without
    touching ``model.safetensors``) and the sampling arguments. A finished slide whose recorded
    values differ is stained again on a rerun."""
    found = {"checkpoint_sha256": sha256_file(model.path / "model.safetensors")}
    if model.kind == "ldm":
        found["autoencoder_sha256"] = sha256_file(model.path / "autoencoder.safetensors")
    return {**found, "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance, "eta": cfg.eta,
            "seed": cfg.seed, "samples": cfg.samples}


def stain_slides(slides: Sequence[str | Path], model: StainModel, out: str | Path, cfg: StainConfig, *,
                 mpp: float | None = None, progress: Callable[[Path], Any] | None = None,
                 raise_errors: bool = False) -> Iterator[SlideOutcome]:
    """Stains ``slides`` into the folder ``out`` and records each in ``out/manifest.csv``.

    The arguments are checked when this is called (before any slide is read); the slides are
    stained as the returned iterator is consumed, one outcome per slide, in order. A slide the
    manifest records as done whose TIFF exists is not stained again: it comes back done, with
    ``resumed`` set — unless its provenance JSON records another checkpoint or other sampling
    arguments (:func:`stain_provenance`), or none: then it is stained again. A slide that raises a
    :class:`~stainldm.errors.StainLDMError` is recorded (``no-tissue`` for a
    :class:`~stainldm.errors.NoTissueError`, else ``failed``) and the batch goes on; other
    exceptions propagate.

    Args:
        slides: slide paths (see :func:`expand_inputs` and :func:`shard`).
        model: the loaded model.
        out: output folder (created).
        cfg: how to stain.
        mpp: µm/px of slides that do not record it.
        progress: ``progress(slide)`` -> a tqdm-like bar (``reset(total=)``, ``update(n)``,
            ``close()``) counting the slide's canvases; closed when the slide ends.
        raise_errors: raise a slide's error instead of recording it (for debugging).

    Returns:
        an iterator of :class:`SlideOutcome`.

    Raises:
        InputError: ``cfg`` is out of range (``steps`` too for the model's schedule), or ``out`` is
            not a writable folder.
    """
    check_stain_config(cfg)
    out = Path(out)
    try:
        ensure_writable_folder(out)
    except OSError as exc:
        raise InputError(f"{out}: output folder is not writable ({exc.strerror}); choose another `out`") from exc
    if model.kind == "ldm":
        model.net.schedule.inference_timesteps(cfg.steps)  # names `steps` when the schedule has fewer
    provenance = stain_provenance(model, cfg)
    return _stain_each([Path(s) for s in slides], model, out, cfg, mpp=mpp, progress=progress, raise_errors=raise_errors,
                       provenance=provenance)


def _stain_each(slides: list[Path], model: StainModel, out: Path, cfg: StainConfig, *, mpp: float | None,
                progress: Callable[[Path], Any] | None, raise_errors: bool, provenance: dict[str, Any]
                ) -> Iterator[SlideOutcome]:
    manifest = Manifest(out / MANIFEST_NAME)
    done = {k: r for k, r in manifest.read().items() if r.get("status") == "done"}
    for slide_path in slides:
        target = out / f"{output_name(slide_path)}.tiff"
        row = done.get(str(slide_path))
        if row is not None and target.is_file():
            if not (changed := _changed(target, provenance)):
                log.info("%s: done, skipping", slide_path.name)
                yield SlideOutcome(slide_path, "done", target, _seconds(row), "", resumed=True)
                continue
            log.warning("%s: %s was made with another checkpoint or sampling (%s differ); staining it again",
                        slide_path.name, target.name, ", ".join(changed))
        bar = progress(slide_path) if progress is not None else None
        try:
            outcome = _stain_one(slide_path, model, target, cfg, manifest, mpp=mpp, bar=bar,
                                 raise_errors=raise_errors, provenance=provenance)
        finally:
            if bar is not None:
                bar.close()
        yield outcome


def _changed(target: Path, provenance: dict[str, Any]) -> list[str]:
    """The keys of ``provenance`` whose value ``target``'s provenance JSON does not record (all of
    them when it is missing or unreadable)."""
    recorded = read_provenance(target)
    return [k for k, v in provenance.items() if recorded.get(k) != v]


def _stain_one(slide_path: Path, model: StainModel, target: Path, cfg: StainConfig, manifest: Manifest, *,
               mpp: float | None, bar: Any, raise_errors: bool, provenance: dict[str, Any]) -> SlideOutcome:
    key = str(slide_path)
    t0 = time.perf_counter()
    try:
        with open_slide(slide_path, mpp=mpp) as slide:
            res = stain_slide(slide, model, target, cfg, progress=bar, provenance=provenance)
        manifest.record({"slide": key, "status": "done", "output": res.output.name, "seconds": f"{res.seconds:.2f}",
                         "error": ""})
        return SlideOutcome(slide_path, "done", res.output, res.seconds, "")
    except StainLDMError as exc:
        if raise_errors:
            raise
        msg = one_line(exc)
        status = "no-tissue" if isinstance(exc, NoTissueError) else "failed"  # an empty slide is not a failure
        seconds = time.perf_counter() - t0
        manifest.record({"slide": key, "status": status, "output": "", "error": msg, "seconds": f"{seconds:.2f}"})
        log.warning("%s: %s", slide_path.name, status)
        return SlideOutcome(slide_path, status, None, seconds, msg)


def _seconds(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("seconds") or 0.0)
    except ValueError:  # a hand-edited manifest
        return 0.0
