"""VALIS on one slide pair, run inside ``.venv-valis`` (``make valis-env``) by ``register.py --valis``.

    .venv-valis/bin/python benchmarks/_valis_register.py UNSTAINED STAINED POINTS_JSON OUT_DIR
    .venv-valis/bin/python benchmarks/_valis_register.py --check

VALIS (valis-wsi 1.2) needs numpy<2, so it cannot share a process with stainldm: this script imports
nothing from stainldm and nothing but the standard library at module level, so that ``register.py``
and the tests can use its protocol functions from the main environment. Protocol: POINTS_JSON holds
``{"xy_unstained": [[x, y], ...]}`` (level-0 px of the unstained slide); the script writes
``OUT_DIR/result.json`` with the same points warped into the unstained slide's partner, the stained
slide (level-0 px, same order), the seconds VALIS took and how it was configured.

Configuration, offline by construction (no network here but package registries):

- Slides are read through libvips (``VipsSlideReader``, passed explicitly), so VALIS never looks for
  a reader with Bio-Formats and never starts its JVM, which would fetch Bio-Formats jars from Maven.
- VALIS 1.2 builds its default DISK + LightGlue matcher while ``valis.registration`` is imported, and
  those weights are downloaded from GitHub; for the import only, kornia's DISK and LightGlueMatcher
  are replaced by weightless stand-ins that are never used. Rigid registration then uses VGG
  descriptors with RANSAC-filtered brute-force matches (VALIS 1.0's default, and 1.2's matcher for
  sorting), which need no weights.
- The stained slide is the reference (``align_to_reference``), so the unstained slide is the one
  warped. Steps as VALIS's README recommends: ``register()`` (rigid, then non-rigid with the default
  ``OpticalFlowWarper`` at 2048 px), then ``register_micro()`` (non-rigid again, at
  ``--micro-px``, default the full slide). The unstained slide's processor takes channel 0 (AF405,
  the DAPI-like band) with adaptive equalisation; the H&E gets VALIS's default (optical density).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

RESULT_NAME = "result.json"


def write_points(path: Path, xy_unstained: list[list[float]]) -> None:
    """Writes the points VALIS is asked to warp (level-0 unstained px, ``[[x, y], ...]``)."""
    path.write_text(json.dumps({"xy_unstained": _floats(xy_unstained)}))


def read_points(path: Path) -> list[list[float]]:
    """The points of :func:`write_points`; raises ValueError when the file is not such a list."""
    xy = json.loads(Path(path).read_text()).get("xy_unstained")
    if not isinstance(xy, list) or not all(isinstance(p, list) and len(p) == 2 for p in xy):
        raise ValueError(f"{path}: 'xy_unstained' must be a list of [x, y] pairs")
    return _floats(xy)


def write_result(out: Path, xy_stained: list[list[float]], *, seconds: dict, config: dict,
                 stages: dict[str, list[list[float]]] | None = None) -> Path:
    """Writes ``out/result.json``: the warped points (level-0 stained px), the same points after
    earlier steps (``stages``, e.g. ``rigid``), seconds and configuration."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULT_NAME
    path.write_text(json.dumps({"xy_stained": _floats(xy_stained),
                                "stages": {k: _floats(v) for k, v in (stages or {}).items()},
                                "seconds": seconds, "config": config}))
    return path


def _floats(xy) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in xy]


def read_result(out: Path) -> dict:
    """``out/result.json`` as written by :func:`write_result`."""
    return json.loads((Path(out) / RESULT_NAME).read_text())


def import_valis():
    """``valis.registration``, ``feature_detectors``, ``feature_matcher``, ``slide_io``, imported
    without the weight downloads that VALIS's default matcher does at import (module docstring)."""
    import kornia.feature as kf
    import torch

    class _NoWeights(torch.nn.Module):  # stands in for a pretrained kornia network, never called
        def __init__(self, *args, **kwargs):
            super().__init__()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

    saved = kf.DISK, kf.LightGlueMatcher
    kf.DISK, kf.LightGlueMatcher = _NoWeights, _NoWeights
    try:
        from valis import feature_detectors, feature_matcher, registration, slide_io
    finally:
        kf.DISK, kf.LightGlueMatcher = saved
    return registration, feature_detectors, feature_matcher, slide_io


def register_points(unstained: Path, stained: Path, xy_unstained: list[list[float]], out: Path, *,
                    micro_px: int | None, stained_processing: str = "od") -> tuple[list, dict, dict, dict]:
    """Registers the pair with VALIS and warps ``xy_unstained`` into the stained slide.

    Args:
        unstained, stained: the slide files (TIFFs libvips reads).
        xy_unstained: level-0 px in the unstained slide.
        out: folder for VALIS's own outputs (thumbnails, pickled registrar).
        micro_px: largest side of the micro-registration images; None: the full slide.
        stained_processing: ``od`` (VALIS's default for brightfield: optical density) or ``eosin``
            (Macenko deconvolution's eosin channel, which the autofluorescence follows).

    Returns:
        (points in level-0 stained px after all steps, the same after ``rigid`` and ``non_rigid``
        (``register()`` alone), seconds per step, configuration).

    Raises:
        RuntimeError: VALIS reported a failed registration (its traceback is on stdout).
    """
    import numpy as np

    registration, feature_detectors, feature_matcher, slide_io = import_valis()
    from valis import preprocessing

    matcher = feature_matcher.Matcher(match_filter_method=feature_matcher.DEFAULT_RANSAC_NAME,
                                      feature_detector=feature_detectors.VggFD())
    if_kwargs = {"channel": 0, "adaptive_eq": True}
    bf = {"od": (preprocessing.OD, {"adaptive_eq": False}),
          "eosin": (preprocessing.HEDeconvolution, {"stain": "eos"})}[stained_processing]
    processing = {"if_processing_kwargs": if_kwargs, "brightfield_processing_cls": bf[0],
                  "brightfield_processing_kwargs": bf[1]}
    t0 = time.perf_counter()
    reg = registration.Valis(str(unstained.parent), str(out), img_list=[str(unstained), str(stained)],
                             reference_img_f=str(stained), align_to_reference=True, matcher=matcher,
                             imgs_ordered=True)
    rigid, non_rigid, _ = reg.register(reader_cls=slide_io.VipsSlideReader, **processing)
    if rigid is None or non_rigid is None:
        raise RuntimeError("VALIS register() failed (see its traceback above)")
    moving, fixed = reg.get_slide(str(unstained)), reg.get_slide(str(stained))
    xy = np.asarray(xy_unstained, dtype=np.float64)
    t1 = time.perf_counter()
    stages = {"rigid": moving.warp_xy_from_to(xy, fixed, non_rigid=False),  # not timed
              "non_rigid": moving.warp_xy_from_to(xy, fixed)}
    t1b = time.perf_counter()
    size = micro_px or int(max(max(s.slide_dimensions_wh[0]) for s in reg.slide_dict.values()))
    _, micro_error = reg.register_micro(max_non_rigid_registration_dim_px=size, reference_img_f=str(stained),
                                        align_to_reference=True, **processing)
    t2 = time.perf_counter()
    if micro_error is None:
        raise RuntimeError("VALIS register_micro() failed (see its traceback above)")
    moving, fixed = reg.get_slide(str(unstained)), reg.get_slide(str(stained))
    warped = moving.warp_xy_from_to(xy, fixed)
    t3 = time.perf_counter()
    seconds = {"register": t1 - t0, "micro": t2 - t1b, "warp": t3 - t2, "total": (t1 - t0) + (t3 - t1b)}
    config = {"valis": _version("valis-wsi"),
              "reader": "VipsSlideReader", "reference": "stained", "features": "VggFD",
              "matcher": "Matcher (RANSAC)", "non_rigid": "OpticalFlowWarper",
              "non_rigid_px": int(reg.max_non_rigid_registration_dim_px), "micro_px": int(size),
              "unstained_processing": f"ChannelGetter {if_kwargs}",
              "stained_processing": f"{bf[0].__name__} {bf[1]}"}
    return _floats(warped), {k: _floats(v) for k, v in stages.items()}, seconds, config


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("unstained", type=Path, nargs="?")
    p.add_argument("stained", type=Path, nargs="?")
    p.add_argument("points", type=Path, nargs="?", help="JSON {'xy_unstained': [[x, y], ...]}")
    p.add_argument("out", type=Path, nargs="?", help="folder for VALIS's outputs and result.json")
    p.add_argument("--micro-px", type=int, default=None,
                   help="largest side for register_micro (default: the full slide)")
    p.add_argument("--stained-processing", choices=("od", "eosin"), default="od",
                   help="how the H&E is made one channel: od (VALIS's default) or eosin (Macenko deconvolution)")
    p.add_argument("--check", action="store_true", help="import VALIS offline, print versions and exit")
    args = p.parse_args(argv)
    if args.check:
        import_valis()
        import pyvips

        print(f"valis-wsi {_version('valis-wsi')}, libvips {pyvips.version(0)}.{pyvips.version(1)}: imports offline")
        return 0
    if None in (args.unstained, args.stained, args.points, args.out):
        p.error("UNSTAINED STAINED POINTS_JSON OUT_DIR are required (or --check)")
    xy, stages, seconds, config = register_points(args.unstained.resolve(), args.stained.resolve(), read_points(args.points),
                                          args.out.resolve(), micro_px=args.micro_px,
                                          stained_processing=args.stained_processing)
    print(f"wrote {write_result(args.out, xy, seconds=seconds, config=config, stages=stages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
