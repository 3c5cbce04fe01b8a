"""One rank of the distributed training test (run by tests/train/test_distributed.py under torchrun).

    torchrun --standalone --nproc_per_node=2 tests/train/_ddp_worker.py STORE BASE OUT

Trains, with the ``train:`` section of configs/ci.yaml in bf16, the three kinds a lab trains under
torchrun: the autoencoder with its patch discriminator switching on mid-run, the ldm on that
autoencoder with semantic tokens, condition dropout and gradient accumulation, the baseline, and the
autoencoder's decoder fine-tuned with its encoder frozen (``decoder``: parameters DDP must not wait for).
Rank 0 trains into ``BASE/<name>``, every other rank is told ``BASE/<kind>-rank<r>`` (which must
never appear: only rank 0 writes). Each rank then dumps everything it holds of each model — weights,
buffers, EMA, discriminator — to ``OUT/rank<r>-<kind>.safetensors`` for the test to compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

COMMON = ["wandb=disabled", "precision=bf16", "data.batch_size=2", "val_tiles=2", "sample_steps=2"]
KINDS = {
    "autoencoder": ["steps=4", "checkpoint_every=2", "val_every=4", "autoencoder.adversarial_weight=0.1",
                    "autoencoder.adversarial_start=2"],
    "ldm": ["steps=3", "checkpoint_every=3", "val_every=3", "optim.accumulate=2", "ldm.condition.semantic=true",
            "ldm.condition.backbone=resnet18", "ldm.condition.token_dim=32", "ldm.condition.dropout=0.1"],
    "baseline": ["steps=3", "checkpoint_every=3", "val_every=3"],
    "decoder": ["steps=2", "checkpoint_every=2", "val_every=2", "autoencoder.init={base}/autoencoder",
                "autoencoder.train_encoder=false", "autoencoder.frequency_weight=0.1"],
}


def main(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist
    from safetensors.torch import save_file

    from stainldm.train.config import load_train_config
    from stainldm.train.loop import Trainer

    store, base, out = (Path(a) for a in argv[:3])
    rank = int(os.environ["RANK"])
    out.mkdir(parents=True, exist_ok=True)
    for name, overrides in KINDS.items():
        kind = "autoencoder" if name == "decoder" else name
        cfg = load_train_config(ROOT / "configs" / "ci.yaml", [*COMMON, *(o.format(base=base) for o in overrides)])
        run = base / (name if rank == 0 else f"{name}-rank{rank}")
        trainer = Trainer(kind=kind, cfg=cfg, run_dir=run, store=store, device="cpu",
                          autoencoder_run=base / "autoencoder" if kind == "ldm" else None)
        assert trainer.distributed and dist.get_world_size() == int(os.environ["WORLD_SIZE"])
        trainer.train()
        held = {f"model.{k}": v for k, v in trainer.model.state_dict().items()}
        held.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
        if trainer.d_step is not None:
            held.update({f"discriminator.{k}": v for k, v in trainer.d_step.discriminator.state_dict().items()})
        save_file({k: v.detach().cpu().contiguous() for k, v in held.items()}, out / f"rank{rank}-{name}.safetensors")
        torch.distributed.barrier()  # the ldm reads the autoencoder run only once rank 0 has written it
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
