"""stainldm.files: atomic writers and the SHA-256 helper, on real files."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest
from PIL import Image

from stainldm.files import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_png,
    atomic_write_text,
    ensure_writable_folder,
    sha256_file,
)


def test_atomic_writers_replace_the_whole_file_and_leave_no_partial_file(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old contents, longer than the new ones")
    atomic_write_text(path, "new ✓")
    assert path.read_text(encoding="utf-8") == "new ✓"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    rows = [["slide", "status"], ["a,b.svs", "done"], ["c.svs", ""]]
    atomic_write_csv(tmp_path / "m.csv", rows)
    with open(tmp_path / "m.csv", newline="") as fh:
        assert list(csv.reader(fh)) == rows  # quoting survives the round trip
    img = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    atomic_write_png(tmp_path / "t.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "t.png")), img)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.csv", "t.png"]


def test_csv_line_ends_and_json_formatting(tmp_path):
    atomic_write_csv(tmp_path / "crlf.csv", [["a", "b"], ["1", ""]])
    assert (tmp_path / "crlf.csv").read_bytes() == b"a,b\r\n1,\r\n"  # the csv module's default
    atomic_write_csv(tmp_path / "lf.csv", [["a", "b"], ["1", "x,y"]], lineterminator="\n")
    assert (tmp_path / "lf.csv").read_bytes() == b'a,b\n1,"x,y"\n'
    atomic_write_json(tmp_path / "a.json", {"k": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{"k": [1, 2]}'  # json.dumps, no newline at the end
    atomic_write_json(tmp_path / "b.json", {"k": [1]}, indent=1)
    assert (tmp_path / "b.json").read_text() == '{\n "k": [\n  1\n ]\n}'
    assert not list(tmp_path.glob(".*"))


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "t.png"
    atomic_write_png(path, np.zeros((2, 2), np.uint8))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        atomic_write_png(path, np.zeros((2, 2), object))  # PIL cannot write this
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]


def test_sha256_file_matches_hashlib_across_blocks(tmp_path):
    data = np.random.default_rng(1).bytes((1 << 20) + 17)  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_ensure_writable_folder_creates_it_leaves_nothing_and_raises_where_it_cannot(tmp_path):
    folder = ensure_writable_folder(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []  # the probe file is gone
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(OSError):
        ensure_writable_folder(tmp_path / "a-file" / "out")
