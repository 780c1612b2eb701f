"""Read tokenized output in LM training: a PyTorch IterableDataset over one or more output folders.

Work is split by Parquet row group across (distributed rank x DataLoader worker), so every row is
read exactly once per epoch whatever the number of ranks and workers. Only shards with a done commit
record are read.
"""

from __future__ import annotations

import json
import random
from typing import Callable, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..runstate import read_run
from ..storage import Storage


def list_units(output_dirs: list[str]) -> list[tuple[str, str, int]]:
    """(output_dir, file, row_group) for every row group of every finished shard, in a stable order."""
    units = []
    for output_dir in output_dirs:
        storage = Storage(output_dir)
        done = read_run(storage).done()
        for shard_id in sorted(done):
            for name in done[shard_id]["files"]:
                if name.endswith(".parquet"):
                    with storage.fs.open(storage.path(name), "rb") as f:
                        groups = pq.ParquetFile(f).num_row_groups
                    units += [(output_dir, name, g) for g in range(groups)]
    return units


def read_unit(output_dir: str, name: str, group: int):
    """One row group of one output file, as a pyarrow Table."""
    storage = Storage(output_dir)
    with storage.fs.open(storage.path(name), "rb") as f:
        return pq.ParquetFile(f).read_row_group(group)


def row_codes(table) -> Iterator[np.ndarray]:
    """The codes of each row of a table as [num_codebooks, num_frames] int16, without Python lists."""
    values = table.column("codes").combine_chunks().flatten().flatten().to_numpy(zero_copy_only=False)
    books = table.column("num_codebooks").to_numpy()
    frames = table.column("num_frames").to_numpy()
    start = 0
    for k, t in zip(books, frames):
        stop = start + int(k) * int(t)
        yield values[start:stop].reshape(int(k), int(t))
        start = stop


class TokenDataset(IterableDataset):
    """Yields {'codes': LongTensor [num_codebooks, num_frames], 'key': str, ...metadata}.

    rank/world_size default to torch.distributed's when it is initialised, else 0/1.
    shuffle_buffer > 0 shuffles row groups per epoch and rows within a buffer (call set_epoch).
    min_frames/max_frames filter by length; `where` keeps rows whose columns (or keys of the
    WebDataset `metadata` JSON) equal the given values; `filter_fn(row) -> bool` for anything else.
    """

    def __init__(
        self,
        output_dirs: str | list[str],
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        min_frames: int = 0,
        max_frames: int | None = None,
        where: dict | None = None,
        filter_fn: Callable[[dict], bool] | None = None,
    ):
        super().__init__()
        self.output_dirs = [output_dirs] if isinstance(output_dirs, str) else list(output_dirs)
        self.units = list_units(self.output_dirs)
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed, self.epoch = shuffle_buffer, seed, 0
        self.min_frames, self.max_frames = min_frames, max_frames
        self.where, self.filter_fn = where or {}, filter_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_units(self) -> list:
        rank, world = self.rank, self.world_size
        if rank is None or world is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = torch.distributed.get_rank() if distributed else 0
            world = torch.distributed.get_world_size() if distributed else 1
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        units = list(self.units)
        if self.shuffle_buffer:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(units)
        return units[rank * workers + worker_id :: world * workers]

    def _keep(self, row: dict) -> bool:
        if row["num_frames"] < self.min_frames or (self.max_frames is not None and row["num_frames"] > self.max_frames):
            return False
        for name, value in self.where.items():
            if name in row:
                if row[name] != value:
                    return False
            elif json.loads(row.get("metadata") or "{}").get(name) != value:
                return False
        return self.filter_fn is None or self.filter_fn(row)

    def _rows(self) -> Iterator[dict]:
        for output_dir, name, group in self._my_units():
            table = read_unit(output_dir, name, group)
            others = [c for c in table.column_names if c != "codes"]
            meta = table.select(others).to_pylist()
            for row, codes in zip(meta, row_codes(table)):
                if self._keep(row):
                    row["codes"] = torch.from_numpy(codes.astype(np.int64))
                    yield row

    def __iter__(self) -> Iterator[dict]:
        if not self.shuffle_buffer:
            yield from self._rows()
            return
        worker = get_worker_info()
        rng = random.Random(hash((self.seed, self.epoch, self.rank, worker.id if worker else 0)))
        buffer: list[dict] = []
        for row in self._rows():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(row)
                continue
            index = rng.randrange(len(buffer))
            yield buffer[index]
            buffer[index] = row
        rng.shuffle(buffer)
        yield from buffer


def apply_delay_pattern(codes: torch.Tensor, pad_id: int) -> torch.Tensor:
    """[K, T] -> [K, T + K - 1] with codebook k shifted right by k frames (MusicGen-style delay)."""
    books, frames = codes.shape
    out = torch.full((books, frames + books - 1), pad_id, dtype=codes.dtype, device=codes.device)
    for k in range(books):
        out[k, k : k + frames] = codes[k]
    return out


def undo_delay_pattern(delayed: torch.Tensor) -> torch.Tensor:
    """Inverse of apply_delay_pattern: [K, T + K - 1] -> [K, T]."""
    books, length = delayed.shape
    frames = length - books + 1
    return torch.stack([delayed[k, k : k + frames] for k in range(books)])
