"""The bundled real H&E sample is the file data/README.md describes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cmu_sample_matches_the_recorded_sha256(cmu_path):
    recorded = re.search(r"sha256 \| `([0-9a-f]{64})`", (ROOT / "data" / "README.md").read_text())
    assert recorded, "data/README.md must record the sample's sha256"
    assert hashlib.sha256(cmu_path.read_bytes()).hexdigest() == recorded.group(1)
