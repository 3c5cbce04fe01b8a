"""``stainldm info SLIDE...``: what a slide holds (format, levels, mpp, channels, associated images)."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from stainldm.errors import StainLDMError, one_line, with_flags
from stainldm.wsi.channels import channel_modality, parse_channels, select_channels
from stainldm.wsi.reader import SlideReader, open_slide


def add_parser(sub, common) -> None:
    p = sub.add_parser("info", parents=[common], help="print format, levels, mpp and channels of slides",
                       description="Print format/vendor, levels (dimensions, downsample), mpp, each channel's "
                                   "name, dtype and modality (fluorescence, brightfield, he) and associated "
                                   "images of each slide. Unreadable slides print a one-line error; the others "
                                   "are still shown.")
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (or DICOM folders)")
    p.add_argument("--channels", metavar="NAME,NAME",
                   help="show only these channels, in this order: names or 0-based indices, comma-separated "
                        "(e.g. DAPI,FITC or 0,2); a name the slide lacks is an error listing those it has")
    p.add_argument("--mpp", type=float, help="µm/px of slides that do not record it (a CZI without scaling)")
    p.set_defaults(run=run)


def describe(slide: SlideReader, *, selected_from: SlideReader | None = None) -> str:
    """A human-readable, multi-line description of an open slide.

    Args:
        slide: the slide (or a channel selection of it).
        selected_from: the whole slide when ``slide`` is a selection of its channels.
    """
    w, h = slide.dimensions
    mpp = f"{slide.mpp[0]:.4g} x {slide.mpp[1]:.4g} µm/px" if slide.mpp else "unknown"
    modality = channel_modality(slide)
    lines = [
        f"{slide.path}",
        f"  format      {slide.vendor} (reader: {type(selected_from or slide).__name__})",
        f"  size        {w} x {h} px" + (f" = {w * slide.mpp[0] / 1000:.2f} x {h * slide.mpp[1] / 1000:.2f} mm"
                                         if slide.mpp else ""),
        f"  mpp         {mpp}",
        f"  modality    {modality}",
        f"  channels    {slide.channels} ({', '.join(slide.channel_names)}), {np.dtype(slide.dtype).name}"
        + (f"; selected from {selected_from.channels}" if selected_from is not None else ""),
    ]
    indices = getattr(slide, "indices", range(slide.channels))
    for i, (index, name) in enumerate(zip(indices, slide.channel_names, strict=True)):
        source = f" (channel {index} of the slide)" if selected_from is not None else ""
        lines.append(f"    {i}: {name}{source}")
    lines.append(f"  levels      {slide.level_count}")
    for i, ((lw, lh), ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples, strict=True)):
        lines.append(f"    {i}: {lw} x {lh} px, downsample {ds:.4g}")
    lines.append(f"  associated  {', '.join(slide.associated_names) or 'none'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    failed = 0
    flags = getattr(args, "flags", {})
    spec = parse_channels(args.channels) if args.channels is not None else None  # a bad list fails once, up front
    for i, path in enumerate(args.slides):
        try:
            with open_slide(path, mpp=args.mpp) as slide:
                chosen = select_channels(slide, spec)
                print(("\n" if i else "") + describe(chosen, selected_from=slide if chosen is not slide else None))
        except StainLDMError as exc:
            if args.debug:
                raise
            failed += 1
            print(f"error: {with_flags(one_line(exc), flags)}", file=sys.stderr)
    return 2 if failed else 0
