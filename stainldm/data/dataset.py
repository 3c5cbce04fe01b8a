"""A torch ``Dataset`` of paired tiles from a :class:`~stainldm.data.store.TileStore`.

Workers deliver integer tiles (geometry augmented); :class:`BatchPreprocessor` normalises and
jitters whole batches on the training device. The unstained input is scaled per channel by robust
statistics of the store (``STORE/stats.json``: 0.5th and 99.5th percentiles over a sample of
tiles), so uint8 brightfield and uint16 fluorescence reach the model on the same scale; the
statistics travel with a trained model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from stainldm.data.augment import AugmentConfig, build_paired, jitter_batch
from stainldm.data.store import TileStore
from stainldm.files import atomic_write_text
from stainldm.seeds import Stream, derive_seed


def channel_stats(store: TileStore, *, samples: int = 256, seed: int = 0) -> dict:
    """Per-channel 0.5/99.5 percentiles of the unstained tiles (over up to ``samples`` tiles)."""
    n = len(store)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(samples, n), replace=False))
    data = np.stack([np.asarray(store.unstained[int(i)]) for i in idx]).astype(np.float32)
    flat = data.reshape(-1, data.shape[-1])
    lo = np.percentile(flat, 0.5, axis=0)
    hi = np.percentile(flat, 99.5, axis=0)
    hi = np.maximum(hi, lo + 1e-6)
    return {"low": lo.tolist(), "high": hi.tolist(), "dtype": str(store.unstained.dtype), "tiles": len(idx)}


def load_or_compute_stats(store: TileStore) -> dict:
    """``STORE/stats.json``, computed and written (atomically) when missing or stale."""
    path = Path(store.root) / "stats.json"
    if path.is_file():
        stats = json.loads(path.read_text())
        if len(stats.get("low", [])) == store.channels_in:
            return stats
    stats = channel_stats(store)
    if os.access(store.root, os.W_OK):
        atomic_write_text(path, json.dumps(stats))
    return stats


class PairedTileDataset(Dataset):
    """Paired tiles of one split, geometrically augmented, in their stored dtypes.

    Items are ``{"unstained": (C_in, H, W) uint8|uint16, "stained": (3, H, W) uint8, "index": i}``
    tensors; :class:`BatchPreprocessor` turns a collated batch into model inputs on the device.

    Args:
        root: the store folder.
        split: ``train``, ``val``, ``test`` or None for all tiles.
        augment: augmentation settings, or None (validation/test).
        seed: seeds the augmentation stream (each DataLoader worker offsets it by its id).
    """

    def __init__(self, root: str | os.PathLike, *, split: str | None = "train", augment: AugmentConfig | None = None,
                 seed: int = 0):
        self.root = Path(root)
        self.split = split
        self.augment_cfg = augment
        self.seed = seed
        store = TileStore.open(self.root)
        self.indices = store.indices(split)
        self.channels_in = store.channels_in
        self._store: TileStore | None = None  # opened lazily in each worker process
        self._augment = None
        if augment is not None:
            import albumentations  # noqa: F401  (imported here, in the parent, not first in a forked worker)

    def __len__(self) -> int:
        return len(self.indices)

    def _worker_setup(self) -> None:
        # No cv2.setNumThreads here: in a forked worker it deadlocks once the parent has used
        # OpenCV's thread pool (as a process that just ran prepare has).
        self._store = TileStore.open(self.root)
        if self.augment_cfg is not None:
            info = torch.utils.data.get_worker_info()
            self._augment = build_paired(self.augment_cfg, seed=derive_seed(self.seed, Stream.WORKER, info.id if info else 0, bits=31))

    def __getitem__(self, k: int) -> dict:
        """Item ``k``; ``k >= len(self)`` encodes an epoch (``k = epoch · len + position``, see
        :class:`EpochSampler`), which seeds the augmentation of that item in that epoch."""
        if self._store is None:
            self._worker_setup()
        epoch, pos = divmod(int(k), len(self.indices))
        i = int(self.indices[pos])
        u, s = self._store.read(i)
        if self._augment is not None:
            u, s = self._augment(u, s, seed=derive_seed(self.seed, Stream.AUGMENT, epoch, i, bits=31))
        return {"unstained": torch.from_numpy(np.ascontiguousarray(u.transpose(2, 0, 1))),  # (C_in, H, W)
                "stained": torch.from_numpy(np.ascontiguousarray(s.transpose(2, 0, 1))),  # (3, H, W)
                "index": i}


class BatchPreprocessor:
    """Collated integer batches -> float model inputs in [-1, 1] on the batch's device.

    The unstained input is scaled per channel by the store's statistics (``stats``: ``low`` and
    ``high`` per channel map to 0 and 1), optionally jittered (:func:`jitter_batch`), then mapped
    to [-1, 1] (values above ``high`` are kept up to 1.5 before mapping); the stained target is
    ``x / 127.5 - 1``.
    """

    def __init__(self, stats: dict, *, augment: AugmentConfig | None = None):
        self.low = torch.tensor(stats["low"], dtype=torch.float32).view(1, -1, 1, 1)
        self.high = torch.tensor(stats["high"], dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = augment

    def input(self, unstained: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, C_in, H, W)`` integer (or raw float) input -> float in ~[-1, 2]."""
        low, high = self.low.to(unstained.device), self.high.to(unstained.device)
        x = (unstained.to(torch.float32) - low) / (high - low)  # ~[0, 1]
        x = jitter_batch(x, self.augment, generator) if self.augment is not None else x.clamp(0, 1.5)
        return x * 2 - 1

    @staticmethod
    def target(stained: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> float in [-1, 1]."""
        return stained.to(torch.float32) / 127.5 - 1

    def __call__(self, batch: dict, *, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input(batch["unstained"], generator=generator), self.target(batch["stained"])


class EpochSampler(torch.utils.data.Sampler):
    """An endless, resumable stream of dataset positions, reshuffled every epoch, sharded by rank.

    Yields ``epoch · n + position`` (decoded by :class:`PairedTileDataset`), so the order and the
    augmentation of every item follow from the seed alone: a run resumed at item ``start``
    continues exactly as if it had not stopped, on any number of workers.

    Args:
        n: dataset length.
        seed: shuffling seed.
        start: items (per rank) already consumed.
        rank, world: this process's shard of every epoch's permutation.
    """

    def __init__(self, n: int, *, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def __iter__(self):
        per_rank = len(range(self.rank, self.n, self.world))
        if per_rank == 0:
            return
        epoch, skip = divmod(self.start, per_rank)
        while True:
            g = torch.Generator().manual_seed(derive_seed(self.seed, Stream.EPOCH, epoch))
            perm = torch.randperm(self.n, generator=g)[self.rank :: self.world].tolist()
            for pos in perm[skip:]:
                yield epoch * self.n + pos
            skip = 0
            epoch += 1
