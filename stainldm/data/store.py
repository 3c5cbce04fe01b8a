"""The paired tile store: registered unstained/stained tiles, one row of metadata per tile.

Format (a contract other tools read)::

    STORE/tiles.zarr      zarr v3 group: `unstained` (N, H, W, C_in) uint8|uint16,
                                         `stained`   (N, H, W, 3) uint8, one chunk per tile
    STORE/tiles.csv       row i describes tile i: slide_id, core, split, x, y, mpp,
                          tissue_fraction, sim_before, sim_after  (x, y: unstained level-0 px)
    STORE/pairs.csv       one row per slide pair: status (done/failed), tiles, seconds, error
    STORE/cores.geojson, cores.csv, registration.csv, prepare.yaml   (written by `prepare`)
    STORE/parts/shard-I-of-N/   one complete store per shard of a sharded `prepare`
    STORE/merge.json            a store merged from parts: which ones, and whether the merge is done

``tiles.csv`` is the commit log: tiles are appended to the zarr arrays first, then their rows to
the CSV (flushed and fsynced). Opening a store for writing truncates the arrays to the CSV's row
count, so tiles of a pair interrupted half-way are dropped and that pair is redone. A store whose
``merge.json`` does not say ``done`` is an unfinished merge and does not open.

Chunk files are never rewritten in place (zarr writes a new file and renames it over the old one;
shrinking an array deletes its files), so a merge may hard-link a part's chunk files into the
merged store (:func:`place_tiles`): later writes to either store never change the other.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stainldm.errors import InputError
from stainldm.files import atomic_write_bytes, atomic_write_csv, ensure_writable_folder

TILE_COLUMNS = ("slide_id", "core", "split", "x", "y", "mpp", "tissue_fraction", "sim_before", "sim_after")
PAIR_COLUMNS = ("slide_id", "unstained", "stained", "status", "tiles", "seconds", "error")
SPLITS = ("train", "val", "test")
ARRAYS = ("unstained", "stained")
PARTS_FOLDER = "parts"  # STORE/parts/shard-I-of-N: the stores of a sharded prepare
MERGE_RECORD = "merge.json"  # STORE/merge.json: the parts a merged store was made from


@dataclass(frozen=True)
class TileRow:
    """Metadata of one tile (a row of ``tiles.csv``)."""

    slide_id: str
    core: str
    split: str
    x: int
    y: int
    mpp: float
    tissue_fraction: float
    sim_before: float
    sim_after: float

    def as_csv(self) -> list[str]:
        return [self.slide_id, self.core, self.split, str(self.x), str(self.y), f"{self.mpp:.6g}",
                f"{self.tissue_fraction:.4f}", f"{self.sim_before:.4f}", f"{self.sim_after:.4f}"]


class TileStore:
    """A paired tile store on disk. Open with :meth:`create` (writing) or :meth:`open` (reading)."""

    def __init__(self, root: Path, group, rows: list[TileRow], *, writable: bool):
        self.root = root
        self._group = group
        self.unstained = group["unstained"]
        self.stained = group["stained"]
        self.rows = rows
        self.writable = writable
        self._fast: tuple | None = None

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | os.PathLike, *, tile_px: int, channels_in: int, dtype_in: str,
               channel_names: Sequence[str] | None = None) -> TileStore:
        """Opens ``root`` for appending, creating it if needed; recovers from an interrupted write.

        Args:
            channel_names: the unstained channels' names (recorded; training copies them into
                model.json, and staining picks a slide's channels by them).

        Raises:
            InputError: the folder exists with a store of another tile size, channel count or channel
                names, or cannot be written.
        """
        root = Path(root)
        try:
            ensure_writable_folder(root)
        except OSError as exc:
            raise InputError(f"{root}: cannot write the tile store there ({exc.strerror}); choose another "
                             "folder") from exc
        zpath = root / "tiles.zarr"
        if zpath.exists():
            store = cls.open(root, writable=True)
            have = (store.unstained.shape[1], store.unstained.shape[3], str(store.unstained.dtype))
            want = (tile_px, channels_in, str(np.dtype(dtype_in)))
            if have != want:
                raise InputError(f"{root}: holds tiles of {have[0]} px, {have[1]} channels, {have[2]}; this run makes "
                                 f"{want[0]} px, {want[1]} channels, {want[2]} — use a new folder for this store")
            if channel_names and store.channel_names and tuple(channel_names) != store.channel_names:
                raise InputError(f"{root}: holds channels {', '.join(store.channel_names)}, this slide gives "
                                 f"{', '.join(channel_names)}; choose them by name with `channels` (in the store's "
                                 "order) or use a new folder")
            store._recover()
            return store
        group = create_tile_arrays(zpath, tile_px=tile_px, channels_in=channels_in, dtype_in=dtype_in,
                                   channel_names=channel_names)
        _write_csv_header(root / "tiles.csv", TILE_COLUMNS)
        return cls(root, group, [], writable=True)

    @classmethod
    def open(cls, root: str | os.PathLike, *, writable: bool = False) -> TileStore:
        """Opens an existing store (read-only by default).

        Raises:
            InputError: ``root`` is not a tile store, or its CSV and arrays disagree.
        """
        import zarr

        root = Path(root)
        zpath, cpath = root / "tiles.zarr", root / "tiles.csv"
        if merge_status(root) not in (None, "done"):
            raise InputError(f"{root}: holds an unfinished merge of store parts (interrupted, or still running); "
                             f"rerun `stainldm merge-stores {root}` to finish it")
        if not zpath.is_dir() or not cpath.is_file():
            if (root / PARTS_FOLDER).is_dir():
                raise InputError(f"{root}: holds the parts of a sharded prepare ({root / PARTS_FOLDER}) but no "
                                 f"merged store yet; run `stainldm merge-stores {root}` once every shard is done")
            raise InputError(f"{root}: not a tile store (needs tiles.zarr and tiles.csv); create one with "
                             "`stainldm prepare`")
        try:
            group = zarr.open_group(str(zpath), mode="r+" if writable else "r")
            group["unstained"], group["stained"]
        except Exception as exc:
            raise InputError(f"{zpath}: cannot open the tile arrays ({type(exc).__name__}: {exc})") from exc
        rows = read_tile_rows(cpath)
        store = cls(root, group, rows, writable=writable)
        if not writable and store.unstained.shape[0] < len(rows):
            raise InputError(f"{root}: tiles.csv lists {len(rows)} tiles but tiles.zarr holds "
                             f"{store.unstained.shape[0]}; rerun `stainldm prepare` on this store to repair it")
        return store

    def _recover(self) -> None:
        n = len(self.rows)
        for arr in (self.unstained, self.stained):
            if arr.shape[0] != n:
                arr.resize((n, *arr.shape[1:]))

    # -- writing ------------------------------------------------------------------------------
    def append(self, unstained: np.ndarray, stained: np.ndarray, rows: Sequence[TileRow]) -> None:
        """Appends tiles (arrays first, then their CSV rows, which commits them)."""
        if not self.writable:
            raise InputError(f"{self.root}: store opened read-only")
        n = len(rows)
        if unstained.shape[0] != n or stained.shape[0] != n:
            raise ValueError(f"append: {unstained.shape[0]}/{stained.shape[0]} tiles for {n} rows")
        if n == 0:
            return
        start = len(self.rows)
        for arr, data in ((self.unstained, unstained), (self.stained, stained)):
            arr.resize((start + n, *arr.shape[1:]))
            arr[start : start + n] = data
        with open(self.root / "tiles.csv", "a", newline="") as fh:
            writer = csv.writer(fh)
            for row in rows:
                writer.writerow(row.as_csv())
            fh.flush()
            os.fsync(fh.fileno())
        self.rows.extend(rows)

    def truncate(self, n: int) -> None:
        """Keeps the first ``n`` tiles (drops the rest of the CSV, then of the arrays)."""
        if not self.writable:
            raise InputError(f"{self.root}: store opened read-only")
        atomic_write_csv(self.root / "tiles.csv", [TILE_COLUMNS, *(row.as_csv() for row in self.rows[:n])])
        del self.rows[n:]
        self._recover()

    # -- reading ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tile_px(self) -> int:
        return int(self.unstained.shape[1])

    @property
    def channels_in(self) -> int:
        return int(self.unstained.shape[3])

    @property
    def channel_names(self) -> tuple[str, ...] | None:
        """The unstained channels' names, as prepare recorded them (None in stores made before)."""
        names = self._group.attrs.get("channel_names")
        return tuple(names) if names else None

    def indices(self, split: str | None = None) -> np.ndarray:
        """Row indices of one split (all rows when None).

        Raises:
            InputError: the split name is unknown or the store has no tile in it.
        """
        if split is None:
            return np.arange(len(self.rows))
        if split not in SPLITS:
            raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        idx = np.array([i for i, r in enumerate(self.rows) if r.split == split], dtype=np.int64)
        if idx.size == 0:
            counts = {s: sum(r.split == s for r in self.rows) for s in SPLITS}
            raise InputError(f"{self.root}: no tiles in split '{split}' (store has {counts}); change the split "
                             "fractions in the prepare config, or train on another split")
        return idx

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tile ``i`` as (unstained (H, W, C_in), stained (H, W, 3)).

        Raises:
            IndexError: ``i`` is not a committed tile.
        """
        if not 0 <= i < len(self.rows):
            raise IndexError(f"{self.root}: tile {i} out of range (the store holds {len(self.rows)})")
        if self._fast is None:
            self._fast = (_TileChunks.for_array(self.root / "tiles.zarr" / "unstained", self.unstained),
                          _TileChunks.for_array(self.root / "tiles.zarr" / "stained", self.stained))
        fu, fs = self._fast
        u = fu.read(i) if fu is not None else np.asarray(self.unstained[i])
        s = fs.read(i) if fs is not None else np.asarray(self.stained[i])
        return u, s


class _TileChunks:
    """Reads one-tile chunks of a zarr v3 array straight from disk (bytes + zstd codecs).

    zarr 3 routes every read through its asyncio thread (~1 ms a call here); a training loader
    reads two tiles per item, so for arrays this store writes (chunk = one tile, codecs bytes+zstd,
    default "/" keys) the chunk file is read and decompressed directly. Anything else uses zarr.
    """

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: np.dtype, fill, codec):
        self.folder, self.shape, self.dtype, self.fill, self.codec = folder, shape, dtype, fill, codec

    @classmethod
    def for_array(cls, folder: Path, arr) -> _TileChunks | None:
        import json as _json

        try:
            meta = _json.loads((folder / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        chunk = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
        names = [c["name"] for c in meta.get("codecs", [])]
        key = meta.get("chunk_key_encoding", {})
        if chunk != (1, *arr.shape[1:]) or key.get("name") != "default" or \
                key.get("configuration", {}).get("separator", "/") != "/":
            return None
        if names == ["bytes", "zstd"]:
            from numcodecs import Zstd

            codec = Zstd()
        elif names == ["bytes"]:
            codec = None
        else:
            return None
        endian = meta["codecs"][0].get("configuration", {}).get("endian", "little")
        dtype = np.dtype(arr.dtype).newbyteorder("<" if endian == "little" else ">")
        return cls(folder, tuple(arr.shape[1:]), dtype, meta.get("fill_value", 0), codec)

    def read(self, i: int) -> np.ndarray:
        path = self.folder / "c" / str(i) / "0" / "0" / "0"
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return np.full(self.shape, self.fill, dtype=self.dtype.newbyteorder("="))
        if self.codec is not None:
            raw = self.codec.decode(raw)
        return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape).astype(self.dtype.newbyteorder("="), copy=False)


def create_tile_arrays(zpath: Path, *, tile_px: int, channels_in: int, dtype_in: str, n: int = 0,
                       channel_names: Sequence[str] | None = None):
    """Creates (replacing) the store's zarr group at ``zpath`` with ``n`` tiles of fill (zeros), one chunk a
    tile; the group's attributes record ``channel_names``.

    Returns:
        the zarr group, open for writing.
    """
    import zarr

    group = zarr.open_group(str(zpath), mode="w")
    if channel_names:
        group.attrs["channel_names"] = list(channel_names)
    for name, c, dt in (("unstained", channels_in, dtype_in), ("stained", 3, "uint8")):
        group.create_array(name, shape=(n, tile_px, tile_px, c), chunks=(1, tile_px, tile_px, c), dtype=dt,
                           fill_value=0)
    return group


def place_tiles(src: TileStore, dst_root: Path, moves: Sequence[tuple[int, int]]) -> dict[str, int]:
    """Puts tile ``i`` of ``src`` at index ``j`` of the store arrays in ``dst_root/tiles.zarr`` (already
    sized, e.g. by :func:`create_tile_arrays`) for every ``(i, j)`` of ``moves``; no CSV is written.

    Where both arrays keep one tile per chunk file with the same codecs (stores this module made),
    the chunk file is hard-linked (no tile bytes are copied; the chunk files are never rewritten in
    place, so the stores stay independent) or, where the file system cannot link (another device),
    copied byte for byte; otherwise the tile is decoded and written through zarr. A target chunk file
    already there is kept, so an interrupted placement can be rerun with the same ``moves``.

    Returns:
        chunk files (two per tile, fewer for all-zero tiles that zarr does not store) by how they were
        placed: ``{"linked": .., "copied": .., "recoded": ..}``.
    """
    import zarr

    counts = {"linked": 0, "copied": 0, "recoded": 0}
    dst = zarr.open_group(str(dst_root / "tiles.zarr"), mode="r+")
    for name in ARRAYS:
        s_dir, d_dir = src.root / "tiles.zarr" / name, dst_root / "tiles.zarr" / name
        if not _same_chunk_files(s_dir, d_dir, src._group[name]):
            arr = dst[name]
            for i, j in moves:
                arr[j] = src._group[name][i]
            counts["recoded"] += len(moves)
            continue
        rest = ["0"] * (src._group[name].ndim - 1)
        for i, j in moves:
            s_file, d_file = s_dir.joinpath("c", str(i), *rest), d_dir.joinpath("c", str(j), *rest)
            if not s_file.is_file() or d_file.is_file():  # an all-fill tile (no file), or placed before
                continue
            d_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(s_file, d_file)
                counts["linked"] += 1
            except OSError:  # another file system, or one without hard links
                atomic_write_bytes(d_file, s_file.read_bytes())
                counts["copied"] += 1
    return counts


def _same_chunk_files(src_dir: Path, dst_dir: Path, src_arr) -> bool:
    """Whether a chunk file of ``src_dir``'s array is one of ``dst_dir``'s as it stands (one tile a
    chunk, the same dtype, codecs, fill and key encoding; only the shapes differ)."""
    try:
        a, b = (json.loads((d / "zarr.json").read_text()) for d in (src_dir, dst_dir))
    except (OSError, ValueError):
        return False
    ignore = ("shape", "attributes")
    same = {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}
    return same and _TileChunks.for_array(src_dir, src_arr) is not None


def merge_status(root: Path) -> str | None:
    """``merge.json``'s status in ``root`` (``merging`` or ``done``), or None when it has none."""
    try:
        return str(json.loads((Path(root) / MERGE_RECORD).read_text()).get("status"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return "unreadable"


def read_tile_rows(path: Path) -> list[TileRow]:
    """Parses ``tiles.csv`` (raising InputError naming the line on a malformed row)."""
    rows: list[TileRow] = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(header) != TILE_COLUMNS:
            raise InputError(f"{path}: expected the header {','.join(TILE_COLUMNS)}")
        for lineno, rec in enumerate(reader, start=2):
            if not rec:
                continue
            try:
                rows.append(TileRow(rec[0], rec[1], rec[2], int(rec[3]), int(rec[4]), float(rec[5]), float(rec[6]),
                                    float(rec[7]), float(rec[8])))
            except (ValueError, IndexError) as exc:
                raise InputError(f"{path}:{lineno}: malformed row {rec!r}") from exc
    return rows


def _write_csv_header(path: Path, columns: Sequence[str]) -> None:
    atomic_write_csv(path, [columns])


def read_pairs(path: Path) -> dict[str, dict[str, str]]:
    """``pairs.csv`` as slide_id -> row (empty when missing)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        return {r["slide_id"]: r for r in csv.DictReader(fh)}


def write_pairs(path: Path, pairs: dict[str, dict[str, str]]) -> None:
    """Rewrites ``pairs.csv`` atomically."""
    atomic_write_csv(path, [PAIR_COLUMNS, *([row.get(k, "") for k in PAIR_COLUMNS] for row in pairs.values())])
