"""One rank of the distributed training test (run by tests/train/test_distributed.py, not by pytest).

    RANK=r WORLD_SIZE=n LOCAL_RANK=r MASTER_ADDR=127.0.0.1 MASTER_PORT=p \\
        python tests/train/_ddp_worker.py STORE RUN_DIR OUT_DIR [KEY=VALUE ...]

Trains the baseline with the ``train:`` section of configs/ci.yaml (plus overrides) into RUN_DIR
and writes this rank's trained weights to ``OUT_DIR/rank<r>.safetensors``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    import torch.distributed as dist

    from pipelines.train import load_train_config
    from stainldm.train import checkpoint as ckpt
    from stainldm.train.loop import Trainer

    store, run_dir, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    cfg = load_train_config(ROOT / "configs" / "ci.yaml", ["wandb=disabled", *argv[3:]])
    trainer = Trainer(kind="baseline", cfg=cfg, run_dir=run_dir, store=store, device="cpu")
    assert trainer.distributed and dist.get_world_size() == int(os.environ["WORLD_SIZE"])
    trainer.train()
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_weights(trainer.model, out / f"rank{trainer.rank}.safetensors")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
