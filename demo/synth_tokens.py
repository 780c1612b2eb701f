"""Synthetic token outputs, written without the codec: random codes through `ShardWriter` and commit records
through `RunState`, as a worker and the driver write them. The reading side's tests and benchmarks use these
to build outputs of any shape (shard and row-group sizes, row lengths) in seconds."""

from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.config import OutputConfig
from pipeline.runstate import RunState, ShardRecord
from pipeline.schema import describe, output_schema, schema_to_text
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
    storage = Storage(url)
    schema = output_schema([])
    header = {"identity": {"synthetic": True}, "codec": {"spec": "synthetic"}, "bandwidth": 0.0,
              "num_codebooks": num_codebooks, "frame_rate": FRAME_RATE, "codebook_size": codebook_size, "config": {},
              "output_schema": schema_to_text(schema), "output_columns": describe(schema)}
    state = RunState.open(storage, header, OutputConfig(dir=url, summary_interval_s=10**9))
    rng = np.random.default_rng(seed)
    written: dict[str, np.ndarray] = {}
    try:
        for i, rows in enumerate(shard_rows):
            shard_id = f"s{i:06d}"
            writer = ShardWriter(storage, shard_id, f"synthetic/{shard_id}", schema)
            for j, frames in enumerate(lengths(rng, rows, i)):
                codes = rng.integers(0, codebook_size, (num_codebooks, int(frames))).astype(np.int16)
                key = f"{shard_id}/{j:05d}"
                writer.add(key, codes, int(frames) / FRAME_RATE, {})
                written[key] = codes
            published = writer.publish()
            frames = int(sum(c.shape[1] for c in writer.codes))
            record = ShardRecord(shard_id, writer.source, "done", samples_read=rows, rows=rows,
                                 audio_seconds=frames / FRAME_RATE, frames=frames, encoded_frames=frames,
                                 tokens=frames * num_codebooks, files=published["files"], sha256=published["sha256"],
                                 row_groups={} if legacy else published["row_groups"])
            state.commit(record)
    finally:
        state.close()
    return written
