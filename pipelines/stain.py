"""``stainldm stain INPUT... --checkpoint RUN --out DIR``: virtually stain a batch of slides.

Recipe: list inputs (files, folders, CSVs) -> this shard's share -> for each slide not yet done:
stain into ``DIR/<slide>.tiff`` (+ uncertainty, thumbnail, provenance) -> record in
``DIR/manifest.csv``. A bad slide is recorded and the batch goes on; rerunning skips done slides;
a slide interrupted (even by SIGKILL) leaves no file under a final name and is redone.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import logging
import os
import sys
import time
from pathlib import Path

from stainldm.errors import InputError, StainLDMError, one_line

log = logging.getLogger("stainldm.stain")

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".dcm", ".png", ".jpg",
                  ".jpeg", ".btf", ".qptiff"}
MANIFEST_COLUMNS = ("slide", "status", "output", "seconds", "error")


def add_parser(sub, common) -> None:
    p = sub.add_parser("stain", parents=[common], help="virtually stain unstained slides with a trained model",
                       description="Stain slides, folders of slides or CSVs (a 'slide' or 'path' column) with an "
                                   "ldm or baseline run. Rerunning skips finished slides.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    p.add_argument("--checkpoint", type=Path, required=True, help="ldm or baseline run folder (or its model.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--steps", type=int, default=10, help="denoising steps (default 10)")
    p.add_argument("--sampler", default="dpmpp_2m", help="dpmpp_2m (default) or ddim")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    p.add_argument("--seed", type=int, default=0, help="slide seed (default 0)")
    p.add_argument("--samples", type=int, default=1, help="K samples: mean as output, std as uncertainty map")
    p.add_argument("--batch-size", type=int, help="windows per network call (default 8 on a CPU, 64 on a GPU, "
                                                    "where the cores of a TMA share calls)")
    p.add_argument("--overlap", type=int, default=16, metavar="PX", help="least window overlap in output px")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N; under torchrun, srun or "
                   "--shard, cuda is one GPU per process (LOCAL_RANK, SLURM_LOCALID, else shard i on GPU (i-1) mod "
                   "the GPU count)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto (default): bf16 on a GPU, fp32 on a CPU; fp16 for GPUs without bf16")
    p.add_argument("--shard", help="i/n: stain only shard i of n (default: torchrun/SLURM rank variables)")
    p.add_argument("--mpp", type=float, help="µm/px of inputs that do not record it")
    p.set_defaults(run=run)


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``i/n`` (1-based i) -> (index, count) 0-based; else torchrun (RANK/WORLD_SIZE) or SLURM
    (SLURM_PROCID/SLURM_NTASKS) variables; else (0, 1)."""
    env = dict(os.environ) if env is None else env
    if text:
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise InputError(f"--shard {text}: expected i/n, e.g. --shard 1/4") from None
        if not (n >= 1 and 1 <= i <= n):
            raise InputError(f"--shard {text}: i must be between 1 and n (n ≥ 1)")
        return i - 1, n
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in env and world in env:
            try:
                index, count = int(env[rank]), int(env[world])
            except ValueError:
                raise InputError(f"{rank}={env[rank]!r}, {world}={env[world]!r}: not integers; fix the launcher's "
                                 "environment or pass --shard i/n") from None
            if not (count >= 1 and 0 <= index < count):
                raise InputError(f"{rank}={index}, {world}={count}: the rank must be between 0 and {world} - 1; "
                                 "fix the launcher's environment or pass --shard i/n")
            return index, count
    return 0, 1


def shard(items: list[Path], index: int, count: int) -> list[Path]:
    """Deterministic round-robin share of a sorted list: shards are disjoint and cover it."""
    return [p for k, p in enumerate(sorted(items, key=str)) if k % count == index]


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders -> their slide files; CSVs -> their 'slide' (or 'path') column."""
    out: list[Path] = []
    for item in inputs:
        if item.is_dir() and not any(p.suffix.lower() == ".dcm" for p in item.iterdir()):
            out += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
                          and not p.name.startswith("."))
        elif item.suffix.lower() == ".csv" and item.is_file():
            with open(item, newline="") as fh:
                reader = csv.DictReader(fh)
                col = next((c for c in ("slide", "path", "unstained") if c in (reader.fieldnames or [])), None)
                if col is None:
                    raise InputError(f"{item}: needs a 'slide' (or 'path') column")
                out += [Path(r[col]) if Path(r[col]).is_absolute() else item.parent / r[col] for r in reader if r[col]]
        else:
            out.append(item)
    seen, unique = set(), []
    for p in out:  # the same path listed twice is one slide (links to one file are several slides)
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_name(slide: Path) -> str:
    name = slide.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return slide.stem if slide.is_file() or slide.suffix else name


class Manifest:
    """``DIR/manifest.csv``: one row per slide, rewritten atomically, locked across shards."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, dict[str, str]]:
        if not self.path.is_file():
            return {}
        with open(self.path, newline="") as fh:
            return {r["slide"]: r for r in csv.DictReader(fh)}

    def record(self, row: dict[str, str]) -> None:
        lock = self.path.with_name(f".{self.path.name}.lock")
        with open(lock, "w") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)  # shards on one file system share the manifest
            rows = self.read()
            rows[row["slide"]] = row
            tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
            with open(tmp, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
                w.writeheader()
                for r in rows.values():
                    w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
            tmp.replace(self.path)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from stainldm.device import resolve_device
    from stainldm.inference.stain import StainConfig, StainModel, check_stain_config, stain_slide
    from stainldm.train.checkpoint import sha256
    from stainldm.wsi.reader import open_slide

    index, count = parse_shard(args.shard)
    device = resolve_device(args.device, env=os.environ, cuda_count=torch.cuda.device_count(), shard=(index, count))
    batch = args.batch_size if args.batch_size is not None else (64 if device.type == "cuda" else 8)
    cfg = StainConfig(steps=args.steps, sampler=args.sampler, guidance=args.guidance, seed=args.seed,
                      samples=args.samples, batch_size=batch, overlap_px=args.overlap)
    check_stain_config(cfg)
    if args.sampler not in ("ddim", "dpmpp_2m"):
        raise InputError(f"--sampler {args.sampler}: use dpmpp_2m or ddim")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out}: output folder is not writable ({exc.strerror}); choose another --out") from None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model = StainModel.load(args.checkpoint, device=device, precision=args.precision)
    if model.kind == "ldm":
        model.net.schedule.inference_timesteps(args.steps)  # validates --steps before any slide is read
    ckpt_file = model.path / "model.safetensors"
    provenance = {"checkpoint_sha256": sha256(ckpt_file), "sampler": args.sampler, "steps": args.steps,
                  "guidance": args.guidance, "seed": args.seed, "samples": args.samples}
    slides = shard(expand_inputs(args.inputs), index, count)
    manifest = Manifest(out / "manifest.csv")
    done = {k for k, r in manifest.read().items() if r.get("status") == "done"}
    failures = []
    outer = tqdm(slides, desc=f"stain (shard {index + 1}/{count})", unit="slide", disable=args.quiet)
    for slide_path in outer:
        key = str(slide_path)
        target = out / f"{output_name(slide_path)}.tiff"
        if key in done and target.is_file():
            log.info("%s: done, skipping", slide_path.name)
            continue
        t0 = time.perf_counter()
        inner = tqdm(desc=slide_path.name, unit="canvas", leave=False, disable=args.quiet)
        try:
            with open_slide(slide_path, mpp=args.mpp) as slide:
                res = stain_slide(slide, model, target, cfg, progress=inner, provenance=provenance)
            manifest.record({"slide": key, "status": "done", "output": res.output.name,
                             "seconds": f"{res.seconds:.2f}", "error": ""})
        except StainLDMError as exc:
            if args.debug:
                raise
            msg = one_line(exc)
            status = "skipped" if "no tissue" in msg else "failed"
            manifest.record({"slide": key, "status": status, "output": "", "error": msg,
                             "seconds": f"{time.perf_counter() - t0:.2f}"})
            if status == "failed":
                failures.append((slide_path, msg))
            log.warning("%s: %s", slide_path.name, status)
        finally:
            inner.close()
    rows = manifest.read()
    counts = {s: sum(1 for r in rows.values() if r["status"] == s) for s in ("done", "skipped", "failed")}
    print(f"{out}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
          f"(shard {index + 1}/{count}: {len(slides)} slides); see {manifest.path}")
    if failures:
        for _path, msg in failures:
            print(f"error: {msg}", file=sys.stderr)  # the message names the slide
        return 1
    return 0
