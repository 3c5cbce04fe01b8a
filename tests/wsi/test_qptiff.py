"""Akoya/PerkinElmer QPTIFF: channel pages with PerkinElmer XML, assembled into named channels and levels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from stainldm.errors import InputError
from stainldm.wsi.channels import channel_modality, select_channels
from stainldm.wsi.reader import QptiffReader, open_slide


def qpi_xml(kind: str, name: str | None = None, *, biomarker: str | None = None) -> str:
    """A PerkinElmer page description as Vectra writes it (utf-16 declared, CRLF, a scan profile)."""
    parts = ['<?xml version="1.0" encoding="utf-16"?>', "<PerkinElmer-QPI-ImageDescription>",
             "<DescriptionVersion>2</DescriptionVersion>", "<AcquisitionSoftware>PerkinElmer-QPI</AcquisitionSoftware>",
             f"<ImageType>{kind}</ImageType>"]
    if name is not None:
        parts.append(f"<Name>{name}</Name>")
    if biomarker is not None:
        parts.append(f"<Biomarker>{biomarker}</Biomarker>")
    parts += ["<ScanProfile><root><Name>profile</Name></root></ScanProfile>", "</PerkinElmer-QPI-ImageDescription>"]
    return "\r\n".join(parts)


def write_qptiff(path, channels: np.ndarray, names, *, mpp: float = 0.5, levels: int = 2, tiled: bool = True,
                 overview: bool = False) -> list[np.ndarray]:
    """A QPTIFF-style file: one page per channel at full resolution, an RGB thumbnail page, the
    channel pages again at each reduced resolution (sizes rounded up, not exact halves), optionally
    an overview page. Returns the channel stack (C, H, W) of every level."""
    pyramid = [channels]
    for _ in range(levels - 1):
        prev = pyramid[-1]
        pyramid.append(prev[:, ::2, ::2])  # ceil(n / 2) rows and columns
    kw = {"software": "PerkinElmer-QPI", "resolutionunit": "CENTIMETER", "metadata": None, "compression": "zlib"}
    if tiled:
        kw["tile"] = (64, 64)
    with tifffile.TiffWriter(path) as tw:
        for level, stack in enumerate(pyramid):
            kind = "FullResolution" if level == 0 else "ReducedResolution"
            res = 1e4 / (mpp * 2**level)
            for c, name in enumerate(names):
                tw.write(stack[c], description=qpi_xml(kind, name), resolution=(res, res),
                         subfiletype=1 if level else 0, **kw)
            if level == 0:
                thumb = np.zeros((stack.shape[1] // 8, stack.shape[2] // 8, 3), np.uint8)
                tw.write(thumb, photometric="rgb", description=qpi_xml("Thumbnail"), software="PerkinElmer-QPI",
                         metadata=None)
        if overview:
            tw.write(np.full((20, 60, 3), 200, np.uint8), photometric="rgb", description=qpi_xml("Overview"),
                     software="PerkinElmer-QPI", metadata=None)
    return pyramid


@pytest.fixture(scope="module")
def qptiff16(tmp_path_factory):
    """Three uint16 fluorescence channels, 301×517 px at 0.4 µm/px, three levels, thumbnail and overview."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 60000, (3, 301, 517), dtype=np.uint16)
    path = tmp_path_factory.mktemp("qp") / "scan.qptiff"
    pyramid = write_qptiff(path, data, ["DAPI", "FITC", "Cy3"], mpp=0.4, levels=3, overview=True)
    return path, pyramid


def test_qptiff_channels_names_dtype_mpp_levels(qptiff16):
    path, _ = qptiff16
    with open_slide(path) as slide:
        assert isinstance(slide, QptiffReader) and slide.vendor == "qptiff"
        assert slide.channel_names == ("DAPI", "FITC", "Cy3")
        assert (slide.channels, slide.dtype, slide.fluorescence, slide.background) == (3, np.uint16, True, 0)
        assert slide.mpp == pytest.approx((0.4, 0.4))
        # Thumbnail and overview pages are associated images, not levels.
        assert slide.level_dimensions == ((517, 301), (259, 151), (130, 76))
        assert slide.level_downsamples[1] == pytest.approx(2, rel=0.01)
        assert set(slide.associated_names) == {"thumbnail", "macro"}
        assert slide.associated_image("macro").shape == (20, 60, 3)
        assert channel_modality(slide) == "fluorescence"


def test_qptiff_pixels_read_back_at_every_level(qptiff16):
    path, pyramid = qptiff16
    with open_slide(path) as slide:
        for level, stack in enumerate(pyramid):
            ds = slide.level_downsamples[level]
            hwc = stack.transpose(1, 2, 0)
            got = slide.read_region((round(13 * ds), round(7 * ds)), (70, 50), level)
            np.testing.assert_array_equal(got, hwc[7:57, 13:83])
        # Across the slide's edge: fluorescence background (0), not white.
        edge = slide.read_region((500, 290), (40, 30))
        np.testing.assert_array_equal(edge[:11, :17], pyramid[0].transpose(1, 2, 0)[290:, 500:])
        assert edge[11:].max() == 0 and edge[:, 17:].max() == 0


def test_qptiff_channel_selection_decodes_only_chosen_pages(qptiff16):
    path, pyramid = qptiff16
    with open_slide(path) as slide:
        chosen = select_channels(slide, "Cy3,DAPI")
        assert chosen.channel_names == ("Cy3", "DAPI") and chosen.channels == 2
        got = chosen.read_region((100, 50), (64, 64), 1)
        np.testing.assert_array_equal(got, pyramid[1][[2, 0], 25:89, 50:114].transpose(1, 2, 0))
        with pytest.raises(InputError, match=r"asks for 'Cy5', which the slide lacks; it has 3 channels: 0=DAPI"):
            select_channels(slide, "Cy5")


def test_uint8_vectra_qptiff_is_not_taken_for_rgb(tmp_path):
    """The issue's file: three uint8 fluorescence pages used to open as channels (R, G, B) on white."""
    data = np.random.default_rng(0).integers(0, 255, (3, 120, 200), dtype=np.uint8)
    path = tmp_path / "vectra.qptiff"
    write_qptiff(path, data, ["DAPI", "FITC", "Cy3"], levels=2)
    with open_slide(path) as slide:
        assert (slide.channel_names, slide.dtype, slide.background) == (("DAPI", "FITC", "Cy3"), np.uint8, 0)
        np.testing.assert_array_equal(slide.read_region((0, 0), (200, 120)), data.transpose(1, 2, 0))


def test_stripped_qptiff_and_names_from_biomarker_or_defaults(tmp_path):
    """inForm component TIFFs are not tiled; a page may name its Biomarker, or nothing."""
    data = np.random.default_rng(1).random((2, 90, 70)).astype(np.float32)
    path = tmp_path / "component_data.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(data[0], description=qpi_xml("FullResolution", biomarker="CD8"), software="PerkinElmer-QPI",
                 metadata=None)
        tw.write(data[1], description=qpi_xml("FullResolution"), software="PerkinElmer-QPI", metadata=None)
        tw.write(np.zeros((10, 8, 3), np.uint8), photometric="rgb", description=qpi_xml("Thumbnail"),
                 metadata=None)
    with open_slide(path) as slide:
        assert slide.channel_names == ("CD8", "C1") and slide.level_count == 1 and slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((5, 6), (30, 40)), data[:, 6:46, 5:35].transpose(1, 2, 0))


def test_brightfield_qptiff_is_one_rgb_page_per_level(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (128, 192, 3), dtype=np.uint8)
    path = tmp_path / "bright.qptiff"
    with tifffile.TiffWriter(path) as tw:
        kw = {"photometric": "rgb", "tile": (64, 64), "software": "PerkinElmer-QPI", "metadata": None}
        tw.write(rgb, description=qpi_xml("FullResolution"), **kw)
        tw.write(rgb[::4, ::4], description=qpi_xml("Thumbnail"), photometric="rgb", metadata=None)
        tw.write(rgb[::2, ::2], description=qpi_xml("ReducedResolution"), subfiletype=1, **kw)
    with open_slide(path) as slide:
        assert (slide.channel_names, slide.fluorescence, slide.background) == (("R", "G", "B"), False, 255)
        assert slide.level_dimensions == ((192, 128), (96, 64))
        np.testing.assert_array_equal(slide.read_region((64, 0), (64, 64), 1), rgb[::2, ::2][0:64, 32:96])
        np.testing.assert_array_equal(select_channels(slide, [2]).read_region((0, 0), (8, 8))[..., 0], rgb[:8, :8, 2])


def test_reduced_level_missing_a_channel_is_not_a_level(tmp_path):
    data = np.zeros((2, 128, 128), np.uint16)
    path = tmp_path / "partial.qptiff"
    with tifffile.TiffWriter(path) as tw:
        kw = {"software": "PerkinElmer-QPI", "metadata": None, "tile": (64, 64)}
        for c, name in enumerate(["DAPI", "FITC"]):
            tw.write(data[c], description=qpi_xml("FullResolution", name), **kw)
        tw.write(data[0, ::2, ::2], description=qpi_xml("ReducedResolution", "DAPI"), subfiletype=1, **kw)
    with open_slide(path) as slide:
        assert slide.level_count == 1 and slide.channel_names == ("DAPI", "FITC")
