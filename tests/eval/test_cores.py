"""Cores from the store: grouping tiles by core, assembling a core, its tissue mask (pure maths on a tiny fake store)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stainldm.eval.cores import CoreImages, assemble_core, core_tissue, split_cores, tile_patches


class FakeStore:
    """The part of TileStore the core maths uses: rows, indices(split), tile_px and read(i)."""

    def __init__(self, rows: list[tuple[str, str, str, int, int]], tile_px: int = 4):
        self.rows = [SimpleNamespace(slide_id=s, core=c, split=sp, x=x, y=y, mpp=1.0) for s, c, sp, x, y in rows]
        self.tile_px = tile_px

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.rows) if r.split == split], dtype=np.int64)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        t = self.tile_px
        return np.full((t, t, 2), i + 1, np.uint16), np.full((t, t, 3), 10 * (i + 1), np.uint8)


def test_split_cores_groups_the_split_tiles_by_core_in_store_order():
    store = FakeStore([("s1", "A1", "test", 0, 0), ("s1", "A2", "train", 0, 0), ("s2", "B1", "test", 0, 0),
                       ("s1", "A1", "test", 8, 0)])
    cores = split_cores(store, "test")
    assert cores == {("s1", "A1"): [0, 3], ("s2", "B1"): [2]}
    assert all(isinstance(i, int) for idx in cores.values() for i in idx)
    assert split_cores(store, "val") == {}


def test_assemble_core_places_tiles_at_their_store_pixels():
    # Tiles at level-0 x = 100 and 108, y = 50 and 58, with 2 level-0 px per store px: 4 px apart.
    store = FakeStore([("s", "A1", "test", 100, 50), ("s", "A1", "test", 108, 50), ("s", "A1", "test", 108, 58)])
    c = assemble_core(store, "s", "A1", [0, 1, 2], step=2.0)
    assert c.key == "s:A1" and c.xy == (100.0, 50.0)
    assert c.tiles_uv == [(0, 0), (4, 0), (4, 4)]
    assert c.real.shape == (8, 8, 3) and c.unstained.shape == (8, 8, 2) and c.unstained.dtype == np.uint16
    assert (c.real[:4, :4] == 10).all() and (c.real[:4, 4:] == 20).all() and (c.real[4:, 4:] == 30).all()
    assert (c.real[4:, :4] == 255).all() and (c.unstained[4:, :4] == 0).all()  # no tile there: white, zero
    assert c.covered.sum() == 3 * 16 and not c.covered[4:, :4].any()


def _core(xy=(0.0, 0.0), shape=(4, 6)) -> CoreImages:
    h, w = shape
    return CoreImages("s", "A1", xy, np.zeros((h, w, 1), np.uint8), np.zeros((h, w, 3), np.uint8),
                      np.ones((h, w), bool), [(0, 0)])


def test_core_tissue_samples_the_mask_under_each_core_pixel_centre():
    # Core px = 2 level-0 px at 0.5 µm/px = 1 µm; mask px = 2 µm: two core px per mask px.
    mask = np.zeros((10, 10), bool)
    mask[1, 2] = True
    core = _core(xy=(4.0, 0.0))  # level-0 x 4 = 2 µm = mask column 1
    t = core_tissue(core, mask, step=2.0, slide_mpp=0.5, mask_mpp=2.0)
    assert t.shape == (4, 6)
    assert t[2:4, 2:4].all() and t.sum() == 4  # mask column 2 = core columns 2, 3; mask row 1 = core rows 2, 3


def test_core_tissue_is_false_off_the_mask_and_off_the_tiles():
    mask = np.ones((2, 2), bool)
    core = _core(shape=(4, 4))
    core.covered[0, 0] = False
    t = core_tissue(core, mask, step=1.0, slide_mpp=1.0, mask_mpp=1.0)
    assert not t[0, 0] and t[1, 1] and not t[2:].any() and not t[:, 2:].any()


def test_tile_patches_cuts_at_the_core_tiles():
    img = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    core = _core(shape=(8, 8))
    core.tiles_uv = [(0, 0), (4, 4)]
    patches = tile_patches(img, core, 4)
    assert len(patches) == 2 and (patches[1] == img[4:8, 4:8]).all()
