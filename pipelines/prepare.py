"""``stainldm prepare``: slide pairs -> registered, paired tile store, split by core.

Recipe: config -> the pairs (one from the flags, or a CSV) -> each pair into the store with a
progress bar (:class:`stainldm.data.prepare.StoreBuilder`: resumable, a failing pair is recorded
and the rest continue) -> store-level reports -> summary. Exit 1 when a pair failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from stainldm.data.pairs import load_prepare_config
from stainldm.data.prepare import SlidePair, StoreBuilder, read_pairs_csv
from stainldm.errors import InputError, StainLDMError, one_line, with_flags

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
    cfg = load_prepare_config(args.config, args.overrides)
    if args.unstained is not None:
        if args.stained is None:
            raise InputError("--unstained needs --stained (the H&E scan of the same section)")
        pairs = [SlidePair.from_paths(args.unstained, args.stained, truth=args.truth, slide_id=args.slide_id)]
    else:
        pairs = read_pairs_csv(args.pairs)
    builder = StoreBuilder(args.out, cfg)
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
    if failures:
        for sid, msg in failures:
            print(f"error: {sid}: {with_flags(msg, args.flags)}", file=sys.stderr)
        print(f"{len(failures)} of {len(pairs)} pairs failed (see {args.out / 'pairs.csv'}); fix them and rerun "
              "the same command to continue", file=sys.stderr)
        return 1
    return 0
