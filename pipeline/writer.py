"""Rows of one shard -> one Parquet file under data/ (in the run's schema), error records -> one JSONL
file under errors/. A shard that fails publishes no rows: only its shard-level error record (an earlier
attempt's data file is removed first)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .schema import NUM_FRAMES, EncodedSample, build_table, row_group_summary
from .storage import Storage
from .urls import redact_text

if TYPE_CHECKING:
    from .audio.decode import Audio

ROW_GROUP_ROWS = 1024


@dataclass(frozen=True)
class Published:
    """What a shard's publish wrote, as its commit record keeps it (`files`, `sha256`, `row_groups`: {data file:
    [[rows, summed num_frames, length bins], ...] per row group, see `schema.row_group_summary`}, from which readers
    plan their work without opening the files), and the bytes written (for the metrics)."""

    files: list
    sha256: dict
    row_groups: dict
    bytes: int


@dataclass
class ErrorRecord:
    key: str | None  # None for a shard-level error
    shard: str
    source: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict:
        """As written: URLs in the detail (a path cell, a client's message) without their secrets."""
        return dict(self.__dict__, detail=redact_text(self.detail))


def data_file(shard_id: str) -> str:
    return f"data/{shard_id}.parquet"


class ShardWriter:
    """Collects a shard's rows in input order and publishes them as one file when the shard ends.

    A shard's codes are small (8 codebooks x 25 frames/s x 2 bytes = 400 B per audio second), so
    holding them until the end is cheap and lets the file appear whole or not at all.
    """

    def __init__(self, storage: Storage, shard_id: str, source: str, schema: pa.Schema, compression: str = "zstd"):
        self.storage, self.shard_id, self.source, self.compression = storage, shard_id, source, compression
        self.schema = schema
        self.samples: list[EncodedSample] = []  # the rows, as `schema.COLUMNS` makes their values
        self.errors: list[ErrorRecord] = []

    def add(self, key: str, codes: np.ndarray, duration_s: float, metadata: dict, audio: Audio | None = None) -> None:
        """One encoded clip; `audio`: its decoded audio, whose facts (not its wave) columns may be made from."""
        self.samples.append(EncodedSample(key, codes, duration_s, self.source, metadata,
                                          source_rate=audio.source_rate if audio is not None else None,
                                          source_channels=audio.source_channels if audio is not None else None))

    def add_error(self, key: str | None, reason: str, detail: str = "") -> None:
        self.errors.append(ErrorRecord(key, self.shard_id, self.source, reason, detail))

    def table(self) -> pa.Table:
        return build_table(self.schema, self.samples)

    def publish(self) -> Published:
        """Write data/ and errors/ files."""
        files, checksums = [], {}
        with tempfile.NamedTemporaryFile(suffix=".parquet", delete=False) as tmp:
            local = tmp.name
        compression = None if self.compression == "none" else self.compression
        table = self.table()
        pq.write_table(table, local, compression=compression, row_group_size=ROW_GROUP_ROWS)
        data_name = data_file(self.shard_id)
        # read whole: the file is the compressed table this writer holds in memory already
        checksums[data_name] = hashlib.sha256(Path(local).read_bytes()).hexdigest()
        row_groups = {data_name: _row_groups(local, table.column(NUM_FRAMES).to_numpy())}
        written = os.path.getsize(local)
        self.storage.put_file(local, data_name)
        files.append(data_name)
        error_name = f"errors/{self.shard_id}.jsonl"
        if self.errors:
            lines = "".join(json.dumps(e.as_dict()) + "\n" for e in self.errors).encode()
            self.storage.write_bytes(error_name, lines)
            files.append(error_name)
            written += len(lines)
        else:
            self.storage.remove(error_name)  # a clean redo of a shard that once failed
        return Published(files, checksums, row_groups, written)


def _row_groups(local: str, num_frames: np.ndarray) -> list[list]:
    """The summary of each row group as written (sizes read back from the file's own footer)."""
    metadata = pq.ParquetFile(local).metadata
    bounds = np.cumsum([0] + [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
    return [row_group_summary(num_frames[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def publish_shard_failure(storage: Storage, shard_id: str, source: str, reason: str, detail: str = "") -> list[str]:
    """A failed shard: no rows in data/, one shard-level error record standing for all of its samples. An earlier
    attempt may have published its data file (and then failed, or its commit did): removed before the failure is
    committed, so readers of data/*.parquet never read rows of a failed shard."""
    storage.remove_file(data_file(shard_id))
    error_name = f"errors/{shard_id}.jsonl"
    record = ErrorRecord(None, shard_id, source, reason, detail)
    storage.write_bytes(error_name, (json.dumps(record.as_dict()) + "\n").encode())
    return [error_name]
