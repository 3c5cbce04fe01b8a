"""Zeiss CZI through czifile: XML metadata (mpp, channel names, fluorescence) and real files.

czifile cannot write CZI; the files here are written with Zeiss's own pylibCZIrw (those tests are
skipped where czifile or pylibCZIrw is not installed; the metadata tests always run). pylibCZIrw writes no pyramid, so the pyramid test writes half-size tiles and
turns them into pyramid subblocks by setting their logical size to twice their stored size, as a
scanner's pyramid subblocks are recorded.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from stainldm.errors import InputError, SlideFormatError
from stainldm.wsi.channels import channel_modality, select_channels
from stainldm.wsi.czi import CziReader, czi_channel_names, czi_fluorescence, czi_mpp
from stainldm.wsi.reader import open_slide

META = ("<ImageDocument><Metadata><Information><Image><Dimensions><Channels>{channels}</Channels></Dimensions>"
        "</Image></Information><Scaling><Items>{scaling}</Items></Scaling></Metadata></ImageDocument>")
DIST = '<Distance Id="{axis}"><Value>{value}</Value><DefaultUnitFormat>µm</DefaultUnitFormat></Distance>'


def test_czi_mpp_is_metres_in_scaling_items():
    scaling = DIST.format(axis="X", value="2.2E-07") + DIST.format(axis="Y", value="2.3E-07")
    assert czi_mpp(META.format(channels="", scaling=scaling)) == pytest.approx((0.22, 0.23))
    assert czi_mpp(META.format(channels="", scaling=DIST.format(axis="X", value="3.25e-7"))) == pytest.approx(
        (0.325, 0.325))  # Y missing: square pixels
    assert czi_mpp(META.format(channels="", scaling=DIST.format(axis="X", value="0"))) is None
    assert czi_mpp(META.format(channels="", scaling=DIST.format(axis="X", value="n/a"))) is None
    assert czi_mpp(META.format(channels="", scaling="")) is None
    assert czi_mpp("<ImageDocument") is None


def test_czi_channel_names_and_fluorescence():
    channels = ('<Channel Id="Channel:0" Name="DAPI"><ContrastMethod>Fluorescence</ContrastMethod></Channel>'
                '<Channel Id="Channel:1"><Fluor>AF488</Fluor></Channel><Channel Id="Channel:2"/>')
    xml = META.format(channels=channels, scaling="")
    assert czi_channel_names(xml, 3) == ("DAPI", "AF488", "C2")
    assert czi_channel_names(xml, 2) is None  # another count
    assert czi_channel_names(META.format(channels='<Channel Id="Channel:0"/>', scaling=""), 1) is None
    assert czi_fluorescence(xml) is True
    bright = '<Channel Id="Channel:0" Name="TL"><ContrastMethod>Brightfield</ContrastMethod></Channel>'
    assert czi_fluorescence(META.format(channels=bright, scaling="")) is False
    assert czi_fluorescence(META.format(channels='<Channel Id="Channel:0"/>', scaling="")) is None
    assert czi_channel_names("<x", 1) is None and czi_fluorescence("<x") is None


# ---------------------------------------------------------------------------------------------
# Real files written with pylibCZIrw
# ---------------------------------------------------------------------------------------------
def write_czi(path, tiles, *, names=None, mpp=None):
    """``tiles``: (array HxWx1 or HxWx3 BGR, (x, y), channel); metadata with names and mpp."""
    pytest.importorskip("czifile")  # the reader
    pyczi = pytest.importorskip("pylibCZIrw.czi")  # the writer
    with pyczi.create_czi(str(path), exist_ok=True) as writer:
        for array, xy, channel in tiles:
            writer.write(np.ascontiguousarray(array), location=xy, plane={"C": channel})
        scale = mpp * 1e-6 if mpp else 0.0  # the CZI records metres
        writer.write_metadata(channel_names=names or {}, scale_x=scale, scale_y=scale)


@pytest.fixture(scope="module")
def fluo_czi(tmp_path_factory):
    """Two uint16 channels, 300×400 px as 128-px mosaic tiles placed at a negative offset."""
    data = np.random.default_rng(0).integers(0, 4000, (2, 300, 400)).astype(np.uint16)
    tiles = [(data[c, ty:ty + 128, tx:tx + 128, None], (tx - 40, ty + 25), c)
             for c in range(2) for ty in range(0, 300, 128) for tx in range(0, 400, 128)]
    path = tmp_path_factory.mktemp("czi") / "scan.czi"
    write_czi(path, tiles, names={0: "DAPI", 1: "FITC"}, mpp=0.325)
    return path, data


def test_czi_fluorescence_mosaic_reads_back(fluo_czi):
    path, data = fluo_czi
    with open_slide(path) as slide:
        assert isinstance(slide, CziReader) and slide.vendor == "czi"
        assert slide.channel_names == ("DAPI", "FITC")
        assert (slide.channels, slide.dtype, slide.fluorescence, slide.background) == (2, np.uint16, True, 0)
        assert slide.mpp == pytest.approx((0.325, 0.325))
        assert slide.level_dimensions == ((400, 300),)
        np.testing.assert_array_equal(slide.read_region((17, 33), (250, 200)), data[:, 33:233, 17:267].transpose(1, 2, 0))
        edge = slide.read_region((-5, 290), (20, 20))
        assert edge[:, :5].max() == 0 and edge[10:].max() == 0
        np.testing.assert_array_equal(edge[:10, 5:], data[:, 290:, :15].transpose(1, 2, 0))
        assert channel_modality(slide) == "fluorescence"
        fitc = select_channels(slide, "FITC")
        np.testing.assert_array_equal(fitc.read_region((100, 100), (64, 64))[..., 0], data[1, 100:164, 100:164])
        with pytest.raises(InputError, match=r"asks for 'Cy3', which the slide lacks; it has 2 channels: 0=DAPI, 1=FITC"):
            select_channels(slide, "DAPI,Cy3")


def test_czi_pyramid_subblocks_are_levels(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, (2, 256, 256)).astype(np.uint16)
    half = data[:, ::2, ::2]
    tiles = []
    for c in range(2):
        for ty in (0, 128):
            for tx in (0, 128):
                tiles.append((data[c, ty:ty + 128, tx:tx + 128, None], (tx, ty), c))
                tiles.append((half[c, ty // 2:ty // 2 + 64, tx // 2:tx // 2 + 64, None], (tx, ty), c))
    path = tmp_path / "pyramid.czi"
    write_czi(path, tiles, names={0: "DAPI", 1: "FITC"}, mpp=0.5)
    # X/Y dimension entries (name, start, size, start coordinate, stored size) of the 64-px tiles,
    # in the directory and in each subblock's header: logical size 64 -> 128 makes them level 1.
    raw = path.read_bytes()
    pattern = re.compile(rb"([XY]\x00\x00\x00.{4})\x40\x00\x00\x00(.{4}\x40\x00\x00\x00)", re.S)
    patched, count = pattern.subn(lambda m: m.group(1) + b"\x80\x00\x00\x00" + m.group(2), raw)
    assert count == 32  # 8 tiles × (X, Y) × (directory, subblock)
    path.write_bytes(patched)
    with open_slide(path) as slide:
        assert slide.level_dimensions == ((256, 256), (128, 128)) and slide.level_downsamples == (1.0, 2.0)
        np.testing.assert_array_equal(slide.read_region((0, 0), (256, 256)), data.transpose(1, 2, 0))
        np.testing.assert_array_equal(slide.read_region((60, 130), (60, 50), 1), half[:, 65:115, 30:90].transpose(1, 2, 0))
        # A read at 1 µm/px comes from the pyramid level, not from level 0.
        np.testing.assert_array_equal(slide.read_at_mpp((0, 0), (128, 128), mpp=1.0), half.transpose(1, 2, 0))


def test_colour_czi_is_rgb_on_white(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    path = tmp_path / "he.czi"
    write_czi(path, [(rgb[..., ::-1], (0, 0), 0)], mpp=0.25)  # CZI stores BGR
    with open_slide(path) as slide:
        assert (slide.channel_names, slide.dtype, slide.fluorescence, slide.background) == (
            ("R", "G", "B"), np.uint8, False, 255)
        np.testing.assert_array_equal(slide.read_region((0, 0), (120, 100)), rgb)
        assert slide.read_region((110, 90), (20, 20))[15, 15].tolist() == [255, 255, 255]
        np.testing.assert_array_equal(select_channels(slide, "B,R").read_region((0, 0), (4, 4)), rgb[:4, :4][..., [2, 0]])


def test_czi_without_mpp_needs_the_mpp_parameter(tmp_path):
    path = tmp_path / "noscale.czi"
    write_czi(path, [(np.zeros((32, 32, 1), np.uint16), (0, 0), 0)], names={0: "DAPI"})
    with pytest.raises(SlideFormatError, match=r"^\S*noscale\.czi: the CZI does not record its pixel size .*pass `mpp`"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5) and slide.channel_names == ("DAPI",)


def test_not_a_czi_named_czi_is_refused(tmp_path):
    fake = tmp_path / "fake.czi"
    fake.write_bytes(b"II*\x00" + b"\x00" * 200)
    with pytest.raises(SlideFormatError, match=r"extension says \.czi \(CZI\) but the content is a TIFF"):
        open_slide(fake)
    pytest.importorskip("czifile")
    truncated = tmp_path / "cut.czi"
    truncated.write_bytes(b"ZISRAWFILE" + b"\x00" * 50)
    with pytest.raises(SlideFormatError, match="cut.czi: czifile cannot read it"):
        open_slide(truncated)
