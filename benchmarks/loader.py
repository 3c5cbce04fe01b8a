"""Training-data throughput: paired 256² tiles per second from a DataLoader with 2 workers.

    .venv/bin/python benchmarks/loader.py [--store STORE] [--seconds 20]

Without ``--store`` it builds one from a ``make-sample`` pair (stride 64 px, so a few hundred
tiles) in a temporary folder. It then measures, side by side in one run, augmented pairs/s
delivered by ``DataLoader(PairedTileDataset(..., augment=AugmentConfig()), batch_size=32,
num_workers=2)`` and, as the anchor, the same loader reading tiles through zarr's own API
(``array[i]``) instead of the store's direct chunk reader. Goal: ≥ 500 pairs/s. The per-batch
step (normalisation + photometric jitter, :class:`BatchPreprocessor`), which runs on the training
device, is timed separately on the CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
from _util import BENCH_OUT, machine_info, table, write_json
from torch.utils.data import DataLoader

from stainldm.data.augment import AugmentConfig
from stainldm.data.dataset import BatchPreprocessor, PairedTileDataset, load_or_compute_stats
from stainldm.data.store import TileStore


class ZarrApiDataset(PairedTileDataset):
    """The anchor: identical, but reads tiles through zarr's API."""

    def __getitem__(self, k: int) -> dict:
        if self._store is None:
            self._worker_setup()
            store = self._store
            store.read = lambda i: (np.asarray(store.unstained[i]), np.asarray(store.stained[i]))
        return super().__getitem__(k)


def build_store(folder: Path) -> Path:
    exe = Path(sys.executable).with_name("stainldm")
    sample, store = folder / "sample", folder / "store"
    subprocess.run([str(exe), "make-sample", "--out", str(sample), "--quiet"], check=True)
    subprocess.run([str(exe), "prepare", "--unstained", str(sample / "unstained.tiff"), "--stained",
                    str(sample / "stained.tiff"), "--out", str(store), "--set", "tiles.stride=64",
                    "--set", "tiles.min_tissue=0.3", "--quiet"], check=True)
    return store


def measure(dataset_cls, store: Path, seconds: float) -> tuple[float, int, dict]:
    ds = dataset_cls(store, split=None, augment=AugmentConfig(), seed=0)
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2, persistent_workers=True,
                        generator=torch.Generator().manual_seed(0))
    for _ in zip(range(4), loader, strict=False):  # warm-up: workers start, caches fill
        pass
    n, t0 = 0, time.perf_counter()
    batch: dict = {}
    while time.perf_counter() - t0 < seconds:
        for batch in loader:
            n += batch["stained"].shape[0]
            if time.perf_counter() - t0 >= seconds:
                break
    return n / (time.perf_counter() - t0), n, batch


def batch_step_ms(store: Path, batch: dict, repeats: int = 10) -> float:
    """CPU cost of the per-batch step (normalise + photometric jitter) per batch of 32."""
    prep = BatchPreprocessor(load_or_compute_stats(TileStore.open(store)), augment=AugmentConfig())
    gen = torch.Generator().manual_seed(0)
    prep(batch, generator=gen)
    t0 = time.perf_counter()
    for _ in range(repeats):
        prep(batch, generator=gen)
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an existing tile store (default: build one)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring time per loader")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="stainldm-bench-loader-"))
    try:
        store = args.store or build_store(tmp)
        st = TileStore.open(store)
        print(f"store {store}: {len(st)} tiles of {st.tile_px}² px, {st.channels_in} input channels "
              f"({st.unstained.dtype})")
        ours, n1, batch = measure(PairedTileDataset, store, args.seconds)
        anchor, n2, _ = measure(ZarrApiDataset, store, args.seconds)
        step = batch_step_ms(store, batch)
        print(table(["DataLoader (2 workers, batch 32, geometric augmentation)", "pairs/s", "pairs"],
                    [["PairedTileDataset (direct chunk reads)", f"{ours:.0f}", n1],
                     ["same, tiles through zarr's API (anchor)", f"{anchor:.0f}", n2]]))
        print(f"\nours/anchor {ours / anchor:.2f}x; goal >= 500 pairs/s: {'ok' if ours >= 500 else 'MISSED'}")
        print(f"batch step (normalise + photometric jitter, runs on the training device): {step:.1f} ms per "
              f"batch of {batch['stained'].shape[0]} on this CPU")
        write_json(BENCH_OUT / "loader.json", {"machine": machine_info(), "pairs_per_s": ours,
                                               "anchor_pairs_per_s": anchor, "batch_step_ms_cpu": step,
                                               "tiles": len(st)})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
