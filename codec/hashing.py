"""sha256 of a file, read in blocks (checkpoints run to gigabytes)."""

from __future__ import annotations

import hashlib


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
