"""Synthetic token outputs, written without the codec: random codes through `ShardWriter` and commit records
through `RunState`, as a worker and the driver write them. The reading side's tests and benchmarks use these
to build outputs of any shape (shard and row-group sizes, row lengths) in seconds."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from pipeline.config import OutputConfig
from pipeline.runstate import RunState, ShardRecord
from pipeline.schema import column_lines, output_schema, schema_to_text
from pipeline.storage import Storage
from pipeline.writer import ShardWriter

FRAME_RATE = 25.0


Lengths = Callable[[np.random.Generator, int, int], np.ndarray]  # (rng, rows, shard index) -> frames of each row


def uniform_lengths(low: int = 1, high: int = 40) -> Lengths:
    return lambda rng, n, shard: rng.integers(low, high + 1, n)


def write_token_output(url: str, shard_rows: list[int], num_codebooks: int = 2, codebook_size: int = 1024,
                       lengths: Lengths = uniform_lengths(),
                       seed: int = 0, legacy: bool = False) -> dict[str, np.ndarray]:
    """An output at `url` with one done shard per entry of `shard_rows` (that many rows; row lengths in frames
    drawn by `lengths(rng, n, shard index)`). `legacy`: commit records without row groups, as outputs written before
    records carried them. Returns {key: codes [num_codebooks, num_frames] int16}."""
    rng = np.random.default_rng(seed)
    shards = []
    for i, rows in enumerate(shard_rows):
        shards.append([(f"s{i:06d}/{j:05d}", rng.integers(0, codebook_size, (num_codebooks, int(frames))).astype(np.int16), {})
                       for j, frames in enumerate(lengths(rng, rows, i))])
    write_rows(url, shards, num_codebooks, codebook_size, legacy=legacy)
    return {key: codes for rows in shards for key, codes, _ in rows}


def write_rows(url: str, shards: list[list[tuple[str, np.ndarray, dict]]], num_codebooks: int, codebook_size: int = 1024,
               fields: list[pa.Field] | None = None, identity: dict | None = None, legacy: bool = False) -> None:
    """An output at `url` with one done shard per entry of `shards`, holding the given rows (key, codes
    [num_codebooks, frames] int16, metadata such as {"text": ...}); `fields`: the source's declared metadata
    columns; `identity`: what the manifest records of the run (`convention`, ...)."""
    storage = Storage(url)
    schema = output_schema(fields or [])
    header = {"identity": {"synthetic": True, **(identity or {})}, "codec": {"spec": "synthetic"}, "bandwidth": 0.0,
              "num_codebooks": num_codebooks, "frame_rate": FRAME_RATE, "codebook_size": codebook_size, "config": {},
              "output_schema": schema_to_text(schema), "output_columns": column_lines(schema)}
    state = RunState.open(storage, header, OutputConfig(dir=url, summary_interval_s=10**9))
    try:
        for i, rows in enumerate(shards):
            shard_id = f"s{i:06d}"
            writer = ShardWriter(storage, shard_id, f"synthetic/{shard_id}", schema)
            for key, codes, metadata in rows:
                writer.add(key, codes, codes.shape[1] / FRAME_RATE, metadata)
            published = writer.publish()
            frames = int(sum(s.codes.shape[1] for s in writer.samples))
            record = ShardRecord(shard_id, writer.source, "done", samples_read=len(rows), rows=len(rows),
                                 audio_seconds=frames / FRAME_RATE, frames=frames, encoded_frames=frames,
                                 tokens=frames * num_codebooks, files=published.files, sha256=published.sha256,
                                 row_groups={} if legacy else published.row_groups)
            state.commit(record)
    finally:
        state.close()
