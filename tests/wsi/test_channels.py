"""Channel selection by name or index, its errors, and what a slide's channels hold."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from stainldm.errors import InputError
from stainldm.wsi.channels import (
    ChannelSelection,
    channel_modality,
    parse_channels,
    resolve_channels,
    select_channels,
)
from stainldm.wsi.reader import open_slide
from stainldm.wsi.slide import ArrayReader

NAMES = ("DAPI", "FITC", "Cy3", "Cy5")


def test_parse_channels_names_and_indices():
    assert parse_channels("DAPI, FITC") == ["DAPI", "FITC"]
    assert parse_channels("2,0") == [2, 0]
    assert parse_channels(" CD8 (Opal 540) ,3") == ["CD8 (Opal 540)", 3]
    assert parse_channels(["Cy3", 1, np.int64(2)]) == ["Cy3", 1, 2]
    assert parse_channels("-1") == [-1]  # an index, refused against a slide below
    for bad in ("", "DAPI,,FITC", " , ", []):
        with pytest.raises(InputError, match="`channels`"):
            parse_channels(bad)


def test_resolve_channels_by_name_index_and_case():
    assert resolve_channels(NAMES, "Cy5,DAPI") == [3, 0]
    assert resolve_channels(NAMES, "dapi,2") == [0, 2]  # case-insensitive when unique
    assert resolve_channels(("dapi", "DAPI"), "DAPI") == [1]  # an exact match wins


def test_resolve_channels_errors_are_one_line_and_say_what_the_slide_has():
    with pytest.raises(InputError, match=r"^s\.tif: `channels` asks for 'TRITC', 'AF647', which the slide lacks; "
                                         r"it has 4 channels: 0=DAPI, 1=FITC, 2=Cy3, 3=Cy5$"):
        resolve_channels(NAMES, "DAPI,TRITC,AF647", slide="s.tif")
    with pytest.raises(InputError, match=r"index 4 is out of range; the slide has 4 channels \(0 to 3\)"):
        resolve_channels(NAMES, "4")
    with pytest.raises(InputError, match="index -1 is out of range"):
        resolve_channels(NAMES, [-1])
    with pytest.raises(InputError, match=r"selects channel 0 \(DAPI\) twice; list each channel once"):
        resolve_channels(NAMES, "DAPI,0")
    with pytest.raises(InputError, match=r"selects channel 1 \(FITC\) twice"):
        resolve_channels(NAMES, "FITC,fitc")
    with pytest.raises(InputError, match=r"2 channels are named 'AF' \(indices 0, 2\); select them by index"):
        resolve_channels(("AF", "DAPI", "AF"), "AF")
    assert resolve_channels(("AF", "DAPI", "AF"), "2,0") == [2, 0]  # by index they are fine


@pytest.fixture()
def fluo_array():
    data = np.random.default_rng(0).integers(0, 4000, (40, 60, 4), dtype=np.uint16)
    return data, ArrayReader(data, mpp=0.5, channel_names=NAMES)


def test_selection_reads_chosen_channels_in_order(fluo_array):
    data, slide = fluo_array
    chosen = select_channels(slide, "Cy5,DAPI")
    assert isinstance(chosen, ChannelSelection)
    assert (chosen.channels, chosen.channel_names, chosen.indices) == (2, ("Cy5", "DAPI"), (3, 0))
    assert (chosen.dimensions, chosen.mpp, chosen.dtype, chosen.level_count) == ((60, 40), (0.5, 0.5), np.uint16, 1)
    np.testing.assert_array_equal(chosen.read_region((5, 6), (20, 10)), data[6:16, 5:25][..., [3, 0]])
    # Outside the slide: the slide's own background.
    out = chosen.read_region((50, 30), (20, 20))
    assert out.shape == (20, 20, 2) and out[10:].max() == 0
    np.testing.assert_array_equal(out[:10, :10], data[30:, 50:][..., [3, 0]])
    # Resampled reads and thumbnails go through the selection too.
    assert chosen.read_at_mpp((0, 0), (10, 10), mpp=1.0).shape == (10, 10, 2)
    assert chosen.thumbnail(max_px=30).shape == (20, 30, 2)
    # A selection of a selection maps back to the slide's channels.
    np.testing.assert_array_equal(select_channels(chosen, "DAPI").read_region((0, 0), (3, 3))[..., 0],
                                  data[:3, :3, 0])


def test_no_or_identity_selection_is_the_slide_itself(fluo_array):
    _, slide = fluo_array
    assert select_channels(slide, None) is slide
    assert select_channels(slide, "0,1,2,3") is slide
    assert select_channels(slide, list(NAMES)) is slide


def test_selection_of_a_brightfield_channel_keeps_white_background(he_image):
    slide = ArrayReader(he_image[:50, :50], mpp=0.5)
    green = select_channels(slide, "G")
    assert green.background == 255 and green.read_region((40, 40), (20, 20))[15, 15, 0] == 255


def test_selection_of_a_file_delegates_and_closes(tmp_path):
    data = np.random.default_rng(1).integers(0, 60000, (3, 64, 48), dtype=np.uint16)
    path = tmp_path / "three.ome.tif"
    tifffile.imwrite(path, data, metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "FITC", "Cy3"]},
                                            "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with select_channels(open_slide(path), "FITC") as chosen:
        assert chosen.path == path and chosen.vendor == "ome-tiff" and chosen.channel_names == ("FITC",)
        assert isinstance(chosen.description, str)  # a backend attribute, from the slide itself
        np.testing.assert_array_equal(chosen.read_region((0, 0), (48, 64))[..., 0], data[1])
        assert chosen.associated_names == ()
    assert chosen.base._fd == -1  # closing the selection closed the file
    assert "ChannelSelection('three.ome.tif'" in repr(chosen)


def test_channel_modality_from_the_file_then_the_pixels(fluo_array, he_image):
    _, fluo = fluo_array
    assert channel_modality(fluo) == "fluorescence"  # 4 uint16 channels
    assert channel_modality(ArrayReader(he_image)) == "he"
    gray = np.full((64, 64, 3), 235, np.uint8)
    gray[20:40, 20:40] = 215  # unstained tissue: a little darker than the glass, no colour
    assert channel_modality(ArrayReader(gray)) == "brightfield"
    dark = np.zeros((64, 64, 3), np.uint8)
    dark[20:40, 20:40] = (30, 200, 90)  # three uint8 channels on black glass
    assert channel_modality(ArrayReader(dark)) == "fluorescence"
    said = ArrayReader(gray)
    said.fluorescence = True  # what a QPTIFF or CZI says wins over its pixels
    assert channel_modality(said) == "fluorescence"
