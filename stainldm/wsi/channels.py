"""Choosing which channels of a slide to use, by name or index.

    with open_slide("scan.qptiff") as slide:
        dapi_fitc = select_channels(slide, "DAPI,FITC")       # or [0, 1], or "0,1"
        tile = dapi_fitc.read_region((x, y), (256, 256))       # (256, 256, 2), DAPI first

A fluorescence scanner writes 2–6 named channels (DAPI, FITC, Cy3, …); a lab trains on some of
them, in a fixed order. :func:`select_channels` wraps an open slide so that every read returns only
those channels, in the order asked, and ``channel_names`` matches; the rest (levels, mpp, background,
associated images) is the slide's own. Backends that store each channel apart decode only the
channels chosen.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import numpy as np

from stainldm.errors import InputError
from stainldm.wsi.slide import SlideReader

_INDEX = re.compile(r"-?\d+")


def parse_channels(spec: str | Sequence[str | int]) -> list[str | int]:
    """Channel names and indices from ``"DAPI,FITC"``, ``"0,2"`` or a sequence of them.

    Tokens of digits (``"2"``, ``"-1"``) are indices; anything else is a name, with surrounding
    spaces removed (names may contain inner spaces: ``"CD8 (Opal 540)"``).

    Raises:
        InputError: the spec is empty or has an empty entry (``"DAPI,,FITC"``).
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str | int] = []
    for item in items:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            out.append(int(item))
            continue
        token = str(item).strip()
        if not token:
            raise InputError(f"`channels` '{spec if isinstance(spec, str) else ','.join(map(str, items))}' has an "
                             "empty entry; give channel names or indices separated by commas, e.g. DAPI,FITC")
        out.append(int(token) if _INDEX.fullmatch(token) else token)
    if not out:
        raise InputError("`channels` is empty; give channel names or indices separated by commas, e.g. DAPI,FITC")
    return out


def resolve_channels(names: Sequence[str], spec: str | Sequence[str | int], *, slide: str = "the slide") -> list[int]:
    """The indices ``spec`` selects among channels called ``names``, in the order of ``spec``.

    A name matches exactly, else case-insensitively when that match is unique (``dapi`` for
    ``DAPI``).

    Args:
        names: the slide's channel names, one per channel.
        spec: what :func:`parse_channels` accepts.
        slide: the slide's name, for messages.

    Raises:
        InputError: a name the slide lacks (the message lists the missing names and the slide's
            channels), an index out of range, the same channel twice, or a name that two of the
            slide's channels share.
    """
    wanted = parse_channels(spec)
    listing = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    missing = missing_channels(names, [w for w in wanted if isinstance(w, str)])
    if missing:
        raise InputError(f"{slide}: `channels` asks for {', '.join(repr(m) for m in missing)}, which the slide "
                         f"lacks; it has {len(names)} channel{'s' if len(names) != 1 else ''}: {listing}")
    out: list[int] = []
    for w in wanted:
        if isinstance(w, int):
            if not 0 <= w < len(names):
                raise InputError(f"{slide}: `channels` index {w} is out of range; the slide has {len(names)} "
                                 f"channel{'s' if len(names) != 1 else ''} (0 to {len(names) - 1}): {listing}")
            index = w
        else:
            found = _find(names, w)
            assert found is not None
            if len(found) > 1:
                raise InputError(f"{slide}: {len(found)} channels are named {names[found[0]]!r} "
                                 f"(indices {', '.join(map(str, found))}); select them by index in `channels`")
            index = found[0]
        if index in out:
            raise InputError(f"{slide}: `channels` selects channel {index} ({names[index]}) twice; "
                             "list each channel once")
        out.append(index)
    return out


def missing_channels(names: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The names of ``wanted`` that no channel called ``names`` answers to (exactly, else
    case-insensitively), in the order of ``wanted``."""
    return [w for w in wanted if _find(names, w) is None]


def _find(names: Sequence[str], name: str) -> list[int] | None:
    """Indices of channels called ``name`` (exactly, else case-insensitively), or None."""
    exact = [i for i, n in enumerate(names) if n == name]
    if exact:
        return exact
    folded = [i for i, n in enumerate(names) if n.casefold() == name.casefold()]
    return folded or None


def select_channels(slide: SlideReader, spec: str | Sequence[str | int] | None) -> SlideReader:
    """``slide`` reading only the channels ``spec`` names, in that order.

    Args:
        slide: an open slide; closing the result closes it.
        spec: names and/or indices (see :func:`parse_channels`); None or all channels in their
            own order returns ``slide`` itself.

    Raises:
        InputError: as :func:`resolve_channels`.
    """
    if spec is None:
        return slide
    index = resolve_channels(slide.channel_names, spec, slide=slide.name)
    if index == list(range(slide.channels)):
        return slide
    return ChannelSelection(slide, index)


class ChannelSelection(SlideReader):
    """A view of a slide with some of its channels, in a chosen order (see :func:`select_channels`).

    Attributes:
        base: the slide read.
        indices: the base slide's channel index of each channel here.
    """

    def __init__(self, base: SlideReader, indices: Sequence[int]):
        self.base = base
        self.indices = tuple(int(i) for i in indices)
        self.path = base.path
        self.vendor = base.vendor
        self.level_dimensions = base.level_dimensions
        self.level_downsamples = base.level_downsamples
        self.mpp = base.mpp
        self.dtype = base.dtype
        self.fluorescence = base.fluorescence
        self.channels = len(self.indices)
        self.channel_names = tuple(base.channel_names[i] for i in self.indices)

    @property
    def background(self) -> int:
        return self.base.background

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self.base._read_channels(level, x, y, w, h, self.indices)

    def _read_channels(self, level: int, x: int, y: int, w: int, h: int, channels: Sequence[int]) -> np.ndarray:
        return self.base._read_channels(level, x, y, w, h, [self.indices[c] for c in channels])

    @property
    def associated_names(self) -> tuple[str, ...]:
        return self.base.associated_names

    def associated_image(self, name: str) -> np.ndarray:
        return self.base.associated_image(name)

    def close(self) -> None:
        self.base.close()

    def __getattr__(self, name: str):
        # Backend extras (``properties``, ``description``) come from the slide itself.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)


def channel_modality(slide: SlideReader) -> Literal["he", "brightfield", "fluorescence"]:
    """What a slide's channels hold: fluorescence, unstained brightfield, or H&E.

    The file's word first (:attr:`SlideReader.fluorescence`: QPTIFF and CZI channel pages, OME
    emission wavelengths); else more than 3 channels, 2 channels or a non-uint8 type mean
    fluorescence; else the pixels decide, as tissue detection does
    (:func:`stainldm.wsi.tissue.guess_modality` on a small thumbnail: dark glass is fluorescence).
    """
    if slide.fluorescence:
        return "fluorescence"
    if slide.fluorescence is None and (slide.channels not in (1, 3) or slide.dtype != np.uint8):
        return "fluorescence"
    from stainldm.wsi.tissue import guess_modality

    guess = guess_modality(slide.thumbnail(max_px=256))
    return "brightfield" if guess == "fluorescence" and slide.fluorescence is False else guess
