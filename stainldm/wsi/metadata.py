"""What slide files say about themselves: resolution (mpp), channel names, image axes.

Pure parsing of metadata the readers hand over — OME-XML, image descriptions (stainldm's own JSON
or Aperio's ``MPP = 0.25``), TIFF resolution tags, OpenSlide properties — with no file access, so
every rule is tested on strings. :func:`tiff_mpp` and :func:`tiff_channel_names` take an open
``tifffile.TiffFile`` and apply the rules in order of trust: OME-XML, then the description, then
the resolution tags.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stainldm.errors import InputError, SlideFormatError

# µm per OME length unit; an unknown unit says nothing usable.
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}
# TIFF ResolutionUnit (2 inch, 3 centimetre) per µm; 1 (NONE) says nothing physical.
_UNITS_PER_UM = {2: 1 / 25400.0, 3: 1 / 10000.0}


def mpp_tuple(mpp: float | Sequence[float] | None) -> tuple[float, float] | None:
    """``(x, y)`` µm per pixel from one number, a one-element sequence or a pair; None stays None.

    Raises:
        InputError: not one or two values, or a value is not a positive finite number.
    """
    if mpp is None:
        return None
    values = [float(mpp)] if isinstance(mpp, (int, float)) else [float(v) for v in mpp]
    if len(values) not in (1, 2):
        raise InputError(f"`mpp` must be one number or an (x, y) pair, got {mpp}")
    mx, my = values if len(values) == 2 else values * 2
    if not (mx > 0 and my > 0 and math.isfinite(mx) and math.isfinite(my)):
        raise InputError(f"`mpp` must be positive, got {mpp}")
    return mx, my


def openslide_mpp(props: Mapping[str, str]) -> tuple[float, float] | None:
    """The mpp in OpenSlide's properties (``openslide.mpp-x``/``-y``), or None when absent or not positive."""
    import openslide

    try:
        mx, my = float(props[openslide.PROPERTY_NAME_MPP_X]), float(props[openslide.PROPERTY_NAME_MPP_Y])
    except (KeyError, ValueError):
        return None
    return (mx, my) if mx > 0 and my > 0 else None


def ome_mpp(ome_xml: str) -> tuple[float, float] | None:
    """``PhysicalSizeX``/``Y`` of the first ``Pixels`` element (µm unless its unit says otherwise).

    Returns:
        ``(x, y)`` µm per pixel, or None when the XML is malformed, lacks a size, or uses an
        unknown unit.
    """
    try:
        root = ET.fromstring(ome_xml)
        pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
        sx, sy = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
        unit = _OME_UNITS_UM.get(pixels.get("PhysicalSizeXUnit", "µm"))
        if sx and sy and unit:
            return float(sx) * unit, float(sy) * unit
    except (ET.ParseError, StopIteration, ValueError):
        pass
    return None


def json_description(desc: str) -> dict[str, Any] | None:
    """The image description as the JSON object stainldm writes, or None when it is not one."""
    if not desc.startswith("{"):
        return None
    try:
        meta = json.loads(desc)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def description_mpp(desc: str) -> tuple[float, float] | None:
    """The mpp an image description records: stainldm's JSON ``"mpp"``, else Aperio's ``MPP = x``.

    Returns:
        ``(x, y)`` µm per pixel, or None when the description has no usable value.
    """
    meta = json_description(desc)
    if meta is not None and "mpp" in meta:
        m = meta["mpp"]
        try:
            return mpp_tuple(m if isinstance(m, (int, float)) else tuple(m))
        except (ValueError, TypeError, InputError):
            pass  # null or unreadable: the Aperio key or the resolution tags may still say
    found = re.search(r"MPP\s*=\s*([0-9.]+)", desc)
    if found and float(found.group(1)) > 0:
        return float(found.group(1)), float(found.group(1))
    return None


def resolution_mpp(unit: int, x_resolution: Any, y_resolution: Any = None) -> tuple[float, float] | None:
    """The mpp of TIFF resolution tags (pixels per unit, a number or a ``(num, den)`` rational).

    Args:
        unit: the ResolutionUnit tag (2 inch, 3 centimetre).
        x_resolution, y_resolution: the XResolution and YResolution tags (y defaults to x).

    Returns:
        ``(x, y)`` µm per pixel, or None for unit NONE, a zero resolution, or one coarser than
        100 µm/px (a 72-dpi screen image would claim 350 µm/px: not a microscope).
    """
    per_um = _UNITS_PER_UM.get(unit)
    xr = _rational(x_resolution)
    yr = _rational(y_resolution) if y_resolution is not None else xr
    if per_um and xr > 0 and yr > 0:
        mx, my = 1 / (xr * per_um), 1 / (yr * per_um)
        if mx < 100:
            return mx, my
    return None


def _rational(value: Any) -> float:
    if isinstance(value, tuple):
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def tiff_description(tif: Any) -> str:
    """The first page's ImageDescription of an open ``tifffile.TiffFile`` ("" when it has none)."""
    return _first_page(tif).description or ""


def tiff_mpp(tif: Any, desc: str) -> tuple[float, float] | None:
    """The mpp an open TIFF records: OME-XML, then the description, then the resolution tags.

    Args:
        tif: an open ``tifffile.TiffFile``.
        desc: its first page's description (:func:`tiff_description`).
    """
    if tif.is_ome and tif.ome_metadata:
        mpp = ome_mpp(tif.ome_metadata)
        if mpp is not None:
            return mpp
    mpp = description_mpp(desc)
    if mpp is not None:
        return mpp
    tags = _first_page(tif).tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        y_res = tags["YResolution"].value if "YResolution" in tags else None
        return resolution_mpp(int(tags["ResolutionUnit"].value), tags["XResolution"].value, y_res)
    return None


def _first_page(tif: Any) -> Any:
    return tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]


def ome_channel_names(ome_xml: str, channels: int) -> tuple[str, ...] | None:
    """Channel names of the first OME ``Image`` (the slide; later images are labels and macros).

    Each ``Channel`` is named by its ``Name``, else its ``Fluor`` (converters often fill only the
    fluorophore); one left unnamed is called by its index (``C2``). An RGB image stores one
    ``Channel`` with ``SamplesPerPixel="3"``, which names no single sample.

    Returns:
        one name per channel, or None when the XML is malformed, the channel count differs from
        ``channels``, or no channel has a name.
    """
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        return None
    found = [el for el in pixels if _local(el.tag) == "Channel"]
    if len(found) != channels:
        return None
    return indexed_names([(el.get("Name") or "").strip() or (el.get("Fluor") or "").strip() for el in found])


def indexed_names(names: list[str]) -> tuple[str, ...] | None:
    """Channel names as a file gives them, an unnamed channel called by its index (``C2``); None when
    the file names none of them (the caller's defaults apply)."""
    if not any(names):
        return None
    return tuple(n or f"C{i}" for i, n in enumerate(names))


def ome_fluorescence(ome_xml: str) -> bool | None:
    """Whether the first OME ``Image`` is fluorescence, as its channels say.

    Returns:
        True when a channel has ``IlluminationType="Fluorescence"``, an ``EmissionWavelength``
        or a ``Fluor``; False when one says ``Transmitted``; None when the XML does not say.
    """
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if _local(el.tag) == "Pixels"), None)
    found = [el for el in pixels if _local(el.tag) == "Channel"] if pixels is not None else []
    if any(el.get("IlluminationType") == "Fluorescence" or el.get("EmissionWavelength") or el.get("Fluor")
           for el in found):
        return True
    if any(el.get("IlluminationType") == "Transmitted" for el in found):
        return False
    return None


def _local(tag: str) -> str:
    """An XML tag without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def qpi_description(desc: str) -> dict[str, str] | None:
    """The fields of a PerkinElmer (Akoya Vectra/PhenoImager) QPTIFF page description.

    Each page of a QPTIFF carries an XML ``<PerkinElmer-QPI-ImageDescription>`` with its
    ``ImageType`` (``FullResolution``, ``ReducedResolution``, ``Thumbnail``, ``Overview``,
    ``Label``) and, for fluorescence channel pages, ``Name`` (the filter or fluorophore: ``DAPI``,
    ``FITC``, ``Opal 520``) and on newer scanners ``Biomarker``. The XML declares utf-16 but is
    stored as ASCII/UTF-8, and a byte-order mark may precede it.

    Returns:
        the element texts of the XML's top level (``{"ImageType": ..., "Name": ...}``, stripped),
        or None when ``desc`` is not such a description.
    """
    text = desc.lstrip("\ufeff").strip()
    if "<PerkinElmer-QPI-ImageDescription" not in text[:300]:
        return None
    text = re.sub(r"^<\?xml[^>]*\?>", "", text).strip()
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return None
    return {_local(el.tag): (el.text or "").strip() for el in root if len(el) == 0}


def qpi_channel_name(fields: Mapping[str, str]) -> str | None:
    """A QPTIFF channel's name: its ``Name``, else its ``Biomarker``; None when it has neither."""
    return fields.get("Name") or fields.get("Biomarker") or None


def qpi_channel_names(pages: Sequence[Mapping[str, str]]) -> tuple[str, ...]:
    """Names of a QPTIFF's channel pages (:func:`qpi_description` of each, in page order).

    Each page is named by :func:`qpi_channel_name`; unnamed pages by their index (``C2``). A
    PhenoCycler (CODEX) scan repeats its filter names cycle after cycle (``Cy5`` five times) while
    its ``Biomarker`` names differ: then the biomarkers name the channels.
    """
    names = [qpi_channel_name(f) or f"C{i}" for i, f in enumerate(pages)]
    markers = [f.get("Biomarker") or "" for f in pages]
    if len(set(names)) < len(names) and all(markers) and len(set(markers)) == len(markers):
        return tuple(markers)
    return tuple(names)


def description_channel_names(desc: str, channels: int) -> tuple[str, ...] | None:
    """The JSON description's ``channel_names``, or None unless it lists ``channels`` of them."""
    meta = json_description(desc)
    names = meta.get("channel_names") if meta is not None else None
    if isinstance(names, list) and len(names) == channels:
        return tuple(str(n) for n in names)
    return None


def tiff_channel_names(tif: Any, desc: str, channels: int) -> tuple[str, ...]:
    """Channel names an open TIFF records (OME-XML, the JSON description, ImageJ ``Labels``), else the defaults."""
    names = None
    if tif.is_ome and tif.ome_metadata:
        names = ome_channel_names(tif.ome_metadata, channels)
    names = names or description_channel_names(desc, channels)
    if names is None and tif.is_imagej:
        labels = (tif.imagej_metadata or {}).get("Labels")
        if isinstance(labels, (list, tuple)) and len(labels) == channels and all(str(v).strip() for v in labels):
            names = tuple(str(v).strip() for v in labels)
    return names or default_channel_names(channels)


def default_channel_names(channels: int) -> tuple[str, ...]:
    """``("R", "G", "B")`` for 3 channels, ``("gray",)`` for 1, else ``("C0", "C1", ...)``."""
    if channels == 3:
        return ("R", "G", "B")
    if channels == 1:
        return ("gray",)
    return tuple(f"C{i}" for i in range(channels))


class AxesPlan:
    """How to turn a tifffile region (in the series' axis order) into ``H×W×C``.

    Attributes:
        axes: the series' axes, e.g. ``"YXS"`` or ``"CYX"``.
        channel_axis: ``"S"``, ``"C"`` or None (one channel).
        channels: samples per pixel.
    """

    def __init__(self, axes: str, channel_axis: str | None, channels: int):
        self.axes, self.channel_axis, self.channels = axes, channel_axis, channels
        kept = [a for a in axes if a in ("Y", "X") or a == channel_axis]
        self._order = [kept.index("Y"), kept.index("X")] + ([kept.index(channel_axis)] if channel_axis else [])

    def to_hwc(self, data: np.ndarray) -> np.ndarray:
        """``data`` indexed with every other axis fixed -> ``(h, w, channels)``."""
        data = np.transpose(data, self._order)
        return data if self.channel_axis else data[..., None]


def axes_plan(axes: str, shape: Sequence[int], path: Path) -> AxesPlan:
    """Which axis holds the channels; refuses z-stacks, time series and two channel axes.

    Args:
        axes: the series' axes.
        shape: the series' shape, one entry per axis.
        path: the file, for messages.

    Raises:
        SlideFormatError: not a 2-D image, both S and C channel axes, or more than one plane.
    """
    if "Y" not in axes or "X" not in axes:
        raise SlideFormatError(f"{path}: the TIFF's main image has axes '{axes}', not a 2-D image")
    channel_axis = None
    for ax in ("S", "C"):
        if ax in axes and shape[axes.index(ax)] > 1:
            if channel_axis is not None:
                raise SlideFormatError(f"{path}: both S and C channel axes in '{axes}'; export a single channel axis")
            channel_axis = ax
    for ax, n in zip(axes, shape, strict=True):
        if ax not in ("Y", "X", channel_axis) and n > 1:
            raise SlideFormatError(f"{path}: has {n} planes along axis '{ax}' (z-stack or time series); "
                                   "export a single plane")
    channels = shape[axes.index(channel_axis)] if channel_axis else 1
    return AxesPlan(axes, channel_axis, int(channels))
