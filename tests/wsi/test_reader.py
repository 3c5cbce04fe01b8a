"""open_slide over real files: the CMU Aperio sample, our pyramids, OME-TIFF, plain images, bad input."""

from __future__ import annotations

import shutil
import sys

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from stainldm.errors import InputError, SlideFormatError
from stainldm.wsi.reader import ArrayReader, OpenSlideReader, TiffReader, open_slide
from stainldm.wsi.writer import write_pyramid


@pytest.fixture(scope="module")
def he_pyramid(tmp_path_factory, he_image):
    """The CMU H&E as a 3-level generic pyramidal TIFF at 0.5 µm/px, plus the array written."""
    path = tmp_path_factory.mktemp("pyr") / "he.tiff"
    img = np.ascontiguousarray(np.concatenate([he_image, he_image[:, ::-1]], axis=1)[:2500, :4000])
    write_pyramid(path, img, mpp=0.5)
    return path, img


@pytest.fixture(scope="module")
def ome_fluo(tmp_path_factory):
    """A 2-channel uint16 OME-TIFF with a SubIFD pyramid (OpenSlide sees one level of it)."""
    rng = np.random.default_rng(1)
    data = (rng.random((2, 1024, 768)) * 60000).astype(np.uint16)
    path = tmp_path_factory.mktemp("ome") / "af.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        meta = {"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65, "Channel": {"Name": ["AF405", "AF488"]}}
        tw.write(data, subifds=2, tile=(256, 256), compression="zlib", metadata=meta)
        tw.write(data[:, ::2, ::2], subfiletype=1, tile=(256, 256), compression="zlib")
        tw.write(data[:, ::4, ::4], subfiletype=1, tile=(256, 256), compression="zlib")
    return path, data


# -- real vendor file --------------------------------------------------------------------------
def test_cmu_svs_opens_through_openslide_with_metadata(cmu_path):
    with open_slide(cmu_path) as slide:
        assert isinstance(slide, OpenSlideReader)
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx((0.499, 0.499))
        assert (slide.channels, slide.dtype) == (3, np.uint8)
        assert "thumbnail" in slide.associated_names
        label = slide.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.dtype == np.uint8
        region = slide.read_region((1000, 1000), (64, 48))
        assert region.shape == (48, 64, 3)
        raw = np.asarray(openslide.OpenSlide(str(cmu_path)).read_region((1000, 1000), 0, (64, 48)))[..., :3]
        np.testing.assert_array_equal(region, raw)


def test_missing_associated_image_names_the_ones_present(cmu_path):
    with open_slide(cmu_path) as slide, pytest.raises(InputError, match="no associated image 'overview'.*label"):
        slide.associated_image("overview")


# -- our pyramids ------------------------------------------------------------------------------
def test_generic_pyramid_reads_like_openslide(he_pyramid):
    path, img = he_pyramid
    raw = openslide.OpenSlide(str(path))
    with open_slide(path) as slide:
        assert isinstance(slide, TiffReader)
        assert slide.level_dimensions == tuple(tuple(d) for d in raw.level_dimensions)
        assert slide.level_downsamples == pytest.approx(raw.level_downsamples)
        assert slide.mpp == pytest.approx((0.5, 0.5))
        for level in range(slide.level_count):
            ds = slide.level_downsamples[level]
            xy = (int(300 * ds), int(200 * ds))
            ours = slide.read_region(xy, (300, 200), level)
            theirs = np.asarray(raw.read_region(xy, level, (300, 200)))[..., :3]
            assert np.abs(ours.astype(int) - theirs).mean() < 1.0, level
        assert np.abs(slide.read_region((0, 0), (4000, 2500)).astype(int) - img).mean() < 4  # JPEG q90


def test_read_region_outside_the_slide_is_white(he_pyramid):
    path, img = he_pyramid
    with open_slide(path) as slide:
        w, h = slide.dimensions
        tile = slide.read_region((w - 10, h - 20), (30, 40))
        assert tile.shape == (40, 30, 3)
        assert (tile[20:, :] == 255).all() and (tile[:, 10:] == 255).all()
        assert np.abs(tile[:20, :10].astype(int) - img[h - 20 :, w - 10 :]).mean() < 8
        assert (slide.read_region((-500, -500), (100, 100)) == 255).all()


def test_read_at_mpp_matches_area_downsample_and_tiles_exactly(he_pyramid):
    path, _ = he_pyramid
    with open_slide(path) as slide:
        ref = slide.read_region((0, 0), (1024, 1024), 0).astype(np.float32)
        ref2 = ref.reshape(512, 2, 512, 2, 3).mean(axis=(1, 3))
        got = slide.read_at_mpp((0, 0), (512, 512), 1.0).astype(np.float32)
        # Anti-aliased bilinear vs box filter: same image up to smoothing differences.
        assert np.abs(got[8:-8, 8:-8] - ref2[8:-8, 8:-8]).mean() < 6
        # Neighbouring reads share a grid: reading two halves equals reading the whole.
        whole = slide.read_at_mpp((100.5, 40), (200, 60), 0.7)
        left = slide.read_at_mpp((100.5, 40), (100, 60), 0.7)
        right = slide.read_at_mpp((100.5 + 100 * 0.7 / 0.5, 40), (100, 60), 0.7)
        np.testing.assert_allclose(np.concatenate([left, right], axis=1).astype(int), whole.astype(int), atol=1)
        # At native resolution and integer offsets the read is exact.
        np.testing.assert_array_equal(slide.read_at_mpp((64, 32), (50, 50), 0.5),
                                      slide.read_region((64, 32), (50, 50)))


def test_read_at_mpp_of_a_shifted_image_shifts_by_subpixels():
    grad = np.tile(np.arange(200, dtype=np.float32)[None, :, None], (50, 1, 1))
    slide = ArrayReader(grad, mpp=0.25)
    out = slide.read_at_mpp((10.25, 0), (40, 10), 0.5)  # pixel u covers [10.25+2u, 12.25+2u) -> centre 11.25+2u
    np.testing.assert_allclose(out[5, 5:35, 0], 11.25 - 0.5 + 2 * np.arange(5, 35), atol=1e-3)


def test_thumbnail_keeps_aspect(he_pyramid, cmu_path):
    path, _ = he_pyramid
    with open_slide(path) as slide:
        thumb = slide.thumbnail(500)
        assert thumb.shape == (312, 500, 3)
    with open_slide(cmu_path) as slide:
        assert slide.thumbnail(300).shape == (300, 224, 3)


def test_ome_subifd_fluorescence_pyramid(ome_fluo):
    path, data = ome_fluo
    assert len(openslide.OpenSlide(str(path)).level_dimensions) == 1  # why we don't use OpenSlide here
    with open_slide(path) as slide:
        assert isinstance(slide, TiffReader)
        assert slide.vendor == "ome-tiff"
        assert slide.level_count == 3
        assert slide.channel_names == ("AF405", "AF488")
        assert slide.mpp == pytest.approx((0.65, 0.65))
        assert (slide.channels, slide.dtype, slide.background) == (2, np.uint16, 0)
        got = slide.read_region((100, 300), (50, 40), level=1)
        np.testing.assert_array_equal(got, data[:, ::2, ::2][:, 150:190, 50:100].transpose(1, 2, 0))
        assert (slide.read_region((760, 0), (20, 5)) [:, 8:] == 0).all()


def test_multichannel_uint16_tiff_is_read_exactly(tmp_path):
    data = (np.random.default_rng(2).random((600, 700, 4)) * 4000).astype(np.uint16)
    path = tmp_path / "four.tif"
    write_pyramid(path, data, mpp=0.4, min_level_px=256)
    try:  # OpenSlide can at best squeeze it into 8-bit RGBA: the channels are lost
        assert np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, (10, 10))).dtype == np.uint8
    except openslide.OpenSlideError:
        pass
    with open_slide(path) as slide:
        assert (slide.channels, slide.dtype, slide.level_count) == (4, np.uint16, 3)
        np.testing.assert_array_equal(slide.read_region((5, 6), (70, 80)), data[6:86, 5:75])


def test_png_rgba_is_composited_on_white_and_jpeg_reads(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :15, 3] = 255  # left half opaque red, right half transparent
    Image.fromarray(rgba).save(tmp_path / "a.png")
    with open_slide(tmp_path / "a.png") as slide:
        assert isinstance(slide, ArrayReader) and slide.vendor == "png" and slide.mpp is None
        px = slide.read_region((0, 0), (30, 20))
        assert tuple(px[0, 0]) == (200, 0, 0) and tuple(px[0, 20]) == (255, 255, 255)
        with pytest.raises(InputError, match="does not record its resolution.*pass `mpp` when opening it"):
            slide.read_at_mpp((0, 0), (10, 10), 0.5)
    with open_slide(tmp_path / "a.png", mpp=0.5) as slide:
        assert slide.read_at_mpp((0, 0), (15, 10), 1.0).shape == (10, 15, 3)
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b.jpg", quality=95)
    with open_slide(tmp_path / "b.jpg") as slide:
        assert slide.vendor == "jpeg" and slide.dimensions == (30, 20)


def test_bad_level_and_size_are_input_errors(he_pyramid):
    with open_slide(he_pyramid[0]) as slide:
        with pytest.raises(InputError, match="`level` 7 does not exist"):
            slide.read_region((0, 0), (10, 10), level=7)
        with pytest.raises(InputError, match=r"`size_wh` must be positive, got 0x10"):
            slide.read_region((0, 0), (0, 10))
        with pytest.raises(InputError, match=r"`mpp` \(the target resolution\) must be positive"):
            slide.read_at_mpp((0, 0), (10, 10), 0.0)
        with pytest.raises(InputError, match="`max_px` must be positive"):
            slide.thumbnail(0)


def test_array_reader_refuses_a_non_image_array():
    with pytest.raises(InputError, match=r"`array` must be an H×W×C image, got shape \(2, 3, 4, 5\)"):
        ArrayReader(np.zeros((2, 3, 4, 5), np.uint8))


# -- bad input: each a one-line error naming the file -------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"nope\.svs: no such file"):
        open_slide(tmp_path / "nope.svs")


def test_folder_that_is_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM WSI series"):
        open_slide(tmp_path)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideFormatError, match=r"empty\.svs: the file is empty"):
        open_slide(tmp_path / "empty.svs")


@pytest.mark.parametrize("source", ["cmu", "pyramid"])
def test_truncated_file(tmp_path, cmu_path, he_pyramid, source):
    src = cmu_path if source == "cmu" else he_pyramid[0]
    data = src.read_bytes()
    bad = tmp_path / f"cut{src.suffix}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideFormatError, match=r"cut\.(svs|tiff).*(truncated|corrupt)"):
        open_slide(bad)


def test_png_renamed_svs(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    shutil.copy(tmp_path / "x.png", tmp_path / "slide.svs")
    with pytest.raises(SlideFormatError, match=r"slide\.svs: the extension says \.svs \(TIFF\) but the content is a PNG"):
        open_slide(tmp_path / "slide.svs")


@pytest.mark.parametrize("name", ["notes.svs", "notes.txt", "notes.ndpi"])
def test_text_file(tmp_path, name):
    (tmp_path / name).write_text("patient list\n1,2,3\n" * 20)
    with pytest.raises(SlideFormatError, match=rf"{name.replace('.', '[.]')}: .*(OpenSlide|not a slide)"):
        open_slide(tmp_path / name)


def test_corrupt_tiff_header(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 400)
    with pytest.raises(SlideFormatError, match=r"bad\.tif: .*tifffile cannot") as info:
        open_slide(tmp_path / "bad.tif")
    assert info.value.__cause__ is not None  # the parser's own error is kept for --debug


def test_corrupt_png(tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideFormatError, match=r"cut\.png: cannot decode the PNG"):
        open_slide(tmp_path / "cut.png")


def test_bad_mpp_override(he_pyramid):
    with pytest.raises(InputError, match="`mpp` must be positive"):
        open_slide(he_pyramid[0], mpp=-1)


def test_ome_fluorescence_channels_named_by_fluor_with_dark_background(tmp_path):
    """Three uint8 channels that say they are fluorescence: named, and empty glass is 0, not white."""
    data = np.random.default_rng(4).integers(0, 255, (3, 64, 80), dtype=np.uint8)
    path = tmp_path / "fluor.ome.tif"
    channel = {"Fluor": ["DAPI", "FITC", "Cy3"], "EmissionWavelength": [461, 519, 570]}
    tifffile.imwrite(path, data, metadata={"axes": "CYX", "Channel": channel})
    with open_slide(path) as slide:
        assert slide.channel_names == ("DAPI", "FITC", "Cy3")
        assert (slide.fluorescence, slide.background) == (True, 0)
        assert slide.read_region((70, 60), (20, 20))[10:, 10:].max() == 0


def test_qptiff_goes_to_its_own_reader(tmp_path):
    from stainldm.wsi.reader import QptiffReader

    xml = ("<?xml version=\"1.0\" encoding=\"utf-16\"?>\r\n<PerkinElmer-QPI-ImageDescription>"
           "<ImageType>FullResolution</ImageType><Name>{}</Name></PerkinElmer-QPI-ImageDescription>")
    path = tmp_path / "scan.tif"  # Vectra also writes .tif; the content decides
    with tifffile.TiffWriter(path) as tw:
        for name in ("DAPI", "FITC"):
            tw.write(np.zeros((32, 32), np.uint16), description=xml.format(name), metadata=None)
    with open_slide(path) as slide:
        assert isinstance(slide, QptiffReader) and slide.channel_names == ("DAPI", "FITC")


def test_czi_without_czifile_says_what_to_install(tmp_path, monkeypatch):
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    path = tmp_path / "scan.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as writer:
        writer.write(np.zeros((16, 16, 1), np.uint16), location=(0, 0), plane={"C": 0})
        writer.write_metadata(scale_x=0.5e-6, scale_y=0.5e-6)
    monkeypatch.setitem(sys.modules, "czifile", None)  # as if not installed
    with pytest.raises(SlideFormatError, match=r"scan\.czi: OpenSlide cannot read it .*needs the czifile package"):
        open_slide(path)
