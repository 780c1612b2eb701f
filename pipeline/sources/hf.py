"""Hugging Face datasets: a `save_to_disk` folder (one shard per Arrow file), Parquet files (one
shard per file), or a hub dataset name (one shard per Parquet file of the split, at one commit).

Arrow and Parquet are read with pyarrow, not `datasets`' decoders, so audio bytes reach our own
decoder unchanged and no sample is decoded twice. Memory is bounded by bytes, not rows: a Parquet row group
of more than BATCH_BYTES is read row by row with its pages streamed, a local Arrow file is memory-mapped, and
each audio cell is taken from Arrow's buffers on its own (a large one spilled to a temporary file; hf_cells.py),
never as a batch of Python objects.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Iterator, Optional

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..audio.decode import SampleError
from ..failures import ConfigError
from ..reads import Reads
from .base import (MAX_FILE_BYTES, RawSample, Shard, ShardError, Source, SourceListing, _is_local, full_url,
                   glob_with_sizes, is_pattern, local_size, read_error, shard_id, transient_error)
from .hf_cells import audio_value

BATCH_BYTES = 64 << 20  # a Parquet row group holding more (uncompressed) is read row by row
READ_BUFFER_BYTES = 1 << 20  # Parquet pages stream through a buffer this size: no column chunk is read whole


def shard_kind(path: str) -> str:
    """An HF shard's reader: Arrow IPC files (save_to_disk), else Parquet."""
    return "hf-arrow" if path.endswith(".arrow") else "hf-parquet"


def list_hf_shards(config: HfSource) -> SourceListing:
    path, reads = config.path, Reads.of(config)
    fs, root = fsspec.core.url_to_fs(path)
    revision = None
    if is_pattern(path):
        files = glob_with_sizes(fs, root, reads)
        if not files:
            raise ConfigError("source.path", f"no files match {path!r}")
        shards = [_file_shard(fs, f, size) for f, size in files]
    elif (kind := reads.kind(fs, root)) == "directory":
        shards = _folder_shards(fs, root, config, reads)
    elif kind == "file":
        shards = [_file_shard(fs, root, local_size(fs, root))]
    else:
        shards, revision = _hub_shards(config)
    if config.revision and revision is None:
        raise ConfigError("source.revision", f"applies to hub datasets; {path!r} is a local dataset", "remove it")
    fields, key_column = _declared_fields(shards, config, reads)
    identity = {"kind": "hf", "split": config.split, "audio_column": config.audio_column, "key_column": key_column,
                "revision": revision}
    return SourceListing(shards, identity, fields)


def _file_shard(fs, path: str, size: int, shard_url: str | None = None) -> Shard:
    url = full_url(fs, path)
    return Shard(shard_id(url), shard_url or url, shard_kind(path), size=size)


def _folder_shards(fs, root: str, config: HfSource, reads: Reads) -> list[Shard]:
    if reads.kind(fs, f"{root}/dataset_dict.json"):
        root = f"{root}/{config.split}"
        if reads.kind(fs, root) != "directory":
            raise ConfigError("source.split", f"no split {config.split!r} in {config.path!r}")
    if reads.kind(fs, f"{root}/state.json"):
        state = json.loads(reads.call(fs.cat_file, f"{root}/state.json"))
        return [_file_shard(fs, f"{root}/{e['filename']}", local_size(fs, f"{root}/{e['filename']}"))
                for e in state["_data_files"]]
    found = dict(glob_with_sizes(fs, f"{root}/**/*.parquet", reads))
    if not found:
        raise ConfigError("source.path", f"{config.path!r} holds neither a save_to_disk dataset nor Parquet files")
    files = split_files([f[len(root) + 1:] for f in found], config.split)
    return [_file_shard(fs, f"{root}/{f}", found[f"{root}/{f}"]) for f in files]


# The hub's file layout names splits in a folder (`data/train/...`, `CONFIG/train/...`) or a file name prefix
# (`data/train-00000-of-00004.parquet`); a folder of Parquet files that names no split is one split.
_SPLIT = r"(?:^|/){split}(?:/|[-_.][^/]*$)"
_KNOWN_SPLITS = ("train", "validation", "valid", "dev", "test", "eval")


def split_files(relative: list[str], split: str) -> list[str]:
    """The files of `split` among `relative` paths (sorted); all of them when none names a split."""
    def named(name: str) -> list[str]:
        return [f for f in relative if re.search(_SPLIT.format(split=re.escape(name)), f)]

    chosen = named(split)
    if chosen:
        return sorted(chosen)
    others = sorted({name for name in _KNOWN_SPLITS if named(name)})
    if others:
        raise ConfigError("source.split", f"no files of split {split!r}; the files name the splits {others}",
                          f"set source.split to one of {others}")
    return sorted(relative)


def _hub_shards(config: HfSource) -> tuple[list[Shard], str]:
    """One shard per Parquet file of the split at one commit, streamed with `hf://` by each actor from its
    own file: no actor downloads or prepares the whole dataset."""
    from huggingface_hub import HfApi, constants

    if "/" not in config.path or constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "it is not a hub name (ORG/NAME)"
        raise ConfigError("source.path", f"{config.path!r} is no local dataset, and the hub cannot be asked ({why})",
                          "a save_to_disk folder, Parquet files, or a hub dataset ORG/NAME with the hub reachable")
    try:
        info = HfApi().dataset_info(config.path, revision=config.revision, files_metadata=True)
    except Exception as error:  # the hub client raises many types; all mean "cannot find it"
        raise ConfigError("source.path", f"hub dataset {config.path!r} (revision {config.revision or 'main'}): "
                          f"{str(error).splitlines()[0][:200]}") from None
    sizes = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    parquet = [f for f in sizes if f.endswith(".parquet")]
    if not parquet:
        raise ConfigError(
            "source.path", f"hub dataset {config.path}@{info.sha[:12]} has no Parquet files of its own. The hub's "
            "automatic conversion (refs/convert/parquet) covers only the first GBs of a large dataset, so it is not "
            "used: a run would silently miss the rest",
            "convert it to Parquet (datasets: load_dataset(...).to_parquet, or push_to_hub) and point source.path at "
            "that repo or those files")
    fs_root = f"hf://datasets/{config.path}"
    shards = [Shard(shard_id(f"{fs_root}/{f}"), f"{fs_root}@{info.sha}/{f}", "hf-parquet", size=sizes[f])
              for f in split_files(parquet, config.split)]
    return shards, info.sha


def _open_shard(shard: Shard, reads: Reads):
    try:
        return reads.open(shard.url)
    except FileNotFoundError as error:
        raise read_error(error, shard.url, "missing_shard") from None
    except Exception as error:
        raise read_error(error, shard.url, "unreadable_shard") from None


def _declared_fields(shards: list[Shard], config: HfSource, reads: Reads) -> tuple[list, str | None]:
    """The metadata columns the dataset declares and the key column, read once: from its first readable file
    (an unreadable one becomes that shard's error, not the run's)."""
    for shard in shards:
        try:
            with _open_shard(shard, reads) as handle:
                schema = pa.ipc.open_stream(handle).schema if shard.kind == "hf-arrow" else pq.read_schema(handle)
            break
        except (ShardError, pa.ArrowInvalid, OSError):
            continue
    else:
        return [], config.key_column
    key_column = config.key_column or ("id" if "id" in schema.names else None)
    fields = [f for f in schema if f.name not in (config.audio_column, key_column) and _is_scalar(f.type)]
    return fields, key_column


def _is_scalar(kind) -> bool:
    return pa.types.is_primitive(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)


def _record_batches(shard: Shard, reads: Reads) -> Iterator[pa.RecordBatch]:
    with _open_shard(shard, reads) as handle:
        try:
            if shard.kind == "hf-arrow":
                yield from _arrow_batches(shard.url, handle)
            else:
                yield from _parquet_batches(pq.ParquetFile(handle, buffer_size=READ_BUFFER_BYTES, pre_buffer=False))
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as error:
            raise read_error(error, shard.url, "corrupt_file") from None


def _arrow_batches(url: str, handle) -> Iterator[pa.RecordBatch]:
    """An Arrow stream's batches as written (a stream cannot be read in parts of a batch); a local file's are
    views of its memory map, pages the kernel can drop, not copies on the heap."""
    fs, path = fsspec.core.url_to_fs(url)
    with pa.memory_map(path) if _is_local(fs) else contextlib.nullcontext(handle) as source:
        yield from pa.ipc.open_stream(source)


def _parquet_batches(parquet: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    """Row groups of at most BATCH_BYTES whole, larger ones row by row: with pages streamed (not pre-buffered),
    a row group of long-form audio costs a few of its cells, not all of them."""
    for group in range(parquet.num_row_groups):
        meta = parquet.metadata.row_group(group)
        if meta.num_rows:
            rows = meta.num_rows if meta.total_byte_size <= BATCH_BYTES else 1
            yield from parquet.iter_batches(batch_size=rows, row_groups=[group], use_threads=False)


def _text_columns(batch: pa.RecordBatch, names: list[str], max_text_bytes: int) -> tuple[dict, dict]:
    """The scalar columns as Python lists, with cells over `max_text_bytes` left out (None), and for each row
    holding one the first such column."""
    columns, too_large = {}, {}
    for name in names:
        column = batch.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            over = pc.fill_null(pc.greater(pc.binary_length(column), max_text_bytes), False)
            if pc.any(over).as_py():
                for row in np.flatnonzero(over.to_numpy(zero_copy_only=False)):
                    too_large.setdefault(int(row), name)
                column = pc.if_else(over, pa.scalar(None, column.type), column)
        columns[name] = column.to_pylist()
    return columns, too_large


def read_hf_shard(shard: Shard, config: HfSource, max_file_bytes: int = MAX_FILE_BYTES,
                  reads: Reads | None = None) -> Iterator[RawSample]:
    """Rows of one Arrow or Parquet file; a bad cell (audio or metadata) is that row's error record, a cell that
    failed for a cause a retry could change (the store, a full disk) the shard's transient ShardError once `reads`
    (the file's and the path cells' reads, retried where they fail) gave up."""
    reads = reads or Reads.of(config)
    row = 0
    for batch in _record_batches(shard, reads):
        names = batch.schema.names
        if config.audio_column not in names:
            raise ShardError(
                "missing_audio_column",
                f"no column {config.audio_column!r} in {shard.url} (columns: {names}); set source.audio_column",
            )
        key_column = config.key_column or ("id" if "id" in names else None)
        if key_column is not None and key_column not in names:
            raise ShardError("missing_key_column", f"no column {key_column!r} in {shard.url}; set source.key_column")
        scalars = [n for n, t in zip(names, batch.schema.types) if n != config.audio_column and _is_scalar(t)]
        columns, too_large = _text_columns(batch, scalars, config.max_text_bytes)
        audio = batch.column(config.audio_column)
        for i in range(batch.num_rows):
            key = str(columns[key_column][i]) if key_column else f"{shard.id}/{row}"
            metadata = {n: columns[n][i] for n in scalars if n != key_column}
            row += 1
            if i in too_large:
                yield RawSample(key, None, metadata, SampleError(
                    "metadata_too_large", f"column {too_large[i]!r} holds more than source.max_text_bytes="
                                          f"{config.max_text_bytes} bytes"))
                continue
            try:
                yield RawSample(key, audio_value(audio[i], max_file_bytes, reads), metadata)
                continue
            except SampleError as error:
                problem = error
            except ShardError:
                raise
            except Exception as error:  # a cell no branch above foresaw costs its row, not the shard's other rows
                transient = transient_error(error, f"{shard.url} row {row - 1}")  # ... unless a retry could read it
                if transient is not None:
                    raise transient from None
                problem = SampleError("bad_audio_cell", f"{type(error).__name__}: {str(error)[:160]}")
            yield RawSample(key, None, metadata, problem)
        del batch, audio, columns  # the next batch is read without this one held


@dataclass
class HfSource(Source, kind="hf"):
    # a save_to_disk folder, a Parquet file, folder or glob, or a hub dataset name (ORG/NAME): a path or fsspec URL
    path: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None  # hub datasets: branch, tag or commit (resolved once, recorded)
    audio_column: str = "audio"
    key_column: Optional[str] = None  # default: 'id' when present, else shard and row index

    def check(self) -> None:
        super().check()
        if not self.path:
            raise ConfigError("source.path", "no dataset given", "a save_to_disk folder, Parquet files or a hub name")

    def listing(self) -> SourceListing:
        return list_hf_shards(self)

    def read(self, shard: Shard, max_file_bytes: int, reads: Reads) -> Iterator[RawSample]:
        return read_hf_shard(shard, self, max_file_bytes, reads)

    def shard_again(self, shard_id: str, url: str, recorded: dict[str, Shard]) -> Shard:
        return Shard(shard_id, url, shard_kind(url))  # a file is its own shard
