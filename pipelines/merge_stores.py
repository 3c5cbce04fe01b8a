"""``stainldm merge-stores STORE [PART ...]``: the parts of a sharded prepare -> one tile store.

Recipe: the parts (every ``STORE/parts/shard-I-of-N`` of a ``prepare --shard``, or the stores
named) -> checks -> tiles placed with a progress bar -> reports, ``pairs.csv``, ``tiles.csv`` ->
summary (:func:`stainldm.data.merge.merge_stores`). STORE is then an ordinary tile store:
``stainldm train`` reads it.

Choices, so a lab knows what it gets:

* **Tiles are written once.** The parts' chunk files (one per tile) are hard-linked into
  ``STORE/tiles.zarr``: no tile bytes are copied and no disk is used; where STORE and a part are on
  different file systems each tile is copied once, byte for byte. The parts may be deleted after
  the merge (keep them to rerun a shard and merge again). One store for training, rather than a
  training that reads several stores: every reader (training, evaluation, notebooks) stays as it is.
* **Order and splits are an unsharded prepare's.** Tiles follow the rows of ``pairs.csv``; splits
  are drawn per slide from its own cores and the config's seed, so a slide gets the same
  train/val/test cores whichever shard prepared it, and nothing is split again.
* **Refused, with the folder named:** a part that is unfinished (its shard is still running or was
  interrupted: rerun it), parts of different configs or modalities, a slide in two parts, a missing
  shard, and a STORE that already holds another store (a prepare's, or a merge of other parts).
* **Interrupted merges** never leave a store that opens (``merge.json`` says ``merging`` until the
  end); rerunning the command finishes it. Rerunning after a merge does nothing unless a part
  changed (a failed pair fixed and its shard rerun): then the store is merged again.
* Pairs that failed in their shards are listed in ``STORE/pairs.csv`` as failed and reported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from stainldm.data.merge import merge_stores
from stainldm.data.pair_reports import summary_lines


def add_parser(sub, common) -> None:
    p = sub.add_parser("merge-stores", parents=[common], help="merge the store parts of a sharded prepare",
                       description="Assemble the parts that `stainldm prepare --shard i/n --out STORE` wrote "
                                   "(STORE/parts/shard-i-of-n) into the tile store STORE that training reads. "
                                   "Tiles are hard-linked, not copied. Rerunning finishes an interrupted merge.")
    p.add_argument("store", type=Path, metavar="STORE", help="the merged store folder (the sharded prepare's --out)")
    p.add_argument("parts", type=Path, nargs="*", metavar="PART",
                   help="stores to merge, in this order (default: every STORE/parts/shard-i-of-n, all n of them)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    bars = []  # opened once the parts are checked and the tiles are being placed

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=f"merge {args.store.name}", unit="tile", disable=args.quiet,
                             leave=False))
        bars[0].update(done - bars[0].n)

    try:
        result = merge_stores(args.store, args.parts or None, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if result.already:
        print(f"{args.store}: already merged from these {result.parts} parts; nothing to do")
    for line in summary_lines(args.store, pairs_done=result.pairs_done):
        print(line)
    if not result.already:
        placed = result.placed
        print(f"merged {result.parts} parts: {result.tiles} tiles; chunk files hard-linked {placed['linked']}, "
              f"copied {placed['copied']}, re-encoded {placed['recoded']}")
    if result.pairs_failed:
        print(f"warning: {len(result.pairs_failed)} pairs failed in their shards and have no tiles "
              f"({', '.join(result.pairs_failed)}; see {args.store / 'pairs.csv'}): fix them, rerun their shards, "
              "then merge again", file=sys.stderr)
    return 0
