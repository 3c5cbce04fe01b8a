"""Store parts of a sharded ``prepare``, and their merge into the one tile store training reads.

    shard = parse_shard("2/8")                                # or torchrun's / SLURM's rank variables
    part = ShardPart.start(out, [p.slide_id for p in pairs], shard)
    builder = StoreBuilder(part.folder, cfg)                  # out/parts/shard-2-of-8
    for pair in shard_items(pairs, shard):
        builder.add(pair)
    builder.finish()
    part.finish()
    ...                                                       # once every shard is finished:
    result = merge_stores(out)                                # out/parts/shard-*-of-8 -> out

Layout::

    STORE/parts/shard-I-of-N/             shard I's pairs: a complete tile store of its own, written
                                          by that shard's process only, resumable as any store
    STORE/parts/shard-I-of-N/shard.json   its pairs (rows of pairs.csv), ``running`` or ``finished``
    STORE/tiles.zarr, tiles.csv, pairs.csv, prepare.yaml, slides/, cores.*, registration.csv
                                          the merged store: an ordinary tile store
    STORE/merge.json                      the parts it was merged from; ``done`` once complete

Each tile is written once: a part's chunk files are hard-linked into the merged arrays (no tile
bytes copied, no disk used; copied once where parts and store are on different file systems), in
``pairs.csv`` order, so the merged store is, row for row, the store an unsharded ``prepare`` of the
same pairs writes. Splits need no second pass: ``prepare`` draws each slide's splits from that
slide's cores and the config's seed alone (:func:`~stainldm.data.split.assign_splits`, per pair),
so a slide gets the same splits in whichever shard it is prepared. ``merge.json`` says
``merging`` before anything is written and ``done`` after ``tiles.csv`` (written last): an
interrupted merge never opens as a store, and rerunning it finishes it, keeping the tiles already
placed. Merging again after a part changed (a failed pair fixed, its shard rerun) rebuilds the
merged store. Once merged, the parts may be deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from stainldm.data.pair_reports import aggregate_reports
from stainldm.data.store import (
    MERGE_RECORD,
    PARTS_FOLDER,
    TILE_COLUMNS,
    TileStore,
    create_tile_arrays,
    merge_status,
    place_tiles,
    read_pairs,
    read_tile_rows,
    write_pairs,
)
from stainldm.errors import ConfigError, InputError
from stainldm.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    ensure_writable_folder,
    sha256_file,
)
from stainldm.shards import shard_items

PART_RECORD = "shard.json"
_PART_NAME = re.compile(r"shard-(\d+)-of-(\d+)")
_STORE_FILES = ("tiles.zarr", "tiles.csv", "pairs.csv", "prepare.yaml")
_NOT_TILES = ("config_hash", "workers")  # prepare.yaml keys that do not change the tiles
_BATCH = 256  # tiles placed between progress calls

Progress = Callable[[int, int], None]
"""``progress(done, total)``: tiles placed so far, out of ``total``."""


def part_folder(out: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """``out/parts/shard-I-of-N``: the store of shard ``(index, count)`` (0-based index, I = index + 1)."""
    index, count = shard
    return Path(out) / PARTS_FOLDER / f"shard-{index + 1}-of-{count}"


@dataclass(frozen=True)
class ShardPart:
    """The store part of one shard of a sharded ``prepare``: its folder and its ``shard.json``."""

    folder: Path

    @classmethod
    def start(cls, out: str | os.PathLike, slide_ids: Sequence[str], shard: tuple[int, int]) -> ShardPart:
        """Records, in ``out/parts/shard-I-of-N/shard.json``, that the shard is running and which
        pairs it takes (:func:`~stainldm.shards.shard_items` of the pairs list).

        Args:
            out: the store folder the parts are merged into.
            slide_ids: every pair's slide id, in the order of ``pairs.csv``.
            shard: ``(index, count)``, 0-based, as :func:`~stainldm.shards.parse_shard` returns.
        """
        folder = part_folder(out, shard)
        rows = shard_items(range(len(slide_ids)), shard)
        try:
            ensure_writable_folder(folder)
        except OSError as exc:
            raise InputError(f"{folder}: cannot write the shard's store part there ({exc.strerror}); choose another "
                             "`out` folder") from exc
        record = {"shard": f"{shard[0] + 1}/{shard[1]}", "status": "running", "total": len(slide_ids),
                  "pairs_digest": _digest(slide_ids), "pairs": [{"row": k, "slide_id": slide_ids[k]} for k in rows]}
        atomic_write_json(folder / PART_RECORD, record, indent=1)
        return cls(folder)

    def finish(self) -> None:
        """Records that every pair of the shard was tried (each is done or failed in ``pairs.csv``)."""
        record = json.loads((self.folder / PART_RECORD).read_text())
        atomic_write_json(self.folder / PART_RECORD, {**record, "status": "finished"}, indent=1)


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_stores` did.

    Attributes:
        placed: chunk files by how they were placed (``linked``, ``copied``, ``recoded``; see
            :func:`~stainldm.data.store.place_tiles`); all zero when ``already``.
        already: the store was merged from these very parts before: nothing was done.
    """

    out: Path
    parts: int
    tiles: int
    pairs_done: int
    pairs_failed: list[str]
    placed: dict[str, int] = field(default_factory=dict)
    already: bool = False


@dataclass
class _Part:
    folder: Path
    record: dict | None
    pairs: dict[str, dict[str, str]]
    config: dict | None
    store: TileStore | None
    fingerprint: str

    def done(self) -> list[str]:
        return [sid for sid, row in self.pairs.items() if row.get("status") == "done"]


def find_parts(out: str | os.PathLike) -> list[Path]:
    """Every ``out/parts/shard-I-of-N`` folder, I = 1..N.

    Raises:
        InputError: there is none, parts of two shard counts, or a shard's part is missing.
    """
    folder = Path(out) / PARTS_FOLDER
    found: dict[tuple[int, int], Path] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = _PART_NAME.fullmatch(p.name)
        if m and p.is_dir() and 1 <= int(m[1]) <= int(m[2]):
            found[int(m[2]), int(m[1])] = p
    if not found:
        raise InputError(f"{folder}: no store parts (shard-I-of-N folders) to merge; prepare them with `shard` i/n "
                         "first, or name the parts to merge")
    counts = sorted({n for n, _ in found})
    if len(counts) > 1:
        raise InputError(f"{folder}: holds parts of {' and of '.join(map(str, counts))} shards; name the parts of "
                         "one sharding to merge them, or delete the others")
    n = counts[0]
    missing = [i for i in range(1, n + 1) if (n, i) not in found]
    if missing:
        raise InputError(f"{folder}: shard {missing[0]} of {n} has no part ({len(found)} of {n} found); run its "
                         f"prepare (shard {missing[0]}/{n}) first, or name the parts to merge")
    return [found[n, i] for i in range(1, n + 1)]


def read_part(folder: str | os.PathLike) -> _Part:
    """A finished store part (or any tile store) to merge.

    Raises:
        InputError: it is not a store, or unfinished (its shard is running or was interrupted).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such store part (folder); name the folders `stainldm prepare` wrote")
    record = None
    if (folder / PART_RECORD).is_file():
        try:
            record = json.loads((folder / PART_RECORD).read_text())
            shard, status = record["shard"], record["status"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{folder / PART_RECORD}: unreadable; rerun this shard's prepare") from exc
        if status != "finished":
            raise InputError(f"{folder}: unfinished part (shard {shard} is still running, or was interrupted); rerun "
                             f"its prepare (shard {shard}) to finish it, then merge")
    pairs = read_pairs(folder / "pairs.csv")
    if record is None and not pairs:
        raise InputError(f"{folder}: not a store part (no pairs.csv); name the folders `stainldm prepare` wrote")
    if record is not None:
        untried = [p["slide_id"] for p in record["pairs"]
                   if pairs.get(p["slide_id"], {}).get("status") not in ("done", "failed")]
        if untried:
            raise InputError(f"{folder}: unfinished part (pair '{untried[0]}' is neither done nor failed); rerun its "
                             f"prepare (shard {record['shard']}) to finish it, then merge")
    part = _Part(folder, record, pairs, None, None, _fingerprint(folder))
    if (folder / "tiles.csv").is_file():
        part.store = TileStore.open(folder)
        stray = sorted({r.slide_id for r in part.store.rows} - set(pairs))
        if stray:
            raise InputError(f"{folder}: unfinished (tiles of '{stray[0]}', which pairs.csv does not record: its "
                             "prepare is running or was interrupted); rerun it to finish, then merge")
        counts: dict[str, int] = {}
        for r in part.store.rows:
            counts[r.slide_id] = counts.get(r.slide_id, 0) + 1
        for sid in part.done():
            if counts.get(sid, 0) != int(pairs[sid].get("tiles") or 0):
                raise InputError(f"{folder}: tiles.csv holds {counts.get(sid, 0)} tiles of '{sid}' but pairs.csv "
                                 f"records {pairs[sid].get('tiles')}; rerun prepare on this part to repair it")
    if part.done():
        if part.store is None or not (folder / "prepare.yaml").is_file():
            raise InputError(f"{folder}: pairs.csv records done pairs but tiles.csv or prepare.yaml is missing; "
                             "prepare this part again in an empty folder")
        part.config = yaml.safe_load((folder / "prepare.yaml").read_text()) or {}
    return part


def merge_stores(out: str | os.PathLike, parts: Sequence[str | os.PathLike] | None = None, *,
                 progress: Progress | None = None) -> MergeResult:
    """Merges store parts into the tile store in ``out`` (see the module docstring).

    Args:
        out: the merged store's folder (for a sharded prepare, the ``out`` its shards were given).
        parts: the stores to merge, in this order; default :func:`find_parts` of ``out`` (then the
            tiles follow the order of the shards' ``pairs.csv``).
        progress: called with ``(done, total)`` tiles as they are placed.

    Returns:
        what was merged; ``already`` when ``out`` was merged from these very parts before.

    Raises:
        InputError: a part is unfinished or not a store, two parts hold one slide, no part holds a
            done pair, or ``out`` holds another store (one prepare made, or a merge of other parts).
        ConfigError: parts were prepared with different configs.
    """
    out, discovered = Path(out), not parts
    folders = find_parts(out) if discovered else [Path(p) for p in parts]
    names = [_name(out, f) for f in folders]
    if len(set(names)) < len(names) or _name(out, out) in names:
        raise InputError(f"{out}: a part is named twice, or is the merged store itself; name each part once")
    infos = [read_part(f) for f in folders]
    if discovered:
        _check_one_pairs_list(infos)
    first = _check_alike(infos)
    order = _order(infos, by_row=discovered)
    fingerprints = [{"part": name, "sha256": p.fingerprint} for name, p in zip(names, infos, strict=True)]
    state = _read_record(out)
    _check_target(out, state, names)
    failed = [sid for k, sid in order if infos[k].pairs[sid].get("status") != "done"]
    done = [(k, sid) for k, sid in order if infos[k].pairs[sid].get("status") == "done"]
    rows_of = [_rows_by_slide(p) for p in infos]
    total = sum(len(rows_of[k][sid]) for k, sid in done)
    already = state is not None and state.get("parts") == fingerprints and merge_status(out) == "done"
    result = MergeResult(out, len(infos), total, len(done), failed, {"linked": 0, "copied": 0, "recoded": 0},
                         already=already)
    if already:
        return result
    resume = state is not None and state.get("parts") == fingerprints
    try:
        ensure_writable_folder(out)
    except OSError as exc:
        raise InputError(f"{out}: cannot write the merged store there ({exc.strerror}); choose another folder") from exc
    atomic_write_json(out / MERGE_RECORD, {"status": "merging", "parts": fingerprints}, indent=1)
    for name in ("tiles.csv", "stats.json"):  # the store stops looking complete before anything changes
        (out / name).unlink(missing_ok=True)
    if not resume or not _arrays_fit(out, first.store, total):
        for name in ("tiles.zarr", "slides"):  # chunk files already there are taken as placed: none may be stale
            shutil.rmtree(out / name, ignore_errors=True)
        s = first.store
        create_tile_arrays(out / "tiles.zarr", tile_px=s.tile_px, channels_in=s.channels_in,
                           dtype_in=str(s.unstained.dtype), n=total, channel_names=s.channel_names)
    tile_rows, placed = [], 0
    for k, sid in done:
        src = infos[k].store
        idx = rows_of[k][sid]
        for start in range(0, len(idx), _BATCH):
            moves = [(i, len(tile_rows) + n) for n, i in enumerate(idx[start : start + _BATCH], start=start)]
            for how, n in place_tiles(src, out, moves).items():
                result.placed[how] += n
            placed += len(moves)
            if progress is not None:
                progress(placed, total)
        tile_rows += [src.rows[i] for i in idx]
    for k, sid in order:
        _copy_tree(infos[k].folder / "slides" / sid, out / "slides" / sid)
    aggregate_reports(out)
    write_pairs(out / "pairs.csv", {sid: infos[k].pairs[sid] for k, sid in order})
    atomic_write_bytes(out / "prepare.yaml", (first.folder / "prepare.yaml").read_bytes())
    atomic_write_csv(out / "tiles.csv", [TILE_COLUMNS, *(r.as_csv() for r in tile_rows)])
    atomic_write_json(out / MERGE_RECORD, {"status": "done", "parts": fingerprints, "tiles": total}, indent=1)
    return result


# -- checks ------------------------------------------------------------------------------------
def _check_one_pairs_list(parts: list[_Part]) -> None:
    records = [p for p in parts if p.record is not None]
    for p in records[1:]:
        if p.record.get("pairs_digest") != records[0].record.get("pairs_digest"):
            raise InputError(f"{p.folder}: prepared from another pairs list than {records[0].folder}; prepare every "
                             "shard from the same pairs.csv")


def _check_alike(parts: list[_Part]) -> _Part:
    """The first part with tiles, after checking that every other has the same config and tiles."""
    owner: dict[str, Path] = {}
    for p in parts:
        for sid in p.pairs:
            if sid in owner:
                raise InputError(f"slide '{sid}' is in two parts, {owner[sid]} and {p.folder}; a slide belongs in one "
                                 "part: prepare every shard from one pairs.csv, or leave one of them out")
            owner[sid] = p.folder
    with_tiles = [p for p in parts if p.config is not None]
    if not with_tiles:
        raise InputError(f"{parts[0].folder.parent}: no part holds a done pair (see each part's pairs.csv); "
                         "nothing to merge")
    first = with_tiles[0]
    a = first.store
    for p in with_tiles[1:]:
        diff = _config_diff(first.config, p.config)
        if diff:
            raise ConfigError(f"{p.folder}: prepared with another config than {first.folder} ({diff}); prepare "
                              "every part with one config (rerun this shard into an empty folder with it)")
        b = p.store
        if (a.tile_px, a.channels_in, a.unstained.dtype) != (b.tile_px, b.channels_in, b.unstained.dtype):
            raise InputError(f"{p.folder}: holds {b.channels_in}-channel {b.unstained.dtype} tiles of {b.tile_px} "
                             f"px, {first.folder} {a.channels_in}-channel {a.unstained.dtype} tiles of {a.tile_px} "
                             "px; merge stores of one modality and tile size")
        if a.channel_names != b.channel_names:
            raise InputError(f"{p.folder}: holds channels {', '.join(b.channel_names or ['unnamed'])}, "
                             f"{first.folder} {', '.join(a.channel_names or ['unnamed'])}; prepare every shard with "
                             "the same `channels`")
    return first


def _check_target(out: Path, state: dict | None, names: list[str]) -> None:
    if state is None:
        held = [n for n in _STORE_FILES if (out / n).exists()]
        if held:
            raise InputError(f"{out}: already holds a tile store that was not merged from parts ({held[0]}); merge "
                             "into another folder")
        return
    merged = [str(p.get("part")) for p in state.get("parts", [])]
    if merge_status(out) != "done":
        return  # an unfinished merge: no store yet, made again from these parts
    if sorted(merged) != sorted(names):
        raise InputError(f"{out}: holds a store merged from other parts ({', '.join(merged)}); merge these into "
                         "another folder")
    tiles = len(read_tile_rows(out / "tiles.csv")) if (out / "tiles.csv").is_file() else state.get("tiles")
    if tiles != state.get("tiles"):
        raise InputError(f"{out}: holds {tiles} tiles but was merged with {state.get('tiles')}: pairs were prepared "
                         "into it since; merging again would drop them, so merge into another folder")


def _config_diff(a: dict, b: dict) -> str:
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(k for k in set(fa) | set(fb) if k not in _NOT_TILES and fa.get(k) != fb.get(k))
    return ", ".join(f"{k} {fb.get(k)} vs {fa.get(k)}" for k in keys[:3]) + (", ..." if len(keys) > 3 else "")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        flat.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return flat


# -- plan and files ----------------------------------------------------------------------------
def _order(parts: list[_Part], *, by_row: bool) -> list[tuple[int, str]]:
    """(part, slide id) of every recorded pair: by row of the shards' pairs.csv when known (``by_row``),
    else part by part in the order of each part's pairs.csv."""
    keyed = []
    for k, p in enumerate(parts):
        rows = {e["slide_id"]: e["row"] for e in (p.record or {}).get("pairs", [])} if by_row else {}
        for pos, sid in enumerate(p.pairs):
            keyed.append(((0, rows[sid], 0) if sid in rows else (1, k, pos), k, sid))
    return [(k, sid) for _, k, sid in sorted(keyed)]


def _rows_by_slide(part: _Part) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, r in enumerate(part.store.rows if part.store is not None else []):
        rows.setdefault(r.slide_id, []).append(i)
    return rows


def _arrays_fit(out: Path, store: TileStore, n: int) -> bool:
    """Whether ``out`` has the merged arrays a resumed merge can go on placing tiles into."""
    import zarr

    try:
        group = zarr.open_group(str(out / "tiles.zarr"), mode="r")
        shapes = (group["unstained"].shape, group["stained"].shape)
    except Exception:  # missing or half-created: they are made again
        return False
    return shapes == ((n, *store.unstained.shape[1:]), (n, *store.stained.shape[1:]))


def _copy_tree(src: Path, dst: Path) -> None:
    for f in sorted(src.rglob("*")) if src.is_dir() else []:
        if f.is_file():
            (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst / f.relative_to(src), f.read_bytes())


def _read_record(out: Path) -> dict | None:
    if merge_status(out) is None:
        return None
    try:
        return json.loads((out / MERGE_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in ("tiles.csv", "pairs.csv", "prepare.yaml", PART_RECORD):
        digest.update(f"{name}:{sha256_file(folder / name) if (folder / name).is_file() else '-'};".encode())
    return digest.hexdigest()


def _name(out: Path, folder: Path) -> str:
    """How merge.json names a part: relative to ``out`` when inside it (the store can move), else absolute."""
    a, b = Path(os.path.abspath(out)), Path(os.path.abspath(folder))
    return b.relative_to(a).as_posix() if b.is_relative_to(a) else str(b)


def _digest(slide_ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(slide_ids).encode()).hexdigest()[:16]
