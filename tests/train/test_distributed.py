"""Training under torchrun with DDP: two CPU processes (gloo) stay bit-identical and only rank 0 writes.

One launch trains what a lab trains on GPUs with configs/lab-f4.yaml, in bf16: the autoencoder with
its discriminator switching on mid-run, the ldm with semantic tokens, condition dropout and gradient
accumulation, the baseline, and a decoder-only fine-tuning of the autoencoder (tests/train/_ddp_worker.py).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from stainldm.models.autoencoder import ENCODER_PARTS
from stainldm.models.runs import read_model_json
from stainldm.train import checkpoint as ckpt

WORKER = Path(__file__).with_name("_ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]
STEPS = {"autoencoder": 4, "ldm": 3, "baseline": 3, "decoder": 2}


def test_torchrun_trains_every_kind_with_bit_identical_ranks_and_only_rank_0_writes(train_store, tmp_path):
    base, out = tmp_path / "runs", tmp_path / "weights"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_LOCALID")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(train_store), str(base), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    for kind, steps in STEPS.items():  # kind: the run's name (decoder is an autoencoder run)
        w0, w1 = (load_file(out / f"rank{r}-{kind}.safetensors") for r in (0, 1))
        assert w0.keys() == w1.keys() and len(w0) > 10
        diverged = [k for k in w0 if not torch.equal(w0[k], w1[k])]
        assert diverged == [], f"{kind}: ranks differ in {diverged[:5]}"
        run = base / kind
        assert not (base / f"{kind}-rank1").exists(), f"rank 1 wrote a {kind} run folder"
        for name in ("config.yaml", "metrics.csv", "model.safetensors", "model.json", "state.pt"):
            assert (run / name).is_file(), f"{kind}/{name}"
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))  # written once, by rank 0
        assert float(rows[-1]["tiles_per_s"]) > 0
        state = ckpt.load_state(run / "state.pt")
        assert state["step"] == steps
        assert all(torch.equal(state["model"][k], w0[f"model.{k}"]) for k in state["model"])
        assert read_model_json(run)["trained_on"] == {"device": "cpu", "processes": 2, "precision": "bf16"}
        assert sorted(p.name for p in (run / "samples").iterdir()) == [f"step_{steps:07d}.png"]

    # The discriminator started at step 2 and trained in step with the ranks (gradients averaged,
    # BatchNorm statistics too); the ldm's BatchNorm statistics (resnet18 tokens) agree as well.
    w = load_file(out / "rank0-autoencoder.safetensors")
    assert sum(k.startswith("discriminator.") for k in w) > 10
    assert any("running_mean" in k for k in w if k.startswith("discriminator."))
    assert any("running_mean" in k for k in load_file(out / "rank0-ldm.safetensors"))
    assert "discriminator" in ckpt.load_state(base / "autoencoder" / "state.pt")
    # The decoder fine-tuning under DDP left the encoder exactly as the autoencoder run exported it.
    ae, ft = (load_file(base / name / "model.safetensors") for name in ("autoencoder", "decoder"))
    assert all(torch.equal(ae[k], ft[k]) for k in ae if k.split(".")[0] in ENCODER_PARTS)
    assert any(not torch.equal(ae[k], ft[k]) for k in ae if k.startswith("decoder."))
