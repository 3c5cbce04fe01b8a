"""stainldm.data.sample_files: a make-sample folder in one library call."""

from __future__ import annotations

import json

import pytest

from stainldm.config import load_config
from stainldm.data.sample_files import FILES, format_truth_json, is_complete, make_sample
from stainldm.data.synthetic import SampleConfig
from stainldm.errors import InputError

SMALL = ["grid.rows=2", "grid.cols=2", "grid.core_diameter_um=150", "grid.gap_um=50", "grid.test_cores=1"]


def test_make_sample_writes_the_folder_then_skips_it_until_forced(tmp_path):
    out = tmp_path / "s"
    cfg = load_config(SampleConfig, overrides=SMALL)
    pair = make_sample(out, cfg)
    assert pair is not None and sorted(p.name for p in out.iterdir()) == sorted(FILES)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["provenance"]["seed"] == cfg.seed and truth["cores"] == pair.truth["cores"]
    assert is_complete(out, truth["provenance"])
    stamp = (out / "unstained.tiff").stat().st_mtime_ns
    assert make_sample(out, cfg) is None and (out / "unstained.tiff").stat().st_mtime_ns == stamp
    assert not is_complete(out, {**truth["provenance"], "seed": cfg.seed + 1})
    assert make_sample(out, cfg, force=True) is not None


def test_an_output_folder_that_cannot_be_created_names_the_parameter(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot create the output folder .*; choose another `out`") as exc:
        make_sample(blocker / "out", load_config(SampleConfig, overrides=SMALL))
    assert isinstance(exc.value.__cause__, OSError)


def test_truth_json_keeps_number_lists_on_one_line():
    text = format_truth_json({"matrix": [[1.0, 0.0, -2.5], [0.0, 1.0, 3e-05]], "name": "A1", "ids": ["a", "b"]})
    assert '[1.0, 0.0, -2.5]' in text and '[0.0, 1.0, 3e-05]' in text and text.endswith("}\n")
    assert '"ids": [\n' in text  # lists of strings stay one item a line
    assert json.loads(text)["matrix"][1][2] == 3e-05


def test_a_realism_sample_records_its_one_sided_structures_and_is_another_sample(tmp_path):
    out = tmp_path / "s"
    plain = make_sample(out, load_config(SampleConfig, overrides=SMALL))
    real_cfg = load_config(SampleConfig, overrides=[*SMALL, "realism.enabled=true"])
    real = make_sample(out, real_cfg)  # not skipped: realism is part of the config
    assert real is not None
    truth = json.loads((out / "truth.json").read_text())
    assert truth["config"]["realism"]["enabled"] is True and truth["transform"] == plain.truth["transform"]
    assert truth["realism"]["brown_blobs"]["shown_on"] == "stained"
    assert all(0 <= r["tissue_fraction"] <= 1 for r in truth["realism"].values())
    assert make_sample(out, real_cfg) is None
