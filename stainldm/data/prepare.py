"""Slide pairs -> a registered, paired tile store, split by core: resumable, one pair at a time.

    cfg = load_prepare_config("configs/demo.yaml", overrides=["tiles.size=64"])
    builder = StoreBuilder(out, cfg)
    for pair in read_pairs_csv(Path("pairs.csv")):
        builder.add(pair)                       # skips pairs already done
    print("\\n".join(builder.finish()))        # store-level reports, then a summary

or, for one pair, ``prepare_pair(out, SlidePair.from_paths(u, s, truth=t), cfg)``.

Per pair: open both slides -> tissue mask + dearray the unstained one -> register the stained one
-> assign cores to splits -> cut tiles (threads) -> append to the store -> record in ``pairs.csv``.
Pairs already ``done`` there are skipped; tiles of a pair interrupted half-way are dropped and the
pair is redone. The store's config is recorded (``prepare.yaml``) once a pair is done, and another
config is refused from then on: a store holds tiles of one config.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stainldm.config import config_hash, to_dict
from stainldm.data.pair_reports import aggregate_reports, summary_lines, write_slide_reports
from stainldm.data.pairs import PrepareConfig, analyse_pair, cut_pair, plan_tiles
from stainldm.data.split import assign_splits
from stainldm.data.store import TileRow, TileStore, read_pairs, write_pairs
from stainldm.errors import ConfigError, InputError, StainLDMError, one_line
from stainldm.files import atomic_write_text
from stainldm.wsi.channels import select_channels
from stainldm.wsi.reader import SlideReader, open_slide

log = logging.getLogger(__name__)

BATCH = 64  # tiles cut (in threads) and appended to the store at a time

Progress = Callable[[int, int], None]
"""``progress(done, total)``: tiles of the pair cut so far, out of ``total``."""


@dataclass(frozen=True)
class SlidePair:
    """An unstained scan and the H&E scan of the same section.

    Attributes:
        slide_id: the pair's name in the store (``tiles.csv``, ``pairs.csv``, ``slides/<slide_id>``).
        unstained, stained: the two slides.
        truth: a make-sample ``truth.json``: its split is honoured and its landmarks give the
            registration error.
    """

    slide_id: str
    unstained: Path
    stained: Path
    truth: Path | None = None

    @classmethod
    def from_paths(cls, unstained: str | Path, stained: str | Path, *, truth: str | Path | None = None,
                   slide_id: str | None = None) -> SlidePair:
        """A pair named ``slide_id``, or by :func:`default_slide_id` of ``unstained``."""
        unstained = Path(unstained)
        return cls(slide_id or default_slide_id(unstained), unstained, Path(stained),
                   Path(truth) if truth is not None else None)


def default_slide_id(unstained: Path) -> str:
    """The unstained file's stem; for make-sample's ``DIR/unstained.tiff`` layout, ``DIR``'s name."""
    stem = unstained.name.split(".")[0]
    return unstained.resolve().parent.name if stem == "unstained" else stem


def read_pairs_csv(path: Path) -> list[SlidePair]:
    """Pairs from a CSV with columns ``unstained,stained[,slide_id][,truth]``; relative paths are
    relative to the CSV's folder.

    Raises:
        InputError: the file is missing, lacks a column, has an empty path, lists a slide_id twice
            or lists no pair (the message names the file and line).
    """
    if not path.is_file():
        raise InputError(f"{path}: pairs file not found")
    pairs, seen = [], set()
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"unstained", "stained"} <= cols:
            raise InputError(f"{path}: needs columns 'unstained' and 'stained' (has: {', '.join(sorted(cols)) or 'none'})")
        for lineno, row in enumerate(reader, start=2):
            u, s = (row.get("unstained") or "").strip(), (row.get("stained") or "").strip()
            if not u or not s:
                raise InputError(f"{path}:{lineno}: empty unstained or stained path")
            sid = (row.get("slide_id") or "").strip() or default_slide_id(Path(u))
            if sid in seen:
                raise InputError(f"{path}:{lineno}: slide_id '{sid}' appears twice; give each pair its own slide_id")
            seen.add(sid)
            truth = (row.get("truth") or "").strip()
            pairs.append(SlidePair(sid, _relative_to(path, u), _relative_to(path, s),
                                   _relative_to(path, truth) if truth else None))
    if not pairs:
        raise InputError(f"{path}: no pairs listed")
    return pairs


def _relative_to(csv_path: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else csv_path.parent / q


def load_truth(path: Path) -> dict[str, Any]:
    """A make-sample ``truth.json``.

    Raises:
        InputError: the file is missing or has no ``cores`` and ``landmarks``.
    """
    try:
        truth = json.loads(path.read_text())
        truth["cores"], truth["landmarks"]
    except FileNotFoundError as exc:
        raise InputError(f"{path}: truth file not found") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a make-sample truth.json (needs 'cores' and 'landmarks')") from exc
    return truth


class StoreBuilder:
    """Adds slide pairs to the tile store in ``out``, one after another, resumably.

    Args:
        out: the store folder (created if needed).
        cfg: the resolved prepare config (:func:`~stainldm.data.pairs.load_prepare_config`).

    Raises:
        ConfigError: ``out`` holds a store made with another config.
    """

    def __init__(self, out: Path, cfg: PrepareConfig):
        self.out, self.cfg = Path(out), cfg
        saved = self.out / "prepare.yaml"
        if saved.is_file():
            old = yaml.safe_load(saved.read_text()) or {}
            if old.get("config_hash") != config_hash(cfg):
                raise ConfigError(f"{self.out}: this store was made with another prepare config (see {saved}); use "
                                  "a new `out` folder or the same settings")
        self.out.mkdir(parents=True, exist_ok=True)
        self.status: dict[str, dict[str, str]] = read_pairs(self.out / "pairs.csv")  # pairs.csv rows by slide_id
        self._done = {sid for sid, row in self.status.items() if row.get("status") == "done"}
        self._store: TileStore | None = None

    def is_done(self, slide_id: str) -> bool:
        """Whether ``pairs.csv`` records the pair ``slide_id`` as done."""
        return slide_id in self._done

    def add(self, pair: SlidePair, *, progress: Progress | None = None) -> int | None:
        """Prepares ``pair`` into the store and records it in ``pairs.csv`` (done, or failed with the
        error); a pair already done is skipped.

        Args:
            pair: the slides (and truth) to add.
            progress: called with ``(done, total)`` tiles once the tiles are planned and after each batch.

        Returns:
            the number of tiles added, or None when the pair was already done.

        Raises:
            StainLDMError: the pair failed (recorded first; the store keeps the other pairs' tiles).
        """
        if self.is_done(pair.slide_id):
            log.info("%s: already done, skipping", pair.slide_id)
            return None
        t0 = time.perf_counter()
        try:
            n = self._add_tiles(pair, progress)
        except StainLDMError as exc:
            self._record(pair, "failed", 0, time.perf_counter() - t0, one_line(exc))
            raise
        self._done.add(pair.slide_id)
        self._record_config()
        self._record(pair, "done", n, time.perf_counter() - t0, "")
        return n

    def finish(self) -> list[str]:
        """Writes the store-level reports from every slide's and returns the summary lines."""
        aggregate_reports(self.out)
        return summary_lines(self.out, pairs_done=sum(r.get("status") == "done" for r in self.status.values()))

    def _record(self, pair: SlidePair, status: str, tiles: int, seconds: float, error: str) -> None:
        self.status[pair.slide_id] = {
            "slide_id": pair.slide_id, "unstained": str(pair.unstained), "stained": str(pair.stained),
            "status": status, "tiles": str(tiles), "seconds": f"{seconds:.1f}", "error": error}
        write_pairs(self.out / "pairs.csv", self.status)

    def _record_config(self) -> None:
        # Written when the first pair is done, so that a config that failed does not lock the folder.
        saved = self.out / "prepare.yaml"
        if not saved.is_file():
            atomic_write_text(saved, yaml.safe_dump({"config_hash": config_hash(self.cfg), **to_dict(self.cfg)},
                                                    sort_keys=False))

    def _open_store(self, pair: SlidePair, unstained: SlideReader) -> TileStore:
        store = self._store
        if store is None:
            store = TileStore.create(self.out, tile_px=self.cfg.tiles.size, channels_in=unstained.channels,
                                     dtype_in=str(np.dtype(unstained.dtype)), channel_names=unstained.channel_names)
        elif store.channels_in != unstained.channels:
            raise InputError(f"{pair.unstained}: has {unstained.channels} channels but the store holds "
                             f"{store.channels_in}-channel tiles; put slides of one modality in one store")
        elif store.channel_names and tuple(unstained.channel_names) != store.channel_names:
            raise InputError(f"{pair.unstained}: has channels {', '.join(unstained.channel_names)} but the store "
                             f"holds {', '.join(store.channel_names)}; choose them with `channels` in the store's "
                             "order, or use a new store")
        # Pairs run one after another, so rows of pairs not marked done are a tail: drop them.
        keep = 0
        while keep < len(store.rows) and store.rows[keep].slide_id in self._done:
            keep += 1
        if keep < len(store.rows):
            log.info("dropping %d tiles of an interrupted pair", len(store.rows) - keep)
            store.truncate(keep)
        return store

    def _add_tiles(self, pair: SlidePair, progress: Progress | None) -> int:
        cfg, sid = self.cfg, pair.slide_id
        with select_channels(open_slide(pair.unstained), cfg.channels) as unstained, open_slide(pair.stained) as stained:
            log.info("%s: %s + %s", sid, unstained.name, stained.name)
            plan = analyse_pair(unstained, stained, cfg)
            truth = load_truth(pair.truth) if pair.truth else None
            given = {f"{sid}:{c['id']}": c["split"] for c in truth["cores"]} if truth else None
            splits = assign_splits([f"{sid}:{c.id}" for c in plan.present], cfg.split, given=given)
            write_slide_reports(self.out / "slides" / sid, sid, plan, splits, truth)
            tiles = plan_tiles(plan, unstained, cfg.tiles)
            store = self._open_store(pair, unstained)
            if progress is not None:
                progress(0, len(tiles))

            def cut(item):
                core, xy, frac = item
                u, s, before, after = cut_pair(unstained, stained, plan, core, xy, cfg.tiles)
                return u, s, TileRow(sid, core.id, splits[f"{sid}:{core.id}"], xy[0], xy[1], cfg.tiles.mpp, frac,
                                     before, after)

            with ThreadPoolExecutor(cfg.workers) as pool:
                for start in range(0, len(tiles), BATCH):
                    got = list(pool.map(cut, tiles[start : start + BATCH]))
                    store.append(np.stack([g[0] for g in got]), np.stack([g[1] for g in got]), [g[2] for g in got])
                    if progress is not None:
                        progress(start + len(got), len(tiles))
        self._store = store  # kept for the next pair only once this one is done (a failed one reopens it)
        return len(tiles)


def prepare_pair(out: Path, pair: SlidePair, cfg: PrepareConfig, *, progress: Progress | None = None) -> list[str]:
    """One pair into the store in ``out``, then the store-level reports: what ``stainldm prepare
    --unstained U --stained S [--truth T] [--slide-id ID] --out OUT`` does (a pair already done is
    skipped).

    Returns:
        the summary lines ``stainldm prepare`` prints.

    Raises:
        StainLDMError: the pair failed (recorded in ``pairs.csv``), or see :class:`StoreBuilder`.
    """
    builder = StoreBuilder(out, cfg)
    try:
        builder.add(pair, progress=progress)
    finally:
        lines = builder.finish()
    return lines

