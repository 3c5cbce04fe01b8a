"""benchmarks/register.py's VALIS side without VALIS: the one-line message when .venv-valis is
absent, and the point protocol with benchmarks/_valis_register.py through a stand-in interpreter
that plays VALIS (shifts the points by a known offset)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
SHIFT = (3.0, -2.0)  # the stand-in pair's truth: stained = unstained + SHIFT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("register")


@pytest.fixture()
def truth() -> dict:
    rng = np.random.default_rng(0)
    landmarks = {}
    for core in ("A1", "A2", "B1"):
        xy = rng.uniform(0, 4000, size=(7, 2))
        landmarks[core] = np.hstack([xy, xy + SHIFT]).tolist()
    return {"landmarks": landmarks}


def _stand_in(tmp_path: Path, body: str) -> Path:
    """An executable that ``run_valis`` calls as VALIS's Python: ``argv[1]`` is the script it would run."""
    exe = tmp_path / "valis-python"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(BENCH)!r})\n"
                   "from pathlib import Path\nimport _valis_register as v\n"
                   "_, script, unstained, stained, points, out = sys.argv\n" + body)
    exe.chmod(0o755)
    return exe


def test_run_valis_without_environment_says_how_to_make_it(bench, truth, tmp_path):
    with pytest.raises(bench.ValisUnavailable, match="make valis-env") as err:
        bench.run_valis(tmp_path, truth, {"A1": None}, python=tmp_path / "absent" / "python", work=tmp_path / "w")
    assert "\n" not in str(err.value)


def test_register_valis_flag_without_environment_prints_one_line(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["register.py", "--valis", "--valis-python", str(tmp_path / "absent")])
    assert bench.main() == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.count("\n") == 1 and "make valis-env" in out.err and "Traceback" not in out.err


def test_valis_points_round_trip_and_are_scored_like_ours(bench, truth, tmp_path):
    # the stand-in warps by the truth plus 0.5 px in x (a "rigid" step: 1 px in y): every landmark's
    # TRE is exactly 0.5 px (1 px after "rigid")
    exe = _stand_in(tmp_path, "xy = [[x + 3.0, y - 2.0] for x, y in v.read_points(Path(points))]\n"
                              "v.write_result(Path(out), [[x + 0.5, y] for x, y in xy], seconds={'total': 1.5},\n"
                              "               config={'features': 'stand-in'}, stages={'rigid': [[x, y + 1] for x, y in xy]})\n")
    regions = {"A1": None, "B1": None}  # A2 left out: its landmarks are not scored
    r = bench.run_valis(tmp_path, truth, regions, python=exe, work=tmp_path / "w")
    tre = r["tre"]["final"]
    assert tre["n"] == 14
    assert tre["median"] == pytest.approx(0.5) and tre["max"] == pytest.approx(0.5)
    assert r["tre"]["rigid"]["median"] == pytest.approx(1.0) and r["tre"]["rigid"]["n"] == 14
    assert not (tmp_path / "w" / "out").exists()  # VALIS's own outputs are not kept
    assert r["seconds"] == 1.5 and r["config"] == {"features": "stand-in"}


def test_valis_failure_names_its_last_line_and_log(bench, truth, tmp_path):
    exe = _stand_in(tmp_path, "print('RuntimeError: VALIS register() failed')\nsys.exit(1)\n")
    with pytest.raises(RuntimeError, match=r"VALIS failed on .*exit 1.*register\(\) failed.*valis\.log"):
        bench.run_valis(tmp_path, truth, {"A1": None}, python=exe, work=tmp_path / "w")


def test_read_points_rejects_a_file_without_point_pairs(tmp_path):
    v = _load("_valis_register")
    path = tmp_path / "points.json"
    path.write_text('{"xy_unstained": [[1, 2, 3]]}')
    with pytest.raises(ValueError, match="list of \\[x, y\\] pairs"):
        v.read_points(path)
    v.write_points(path, [[1, 2], [3.5, 4]])
    assert v.read_points(path) == [[1.0, 2.0], [3.5, 4.0]]
