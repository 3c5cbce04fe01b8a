"""Registration accuracy per stage and pair kind, against today's registration (issues 15 and 16).

    .venv/bin/python benchmarks/register.py [--kinds plain3 ...] [--samples DIR] [--cores N] [--valis]

Pairs are ``make-sample`` slide pairs (default size: 11 cores, 2-channel autofluorescence, 0.5 µm/px)
made into a temporary folder, with truth landmarks:

- ``plain3`` / ``plain20``: today's make-sample at the default 3 px and at a 20 px elastic warp;
- ``real3`` / ``real20``: the same with ``realism.enabled=true`` (one-sided structure: DAB/pigment
  in the H&E only, granules in the autofluorescence, dust, per-modality blur) when make-sample has
  that setting; otherwise the plain pairs with one-sided blobs painted in here (``emulated``);
- ``aligned``: no misregistration at all (the pair starts at the truth), realistic (or painted).

Each pair is registered twice in the same run: the anchor, ``RegisterConfig(stage_checks=False,
deformable=False)`` (the three stages as they were), and the default. For each: TRE (level-0 px of
the stained slide, over all truth landmarks) median / p95 / max after every stage (coarse, core,
tiles, deform, final), flagged cores and wall seconds of ``register_pair``. Goals: realistic and
20 px pairs median ≤ 0.5 px and p95 ≤ 1.5 px; 3 px pairs no worse than the anchor; an aligned pair
within 0.5 px. ``--valis`` adds VALIS (``valis-wsi``) on the same pairs when it is importable.
Results: ``bench-out/register.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import BENCH_OUT

KINDS = {
    "plain3": (),
    "plain20": ("misregistration.elastic_max_px=20",),
    "real3": ("realism.enabled=true",),
    "real20": ("realism.enabled=true", "misregistration.elastic_max_px=20"),
    "aligned": ("realism.enabled=true", "misregistration.max_rotation_deg=0", "misregistration.max_translation_um=0",
                "misregistration.elastic_max_px=0"),
}
PAINTED = {"real3": "plain3", "real20": "plain20", "aligned": "aligned"}  # kinds that get painted blobs
STAGE_NAMES = ("coarse", "core", "tiles", "deform", "final")


def make_pair(out: Path, kind: str) -> tuple[Path, bool]:
    """Writes the make-sample pair of ``kind``; returns (folder, whether blobs must be painted)."""
    from stainldm.config import load_config
    from stainldm.data.sample_files import make_sample
    from stainldm.data.synthetic import SampleConfig
    from stainldm.errors import ConfigError

    try:
        make_sample(out, load_config(SampleConfig, overrides=list(KINDS[kind])))
        return out, False
    except ConfigError:  # make-sample without a realism setting: paint one-sided blobs instead
        overrides = [o for o in KINDS[PAINTED[kind]] if not o.startswith("realism.")]
        make_sample(out, load_config(SampleConfig, overrides=overrides))
        return out, True


def open_pair(folder: Path, *, paint: bool, seed: int = 0):
    """The pair as in-memory slides (with one-sided structure painted in when ``paint``) + truth."""
    import cv2

    from stainldm.wsi.reader import ArrayReader, open_slide

    truth = json.loads((folder / "truth.json").read_text())
    with open_slide(folder / "unstained.tiff") as u, open_slide(folder / "stained.tiff") as s:
        ua, sa, mpp = u.read_region((0, 0), u.dimensions).copy(), s.read_region((0, 0), s.dimensions).copy(), u.mpp[0]
    if paint:
        rng = np.random.default_rng(seed)
        hi = np.percentile(ua[::8, ::8], 99.5, axis=(0, 1))
        for c in truth["cores"]:
            r = c["diameter_px"] / 2
            for _ in range(25):  # DAB (brown) and pigment (black) blobs in the H&E only
                a, d = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0, 0.8))
                cx, cy = c["center_stained_xy"]
                rad = rng.uniform(6, 25)
                colour = (100, 60, 25) if rng.random() < 0.7 else (30, 25, 20)
                cv2.ellipse(sa, (int(cx + d * np.cos(a)), int(cy + d * np.sin(a))),
                            (int(rad), int(rad * rng.uniform(0.5, 1))), rng.uniform(0, 180), 0, 360, colour, -1)
            for _ in range(60):  # bright granules / debris in the autofluorescence only
                a, d = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0, 1))
                cx, cy = c["center_unstained_xy"]
                cv2.circle(ua, (int(cx + d * np.cos(a)), int(cy + d * np.sin(a))), int(rng.uniform(2, 8)),
                           tuple(int(1.5 * h) for h in hi), -1)
        ua = cv2.GaussianBlur(ua, (0, 0), 1.2)  # per-modality blur
        sa = cv2.GaussianBlur(sa, (0, 0), 0.7)
    return ArrayReader(ua, mpp=mpp), ArrayReader(sa, mpp=mpp), truth


def regions_of(truth: dict, n: int | None) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for c in truth["cores"][:n]:
        r = c["diameter_px"] / 2
        x, y = c["center_unstained_xy"]
        out[c["id"]] = (round(x - r), round(y - r), round(2 * r), round(2 * r))
    return out


def run_stainldm(u, s, truth, regions, cfg) -> dict:
    from stainldm.wsi.register import register_pair, stage_errors

    landmarks = {k: np.asarray(v, dtype=np.float64) for k, v in truth["landmarks"].items() if k in regions}
    t0 = time.perf_counter()
    reg = register_pair(u, s, regions, cfg)
    seconds = time.perf_counter() - t0
    errors = stage_errors(reg, landmarks)
    return {"seconds": seconds, "flagged": sum(reg.flagged(k) for k in reg.cores),
            "tre": {k: _stats(v) for k, v in errors.items()}}


def run_valis(folder: Path, truth: dict, regions) -> dict | None:
    """VALIS (non-rigid, whole slide) on the same pair, TRE on the same landmarks; None when absent."""
    try:
        from valis import registration as valis_registration
    except ImportError:
        return None
    src = Path(tempfile.mkdtemp(prefix="valis-"))
    try:
        shutil.copy(folder / "unstained.tiff", src / "unstained.tiff")
        shutil.copy(folder / "stained.tiff", src / "stained.tiff")
        t0 = time.perf_counter()
        reg = valis_registration.Valis(str(src), str(src / "out"), reference_img_f="unstained.tiff",
                                       align_to_reference=True)
        _, _, _ = reg.register()
        seconds = time.perf_counter() - t0
        moving = reg.get_slide("stained.tiff")
        pts = np.concatenate([np.asarray(truth["landmarks"][k]) for k in regions])
        # VALIS warps points from a slide into the reference; ours are unstained -> stained, so the
        # landmarks' stained side is warped onto the unstained one and compared there
        warped = moving.warp_xy_from_to(pts[:, 2:4], reg.get_slide("unstained.tiff"))
        valis_registration.kill_jvm()
        return {"seconds": seconds, "tre": {"final": _stats(np.hypot(*(warped - pts[:, :2]).T))}}
    finally:
        shutil.rmtree(src, ignore_errors=True)


def _stats(e: np.ndarray) -> dict:
    return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "max": float(e.max()), "n": len(e)}


def main() -> int:
    from stainldm.wsi.register import RegisterConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--cores", type=int, default=None, help="register only the first N truth cores of each pair")
    p.add_argument("--valis", action="store_true", help="also run VALIS (valis-wsi) when it is installed")
    p.add_argument("--samples", type=Path, default=None,
                   help="a folder of ready pairs named like the kinds (e.g. /tmp/realism-samples/real3); used when present")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the sample pairs (default: a temp folder)")
    args = p.parse_args()
    methods = {"anchor": RegisterConfig(stage_checks=False, deformable=False), "stainldm": RegisterConfig()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-register-", dir=args.tmp))
    results: dict = {}
    valis_missing = False
    try:
        for kind in args.kinds:
            ready = args.samples / kind if args.samples else None
            if ready is not None and (ready / "truth.json").is_file():
                folder, paint = ready, False
            else:
                folder, paint = make_pair(tmp / kind, kind)
            u, s, truth = open_pair(folder, paint=paint)
            regions = regions_of(truth, args.cores)
            label = kind + (" (painted blobs)" if paint else "")
            results[label] = {name: run_stainldm(u, s, truth, regions, cfg) for name, cfg in methods.items()}
            if args.valis:
                v = run_valis(folder, truth, regions) if not paint else None
                valis_missing = valis_missing or v is None
                if v is not None:
                    results[label]["valis"] = v
            _print_kind(label, results[label])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.valis and valis_missing:
        print("VALIS not installed: pip install valis-wsi (needs libvips)" if not _has_valis() else
              "VALIS runs only on the written pairs (not on painted ones)")
    times = [(r["stainldm"]["seconds"], r["anchor"]["seconds"]) for r in results.values()]
    ratio = sum(t[0] for t in times) / max(sum(t[1] for t in times), 1e-9)
    print(f"\nregister_pair wall time, new / anchor: {ratio:.2f}x")
    BENCH_OUT.mkdir(exist_ok=True)
    (BENCH_OUT / "register.json").write_text(json.dumps({"results": results, "time_ratio": ratio}, indent=1))
    return 0


def _has_valis() -> bool:
    try:
        import valis  # noqa: F401
    except ImportError:
        return False
    return True


def _print_kind(label: str, res: dict) -> None:
    print(f"\n{label}")
    print(f"  {'method':9s} {'stage':7s} {'median':>7s} {'p95':>7s} {'max':>7s}")
    for name, r in res.items():
        for stage in STAGE_NAMES:
            if stage in r["tre"]:
                t = r["tre"][stage]
                print(f"  {name:9s} {stage:7s} {t['median']:7.3f} {t['p95']:7.3f} {t['max']:7.3f}")
        print(f"  {name:9s} {r['seconds']:.1f} s" + (f", {r['flagged']} flagged cores" if "flagged" in r else ""))


if __name__ == "__main__":
    raise SystemExit(main())
