"""Hugging Face datasets: a `save_to_disk` folder (one shard per Arrow file), Parquet files (one
shard per file), or a hub dataset name (one shard per `rows_per_shard` rows).

Arrow and Parquet are read with pyarrow, not `datasets`' decoders, so audio bytes reach our own
decoder unchanged and no sample is decoded twice.
"""

from __future__ import annotations

import json
from typing import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..audio import SampleError
from ..config import ConfigError, SourceConfig
from . import RawSample, Shard, ShardError, full_url, glob_with_sizes, local_size, shard_id

BATCH_ROWS = 64


def list_hf_shards(config: SourceConfig) -> list[Shard]:
    path = config.path
    fs, root = fsspec.core.url_to_fs(path)

    def url(p: str) -> str:
        return full_url(fs, p)

    if any(ch in path for ch in "*?["):
        files = glob_with_sizes(fs, root)
        if not files:
            raise ConfigError("source.path", f"no files match {path!r}")
        return [Shard(shard_id(url(f)), url(f), _kind_of(f), size=size) for f, size in files]
    if fs.isdir(root):
        if fs.exists(f"{root}/dataset_dict.json"):
            root = f"{root}/{config.split}"
            if not fs.isdir(root):
                raise ConfigError("source.split", f"no split {config.split!r} in {path!r}")
        if fs.exists(f"{root}/state.json"):
            state = json.loads(fs.cat_file(f"{root}/state.json"))
            files = [f"{root}/{entry['filename']}" for entry in state["_data_files"]]
            return [Shard(shard_id(url(f)), url(f), "hf-arrow", size=local_size(fs, f)) for f in files]
        files = glob_with_sizes(fs, f"{root}/**/*.parquet")
        if files:
            return [Shard(shard_id(url(f)), url(f), "hf-parquet", size=size) for f, size in files]
        raise ConfigError("source.path", f"{path!r} holds neither a save_to_disk dataset nor Parquet files")
    if fs.isfile(root):
        return [Shard(shard_id(url(root)), url(root), _kind_of(root), size=local_size(fs, root))]
    return _hub_shards(config)


def _kind_of(path: str) -> str:
    return "hf-arrow" if path.endswith(".arrow") else "hf-parquet"


def _hub_shards(config: SourceConfig) -> list[Shard]:
    import datasets

    try:
        builder = datasets.load_dataset_builder(config.path)
        rows = builder.info.splits[config.split].num_examples
    except Exception as error:  # the hub client raises many types; all mean "cannot find it"
        raise ConfigError("source.path", f"{config.path!r} is no local dataset and the hub says: {error}") from None
    step = config.rows_per_shard
    return [
        Shard(shard_id(config.path, f"-{config.split}-{start}"), config.path, "hf-hub", start, min(rows, start + step))
        for start in range(0, rows, step)
    ]


def _record_batches(shard: Shard, config: SourceConfig) -> Iterator[pa.RecordBatch]:
    if shard.kind == "hf-hub":
        import datasets

        dataset = datasets.load_dataset(config.path, split=config.split)
        table = dataset.data.table.slice(shard.start, shard.stop - shard.start)
        yield from table.to_batches(BATCH_ROWS)
        return
    try:
        handle = fsspec.open(shard.url, "rb").open()
    except FileNotFoundError:
        raise ShardError("missing_shard", shard.url) from None
    with handle:
        try:
            if shard.kind == "hf-arrow":
                reader = pa.ipc.open_stream(handle)
                batches = iter(reader)
            else:
                batches = pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS)
            yield from batches
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
            raise ShardError("corrupt_file", f"{shard.url}: {str(error)[:200]}") from None


def _read_audio_file(path: str) -> bytes:
    try:
        with fsspec.open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise SampleError("missing_audio_file", f"{path}: {error}") from None


def _audio_value(value):
    """Audio cell -> bytes or (array, rate): the datasets Audio struct, raw bytes, a path, or array+rate."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return _read_audio_file(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("array") is not None:
            return np.asarray(value["array"], dtype=np.float32), value.get("sampling_rate")
        if value.get("path"):
            return _read_audio_file(value["path"])
    raise SampleError("no_audio", f"audio cell holds {type(value).__name__}")


def read_hf_shard(shard: Shard, config: SourceConfig) -> Iterator[RawSample]:
    row = shard.start
    for batch in _record_batches(shard, config):
        names = batch.schema.names
        if config.audio_column not in names:
            raise ShardError(
                "missing_audio_column",
                f"no column {config.audio_column!r} in {shard.url} (columns: {names}); set source.audio_column",
            )
        key_column = config.key_column or ("id" if "id" in names else None)
        if key_column is not None and key_column not in names:
            raise ShardError("missing_key_column", f"no column {key_column!r} in {shard.url}; set source.key_column")
        scalars = [
            n
            for n, t in zip(names, batch.schema.types)
            if n != config.audio_column and (pa.types.is_primitive(t) or pa.types.is_string(t) or pa.types.is_large_string(t))
        ]
        columns = {n: batch.column(n).to_pylist() for n in scalars}
        audio = batch.column(config.audio_column).to_pylist()
        for i, cell in enumerate(audio):
            key = str(columns[key_column][i]) if key_column else f"{shard.id}/{row}"
            metadata = {n: columns[n][i] for n in scalars if n != key_column}
            row += 1
            try:
                yield RawSample(key, _audio_value(cell), metadata)
                continue
            except SampleError as error:
                problem = error
            yield RawSample(key, None, metadata, problem)
