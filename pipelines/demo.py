"""``stainldm demo``: the whole pipeline on the bundled real H&E, end to end, on a laptop CPU.

make-sample (autofluorescence TMA from data/samples/CMU-1-Small-Region.svs) -> prepare -> train
the autoencoder, the LDM and the baseline (step counts from the workflow config's ``demo:``
section) -> stain the sample slide with the LDM and the baseline -> a summary with the time of
every stage. Every stage is resumable: rerunning the same command skips what is done.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from stainldm.config import load_yaml
from stainldm.errors import ConfigError

log = logging.getLogger("stainldm.demo")
ROOT = Path(__file__).resolve().parents[1]


def add_parser(sub, common) -> None:
    p = sub.add_parser("demo", parents=[common], help="run the whole pipeline on the bundled sample",
                       description="make-sample -> prepare -> train (autoencoder, ldm, baseline) -> stain, "
                                   "on the bundled real H&E; resumable.")
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml",
                   help="workflow config with prepare/train/demo sections (default configs/demo.yaml)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.set_defaults(run=run)


def _steps(config: Path) -> dict[str, int]:
    demo = load_yaml(config).get("demo") or {}
    unknown = set(demo) - {"autoencoder_steps", "ldm_steps", "baseline_steps", "stain_steps"}
    if unknown:
        raise ConfigError(f"{config}: unknown key 'demo.{sorted(unknown)[0]}'")
    return {"autoencoder": int(demo.get("autoencoder_steps", 300)), "ldm": int(demo.get("ldm_steps", 300)),
            "baseline": int(demo.get("baseline_steps", 300)), "stain": int(demo.get("stain_steps", 10))}


def run(args: argparse.Namespace) -> int:
    from pipelines.cli import main as cli

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = _steps(args.config)
    quiet = ["--quiet"] if args.quiet else []
    timings: dict[str, float] = {}

    def stage(name: str, argv: list[str]) -> None:
        t0 = time.perf_counter()
        print(f"== {name}")
        code = cli([*argv, *quiet])
        timings[name] = time.perf_counter() - t0
        if code != 0:
            raise SystemExit(code)

    sample, store, runs, stained = out / "sample", out / "store", out / "runs", out / "stained"
    stage("make-sample", ["make-sample", "--out", str(sample)])
    stage("prepare", ["prepare", "--unstained", str(sample / "unstained.tiff"), "--stained",
                      str(sample / "stained.tiff"), "--truth", str(sample / "truth.json"), "--out", str(store),
                      "--config", str(args.config), "--slide-id", "sample"])
    for kind in ("autoencoder", "ldm", "baseline"):
        run_dir = runs / kind
        extra = ["--autoencoder", str(runs / "autoencoder")] if kind == "ldm" else []
        if (run_dir / "state.pt").is_file():
            done = json.loads((run_dir / "model.json").read_text()).get("step", 0) if (run_dir / "model.json").is_file() else 0
            if done >= steps[kind]:
                print(f"== train {kind}: done ({done} steps)")
                continue
            argv = ["train", kind, "--resume", str(run_dir), "--set", f"steps={steps[kind]}"]
        else:
            argv = ["train", kind, "--config", str(args.config), "--store", str(store), "--out", str(run_dir),
                    "--set", f"steps={steps[kind]}", "--device", args.device, *extra]
        stage(f"train {kind}", argv)
    for kind in ("ldm", "baseline"):
        stage(f"stain ({kind})", ["stain", str(sample / "unstained.tiff"), "--checkpoint", str(runs / kind), "--out",
                                  str(stained / kind), "--steps", str(steps["stain"]), "--device", args.device])
    print("\nstainldm demo: done")
    for name, seconds in timings.items():
        print(f"  {name:<20} {seconds:7.1f} s")
    for kind in ("ldm", "baseline"):
        print(f"  virtual H&E ({kind}): {stained / kind / 'unstained.tiff'}")
    print(f"  real H&E (registered pairs): {store}; evaluation reports arrive with `stainldm evaluate`")
    return 0
