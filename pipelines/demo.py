"""``stainldm demo``: the whole pipeline on the bundled real H&E, end to end, on a laptop CPU.

make-sample (autofluorescence TMA from data/samples/CMU-1-Small-Region.svs) -> prepare -> the
models (the shipped demo weights in ``data/checkpoints/``, or with ``--train`` the autoencoder,
LDM and baseline trained from scratch with the workflow config) -> stain the sample slide with the
LDM and the baseline -> evaluate the held-out test cores (LDM vs baseline vs colour map) -> the
report path and a five-line summary. Every stage is resumable: rerunning the same command skips
finished training and slides already stained.

``--export DIR`` (with ``--train``) writes the trained models in the shipped form: half-precision
safetensors, ``model.json``, the training ``config.yaml`` and ``metrics.csv`` per model, and the
demo's ``evaluation.csv``. That is how ``data/checkpoints/`` is made (its README).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from stainldm.config import load_yaml
from stainldm.errors import CheckpointError, ConfigError, InputError

log = logging.getLogger("stainldm.demo")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "checkpoints"
STAIN_KINDS = ("ldm", "baseline")
SUMMARY_METRICS = (("psnr", "PSNR", 2, " dB"), ("ssim", "SSIM", 3, ""), ("lab_w", "CIELAB W1", 2, ""))


def add_parser(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the whole pipeline on the bundled sample",
                       description="make-sample -> prepare -> stain with the shipped demo models (or train them "
                                   "with --train) -> evaluate, on the bundled real H&E; resumable.")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    p.add_argument("--train", action="store_true",
                   help="train the autoencoder, LDM and baseline from scratch instead of using data/checkpoints/")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml",
                   help="workflow config with prepare/train/demo sections (default configs/demo.yaml)")
    p.add_argument("--checkpoints", type=Path, default=SHIPPED, metavar="DIR",
                   help="shipped models to stain with when not training (default data/checkpoints)")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="with --train: write the trained models here in the shipped form (as data/checkpoints)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.set_defaults(run=run)


def _steps(config: Path) -> dict[str, int]:
    demo = load_yaml(config).get("demo") or {}
    unknown = set(demo) - {"autoencoder_steps", "ldm_steps", "baseline_steps", "stain_steps"}
    if unknown:
        raise ConfigError(f"{config}: unknown key 'demo.{sorted(unknown)[0]}'")
    return {"autoencoder": int(demo.get("autoencoder_steps", 300)), "ldm": int(demo.get("ldm_steps", 300)),
            "baseline": int(demo.get("baseline_steps", 300)), "stain": int(demo.get("stain_steps", 10))}


def shipped_models(folder: Path) -> dict[str, Path]:
    """The shipped ldm and baseline run folders, checked before any work.

    Raises:
        CheckpointError: a model folder or one of its files is missing, or it is of another kind.
    """
    from stainldm.train.checkpoint import read_model_json

    models = {}
    for kind in STAIN_KINDS:
        run = folder / kind
        read_model_json(run, kind=kind)
        needed = ["model.safetensors", *(["autoencoder.safetensors"] if kind == "ldm" else [])]
        for name in needed:
            if not (run / name).is_file():
                raise CheckpointError(f"{run / name}: missing from the shipped demo models; restore it with "
                                      "`git checkout -- data/checkpoints` or run `stainldm demo --train`")
        models[kind] = run
    return models


def export_models(runs: dict[str, Path], dest: Path, evaluation: Path | None) -> None:
    """Writes trained runs in the shipped form: fp16 safetensors (halves the size; the models load them
    into float32), ``model.json``, ``config.yaml`` and the training ``metrics.csv``."""
    import torch
    from safetensors.torch import load, save

    from stainldm.files import atomic_write_bytes

    for kind, run in runs.items():
        out = dest / kind
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "autoencoder.safetensors"):
            if (run / name).is_file():
                tensors = load((run / name).read_bytes())
                half = {k: v.half() if v.is_floating_point() and v.dtype == torch.float32 else v
                        for k, v in tensors.items()}
                atomic_write_bytes(out / name, save(half))
        for name in ("model.json", "config.yaml", "metrics.csv"):
            shutil.copyfile(run / name, out / name)
    if evaluation is not None and evaluation.is_file():
        shutil.copyfile(evaluation, dest / "evaluation.csv")
    print(f"exported {', '.join(runs)} to {dest}")


def summary_lines(metrics_json: Path, report: Path, timings: dict[str, float]) -> list[str]:
    """Five lines: the report, one line per method (mean and 95% CI over cores), the stage times."""
    data = json.loads(metrics_json.read_text())
    lines = [f"report: {report}  ({data.get('cores', '?')} {data.get('split', 'test')} cores, "
             "means with bootstrap 95% CIs over cores)"]
    for name, metrics in data["summary"].items():
        parts = []
        for key, label, digits, unit in SUMMARY_METRICS:
            m = metrics.get(key) or {}
            if m.get("mean") is not None:
                parts.append(f"{label} {m['mean']:.{digits}f} [{m['lo']:.{digits}f}, {m['hi']:.{digits}f}]{unit}")
        lines.append(f"  {name:<15} " + "   ".join(parts))
    lines.append("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
                 + f" (total {sum(timings.values()):.0f})")
    return lines


def run(args: argparse.Namespace) -> int:
    from pipelines.cli import main as cli

    if args.export is not None and not args.train:
        raise InputError("--export writes trained models: use it with --train")
    steps = _steps(args.config)
    models = None if args.train else shipped_models(args.checkpoints)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    quiet = ["--quiet"] if args.quiet else []
    timings: dict[str, float] = {}

    def stage(name: str, argv: list[str], *, ok: tuple[int, ...] = (0,)) -> None:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        code = cli([*argv, *quiet])
        timings[name] = time.perf_counter() - t0
        if code not in ok:
            raise SystemExit(code)

    sample, store, runs, stained, report = (out / "sample", out / "store", out / "runs", out / "stained",
                                            out / "report")
    stage("make-sample", ["make-sample", "--out", str(sample)])
    stage("prepare", ["prepare", "--unstained", str(sample / "unstained.tiff"), "--stained",
                      str(sample / "stained.tiff"), "--truth", str(sample / "truth.json"), "--out", str(store),
                      "--config", str(args.config), "--slide-id", "sample"])
    if models is None:
        models = {kind: runs / kind for kind in STAIN_KINDS}
        for kind in ("autoencoder", "ldm", "baseline"):
            _train(stage, kind, runs, store, steps[kind], args)
    for kind in STAIN_KINDS:
        stage(f"stain {kind}", ["stain", str(sample / "unstained.tiff"), "--checkpoint", str(models[kind]),
                                "--out", str(stained / kind), "--steps", str(steps["stain"]),
                                "--device", args.device])
    # Exit 1 = some cores could not be evaluated: evaluate printed which, and the report lists them.
    stage("evaluate", ["evaluate", "--pred", str(stained / "ldm"), "--baseline", str(stained / "baseline"),
                       "--store", str(store), "--out", str(report), "--device", args.device], ok=(0, 1))
    if args.export is not None:
        export_models({"ldm": runs / "ldm", "baseline": runs / "baseline"}, args.export, report / "metrics.csv")
    print("\nstainldm demo: done (" + ("models trained with " + str(args.config) if args.train
                                      else f"shipped models from {args.checkpoints}") + ")")
    for line in summary_lines(report / "metrics.json", report / "report.html", timings):
        print(line)
    return 0


def _train(stage, kind: str, runs: Path, store: Path, steps: int, args: argparse.Namespace) -> None:
    run_dir = runs / kind
    if (run_dir / "state.pt").is_file():
        meta = run_dir / "model.json"
        done = json.loads(meta.read_text()).get("step", 0) if meta.is_file() else 0
        if done >= steps:
            print(f"== train {kind}: done ({done} steps)")
            return
        argv = ["train", kind, "--resume", str(run_dir), "--set", f"steps={steps}"]
    else:
        extra = ["--autoencoder", str(runs / "autoencoder")] if kind == "ldm" else []
        argv = ["train", kind, "--config", str(args.config), "--store", str(store), "--out", str(run_dir),
                "--set", f"steps={steps}", "--device", args.device, *extra]
    stage(f"train {kind}", argv)

