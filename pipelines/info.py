"""``stainldm info SLIDE...``: what a slide holds (format, levels, mpp, channels, associated images)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from stainldm.errors import StainLDMError, one_line
from stainldm.wsi.reader import SlideReader, open_slide


def add_parser(sub, common) -> None:
    p = sub.add_parser("info", parents=[common], help="print format, levels, mpp and channels of slides",
                       description="Print format/vendor, levels (dimensions, downsample), mpp, channels, "
                                   "dtype and associated images of each slide. Unreadable slides print "
                                   "a one-line error; the others are still shown.")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (or DICOM folders)")
    p.set_defaults(run=run)


def describe(slide: SlideReader) -> str:
    """A human-readable, multi-line description of an open slide."""
    w, h = slide.dimensions
    mpp = f"{slide.mpp[0]:.4g} x {slide.mpp[1]:.4g} µm/px" if slide.mpp else "unknown"
    lines = [
        f"{slide.path}",
        f"  format      {slide.vendor} (reader: {type(slide).__name__})",
        f"  size        {w} x {h} px" + (f" = {w * slide.mpp[0] / 1000:.2f} x {h * slide.mpp[1] / 1000:.2f} mm"
                                         if slide.mpp else ""),
        f"  mpp         {mpp}",
        f"  channels    {slide.channels} ({', '.join(slide.channel_names)}), {np.dtype(slide.dtype).name}",
        f"  levels      {slide.level_count}",
    ]
    for i, ((lw, lh), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples, strict=True)):
        lines.append(f"    {i}: {lw} x {lh} px, downsample {ds:.4g}")
    lines.append(f"  associated  {', '.join(slide.associated_names) or 'none'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    failed = 0
    for i, path in enumerate(args.slides):
        try:
            with open_slide(path) as slide:
                print(("\n" if i else "") + describe(slide))
        except StainLDMError as exc:
            if args.debug:
                raise
            failed += 1
            print(f"error: {one_line(exc)}", file=sys.stderr)
    return 2 if failed else 0
