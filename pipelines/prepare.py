"""``stainldm prepare``: slide pairs -> registered, paired tile store, split by core.

Recipe per pair: open both slides -> tissue mask + dearray the unstained one -> register the
stained one -> assign cores to splits -> cut tiles (threads) -> append to the store -> record.
Resumable: pairs already ``done`` in ``STORE/pairs.csv`` are skipped; tiles of a pair interrupted
half-way are dropped and the pair is redone. A failing pair is recorded and the rest continue.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from stainldm.config import apply_overrides, config_hash, from_dict, load_yaml, to_dict
from stainldm.data.pairs import PrepareConfig, analyse_pair, check_config, cut_pair, plan_tiles
from stainldm.data.split import assign_splits
from stainldm.data.store import TileRow, TileStore, read_pairs, write_pairs
from stainldm.errors import ConfigError, InputError, StainLDMError, one_line
from stainldm.wsi.reader import open_slide
from stainldm.wsi.register import registration_errors
from stainldm.wsi.tma import cores_to_geojson, write_cores_csv

log = logging.getLogger("stainldm.prepare")
BATCH = 64


@dataclass
class Pair:
    slide_id: str
    unstained: Path
    stained: Path
    truth: Path | None = None


def add_parser(sub, common) -> None:
    p = sub.add_parser("prepare", parents=[common], help="register slide pairs and cut paired training tiles",
                       description="Tissue masks, TMA dearraying, cross-modal registration and a paired tile "
                                   "store split by core. Rerunning on the same --out skips finished pairs.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--unstained", type=Path, help="the unstained scan (needs --stained)")
    src.add_argument("--pairs", type=Path, help="CSV with columns unstained,stained[,slide_id][,truth]")
    p.add_argument("--stained", type=Path, help="the H&E scan of the same section")
    p.add_argument("--slide-id", help="name of the pair (default: the unstained file's stem)")
    p.add_argument("--truth", type=Path, help="truth.json of a make-sample pair: report registration error "
                                              "and honour its train/test split")
    p.add_argument("--out", type=Path, required=True, help="the tile store folder")
    p.add_argument("--config", type=Path, help="YAML with prepare settings (see configs/)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set tiles.size=128 tiles.stride=128 (or --set repeated)")
    p.set_defaults(run=run)


def load_prepare_config(path: Path | None, overrides: list[str]) -> PrepareConfig:
    data = load_yaml(path) if path else {}
    if "prepare" in data:
        data = data["prepare"] or {}
    cfg = from_dict(PrepareConfig, apply_overrides(data, overrides))
    check_config(cfg)
    return cfg


def read_pairs_csv(path: Path) -> list[Pair]:
    """Pairs from a CSV; relative paths are relative to the CSV's folder."""
    if not path.is_file():
        raise InputError(f"{path}: pairs file not found")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"unstained", "stained"} <= cols:
            raise InputError(f"{path}: needs columns 'unstained' and 'stained' (has: {', '.join(sorted(cols)) or 'none'})")
        pairs, seen = [], set()
        for lineno, row in enumerate(reader, start=2):
            u, s = (row.get("unstained") or "").strip(), (row.get("stained") or "").strip()
            if not u or not s:
                raise InputError(f"{path}:{lineno}: empty unstained or stained path")
            sid = (row.get("slide_id") or "").strip() or default_slide_id(Path(u))
            if sid in seen:
                raise InputError(f"{path}:{lineno}: slide_id '{sid}' appears twice; give each pair its own slide_id")
            seen.add(sid)
            truth = (row.get("truth") or "").strip()
            pairs.append(Pair(sid, _rel(path, u), _rel(path, s), _rel(path, truth) if truth else None))
    if not pairs:
        raise InputError(f"{path}: no pairs listed")
    return pairs


def default_slide_id(unstained: Path) -> str:
    """The unstained file's stem; for make-sample's ``DIR/unstained.tiff`` layout, ``DIR``'s name."""
    stem = unstained.name.split(".")[0]
    return unstained.resolve().parent.name if stem == "unstained" else stem


def _rel(base: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base.parent / q


def run(args: argparse.Namespace) -> int:
    cfg = load_prepare_config(args.config, args.overrides)
    if args.unstained is not None:
        if args.stained is None:
            raise InputError("--unstained needs --stained (the H&E scan of the same section)")
        pairs = [Pair(args.slide_id or default_slide_id(args.unstained), args.unstained, args.stained, args.truth)]
    else:
        pairs = read_pairs_csv(args.pairs)
    out: Path = args.out
    _check_store_config(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    pairs_path = out / "pairs.csv"
    status = read_pairs(pairs_path)
    done = {sid for sid, r in status.items() if r.get("status") == "done"}
    store: TileStore | None = None
    failures = []
    for pair in pairs:
        if pair.slide_id in done:
            log.info("%s: already done, skipping", pair.slide_id)
            continue
        t0 = time.perf_counter()
        try:
            store, n = _prepare_pair(pair, cfg, out, store, done, quiet=args.quiet)
            status[pair.slide_id] = _pair_row(pair, "done", n, time.perf_counter() - t0, "")
            done.add(pair.slide_id)
            _record_store_config(out, cfg)
        except StainLDMError as exc:
            if args.debug:
                raise
            msg = one_line(exc)
            failures.append((pair.slide_id, msg))
            status[pair.slide_id] = _pair_row(pair, "failed", 0, time.perf_counter() - t0, msg)
            log.warning("%s failed; continuing with the other pairs", pair.slide_id)
        write_pairs(pairs_path, status)
    _aggregate(out)
    _summary(out, status)
    if failures:
        for sid, msg in failures:
            print(f"error: {sid}: {msg}", file=sys.stderr)
        print(f"{len(failures)} of {len(pairs)} pairs failed (see {pairs_path}); fix them and rerun the same "
              "command to continue", file=sys.stderr)
        return 1
    return 0


def _check_store_config(out: Path, cfg: PrepareConfig) -> None:
    """A store holds tiles of one config: refuse another one once a pair is done."""
    saved = out / "prepare.yaml"
    if saved.is_file():
        old = yaml.safe_load(saved.read_text()) or {}
        if old.get("config_hash") != config_hash(cfg):
            raise ConfigError(f"{out}: this store was made with another prepare config (see {saved}); use a new "
                              "--out folder or the same settings")


def _record_store_config(out: Path, cfg: PrepareConfig) -> None:
    """Written when the first pair is done, so a config that failed does not lock the folder."""
    saved = out / "prepare.yaml"
    if saved.is_file():
        return
    tmp = out / ".prepare.yaml.partial"
    tmp.write_text(yaml.safe_dump({"config_hash": config_hash(cfg), **to_dict(cfg)}, sort_keys=False))
    tmp.replace(saved)


def _prepare_pair(pair: Pair, cfg: PrepareConfig, out: Path, store: TileStore | None, done: set[str], *,
                  quiet: bool) -> tuple[TileStore, int]:
    with open_slide(pair.unstained) as unstained, open_slide(pair.stained) as stained:
        log.info("%s: %s + %s", pair.slide_id, unstained.name, stained.name)
        plan = analyse_pair(unstained, stained, cfg)
        truth = _load_truth(pair.truth) if pair.truth else None
        keys = [f"{pair.slide_id}:{c.id}" for c in plan.present]
        given = {f"{pair.slide_id}:{c['id']}": c["split"] for c in truth["cores"]} if truth else None
        splits = assign_splits(keys, cfg.split, given=given)
        _write_slide_reports(out / "slides" / pair.slide_id, pair, plan, splits, truth)
        tiles = plan_tiles(plan, unstained, cfg.tiles)
        if store is None:
            store = TileStore.create(out, tile_px=cfg.tiles.size, channels_in=unstained.channels,
                                     dtype_in=str(np.dtype(unstained.dtype)))
        elif store.channels_in != unstained.channels:
            raise InputError(f"{pair.unstained}: has {unstained.channels} channels but the store holds "
                             f"{store.channels_in}-channel tiles; put slides of one modality in one store")
        _drop_unfinished(store, done)
        bar = tqdm(total=len(tiles), desc=pair.slide_id, unit="tile", disable=quiet, leave=False)

        def cut(item):
            core, xy, frac = item
            u, s, before, after = cut_pair(unstained, stained, plan, core, xy, cfg.tiles)
            row = TileRow(pair.slide_id, core.id, splits[f"{pair.slide_id}:{core.id}"], xy[0], xy[1],
                          cfg.tiles.mpp, frac, before, after)
            return u, s, row

        with ThreadPoolExecutor(cfg.workers) as pool:
            for start in range(0, len(tiles), BATCH):
                got = list(pool.map(cut, tiles[start : start + BATCH]))
                store.append(np.stack([g[0] for g in got]), np.stack([g[1] for g in got]), [g[2] for g in got])
                bar.update(len(got))
        bar.close()
    return store, len(tiles)


def _drop_unfinished(store: TileStore, done: set[str]) -> None:
    """Rows of pairs not marked done are a tail (pairs run one after another): drop them."""
    keep = 0
    while keep < len(store.rows) and store.rows[keep].slide_id in done:
        keep += 1
    if keep < len(store.rows):
        log.info("dropping %d tiles of an interrupted pair", len(store.rows) - keep)
        store.truncate(keep)


def _load_truth(path: Path) -> dict:
    try:
        truth = json.loads(path.read_text())
        truth["cores"], truth["landmarks"]
    except FileNotFoundError:
        raise InputError(f"{path}: truth file not found") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: not a make-sample truth.json (needs 'cores' and 'landmarks')") from None
    return truth


def _write_slide_reports(folder: Path, pair: Pair, plan, splits: dict[str, str], truth: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    gj = cores_to_geojson(plan.cores)
    for f in gj["features"]:
        f["properties"]["slide_id"] = pair.slide_id
        f["properties"]["split"] = splits.get(f"{pair.slide_id}:{f['properties']['name']}", "")
    _atomic(folder / "cores.geojson", json.dumps(gj, indent=1))
    write_cores_csv(plan.cores, folder / "cores.csv")
    reg = plan.registration
    _atomic(folder / "registration.json", json.dumps(reg.to_json()))
    errors = registration_errors(reg, {k: np.asarray(v) for k, v in truth["landmarks"].items()}) if truth else {}
    rows = []
    for core_id, (before, after) in reg.core_similarity.items():
        e = errors.get(core_id)
        used = "used" if reg.core_ok(core_id) else "excluded: low similarity"
        rows.append([pair.slide_id, core_id, splits.get(f"{pair.slide_id}:{core_id}", ""), used, f"{before:.4f}",
                     f"{after:.4f}", *(_tre(e) if e is not None else ["", "", "", ""])])
    if errors:
        allv = np.concatenate(list(errors.values()))
        rows.append([pair.slide_id, "ALL", "", "", f"{np.median([r[0] for r in reg.core_similarity.values()]):.4f}",
                     f"{np.median([r[1] for r in reg.core_similarity.values()]):.4f}", *_tre(allv)])
    with open(folder / ".registration.csv.partial", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(REG_COLUMNS)
        w.writerows(rows)
    (folder / ".registration.csv.partial").replace(folder / "registration.csv")


REG_COLUMNS = ["slide_id", "core", "split", "use", "sim_before", "sim_after", "landmarks", "tre_median_px",
               "tre_p95_px", "tre_max_px"]


def _tre(e: np.ndarray) -> list[str]:
    return [str(len(e)), f"{np.median(e):.3f}", f"{np.percentile(e, 95):.3f}", f"{e.max():.3f}"]


def _aggregate(out: Path) -> None:
    """Store-level cores.geojson / cores.csv / registration.csv from the per-slide reports."""
    slides = sorted(p for p in (out / "slides").glob("*") if p.is_dir()) if (out / "slides").is_dir() else []
    if not slides:
        return
    features = []
    for s in slides:
        if (s / "cores.geojson").is_file():
            features += json.loads((s / "cores.geojson").read_text())["features"]
    _atomic(out / "cores.geojson", json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    for name in ("cores.csv", "registration.csv"):
        lines, header = [], None
        for s in slides:
            f = s / name
            if not f.is_file():
                continue
            rows = f.read_text().splitlines()
            if name == "cores.csv":
                rows = ["slide_id," + rows[0]] + [f"{s.name},{r}" for r in rows[1:]]
            header = header or rows[0]
            lines += rows[1:]
        if header:
            _atomic(out / name, "\n".join([header, *lines]) + "\n")


def _summary(out: Path, status: dict) -> None:
    try:
        store = TileStore.open(out)
    except InputError:
        return
    counts = {s: sum(r.split == s for r in store.rows) for s in ("train", "val", "test")}
    print(f"{out}: {len(store)} tiles ({', '.join(f'{k} {v}' for k, v in counts.items())}) from "
          f"{sum(r.get('status') == 'done' for r in status.values())} pairs")
    reg = out / "registration.csv"
    if reg.is_file():
        for row in csv.DictReader(reg.open()):
            if row["core"] == "ALL":
                print(f"  {row['slide_id']}: registration error median {row['tre_median_px']} px, "
                      f"95th percentile {row['tre_p95_px']} px, max {row['tre_max_px']} px")


def _pair_row(pair: Pair, status: str, n: int, seconds: float, error: str) -> dict[str, str]:
    return {"slide_id": pair.slide_id, "unstained": str(pair.unstained), "stained": str(pair.stained),
            "status": status, "tiles": str(n), "seconds": f"{seconds:.1f}", "error": error}


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    tmp.replace(path)
