"""The paired tile dataset: item layout, paired geometry, batch normalisation and jitter, workers."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from stainldm.data.augment import AugmentConfig, build_paired, jitter_batch
from stainldm.data.dataset import BatchPreprocessor, PairedTileDataset, channel_stats, load_or_compute_stats
from stainldm.data.store import TileRow, TileStore
from stainldm.errors import InputError

TILE = 32
SQUARE = (slice(4, 12), slice(6, 20))  # rows 4-11, columns 6-19: off-centre, so flips and rotations move it


@pytest.fixture(scope="module")
def square_store(tmp_path_factory):
    """Tiles whose unstained and stained images hold the same bright square on a dark ground
    (ground = the augmentation's fill value, so borders it brings in look like ground in both)."""
    root = tmp_path_factory.mktemp("squares") / "store"
    n = 12
    u = np.zeros((n, TILE, TILE, 2), np.uint16)
    u[:, 4:12, 6:20] = (1000, 600)
    u[:, 0, 0, 1] = np.arange(n)  # tells tiles apart
    s = np.full((n, TILE, TILE, 3), 20, np.uint8)
    s[:, 4:12, 6:20] = (220, 120, 200)
    rows = [TileRow("s", f"C{i % 3}", ("train", "train", "test")[i % 3], i, 0, 0.5, 1.0, 0.4, 0.6) for i in range(n)]
    store = TileStore.create(root, tile_px=TILE, channels_in=2, dtype_in="uint16")
    store.append(u, s, rows)
    return root


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


# ---------------------------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------------------------
def test_items_have_the_documented_dtypes_and_shapes(square_store):
    ds = PairedTileDataset(square_store, split="train", augment=None)
    assert len(ds) == 8 and ds.channels_in == 2
    store = TileStore.open(square_store)
    for k in (0, 5):
        item = ds[k]
        i = item["index"]
        assert i == ds.indices[k] and store.rows[i].split == "train"
        assert item["unstained"].dtype == torch.uint16 and item["unstained"].shape == (2, TILE, TILE)
        assert item["stained"].dtype == torch.uint8 and item["stained"].shape == (3, TILE, TILE)
        u, s = store.read(i)
        np.testing.assert_array_equal(item["unstained"].numpy(), u.transpose(2, 0, 1))  # no augmentation
        np.testing.assert_array_equal(item["stained"].numpy(), s.transpose(2, 0, 1))
    assert len(PairedTileDataset(square_store, split=None)) == 12
    assert len(PairedTileDataset(square_store, split="test")) == 4


def test_a_split_without_tiles_is_an_input_error(square_store):
    with pytest.raises(InputError, match="no tiles in split 'val'"):
        PairedTileDataset(square_store, split="val")


def test_geometric_augmentation_keeps_unstained_and_stained_aligned(square_store):
    ds = PairedTileDataset(square_store, split=None, augment=AugmentConfig(affine_p=1.0), seed=5)
    home = np.zeros((TILE, TILE), bool)
    home[SQUARE] = True
    moved = 0
    for k in range(60):
        item = ds[k]  # k >= len(ds): the same tiles in later epochs, augmented afresh
        mu = item["unstained"][0].numpy() > 500
        ms = item["stained"][0].numpy() > 120
        assert mu.sum() > 0.8 * home.sum(), k
        assert np.count_nonzero(mu ^ ms) <= 0.05 * mu.sum(), (k, np.count_nonzero(mu ^ ms))  # edge interpolation
        assert np.abs(_centroid(mu) - _centroid(ms)).max() < 0.25, k
        assert item["stained"][:, ~ms].float().mean() < 40  # no white/odd fill came in on one side only
        moved += np.abs(_centroid(mu) - _centroid(home)).max() > 1
    assert moved > 10  # the geometry did move the square


def test_geometric_augmentation_reaches_all_eight_orientations():
    ramp = np.arange(TILE * TILE).reshape(TILE, TILE)  # every flip/rotation of it is distinct
    orientations = {"identity": ramp, "rot90": np.rot90(ramp), "rot180": np.rot90(ramp, 2), "rot270": np.rot90(ramp, 3),
                    "hflip": ramp[:, ::-1], "vflip": ramp[::-1], "transpose": ramp.T, "antitranspose": np.rot90(ramp, 2).T}
    apply = build_paired(AugmentConfig(affine_p=0.0), seed=0)
    counts = dict.fromkeys(orientations, 0)
    for k in range(200):
        out, _ = apply(ramp[..., None].astype(np.uint16), np.zeros((TILE, TILE, 3), np.uint8), seed=k)
        counts[next(name for name, o in orientations.items() if np.array_equal(out[..., 0], o))] += 1
    assert all(n >= 5 for n in counts.values()), counts
    assert counts["identity"] < 0.3 * 200, counts


def test_augmentation_is_reproducible_for_a_seed(square_store):
    def draws(seed):
        ds = PairedTileDataset(square_store, split=None, augment=AugmentConfig(affine_p=1.0), seed=seed)
        return torch.stack([ds[k]["unstained"] for k in range(len(ds))])

    assert torch.equal(draws(3), draws(3))
    assert not torch.equal(draws(3), draws(4))


def test_build_paired_leaves_target_colours_alone_by_default():
    rng = np.random.default_rng(0)
    u = rng.integers(0, 4000, size=(TILE, TILE, 2)).astype(np.uint16)
    s = rng.integers(0, 256, size=(TILE, TILE, 3)).astype(np.uint8)
    apply = build_paired(AugmentConfig(affine_p=0.0), seed=0)  # flips and 90° turns only: pixels permuted
    for _ in range(10):
        au, as_ = apply(u, s)
        assert au.dtype == np.uint16 and as_.dtype == np.uint8
        assert sorted(as_.reshape(-1, 3).tolist()) == sorted(s.reshape(-1, 3).tolist())
        assert sorted(au.reshape(-1, 2).tolist()) == sorted(u.reshape(-1, 2).tolist())


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
STATS = {"low": [100.0, 200.0], "high": [1100.0, 1200.0]}


def test_batch_preprocessor_maps_input_by_stats_and_target_to_unit_range():
    pre = BatchPreprocessor(STATS)
    u = torch.zeros((1, 2, 1, 5), dtype=torch.int32)
    u[0, 0, 0] = torch.tensor([100, 600, 1100, 5000, 0])
    u[0, 1, 0] = torch.tensor([200, 700, 1200, 1700, 0])
    x = pre.input(u)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x[0, 0, 0], torch.tensor([-1.0, 0.0, 1.0, 2.0, -1.0]))  # > high kept up to 1.5
    torch.testing.assert_close(x[0, 1, 0], torch.tensor([-1.0, 0.0, 1.0, 2.0, -1.0]))
    s = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1)
    y = pre.target(s)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))


def test_jitter_is_reproducible_with_a_generator_and_changes_only_the_input():
    rng = np.random.default_rng(0)
    batch = {"unstained": torch.from_numpy(rng.integers(0, 1300, size=(4, 2, 16, 16)).astype(np.int32)),
                "stained": torch.from_numpy(rng.integers(0, 256, size=(4, 3, 16, 16)).astype(np.uint8))}
    before = batch["unstained"].clone()
    plain = BatchPreprocessor(STATS)
    jittered = BatchPreprocessor(STATS, augment=AugmentConfig())
    x0, y0 = plain(batch)
    x1, y1 = jittered(batch, generator=torch.Generator().manual_seed(1))
    x2, y2 = jittered(batch, generator=torch.Generator().manual_seed(1))
    x3, _ = jittered(batch, generator=torch.Generator().manual_seed(2))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert not torch.allclose(x0, x1, atol=1e-3)
    assert torch.equal(y0, y1) and torch.equal(y1, y2)  # the target is never jittered
    assert torch.equal(batch["unstained"], before)
    assert x1.min() >= -1 and x1.max() <= 2
    # per-sample, per-channel gain and offset: small changes, not a new image
    assert (x1 - x0).abs().mean() < 0.2


def test_jitter_batch_ranges_and_no_op_config():
    x = torch.rand((3, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    y = jitter_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1.5 and y is not x
    off = AugmentConfig(input_gain=0, input_offset=0, input_gamma=0, input_noise=0)
    torch.testing.assert_close(jitter_batch(x, off, torch.Generator().manual_seed(0)), x)


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def test_channel_stats_and_the_stats_file(square_store, tmp_path):
    stats = channel_stats(TileStore.open(square_store))
    assert stats["low"] == [0.0, 0.0] and stats["high"] == [1000.0, 600.0]
    assert stats["dtype"] == "uint16" and stats["tiles"] == 12
    root = tmp_path / "store"
    shutil.copytree(square_store, root)
    assert load_or_compute_stats(TileStore.open(root)) == json.loads((root / "stats.json").read_text()) == stats
    (root / "stats.json").write_text(json.dumps({**stats, "low": [1.0, 2.0]}))
    assert load_or_compute_stats(TileStore.open(root))["low"] == [1.0, 2.0]  # reused
    (root / "stats.json").write_text(json.dumps({"low": [1.0], "high": [2.0]}))  # another channel count
    assert load_or_compute_stats(TileStore.open(root)) == stats


# ---------------------------------------------------------------------------------------------
# A real multi-process loader on a prepared store
# ---------------------------------------------------------------------------------------------
def _four_batches(loader) -> list[int]:
    seen = []
    for n, batch in enumerate(loader):
        assert batch["unstained"].shape == (8, 2, 64, 64) and batch["unstained"].dtype == torch.uint16
        assert batch["stained"].shape == (8, 3, 64, 64) and batch["stained"].dtype == torch.uint8
        seen += batch["index"].tolist()
        if n == 3:
            break
    return seen


def test_dataloader_with_two_workers_yields_batches(small_store):
    ds = PairedTileDataset(small_store, split="train", augment=AugmentConfig(), seed=0)
    # forkserver: fresh worker processes (forked ones are tested below)
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, multiprocessing_context="forkserver",
                        generator=torch.Generator().manual_seed(0), timeout=120)
    pre = BatchPreprocessor(load_or_compute_stats(TileStore.open(small_store)), augment=AugmentConfig())
    seen = _four_batches(loader)
    assert len(seen) == len(set(seen)) == 32
    assert set(seen) <= set(ds.indices.tolist())
    batch = next(iter(DataLoader(ds, batch_size=8)))
    x, y = pre(batch, generator=torch.Generator().manual_seed(0))
    assert x.dtype == y.dtype == torch.float32 and torch.isfinite(x).all()
    assert -1 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.skipif(cv2.getNumThreads() < 2, reason="needs OpenCV's thread pool (2+ cores)")
def test_forked_workers_load_after_the_parent_used_opencv_threads(small_store):
    img = np.random.default_rng(0).random((2000, 2000), dtype=np.float32)
    cv2.GaussianBlur(img, (0, 0), 5)  # what a training process that just ran prepare has done
    ds = PairedTileDataset(small_store, split="train", augment=AugmentConfig(), seed=0)
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork", timeout=5)
    assert len(_four_batches(loader)) == 32
