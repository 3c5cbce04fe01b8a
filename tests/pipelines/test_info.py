"""``stainldm info``: each channel's name, the modality, ``--channels`` and its one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from pipelines.cli import main


@pytest.fixture(scope="module")
def qptiff(tmp_path_factory):
    """A Vectra-style QPTIFF: DAPI, FITC, Cy3 uint8 pages with PerkinElmer XML, 0.5 µm/px."""
    path = tmp_path_factory.mktemp("info") / "vectra.qptiff"
    xml = ('<?xml version="1.0" encoding="utf-16"?>\r\n<PerkinElmer-QPI-ImageDescription>\r\n'
           "<ImageType>{kind}</ImageType>\r\n<Name>{name}</Name>\r\n</PerkinElmer-QPI-ImageDescription>")
    data = np.random.default_rng(0).integers(0, 255, (3, 96, 128), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tw:
        for c, name in enumerate(("DAPI", "FITC", "Cy3")):
            tw.write(data[c], tile=(64, 64), description=xml.format(kind="FullResolution", name=name),
                     software="PerkinElmer-QPI", resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None)
    return path


def test_info_prints_each_channel_name_and_fluorescence(qptiff, capsys):
    assert main(["info", str(qptiff)]) == 0
    out = capsys.readouterr().out
    assert "qptiff (reader: QptiffReader)" in out and "0.5 x 0.5 µm/px" in out
    assert "modality    fluorescence" in out
    assert "channels    3 (DAPI, FITC, Cy3), uint8" in out
    assert "    0: DAPI\n    1: FITC\n    2: Cy3\n" in out


def test_info_shows_a_channel_selection(qptiff, capsys):
    assert main(["info", str(qptiff), "--channels", "Cy3,0"]) == 0
    out = capsys.readouterr().out
    assert "channels    2 (Cy3, DAPI), uint8; selected from 3" in out
    assert "0: Cy3 (channel 2 of the slide)" in out and "1: DAPI (channel 0 of the slide)" in out


@pytest.mark.parametrize(("spec", "message"), [
    ("DAPI,TRITC", "--channels asks for 'TRITC', which the slide lacks; it has 3 channels: 0=DAPI, 1=FITC, 2=Cy3"),
    ("3", "--channels index 3 is out of range; the slide has 3 channels (0 to 2)"),
    ("FITC,1", "--channels selects channel 1 (FITC) twice; list each channel once"),
])
def test_info_channel_errors_are_one_line_with_flags(qptiff, capsys, spec, message):
    assert main(["info", str(qptiff), "--channels", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: vectra.qptiff: ") and message in err[0]


def test_info_bad_channel_list_fails_once_before_any_slide(qptiff, capsys):
    assert main(["info", str(qptiff), str(qptiff), "--channels", "DAPI,,Cy3"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == ("error: --channels 'DAPI,,Cy3' has an empty entry; give channel names or "
                                    "indices separated by commas, e.g. DAPI,FITC")
    assert captured.out == ""


def test_info_brightfield_slide_has_no_fluorescence(cmu_path, capsys):
    assert main(["info", str(cmu_path), "--channels", "B"]) == 0
    out = capsys.readouterr().out
    assert "channels    1 (B), uint8; selected from 3" in out and "fluorescence" not in out


def test_info_czi_without_mpp_points_to_the_flag(tmp_path, capsys):
    pyczi = pytest.importorskip("pylibCZIrw.czi")
    pytest.importorskip("czifile")
    path = tmp_path / "noscale.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as writer:
        for c in range(2):
            writer.write(np.zeros((32, 48, 1), np.uint16), location=(0, 0), plane={"C": c})
        writer.write_metadata(channel_names={0: "DAPI", 1: "AF488"})
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not record its pixel size" in err[0] and "pass --mpp" in err[0]
    assert main(["info", str(path), "--mpp", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "czi (reader: CziReader)" in out and "0: DAPI\n    1: AF488" in out and "modality    fluorescence" in out
