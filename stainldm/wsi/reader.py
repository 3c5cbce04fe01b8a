"""One reading API over OpenSlide, tifffile+zarr and plain images.

    with open_slide("core.svs") as slide:
        tile = slide.read_region((x, y), (256, 256), level=0)     # (256, 256, C) uint8/uint16
        same = slide.read_at_mpp((x, y), (256, 256), mpp=0.5)     # resampled to 0.5 µm/px

Coordinates follow OpenSlide: ``xy`` is the top-left corner in level-0 pixels, ``size_wh`` is in
pixels of the level (or target mpp) read. Images come back ``H×W×C`` numpy arrays; RGBA is
composited on white; areas outside the slide read as background (white for brightfield, 0 for
fluorescence).

Which backend opens a file is decided by its content, not its name:

* vendor formats OpenSlide knows (SVS, NDPI, MRXS, SCN, BIF, DICOM, ...) -> :class:`OpenSlideReader`;
* Akoya/PerkinElmer QPTIFF (a page per fluorescence channel, PerkinElmer XML naming each)
  -> :class:`QptiffReader`;
* other TIFFs (generic pyramids, OME-TIFF with SubIFD levels, multi-channel uint16 fluorescence)
  -> :class:`TiffReader`, reading tiles through tifffile's zarr store (MONAI's tifffile backend
  decodes a whole level per patch, so it is not used);
* Zeiss CZI -> :class:`stainldm.wsi.czi.CziReader` (czifile), or OpenSlide when czifile is not
  installed;
* PNG/JPEG -> :class:`ArrayReader` in memory.

The API the backends share, and :class:`ArrayReader`, live in :mod:`stainldm.wsi.slide`; what a
file says about itself (mpp, channel names, axes) is parsed in :mod:`stainldm.wsi.metadata`;
choosing channels by name is :mod:`stainldm.wsi.channels`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stainldm.errors import InputError, SlideFormatError
from stainldm.wsi._tiffcheck import check_tiff_file, check_tiff_pages
from stainldm.wsi._tiles import DirectTiles
from stainldm.wsi.metadata import (
    axes_plan,
    mpp_tuple,
    ome_fluorescence,
    openslide_mpp,
    qpi_channel_names,
    qpi_description,
    resolution_mpp,
    tiff_channel_names,
    tiff_description,
    tiff_mpp,
)
from stainldm.wsi.slide import ArrayReader, SlideReader, composite_on_white

# SlideReader and ArrayReader live in stainldm.wsi.slide; importers have always found them here.
__all__ = ["ArrayReader", "OpenSlideReader", "QptiffReader", "SlideReader", "TiffReader", "open_slide"]

# Vendor formats OpenSlide handles better than a plain TIFF reader (metadata, associated images,
# non-TIFF containers). "generic-tiff" is left to tifffile, which reads it faster (see benchmarks/io.py).
_OPENSLIDE_VENDORS = {"aperio", "hamamatsu", "leica", "mirax", "philips", "sakura", "trestle", "ventana",
                      "dicom", "synthetic", "zeiss"}
_TIFF_EXTS = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".btf", ".tf8", ".qptiff"}
_PNG_EXTS = {".png"}
_JPEG_EXTS = {".jpg", ".jpeg"}
_ASSOCIATED = {"label", "macro", "thumbnail", "overview"}


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------
class OpenSlideReader(SlideReader):
    """Vendor formats through OpenSlide (RGBA composited on white -> RGB uint8)."""

    def __init__(self, path: Path, *, mpp: float | tuple[float, float] | None = None):
        import openslide

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideFormatError(f"{path}: OpenSlide cannot read it ({exc})") from exc
        props = self._slide.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "openslide")
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = mpp_tuple(mpp) or openslide_mpp(props)
        self.channels, self.dtype, self.channel_names = 3, np.dtype(np.uint8), ("R", "G", "B")
        self.properties = dict(props)

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        ds = self.level_downsamples[level]
        try:
            rgba = np.asarray(self._slide.read_region((round(x * ds), round(y * ds)), level, (w, h)))
        except openslide.OpenSlideError as exc:
            raise SlideFormatError(f"{self.path}: OpenSlide failed to decode a region ({exc}); the file may be "
                                   "corrupt or truncated — copy it again from the scanner") from exc
        return composite_on_white(rgba)

    @property
    def associated_names(self) -> tuple[str, ...]:
        return tuple(self._slide.associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._slide.associated_images:
            return super().associated_image(name)
        return composite_on_white(np.asarray(self._slide.associated_images[name]))

    def close(self) -> None:
        self._slide.close()


class _TiffFileReader(SlideReader):
    """What every reader over a ``tifffile.TiffFile`` (``_tif``, file descriptor ``_fd``, associated
    pages ``_associated``) shares: its associated images and closing."""

    @property
    def associated_names(self) -> tuple[str, ...]:
        return tuple(self._associated)

    def associated_image(self, name: str) -> np.ndarray:
        if name not in self._associated:
            return super().associated_image(name)
        img = self._associated[name].asarray()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        return composite_on_white(img) if img.shape[-1] == 4 else img

    def close(self) -> None:
        self._tif.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class TiffReader(_TiffFileReader):
    """TIFFs through tifffile's zarr store: generic and OME pyramids (chained or SubIFD levels),
    any channel count, uint8/uint16/float. Reads only the tiles a region touches."""

    def __init__(self, path: Path, *, mpp: float | tuple[float, float] | None = None):
        import tifffile
        import zarr

        self.path = path
        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            levels = list(series.levels)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise SlideFormatError(f"{path}: tifffile cannot read it ({type(exc).__name__}: {exc})") from exc
        check_tiff_pages(path, self._tif.pages)
        axes = series.axes
        self._axes = axes
        self._plan = axes_plan(axes, series.shape, path)
        try:
            store = self._tif.aszarr(series=0)
            root = zarr.open(store, mode="r")
        except Exception as exc:
            raise SlideFormatError(f"{path}: tifffile cannot map its tiles ({type(exc).__name__}: {exc})") from exc
        self._arrays = [root[str(i)] for i in range(len(levels))] if len(levels) > 1 or not hasattr(root, "shape") else [root]
        y_ax, x_ax = axes.index("Y"), axes.index("X")
        dims = [(int(lv.shape[x_ax]), int(lv.shape[y_ax])) for lv in levels]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(float(np.mean([dims[0][0] / d[0], dims[0][1] / d[1]])) for d in dims)
        self.dtype = np.dtype(series.dtype)
        self.channels = self._plan.channels
        self.vendor = "ome-tiff" if self._tif.is_ome else ("aperio" if self._tif.is_svs else "generic-tiff")
        desc = tiff_description(self._tif)
        self.channel_names = tiff_channel_names(self._tif, desc, self.channels)
        self.mpp = mpp_tuple(mpp) or tiff_mpp(self._tif, desc)
        if self._tif.is_ome and self._tif.ome_metadata:
            self.fluorescence = ome_fluorescence(self._tif.ome_metadata)
        self.description = desc
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._direct = [DirectTiles.for_level(lv, self._fd, channels=self.channels, background=self.background)
                        if self._plan.channel_axis in (None, "S") else None for lv in levels]
        self._associated = {
            s.name.lower(): s for s in self._tif.series[1:] if s.name and s.name.lower() in _ASSOCIATED
        }

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        direct = self._direct[level]
        if direct is not None:
            try:
                return direct.read(x, y, w, h)
            except Exception as exc:
                raise SlideFormatError(f"{self.path}: failed to decode tiles at level {level} "
                                       f"({type(exc).__name__}: {exc}); the file may be corrupt") from exc
        index = []
        for ax in self._axes:
            if ax == "Y":
                index.append(slice(y, y + h))
            elif ax == "X":
                index.append(slice(x, x + w))
            elif ax == self._plan.channel_axis:
                index.append(slice(None))
            else:
                index.append(0)
        try:
            data = np.asarray(self._arrays[level][tuple(index)])
        except Exception as exc:
            raise SlideFormatError(f"{self.path}: failed to decode tiles at level {level} "
                                   f"({type(exc).__name__}: {exc}); the file may be corrupt") from exc
        return self._plan.to_hwc(data)



class QptiffReader(_TiffFileReader):
    """Akoya (PerkinElmer) Vectra/PhenoImager QPTIFF: one page per fluorescence channel (or one RGB
    page for brightfield) at full resolution and again at each reduced resolution, each page with a
    PerkinElmer XML description naming its channel and its ``ImageType``. Levels are assembled from
    those XMLs (tifffile's own QPI series assumes exact halvings); thumbnail, overview and label
    pages are associated images, never levels. Only the pages of the channels read are decoded."""

    def __init__(self, path: Path, *, mpp: float | tuple[float, float] | None = None):
        import tifffile

        self.path = path
        try:
            self._tif = tifffile.TiffFile(str(path))
            pages = list(self._tif.pages)
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise SlideFormatError(f"{path}: tifffile cannot read it ({type(exc).__name__}: {exc})") from exc
        check_tiff_pages(path, self._tif.pages)
        full, reduced, self._associated = [], [], {}
        for page in pages:
            fields = qpi_description(page.description or "") or {}
            kind = fields.get("ImageType", "").lower()
            if kind == "fullresolution" or (not kind and (not full or page.shape == full[0][0].shape)
                                            and not reduced and not page.is_reduced):
                full.append((page, fields))
            elif kind == "reducedresolution" or (not kind and page.is_reduced and page.samplesperpixel == 1):
                reduced.append(page)
            elif kind in ("thumbnail", "overview", "macro", "label"):
                self._associated.setdefault("macro" if kind == "overview" else kind, page)
        if not full:
            raise SlideFormatError(f"{path}: a QPTIFF without a full-resolution page; export the scan again")
        first = full[0][0]
        rgb = len(full) == 1 and first.samplesperpixel == 3
        if not rgb and any(p.samplesperpixel != 1 or p.shape != first.shape or p.dtype != first.dtype
                           for p, _ in full):
            raise SlideFormatError(f"{path}: QPTIFF full-resolution pages differ in size, type or samples per "
                                   "pixel; export the scan again from the scanner software")
        levels = [[p for p, _ in full]]
        for page in reduced:  # consecutive runs of equal size, one page per channel
            if len(levels) > 1 and len(levels[-1]) < len(full) and page.shape == levels[-1][0].shape:
                levels[-1].append(page)
            elif page.shape[:2] != levels[-1][0].shape[:2]:
                levels.append([page])
        levels = sorted((lv for lv in levels if len(lv) == len(full)), key=lambda lv: -lv[0].imagewidth)
        self.vendor = "qptiff"
        self.dtype = np.dtype(first.dtype)
        self.channels = 3 if rgb else len(full)
        self.fluorescence = not rgb
        self.channel_names = ("R", "G", "B") if rgb else qpi_channel_names([f for _, f in full])
        dims = [(lv[0].imagewidth, lv[0].imagelength) for lv in levels]
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(float(np.mean([dims[0][0] / d[0], dims[0][1] / d[1]])) for d in dims)
        tags = first.tags
        self.mpp = mpp_tuple(mpp) or (resolution_mpp(int(tags["ResolutionUnit"].value), tags["XResolution"].value,
                                                     tags["YResolution"].value if "YResolution" in tags else None)
                                      if "XResolution" in tags and "ResolutionUnit" in tags else None)
        self.description = first.description or ""
        self._fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._pages = [[self._page_reader(p) for p in lv] for lv in levels]

    def _page_reader(self, page):
        samples = page.samplesperpixel
        if page.is_tiled and page.tiledepth == 1 and page.imagedepth == 1 and (samples == 1 or page.planarconfig == 1):
            return DirectTiles(page, self._fd, channels=samples, background=self.background).read
        import zarr

        array = zarr.open(page.aszarr(), mode="r")
        return lambda x, y, w, h: np.asarray(array[y : y + h, x : x + w]).reshape(h, w, samples)

    def _read_channels(self, level: int, x: int, y: int, w: int, h: int, channels) -> np.ndarray:
        readers = self._pages[level]
        try:
            if len(readers) == 1:  # one RGB page
                return readers[0](x, y, w, h)[..., list(channels)]
            return np.concatenate([readers[c](x, y, w, h) for c in channels], axis=2)
        except Exception as exc:
            raise SlideFormatError(f"{self.path}: failed to decode tiles at level {level} "
                                   f"({type(exc).__name__}: {exc}); the file may be corrupt") from exc

    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._read_channels(level, x, y, w, h, range(self.channels))



# ---------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------
def open_slide(path: str | os.PathLike, *, mpp: float | tuple[float, float] | None = None) -> SlideReader:
    """Opens any supported slide or image, choosing the reader by the file's content.

    Args:
        path: a slide file, a DICOM WSI folder, or a PNG/JPEG/TIFF image.
        mpp: µm per level-0 pixel, overriding (or supplying) what the file records.

    Raises:
        InputError: the path does not exist, or is a folder that is not a DICOM series.
        SlideFormatError: the file exists but is empty, truncated, not an image, or its content
            contradicts its extension (a PNG renamed ``.svs``); the message names what was tried.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        dcm = sorted(p for p in path.iterdir() if p.suffix.lower() == ".dcm" or _is_dicom(p))
        if not dcm:
            raise InputError(f"{path}: is a folder but not a DICOM WSI series (no .dcm files); "
                             "pass a slide file, or a folder of DICOM files")
        return _open_openslide(dcm[0], mpp, also_tried="")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied; make the file readable")
    size = path.stat().st_size
    if size == 0:
        raise SlideFormatError(f"{path}: the file is empty (0 bytes); copy the slide again")
    kind = _sniff(path)
    ext = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(".ome.tif") else path.suffix.lower()
    expected = "tiff" if ext in _TIFF_EXTS or ext == ".ome.tif" else "png" if ext in _PNG_EXTS else \
        "jpeg" if ext in _JPEG_EXTS else "czi" if ext == ".czi" else None
    if expected is not None and kind is not None and kind != expected:
        raise SlideFormatError(
            f"{path}: the extension says {ext} ({expected.upper()}) but the content is a {kind.upper()} "
            f"file; rename it to its real type or re-export the slide"
        )
    if kind in ("png", "jpeg"):
        return _open_image(path, kind, mpp)
    if kind == "tiff":
        return _open_tiff(path, mpp)
    if kind == "czi":
        return _open_czi(path, mpp)
    # Not a TIFF/PNG/JPEG: OpenSlide's other containers (MRXS, VMS, DICOM) or nothing at all.
    return _open_openslide(path, mpp, also_tried="; it is not a TIFF, PNG or JPEG file either")


def _open_tiff(path: Path, mpp) -> SlideReader:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError:
        vendor = None
    if vendor in _OPENSLIDE_VENDORS:
        check_tiff_file(path)
        return _open_openslide(path, mpp, also_tried="")
    if _is_qptiff(path):
        return QptiffReader(path, mpp=mpp)
    try:
        return TiffReader(path, mpp=mpp)
    except SlideFormatError as tiff_exc:
        if vendor is None:
            raise SlideFormatError(f"{tiff_exc}; OpenSlide does not recognise it either") from tiff_exc
        raise


def _is_qptiff(path: Path) -> bool:
    """Whether the first page is an Akoya/PerkinElmer QPTIFF page (its Software or its XML says so)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            return page.software.startswith("PerkinElmer-QPI") or qpi_description(page.description or "") is not None
    except Exception:  # TiffReader reports what is wrong with the file
        return False


def _open_czi(path: Path, mpp) -> SlideReader:
    try:
        import czifile  # noqa: F401
    except ImportError as exc:  # not installed: OpenSlide reads some brightfield CZI
        hint = f"reading CZI needs the czifile package ({exc}): pip install 'czifile==2019.7.2.3'"
        try:
            return _open_openslide(path, mpp, also_tried="")
        except SlideFormatError as os_exc:
            raise SlideFormatError(f"{os_exc}; {hint}") from os_exc
    from stainldm.wsi.czi import CziReader

    return CziReader(path, mpp=mpp)


def _open_openslide(path: Path, mpp, *, also_tried: str) -> SlideReader:
    import openslide

    try:
        vendor = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as exc:
        raise SlideFormatError(f"{path}: OpenSlide cannot read it ({exc}){also_tried}") from exc
    if vendor is None:
        raise SlideFormatError(f"{path}: not a slide OpenSlide recognises{also_tried}; "
                               "supported: SVS, NDPI, MRXS, SCN, BIF, DICOM, (OME-)TIFF, PNG, JPEG")
    return OpenSlideReader(path, mpp=mpp)


def _open_image(path: Path, kind: str, mpp) -> SlideReader:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.MAX_IMAGE_PIXELS = None
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LA", "1"):
                im = im.convert("RGB" if im.mode != "LA" else "RGBA")
            array = np.asarray(im)
            dpi = im.info.get("dpi")
    except Exception as exc:
        raise SlideFormatError(f"{path}: cannot decode the {kind.upper()} image ({type(exc).__name__}: {exc}); "
                               "the file may be truncated or corrupt") from exc
    if array.dtype == np.int32:  # PIL mode "I" for 16-bit PNGs
        array = array.astype(np.uint16)
    file_mpp = mpp_tuple(mpp)
    if file_mpp is None and dpi and dpi[0] and dpi[0] > 1000:  # only trust resolutions of a microscope
        file_mpp = (25400.0 / dpi[0], 25400.0 / dpi[1])
    return ArrayReader(array, mpp=file_mpp, path=path, vendor=kind)


def _sniff(path: Path) -> str | None:
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:10] == b"ZISRAWFILE":
        return "czi"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def _is_dicom(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 132 and _sniff(path) == "dicom"
