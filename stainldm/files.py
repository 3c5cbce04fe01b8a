"""Small file helpers shared by the library and the pipelines."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """A binary file to write ``path`` through: it is written under a temporary name beside
    ``path``, flushed to disk and renamed when the block ends, so a reader (or a rerun after a
    crash) sees the old file or the whole new one, never a part. If the block raises, the temporary
    file is removed and ``path`` is untouched. Streams: nothing is held in memory."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable_folder(path: Path) -> Path:
    """Creates ``path`` (with its parents) and checks that a file can be created in it, so a run
    fails before any work rather than at its first write.

    Raises:
        OSError: the folder cannot be created or written (callers turn it into an error that names
            their parameter).
    """
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through :func:`atomic_writer`."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: Path, rows: Iterable[Sequence[Any]], *, lineterminator: str = "\r\n") -> None:
    """:func:`atomic_write_bytes` of CSV rows (the first is usually the header).

    Args:
        path: the file to write.
        rows: the rows, each a sequence of values (quoted as the csv module does when needed).
        lineterminator: the csv module's default (``"\r\n"``); ``"\n"`` for files that
            have always been written with Unix line ends.
    """
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator=lineterminator).writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_write_json(path: Path, data: Any, *, indent: int | None = None) -> None:
    """:func:`atomic_write_text` of ``json.dumps(data, indent=indent)`` (no newline at the end)."""
    atomic_write_text(path, json.dumps(data, indent=indent))


def atomic_write_png(path: Path, image: Any) -> None:
    """:func:`atomic_write_bytes` of an ``(H, W[, C])`` uint8 array as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
