"""Channel names from prepare to staining: the tile store and model.json record them, and staining
picks a slide's channels by them (or by ``channels``), whatever order the slide holds them in."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.cli import main
from stainldm.data.store import TileStore
from stainldm.errors import InputError
from stainldm.inference.config import StainConfig
from stainldm.inference.model import StainModel
from stainldm.inference.stain import stain_slide
from stainldm.models.runs import read_model_json
from stainldm.wsi.reader import open_slide
from stainldm.wsi.writer import write_pyramid

TRAINED = ("AF405", "AF488")


@pytest.fixture(scope="module")
def baseline(stain_runs) -> StainModel:
    return StainModel.load(stain_runs["baseline"])


@pytest.fixture(scope="module")
def named(stain_slides, tmp_path_factory) -> dict:
    """Crop ``a`` of the staining sample written again: its channels swapped (names too), with a third
    channel, without names, and under other names."""
    with open_slide(stain_slides["a"]) as s:
        u = s.read_region((0, 0), s.dimensions)  # (481, 481, 2) uint16: AF405, AF488
    out = tmp_path_factory.mktemp("named")
    extra = np.full((*u.shape[:2], 1), 7, np.uint16)
    layouts = {"swapped": (u[..., ::-1], ["AF488", "AF405"]), "three": (np.concatenate([extra, u], 2),
                                                                     ["DAPI", "AF405", "AF488"]),
               "unnamed": (u, None), "other": (u, ["DAPI", "FITC"])}
    for name, (pixels, names) in layouts.items():
        write_pyramid(out / f"{name}.tiff", np.ascontiguousarray(pixels), mpp=0.5, channel_names=names)
    return {"a": stain_slides["a"], **{name: out / f"{name}.tiff" for name in layouts}}


def _stained(path, model, out, cfg: StainConfig | None = None) -> np.ndarray:
    with open_slide(path) as slide:
        res = stain_slide(slide, model, out, cfg or StainConfig())
    with open_slide(res.output) as s:
        return s.read_region((0, 0), s.dimensions)


def test_the_store_and_every_model_record_the_channel_names(stain_runs):
    with open_slide(stain_runs["sample"] / "unstained.tiff") as s:
        assert s.channel_names == TRAINED
    assert TileStore.open(stain_runs["store"]).channel_names == TRAINED
    for kind in ("ae", "ldm", "baseline"):
        assert read_model_json(stain_runs[kind])["channel_names"] == list(TRAINED)


def test_staining_takes_the_models_channels_by_name_in_its_order(baseline, named, tmp_path):
    reference = _stained(named["a"], baseline, tmp_path / "a.tiff")
    assert reference.min() < 255  # there is stained tissue to compare
    for name in ("swapped", "three", "unnamed"):  # reordered, one more, or no names: taken as it is
        assert np.array_equal(_stained(named[name], baseline, tmp_path / f"{name}.tiff"), reference), name


def test_a_slide_without_the_models_channels_says_which_are_missing(baseline, named, tmp_path):
    with pytest.raises(InputError, match=r"other\.tiff: lacks the channels AF405, AF488 that the model was trained "
                                         r"on \(AF405, AF488\); it has DAPI, FITC; pass `channels`"):
        _stained(named["other"], baseline, tmp_path / "x.tiff")
    # `channels` says which of its channels stand for the model's, in the model's order
    by_name = _stained(named["other"], baseline, tmp_path / "o.tiff", StainConfig(channels="DAPI,FITC"))
    by_index = _stained(named["swapped"], baseline, tmp_path / "s.tiff", StainConfig(channels="1,0"))
    assert np.array_equal(by_name, by_index)
    assert np.array_equal(by_name, _stained(named["a"], baseline, tmp_path / "a.tiff"))


def test_stain_channels_flag_and_its_errors(stain_runs, named, tmp_path, capsys):
    run = ["stain", "--checkpoint", str(stain_runs["baseline"]), "--quiet", "--device", "cpu"]
    assert main([*run, str(named["other"]), "--out", str(tmp_path / "ok"), "--channels", "DAPI,FITC"]) == 0
    assert "1 done, 0 no-tissue, 0 failed" in capsys.readouterr().out
    assert main([*run, str(named["other"]), "--out", str(tmp_path / "bad"), "--channels", "DAPI,TRITC"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other.tiff: `channels` asks for 'TRITC', which the slide lacks" not in err[0]
    assert "--channels asks for 'TRITC'" in err[0] and "0=DAPI, 1=FITC" in err[0], err
    assert main([*run, str(named["a"]), "--out", str(tmp_path / "e"), "--channels", "DAPI,,FITC"]) == 2
    assert "--channels 'DAPI,,FITC' has an empty entry" in capsys.readouterr().err
