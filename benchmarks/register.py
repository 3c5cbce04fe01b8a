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
within 0.5 px. ``--valis`` adds VALIS (``valis-wsi``) on the same written pairs, run by
``_valis_register.py`` in its own environment (``make valis-env``: VALIS needs numpy<2), its warped
landmarks scored here like ours; its seconds are VALIS's own (register + micro-register + warp).
Results: ``bench-out/register.json`` (VALIS's logs: ``bench-out/register-valis/KIND/valis.log``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import BENCH_OUT
from _valis_register import read_result, write_points

VALIS_SCRIPT = Path(__file__).resolve().parent / "_valis_register.py"
VALIS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-valis" / "bin" / "python"

KINDS = {
    "plain3": (),
    "plain20": ("misregistration.elastic_max_px=20",),
    "real3": ("realism.enabled=true",),
    "real20": ("realism.enabled=true", "misregistration.elastic_max_px=20"),
    "aligned": ("realism.enabled=true", "misregistration.max_rotation_deg=0", "misregistration.max_translation_um=0",
                "misregistration.elastic_max_px=0"),
}
PAINTED = {"real3": "plain3", "real20": "plain20", "aligned": "aligned"}  # kinds that get painted blobs
STAGE_NAMES = ("coarse", "core", "tiles", "deform", "rigid", "non_rigid", "final")  # ours, then VALIS's


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


class ValisUnavailable(Exception):
    """VALIS's environment is not there; the message is one line saying how to make it."""


def run_valis(folder: Path, truth: dict, regions, *, python: Path, work: Path) -> dict:
    """VALIS on the pair's slide files in its own environment, TRE on the same landmarks as ours.

    ``_valis_register.py`` runs under ``python`` (``.venv-valis``: VALIS needs numpy<2), warps the
    landmarks' unstained side into the stained slide, and the returned points are scored against
    the stained side, as ``registration_errors`` scores ours.

    Raises:
        ValisUnavailable: ``python`` does not exist (the message says how to make it).
        RuntimeError: VALIS failed; the message has its last line and names the log.
    """
    if missing := valis_missing(python):
        raise ValisUnavailable(missing)
    pts = np.concatenate([np.asarray(truth["landmarks"][k], dtype=np.float64) for k in regions])  # (N, 4)
    work.mkdir(parents=True, exist_ok=True)
    write_points(work / "points.json", pts[:, :2].tolist())
    log = work / "valis.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run([str(python), str(VALIS_SCRIPT), str(folder / "unstained.tiff"), str(folder / "stained.tiff"),
                             str(work / "points.json"), str(work / "out")], stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"VALIS failed on {folder.name} (exit {rc}): {tail[0]} (log: {log})")
    result = read_result(work / "out")
    shutil.rmtree(work / "out", ignore_errors=True)  # VALIS's thumbnails and pickled registrar: ~0.4 GB a pair
    warped = np.asarray(result["xy_stained"], dtype=np.float64)
    if warped.shape != pts[:, :2].shape:
        raise RuntimeError(f"VALIS returned {warped.shape} points for {pts[:, :2].shape} landmarks on {folder.name}")
    tre = {k: _stats(np.hypot(*(np.asarray(v, dtype=np.float64) - pts[:, 2:4]).T))
           for k, v in {**result.get("stages", {}), "final": warped}.items()}
    return {"seconds": result["seconds"]["total"], "process_seconds": wall, "valis_seconds": result["seconds"],
            "config": result["config"], "tre": tre}


def valis_missing(python: Path) -> str | None:
    """One line saying how to make the VALIS environment when ``python`` is absent, else None."""
    if python.is_file():
        return None
    return f"VALIS environment not found ({python}): make valis-env (or --valis-python PATH)"


def _stats(e: np.ndarray) -> dict:
    return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "max": float(e.max()), "n": len(e)}


def main() -> int:
    from stainldm.wsi.register import RegisterConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--cores", type=int, default=None, help="register only the first N truth cores of each pair")
    p.add_argument("--valis", action="store_true", help="also run VALIS (valis-wsi) in .venv-valis (make valis-env)")
    p.add_argument("--valis-python", type=Path, default=VALIS_PYTHON,
                   help="the Python of VALIS's environment (default: .venv-valis/bin/python)")
    p.add_argument("--samples", type=Path, default=None,
                   help="a folder of ready pairs named like the kinds (e.g. /tmp/realism-samples/real3); used when present")
    p.add_argument("--tmp", type=Path, default=None, help="folder for the sample pairs (default: a temp folder)")
    args = p.parse_args()
    if args.valis and (missing := valis_missing(args.valis_python)):
        print(missing, file=sys.stderr)
        return 2
    methods = {"anchor": RegisterConfig(stage_checks=False, deformable=False), "stainldm": RegisterConfig()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-register-", dir=args.tmp))
    results: dict = {}
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
            if args.valis and paint:  # the blobs live in memory only; VALIS reads files
                results[label]["valis"] = {"error": "not run: VALIS reads the slide files, without the painted blobs"}
            elif args.valis:
                try:  # its log stays in bench-out/register-valis/KIND/
                    results[label]["valis"] = run_valis(folder, truth, regions, python=args.valis_python,
                                                        work=BENCH_OUT / "register-valis" / kind)
                except RuntimeError as e:
                    results[label]["valis"] = {"error": str(e)}
            _print_kind(label, results[label])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _print_summary(results)
    times = [(r["stainldm"]["seconds"], r["anchor"]["seconds"]) for r in results.values()]
    ratio = sum(t[0] for t in times) / max(sum(t[1] for t in times), 1e-9)
    print(f"\nregister_pair wall time, new / anchor: {ratio:.2f}x")
    BENCH_OUT.mkdir(exist_ok=True)
    (BENCH_OUT / "register.json").write_text(json.dumps({"results": results, "time_ratio": ratio}, indent=1))
    return 0


def _print_summary(results: dict) -> None:
    """Final TRE per pair kind and method, side by side (level-0 stained px) and wall seconds."""
    print(f"\n{'pair':22s} {'method':9s} {'median':>7s} {'p95':>7s} {'max':>8s} {'wall s':>7s}")
    for label, res in results.items():
        for name, r in res.items():
            if "error" in r:
                print(f"{label:22s} {name:9s} {r['error']}")
                continue
            rows = [(name, r["tre"]["final"], r["seconds"])]
            if "non_rigid" in r["tre"]:  # VALIS: register() alone (rigid + non-rigid), then + register_micro()
                rows = [(name, r["tre"]["non_rigid"], r["valis_seconds"]["register"]), (f"{name}+mic", *rows[0][1:])]
            for method, t, seconds in rows:
                print(f"{label:22s} {method:9s} {t['median']:7.3f} {t['p95']:7.3f} {t['max']:8.3f} {seconds:7.1f}")


def _print_kind(label: str, res: dict) -> None:
    print(f"\n{label}")
    print(f"  {'method':9s} {'stage':7s} {'median':>7s} {'p95':>7s} {'max':>7s}")
    for name, r in res.items():
        if "error" in r:
            print(f"  {name:9s} {r['error']}")
            continue
        for stage in STAGE_NAMES:
            if stage in r["tre"]:
                t = r["tre"][stage]
                print(f"  {name:9s} {stage:7s} {t['median']:7.3f} {t['p95']:7.3f} {t['max']:7.3f}")
        print(f"  {name:9s} {r['seconds']:.1f} s" + (f", {r['flagged']} flagged cores" if "flagged" in r else ""))


if __name__ == "__main__":
    raise SystemExit(main())
