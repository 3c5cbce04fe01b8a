"""The lab path on one GPU: training and staining figures of configs/lab-f4.yaml, against the GPU's
own matrix-product rate measured in the same run.

    make bench-gpu                                  # .venv/bin/python benchmarks/gpu.py
    .venv/bin/python benchmarks/gpu.py --dry-run    # CPU, reduced widths and sizes: checks the script

(1) Anchor: the bf16 rate of an 8192³ ``torch.matmul`` (median of 10 after 3 warm-ups), and the
    datasheet's dense bf16 peak where the GPU is known. Model-FLOP utilisation (MFU) is given against both.
(2) Training, lab-f4 at batch 32, bf16, one process: the autoencoder with its patch discriminator on
    (as after ``adversarial_start``), with and without gradient checkpointing, and the ldm (semantic
    resnet50 tokens, the frozen autoencoder's encode included). ``Trainer.optimisation_step`` — the
    code ``stainldm train`` runs: autocast, backward, AdamW, discriminator, EMA — on batches read
    from a synthetic tile store and kept on the GPU (data loading is not timed). Steps/s, tiles/s,
    peak memory (``torch.cuda.max_memory_allocated``), FLOPs per step (``FlopCounterMode`` over one
    step) and MFU. Goal: MFU ≥ 35 % of the bf16 peak.
(3) Staining, a lab-f4 ldm on 350 µm TMA cores at 0.5 µm/px, dpmpp_2m at 10 NFE, guidance 1 and 1.5,
    in fp32, bf16 and bf16 with SDPA attention (MONAI's math path otherwise): ``StainModel.stain_batch``,
    the sampling and decoding ``stain_slide`` runs, with the cores batched as it batches them on a GPU.
    Seconds per tissue megapixel and per cm² of tissue, the windows the cost model chose, and the
    FLOPs counted per cm². Goal: ≤ 45 s per cm² at 10 NFE, guidance 1.5. Weights are random: the
    cost of a network does not depend on them.
(4) ``stainldm stain`` end to end on a small TMA slide on the GPU (device and precision in the
    provenance), and ``--device cuda:N`` past the last GPU refused in one line.
(5) Two processes under torchrun (NCCL), when the machine has two GPUs.

Each section is timed and skipped with a note when the time budget (``--budget``, default 420 s) is
spent; results go to ``bench-out/gpu.json`` (``--json``) as they come.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from stainldm.data.store import TileRow, TileStore  # noqa: E402
from stainldm.inference.stain import StainConfig, StainModel  # noqa: E402
from stainldm.models.runs import read_model_json, save_weights, write_model_json  # noqa: E402
from stainldm.train.config import load_train_config  # noqa: E402
from stainldm.train.loop import Trainer  # noqa: E402

try:
    import albumentations  # noqa: F401
except ImportError:  # a GPU image without it: the batches below bypass the DataLoader, whose augmentation needs it
    import types

    sys.modules["albumentations"] = types.ModuleType("albumentations")

LAB = ROOT / "configs" / "lab-f4.yaml"
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}  # dense, TFLOP/s
GOAL_MFU, GOAL_S_PER_CM2 = 0.35, 45.0
CORE_UM, MARGIN_PX = 350.0, 16  # a make-sample core and stain's region margin
CM2_UM2 = 1e8


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_memory(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------
# (1) the anchor
# ---------------------------------------------------------------------------------------------
def matmul_rate(device: torch.device, n: int) -> float:
    """bf16 FLOP/s of an n³ matrix product (random data: zeros run faster than real data)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=torch.bfloat16, generator=g)
    b = torch.randn((n, n), device=device, dtype=torch.bfloat16, generator=g)
    times = timed(lambda: a @ b, device, repeat=10, warmup=3)
    return 2 * n**3 / float(np.median(times))


# ---------------------------------------------------------------------------------------------
# (2) training
# ---------------------------------------------------------------------------------------------
def synthetic_store(root: Path, *, tile: int, mpp: float, n: int) -> Path:
    """A tile store of random tiles (2-channel uint16 unstained, RGB H&E), train and val."""
    rng = np.random.default_rng(0)
    store = TileStore.create(root, tile_px=tile, channels_in=2, dtype_in="uint16")
    for start in range(0, n, 16):
        k = min(16, n - start)
        rows = [TileRow("bench", f"A{i % 4 + 1}", "val" if i % 8 == 7 else "train", 0, 0, mpp, 1.0, 0.5, 0.5)
                for i in range(start, start + k)]
        store.append(rng.integers(100, 4000, (k, tile, tile, 2), dtype=np.uint16),
                     rng.integers(0, 256, (k, tile, tile, 3), dtype=np.uint8), rows)
    return root


def lab_config(overrides: list[str], dry: bool):
    sets = ["wandb=disabled", "data.workers=0", "steps=1000000", "checkpoint_every=1000000", "val_every=1000000",
            "log_every=1000000", "precision=bf16", *overrides]
    if dry:  # the same structure, a fraction of the width, tiles of 64 px
        sets += ["data.batch_size=2", "autoencoder.channels=[16,32,64]", "autoencoder.norm_num_groups=8",
                 "ldm.denoiser.channels=[32,64,96]", "ldm.denoiser.num_head_channels=16", "ldm.denoiser.norm_num_groups=16",
                 "ldm.condition.spatial_channels=16", "ldm.condition.token_dim=64", "ldm.condition.backbone=resnet18"]
    return load_train_config(LAB, sets)


def gpu_batches(trainer: Trainer, batch: int):
    """An endless iterator of one real batch of the store (collated as the DataLoader does), on the device."""
    ds = trainer.val_set
    items = [ds[i % len(ds)] for i in range(batch)]
    b = {k: torch.stack([it[k] for it in items]).to(trainer.device) for k in ("unstained", "stained")}
    while True:
        yield b


def bench_training(kind: str, trainer: Trainer, *, batch: int, repeat: int, peak: float) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    device = trainer.device
    it = gpu_batches(trainer, batch)
    trainer.optimisation_step(it)  # warm-up: cuDNN picks its kernels
    trainer.optimisation_step(it)
    reset_memory(device)
    times = timed(lambda: trainer.optimisation_step(it), device, repeat=repeat, warmup=0)
    mem = peak_memory(device)
    with FlopCounterMode(display=False) as counter:
        trainer.optimisation_step(it)
    flops = counter.get_total_flops()
    step_s = float(np.median(times))
    return {"kind": kind, "batch": batch, "precision": trainer.precision,
            "checkpointing": trainer.cfg.gradient_checkpointing, "steps_per_s": 1 / step_s,
            "tiles_per_s": batch / step_s, "peak_gib": mem, "tflop_per_step": flops / 1e12,
            "mfu": flops / step_s / peak}


def save_run(trainer: Trainer, run: Path) -> Path:
    """The trainer's EMA as a run folder that staining and the ldm can load (no optimiser state)."""
    run.mkdir(parents=True, exist_ok=True)
    save_weights(trainer.ema, run / "model.safetensors")
    if trainer.kind == "ldm":
        save_weights(trainer.ae, run / "autoencoder.safetensors")
    write_model_json(run / "model.json", trainer.model_meta())
    return run


# ---------------------------------------------------------------------------------------------
# (3) staining
# ---------------------------------------------------------------------------------------------
def core_canvases(model: StainModel, n: int, device: torch.device) -> tuple[list[torch.Tensor], list[np.ndarray], float]:
    """``n`` TMA-core canvases at the model's mpp (random input, a round core of tissue each) and
    their tissue area in µm²."""
    d = round(CORE_UM / model.mpp)
    side = d + 2 * MARGIN_PX
    yy, xx = np.mgrid[:side, :side]
    disc = ((yy - side / 2 + 0.5) ** 2 + (xx - side / 2 + 0.5) ** 2 <= (d / 2) ** 2).astype(np.float32)
    g = torch.Generator(device=device).manual_seed(1)
    xs = [torch.rand((1, model.in_channels, side, side), generator=g, device=device) * 2 - 1 for _ in range(n)]
    return xs, [disc] * n, float(n * disc.sum() * model.mpp**2)


def bench_staining(model: StainModel, xs, tissues, tissue_um2: float, cfg: StainConfig) -> dict[str, Any]:
    device = model.device
    per_call = model.canvases_per_call(*model.padded_size(*xs[0].shape[-2:]), cfg)

    def run():
        for i in range(0, len(xs), per_call):
            model.stain_batch(xs[i : i + per_call], cfg, seeds=list(range(i, i + len(xs[i : i + per_call]))),
                              tissues=tissues[i : i + per_call])

    model.stain_batch(xs[:per_call], cfg, seeds=list(range(per_call)), tissues=tissues[:per_call])  # warm-up
    reset_memory(device)
    (seconds,) = timed(run, device, repeat=1, warmup=0)
    h, w = model.padded_size(*xs[0].shape[-2:])
    win, _ = model.ldm_windows(h // model.f, w // model.f, cfg)
    return {"precision": model.precision, "attention": "sdpa" if model.sdpa else "math", "guidance": cfg.guidance,
            "steps": cfg.steps, "cores": len(xs), "cores_per_call": per_call, "window_latent": list(win),
            "seconds": seconds, "s_per_tissue_mpx": seconds / (tissue_um2 / model.mpp**2 / 1e6),
            "s_per_cm2": seconds / (tissue_um2 / CM2_UM2), "peak_gib": peak_memory(device)}


def flops_per_cm2(model: StainModel, cfg: StainConfig, xs, tissue_um2: float) -> float:
    """Network FLOPs (denoiser windows × NFE, guidance doubling, and the decoder) per cm² of tissue."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.stain_batch(xs[:1], replace(cfg, steps=1), seeds=[0])
    one_nfe = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model.stain_batch(xs[:1], replace(cfg, steps=2), seeds=[0])
    per_nfe = counter.get_total_flops() - one_nfe  # the decoder and conditioning cancel
    total = one_nfe + (cfg.steps - 1) * per_nfe
    return total / (tissue_um2 / len(xs) / CM2_UM2)


# ---------------------------------------------------------------------------------------------
# (4) the CLI, (5) torchrun
# ---------------------------------------------------------------------------------------------
def cli_stain(run: Path, tmp: Path, device: torch.device, *, steps: int) -> dict[str, Any]:
    from stainldm.wsi.writer import write_pyramid

    d = round(CORE_UM / 0.5)
    pitch = d + 200
    side = 2 * pitch
    rng = np.random.default_rng(0)
    img = rng.integers(200, 400, (side, side, 2), dtype=np.uint16)  # glass-like background
    yy, xx = np.mgrid[:side, :side]
    for cy in (pitch // 2, pitch + pitch // 2):
        for cx in (pitch // 2, pitch + pitch // 2):
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= (d / 2) ** 2
            img[inside] = rng.integers(1500, 4000, (int(inside.sum()), 2), dtype=np.uint16)
    slide = write_pyramid(tmp / "tma.tiff", img, mpp=0.5)
    exe = [sys.executable, "-m", "pipelines.cli", "stain", str(slide), "--checkpoint", str(run), "--quiet"]
    dev = "cuda" if device.type == "cuda" else "cpu"
    t0 = time.perf_counter()
    ok = subprocess.run([*exe, "--out", str(tmp / "stained"), "--device", dev, "--steps", str(steps)], cwd=ROOT,
                        capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"exit": ok.returncode, "seconds": seconds, "stderr": ok.stderr[-500:]}
    prov = tmp / "stained" / "tma.json"
    if prov.is_file():
        meta = json.loads(prov.read_text())
        out.update({k: meta.get(k) for k in ("device", "precision", "attention", "regions", "batches", "seconds")})
    bad = subprocess.run([*exe, "--out", str(tmp / "bad"), "--device", f"cuda:{max(torch.cuda.device_count(), 1) + 6}"],
                         cwd=ROOT, capture_output=True, text=True)
    out["bad_device"] = {"exit": bad.returncode, "stderr": bad.stderr.strip()}
    return out


def torchrun_two(tmp: Path) -> dict[str, Any]:
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): needs 2"}
    store = synthetic_store(tmp / "store2", tile=64, mpp=1.0, n=64)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "pipelines.cli",
           "train", "baseline", "--config", str(ROOT / "configs" / "ci.yaml"), "--store", str(store),
           "--out", str(tmp / "ddp"), "--device", "cuda", "--set", "precision=bf16", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    meta = read_model_json(tmp / "ddp") if (tmp / "ddp" / "model.json").is_file() else {}
    return {"exit": proc.returncode, "seconds": time.perf_counter() - t0, "trained_on": meta.get("trained_on"),
            "stderr": proc.stderr[-500:]}


# ---------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="on the CPU at reduced widths and sizes (checks the script)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all sections (default 420)")
    p.add_argument("--json", type=Path, default=ROOT / "bench-out" / "gpu.json")
    p.add_argument("--tmp", type=Path)
    args = p.parse_args()
    dry = args.dry_run
    if dry:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        sys.exit("error: no CUDA GPU here; run with --dry-run to check the script on the CPU")
    budget = Budget(args.budget)
    tmp = Path(tempfile.mkdtemp(prefix="stainldm-bench-gpu-", dir=args.tmp))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res: dict[str, Any] = {"device": name, "torch": torch.__version__, "dry_run": dry, "sections": {}}

    def save():
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, default=str))

    def section(key: str, need: float, fn):
        if budget.left() < need:
            res["sections"][key] = {"skipped": f"time budget: {budget.left():.0f} s left, needs ~{need:.0f} s"}
            print(f"[{key}] skipped: {res['sections'][key]['skipped']}", flush=True)
            return None
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # a benchmark goes on with its other sections
            out = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
            print(f"[{key}] FAILED: {out['error']}", flush=True)
        res["sections"][key] = out
        print(f"[{key}] {time.perf_counter() - t0:.0f} s", flush=True)
        save()
        return out

    print(f"{name}, torch {torch.__version__}, budget {args.budget:.0f} s{' (dry run)' if dry else ''}", flush=True)
    peak = section("anchor", 5, lambda: {"matmul_bf16_flops": matmul_rate(device, 512 if dry else 8192)})
    measured = peak["matmul_bf16_flops"] if peak and "matmul_bf16_flops" in peak else float("nan")
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    res["datasheet_bf16_flops"] = sheet
    tile, mpp = (64, 0.5) if dry else (256, 0.5)
    batch = 2 if dry else 32
    store = synthetic_store(tmp / "store", tile=tile, mpp=mpp, n=16 if dry else 64)
    repeat = 2 if dry else 6
    state: dict[str, Any] = {}

    def train_ae():
        out = []
        for ck in (False, True):
            cfg = lab_config(["autoencoder.adversarial_start=0", f"gradient_checkpointing={str(ck).lower()}"], dry)
            trainer = Trainer(kind="autoencoder", cfg=cfg, run_dir=tmp / f"ae-{ck}", store=store, device=str(device))
            out.append(bench_training("autoencoder", trainer, batch=batch, repeat=repeat, peak=measured))
            if not ck:
                state["ae_run"] = save_run(trainer, tmp / "ae-run")
            del trainer
            reset_memory(device)
        return out

    def train_ldm():
        trainer = Trainer(kind="ldm", cfg=lab_config([], dry), run_dir=tmp / "ldm", store=store, device=str(device),
                          autoencoder_run=state["ae_run"])
        out = bench_training("ldm", trainer, batch=batch, repeat=repeat, peak=measured)
        state["ldm_run"] = save_run(trainer, tmp / "ldm-run")
        del trainer
        reset_memory(device)
        return [out]

    section("train_autoencoder", 60, train_ae)
    if "ae_run" in state:
        section("train_ldm", 40, train_ldm)

    def stain():
        rows = []
        n = 2 if dry else 16
        model = StainModel.load(state["ldm_run"], device=device)
        xs, tissues, um2 = core_canvases(model, n, device)
        runs = [("fp32", False, 1.0, 64), ("fp32", False, 1.5, 64), ("bf16", False, 1.0, 64), ("bf16", False, 1.5, 64),
                ("bf16", True, 1.0, 64), ("bf16", True, 1.5, 64), ("bf16", True, 1.5, 16), ("bf16", True, 1.5, 128)]
        for precision, sdpa, guidance, batch_size in runs:
            if dry and (batch_size != 64 or (precision == "bf16" and not sdpa)):
                continue
            if budget.left() < 30:
                rows.append({"skipped": f"{precision} sdpa={sdpa} g={guidance} batch {batch_size}: time budget"})
                continue
            model.precision = precision  # the same weights; autocast follows the attribute
            model.set_attention(sdpa=sdpa)
            cfg = StainConfig(steps=2 if dry else 10, guidance=guidance, batch_size=4 if dry else batch_size)
            row = bench_staining(model, xs, tissues, um2, cfg)
            row["batch_size"] = cfg.batch_size
            if precision == "bf16" and sdpa and batch_size == 64:
                row["pflop_per_cm2"] = flops_per_cm2(model, cfg, xs, um2) / 1e15
            rows.append(row)
            print(f"  {precision} {'sdpa' if sdpa else 'math'} g={guidance} batch {cfg.batch_size}: "
                  f"{row['s_per_cm2']:.1f} s/cm², windows {row['window_latent']}, peak {row['peak_gib']:.1f} GiB",
                  flush=True)
            reset_memory(device)
        return rows

    if "ldm_run" in state:
        section("stain", 60, stain)
        section("cli", 30, lambda: cli_stain(state["ldm_run"], tmp, device, steps=2 if dry else 10))
    section("torchrun", 30, lambda: torchrun_two(tmp))
    shutil.rmtree(tmp, ignore_errors=True)
    res["seconds"] = time.perf_counter() - budget.t0
    save()
    report(res, measured, sheet)


def report(res: dict[str, Any], measured: float, sheet: float | None) -> None:
    s = res["sections"]
    print(f"\n(1) anchor, bf16 8192³ matmul: {measured / 1e12:.0f} TFLOP/s measured"
          + (f"; datasheet dense bf16 {sheet / 1e12:.0f}" if sheet else ""))
    rows = [r for key in ("train_autoencoder", "train_ldm") for r in (s.get(key) or []) if isinstance(r, dict) and "mfu" in r]
    if rows:
        print(f"\n(2) training, lab-f4, batch {rows[0]['batch']}, one GPU (data loading not timed); goal MFU >= "
              f"{GOAL_MFU:.0%} of the bf16 peak:")
        print(f"{'model':<12} {'precision':>9} {'ckpt':>5} {'steps/s':>8} {'tiles/s':>8} {'TFLOP/step':>11} "
              f"{'peak GiB':>9} {'MFU meas.':>10} {'MFU sheet':>10}  goal")
        for r in rows:
            mfu_sheet = r["mfu"] * measured / sheet if sheet else float("nan")
            print(f"{r['kind']:<12} {r['precision']:>9} {('on' if r['checkpointing'] else 'off'):>5} "
                  f"{r['steps_per_s']:>8.2f} {r['tiles_per_s']:>8.1f} {r['tflop_per_step']:>11.2f} {r['peak_gib']:>9.1f} "
                  f"{r['mfu']:>10.1%} {mfu_sheet:>10.1%}  {'ok' if r['mfu'] >= GOAL_MFU else 'MISSED'}")
    for key in ("train_autoencoder", "train_ldm", "stain", "cli", "torchrun"):
        if isinstance(s.get(key), dict) and ("error" in s[key] or "skipped" in s[key]):
            print(f"{key}: {s[key].get('error') or s[key].get('skipped')}")
    stain = [r for r in (s.get("stain") or []) if isinstance(r, dict) and "s_per_cm2" in r]
    if stain:
        print(f"\n(3) staining, lab-f4 ldm (random weights), {stain[0]['cores']} cores of {CORE_UM:.0f} µm at 0.5 µm/px, "
              f"dpmpp_2m {stain[0]['steps']} NFE; goal <= {GOAL_S_PER_CM2:.0f} s per cm² at guidance 1.5:")
        print(f"{'precision':>9} {'attention':>9} {'guidance':>8} {'batch':>6} {'window':>10} {'cores/call':>10} "
              f"{'s/tissue Mpx':>12} {'s/cm²':>8} {'peak GiB':>9}  goal")
        for r in stain:
            goal = "" if r["guidance"] != 1.5 else ("ok" if r["s_per_cm2"] <= GOAL_S_PER_CM2 else "MISSED")
            print(f"{r['precision']:>9} {r['attention']:>9} {r['guidance']:>8} {r['batch_size']:>6} "
                  f"{'x'.join(map(str, r['window_latent'])):>10} {r['cores_per_call']:>10} {r['s_per_tissue_mpx']:>12.3f} "
                  f"{r['s_per_cm2']:>8.1f} {r['peak_gib']:>9.1f}  {goal}")
        lean = [r for r in stain if "pflop_per_cm2" in r]
        for r in lean:
            rate = r["pflop_per_cm2"] * 1e15 / r["s_per_cm2"]
            print(f"counted network FLOPs, guidance {r['guidance']}: {r['pflop_per_cm2']:.1f} PFLOP per cm², run at "
                  f"{rate / 1e12:.0f} TFLOP/s = {rate / measured:.0%} of the measured bf16 peak")
    if isinstance(s.get("cli"), dict) and "exit" in s["cli"]:
        c = s["cli"]
        print(f"\n(4) stainldm stain (4 cores): exit {c['exit']}, {c['seconds']:.1f} s wall incl. start; provenance "
              f"device {c.get('device')}, precision {c.get('precision')}, attention {c.get('attention')}, "
              f"{c.get('regions')} regions in {c.get('batches')} batch(es); bad device: exit {c['bad_device']['exit']}, "
              f"{c['bad_device']['stderr']!r}")
    if isinstance(s.get("torchrun"), dict):
        print(f"(5) torchrun, 2 processes: {s['torchrun']}")
    print(f"\ntime {res['seconds']:.0f} s; wrote {json.dumps(str(ROOT / 'bench-out' / 'gpu.json'))}")


if __name__ == "__main__":
    main()
