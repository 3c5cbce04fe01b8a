"""Slide metadata parsing: mpp from OME-XML, descriptions and resolution tags; channel names; axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

from stainldm.errors import InputError, SlideFormatError
from stainldm.wsi.metadata import (
    axes_plan,
    default_channel_names,
    description_channel_names,
    description_mpp,
    json_description,
    mpp_tuple,
    ome_channel_names,
    ome_fluorescence,
    ome_mpp,
    openslide_mpp,
    qpi_channel_name,
    qpi_channel_names,
    qpi_description,
    resolution_mpp,
    tiff_channel_names,
    tiff_description,
    tiff_mpp,
)

OME = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image><Pixels PhysicalSizeX="0.325" '
       'PhysicalSizeY="0.35"{unit}><Channel Name="DAPI"/><Channel Name="{second}"/></Pixels></Image></OME>')


def test_mpp_tuple_normalises_and_refuses_non_positive():
    assert mpp_tuple(None) is None
    assert mpp_tuple(0.5) == (0.5, 0.5)
    assert mpp_tuple((0.25, 0.3)) == (0.25, 0.3)
    assert mpp_tuple([0.4]) == (0.4, 0.4)  # one value: square pixels
    for bad in ((), (0.5, 0.5, 0.5)):
        with pytest.raises(InputError, match="one number or an"):
            mpp_tuple(bad)
    for bad in (0, -1, (0.5, float("nan")), (float("inf"), 1.0)):
        with pytest.raises(InputError, match="`mpp` must be positive"):
            mpp_tuple(bad)


def test_openslide_mpp_needs_both_positive_values():
    x, y = openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y
    assert openslide_mpp({x: "0.499", y: "0.5"}) == (0.499, 0.5)
    assert openslide_mpp({x: "0.499"}) is None
    assert openslide_mpp({x: "abc", y: "0.5"}) is None
    assert openslide_mpp({x: "0", y: "0.5"}) is None


def test_ome_mpp_reads_physical_size_in_its_unit():
    assert ome_mpp(OME.format(unit="", second="AF")) == (0.325, 0.35)
    assert ome_mpp(OME.format(unit=' PhysicalSizeXUnit="nm"', second="AF")) == pytest.approx((0.325e-3, 0.35e-3))
    assert ome_mpp(OME.format(unit=' PhysicalSizeXUnit="mm"', second="AF")) == pytest.approx((325.0, 350.0))
    assert ome_mpp(OME.format(unit=' PhysicalSizeXUnit="pc"', second="AF")) is None  # unknown unit
    assert ome_mpp("<OME><Image/></OME>") is None  # no Pixels
    assert ome_mpp("<OME><Pixels PhysicalSizeX='a' PhysicalSizeY='1'/></OME>") is None
    assert ome_mpp("<OME") is None  # malformed


def test_description_mpp_prefers_our_json_then_aperio():
    assert description_mpp(json.dumps({"mpp": [0.5, 0.6]})) == (0.5, 0.6)
    assert description_mpp(json.dumps({"mpp": 0.25})) == (0.25, 0.25)
    assert description_mpp("Aperio Image Library v10|AppMag = 20|MPP = 0.4990|Filename = x") == (0.499, 0.499)
    # A JSON value that says nothing usable falls through to the Aperio key, then to nothing.
    assert description_mpp(json.dumps({"mpp": None})) is None
    assert description_mpp(json.dumps({"mpp": [0.45]})) == (0.45, 0.45)  # was an IndexError
    assert description_mpp(json.dumps({"mpp": [], "note": "MPP = 0.3"})) == (0.3, 0.3)
    assert description_mpp(json.dumps({"mpp": -1, "note": "MPP = 0.3"})) == (0.3, 0.3)
    assert description_mpp("{not json MPP = 0.7") == (0.7, 0.7)
    assert description_mpp("MPP = 0") is None
    assert description_mpp("") is None


def test_json_description_is_only_a_json_object():
    assert json_description('{"a": 1}') == {"a": 1}
    assert json_description("[1, 2]") is None
    assert json_description("{broken") is None
    assert json_description("Aperio|MPP = 0.5") is None


def test_resolution_mpp_from_centimetre_and_inch_tags():
    assert resolution_mpp(3, 20000.0) == pytest.approx((0.5, 0.5))  # 20000 px/cm
    assert resolution_mpp(3, (20000, 1), (40000, 1)) == pytest.approx((0.5, 0.25))
    assert resolution_mpp(2, 50800.0) == pytest.approx((0.5, 0.5))  # 50800 dpi
    assert resolution_mpp(1, 20000.0) is None  # unit NONE
    assert resolution_mpp(3, (1, 0)) is None  # zero denominator
    assert resolution_mpp(2, 72.0) is None  # a screen image, 353 µm/px


def test_channel_names_from_ome_then_json_then_defaults():
    assert ome_channel_names(OME.format(unit="", second="AF488"), 2) == ("DAPI", "AF488")
    assert ome_channel_names(OME.format(unit="", second=""), 2) == ("DAPI", "C1")  # one unnamed: its default
    assert ome_channel_names(OME.format(unit="", second="AF488"), 3) is None  # wrong count
    assert ome_channel_names("<OME", 2) is None
    assert description_channel_names(json.dumps({"channel_names": ["a", 2]}), 2) == ("a", "2")
    assert description_channel_names(json.dumps({"channel_names": ["a"]}), 2) is None
    assert description_channel_names("MPP = 0.5", 1) is None
    assert default_channel_names(3) == ("R", "G", "B")
    assert default_channel_names(1) == ("gray",)
    assert default_channel_names(4) == ("C0", "C1", "C2", "C3")


def test_tiff_mpp_and_names_from_a_real_file(tmp_path):
    ome = tmp_path / "two.ome.tif"
    meta = {"axes": "CYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65, "Channel": {"Name": ["AF405", "AF488"]}}
    tifffile.imwrite(ome, np.zeros((2, 16, 16), np.uint16), metadata=meta)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((16, 16, 3), np.uint8), photometric="rgb", resolution=(1e4 / 0.4, 1e4 / 0.4),
                     resolutionunit="CENTIMETER", description="hello", metadata=None)
    ours = tmp_path / "ours.tif"
    tifffile.imwrite(ours, np.zeros((16, 16, 2), np.uint8), planarconfig="contig", metadata=None,
                     description=json.dumps({"mpp": [0.3, 0.3], "channel_names": ["x", "y"]}))
    with tifffile.TiffFile(ome) as tif:
        desc = tiff_description(tif)
        assert tiff_mpp(tif, desc) == pytest.approx((0.65, 0.65))
        assert tiff_channel_names(tif, desc, 2) == ("AF405", "AF488")
    with tifffile.TiffFile(plain) as tif:
        assert tiff_description(tif) == "hello"
        assert tiff_mpp(tif, "hello") == pytest.approx((0.4, 0.4))
        assert tiff_channel_names(tif, "hello", 3) == ("R", "G", "B")
    with tifffile.TiffFile(ours) as tif:
        desc = tiff_description(tif)
        assert tiff_mpp(tif, desc) == (0.3, 0.3)
        assert tiff_channel_names(tif, desc, 2) == ("x", "y")


def test_axes_plan_finds_the_channel_axis_and_reshapes_to_hwc():
    data = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # C, Y, X
    plan = axes_plan("CYX", data.shape, Path("a.tif"))
    assert (plan.channel_axis, plan.channels) == ("C", 2)
    np.testing.assert_array_equal(plan.to_hwc(data), data.transpose(1, 2, 0))
    rgb = axes_plan("YXS", (3, 4, 3), Path("a.tif"))
    assert (rgb.channel_axis, rgb.channels) == ("S", 3)
    gray = axes_plan("ZYX", (1, 3, 4), Path("a.tif"))  # a single plane along Z is fine
    assert (gray.channel_axis, gray.channels) == (None, 1)
    assert gray.to_hwc(np.zeros((3, 4))).shape == (3, 4, 1)


@pytest.mark.parametrize(("axes", "shape", "match"), [
    ("QQ", (3, 4), "not a 2-D image"),
    ("CYXS", (2, 3, 4, 3), "both S and C channel axes"),
    ("ZYX", (5, 3, 4), "5 planes along axis 'Z'"),
])
def test_axes_plan_refuses_what_is_not_one_plane(axes, shape, match):
    with pytest.raises(SlideFormatError, match=rf"a\.tif: .*{match}"):
        axes_plan(axes, shape, Path("a.tif"))


# ---------------------------------------------------------------------------------------------
# Fluorescence channel names: OME channels without Name, several images; QPTIFF XML; ImageJ labels
# ---------------------------------------------------------------------------------------------
OME_NS = '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">{}</OME>'


def test_ome_channel_names_fall_back_to_fluor_and_read_only_the_first_image():
    fluor = OME_NS.format('<Image ID="Image:0"><Pixels><Channel ID="Channel:0:0" Fluor="DAPI"/>'
                         '<Channel ID="Channel:0:1" Fluor="FITC" Name=" "/></Pixels></Image>')
    assert ome_channel_names(fluor, 2) == ("DAPI", "FITC")
    ids_only = OME_NS.format('<Image><Pixels><Channel ID="Channel:0:0"/><Channel ID="Channel:0:1"/></Pixels></Image>')
    assert ome_channel_names(ids_only, 2) is None  # an ID is not a name: the defaults apply
    # A label image after the slide adds its own Channel; the slide's channels are still named.
    two_images = OME_NS.format('<Image><Pixels><Channel Name="DAPI"/><Channel Name="Cy3"/></Pixels></Image>'
                               '<Image Name="label"><Pixels><Channel SamplesPerPixel="3"/></Pixels></Image>')
    assert ome_channel_names(two_images, 2) == ("DAPI", "Cy3")
    assert ome_channel_names(OME_NS.format("<Image/>"), 2) is None  # no Pixels


def test_ome_fluorescence_from_channel_attributes():
    def channel(attrs: str) -> str:
        return OME_NS.format(f"<Image><Pixels><Channel {attrs}/></Pixels></Image>")

    assert ome_fluorescence(channel('IlluminationType="Fluorescence"')) is True
    assert ome_fluorescence(channel('EmissionWavelength="461"')) is True
    assert ome_fluorescence(channel('Fluor="DAPI"')) is True
    assert ome_fluorescence(channel('IlluminationType="Transmitted"')) is False
    assert ome_fluorescence(channel('Name="R"')) is None
    assert ome_fluorescence("<OME") is None


def test_ome_tiff_channel_names_written_by_tifffile(tmp_path):
    data = np.zeros((3, 32, 32), np.uint16)
    fluor = tmp_path / "fluor.ome.tif"
    tifffile.imwrite(fluor, data, metadata={"axes": "CYX", "Channel": {"Fluor": ["DAPI", "FITC", "Cy3"]}})
    labelled = tmp_path / "labelled.ome.tif"
    with tifffile.TiffWriter(labelled, ome=True) as tw:
        tw.write(data, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "FITC", "Cy3"]}})
        tw.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb", metadata={"axes": "YXS", "Name": "label"})
    imagej = tmp_path / "imagej.tif"
    tifffile.imwrite(imagej, data, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "FITC", "Cy3"]})
    for path in (fluor, labelled, imagej):
        with tifffile.TiffFile(path) as tif:
            assert tiff_channel_names(tif, tiff_description(tif), 3) == ("DAPI", "FITC", "Cy3"), path.name


QPI = ('<?xml version="1.0" encoding="utf-16"?>\r\n<PerkinElmer-QPI-ImageDescription>\r\n'
       "<DescriptionVersion>2</DescriptionVersion>\r\n<ImageType>{kind}</ImageType>\r\n{extra}"
       "<ScanProfile><Marker>ignored</Marker></ScanProfile>\r\n</PerkinElmer-QPI-ImageDescription>")


def test_qpi_description_reads_image_type_and_channel_name():
    fields = qpi_description("\ufeff" + QPI.format(kind="FullResolution", extra="<Name> DAPI </Name>"))
    assert fields["ImageType"] == "FullResolution" and fields["Name"] == "DAPI"
    assert "Marker" not in fields  # only the top level: the scan profile's nested fields are not names
    assert qpi_channel_name(fields) == "DAPI"
    newer = qpi_description(QPI.format(kind="FullResolution", extra="<Biomarker>CD8</Biomarker>"))
    assert qpi_channel_name(newer) == "CD8"
    assert qpi_channel_name(qpi_description(QPI.format(kind="Thumbnail", extra=""))) is None
    assert qpi_description("Aperio Image Library|MPP = 0.5") is None
    assert qpi_description("<PerkinElmer-QPI-ImageDescription><Name>") is None  # malformed


def test_qpi_channel_names_prefer_unique_biomarkers_over_repeated_filters():
    vectra = [{"Name": "DAPI"}, {"Name": "FITC", "Biomarker": "CD8"}, {}]
    assert qpi_channel_names(vectra) == ("DAPI", "FITC", "C2")
    codex = [{"Name": "DAPI", "Biomarker": "DAPI"}, {"Name": "Cy5", "Biomarker": "CD3"},
             {"Name": "Cy5", "Biomarker": "CD8"}]
    assert qpi_channel_names(codex) == ("DAPI", "CD3", "CD8")
    repeated = [{"Name": "Cy5"}, {"Name": "Cy5"}]  # nothing better: the duplicates stay (select by index)
    assert qpi_channel_names(repeated) == ("Cy5", "Cy5")
