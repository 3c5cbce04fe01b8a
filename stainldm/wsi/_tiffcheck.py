"""Cheap integrity check of a TIFF before reading it: every strip/tile must lie inside the file.

A truncated copy (an interrupted transfer from the scanner) opens fine in most readers and only
fails, or reads as black, deep inside a batch; checking offsets against the file size at open
turns that into one clear error up front.
"""

from __future__ import annotations

import struct
from pathlib import Path

from stainldm.errors import SlideFormatError


def check_ifd_chain(path: Path, *, max_pages: int = 100_000) -> None:
    """Walks the chain of image directories; every offset must point inside the file.

    tifffile and OpenSlide stop quietly at a directory offset past the end of a truncated file
    and show fewer pages; this turns that into an error.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        count_fmt, entry_size, next_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
        count_size, next_size = struct.calcsize(count_fmt), struct.calcsize(next_fmt)
        seen = 0
        while offset:
            if offset + count_size > size:
                raise SlideFormatError(
                    f"{path}: truncated — image directory {seen} starts at byte {offset} but the file has "
                    f"{size} bytes; copy the slide again from the scanner")
            fh.seek(offset)
            (count,) = struct.unpack(order + count_fmt, fh.read(count_size))
            end = offset + count_size + count * entry_size + next_size
            if end > size:
                raise SlideFormatError(
                    f"{path}: truncated — image directory {seen} ends at byte {end} but the file has "
                    f"{size} bytes; copy the slide again from the scanner")
            fh.seek(offset + count_size + count * entry_size)
            (offset,) = struct.unpack(order + next_fmt, fh.read(next_size))
            seen += 1
            if seen > max_pages:
                raise SlideFormatError(f"{path}: more than {max_pages} image directories (a loop?); "
                                       "the file is corrupt")


def check_tiff_pages(path: Path, pages) -> None:
    """Raises SlideFormatError if the directory chain or any page's image data runs past the end."""
    check_ifd_chain(path)
    size = path.stat().st_size
    try:
        for i, page in enumerate(pages):
            offsets, counts = page.dataoffsets, page.databytecounts
            if not offsets:
                continue
            end = max(o + c for o, c in zip(offsets, counts, strict=True))
            if end > size:
                raise SlideFormatError(
                    f"{path}: truncated — image data of page {i} ends at byte {end} but the file has "
                    f"{size} bytes; copy the slide again from the scanner"
                )
            if any(c == 0 for c in counts):
                raise SlideFormatError(f"{path}: page {i} has empty tiles (an incomplete write); "
                                       "export or copy the slide again")
    except SlideFormatError:
        raise
    except Exception as exc:
        raise SlideFormatError(f"{path}: cannot read the TIFF's directory ({type(exc).__name__}: {exc}); "
                               "the file is corrupt or truncated") from exc


def check_tiff_file(path: Path) -> None:
    """Opens ``path`` with tifffile just to check page integrity (for files OpenSlide will read)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            check_tiff_pages(path, tif.pages)
    except SlideFormatError:
        raise
    except Exception as exc:
        raise SlideFormatError(f"{path}: tifffile cannot parse its TIFF structure ({type(exc).__name__}: "
                               f"{exc}); the file is corrupt or truncated") from exc
