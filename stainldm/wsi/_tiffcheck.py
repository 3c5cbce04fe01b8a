"""Cheap integrity check of a TIFF before reading it: every strip/tile must lie inside the file.

A truncated copy (an interrupted transfer from the scanner) opens fine in most readers and only
fails, or reads as black, deep inside a batch; checking offsets against the file size at open
turns that into one clear error up front.
"""

from __future__ import annotations

from pathlib import Path

from stainldm.errors import SlideFormatError


def check_tiff_pages(path: Path, pages) -> None:
    """Raises SlideFormatError if any page's image data ends past the end of the file."""
    size = path.stat().st_size
    try:
        for i, page in enumerate(pages):
            offsets, counts = page.dataoffsets, page.databytecounts
            if not offsets:
                continue
            end = max(o + c for o, c in zip(offsets, counts))
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
                               "the file is corrupt or truncated") from None


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
                               f"{exc}); the file is corrupt or truncated") from None
