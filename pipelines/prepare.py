"""``stainldm prepare``: slide pairs -> registered, paired tile store, split by core.

Recipe: config -> the pairs (one from the flags, or a CSV) -> this shard's share -> each pair into
the store with a progress bar (:class:`stainldm.data.prepare.StoreBuilder`: resumable, a failing
pair is recorded and the rest continue) -> store-level reports -> summary. Exit 1 when a pair failed.

Sharded (``--pairs P --shard i/n``, or torchrun's / SLURM's rank variables): shard i takes rows
i, i+n, ... of ``pairs.csv`` into ``OUT/parts/shard-i-of-n/``, a store of its own
(:mod:`stainldm.data.merge`), so n processes on n machines can share OUT; ``stainldm
merge-stores OUT`` then assembles the parts. Without ``--shard`` and rank variables (or with n = 1)
the store is OUT itself, as always.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from stainldm.data.merge import ShardPart, part_folder
from stainldm.data.pairs import check_config, load_prepare_config
from stainldm.data.prepare import SlidePair, StoreBuilder, read_pairs_csv
from stainldm.errors import InputError, StainLDMError, one_line, with_flags
from stainldm.shards import parse_shard, shard_items

log = logging.getLogger("stainldm.prepare")


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
    p.add_argument("--shard", help="i/n: prepare only shard i of n of --pairs (rows i, i+n, ...) into "
                                   "OUT/parts/shard-i-of-n; then `stainldm merge-stores OUT` (default: "
                                   "torchrun/SLURM rank variables)")
    p.add_argument("--channels", metavar="NAME,NAME", help="unstained channels to use, in this order: names or "
                                                          "0-based indices, comma-separated (default: all)")
    p.add_argument("--keep-flagged", action="store_true",
                   help="keep tiles of cores whose registration stages disagree by more than "
                        "register.max_disagreement_px (flagged in registration.csv)")
    p.add_argument("--config", type=Path, help="YAML with prepare settings (see configs/)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. --set tiles.size=128 tiles.stride=128 (or --set repeated)")
    p.set_defaults(run=run)


class _Bar:
    """A pair's tqdm bar, opened once the library knows how many tiles it will cut."""

    def __init__(self, desc: str, *, quiet: bool):
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="tile", disable=self.quiet, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    cfg = load_prepare_config(args.config, [*args.overrides, *(["register.keep_flagged=true"] if args.keep_flagged
                                                                else [])])
    if args.channels is not None:  # as given: a YAML override would read "1" as a number
        cfg = replace(cfg, channels=args.channels)
        check_config(cfg)
    if args.unstained is not None:
        if args.stained is None:
            raise InputError("--unstained needs --stained (the H&E scan of the same section)")
        if args.shard:
            raise InputError("--shard needs --pairs: one pair is not split into shards")
        pairs = [SlidePair.from_paths(args.unstained, args.stained, truth=args.truth, slide_id=args.slide_id)]
        shard = (0, 1)
    else:
        pairs = read_pairs_csv(args.pairs)
        shard = parse_shard(args.shard)
    out, part, total = args.out, None, len(pairs)
    if shard[1] > 1:
        out = part_folder(args.out, shard)
    builder = StoreBuilder(out, cfg)  # a store made with another config is refused before anything is written
    if shard[1] > 1:
        part = ShardPart.start(args.out, [p.slide_id for p in pairs], shard)
        pairs = shard_items(pairs, shard)
    failures = []
    for pair in pairs:
        bar = _Bar(pair.slide_id, quiet=args.quiet)
        try:
            builder.add(pair, progress=bar)
        except StainLDMError as exc:
            if args.debug:
                raise
            failures.append((pair.slide_id, one_line(exc)))
            log.warning("%s failed; continuing with the other pairs", pair.slide_id)
        finally:
            bar.close()
    for line in builder.finish():
        print(line)
    if part is not None:
        part.finish()  # every pair of the shard is done or failed: the part can be merged
        print(f"shard {shard[0] + 1}/{shard[1]}: {len(pairs)} of the {total} pairs in {out}; once every shard is "
              f"done: stainldm merge-stores {args.out}")
    if failures:
        for sid, msg in failures:
            print(f"error: {sid}: {with_flags(msg, args.flags)}", file=sys.stderr)
        print(f"{len(failures)} of {len(pairs)} pairs failed (see {out / 'pairs.csv'}); fix them and rerun "
              "the same command to continue", file=sys.stderr)
        return 1
    return 0
