"""Slide I/O against its anchors, measured side by side in one run.

    .venv/bin/python benchmarks/io.py            # (a) + (b) + (c), a few minutes
    .venv/bin/python benchmarks/io.py --quick    # (a) with fewer reads + (b), under a minute

(a) reads: random 256×256 level-0 regions through ``open_slide(p).read_region`` vs raw
    ``openslide.OpenSlide(p).read_region`` -> numpy, on the same 8192² pyramidal TIFF written by
    ``write_pyramid`` (real H&E: the CMU-1 sample mirrored to 8192²). Same coordinates for both
    (fixed seed), both warmed up, repetitions alternate which reader goes first; best of N.
    Goal: ours/openslide ≥ 1.0, for unaligned and for tile-aligned coordinates.
(b) writes: the same 8192² RGB array to a JPEG q90 pyramid with ``write_pyramid`` vs pyvips
    ``tiffsave(tile=True, pyramid=True, compression="jpeg", Q=90)``. Each writer runs in its own
    spawned process (load the array, then reset the kernel's peak-RSS mark, then write), so peak
    RSS above that baseline belongs to the writer alone. Goal: time ours/pyvips ≤ 1.5.
(c) big writes (skipped by --quick): ``write_pyramid`` from a procedural array-like that is never
    materialised, 10000², 20000², 40000² (4.8 GB raw) and a 10000×40000 strip; peak RSS must not
    grow with the slide's height (it holds a few full-width bands, so it grows with the width).

Results also go to ``bench-out/io.json`` with machine info. Temporary files live in one folder
that is removed at the end.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _util import (
    BENCH_OUT,
    MiB,
    MirroredSlide,
    he_texture,
    in_child,
    machine_info,
    mirror_tile,
    peak_rss_bytes,
    reset_peak_rss,
    rss_bytes,
    table,
    write_json,
)

SIDE = 8192  # (a) and (b) slide side, px
REGION = 256  # (a) region side, px
TILE = 256
MPP = 0.5
JPEG_Q = 90
# (width, height): squares to show growth with size, plus a tall strip to separate height from width.
BIG_SIZES = ((10000, 10000), (20000, 20000), (40000, 40000), (10000, 40000))
GOAL_READ = 1.0  # ours/openslide regions per second, at least
GOAL_WRITE = 1.5  # ours/pyvips wall time, at most


# ---------------------------------------------------------------------------------------------
# (a) random region reads
# ---------------------------------------------------------------------------------------------
def _coords(rng: np.random.Generator, mode: str, n: int, side: int) -> list[tuple[int, int]]:
    if mode == "aligned":
        xy = rng.integers(0, side // TILE, size=(n, 2)) * TILE
    else:
        xy = rng.integers(0, side - REGION + 1, size=(n, 2))
    return [(int(x), int(y)) for x, y in xy]


def bench_reads(path: Path, *, n_reads: int, repeats: int, seed: int) -> dict[str, Any]:
    import openslide

    from stainldm.wsi.reader import open_slide

    ours = open_slide(path)
    osl = openslide.OpenSlide(str(path))
    side = ours.dimensions[0]
    size = (REGION, REGION)

    def read_ours(xy: tuple[int, int]) -> np.ndarray:
        return ours.read_region(xy, size)

    def read_openslide(xy: tuple[int, int]) -> np.ndarray:
        return np.asarray(osl.read_region(xy, 0, size))  # RGBA, as a user gets it

    readers = {"ours": read_ours, "openslide": read_openslide}
    rng = np.random.default_rng(seed)

    # Warm-up (file cache, decoder init, OpenSlide's tile cache) and a check that both read the same pixels.
    diffs = []
    for xy in _coords(rng, "random", 100, side):
        a, b = read_ours(xy), read_openslide(xy)
        diffs.append(np.abs(a.astype(np.int16) - b[..., :3].astype(np.int16)))
    diff = np.stack(diffs)

    out: dict[str, Any] = {
        "file": path.name, "side": side, "region": REGION, "reads": n_reads, "repeats": repeats, "seed": seed,
        "ours_backend": type(ours).__name__,
        "pixels_vs_openslide": {"mean_abs": float(diff.mean()), "max_abs": int(diff.max())},
    }
    for mode in ("random", "aligned"):
        sets = [_coords(rng, mode, n_reads, side) for _ in range(repeats)]
        rates: dict[str, list[float]] = {name: [] for name in readers}
        for rep, coords in enumerate(sets):
            order = list(readers) if rep % 2 == 0 else list(readers)[::-1]
            for name in order:
                fn = readers[name]
                t0 = time.perf_counter()
                for xy in coords:
                    fn(xy)
                rates[name].append(n_reads / (time.perf_counter() - t0))
        best = {name: max(v) for name, v in rates.items()}
        out[mode] = {
            "regions_per_s": best,
            "regions_per_s_all": rates,
            "ratio": best["ours"] / best["openslide"],
        }
    ours.close()
    osl.close()
    return out


# ---------------------------------------------------------------------------------------------
# (b) 8192² writes, each writer in its own process
# ---------------------------------------------------------------------------------------------
def _write_child(writer: str, npy: str, out: str, repeats: int, threads: int | None) -> dict[str, Any]:
    """Runs in a spawned process: load the array, mark the baseline, write ``repeats`` times."""
    if writer == "ours":
        import imagecodecs  # noqa: F401  (imported lazily by write_pyramid; count it in the baseline,
        import tifffile  # noqa: F401  as libvips is counted in pyvips' baseline)

        from stainldm.wsi.writer import write_pyramid
    else:
        import pyvips

        pyvips.cache_set_max(0)
        if threads:
            pyvips.concurrency_set(threads)
    img = np.load(npy)
    h, w, c = img.shape

    def write() -> None:
        if writer == "ours":
            write_pyramid(out, img, mpp=MPP, tile=TILE, quality=JPEG_Q)
        else:
            vimg = pyvips.Image.new_from_memory(img.data, w, h, c, "uchar")
            vimg.tiffsave(out, tile=True, tile_width=TILE, tile_height=TILE, pyramid=True,
                          compression="jpeg", Q=JPEG_Q, bigtiff=False)

    base = rss_bytes()
    reset = reset_peak_rss()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        write()
        seconds.append(time.perf_counter() - t0)
    peak = peak_rss_bytes()
    return {
        "seconds_all": seconds, "seconds": min(seconds),
        "baseline_rss_mib": base / MiB, "peak_rss_mib": peak / MiB,
        "peak_above_baseline_mib": (peak - base) / MiB, "peak_reset": reset,
        "threads": threads or (pyvips.concurrency_get() if writer != "ours" else None),
    }


def _describe_tiff(path: Path, src: np.ndarray) -> dict[str, Any]:
    """Levels as OpenSlide and our reader see them, JPEG colour layout, and level-0 fidelity."""
    import openslide
    import tifffile

    from stainldm.wsi.reader import open_slide

    with openslide.OpenSlide(str(path)) as osl:
        osl_levels = [list(d) for d in osl.level_dimensions]
        vendor = openslide.OpenSlide.detect_format(str(path))
    with open_slide(path) as slide:
        our_levels = [list(d) for d in slide.level_dimensions]
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        sub = page.tags.get("YCbCrSubSampling")
        layout = f"YCbCr {tuple(sub.value)}" if page.photometric == 6 else page.photometric.name
        if page.photometric == 6 and sub is None:
            layout = "YCbCr (2, 2)"  # the TIFF default
        level0 = tif.series[0].levels[0].asarray()
    se = 0.0
    for y in range(0, src.shape[0], 1024):  # in bands: the float copy of 8192² would be 800 MB
        d = level0[y : y + 1024].astype(np.float32) - src[y : y + 1024]
        se += float(np.square(d).sum())
    mse = se / src.size
    return {
        "openslide_format": vendor, "openslide_levels": osl_levels, "stainldm_reader_levels": our_levels,
        "jpeg_layout": layout, "bytes": path.stat().st_size,
        "psnr_db": 10 * math.log10(255**2 / mse) if mse > 0 else math.inf,
    }


def bench_writes(npy: Path, tmp: Path, *, repeats: int) -> dict[str, Any]:
    runs = {
        "ours": ("ours", None),
        "pyvips": ("pyvips", None),  # libvips' default thread count (the anchor)
        "pyvips-1-thread": ("pyvips", 1),  # for reference: tifffile encodes on one thread here
    }
    out: dict[str, Any] = {"side": SIDE, "repeats": repeats}
    for name, (writer, threads) in runs.items():
        path = tmp / f"write-{name}.tiff"
        out[name] = in_child(_write_child, writer, str(npy), str(path), repeats, threads)
        out[name]["path"] = path
    src = np.load(npy, mmap_mode="r")
    for name in runs:
        out[name].update(_describe_tiff(out[name].pop("path"), src))
    out["ratio"] = out["ours"]["seconds"] / out["pyvips"]["seconds"]
    out["ratio_1_thread"] = out["ours"]["seconds"] / out["pyvips-1-thread"]["seconds"]
    return out


# ---------------------------------------------------------------------------------------------
# (c) big writes from a procedural source
# ---------------------------------------------------------------------------------------------
def _big_child(size_wh: tuple[int, int], out: str) -> dict[str, Any]:
    """Runs in a spawned process: build the texture, mark the baseline, stream a w×h slide."""
    import imagecodecs  # noqa: F401  (imported lazily by write_pyramid; count it in the baseline)
    import tifffile  # noqa: F401

    from stainldm.wsi.writer import write_pyramid

    w, h = size_wh
    src = MirroredSlide(he_texture(), (h, w))
    src[0:TILE]  # warm the row builder
    src.seconds = 0.0
    base = rss_bytes()
    reset = reset_peak_rss()
    t0 = time.perf_counter()
    write_pyramid(out, src, mpp=MPP, tile=TILE, quality=JPEG_Q)
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    return {
        "size_wh": [w, h], "raw_gb": w * h * 3 / 1e9, "seconds": seconds, "source_seconds": src.seconds,
        "baseline_rss_mib": base / MiB, "peak_rss_mib": peak / MiB,
        "peak_above_baseline_mib": (peak - base) / MiB, "peak_reset": reset,
        "peak_in_bands": (peak - base) / (TILE * w * 3),  # one band = TILE full-width rows of uint8 RGB
    }


def _size_name(w: int, h: int) -> str:
    return f"{w}²" if w == h else f"{w}x{h}"


def bench_big(tmp: Path, *, sizes: tuple[tuple[int, int], ...], bytes_per_px: float) -> dict[str, Any]:
    import openslide

    runs = []
    for w, h in sizes:
        # Output + raw spill of the reduced levels (level 1 is a quarter of level 0) + 1 GB slack.
        need = w * h * (bytes_per_px * 4 / 3 + 3 / 3) + 1e9
        free = shutil.disk_usage(tmp).free
        if free < need:
            print(f"  skip {_size_name(w, h)}: needs ~{need / 1e9:.1f} GB free in {tmp}, has {free / 1e9:.1f} GB")
            runs.append({"size_wh": [w, h],
                         "skipped": f"disk: {free / 1e9:.1f} GB free, ~{need / 1e9:.1f} GB needed"})
            continue
        path = tmp / f"big-{w}x{h}.tiff"
        res = in_child(_big_child, (w, h), str(path))
        with openslide.OpenSlide(str(path)) as osl:
            res["levels"] = [list(d) for d in osl.level_dimensions]
        res["bytes"] = path.stat().st_size
        path.unlink()
        print(f"  {_size_name(w, h)}: {res['seconds']:.1f} s, peak RSS +{res['peak_above_baseline_mib']:.0f} MiB, "
              f"{res['bytes'] / 1e6:,.0f} MB")
        runs.append(res)
    return {"runs": runs}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(res: dict[str, Any]) -> None:
    a, b, c = res["reads"], res["writes"], res.get("big")
    print(f"\n(a) {a['reads']} random {REGION}x{REGION} level-0 reads of {a['file']} ({a['side']}², JPEG q{JPEG_Q}), "
          f"best of {a['repeats']}, regions/s")
    rows = []
    for mode in ("random", "aligned"):
        r = a[mode]["regions_per_s"]
        rows.append([mode, r["ours"], r["openslide"], round(a[mode]["ratio"], 2)])
    print(table(["coordinates", f"ours ({a['ours_backend']})", "openslide -> numpy", "ours/openslide"], rows))
    pv = a["pixels_vs_openslide"]
    print(f"pixels ours vs openslide: mean |diff| {pv['mean_abs']:.3f}, max {pv['max_abs']}")

    print(f"\n(b) write {b['side']}² RGB JPEG q{JPEG_Q} pyramid from memory, best of {b['repeats']}, "
          "each writer in its own process")
    rows = []
    for name in ("ours", "pyvips", "pyvips-1-thread"):
        r = b[name]
        rows.append([name, r["seconds"], r["peak_above_baseline_mib"], r["baseline_rss_mib"],
                     f"{r['bytes'] / 1e6:.1f}", f"{r['psnr_db']:.1f}", r["jpeg_layout"],
                     len(r["openslide_levels"])])
    print(table(["writer", "seconds", "peak RSS +MiB", "baseline MiB", "MB", "PSNR dB", "JPEG", "levels (openslide)"],
                rows))
    for name in ("ours", "pyvips"):
        lv = " ".join("x".join(map(str, d)) for d in b[name]["openslide_levels"])
        print(f"openslide levels, {name:6s}: {len(b[name]['openslide_levels'])}: {lv}")

    if c:
        print(f"\n(c) write_pyramid from a procedural source (never materialised), JPEG q{JPEG_Q}")
        rows = []
        for r in c["runs"]:
            name = _size_name(*r["size_wh"])
            if "skipped" in r:
                rows.append([name, None, None, None, None, None, None, r["skipped"]])
                continue
            lv = " ".join("x".join(map(str, d)) for d in r["levels"])
            rows.append([name, round(r["raw_gb"], 2), r["seconds"], r["source_seconds"], r["peak_above_baseline_mib"],
                         round(r["peak_in_bands"], 1), f"{r['bytes'] / 1e6:,.0f}", f"{len(r['levels'])}: {lv}"])
        print(table(["size", "raw GB", "seconds", "of which source", "peak RSS +MiB", "= bands", "MB",
                     "levels (w x h)"], rows))
        print("bands: peak RSS above baseline in units of one 256-row full-width uint8 RGB band")


def summary(res: dict[str, Any]) -> dict[str, Any]:
    a, b, c = res["reads"], res["writes"], res.get("big")
    s: dict[str, Any] = {
        "read_random_ours_over_openslide": a["random"]["ratio"],
        "read_aligned_ours_over_openslide": a["aligned"]["ratio"],
        "write_ours_over_pyvips": b["ratio"],
        "write_ours_over_pyvips_1_thread": b["ratio_1_thread"],
        "write_peak_rss_mib": {"ours": b["ours"]["peak_above_baseline_mib"],
                               "pyvips": b["pyvips"]["peak_above_baseline_mib"]},
        "levels_openslide": {"ours": len(b["ours"]["openslide_levels"]),
                             "pyvips": len(b["pyvips"]["openslide_levels"])},
    }
    done = [r for r in (c or {}).get("runs", []) if "skipped" not in r]
    if done:
        s["big_peak_rss_mib"] = {_size_name(*r["size_wh"]): r["peak_above_baseline_mib"] for r in done}
    print("\n== summary " + "=" * 60)
    for mode in ("random", "aligned"):
        ratio = s[f"read_{mode}_ours_over_openslide"]
        print(f"read  {mode:8s} ours/openslide  {ratio:5.2f}x  (goal >= {GOAL_READ})  {_verdict(ratio >= GOAL_READ)}")
    print(f"write 8192²    ours/pyvips     {b['ratio']:5.2f}x  (goal <= {GOAL_WRITE})  "
          f"{_verdict(b['ratio'] <= GOAL_WRITE)}   [vs 1-thread pyvips {b['ratio_1_thread']:.2f}x]")
    print(f"write 8192²    peak RSS above input: ours {s['write_peak_rss_mib']['ours']:.0f} MiB, "
          f"pyvips {s['write_peak_rss_mib']['pyvips']:.0f} MiB")
    same = s["levels_openslide"]["ours"] == s["levels_openslide"]["pyvips"]
    print(f"levels in OpenSlide: ours {s['levels_openslide']['ours']}, pyvips {s['levels_openslide']['pyvips']}"
          + ("" if same else "  (differ by design: ours stops below 1024 px, libvips at one tile)"))
    if done:
        peaks = ", ".join(f"{_size_name(*r['size_wh'])} {r['peak_above_baseline_mib']:.0f}" for r in done)
        bands = [r["peak_in_bands"] for r in done]
        print(f"big writes peak RSS above baseline (MiB): {peaks}")
        print(f"  = {min(bands):.1f}-{max(bands):.1f} full-width bands: flat in height, proportional to width")
    elif not c:
        print("big writes: skipped (--quick)")
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer reads, skip the 10000²-40000² writes")
    p.add_argument("--reads", type=int, default=None, help="regions per repetition in (a) (default 1000, quick 250)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions in (a) and (b); the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", type=Path, default=None, help="folder for temporary files (default: system temp)")
    p.add_argument("--json", type=Path, default=BENCH_OUT / "io.json")
    args = p.parse_args(argv)
    n_reads = args.reads or (250 if args.quick else 1000)

    t_start = time.perf_counter()
    info = machine_info()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items() if k not in ("platform", "processor")))
    tmp = Path(tempfile.mkdtemp(prefix="stainldm-bench-io-", dir=args.tmp))
    disk = shutil.disk_usage(tmp)
    print(f"temp folder {tmp}: {disk.free / 1e9:.0f} GB free of {disk.total / 1e9:.0f} GB")
    res: dict[str, Any] = {"machine": info, "quick": args.quick, "seconds": {}}
    try:
        from stainldm.wsi.writer import write_pyramid

        t0 = time.perf_counter()
        img = mirror_tile(he_texture(), (SIDE, SIDE))
        npy = tmp / "input.npy"
        np.save(npy, img)
        slide = write_pyramid(tmp / "slide.tiff", img, mpp=MPP, tile=TILE, quality=JPEG_Q)
        del img
        res["seconds"]["setup"] = time.perf_counter() - t0

        print(f"(a) reads: {n_reads} x {args.repeats} per reader and coordinate mode ...", flush=True)
        t0 = time.perf_counter()
        res["reads"] = bench_reads(slide, n_reads=n_reads, repeats=args.repeats, seed=args.seed)
        res["seconds"]["reads"] = time.perf_counter() - t0

        print("(b) writes: ours, pyvips, pyvips 1 thread, each in a child process ...", flush=True)
        t0 = time.perf_counter()
        res["writes"] = bench_writes(npy, tmp, repeats=args.repeats)
        res["seconds"]["writes"] = time.perf_counter() - t0
        npy.unlink()

        if not args.quick:
            names = ", ".join(_size_name(*s) for s in BIG_SIZES)
            print(f"(c) big writes: {names}, each in a child process ...", flush=True)
            t0 = time.perf_counter()
            bytes_per_px = res["writes"]["ours"]["bytes"] / (SIDE * SIDE)
            res["big"] = bench_big(tmp, sizes=BIG_SIZES, bytes_per_px=bytes_per_px)
            res["seconds"]["big"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report(res)
    res["summary"] = summary(res)
    res["seconds"]["total"] = time.perf_counter() - t_start
    out = write_json(args.json, res)
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in res["seconds"].items())
    shown = out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out
    print(f"\ntime: {secs}\nwrote {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
