"""write_pyramid: written, then read back level by level with OpenSlide and tifffile."""

from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import tifffile

from stainldm.errors import InputError
from stainldm.wsi import writer as writer_mod
from stainldm.wsi.reader import open_slide
from stainldm.wsi.writer import pyramid_shapes, write_pyramid


def _box_halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[:2]
    a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.float64)
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def test_pyramid_shapes_halve_until_below_min():
    assert pyramid_shapes((2220, 2967)) == [(2220, 2967), (1110, 1484), (555, 742)]
    assert pyramid_shapes((1023, 500)) == [(1023, 500)]
    assert pyramid_shapes((1025, 3)) == [(1025, 3), (513, 2)]
    assert pyramid_shapes((40000, 40000))[-1] == (625, 625)


def test_rgb_pyramid_opens_in_openslide_and_tifffile_at_every_level(tmp_path, he_image):
    img = np.ascontiguousarray(he_image[:2100, :1900])
    path = write_pyramid(tmp_path / "he.tiff", img, mpp=(0.5, 0.5), provenance={"source": "cmu", "config_hash": "abc"})
    shapes = pyramid_shapes((1900, 2100))
    assert len(shapes) == 3
    slide = openslide.OpenSlide(str(path))
    assert slide.level_dimensions == tuple(shapes)
    assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, rel=1e-4)
    expected = img.astype(np.float64)
    for level, (w, h) in enumerate(shapes):
        got = np.asarray(slide.read_region((0, 0), level, (w, h)))[..., :3].astype(np.float64)
        err = np.abs(got - expected).mean()
        assert err < 3.5, f"level {level}: mean JPEG error {err:.2f}"
        expected = _box_halve(expected)
    with tifffile.TiffFile(path) as tif:
        pages = tif.pages
        assert len(pages) == 3 and all(p.is_tiled and p.tilewidth == 256 for p in pages)
        assert [p.compression.name for p in pages] == ["JPEG"] * 3
        assert pages[0].photometric.name == "YCBCR"  # tifffile encodes RGB input as YCbCr JPEG
        assert [p.subfiletype for p in pages] == [0, 1, 1]
        x_res = [p.tags["XResolution"].value for p in pages]
        mpps = [1e4 / (n / d) for n, d in x_res]
        assert mpps == pytest.approx([0.5, 1.0, 0.5 * 1900 / 475], rel=1e-3)
        desc = json.loads(pages[0].description)
        assert desc["software"] == "stainldm" and desc["source"] == "cmu" and desc["config_hash"] == "abc"
        assert desc["mpp"] == [0.5, 0.5]
        assert tif.series[0].levels[2].shape == (525, 475, 3)


def test_uint16_multichannel_is_lossless_at_every_level(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((1300, 1100, 2)) * 65535).astype(np.uint16)
    path = write_pyramid(tmp_path / "af.tiff", img, mpp=0.5, tile=512, channel_names=["AF405", "AF488"])
    with open_slide(path) as slide:
        assert slide.channel_names == ("AF405", "AF488")
        assert slide.level_count == 2
        np.testing.assert_array_equal(slide.read_region((0, 0), (1100, 1300)), img)
        lvl1 = slide.read_region((0, 0), (550, 650), 1).astype(np.float64)
        np.testing.assert_allclose(lvl1, _box_halve(img), atol=0.5)  # the 2×2 mean, rounded
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression.name == "ADOBE_DEFLATE" and tif.pages[0].tilewidth == 512


def test_gray_and_float_are_lossless(tmp_path):
    gray = (np.arange(300 * 200) % 251).astype(np.uint8).reshape(300, 200)
    with open_slide(write_pyramid(tmp_path / "g.tiff", gray, mpp=1.0)) as slide:
        assert (slide.channels, slide.background) == (1, 255)
        np.testing.assert_array_equal(slide.read_region((0, 0), (200, 300))[..., 0], gray)
    std = np.random.default_rng(1).random((100, 120, 1)).astype(np.float32)
    with open_slide(write_pyramid(tmp_path / "f.tiff", std, mpp=1.0)) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), (120, 100)), std)


def test_tile_stream_equals_array(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 255, (1500, 1300, 3), dtype=np.uint8)
    img[:, 1000:] = 255  # right strip left uncovered by the tiles below -> background

    def tiles():
        for y in range(0, 1500, 400):  # 400-px windows over a 256-px band grid, overlapping by 100
            for x in range(0, 1000, 300):
                yield (x, y), img[y : y + 500, x : min(x + 400, 1000)]

    a = write_pyramid(tmp_path / "a.tiff", img, mpp=0.5, compression="deflate")
    b = write_pyramid(tmp_path / "b.tiff", tiles(), size_wh=(1300, 1500), channels=3, dtype=np.uint8,
                      mpp=0.5, compression="deflate")
    with open_slide(a) as sa, open_slide(b) as sb:
        for level in range(sa.level_count):
            size = sa.level_dimensions[level]
            np.testing.assert_array_equal(sa.read_region((0, 0), size, level), sb.read_region((0, 0), size, level))


def test_tiles_out_of_row_order_fail(tmp_path):
    tiles = [((0, 600), np.zeros((256, 256, 3), np.uint8)), ((0, 0), np.zeros((256, 256, 3), np.uint8))]
    with pytest.raises(InputError, match=r"tile at \(0, 0\) arrived after rows up to 512"):
        write_pyramid(tmp_path / "x.tiff", iter(tiles), size_wh=(512, 1024), channels=3, dtype=np.uint8, mpp=1)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "slide.tiff"
    target.write_bytes(b"previous result")

    class Exploding:
        shape, dtype = (2000, 600, 3), np.uint8

        def __getitem__(self, rows):
            if rows.start >= 1024:
                raise RuntimeError("disk on fire")
            return np.zeros((min(256, 2000 - rows.start), 600, 3), np.uint8)

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_pyramid(target, Exploding(), mpp=0.5)
    assert target.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.tiff"]


def test_disk_spill_and_bigtiff_paths(tmp_path, monkeypatch, he_image):
    monkeypatch.setattr(writer_mod, "_SPILL_IN_MEMORY_BYTES", 0)  # force the temporary-file spill
    monkeypatch.setattr(writer_mod, "_BIGTIFF_BYTES", 1)  # force BigTIFF
    img = np.ascontiguousarray(he_image[:2200, :2100])
    path = write_pyramid(tmp_path / "big.tiff", img, mpp=0.5, compression="deflate")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    slide = openslide.OpenSlide(str(path))
    assert len(slide.level_dimensions) == 3
    lvl1 = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]))[..., :3]
    np.testing.assert_allclose(lvl1.astype(np.float64), _box_halve(img), atol=0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tiff"]  # spill files are gone


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 100}, "multiple of 16"),
        ({"compression": "jpeg2000"}, "unknown compression"),
        ({"quality": 0}, "quality must be 1-100"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        write_pyramid(tmp_path / "x.tiff", np.zeros((64, 64, 3), np.uint8), mpp=1.0, **kwargs)


def test_jpeg_refuses_uint16_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match="JPEG needs uint8"):
        write_pyramid(tmp_path / "x.tiff", np.zeros((64, 64, 2), np.uint16), mpp=1.0, compression="jpeg")
    with pytest.raises(InputError, match="does not exist; create it"):
        write_pyramid(tmp_path / "no" / "x.tiff", np.zeros((64, 64, 3), np.uint8), mpp=1.0)
