"""What `TokenDataset` reads: the row groups of one or more outputs, and per epoch which rows each
(rank, DataLoader worker) takes.

Row groups and their sizes (rows, summed `num_frames`, rows and frames per power-of-two length bin) come
from the run's commit records (`row_groups`, written by `ShardWriter.publish`, see
`schema.row_group_summary`): one read of the run state, no data file opened. Files whose records
predate `row_groups` are the exception: their footers and `num_frames` column are read when the units are
loaded (only those files). Filters that need the rows themselves (`keep`) read the columns they need
(never `codes`) of every file, once, when the units are loaded.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..runstate import read_run
from ..schema import CODES, NUM_FRAMES, row_group_summary
from ..storage import Storage

READ_THREADS = 16  # files read at once when footers or filter columns must be read (latency-bound on object stores)


@dataclass
class Unit:
    """One row group of one data file: the unit of reading."""

    output_dir: str
    file: str
    group: int
    rows: int  # rows planned from it (those the filters keep)
    frames: int  # their summed num_frames
    books: int  # codebooks per row (the output's num_codebooks)
    bins: list  # [(rows, frames)] per length bin (rows of similar length), to estimate crops and batches
    kept: np.ndarray | None = None  # row indices in the group the filters keep; None: every row


def _unit(output_dir: str, name: str, group: int, books: int, summary: list, kept: np.ndarray | None = None) -> Unit:
    rows, frames = int(summary[0]), int(summary[1])
    bins = [(int(n), int(f)) for _, n, f in summary[2]] if len(summary) > 2 else [(rows, frames)]
    return Unit(output_dir, name, group, rows, frames, books, bins, kept)


def _data_files(output_dirs: list[str]) -> list[tuple[str, str, int, list | None]]:
    """(output_dir, file, num_codebooks, [[rows, frames], ...] or None for a record without row_groups)."""
    files = []
    for output_dir in output_dirs:
        run = read_run(Storage(output_dir))
        books = int(run.manifest["num_codebooks"])
        done = run.done()
        for shard_id in sorted(done):
            record = done[shard_id]
            for name in record.files:
                if name.endswith(".parquet"):
                    files.append((output_dir, name, books, record.row_groups.get(name)))
    return files


def _read_groups(output_dir: str, name: str, columns: list[str] | None,
                 keep: Callable[[pa.Table], np.ndarray] | None) -> list[tuple[list, np.ndarray | None]]:
    """(summary of the kept rows, kept indices or None) per row group, from the file itself: its footer,
    `num_frames`, and with `keep` the columns it needs (all but codes when `columns` is None)."""
    storage = Storage(output_dir)
    with storage.fs.open(storage.path(name), "rb") as f:
        parquet = pq.ParquetFile(f)
        wanted = [NUM_FRAMES] if keep is None else columns or [c for c in parquet.schema_arrow.names if c != CODES]
        table = parquet.read(columns=sorted(set(wanted) | {NUM_FRAMES}))
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
    frames = table.column(NUM_FRAMES).to_numpy().astype(np.int64)
    mask = np.ones(len(frames), bool) if keep is None else np.asarray(keep(table), bool)
    groups, start = [], 0
    for size in sizes:
        in_group = mask[start : start + size]
        kept = None if keep is None else np.flatnonzero(in_group).astype(np.int32)
        groups.append((row_group_summary(frames[start : start + size][in_group]), kept))
        start += size
    return groups


def load_units(output_dirs: list[str], keep: Callable[[pa.Table], np.ndarray] | None = None,
               columns: list[str] | None = None) -> list[Unit]:
    """Every row group of every done shard of `output_dirs`, in a stable order. `keep(table) -> bool array`
    selects rows from a table of `columns` (None: all but codes; `num_frames` always) and costs one read of
    those columns per file; without it only files whose records lack `row_groups` are opened."""
    files = _data_files(output_dirs)
    to_read = [(d, name) for d, name, _, groups in files if keep is not None or groups is None]
    with ThreadPoolExecutor(min(READ_THREADS, max(1, len(to_read)))) as pool:
        read = dict(zip(to_read, pool.map(lambda f: _read_groups(f[0], f[1], columns, keep), to_read)))
    units = []
    for output_dir, name, books, groups in files:
        if (output_dir, name) in read:
            units += [_unit(output_dir, name, g, books, summary, kept)
                      for g, (summary, kept) in enumerate(read[output_dir, name])]
        else:
            units += [_unit(output_dir, name, g, books, summary) for g, summary in enumerate(groups)]
    return units


class EpochPlan:
    """One epoch's global row sequence and its cut across ranks and workers.

    Units are put in order (shuffled by `order_seed`, or as loaded); the sequence is their rows, N in all.
    Rank r reads positions [r*S, (r+1)*S), S = floor(N / world) with `drop_last` (the N - world*S rows at
    the end are not read this epoch) or ceil(N / world) without (positions past N wrap to the start: those
    rows are read twice, by two ranks). A rank's slice is cut into `workers` contiguous parts. A worker's
    fill range, read only when it must make up a planned count, is its own share of the rows outside its
    rank's slice (the ring of N positions starting right after that slice, cut into `workers` parts), so
    the workers of one rank never fill from the same rows, nor from their own rank's slice.
    """

    def __init__(self, units: list[Unit], world: int, drop_last: bool, order_seed: int | None = None):
        order = list(range(len(units)))
        if order_seed is not None:
            random.Random(order_seed).shuffle(order)
        self.units = [units[i] for i in order]
        self.offsets = np.concatenate([[0], np.cumsum([u.rows for u in self.units], dtype=np.int64)])
        self.total = int(self.offsets[-1])
        self.per_rank = self.total // world if drop_last else -(-self.total // world)

    def worker_range(self, rank: int, worker: int, workers: int) -> tuple[int, int]:
        start, size = rank * self.per_rank, self.per_rank
        return start + size * worker // workers, start + size * (worker + 1) // workers

    def fill_range(self, rank: int, worker: int, workers: int) -> tuple[int, int]:
        start, size = (rank + 1) * self.per_rank, max(0, self.total - self.per_rank)
        return start + size * worker // workers, start + size * (worker + 1) // workers

    def pieces(self, start: int, stop: int) -> list[tuple[Unit, int, int]]:
        """(unit, first, end) row ranges (in the unit's planned rows) of positions [start, stop), modulo N."""
        pieces = []
        while start < stop and self.total:
            position = start % self.total
            index = int(np.searchsorted(self.offsets, position, side="right")) - 1
            first = position - int(self.offsets[index])
            count = min(stop - start, self.units[index].rows - first)
            pieces.append((self.units[index], first, first + count))
            start += count
        return pieces
