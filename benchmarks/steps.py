"""Sampler, NFE, guidance and η against the real H&E: fidelity and realism side by side on test tiles.

    .venv/bin/python benchmarks/steps.py --quick                       # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/steps.py --device cuda                 # the full grid (64 settings)
    .venv/bin/python benchmarks/steps.py --sampler ddim --nfe 10 20 --guidance 1 2 --eta 0 1

Defaults: the shipped model ``data/checkpoints/ldm`` and the demo's store ``demo-out/store``
(``--run``, ``--store``). Tiles are the first ``--tiles`` of the store's ``--split`` (test), unaugmented.
Each setting stains them through :meth:`StainModel.stain_batch` with a :class:`StainConfig` carrying
``sampler``, ``steps``, ``guidance`` and ``eta`` — the path ``stainldm stain`` takes — with the same
per-tile seeds, so every setting starts from the same noise (and η > 0 draws the same extra noise).

Grid. Without ``--quick``: every combination of ``--sampler`` (ddim, dpmpp_2m), ``--nfe`` (5 10 20
50), ``--guidance`` (classifier-free guidance scale w: 1 1.5 2 3) and ``--eta`` (DDIM stochasticity:
0 0.5 1; dpmpp_2m is deterministic and runs with η = 0 only): 64 settings, minutes on a GPU, about
half an hour on one CPU thread. ``--quick``: :data:`QUICK`, one factor at a time around the stain
default, and a few combinations (16 settings on 32 tiles). The anchor, 50-step DDIM with guidance 1
and η 0, is always measured in the same run, on the same tiles and noise.

Metrics, per tile, on uint8 RGB inside the real H&E's tissue (``he_fixed_threshold_mask`` of the
real tile: a per-pixel rule, so every setting is scored on the same pixels):

- fidelity: PSNR and SSIM (``masked_psnr``, ``masked_ssim``, as the evaluation computes them);
- realism: the sharpness ratio (mean |Laplacian| of grey, virtual ÷ real; goal 1.0, "blurrier than
  real H&E" below 0.8, "noisier" above 1.25) and the radially averaged power spectrum ratio in the
  three bands of :data:`stainldm.eval.realism.BANDS_UM` (tissue structure, nuclei, chromatin), at the
  model's µm/px;
- nuclei, as the evaluation finds them in the haematoxylin density (``nuclei_agreement``,
  ``nuclei_morphology``): detection F1 per tile, and the W₁ distances of nucleus area and
  eccentricity between the virtual and the real nuclei of all the tiles pooled (a 128 µm tile holds
  too few nuclei for a distribution of its own).

Each column is the mean over tiles (the tile is the unit of resampling, as the core is in the
evaluation; the tiles of one core are not independent, so the CIs are somewhat narrow). Cost: network
evaluations per tile (NFE, doubled when guidance ≠ 1: the conditional and unconditional passes) and
wall seconds per tile.

Recommendation. A setting is *admissible* when (1) its mean PSNR and its mean SSIM are both at least
the lower bound of the anchor's 95 % bootstrap CI (percentile, 2000 resamples of the tiles,
:func:`stainldm.eval.stats.bootstrap_ci`) — the test the issue applies to the LDM against the U-Net
("its PSNR/SSIM stay inside the U-Net's 95 % CI") —, (2) its mean nuclei F1 is at least the lower
bound of the anchor's, so that a sharper look is not bought with nuclei that are not there, (3)
none of its three mean spectrum ratios is above 1.25, the "noisier than real H&E" threshold: strong
guidance can exaggerate contrast at the tissue scale well before nuclei are as sharp as real ones,
and that is not realism, and (4) its pooled nuclei area W₁ is at most twice the anchor's
(:data:`AREA_W1_FACTOR`): guidance swells and merges nuclei before it costs detection F1, and
nuclear size is what a pathologist grades. Among admissible settings, those whose sharpness ratio
``s`` is closest to 1 on a log scale (``|ln s|``, so 0.8 and 1.25 are equally far) — the closest
and any within 0.05 of it, about the half-width of the sharpness CI on 32 tiles — are equally
good, and the one with the fewest network evaluations among them is recommended (then the one
whose nuclei area W₁ is smallest, then the closer to 1). The last lines print it beside the model's
current stain defaults (its model.json ``stain_defaults``, else :class:`StainConfig`'s: dpmpp_2m, 10
NFE, guidance 1, η 0) and the earlier goal (DPM-Solver++(2M) at 10 NFE within 1 % SSIM of the anchor).
``--write-defaults`` records the recommendation as the run's ``stain_defaults``, which ``stainldm
stain`` (and ``demo``, ``evaluate --baseline``) use where their arguments do not say. Output:
``bench-out/steps.json``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _util import BENCH_OUT, machine_info, table, write_json  # noqa: E402

from stainldm.data.store import TileStore  # noqa: E402
from stainldm.device import resolve_device  # noqa: E402
from stainldm.errors import InputError, StainLDMError  # noqa: E402
from stainldm.eval.metrics import hed_densities, masked_psnr, masked_ssim, nuclei_agreement  # noqa: E402
from stainldm.eval.realism import (  # noqa: E402
    BANDS_UM,
    MORPHOLOGY,
    morphology_w1,
    nuclei_morphology,
    sharpness_ratio,
    spectrum_ratios,
)
from stainldm.eval.stats import bootstrap_ci  # noqa: E402
from stainldm.inference.config import StainConfig, check_stain_config  # noqa: E402
from stainldm.inference.model import StainModel  # noqa: E402
from stainldm.seeds import Stream, derive_seed  # noqa: E402
from stainldm.train.validation import to_uint8  # noqa: E402
from stainldm.wsi.tissue import he_fixed_threshold_mask  # noqa: E402

BANDS = [name for name, _, _ in BANDS_UM]
METRICS = ("psnr", "ssim", "sharpness", *(f"spectrum_{b}" for b in BANDS), "nuclei_f1")
SHAPES = ("area", "eccentricity")  # the pooled nuclei W₁ the table shows (of MORPHOLOGY)
NOISIER = 1.25  # a ratio above this is "noisier than real H&E" (issue 14's verdict threshold)
FLAGS = {"steps": "--nfe", "eta": "--eta", "sampler": "--sampler", "batch_size": "--batch", "tiles": "--tiles",
         "precision": "--precision", "device": "--device"}  # library parameters -> this script's flags
AREA_W1_FACTOR = 2.0  # an admissible setting's nuclei area W₁ is at most this times the anchor's
SHARPNESS_TIE = 0.05  # sharpness ratios within 5 % (in |ln s|) of the best count as equally good


@dataclass(frozen=True)
class Setting:
    """One sampling setting: what ``stainldm stain --sampler --steps --guidance --eta`` sets."""

    sampler: str
    nfe: int
    guidance: float
    eta: float

    @property
    def evals(self) -> int:
        """Network evaluations per tile: one per step, two with classifier-free guidance."""
        return self.nfe * (1 if self.guidance == 1.0 else 2)

    def label(self) -> str:
        return f"{self.sampler}@{self.nfe} w={self.guidance:g} eta={self.eta:g}"


ANCHOR = Setting("ddim", 50, 1.0, 0.0)

# One factor at a time around the stain default (sampler and NFE; guidance; η), and a few combinations.
QUICK = (
    ANCHOR,
    Setting("dpmpp_2m", 5, 1.0, 0.0), Setting("dpmpp_2m", 10, 1.0, 0.0), Setting("dpmpp_2m", 20, 1.0, 0.0),
    Setting("ddim", 10, 1.0, 0.0), Setting("ddim", 20, 1.0, 0.0),
    Setting("dpmpp_2m", 10, 1.5, 0.0), Setting("dpmpp_2m", 10, 2.0, 0.0), Setting("dpmpp_2m", 10, 3.0, 0.0),
    Setting("ddim", 10, 1.0, 0.5), Setting("ddim", 10, 1.0, 1.0), Setting("ddim", 20, 1.0, 0.5),
    Setting("ddim", 20, 1.0, 1.0),
    Setting("dpmpp_2m", 20, 1.5, 0.0), Setting("ddim", 10, 1.5, 1.0), Setting("ddim", 20, 1.5, 1.0),
)


def full_grid(samplers: list[str], nfes: list[int], guidances: list[float], etas: list[float]) -> list[Setting]:
    """Every combination, η only for ddim (dpmpp_2m runs once, at η 0); the anchor first."""
    out = [ANCHOR]
    for sampler, nfe, w, eta in itertools.product(samplers, nfes, guidances, etas):
        s = Setting(sampler, nfe, float(w), float(eta) if sampler == "ddim" else 0.0)
        if s not in out:
            out.append(s)
    return out


def load_tiles(model: StainModel, store: Path, *, split: str, n: int
               ) -> tuple[list[torch.Tensor], list[np.ndarray], list[np.ndarray], list[int]]:
    """The first ``n`` tiles of ``split``: model inputs ``(1, C_in, H, W)`` (normalised as staining
    does), real H&E ``(H, W, 3)`` uint8, tissue masks ``(H, W)`` bool and store indices."""
    st = TileStore.open(store)
    if st.rows and model.mpp and not math.isclose(st.rows[0].mpp, model.mpp, rel_tol=0.01):
        raise SystemExit(f"error: {store}: tiles are at {st.rows[0].mpp:g} µm/px, the model at {model.mpp:g}; "
                         "use the store the model was trained on")
    idx = [int(i) for i in st.indices(split)[:n]]
    if not idx:
        raise SystemExit(f"error: {store}: no {split} tiles; pass --split or another --store")
    xs, reals, masks = [], [], []
    for i in idx:
        unstained, real = st.read(i)
        xs.append(model.normalise(unstained))
        reals.append(real)
        masks.append(he_fixed_threshold_mask(real))
    return xs, reals, masks, idx


def stain_config(s: Setting, *, batch: int) -> StainConfig:
    """The :class:`StainConfig` of setting ``s``, checked as ``stainldm stain`` checks it.

    Raises:
        InputError: an NFE below 1 or a negative η.
    """
    cfg = StainConfig(sampler=s.sampler, steps=s.nfe, guidance=s.guidance, eta=s.eta, batch_size=batch)
    check_stain_config(cfg)
    if not s.eta >= 0:
        raise InputError(f"`eta` ({s.eta:g}) must be ≥ 0: 0 is deterministic DDIM, 1 is DDPM-like")
    return cfg


def stain_tiles(model: StainModel, xs: list[torch.Tensor], s: Setting, *, seeds: list[int], batch: int
                ) -> tuple[list[np.ndarray], float, float]:
    """All tiles stained with setting ``s`` in one :meth:`StainModel.stain_batch` call.

    Returns:
        uint8 ``(H, W, 3)`` per tile, wall seconds and CPU seconds of the call.
    """
    cfg = stain_config(s, batch=batch)
    t0, c0 = time.perf_counter(), time.process_time()
    outs = model.stain_batch(xs, cfg, seeds=seeds)  # per tile (1, 3, H, W) in [-1, 1]
    preds = [to_uint8(o)[0] for o in outs]  # .cpu() inside waits for the device
    return preds, time.perf_counter() - t0, time.process_time() - c0


@dataclass
class RealNuclei:
    """What the real tiles' nuclei are, measured once for every setting."""

    hed: list[np.ndarray]  # colour-deconvolution densities per tile
    morphology: dict[str, np.ndarray]  # every nucleus of every tile, pooled (``nuclei_morphology``)

    @classmethod
    def of(cls, reals: list[np.ndarray], masks: list[np.ndarray], *, mpp: float) -> RealNuclei:
        hed = [hed_densities(r) for r in reals]
        return cls(hed, pooled_morphology(hed, masks, mpp=mpp))


def pooled_morphology(hed: list[np.ndarray], masks: list[np.ndarray], *, mpp: float) -> dict[str, np.ndarray]:
    """``nuclei_morphology`` of every tile, concatenated per feature."""
    per_tile = [nuclei_morphology(h, m, mpp=mpp) for h, m in zip(hed, masks, strict=True)]
    return {k: np.concatenate([t[k] for t in per_tile]) for k in MORPHOLOGY}


def score(preds: list[np.ndarray], reals: list[np.ndarray], masks: list[np.ndarray], *, mpp: float,
          real_nuclei: RealNuclei) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-tile values of :data:`METRICS` (NaN where a tile has too little tissue), and the W₁
    distances of the pooled nuclei shapes (``{feature: W₁}``, NaN with too few nuclei)."""
    out: dict[str, list[float]] = {m: [] for m in METRICS}
    hed_preds = [hed_densities(p) for p in preds]
    for p, r, m, hp, hr in zip(preds, reals, masks, hed_preds, real_nuclei.hed, strict=True):
        out["psnr"].append(masked_psnr(p, r, m))
        out["ssim"].append(masked_ssim(p, r, m))
        out["sharpness"].append(sharpness_ratio(p, r, m))
        for band, v in spectrum_ratios(p, r, m, mpp=mpp).items():
            out[f"spectrum_{band}"].append(v)
        out["nuclei_f1"].append(nuclei_agreement(hp, hr, m, mpp=mpp)["nuclei_f1"])
    w1 = morphology_w1(pooled_morphology(hed_preds, masks, mpp=mpp), real_nuclei.morphology)
    return out, w1


def summarise(values: dict[str, list[float]], *, seed: int) -> dict[str, tuple[float, float, float, int]]:
    """Mean and 95 % bootstrap CI over tiles of every metric."""
    return {m: bootstrap_ci(v, seed=seed) for m, v in values.items()}


@dataclass(frozen=True)
class Floors:
    """The lower bounds of the anchor's 95 % CIs that an admissible setting's means must reach."""

    psnr: float
    ssim: float
    nuclei_f1: float
    area_w1: float = math.inf  # the upper bound of the pooled nuclei area W₁ (µm²)


def floors(results: dict[Setting, dict], anchor: Setting) -> Floors:
    """The PSNR, SSIM and nuclei F1 floors (the lower bounds of the anchor's 95 % CIs) and the nuclei
    area W₁ ceiling (:data:`AREA_W1_FACTOR` times the anchor's; none when the anchor has none)."""
    a = results[anchor]["summary"]
    area = results[anchor]["nuclei_w1"]["area"]
    return Floors(a["psnr"][1], a["ssim"][1], a["nuclei_f1"][1],
                  AREA_W1_FACTOR * area if math.isfinite(area) else math.inf)


def inadmissible(result: dict, floor: Floors) -> str:
    """Why a setting (its ``summary`` and pooled ``nuclei_w1``) is not admissible (see the module
    docstring), or ``""`` when it is. A floor that is NaN (the anchor found no nuclei) is not applied;
    nor is the area ceiling to a setting whose area W₁ is NaN (too few nuclei to measure: its nuclei
    F1 speaks for it)."""
    summary = result["summary"]
    if not summary["psnr"][0] >= floor.psnr:
        return "PSNR"
    if not summary["ssim"][0] >= floor.ssim:
        return "SSIM"
    if math.isfinite(floor.nuclei_f1) and not summary["nuclei_f1"][0] >= floor.nuclei_f1:
        return "nuclei F1"
    over = [b for b in BANDS if summary[f"spectrum_{b}"][0] > NOISIER]
    if over:
        return f"spec {over[0]} > {NOISIER:g}"
    if not summary["sharpness"][0] > 0:
        return "no sharpness"
    if result["nuclei_w1"]["area"] > floor.area_w1:
        return "nuclei area W₁"
    return ""


def recommend(results: dict[Setting, dict], anchor: Setting) -> Setting | None:
    """The admissible setting with the sharpness ratio closest to 1 (see the module docstring), None
    when no setting is admissible."""
    floor = floors(results, anchor)

    def distance(s: Setting) -> float:  # |ln s|: 0.8 and 1.25 equally far from 1
        return abs(math.log(results[s]["summary"]["sharpness"][0]))

    def area_w1(s: Setting) -> float:  # NaN (too few nuclei) ranks last
        w = results[s]["nuclei_w1"]["area"]
        return w if math.isfinite(w) else math.inf

    ok = [s for s, r in results.items() if not inadmissible(r, floor)]
    if not ok:
        return None
    best = min(distance(s) for s in ok)
    near = [s for s in ok if distance(s) <= best + SHARPNESS_TIE]
    return min(near, key=lambda s: (s.evals, area_w1(s), distance(s)))


def _ci(t: tuple[float, float, float, int], digits: int) -> str:
    mean, lo, hi, _ = t
    return "n/a" if not math.isfinite(mean) else f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def report_rows(results: dict[Setting, dict], anchor: Setting, floor: Floors) -> list[list]:
    a = results[anchor]["summary"]
    rows = []
    for s, r in results.items():
        m = r["summary"]
        why = inadmissible(r, floor)
        rows.append([s.sampler, s.nfe, f"{s.guidance:g}", f"{s.eta:g}", s.evals, f"{m['psnr'][0]:.2f}",
                     f"{m['ssim'][0]:.4f}", f"{m['psnr'][0] - a['psnr'][0]:+.2f}", f"{m['ssim'][0] / a['ssim'][0]:.3f}",
                     f"no: {why}" if why else "yes", _ci(m["sharpness"], 2),
                     *(f"{m[f'spectrum_{b}'][0]:.2f}" for b in BANDS), _ci(m["nuclei_f1"], 3),
                     *(f"{r['nuclei_w1'][k]:.3g}" for k in SHAPES), f"{r['wall_s'] / r['tiles']:.3f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "data" / "checkpoints" / "ldm", help="an ldm run folder")
    parser.add_argument("--store", type=Path, default=ROOT / "demo-out" / "store", help="its tile store")
    parser.add_argument("--split", default="test", help="the store's split to stain (with --write-defaults: "
                        "choose on val, so the evaluation's test cores stay held out)")
    parser.add_argument("--tiles", type=int, help="first N tiles of the split (default: 32 with --quick, else all)")
    parser.add_argument("--quick", action="store_true", help="the QUICK settings instead of the full grid")
    parser.add_argument("--sampler", nargs="+", default=["ddim", "dpmpp_2m"], choices=["ddim", "dpmpp_2m"])
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    parser.add_argument("--eta", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    parser.add_argument("--seed", type=int, default=0, help="the tiles' noise and the bootstrap")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--precision", default="fp32", help="fp32, bf16, fp16 or auto")
    parser.add_argument("--batch", type=int, help="windows per network call (default 8 on a CPU, 64 on a GPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--write-defaults", action="store_true",
                        help="record the recommendation in the run's model.json (stain_defaults), which "
                             "`stainldm stain` then uses where its flags do not say")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device, env=os.environ, cuda_count=torch.cuda.device_count())
        model = StainModel.load(args.run, device=device, precision=args.precision)
        if model.kind != "ldm":
            raise SystemExit(f"error: {args.run}: is a {model.kind} run; the sweep needs an ldm run")
        if args.tiles is not None and args.tiles < 1:
            raise InputError(f"`tiles` must be positive, got {args.tiles}")
        n = args.tiles or (32 if args.quick else 1 << 30)
        xs, reals, masks, idx = load_tiles(model, args.store, split=args.split, n=n)
        settings = list(QUICK) if args.quick else full_grid(args.sampler, args.nfe, args.guidance, args.eta)
        batch = args.batch if args.batch is not None else (64 if model.device.type == "cuda" else 8)
        for s in settings:  # every setting checked before the first is run
            stain_config(s, batch=batch)
        seeds = [derive_seed(args.seed, Stream.CANVAS, i) for i in idx]
        print(f"{len(xs)} {args.split} tiles of {args.store} ({model.tile_px} px at {model.mpp:g} µm/px), "
              f"model {args.run}, {len(settings)} settings on {model.device}, torch threads {torch.get_num_threads()}",
              flush=True)
        real_nuclei = RealNuclei.of(reals, masks, mpp=model.mpp)
        results: dict[Setting, dict] = {}
        for s in settings:
            preds, wall, cpu = stain_tiles(model, xs, s, seeds=seeds, batch=batch)
            values, w1 = score(preds, reals, masks, mpp=model.mpp, real_nuclei=real_nuclei)
            results[s] = {"tiles": len(xs), "wall_s": wall, "cpu_s": cpu, "values": values,
                          "summary": summarise(values, seed=args.seed), "nuclei_w1": w1}
            m = results[s]["summary"]
            print(f"  {s.label():28s} PSNR {m['psnr'][0]:6.2f}  SSIM {m['ssim'][0]:.4f}  "
                  f"sharpness {m['sharpness'][0]:.2f}  nuclei F1 {m['nuclei_f1'][0]:.3f}  {wall:6.1f} s", flush=True)
    except StainLDMError as exc:
        msg = str(exc)
        for param, flag in FLAGS.items():
            msg = msg.replace(f"`{param}`", flag)
        raise SystemExit(f"error: {msg}") from exc

    best = recommend(results, ANCHOR)
    floor = floors(results, ANCHOR)
    bands = [f"spec {b}" for b in BANDS]
    print()
    print(table(["sampler", "NFE", "w", "η", "evals", "PSNR dB", "SSIM", "ΔPSNR", "SSIM/anchor", "admissible",
                 "sharpness [95% CI]", *bands, "nuclei F1 [95% CI]", *(f"{k} W₁" for k in SHAPES), "s/tile"],
                report_rows(results, ANCHOR, floor)))
    print("spec: power spectrum ratio, virtual ÷ real, in the bands "
          + ", ".join(f"{b} {lo:g}–{hi:g} µm" for b, lo, hi in BANDS_UM) + "; evals: network evaluations per tile; "
          "area (µm²) and eccentricity W₁: nuclei of all tiles pooled, virtual vs real")
    a = results[ANCHOR]["summary"]
    print(f"\nanchor {ANCHOR.label()}: PSNR {_ci(a['psnr'], 2)} dB, SSIM {_ci(a['ssim'], 4)}, nuclei F1 "
          f"{_ci(a['nuclei_f1'], 3)} (mean [95% CI] over {len(xs)} tiles); admissible: mean PSNR ≥ {floor.psnr:.2f} dB, "
          f"mean SSIM ≥ {floor.ssim:.4f}, mean nuclei F1 ≥ {floor.nuclei_f1:.3f}, no spectrum band ratio "
          f"above {NOISIER:g} and nuclei area W₁ ≤ {floor.area_w1:.3g} µm²")
    fast = results.get(Setting("dpmpp_2m", 10, 1.0, 0.0))
    if fast:
        rel = fast["summary"]["ssim"][0] / a["ssim"][0] - 1
        print(f"DPM++(2M) at 10 NFE vs DDIM at 50: SSIM {100 * rel:+.2f}%; goal no more than 1% lower: "
              f"{'ok' if rel >= -0.01 else 'MISSED'}")
    c = model.stain_config()  # the model's stain_defaults, else StainConfig's: what `stainldm stain` uses
    current = Setting(c.sampler, c.steps, c.guidance, c.eta)
    d = results.get(current)
    now = (f"sharpness {d['summary']['sharpness'][0]:.2f}, PSNR {d['summary']['psnr'][0]:.2f} dB, "
           f"SSIM {d['summary']['ssim'][0]:.4f}" if d else "not in this grid")
    print(f"current stain defaults of this model ({current.sampler}, {current.nfe} NFE, guidance "
          f"{current.guidance:g}, η {current.eta:g}): {now}")
    if best is None:
        print("recommendation: none (no setting is admissible)")
    else:
        b = results[best]["summary"]
        goal = "inside" if 0.85 <= b["sharpness"][0] <= 1.2 else "outside"
        same = " (the current default)" if best == current else ""
        print(f"recommendation: {best.sampler}, {best.nfe} NFE, guidance {best.guidance:g}, η {best.eta:g}{same} — "
              f"sharpness {b['sharpness'][0]:.2f} ({goal} the 0.85–1.2 goal), PSNR {b['psnr'][0]:.2f} dB, "
              f"SSIM {b['ssim'][0]:.4f}, nuclei F1 {b['nuclei_f1'][0]:.3f}, nuclei area W₁ "
              f"{results[best]['nuclei_w1']['area']:.3g} µm², {best.evals} network evaluations per tile")
    write_json(BENCH_OUT / "steps.json", {
        "machine": machine_info(), "run": str(args.run), "store": str(args.store), "split": args.split,
        "tile_indices": idx, "device": str(model.device), "anchor": asdict(ANCHOR), "default": asdict(current),
        "admissible": {"psnr_min": floor.psnr, "ssim_min": floor.ssim, "nuclei_f1_min": floor.nuclei_f1,
                       "spectrum_max": NOISIER, "nuclei_area_w1_max": floor.area_w1},
        "recommendation": asdict(best) if best else None,
        "results": [{**asdict(s), "evals": s.evals, **r} for s, r in results.items()]})
    if args.write_defaults and best is not None:
        store = args.store.resolve()
        store = store.relative_to(ROOT) if store.is_relative_to(ROOT) else store
        note = f"benchmarks/steps.py{' --quick' if args.quick else ''}: {len(xs)} {args.split} tiles of {store}"
        if args.split == "test":
            print("warning: chosen on the test split, which the evaluation then scores: its figures are not held "
                  "out from this choice; choose on --split val")
        write_stain_defaults(args.run, best, chosen_by=note)
        print(f"wrote the recommendation into {args.run}/model.json (stain_defaults): `stainldm stain` uses it")


def write_stain_defaults(run: Path, s: Setting, *, chosen_by: str) -> None:
    """Records setting ``s`` as ``run``'s ``stain_defaults`` in its model.json (atomically)."""
    from stainldm.models.runs import read_model_json, write_model_json

    meta = read_model_json(run, kind="ldm")
    meta["stain_defaults"] = {"sampler": s.sampler, "steps": s.nfe, "guidance": s.guidance, "eta": s.eta,
                              "chosen_by": chosen_by}
    write_model_json(Path(run) / "model.json", {k: v for k, v in meta.items() if k != "format"})


if __name__ == "__main__":
    main()
