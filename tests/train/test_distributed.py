"""Training under DDP: two CPU processes (gloo) stay in sync and only rank 0 writes the run."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("_ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_train_identical_weights_and_only_rank_0_writes(train_store, tmp_path):
    world, port, out = 2, _free_port(), tmp_path / "weights"
    # Each rank is told its own run folder: if rank 1 wrote anything, its folder would appear.
    runs = [tmp_path / "run", tmp_path / "run-rank1"]
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, str(WORKER), str(train_store), str(runs[rank]), str(out), "steps=3",
               "checkpoint_every=3", "val_every=3", "data.batch_size=2", "val_tiles=2"]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-3000:]}"

    w0, w1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert w0.keys() == w1.keys() and len(w0) > 10
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "DDP ranks diverged"

    run = runs[0]
    assert not runs[1].exists(), "rank 1 wrote a run folder"
    for name in ("config.yaml", "metrics.csv", "model.safetensors", "model.json", "state.pt"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["1", "2", "3"]  # written once, by rank 0
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["step"] == 3
    assert all(torch.equal(state["model"][k], w0[k]) for k in w0)
    # tiles/s counts every rank's tiles
    assert float(rows[-1]["tiles_per_s"]) > 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.png"]
