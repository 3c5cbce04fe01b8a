"""Config loading: unknown keys and wrong types fail naming the key; overrides parse as YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from stainldm.config import apply_overrides, config_hash, from_dict, load_config, save_config, to_dict
from stainldm.errors import ConfigError


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Run:
    name: str = "run"
    steps: int = 10
    amp: bool = False
    device: Literal["cpu", "cuda"] = "cpu"
    weights: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_and_nested_values():
    cfg = from_dict(Run, {"steps": 5, "optim": {"lr": 3, "betas": [0.5, 0.6]}})
    assert cfg.steps == 5 and cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.6) and cfg.name == "run"


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'\?"):
        from_dict(Run, {"optim": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match="unknown config key 'zzz'; known keys: name, steps"):
        from_dict(Run, {"zzz": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"steps": "ten"}, "'steps': expected an integer, got 'ten'"),
        ({"steps": 1.5}, "'steps': expected an integer"),
        ({"amp": "yes"}, "'amp': expected true or false"),
        ({"device": "tpu"}, "'device': 'tpu' is not one of 'cpu', 'cuda'"),
        ({"optim": {"betas": [0.9]}}, r"'optim\.betas': expected 2 values, got 1"),
        ({"optim": 3}, "optim: expected a mapping"),
        ({"weights": 7}, "'weights': expected a string"),
    ],
)
def test_wrong_types_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Run, data)


def test_overrides_parse_yaml_scalars_and_nest():
    data = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=2e-4", "amp=true", "name=a b", "weights=null"])
    cfg = from_dict(Run, data)
    assert (cfg.optim.lr, cfg.amp, cfg.name, cfg.weights) == (2e-4, True, "a b", None)
    with pytest.raises(ConfigError, match="^`overrides` 'steps': expected key=value, e.g. grid.rows=4$"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="^`overrides` 'steps.x=1': 'steps' is not a section"):
        apply_overrides({"steps": 3}, ["steps.x=1"])
    with pytest.raises(ConfigError, match="^`overrides` 'x=\\[': value is not valid YAML") as exc:
        apply_overrides({}, ["x=["])
    assert exc.value.__cause__ is not None


def test_load_save_roundtrip_and_file_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  steps: 7\n  optim:\n    lr: 0.001\n")
    cfg = load_config(Run, path, section="run", overrides=["amp=true"])
    assert (cfg.steps, cfg.optim.lr, cfg.amp) == (7, 0.001, True)
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(Run, tmp_path / "out.yaml")
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(from_dict(Run, {"steps": 8})) != config_hash(from_dict(Run, {}))
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.999]
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(Run, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("run: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line"):
        load_config(Run, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"unknown config key 'run\.stepz'"):
        (tmp_path / "typo.yaml").write_text("run:\n  stepz: 3\n")
        load_config(Run, tmp_path / "typo.yaml", section="run")
