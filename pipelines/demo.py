"""``stainldm demo``: the whole pipeline on the bundled real H&E, end to end, on a laptop CPU.

Recipe, each stage a library call: make-sample (an autofluorescence TMA from
data/samples/CMU-1-Small-Region.svs) -> prepare -> the models (shipped in ``data/checkpoints/``, or
with ``--train`` trained from scratch with the workflow config) -> stain the sample with the LDM and
the baseline -> evaluate the test cores (LDM, baseline, colour map) -> the report and a five-line
summary. Rerunning skips finished training and stained slides. ``--export DIR`` (with ``--train``)
writes the models in the shipped form (``models.runs.export_run``): how data/checkpoints/ is made.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from stainldm.config import load_config
from stainldm.errors import CheckpointError, InputError, RunError, with_flags

log = logging.getLogger("stainldm.demo")
ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "checkpoints"
STAIN_KINDS = ("ldm", "baseline")


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


@dataclass(frozen=True)
class DemoSteps:
    """The ``demo:`` section of a workflow config: training steps per model and sampler steps."""

    autoencoder_steps: int = 300
    ldm_steps: int = 300
    baseline_steps: int = 300
    #: then the decoder alone (these --set overrides); the ldm stains and ships with it; 0: none
    decoder_steps: int = 0
    decoder_set: tuple[str, ...] = ()
    stain_steps: int = 10


def shipped_models(folder: Path) -> dict[str, Path]:
    """The shipped ldm and baseline run folders, checked before any work.

    Raises:
        CheckpointError: a model folder or one of its files is missing, or it is of another kind.
    """
    from stainldm.models.runs import read_model_json

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


def summary_lines(metrics_json: Path, report: Path, timings: dict[str, float]) -> list[str]:
    """Five lines: the report, one line per method (mean and 95% CI over cores), the stage times."""
    from stainldm.eval.report import headline_lines

    data = json.loads(metrics_json.read_text())
    return [f"report: {report}  ({data.get('cores', '?')} {data.get('split', 'test')} cores, means with bootstrap "
            "95% CIs over cores)", *headline_lines(data),
            "  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
            + f" (total {sum(timings.values()):.0f})"]


@contextlib.contextmanager
def _stage(name: str, seconds: dict[str, float]):
    """Prints ``== name`` before a stage and records its seconds."""
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - t0


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from stainldm.data.pairs import load_prepare_config
    from stainldm.data.prepare import SlidePair, prepare_pair
    from stainldm.data.sample_files import make_sample
    from stainldm.data.synthetic import SampleConfig
    from stainldm.device import resolve_device
    from stainldm.eval import report as eval_report
    from stainldm.eval.evaluate import EvalData, colour_map_method, evaluate, write_evaluation
    from stainldm.eval.predictions import load_methods
    from stainldm.files import atomic_write_bytes
    from stainldm.inference.batch import default_batch_size, stain_slides
    from stainldm.inference.model import StainModel
    from stainldm.models.runs import export_run

    if args.export is not None and not args.train:
        raise InputError("`export` writes trained models: use it with `train`")
    steps = load_config(DemoSteps, args.config, section="demo")
    models = None if args.train else shipped_models(args.checkpoints)
    (out := Path(args.out)).mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    stage = functools.partial(_stage, seconds=timings)
    bar = functools.partial(tqdm, leave=False, disable=args.quiet)

    sample, store, runs, stained, report = (out / name for name in ("sample", "store", "runs", "stained", "report"))
    with stage("make-sample"):
        make_sample(sample, load_config(SampleConfig))
    with stage("prepare"):
        pair = SlidePair.from_paths(sample / "unstained.tiff", sample / "stained.tiff", truth=sample / "truth.json",
                                    slide_id="sample")
        for line in prepare_pair(store, pair, load_prepare_config(args.config)):
            print(line)
    if models is None:
        kinds = ("autoencoder", "ldm", "baseline", "decoder")[: 4 if steps.decoder_steps else 3]
        trained = {kind for kind in kinds if _train(kind, runs, store, steps, args, stage)}
        # the ldm with the fine-tuned decoder; made anew only when they changed: it keeps steps.py's stain_defaults
        if steps.decoder_steps and (trained & {"ldm", "decoder"} or not (runs / "ldm-decoder/model.json").is_file()):
            export_run(runs / "ldm", runs / "ldm-decoder", autoencoder=runs / "decoder")
        models = {"ldm": runs / ("ldm-decoder" if steps.decoder_steps else "ldm"), "baseline": runs / "baseline"}
    device = resolve_device(args.device, env=os.environ, cuda_count=torch.cuda.device_count())
    for kind in STAIN_KINDS:
        with stage(f"stain {kind}"):
            model = StainModel.load(models[kind], device=device, precision="auto")
            cfg = model.stain_config(steps=steps.stain_steps, batch_size=default_batch_size(device))
            for outcome in stain_slides([sample / "unstained.tiff"], model, stained / kind, cfg,
                                        progress=lambda s: bar(desc=s.name, unit="canvas")):
                if outcome.status != "done":
                    raise RunError(f"{outcome.slide}: staining with the {kind} {outcome.status}: {outcome.error}")
    with stage("evaluate"):
        data = EvalData.open(store)
        methods = load_methods(data.unstained, preds=[stained / "ldm"], baselines=[stained / "baseline"],
                               out=report, device=args.device)
        methods += [m for m in [colour_map_method(data.store, seed=0)] if m is not None]
        with bar(total=len(data.cores), desc="evaluate", unit="core") as cores:
            result = evaluate(data, methods, gallery_dir=report / "gallery", progress=cores.update)
        summary, html = write_evaluation(report, result, store=store, split="test")
        print(eval_report.format_summary(summary, result.names))
        for msg in result.errors:  # some cores could not be evaluated: the report lists them
            print(f"error: {with_flags(msg, args.flags)}", file=sys.stderr)
    if args.export is not None:  # the shipped form, as data/checkpoints/
        for kind in STAIN_KINDS:
            export_run(models[kind], args.export / kind)
        atomic_write_bytes(args.export / "evaluation.csv", (report / "metrics.csv").read_bytes())
        print(f"exported {', '.join(STAIN_KINDS)} to {args.export}")
    print("\nstainldm demo: done (" + ("models trained with " + str(args.config) if args.train
                                       else f"shipped models from {args.checkpoints}") + ")")
    for line in summary_lines(report / "metrics.json", html, timings):
        print(line)
    return 0


def _train(kind: str, runs: Path, store: Path, steps: DemoSteps, args: argparse.Namespace, stage) -> bool:
    """Trains, resumes or skips (returns False) ``runs/<kind>``; ``decoder``: runs/ldm's autoencoder's."""
    from stainldm.train.config import load_run_config, load_train_config, resolve_config
    from stainldm.train.loop import Trainer

    run_dir, meta, n = runs / kind, runs / kind / "model.json", getattr(steps, f"{kind}_steps")
    resume = (run_dir / "state.pt").is_file()
    if resume:
        if (done := json.loads(meta.read_text()).get("step", 0) if meta.is_file() else 0) >= n:
            print(f"== train {kind}: done ({done} steps)")
            return False
        cfg = load_run_config(run_dir, [f"steps={n}"])
    else:
        extra = [f"autoencoder.init={runs / 'ldm'}", "autoencoder.train_encoder=false", *steps.decoder_set]
        cfg = load_train_config(args.config, [f"steps={n}", *(extra if kind == "decoder" else [])])
        cfg = resolve_config(cfg, store=store, autoencoder_run=runs / "autoencoder" if kind == "ldm" else None,
                             wandb=None)
    ae = Path(cfg.autoencoder_run) if cfg.autoencoder_run else None
    with stage(f"train {kind}"):
        trainer = Trainer(kind="autoencoder" if kind == "decoder" else kind, cfg=cfg, run_dir=run_dir, resume=resume,
                          store=Path(cfg.data.store), device=None if resume else args.device, autoencoder_run=ae)
        trainer.train(progress=not args.quiet)
    print(f"{run_dir}: {kind} trained to step {trainer.step}")
    return True
