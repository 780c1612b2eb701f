"""Rows of one shard -> one Parquet file under data/, error records -> one JSONL file under errors/."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from codec.hashing import sha256_file

from .storage import Storage

SCHEMA_VERSION = 1
BASE_COLUMNS = ("key", "codes", "num_frames", "num_codebooks", "duration_s", "source")
ROW_GROUP_ROWS = 1024


@dataclass
class ErrorRecord:
    key: str | None  # None for a shard-level error
    shard: str
    source: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def codes_array(codes: list[np.ndarray]) -> pa.Array:
    """list<list<int16>> (outer: codebook, inner: frame) built from flat buffers, not Python lists."""
    flat = np.concatenate([c.reshape(-1) for c in codes]) if codes else np.zeros(0, np.int16)
    inner_sizes = np.concatenate([np.full(c.shape[0], c.shape[1]) for c in codes]) if codes else np.zeros(0)
    inner_offsets = np.concatenate([[0], np.cumsum(inner_sizes)]).astype(np.int32)
    outer_offsets = np.concatenate([[0], np.cumsum([c.shape[0] for c in codes])]).astype(np.int32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat.astype(np.int16)))
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


class ShardWriter:
    """Collects a shard's rows in input order and publishes them as one file when the shard ends.

    A shard's codes are small (8 codebooks x 25 frames/s x 2 bytes = 400 B per audio second), so
    holding them until the end is cheap and lets the file appear whole or not at all.
    """

    def __init__(self, storage: Storage, shard_id: str, source: str, compression: str = "zstd"):
        self.storage, self.shard_id, self.source, self.compression = storage, shard_id, source, compression
        self.keys: list[str] = []
        self.codes: list[np.ndarray] = []
        self.durations: list[float] = []
        self.metadata: list[dict] = []
        self.errors: list[ErrorRecord] = []

    def add(self, key: str, codes: np.ndarray, duration_s: float, metadata: dict) -> None:
        self.keys.append(key)
        self.codes.append(codes)
        self.durations.append(duration_s)
        self.metadata.append(metadata)

    def add_error(self, key: str | None, reason: str, detail: str = "") -> None:
        self.errors.append(ErrorRecord(key, self.shard_id, self.source, reason, detail))

    def table(self) -> pa.Table:
        columns = {
            "key": pa.array(self.keys, pa.string()),
            "codes": codes_array(self.codes),
            "num_frames": pa.array([c.shape[1] for c in self.codes], pa.int32()),
            "num_codebooks": pa.array([c.shape[0] for c in self.codes], pa.int16()),
            "duration_s": pa.array(self.durations, pa.float32()),
            "source": pa.array([self.source] * len(self.keys), pa.string()),
        }
        names = sorted({name for meta in self.metadata for name in meta})
        for name in names:
            column = name if name not in columns else f"meta_{name}"
            columns[column] = pa.array([meta.get(name) for meta in self.metadata])
        return pa.table(columns)

    def publish(self) -> dict:
        """Write data/ and errors/ files; returns what the manifest records for them."""
        files, checksums = [], {}
        with tempfile.NamedTemporaryFile(suffix=".parquet", delete=False) as tmp:
            local = tmp.name
        compression = None if self.compression == "none" else self.compression
        pq.write_table(self.table(), local, compression=compression, row_group_size=ROW_GROUP_ROWS)
        data_name = f"data/{self.shard_id}.parquet"
        checksums[data_name] = sha256_file(local)
        self.storage.put_file(local, data_name)
        files.append(data_name)
        error_name = f"errors/{self.shard_id}.jsonl"
        if self.errors:
            lines = "".join(json.dumps(e.as_dict()) + "\n" for e in self.errors).encode()
            self.storage.write_bytes(error_name, lines)
            files.append(error_name)
        else:
            self.storage.remove(error_name)  # a clean redo of a shard that once failed
        return {"files": files, "sha256": checksums}
